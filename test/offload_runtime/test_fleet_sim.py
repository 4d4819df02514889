"""Fleets: unchanged managers on one simulated service, its failures, its scalers, the table."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

from adaptive_offload.datatypes import FrameRecord, InferenceReport
from adaptive_offload.split_option import SPLIT_PREFIX
from fault_injection.scenario import parse_scenario, Scenario
from offload_manager.energy import load_devices
from offload_manager.manager import default_devices_file, OffloadManager
from offload_runtime.autoscalers import HpaSettings
from offload_runtime.cli import main
from offload_runtime.evaluate import EvalOptions
from offload_runtime.fleet_eval import evaluate_fleet, FleetOptions, run_fleet
from offload_runtime.fleet_figures import capacity_recovery_s, FleetCounts, FleetRow, mttr_s
from offload_runtime.fleet_sim import FleetSim
from offload_runtime.service_settings import ServiceSettings
from offload_runtime.sim_settings import NetworkProfile
import pytest
import yaml

DEVICES = load_devices(default_devices_file())
COMPACT = 'fasterrcnn_mobilenet_v3_small_fpn@640'
TWO_TIER = f'{COMPACT}:body.3:int8+zstd'
TO_MIDDLE = f'{COMPACT}:body.2/end:int8+zstd'
SPLIT_RUN = {'robot': 'raspberry_pi_5', 'cloud': 'h200_server'}


def _scenario(*faults: dict) -> Scenario:
    return parse_scenario({'name': 'test', 'faults': list(faults)})


def _fleet(robots: int, frames: int, scenario: Scenario, policy: str = 'cloud-only',
           scaler: str = 'static', devices_file: Path | None = None,
           options: dict[str, Any] | None = None,
           **service: object) -> tuple[FleetRow, FleetSim]:
    settings = {'replicas': 2, 'first_ms': 30.0, 'pod_start_s': 10.0, 'scale_up_delay_s': 1.0}
    settings.update(service)
    opts = EvalOptions(scenarios=[], frames=frames, measured=True, **(options or {}))
    devices = DEVICES
    if devices_file is not None:
        opts = dataclasses.replace(opts, devices_file=str(devices_file))
        devices = load_devices(devices_file)
    fleet = FleetOptions(robots, ServiceSettings(**settings), (scaler,), HpaSettings(sync_s=5.0))
    return run_fleet(opts, fleet, scenario, policy, scaler, devices)


def _dear_radio(tmp_path: Path) -> Path:
    """Write the shipped profiles with the Pi 5's radio at 2 uJ a bit (a cellular modem).

    A q50 frame then costs the radio about 0.5 J against 0.1 J of edge inference beyond
    idle, so predictive keeps a quiet robot on the edge.
    """
    data = yaml.safe_load(default_devices_file().read_text())
    data['devices']['raspberry_pi_5']['tx_nj_per_bit'] = 2000.0
    path = tmp_path / 'devices.yaml'
    path.write_text(yaml.safe_dump(data))
    return path


def test_a_crash_resets_requests_and_capacity_returns_after_a_pod_start() -> None:
    row, sim = _fleet(4, 400, _scenario({'kind': 'replica_crash', 'start_s': 20.0}))
    assert row.frames == 4 * 400  # every frame ended: answered, late or dropped
    assert 10.0 <= row.capacity_s <= 11.0
    assert min(n for t, n in sim.ready if 20 < t < 30) == 1
    assert row.late_answers == 0 and row.late_frames == 0
    assert row.cloud_pct > 90


def test_an_overloaded_service_refuses_instead_of_answering_late() -> None:
    row, _ = _fleet(8, 300, _scenario(), replicas=1, min_replicas=1, first_ms=80.0)
    assert row.frames == 8 * 300
    # Admission runs on estimates, so an answer can still finish after its budget; rarely.
    assert row.refusals > 0 and row.late_answers <= row.refusals / 50
    assert row.miss_pct > 10  # one replica cannot serve eight cloud-only robots


def test_the_reactive_scaler_adds_replicas_and_misses_fewer_frames() -> None:
    static, _ = _fleet(8, 900, _scenario(), replicas=1, min_replicas=1, first_ms=80.0)
    scaled, _ = _fleet(8, 900, _scenario(), scaler='reactive', replicas=1, min_replicas=1,
                       first_ms=80.0)
    assert scaled.mean_replicas > 1.5 and scaled.gpu_s > static.gpu_s
    assert scaled.miss_pct < static.miss_pct / 2


def test_a_rush_turns_the_edge_fleet_to_the_cloud(tmp_path: Path) -> None:
    # Twelve times slower, the edge model misses the deadline at any input size.
    rush = _scenario({'kind': 'cpu_contention', 'start_s': 20.0, 'duration_s': 20.0,
                      'slowdown': 12.0})
    devices = _dear_radio(tmp_path)
    quiet, _ = _fleet(4, 600, _scenario(), policy='predictive', devices_file=devices)
    busy, _ = _fleet(4, 600, rush, policy='predictive', devices_file=devices)
    assert busy.cloud_pct > quiet.cloud_pct + 20


def test_runs_repeat_exactly_for_one_seed() -> None:
    scenario = _scenario({'kind': 'zone_outage', 'start_s': 5.0, 'duration_s': 10.0})
    first, _ = _fleet(3, 200, scenario, replicas=2)
    again, _ = _fleet(3, 200, scenario, replicas=2)
    assert repr(dataclasses.replace(first, wall_s=0.0)) == \
        repr(dataclasses.replace(again, wall_s=0.0))


def _cloud_reports(monkeypatch: pytest.MonkeyPatch) -> list[InferenceReport]:
    """Record every cloud report the fleet's managers take."""
    reports: list[InferenceReport] = []
    take = OffloadManager.on_report

    def record(manager: OffloadManager, report: InferenceReport, now_ns: int = 0) -> Any:
        if report.source == 'cloud' and report.status != 'skipped':
            reports.append(report)
        return take(manager, report, now_ns)

    monkeypatch.setattr(OffloadManager, 'on_report', record)
    return reports


def test_a_split_fleet_sends_tail_requests_the_service_answers(
        monkeypatch: pytest.MonkeyPatch) -> None:
    reports = _cloud_reports(monkeypatch)
    row, sim = _fleet(3, 300, _scenario(), policy='static-split',
                      options={**SPLIT_RUN, 'split_options': [TWO_TIER]})
    fig = sim.robots[0].m.config.policy_settings().splits[TWO_TIER]
    requests = sum(r.result.cloud_requests for r in sim.robots)
    assert row.frames == 900 and row.cloud_pct > 95 and row.miss_pct < 1
    assert sim.service.arrivals_total == requests > 880
    # Each answer is a tail, timed alone: a batch of images would take 30 ms and more.
    assert sim.service.busy_total_s == pytest.approx(requests * fig.server_ms / 1e3, rel=0.05)
    answered = [r for r in reports if r.status == 'ok']
    assert len(answered) > 880
    assert {r.model for r in reports} == {SPLIT_PREFIX + TWO_TIER}
    assert all(0.5 * fig.robot_ms < r.inference_ms < 2 * fig.robot_ms for r in answered)
    assert {r.bytes_sent for r in answered} == {fig.payload_bytes}
    assert sum(r.result.bytes_sent for r in sim.robots) == requests * fig.payload_bytes


def test_a_split_that_ends_on_the_middle_device_never_reaches_the_service(
        monkeypatch: pytest.MonkeyPatch) -> None:
    reports = _cloud_reports(monkeypatch)
    # The laptop takes about 260 ms a frame: at 5 fps two requests in flight carry every one.
    row, sim = _fleet(3, 200, _scenario(), policy='static-split',
                      options={**SPLIT_RUN, 'split_options': [TO_MIDDLE], 'deadline_ms': 400.0,
                               'fps': 5.0, 'network': NetworkProfile(middle='laptop_cpu')})
    assert row.frames == 600 and row.cloud_pct > 95 and row.miss_pct < 1
    assert sim.service.arrivals_total == 0 and sim.service.busy_total_s == 0.0
    assert all(r.result.cloud_requests == 0 for r in sim.robots)
    assert len([r for r in reports if r.status == 'ok']) > 590
    assert {r.model for r in reports} == {SPLIT_PREFIX + TO_MIDDLE}


def _counts(misses_by_second: dict[int, int], frames: int = 100,
            seconds: int = 200) -> FleetCounts:
    counts = FleetCounts()
    for s in range(seconds):
        for k in range(frames):
            counts.add(FrameRecord(stamp_ns=s * 1_000_000_000 + k, latency_ms=10.0,
                                   deadline_ms=250.0,
                                   deadline_met=k >= misses_by_second.get(s, 0)))
    return counts


def test_mttr_is_the_time_until_misses_are_back_to_normal() -> None:
    bad = dict.fromkeys(range(100, 130), 50)
    assert mttr_s(_counts(bad), 100.0, 200.0) == pytest.approx(30.0)
    assert mttr_s(_counts({}), 100.0, 200.0) == 0.0
    assert math.isnan(mttr_s(_counts(dict.fromkeys(range(100, 200), 50)), 100.0, 200.0))


def test_capacity_recovery_is_the_time_until_as_many_replicas_are_ready() -> None:
    ready = [(float(t), 2 if t < 10 or t >= 70 else 1) for t in range(100)]
    assert capacity_recovery_s(ready, 10.0) == 60.0
    assert capacity_recovery_s([(float(t), 2) for t in range(100)], 10.0) == 0.0
    assert math.isnan(capacity_recovery_s([(0.0, 2), (20.0, 1)], 10.0))


def test_the_cli_runs_a_fleet_and_writes_its_table(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    scenario = tmp_path / 'crash.yaml'
    scenario.write_text('name: crash\nfaults:\n  - {kind: replica_crash, start_s: 3.0}\n')
    out = tmp_path / 'out'
    code = main(['evaluate', '--scenarios', str(scenario), '--robots', '2', '--replicas', '2',
                 '--frames', '60', '--policies', 'static,cloud-only', '--scalers',
                 'static,reactive', '--pod-start-s', '2', '--out', str(out)])
    assert code == 0
    table = (out / 'fleet.md').read_text()
    assert table.count('| crash |') == 4 and '| cloud-only | reactive | 2 |' in table
    assert (out / 'fleet.csv').exists() and (out / 'fleet_crash.png').stat().st_size > 0
    assert 'fleet table' in capsys.readouterr().out


@pytest.mark.parametrize('args, message', [
    (['--robots', '2', '--floors', '30'], '--floors'),
    (['--robots', '2', '--mode', 'live'], 'simulated only'),
    (['--robots', '2', '--scalers', 'oracle'], 'oracle'),
    (['--robots', '0'], 'not above 0'),
    ([], 'only the fleet simulation'),
    (['--robots', '2', '--policies', 'static-split', '--split-options', TO_MIDDLE],
     'three tiers need'),
    (['--robots', '2', '--split-options', f'{COMPACT}:nowhere:int8+zstd'], 'nowhere'),
])
def test_bad_fleet_arguments_are_named(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                       args: list[str], message: str) -> None:
    scenario = tmp_path / 'crash.yaml'
    scenario.write_text('name: crash\nfaults:\n  - {kind: replica_crash, start_s: 3.0}\n')
    code = main(['evaluate', '--scenarios', str(scenario), '--frames', '10', '--out',
                 str(tmp_path / 'out'), *args])
    assert code == 2 and message in capsys.readouterr().err


def test_the_cli_runs_split_options_in_a_fleet(tmp_path: Path) -> None:
    scenario = tmp_path / 'calm.yaml'
    scenario.write_text('name: calm\nfaults: []\n')
    out = tmp_path / 'out'
    # Without --middle the three-tier option is refused (as above): here it reaches the fleet.
    code = main(['evaluate', '--scenarios', str(scenario), '--robots', '2', '--frames', '40',
                 '--policies', 'static-split', '--split-options', TO_MIDDLE, '--middle',
                 'laptop_cpu', '--deadline-ms', '400', '--fps', '5', '--cloud', 'h200_server',
                 '--out', str(out)])
    assert code == 0
    assert '| calm | static-split | static | 2 | 0.00 |' in (out / 'fleet.md').read_text()


def test_runs_in_worker_processes_give_the_same_rows(tmp_path: Path) -> None:
    scenario = tmp_path / 'crash.yaml'
    scenario.write_text('name: crash\nfaults:\n  - {kind: replica_crash, start_s: 3.0}\n')
    opts = EvalOptions(scenarios=[scenario], policies=['static', 'cloud-only'], frames=80,
                       out=tmp_path / 'one')
    fleet = FleetOptions(2, ServiceSettings(replicas=2, pod_start_s=2.0), ('static', 'reactive'))
    alone = evaluate_fleet(opts, fleet, lambda line: None)
    pooled = evaluate_fleet(dataclasses.replace(opts, out=tmp_path / 'two'), fleet,
                            lambda line: None, jobs=2)
    # repr: a run that never recovers has MTTR NaN, which equals nothing
    assert [repr(dataclasses.replace(r, wall_s=0.0)) for r in alone] == \
        [repr(dataclasses.replace(r, wall_s=0.0)) for r in pooled]
    assert [(r.policy, r.scaler) for r in pooled] == [
        ('static', 'static'), ('static', 'reactive'), ('cloud-only', 'static'),
        ('cloud-only', 'reactive')]
