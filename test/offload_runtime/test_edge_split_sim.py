"""The edge detector split between the robot and its edge computer, in the simulator.

The robot runs the head to k and sends the payload over its LAN; the edge computer's tail, one
frame at a time with the newest waiting, answers as the edge. A LAN drop slows that route
alone: a static split then misses, predictive leaves it within a second and comes back.
"""

from __future__ import annotations

import statistics

from adaptive_offload.datatypes import InferenceReport
from fault_injection.scenario import parse_scenario
from offload_manager.energy import load_devices
from offload_manager.manager import default_devices_file, OffloadManager
from offload_runtime.evaluate import EvalOptions, manager_config
from offload_runtime.sim_result import SimResult
from offload_runtime.sim_settings import NetworkProfile, SimSettings
from offload_runtime.simulator import Simulation
import pytest

Y = 'yolov8n-shapes@320'
SPLITS = [f'{Y}:2/end:int8+zstd', f'{Y}:4/end:int8+zstd', f'{Y}:6/end:int8+zstd']
NET = NetworkProfile(middle='laptop_cpu', lan_mbps=100.0, lan_rtt_ms=2.0)
NO_CLOUD = {'kind': 'cloud_outage', 'start_s': 0.0, 'duration_s': 1000.0}


def _run(policy: str, faults: list[dict], frames: int = 400, splits: list[str] | None = None,
         fps: float = 10.0,
         reports: list[tuple[InferenceReport, int]] | None = None
         ) -> tuple[SimResult, OffloadManager]:
    opts = EvalOptions(scenarios=[], cloud='h200_server', network=NET,
                       split_options=splits or SPLITS)
    manager = OffloadManager(manager_config(opts, policy, 'raspberry_pi_5'),
                             executes_split=True)
    if reports is not None:  # what the workers told the manager, as it heard it
        heard = manager.on_report
        manager.on_report = lambda r, now_ns=0: (reports.append((r, now_ns)), heard(r, now_ns))[1]
    devices = load_devices(default_devices_file())
    result = Simulation(manager, devices['raspberry_pi_5'], devices['h200_server'], NET,
                        parse_scenario({'faults': faults}),
                        SimSettings(frames=frames, fps=fps)).run()
    return result, manager


def _splits_by_second(result: SimResult) -> dict[int, set[str]]:
    """Return the splits the frames of each second ran on ('' for the robot's own model)."""
    by_second: dict[int, set[str]] = {}
    for rec in result.records:
        by_second.setdefault(int(rec.stamp_ns // 1e9), set()).add(rec.split)
    return by_second


def _drop(start_s: float, seconds: float = 10.0, mbps: float = 2.0) -> dict:
    return {'kind': 'lan_bandwidth', 'start_s': start_s, 'duration_s': seconds, 'mbps': mbps}


def test_a_static_edge_split_runs_head_lan_and_tail_and_a_lan_drop_slows_it() -> None:
    result, manager = _run('static-split', [_drop(10.0)], splits=[SPLITS[1]])
    fig = manager.config.policy_settings().splits[SPLITS[1]]
    assert {r.route for r in result.records} == {'edge'}
    assert {r.split for r in result.records} == {SPLITS[1]}
    calm = [r.latency_ms for r in result.records if r.stamp_ns < 10e9 and r.latency_ms]
    dropped = [r.latency_ms for r in result.records
               if 10.5e9 <= r.stamp_ns < 19.5e9 and r.latency_ms]
    # Head, encode, LAN and the laptop's tail, as the profiles say; then the LAN at 2 Mbit/s.
    assert statistics.median(calm) == pytest.approx(fig.before_wan_ms, rel=0.1)
    assert statistics.median(dropped) > fig.payload_bytes * 8 / 2e3
    late = [r for r in result.records if 10e9 <= r.stamp_ns < 20e9 and not r.deadline_met]
    assert len(late) > 60  # nothing moves it: the frames of the drop are late
    # Its radio sent every frame's payload on the LAN; nothing reached the cloud.
    assert result.bytes_sent == len(result.records) * fig.payload_bytes
    assert result.cloud_requests == 0
    # The robot paid its head, encode and radio: far less than its own model would.
    own, _ = _run('edge-only', [], frames=100)
    assert statistics.mean(result.energy_j.values()) < 0.9 * statistics.mean(
        own.energy_j.values())


def test_predictive_leaves_a_slow_lan_within_a_second_and_comes_back_after() -> None:
    result, _ = _run('predictive', [NO_CLOUD, _drop(10.0)], frames=600)
    by_second = _splits_by_second(result)
    assert all(by_second[s] == {SPLITS[1]} for s in range(2, 10))  # the cheapest split
    late = [r for r in result.records if 10e9 <= r.stamp_ns and not r.deadline_met]
    assert late and max(r.stamp_ns for r in late) < 11e9  # left within a second
    assert all(by_second[s] == {''} for s in range(12, 20))  # the Pi's own model meanwhile
    # Its probes of the split (a frame a second) show the LAN back within a few seconds.
    back = min(s for s in range(20, 60) if by_second[s] == {SPLITS[1]})
    assert back <= 24 and all(by_second[s] == {SPLITS[1]} for s in range(back + 1, 60))
    assert not [r for r in result.records if r.stamp_ns >= 11e9 and not r.deadline_met]


def test_a_lan_that_loses_the_payloads_silently_is_left_and_taken_again_when_it_stops() -> None:
    lossy = {'kind': 'lan_loss', 'start_s': 10.0, 'duration_s': 10.0, 'probability': 0.9}
    result, _ = _run('predictive', [NO_CLOUD, lossy], frames=400)
    by_second = _splits_by_second(result)
    lost = [r for r in result.records if r.drop_reason]
    # Nothing answers a lost payload and nothing fails: the frames forwarded and overdue
    # move the robot to its own model within the deadline and a few frames (timed from the
    # head's reports, not from the plans after them: 0.5 s, not 0.8).
    assert lost and all(10e9 <= r.stamp_ns < 10.5e9 for r in lost)
    assert all(by_second[s] == {''} for s in range(12, 20))
    back = min(s for s in range(20, 40) if by_second[s] == {SPLITS[1]})
    assert back <= 24 and all(by_second[s] == {SPLITS[1]} for s in range(back + 1, 40))


def test_probes_of_the_split_left_measure_it_without_taking_frames_from_the_robot() -> None:
    reports: list[tuple[InferenceReport, int]] = []
    result, _ = _run('predictive', [NO_CLOUD, _drop(10.0, seconds=40.0)], frames=400,
                     reports=reports)
    own = [r for r in result.records if r.stamp_ns >= 12e9 and r.result_source]
    # The LAN stays slow: the robot keeps its own model, every frame answered in time...
    assert own and all(r.split == '' and r.deadline_met for r in own)
    # ...and sends one frame in ten on as a probe, whose answers keep saying the LAN is slow:
    # in time alone (some 300 ms at 2 Mbit/s), but the LAN takes two camera periods a frame.
    probes = {r.stamp_ns for r, _ in reports if r.split_probe == SPLITS[1] and r.stamp_ns >= 12e9}
    answered_ms = [(now - r.stamp_ns) / 1e6 for r, now in reports
                   if r.stamp_ns in probes and r.split == SPLITS[1]]
    assert 26 <= len(probes) <= 28 and len(answered_ms) == len(probes)
    assert all(200 < ms < 400 for ms in answered_ms)
