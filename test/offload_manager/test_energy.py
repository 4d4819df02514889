"""Device profiles, the energy model and the energy readers (fake sysfs, fake NVML)."""

from __future__ import annotations

from dataclasses import replace
import math
from pathlib import Path
from types import SimpleNamespace

from adaptive_offload.errors import ConfigError
from offload_manager.energy import (BatteryReader, EnergyModel, load_devices, MeasuredEnergy,
                                    NvmlReader, RaplReader, READERS)
from offload_manager.manager import default_devices_file
import pytest


def test_shipped_profiles_load_with_every_figure() -> None:
    devices = load_devices(default_devices_file())
    assert {'raspberry_pi_5', 'laptop_cpu', 'jetson_orin_nano', 'gpu_server',
            'h200_server'} <= set(devices)
    pi = devices['raspberry_pi_5']
    assert pi.compute_w > pi.idle_w > 0 and pi.tx_nj_per_bit > 0
    assert pi.inference_time_ms('yolov8n', 320) < pi.inference_time_ms('yolov8n', 640)
    assert devices['gpu_server'].price_per_gpu_hour > 0
    text = default_devices_file().read_text()
    assert text.count('#') > 20  # every figure carries its source


@pytest.mark.parametrize('body, match', [
    ('devices: {pi: {idle_w: 1}}', 'missing'),
    ('devices: {pi: {idle_w: 1, compute_w: 2, volts: 5}}', 'unknown'),
    ('devices: {pi: {idle_w: -1, compute_w: 2}}', 'pi: idle_w'),
    ('devices: {pi: {idle_w: 1, compute_w: 2, inference_ms: {yolov8n@320: 0}}}', 'yolov8n@320'),
    ('devices: [1, 2]', 'mapping'),
])
def test_bad_profiles_name_the_field(tmp_path: Path, body: str, match: str) -> None:
    path = tmp_path / 'devices.yaml'
    path.write_text(body)
    with pytest.raises(ConfigError, match=match):
        load_devices(path)
    with pytest.raises(ConfigError, match='cannot read'):
        load_devices(tmp_path / 'missing.yaml')


def test_model_adds_work_beyond_idle_and_idle_over_the_period() -> None:
    devices = load_devices(default_devices_file())
    model = EnergyModel(devices['raspberry_pi_5'])
    est = model.frame(compute_ms=100.0, bytes_sent=10_000, bytes_received=1_000,
                      period_ms=50.0)
    assert est.compute_j == pytest.approx((7.0 - 2.7) * 0.1)  # beyond idle
    assert est.radio_j == pytest.approx((50e-9 * 80_000) + (30e-9 * 8_000))
    assert est.idle_j == pytest.approx(2.7 * 0.05)
    assert est.joules == pytest.approx(est.compute_j + est.radio_j + est.idle_j)
    assert model.joules(100.0, 10_000, 1_000, 50.0) == pytest.approx(est.joules)
    assert not est.measured
    # A robot computing a whole period draws compute power for it, however it is split.
    assert model.joules(100.0, 0, 0, 100.0) == pytest.approx(7.0 * 0.1)


def _rapl(root: Path, name: str, energy: int, max_range: int = 1000) -> Path:
    domain = root / name
    domain.mkdir(parents=True, exist_ok=True)
    (domain / 'energy_uj').write_text(f'{energy}\n')
    (domain / 'max_energy_range_uj').write_text(f'{max_range}\n')
    return domain


def test_rapl_sums_packages_and_survives_wrap_around(tmp_path: Path) -> None:
    a = _rapl(tmp_path, 'intel-rapl:0', 900)
    b = _rapl(tmp_path, 'intel-rapl:1', 100)
    _rapl(tmp_path, 'intel-rapl:0:0', 5)  # a sub-domain (core) is inside package 0
    reader = READERS['rapl'](tmp_path)
    assert reader.available(0) is None
    assert reader.joules(0) == 0.0
    (a / 'energy_uj').write_text('100')  # wrapped: 900 -> 1000 -> 100 is 200 uJ
    (b / 'energy_uj').write_text('400')  # 300 uJ
    assert reader.joules(0) == pytest.approx(500e-6)
    (a / 'energy_uj').chmod(0)
    if reader.available(0) is None:  # root reads anything: make the file unreadable instead
        (a / 'energy_uj').write_text('not a number')
    assert 'cannot read' in reader.available(0)
    assert 'no intel-rapl' in RaplReader(tmp_path / 'empty').available(0)


def test_nvml_reads_millijoules_and_explains_absence() -> None:
    energy = {'mj': 5000}
    fake = SimpleNamespace(nvmlInit=lambda: None,
                           nvmlDeviceGetHandleByIndex=lambda i: f'gpu{i}',
                           nvmlDeviceGetTotalEnergyConsumption=lambda h: energy['mj'])
    reader = NvmlReader(fake)
    assert reader.available(0) is None
    energy['mj'] = 7500
    assert reader.joules(0) == pytest.approx(2.5)

    def broken() -> None:
        raise RuntimeError('NVML Shared Library Not Found')
    assert 'NVML Shared Library' in NvmlReader(SimpleNamespace(nvmlInit=broken)).available(0)


S = 1_000_000_000


def test_battery_integrates_discharge_and_skips_unknown_samples() -> None:
    battery = BatteryReader()
    assert battery.available(0) is not None
    battery.update(12.0, -2.0, 0)           # 24 W discharge
    battery.update(math.nan, -2.0, S // 2)  # unknown voltage: skipped
    battery.update(12.0, -2.0, S)           # 1 s at 24 W
    battery.update(12.0, 1.0, 2 * S)        # charging: 0 W; trapezoid 24 -> 0 over 1 s
    assert battery.joules(2 * S) == pytest.approx(24.0 + 12.0)
    assert battery.available(2 * S) is None


def test_battery_holds_power_between_samples_and_goes_stale() -> None:
    battery = BatteryReader(stale_after_s=5.0)
    battery.update(10.0, -1.0, 0)  # 10 W
    # Frames end every 100 ms, samples come every second: each reading moves on by 1 J.
    assert [battery.joules(t * S // 10) for t in range(4)] == pytest.approx([0, 1, 2, 3])
    battery.update(10.0, -1.0, S)
    assert battery.joules(S) == pytest.approx(10.0)
    assert battery.available(6 * S) is None and battery.available(6 * S + 1) is not None
    assert battery.joules(60 * S) == pytest.approx(10.0 + 50.0)  # held 5 s at most
    battery.update(10.0, -1.0, 60 * S)  # a minute's silence is not a minute of discharge
    assert battery.joules(60 * S) == pytest.approx(10.0 + 50.0)
    assert battery.available(60 * S) is None


def test_measured_energy_is_shared_among_the_frames_that_ended() -> None:
    battery = BatteryReader()
    measured = MeasuredEnergy(battery)
    assert measured.frames_ended(2, 0) is None  # no BatteryState yet: modelled
    battery.update(10.0, -1.0, 0)
    assert measured.frames_ended(2, 0) is None  # the first reading only starts the interval
    battery.update(10.0, -1.0, 2 * S)  # 20 J
    est = measured.frames_ended(4, 2 * S)
    assert est.measured and est.joules == pytest.approx(5.0)
    assert measured.frames_ended(0, 2 * S) is None
    assert measured.frames_ended(1, 10 * S) is None  # stale: modelled, and measuring restarts
    battery.update(10.0, -1.0, 11 * S)
    assert measured.frames_ended(1, 11 * S) is None
    assert measured.frames_ended(2, 12 * S).joules == pytest.approx(5.0)


def test_measured_energy_pays_back_a_held_power_that_overshot() -> None:
    battery = BatteryReader()
    battery.update(10.0, -1.0, 0)
    measured = MeasuredEnergy(battery)
    measured.frames_ended(1, 0)
    assert measured.frames_ended(1, S).joules == pytest.approx(10.0)  # 10 W held
    battery.update(0.0, 0.0, S)  # the power fell to 0 during that second: the truth is 5 J
    assert measured.frames_ended(1, S).joules == 0.0
    battery.update(10.0, -1.0, 2 * S)  # +5 J (trapezoid 0 -> 10 W)
    assert measured.frames_ended(1, 2 * S).joules == 0.0  # the 5 J read ahead are paid back
    assert measured.frames_ended(1, 3 * S).joules == pytest.approx(10.0)


def test_records_carry_modelled_or_measured_energy() -> None:
    from adaptive_offload.datatypes import FrameRecord, InferenceReport
    from offload_manager.frame_outcomes import Outcome
    from offload_manager.frame_energy import FrameEnergy

    profile = load_devices(default_devices_file())['raspberry_pi_5']
    energy = FrameEnergy(EnergyModel(profile))
    ms = 1_000_000  # frames 100 ms apart: each after the first idles 0.27 J at least
    idle = 2.7 * 0.1
    for stamp in (1, 2, 3):
        energy.report(InferenceReport(stamp_ns=stamp * 100 * ms, frame_id='cam', source='edge',
                                      status='ok', inference_ms=100.0))
        if stamp > 1:  # 2 is hedged, 3 is a probe on the edge route
            energy.report(InferenceReport(stamp_ns=stamp * 100 * ms, frame_id='cam',
                                          source='cloud', status='ok', bytes_sent=10_000,
                                          total_ms=300.0))
    outcomes = energy.annotate([Outcome(FrameRecord(stamp_ns=s * 100 * ms, frame_id='cam',
                                                    route=r), None)
                                for s, r in ((1, 'edge'), (2, 'hedged'), (3, 'edge'))], 0)
    edge, hedged, probe = (o.record for o in outcomes)
    work = 4.3 * 0.1  # the inference beyond idle
    assert edge.energy_j == pytest.approx(work) and not edge.energy_measured  # no period yet
    radio = (50e-9 * 80_000) + (30e-9 * 2048 * 8)
    # Waiting for the cloud costs nothing beyond idle, hedged or probing alike.
    assert hedged.energy_j == pytest.approx(idle + work + radio)
    assert probe.energy_j == pytest.approx(idle + work + radio)

    # A probe answered after its frame ended: the radio spent it all the same, and the next
    # frame to end carries it (its frame's period is charged already).
    energy.report(InferenceReport(stamp_ns=300 * ms, frame_id='cam', source='cloud',
                                  status='ok', bytes_sent=10_000, total_ms=300.0))
    energy.report(InferenceReport(stamp_ns=400 * ms, frame_id='cam', source='edge',
                                  status='ok', inference_ms=100.0))
    [after] = energy.annotate([Outcome(FrameRecord(stamp_ns=400 * ms, frame_id='cam',
                                                   route='edge'), None)], 0)
    assert after.record.energy_j == pytest.approx(idle + work + radio)
    [alone] = energy.annotate([Outcome(FrameRecord(stamp_ns=500 * ms, frame_id='cam',
                                                   route='edge'), None)], 0)
    assert alone.record.energy_j == pytest.approx(idle)  # carried once only; idled still
    # One that ends after a later frame: its period is in that frame's already.
    [late] = energy.annotate([Outcome(FrameRecord(stamp_ns=450 * ms, frame_id='cam',
                                                  route='edge'), None)], 0)
    assert late.record.energy_j == 0.0

    # A request that timed out sent its bytes: the radio spent them, though no reply came.
    energy.report(InferenceReport(stamp_ns=600 * ms, frame_id='cam', source='cloud',
                                  status='failed', reason='timeout', bytes_sent=10_000,
                                  total_ms=250.0))
    [timed_out] = energy.annotate([Outcome(FrameRecord(stamp_ns=600 * ms, frame_id='cam',
                                                       route='cloud'), None)], 0)
    assert timed_out.record.energy_j == pytest.approx(50e-9 * 80_000 + idle)

    battery = BatteryReader()
    metered = FrameEnergy(EnergyModel(profile), MeasuredEnergy(battery))
    energy_of_edge = InferenceReport(stamp_ns=6, frame_id='cam', source='edge', status='ok',
                                     inference_ms=100.0)
    metered.report(energy_of_edge)
    [before] = metered.annotate([Outcome(FrameRecord(stamp_ns=6, frame_id='cam'), None)], 0)
    assert not before.record.energy_measured and before.record.energy_j == pytest.approx(work)
    battery.update(10.0, -1.0, 0)
    metered.annotate([Outcome(FrameRecord(stamp_ns=7), None)], 0)  # starts the interval
    battery.update(10.0, -1.0, S)
    [a, b] = metered.annotate([Outcome(FrameRecord(stamp_ns=s), None) for s in (8, 9)], S)
    assert a.record.energy_measured and a.record.energy_j == pytest.approx(5.0)
    assert b.record.energy_j == pytest.approx(5.0)


def test_shipped_profiles_carry_split_times_of_the_compact_model() -> None:
    devices = load_devices(default_devices_file())
    arch = 'fasterrcnn_mobilenet_v3_small_fpn'
    for name in ('raspberry_pi_5', 'laptop_cpu', 'ci_machine', 'h200_server'):
        head, tail = devices[name].split_time_ms(arch, 640, 'body.2') or (0.0, 0.0)
        assert 0 < head < tail, name
    # The Pi is slower than the CI machine it is scaled from; the H200 far faster than both.
    pi, ci, h200 = (devices[n].split_time_ms(arch, 640, 'body.2') or (0.0, 0.0)
                    for n in ('raspberry_pi_5', 'ci_machine', 'h200_server'))
    assert pi[0] > ci[0] > h200[0]
    for name in ('h200_server', 'gpu_server'):
        assert devices[name].split_time_ms('fasterrcnn_resnet50_fpn_v2', 640, 'fpn')
    assert devices['h200_server'].split_time_ms(arch, 640, 'no.such.point') is None
    assert devices['jetson_orin_nano'].split_time_ms(arch, 640, 'body.2') is None


@pytest.mark.parametrize('split, match', [
    ('[1, 2]', 'map model@imgsz'),
    ('{rcnn: {fpn: [1, 2]}}', 'not model@imgsz'),
    ('{rcnn@640: {}}', 'mapping of split points'),
    ('{rcnn@640: {fpn: [1]}}', r'\[head_ms, tail_ms\]'),
    ('{rcnn@640: {fpn: [1, -2]}}', 'tail_ms must be a non-negative'),
    ('{rcnn@640: {fpn: [x, 2]}}', 'head_ms must be a non-negative'),
])
def test_bad_split_times_name_the_entry(tmp_path: Path, split: str, match: str) -> None:
    path = tmp_path / 'd.yaml'
    path.write_text(f'devices: {{pi: {{idle_w: 1, compute_w: 2, split_ms: {split}}}}}')
    with pytest.raises(ConfigError, match=match):
        load_devices(path)


def test_split_times_load_as_head_and_tail(tmp_path: Path) -> None:
    path = tmp_path / 'd.yaml'
    path.write_text('devices: {pi: {idle_w: 1, compute_w: 2, '
                    'split_ms: {rcnn@640: {body.2: [3, 40.5]}}}}')
    pi = load_devices(path)['pi']
    assert pi.split_time_ms('rcnn', 640, 'body.2') == (3.0, 40.5)
    assert pi.split_time_ms('rcnn', 320, 'body.2') is None


def test_a_cloud_frame_pays_the_robot_its_encode_and_the_estimate_counts_it() -> None:
    from adaptive_offload.datatypes import FrameRecord, InferenceReport, Route
    from offload_manager.frame_energy import FrameEnergy
    from offload_manager.frame_outcomes import Outcome
    from offload_manager.observations import Observations, Option

    profile = load_devices(default_devices_file())['raspberry_pi_5']
    model = EnergyModel(profile)
    ms = 1_000_000
    sent = InferenceReport(stamp_ns=100 * ms, frame_id='cam', source='cloud', status='failed',
                           reason='timeout', bytes_sent=10_000, total_ms=250.0, encode_ms=20.0)
    charged = FrameEnergy(model)
    charged.report(sent)
    [frame] = charged.annotate([Outcome(FrameRecord(stamp_ns=100 * ms, frame_id='cam',
                                                    route='cloud'), None)], 0)
    # The encode ran at compute power: 4.3 W beyond idle for 20 ms, as well as the radio.
    assert frame.record.energy_j == pytest.approx(4.3 * 0.02 + 50e-9 * 80_000)

    obs = Observations(model)
    option = Option(Route.CLOUD, 'yolov8n', 640, 75)
    ok = InferenceReport(stamp_ns=200 * ms, frame_id='cam', source='cloud', status='ok',
                         bytes_sent=10_000, total_ms=120.0, server_ms=60.0)
    obs.observe_report(ok)
    obs.prepare()
    before = obs.estimate(option, 250.0)
    obs.observe_report(replace(ok, stamp_ns=300 * ms, encode_ms=20.0))
    obs.prepare()
    after = obs.estimate(option, 250.0)
    assert before is not None and after is not None
    # Unmeasured before (0 ms); then the encode measured by the bridge, at compute power.
    assert after.energy_j - before.energy_j == pytest.approx(4.3 * 0.02)
