"""Readiness probes, bandwidth collapse, anomaly models and the failure history."""

from __future__ import annotations

from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
import threading
import time

from adaptive_offload.datatypes import InferenceReport, Level
from adaptive_offload.failure_log import FailureLog, load_outcomes
from adaptive_offload.health_records import HealthEvent
from health_monitor.checks import CloudCheck
from health_monitor.link_checks import (ANOMALY_DETECTORS, BandwidthCheck, http_ready_probe,
                                        ReadinessCheck, ReadinessProber)
from health_monitor.monitor import HealthConfig, HealthMonitor
import numpy as np
import pytest

S = 1_000_000_000


def test_readiness_levels_follow_the_probes() -> None:
    check = ReadinessCheck('http://cloud:8080', period_s=1.0, fail_after=3)
    assert check.run(0).level == Level.STALE  # no probe yet
    check.record(True, 0)
    assert check.run(S // 2).level == Level.OK
    check.record(False, S, 'refused')
    assert check.run(S).level == Level.WARN
    check.record(False, 2 * S, 'refused')
    check.record(False, 3 * S, 'refused')
    status = check.run(3 * S)
    assert status.level == Level.ERROR and 'refused' in status.message
    assert check.run(7 * S).level == Level.STALE  # the prober itself went quiet
    check.record(True, 8 * S)
    assert check.run(8 * S).level == Level.OK


class _Ready(BaseHTTPRequestHandler):
    ready = False

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        self.send_response(200 if type(self).ready else 503)
        self.send_header('Content-Length', '0')
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def test_http_probe_and_prober_thread_against_a_server() -> None:
    server = ThreadingHTTPServer(('127.0.0.1', 0), _Ready)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f'http://127.0.0.1:{server.server_address[1]}'
    try:
        probe = http_ready_probe(url)
        assert probe() == (False, 'HTTP 503')
        _Ready.ready = True
        assert probe() == (True, '')
        check = ReadinessCheck(url, period_s=0.05)
        ticks = iter(range(10**6))
        prober = ReadinessProber(check, probe, 0.05, clock=lambda: next(ticks))
        prober.start()
        for _ in range(200):  # bounded wait for the first probe result
            if check.run(0).level != Level.STALE:
                break
            threading.Event().wait(0.01)
        prober.stop()
        assert check.run(0).level == Level.OK
    finally:
        server.shutdown()
        server.server_close()
    assert http_ready_probe(url, timeout_s=0.2)()[0] is False  # server gone


def _cloud(mbps: float, nbytes: int = 50_000) -> InferenceReport:
    transfer = nbytes * 8 / (mbps * 1e3)
    return InferenceReport(source='cloud', status='ok', bytes_sent=nbytes,
                           inference_ms=transfer + 20.0, server_ms=20.0)


def test_bandwidth_collapse_warns_then_errors() -> None:
    check = BandwidthCheck(baseline=50, recent=5, collapse_ratio=0.3, floor_mbps=1.0)
    assert check.run(0).level == Level.OK
    for _ in range(40):
        check.report(_cloud(50.0))
    assert check.run(0).level == Level.OK
    for _ in range(5):
        check.report(_cloud(5.0))
    assert check.run(0).level == Level.WARN
    for _ in range(5):
        check.report(_cloud(0.5))
    assert check.run(0).level == Level.ERROR
    check.report(InferenceReport(source='cloud', status='failed'))  # no rate in a failure
    assert check.run(0).level == Level.ERROR


@pytest.mark.parametrize('name', sorted(ANOMALY_DETECTORS))
def test_anomaly_models_flag_a_spike_not_jitter(name: str) -> None:
    rng = np.random.default_rng(0)
    window = list(100 + rng.normal(0, 5, 50))
    detector = ANOMALY_DETECTORS[name]()
    assert not any(detector.is_anomaly(v, window) for v in (95.0, 104.0, 110.0))
    assert detector.is_anomaly(1000.0, window)
    check = CloudCheck(detector=ANOMALY_DETECTORS[name]())
    for v in window:
        check.report(InferenceReport(source='cloud', status='ok', inference_ms=float(v)))
    assert check.run(0).level == Level.OK
    check.report(InferenceReport(source='cloud', status='ok', inference_ms=1000.0))
    assert check.run(0).level == Level.WARN


def test_failure_history_survives_a_restart_and_warms_the_manager(tmp_path: Path) -> None:
    from offload_manager.manager import ManagerConfig, OffloadManager

    path = tmp_path / 'state' / 'history.jsonl'
    start = time.time() - 100.0  # the manager reads the file against the real wall clock
    wall = iter([start + i for i in range(100)])
    log = FailureLog(path, wall=lambda: next(wall))
    for ok in (True, True, False, False, False):
        log.report(InferenceReport(source='cloud', status='ok' if ok else 'failed'))
    log.report(InferenceReport(source='edge', status='ok'))  # not a cloud request
    log.event(HealthEvent(name='adaptive_offload: cloud', level=2))
    log.close()
    with path.open('a') as fh:
        fh.write('{"t": 10')  # a line cut by a crash
    outcomes = load_outcomes(path, now_wall=start + 10.0, now_s=50.0)
    assert outcomes == [(40.0, True), (41.0, True), (42.0, False), (43.0, False),
                        (44.0, False)]
    assert load_outcomes(path, now_wall=start + 7200, now_s=0.0) == []  # too old
    assert load_outcomes(tmp_path / 'none.jsonl', 0.0, 0.0) == []

    manager = OffloadManager(ManagerConfig.from_params({
        'policy': 'predictive', 'history_file': str(path)}))
    manager.tick(int(50e9))
    availability = manager._policy.obs.availability
    assert availability.predict(50.0) < 0.5  # remembers three failures in a row


def test_monitor_writes_its_history(tmp_path: Path) -> None:
    path = tmp_path / 'h.jsonl'
    monitor = HealthMonitor(HealthConfig.from_params({'history_file': str(path)}), 0)
    for _ in range(3):
        monitor.report(InferenceReport(source='cloud', status='failed', reason='timeout'))
    monitor.run(S)
    monitor.close()
    lines = path.read_text().splitlines()
    assert sum('"request"' in line for line in lines) == 3
    assert any('"health"' in line and 'cloud' in line for line in lines)
