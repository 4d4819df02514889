"""The simulator and the evaluate command: the unchanged policies on a simulated clock."""

from __future__ import annotations

import csv
import statistics
from pathlib import Path

import pytest

from adaptive_offload.cli import main
from adaptive_offload.evaluate import EvalOptions, _manager, evaluate
from health_monitor.scenario import parse_scenario
from offload_manager.core import OffloadManager, default_devices_file
from offload_manager.energy import load_devices
from offload_manager.simulate import NetworkProfile, SimSettings, Simulation

ROOT = Path(__file__).resolve().parents[1]


def _sim(policy: str, faults: list[dict], frames: int = 600, **net: float) -> Simulation:
    devices = load_devices(default_devices_file())
    manager = OffloadManager(_manager(EvalOptions(scenarios=[]), policy, 'raspberry_pi_5'))
    return Simulation(manager, devices['raspberry_pi_5'], devices['gpu_server'],
                      NetworkProfile(**net), parse_scenario({'faults': faults}),
                      SimSettings(frames=frames))


def test_every_frame_ends_once_and_edge_only_never_calls_the_cloud() -> None:
    result = _sim('edge-only', []).run()
    assert sorted(r.index for r in result.records) == list(range(600))
    assert result.cloud_requests == 0 and result.bytes_sent == 0
    assert {r.result_source for r in result.records} <= {'edge', ''}


def test_an_outage_costs_cloud_only_frames_and_the_breaker_fails_fast() -> None:
    outage = [{'kind': 'cloud_outage', 'start_s': 20.0, 'duration_s': 10.0}]
    steady = _sim('cloud-only', []).run()
    down = _sim('cloud-only', outage).run()
    missed = [r for r in down.records if not r.deadline_met]
    assert not any(not r.deadline_met for r in steady.records)
    assert 50 <= len(missed) <= 110  # about the 100 frames of the outage
    assert all(19.9e9 <= r.stamp_ns <= 31e9 for r in missed)
    assert down.cloud_requests < steady.cloud_requests  # open breaker: no requests sent


def test_cpu_contention_slows_the_edge_as_the_scenario_says() -> None:
    busy = [{'kind': 'cpu_contention', 'start_s': 0.0, 'duration_s': 100.0, 'slowdown': 3.0}]
    calm = _sim('edge-only', []).run()
    slow = _sim('edge-only', busy).run()
    calm_ms = [r.latency_ms for r in calm.records if r.latency_ms]
    slow_ms = [r.latency_ms for r in slow.records if r.latency_ms]
    assert statistics.median(slow_ms) > 2 * statistics.median(calm_ms)
    assert len(slow_ms) < len(calm_ms)  # the slow edge cannot take every frame: superseded
    assert len(slow.records) == len(calm.records) == 600  # yet every frame has its record


def test_reactive_fails_over_within_the_outage_and_comes_back() -> None:
    outage = [{'kind': 'cloud_outage', 'start_s': 20.0, 'duration_s': 10.0}]
    result = _sim('reactive', outage).run()
    during = [t for t, route in result.routes if 20.0 <= t < 30.0 and route == 'edge']
    after = [t for t, route in result.routes if t > 45.0]
    assert during and during[0] < 21.0  # three timeouts, then the edge
    assert after and result.routes[-1][1] == 'cloud'


def test_evaluate_writes_table_and_plots(tmp_path: Path) -> None:
    scenario = tmp_path / 'outage.yaml'
    scenario.write_text('name: short outage\nfaults:\n'
                        '  - {kind: cloud_outage, start_s: 5.0, duration_s: 5.0}\n')
    rows = evaluate(EvalOptions(scenarios=[scenario], policies=['predictive', 'static',
                                                                'cloud-only'],
                                out=tmp_path / 'out', frames=300), announce=lambda _: None)
    assert [r.policy for r in rows] == ['predictive', 'static', 'cloud-only']
    by = {r.policy: r for r in rows}
    assert by['predictive'].energy_j <= 0.6 * by['static'].energy_j
    assert by['predictive'].miss_pct <= 1.0 < by['cloud-only'].miss_pct
    with (tmp_path / 'out' / 'table.csv').open() as fh:
        assert len(list(csv.DictReader(fh))) == 3
    for plot in ('latency_cdf', 'routes', 'energy'):
        assert (tmp_path / 'out' / f'{plot}_short_outage.png').stat().st_size > 1000


def test_evaluate_command_and_its_errors(tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    assert main(['evaluate', '--scenarios', str(ROOT / 'config/scenarios/steady.yaml'),
                 '--policies', 'edge-only,weighted-score', '--frames', '100',
                 '--out', str(tmp_path / 'ev')]) == 0
    assert 'table:' in capsys.readouterr().out
    assert main(['evaluate', '--policies', 'telepathy', '--out', str(tmp_path / 'x'),
                 '--scenarios', str(ROOT / 'config/scenarios')]) == 2
    assert 'telepathy' in capsys.readouterr().err
