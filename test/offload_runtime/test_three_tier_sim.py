"""Three-tier split routes in the simulator: robot head, middle device on the LAN, cloud tail."""

from __future__ import annotations

from pathlib import Path
import statistics

from fault_injection.scenario import parse_scenario
from offload_manager.energy import load_devices
from offload_manager.manager import default_devices_file, ManagerConfig, OffloadManager
from offload_runtime.cli import build_parser
from offload_runtime.evaluate import EvalOptions, manager_config
from offload_runtime.fleet_cli import network_profile
from offload_runtime.sim_settings import NetworkProfile, SimSettings
from offload_runtime.simulator import Simulation
from offload_runtime.three_tier import TIERS
import pytest

S = 'fasterrcnn_mobilenet_v3_small_fpn@640'
THREE = f'{S}:body.2/body.3:int8+zstd'
SHIPPED = 'fasterrcnn_mobilenet_v3_small_fpn'


def test_static_three_tier_split_runs_every_frame_through_three_tiers() -> None:
    net = NetworkProfile(middle='laptop_cpu', lan_mbps=100.0, lan_rtt_ms=2.0)
    opts = EvalOptions(scenarios=[], cloud='h200_server', network=net, split_options=[THREE])
    manager = OffloadManager(manager_config(opts, 'static-split', 'raspberry_pi_5'),
                             executes_split=True)
    devices = load_devices(default_devices_file())
    drop = [{'kind': 'bandwidth', 'start_s': 10.0, 'duration_s': 5.0, 'mbps': 5.0}]
    result = Simulation(manager, devices['raspberry_pi_5'], devices['h200_server'], net,
                        parse_scenario({'faults': drop}),
                        SimSettings(frames=200, cloud_model=SHIPPED)).run()
    assert len(result.records) == 200 and {r.route for r in result.records} == {'split'}
    # In the drop a frame waits for one of the two requests in flight; one that waited past
    # its deadline is not sent, and one sent is given what its deadline has left.
    assert len(result.tiers) == result.cloud_requests > 180
    answered = [r for r in result.records if r.result_source == 'cloud']
    assert len(answered) > 175 and all(r.deadline_met for r in answered)
    for rec in answered:
        parts = result.tiers[rec.stamp_ns]
        assert all(parts[tier] > 0 for tier in TIERS)
        assert rec.latency_ms == pytest.approx(sum(parts.values()), abs=0.01) or \
            10e9 <= rec.stamp_ns and rec.latency_ms > sum(parts.values())
    # The drop slows the uplink leg alone: the LAN leg is as before.
    calm = [p for s, p in result.tiers.items() if not 10e9 <= s < 15e9]
    dropped = [p for s, p in result.tiers.items() if 10.3e9 <= s < 14.7e9]
    for tier, slower in (('wan', True), ('lan', False), ('middle', False)):
        ratio = statistics.median(p[tier] for p in dropped) / \
            statistics.median(p[tier] for p in calm)
        assert (ratio > 3) is slower, tier
    # The robot sent payload(body.2) on its LAN; its radio energy is for those bytes.
    fig = manager.config.policy_settings().splits[THREE]
    assert result.bytes_sent == result.cloud_requests * fig.payload_bytes


DEVICES = f"""
devices:
  slow_robot:
    idle_w: 2.7
    compute_w: 7.0
    tx_nj_per_bit: 50.0
    inference_ms: {{yolov8n@640: 2000.0, yolov8n@320: 1500.0}}
    split_ms:
      {S}: {{transform: [5.0, 900.0], body.2: [60.0, 800.0]}}
  fast_middle:
    idle_w: 5.0
    compute_w: 15.0
    split_ms:
      {S}: {{transform: [1.0, 40.0], body.2: [3.0, 35.0]}}
  gpu:
    idle_w: 75.0
    compute_w: 700.0
    inference_ms: {{{S}: 13.0}}
    split_ms:
      {S}: {{transform: [0.3, 13.0], body.2: [0.9, 10.5]}}
"""


def _predictive(tmp_path: Path, uplink_mbps: float) -> tuple[list[str], str]:
    (tmp_path / 'devices.yaml').write_text(DEVICES)
    options = [f'{S}:transform/end:int8+zstd', f'{S}:body.2/end:int8+zstd',
               f'{S}:transform/body.2:int8+zstd', f'{S}:body.2:int8+zstd']
    config = ManagerConfig.from_params({
        'policy': 'predictive', 'device': 'slow_robot', 'cloud_device': 'gpu',
        'devices_file': str(tmp_path / 'devices.yaml'), 'cloud_model': SHIPPED,
        'split_options': options, 'split_middle_device': 'fast_middle',
        'split_lan_mbps': 1000.0, 'split_lan_rtt_ms': 1.0})
    devices = load_devices(tmp_path / 'devices.yaml')
    net = NetworkProfile(uplink_mbps=uplink_mbps, lan_mbps=1000.0, lan_rtt_ms=1.0)
    result = Simulation(OffloadManager(config, executes_split=True), devices['slow_robot'],
                        devices['gpu'], net, parse_scenario({'faults': []}),
                        SimSettings(frames=300, cloud_model=SHIPPED, q75_bytes=20157),
                        middle=devices['fast_middle']).run()
    late = [r for r in result.records if r.index >= 200]
    return [r.route for r in late], statistics.mean(r.deadline_met for r in late)


def test_predictive_takes_three_tiers_where_only_they_are_in_time(tmp_path: Path) -> None:
    # The robot's own model takes 2 s and a q50 frame 0.4 s over the uplink: only the middle
    # device, 1 Gbit/s away, answers in time.
    routes, met = _predictive(tmp_path, uplink_mbps=0.2)
    assert set(routes) == {'split'} and met == 1.0


def test_predictive_keeps_the_frame_where_its_jpeg_is_cheaper(tmp_path: Path) -> None:
    routes, met = _predictive(tmp_path, uplink_mbps=50.0)
    assert 'split' not in routes and met == 1.0


def test_evaluate_flags_build_the_lan() -> None:
    args = build_parser().parse_args(['evaluate', '--out', 'x', '--middle', 'laptop_cpu',
                                      '--lan-mbps', '300', '--lan-rtt-ms', '1.5'])
    net = network_profile(args)
    assert (net.middle, net.lan_mbps, net.lan_rtt_ms, net.uplink_mbps) == \
        ('laptop_cpu', 300.0, 1.5, 50.0)
    assert net.manager_params() == {'split_middle_device': 'laptop_cpu',
                                    'split_lan_mbps': 300.0, 'split_lan_rtt_ms': 1.5}
    assert NetworkProfile().manager_params() == {}
