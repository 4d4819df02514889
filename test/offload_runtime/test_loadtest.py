"""The load test: every frame due is counted once, by what became of it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

from helpers import v2_stub, V2Handler
from offload_runtime.cli import main
from offload_runtime.loadtest import classify, format_table, LoadSpec, run_point
import pytest


@pytest.fixture
def server() -> Iterator[str]:
    with v2_stub() as url:
        yield url


@pytest.mark.parametrize('status, reason, total_ms, outcome', [
    ('ok', '', 100.0, 'good'), ('ok', '', 251.0, 'late'),
    ('failed', 'overloaded: overloaded (budget): ...', 3.0, 'refused'),
    ('failed', 'backoff', 0.0, 'backoff'), ('failed', 'timeout: timed out', 250.0, 'timeout'),
    ('failed', 'connection: refused', 1.0, 'error'), ('failed', 'circuit_open', 0.0, 'breaker')])
def test_each_report_has_one_outcome(status: str, reason: str, total_ms: float,
                                     outcome: str) -> None:
    assert classify(status, reason, total_ms, 250.0) == outcome


def test_every_frame_due_is_counted_and_each_robot_has_its_own_id(server: str) -> None:
    result = run_point(server, LoadSpec(robots=3, fps=20.0, deadline_ms=2000.0, seconds=1.0))
    assert sum(result.counts.values()) == 60 and result.offered_fps == 60.0
    assert result.counts['good'] + result.counts['busy'] == 60
    assert result.counts['good'] >= 30 and len(result.latencies_ms) == result.counts['good']
    robots = {seen['parameters']['robot_id'] for seen in V2Handler.seen}
    assert robots == {'robot-0', 'robot-1', 'robot-2'}
    row = result.row()
    assert row['robots'] == 3 and row['goodput_fps'] == result.counts['good'] / 1.0
    assert row['p50_ms'] <= row['p99_ms']
    assert format_table([result]).splitlines()[0].split()[:3] == ['robots', 'offered_fps',
                                                                  'goodput_fps']


def test_a_refusing_service_makes_robots_back_off_instead_of_sending(server: str) -> None:
    V2Handler.mode = 'overloaded'  # says: retry after 250 ms
    result = run_point(server, LoadSpec(robots=2, fps=20.0, deadline_ms=500.0, seconds=1.0))
    assert sum(result.counts.values()) == 40 and result.counts['good'] == 0
    assert result.counts['refused'] >= 2 and result.counts['backoff'] >= 10
    # backing off, the robots sent fewer requests than they had frames
    assert len(V2Handler.seen) == result.counts['refused'] < 20


def test_the_command_runs_a_fleet_against_a_started_service(tmp_path: Path,
                                                            capsys: pytest.CaptureFixture
                                                            ) -> None:
    out = tmp_path / 'rows.json'
    assert main(['loadtest', '--robots', '1', '3', '--fps', '2', '--seconds', '2',
                 '--deadline-ms', '2000', '--json', str(out)]) == 0
    rows = json.loads(out.read_text())
    assert [r['robots'] for r in rows] == [1, 3] and rows[1]['offered_fps'] == 6.0
    assert rows[0]['goodput_fps'] > 0  # the shipped model answers a lone robot in time
    assert rows[0]['server_late'] == 0  # a lone robot's answers all come within its budget
    # the service's counters were read (NaN if not); how many answers of the busy point ran
    # past their budget depends on the host: benchmarks/bench_loadtest.py reports it
    assert rows[1]['server_late'] >= 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].split()[0] == 'robots' and len(printed) == 3
