"""Fault injection into a live graph: the rehearsal, the faults nodes obey, the service pid."""

from __future__ import annotations

import os
from pathlib import Path
import signal
import socket
import threading
from typing import Any

from adaptive_offload.datatypes import Decision, FrameRecord, InferenceReport, Level
from adaptive_offload.errors import ConfigError
from adaptive_offload.health_records import FaultEvent
from fault_injection.live import (ObeyedFaults, parse_address, Rehearsal, rehearsal_parameters,
                                  StallingProcessor)
from fault_injection.processes import pid_listening_on
from fault_injection.scenario import load_scenario, parse_scenario
from health_monitor.monitor import HealthConfig, HealthMonitor
from helpers import ManualClock
import pytest


def _scenario(*faults: dict) -> Any:
    return parse_scenario({'name': 'rehearsal', 'faults': list(faults)})


class _Core:
    """An edge core that counts the frames it processes."""

    def __init__(self) -> None:
        self.calls = 0

    def process(self, msg: Any, decision: Decision, waited_ns: int = 0) -> tuple[None, Any]:
        self.calls += 1
        self.waited_ns = waited_ns
        return None, 'report'

    def drop(self, *args: Any) -> str:
        return 'dropped'


def _stall(phase: str, duration_s: float = 2.0) -> FaultEvent:
    return FaultEvent(t_s=1.0, kind='edge_stall', phase=phase, duration_s=duration_s)


def test_obeyed_faults_hold_from_start_to_end_and_never_past_their_duration() -> None:
    clock = ManualClock(0)
    faults = ObeyedFaults(clock)
    faults.on_fault(FaultEvent(kind='cloud_outage', phase='start', duration_s=5.0))
    assert not faults.active('cloud_outage')  # not a node's to obey
    faults.on_fault(FaultEvent(kind='manager_death', phase='start', duration_s=2.0))
    assert faults.active('manager_death') and not faults.active('edge_stall')
    faults.on_fault(FaultEvent(kind='manager_death', phase='end'))
    assert not faults.active('manager_death')
    faults.on_fault(FaultEvent(kind='manager_death', phase='start', duration_s=2.0))
    clock.advance(1999)
    assert faults.active('manager_death')
    clock.advance(1)  # the end event was lost: the fault lapses at its duration
    assert not faults.active('manager_death')


def test_a_stalled_edge_holds_its_frame_until_the_stall_ends() -> None:
    faults = ObeyedFaults()
    core = _Core()
    stalling = StallingProcessor(core, faults)
    stalling.process(None, Decision(), 7)
    assert core.calls == 1 and core.waited_ns == 7  # no stall: at once, with its wait
    faults.on_fault(_stall('start', duration_s=60.0))
    worker = threading.Thread(target=stalling.process, args=(None, Decision()))
    worker.start()
    worker.join(0.2)
    assert worker.is_alive() and core.calls == 1  # held, as a hung node
    faults.on_fault(_stall('end'))
    worker.join(5.0)
    assert not worker.is_alive() and core.calls == 2
    assert stalling.drop(0, 'cam', 'superseded', Decision()) == 'dropped'


def test_the_service_process_is_found_by_its_listening_port() -> None:
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        sock.listen()
        port = sock.getsockname()[1]
        assert pid_listening_on(port) == os.getpid()
    assert pid_listening_on(port) is None
    assert pid_listening_on(port, Path('/nonexistent')) is None


def test_process_faults_signal_the_service_and_are_undone_at_close() -> None:
    clock = ManualClock(0)
    sent: list[tuple[int, int]] = []
    scenario = _scenario({'kind': 'service_stop', 'start_s': 1.0, 'duration_s': 2.0},
                         {'kind': 'service_kill', 'start_s': 5.0, 'duration_s': 1.0})
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        sock.listen()
        port = sock.getsockname()[1]
        rehearsal = Rehearsal(scenario, clock, service_port=port,
                              kill=lambda pid, sig: sent.append((pid, sig)))
        assert rehearsal.tick() == [] and not rehearsal.started  # nothing before start
        rehearsal.start()
        clock.advance(1500)
        assert [(e.kind, e.phase, e.duration_s) for e in rehearsal.tick()] == [
            ('service_stop', 'start', 2.0)]
        assert sent == [(os.getpid(), signal.SIGSTOP)]
        status = rehearsal.run(clock())
        assert status.level == Level.WARN and 'service_stop in force' in status.message
        rehearsal.close()  # a stopped service must not stay stopped
        assert sent[-1] == (os.getpid(), signal.SIGCONT)
        clock.advance(4000)
        assert [(e.kind, e.phase) for e in rehearsal.tick()] == [
            ('service_stop', 'end'), ('service_kill', 'start')]
        assert sent[-1] == (os.getpid(), signal.SIGKILL)
        assert rehearsal.tick() == []  # each start and end once
    clock.advance(2000)
    rehearsal.tick()  # the port is closed now: noted, nothing signalled
    lost = _scenario({'kind': 'service_kill', 'start_s': 0.0, 'duration_s': 1.0})
    nobody = Rehearsal(lost, clock, service_port=port,
                       kill=lambda pid, sig: sent.append((pid, sig)))
    nobody.start()
    count = len(sent)
    nobody.tick()
    assert len(sent) == count and 'no process listens' in nobody.notes[0]


def test_a_rehearsal_refuses_faults_it_cannot_inject() -> None:
    with pytest.raises(ConfigError, match='fault_proxy_port'):
        Rehearsal(load_scenario('cloud_outage_10s'))
    with pytest.raises(ConfigError, match='service_port'):
        Rehearsal(_scenario({'kind': 'service_kill', 'start_s': 1.0, 'duration_s': 1.0}))
    assert parse_address('10.0.0.2:8000') == ('10.0.0.2', 8000)
    assert parse_address('8000') == ('127.0.0.1', 8000)
    for bad in ('host:', 'host:http', 'host:70000'):
        with pytest.raises(ConfigError, match='host:port'):
            parse_address(bad)


def _echo_server() -> tuple[socket.socket, threading.Thread]:
    server = socket.socket()
    server.bind(('127.0.0.1', 0))
    server.listen()

    def serve() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            with conn:
                data = conn.recv(64)
                if data:
                    conn.sendall(data)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return server, thread


def _through(address: tuple[str, int]) -> bytes:
    """Send ``ping`` through the proxy; return the echo, or b'' if it was refused or cut."""
    # The outage resets a connection once accepted: the reset can reach the client while it
    # connects or sends (a busy host), not only while it reads.
    try:
        with socket.create_connection(address, timeout=5.0) as conn:
            conn.sendall(b'ping')
            return conn.recv(64)
    except (ConnectionError, socket.timeout):
        return b''


def test_network_faults_go_through_the_proxy_in_front_of_the_service() -> None:
    clock = ManualClock(0)
    server, thread = _echo_server()
    with socket.socket() as probe:
        probe.bind(('127.0.0.1', 0))
        listen = probe.getsockname()
    scenario = _scenario({'kind': 'cloud_outage', 'start_s': 1.0, 'duration_s': 1.0})
    rehearsal = Rehearsal(scenario, clock, proxy_listen=listen,
                          proxy_upstream=server.getsockname())
    try:
        rehearsal.start()
        assert _through(listen) == b'ping'  # before the fault: traffic passes
        clock.advance(1500)
        assert [e.kind for e in rehearsal.tick()] == ['cloud_outage']
        assert _through(listen) == b''  # the outage refuses or cuts the connection
        clock.advance(1000)
        rehearsal.tick()
        assert _through(listen) == b'ping'
    finally:
        rehearsal.close()
        server.shutdown(socket.SHUT_RDWR)  # wakes the accept() a close alone would not
        server.close()
        thread.join(5.0)


def test_measures_come_from_what_the_graph_publishes() -> None:
    clock = ManualClock(0)
    scenario = _scenario({'kind': 'edge_stall', 'start_s': 1.0, 'duration_s': 1.0})
    rehearsal = Rehearsal(scenario, clock)
    rehearsal.start()
    for i in range(30):  # 10 fps; the edge is dropped during the stall
        stalled = 10 <= i < 20
        rehearsal.on_report(InferenceReport(source='edge', total_ms=20.0,
                                            status='dropped' if stalled else 'ok'))
        rehearsal.on_record(FrameRecord(index=i, deadline_ms=250.0, latency_ms=30.0,
                                        deadline_met=True,
                                        result_source='cloud' if i >= 10 else 'edge'))
        rehearsal.tick()
        clock.advance(100)
    [measure] = rehearsal.measures()
    assert measure.kind == 'edge_stall' and measure.detect_s == pytest.approx(0.0)
    assert measure.recover_s == pytest.approx(0.0)  # the cloud served from the stall on
    [line] = rehearsal.summary()
    assert line == ('fault edge_stall at 1.0 s: detected 0 ms (on /diagnostics -), '
                    'recovered 0 ms, 0 late, 0 dropped')
    assert rehearsal.run(clock()).level == Level.OK


def test_the_health_monitor_injects_only_when_given_a_scenario(tmp_path: Path) -> None:
    assert HealthMonitor(HealthConfig.from_params({}), 0).rehearsal(ManualClock(0)) is None
    (tmp_path / 'stall.yaml').write_text(
        'faults:\n  - {kind: edge_stall, start_s: 1.0, duration_s: 1.0}\n')
    monitor = HealthMonitor(HealthConfig.from_params({'scenario': str(tmp_path / 'stall.yaml')}),
                            0)
    rehearsal = monitor.rehearsal(ManualClock(0))
    assert rehearsal is not None and not rehearsal.started
    statuses, _ = monitor.run(0)
    assert any(s.name == rehearsal.name for s in statuses)
    with pytest.raises(ConfigError, match='fault_proxy_port'):
        HealthMonitor(HealthConfig.from_params({'scenario': 'cloud_outage_10s'}),
                      0).rehearsal(ManualClock(0))
    with pytest.raises(ConfigError, match='host:port'):
        HealthMonitor(HealthConfig.from_params({
            'scenario': 'cloud_outage_10s', 'fault_proxy_port': 9000,
            'fault_proxy_upstream': 'gpu-server'}), 0).rehearsal(ManualClock(0))


def test_a_launched_rehearsal_points_the_bridge_at_the_proxy(tmp_path: Path) -> None:
    params = {'/**': {'image_topic': '/camera/image_raw'},
              'cloud_bridge': {'url': 'grpc://127.0.0.1:8081/v2'},
              'offload_manager': {'edge_sources': ['edge', 'pi']}}
    assert rehearsal_parameters(params, '', 18081) == {}  # safe by default
    network = rehearsal_parameters(params, 'cloud_outage_10s', 18081)
    assert network == {
        'health_monitor': {'scenario': 'cloud_outage_10s', 'fault_proxy_port': 18081,
                           'fault_proxy_upstream': '127.0.0.1:8081',
                           'edge_sources': ['edge', 'pi']},
        'cloud_bridge': {'url': 'grpc://127.0.0.1:18081/v2'}}
    (tmp_path / 'mixed.yaml').write_text(
        'faults:\n  - {kind: service_kill, start_s: 1.0, duration_s: 1.0}\n'
        '  - {kind: manager_death, start_s: 3.0, duration_s: 1.0}\n')
    mixed = rehearsal_parameters(params, str(tmp_path / 'mixed.yaml'), 18081)
    assert mixed['health_monitor']['service_port'] == 8081 and 'cloud_bridge' not in mixed
    assert mixed['edge_inference'] == mixed['offload_manager'] == {'obey_faults': True}
    remote = {'cloud_bridge': {'url': 'http://gpu-server:8080'}}
    with pytest.raises(ConfigError, match='set service_port'):
        rehearsal_parameters(remote, str(tmp_path / 'mixed.yaml'), 18081)
    assert rehearsal_parameters(remote, str(tmp_path / 'mixed.yaml'), 18081,
                                9000)['health_monitor']['service_port'] == 9000
    with pytest.raises(ConfigError, match='host and a port'):
        rehearsal_parameters({'cloud_bridge': {'url': 'http://gpu-server'}},
                             'cloud_outage_10s', 18081)
    with pytest.raises(ConfigError, match='one url'):  # which endpoint would the proxy front?
        rehearsal_parameters({'cloud_bridge': {'url': 'grpc://a:8081,grpc://b:8081'}},
                             'cloud_outage_10s', 18081)
