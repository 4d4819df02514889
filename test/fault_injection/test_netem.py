"""Kernel-level faults: the tc and ip commands issued, and, as root, their real effect."""

from __future__ import annotations

import select
import socket
import subprocess
import sys
import time
from typing import Iterator

from adaptive_offload.errors import ConfigError
from fault_injection import netem
from fault_injection.netem import NetemInjector, netns_support, NetnsLink, qdisc_support
from fault_injection.scenario import Fault, parse_scenario
from helpers import ManualClock
import pytest

S = 1_000_000_000
PORT = 9000  # the namespace is ours alone: no other listener can hold it


def _fault(kind: str, **params: float) -> Fault:
    entry = {'kind': kind, 'start_s': 0, 'duration_s': 1, **params}
    return parse_scenario({'faults': [entry]}).faults[0]


class Recorder:
    """A runner that records commands and fails those containing ``fail``."""

    def __init__(self, fail: str | None = None) -> None:
        self.commands: list[list[str]] = []
        self.fail = fail

    def __call__(self, argv: list[str]) -> None:
        self.commands.append(argv)
        if self.fail is not None and self.fail in argv:
            raise OSError(f'{" ".join(argv)}: refused')

    def take(self) -> list[str]:
        taken = [' '.join(argv) for argv in self.commands]
        self.commands.clear()
        return taken


def _link(run: Recorder) -> NetnsLink:
    return NetnsLink('ao', subnet=(201, 7), run=run, pid=4321)


def test_open_builds_the_pair_and_close_removes_it() -> None:
    run = Recorder()
    with _link(run) as link:
        ns, host, peer = link.namespace, link.host_veth, link.ns_veth
        assert host == f'{ns}h' and peer == f'{ns}n' and len(host) <= 15
        assert ns.startswith('ao4321-')
        assert (link.host_address, link.ns_address) == ('10.201.7.1', '10.201.7.2')
        assert run.take() == [
            f'ip netns add {ns}',
            f'ip link add name {host} type veth peer name {peer}',
            f'ip link set {peer} netns {ns}',
            f'ip addr add 10.201.7.1/24 dev {host}',
            f'ip link set {host} up',
            f'ip -n {ns} addr add 10.201.7.2/24 dev {peer}',
            f'ip -n {ns} link set {peer} up',
            f'ip -n {ns} link set lo up']
        assert link.exec_argv(['python3', '-V']) == [netem.tool('ip') or 'ip', 'netns', 'exec',
                                                     ns, 'python3', '-V']
    assert run.take() == [f'ip link del {host}', f'ip netns del {ns}']
    link.close()
    assert run.take() == []


def test_a_failed_open_undoes_what_was_done() -> None:
    run = Recorder(fail='addr')  # fails at addressing the host end
    link = NetnsLink('ao', run=run, pid=1)
    with pytest.raises(OSError, match='refused'):
        link.create()
    assert run.take()[-2:] == [f'ip link del {link.host_veth}', f'ip netns del {link.namespace}']
    link.close()
    assert run.take() == []


def test_names_too_long_are_refused() -> None:
    with pytest.raises(ConfigError, match='15'):
        NetnsLink('toolongprefix', run=Recorder(), pid=4_194_304)


def test_apply_maps_faults_to_qdiscs_and_only_changes_what_changed() -> None:
    run = Recorder()
    link = _link(run).create()
    run.take()
    dev = f'dev {link.host_veth}'
    link.apply([_fault('bandwidth', mbps=2)])
    assert run.take() == [f'tc qdisc replace {dev} root tbf rate 2000000bit burst 2500 '
                          'latency 200ms']
    link.apply([_fault('bandwidth', mbps=2)])
    assert run.take() == []
    link.apply([_fault('latency', delay_ms=80, jitter_ms=10), _fault('loss', probability=0.05)])
    assert run.take() == [f'tc qdisc replace {dev} root netem delay 80ms 10ms loss 5%']
    link.apply([_fault('latency', delay_ms=80), _fault('bandwidth', mbps=0.5),
                _fault('corruption', probability=0.01)])
    assert run.take() == [f'tc qdisc replace {dev} root netem delay 80ms corrupt 1% '
                          'rate 500000bit']
    link.apply([_fault('cloud_outage')])
    assert run.take() == [f'tc qdisc del {dev} root',
                          f'ip -n {link.namespace} link set {link.ns_veth} down']
    link.clear()
    assert run.take() == [f'ip -n {link.namespace} link set {link.ns_veth} up']
    link.clear()
    assert run.take() == []


def test_the_injector_applies_the_timeline_only_on_changes() -> None:
    run, clock = Recorder(), ManualClock(0)
    link = _link(run).create()
    run.take()
    scenario = parse_scenario({'faults': [
        {'kind': 'bandwidth', 'start_s': 1, 'duration_s': 2, 'mbps': 8},
        {'kind': 'cloud_outage', 'start_s': 2, 'duration_s': 1}]})
    injector = NetemInjector(link, scenario, clock)
    injector.start(0)
    changes = []
    for _ in range(8):  # scenario time 0, 0.5, ..., 3.5 s
        changes.append(injector.tick())
        clock.advance(500)
    assert changes == [True, False, True, False, True, False, True, False]
    assert run.take() == [
        f'tc qdisc replace dev {link.host_veth} root tbf rate 8000000bit burst 10000 '
        'latency 200ms',
        f'ip -n {link.namespace} link set {link.ns_veth} down',
        f'tc qdisc del dev {link.host_veth} root',
        f'ip -n {link.namespace} link set {link.ns_veth} up']


def test_support_probes_explain_what_is_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(netem.os, 'geteuid', lambda: 1000)
    assert netns_support(Recorder()) == 'network namespaces need root'
    assert qdisc_support('tbf', Recorder()) == 'network namespaces need root'
    monkeypatch.setattr(netem.os, 'geteuid', lambda: 0)
    monkeypatch.setattr(netem.shutil, 'which', lambda tool, **kw: None)
    assert 'ip and tc not found' in str(netns_support(Recorder()))
    monkeypatch.setattr(netem.shutil, 'which', lambda tool, **kw: f'/usr/sbin/{tool}')
    assert 'not permitted' in str(netns_support(Recorder(fail='add')))
    run = Recorder(fail='netem')
    assert 'qdisc netem unavailable' in str(qdisc_support('netem', run))
    assert run.commands[-1][:3] == ['ip', 'netns', 'del']  # the probe namespace is removed


# --- as root: a real namespace --------------------------------------------------------------

SINK = """
import socket, sys
server = socket.create_server((sys.argv[1], int(sys.argv[2])))
print('ready', flush=True)
while True:
    conn, _ = server.accept()
    conn.settimeout(10)
    total = 0
    while data := conn.recv(65536):
        total += len(data)
    conn.sendall(str(total).encode())
    conn.close()
"""


@pytest.fixture
def link() -> Iterator[NetnsLink]:
    """Create a real namespace and veth pair (skips without the privileges)."""
    reason = netns_support()
    if reason is not None:
        pytest.skip(reason)
    with NetnsLink('aot') as real:
        yield real


@pytest.fixture
def sink(link: NetnsLink) -> Iterator[tuple[str, int]]:
    """Serve in the namespace, answering each connection with the count of its bytes."""
    proc = subprocess.Popen(link.exec_argv([sys.executable, '-c', SINK, link.ns_address,
                                            str(PORT)]), stdout=subprocess.PIPE, text=True)
    try:
        ready, _, _ = select.select([proc.stdout], [], [], 10)
        assert ready and proc.stdout is not None and proc.stdout.readline() == 'ready\n'
        yield link.ns_address, PORT
    finally:
        proc.kill()
        proc.wait(10)


def _send(address: tuple[str, int], size: int) -> float:
    t0 = time.monotonic()
    with socket.create_connection(address, timeout=10) as sock:
        sock.sendall(b's' * size)
        sock.shutdown(socket.SHUT_WR)
        assert sock.recv(64) == str(size).encode()
    return time.monotonic() - t0


def test_tbf_caps_the_bandwidth(link: NetnsLink, sink: tuple[str, int]) -> None:
    reason = qdisc_support('tbf')
    if reason is not None:
        pytest.skip(reason)
    mbps, size = 4.0, 250_000
    uncapped = _send(sink, size)
    link.apply([_fault('bandwidth', mbps=mbps)])
    capped = _send(sink, size)
    link.clear()
    assert capped >= 0.8 * size * 8 / (mbps * 1e6)
    assert capped > 5 * uncapped
    assert _send(sink, size) < capped


def test_link_down_is_an_outage(link: NetnsLink, sink: tuple[str, int]) -> None:
    link.apply([_fault('cloud_outage')])
    with pytest.raises(OSError):
        socket.create_connection(sink, timeout=1).close()
    link.clear()
    assert _send(sink, 10) >= 0


def test_netem_delays(link: NetnsLink, sink: tuple[str, int]) -> None:
    reason = qdisc_support('netem')
    if reason is not None:
        pytest.skip(reason)
    link.apply([_fault('latency', delay_ms=100)])
    assert _send(sink, 10) >= 0.1


def test_close_leaves_nothing_behind() -> None:
    reason = netns_support()
    if reason is not None:
        pytest.skip(reason)
    with NetnsLink('aot') as link:
        namespaces = subprocess.run(['ip', 'netns', 'list'], capture_output=True, text=True,
                                    check=True).stdout
        assert link.namespace in namespaces
    namespaces = subprocess.run(['ip', 'netns', 'list'], capture_output=True, text=True,
                                check=True).stdout
    assert link.namespace not in namespaces.split()
    shown = subprocess.run(['ip', 'link', 'show', link.host_veth], capture_output=True)
    assert shown.returncode != 0
