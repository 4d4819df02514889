"""The fault proxy applies a scenario to real loopback connections."""

from __future__ import annotations

import http.client
import http.server
import socket
import socketserver
import threading
import time
from typing import Iterator

from fault_injection.fault_proxy import FaultProxy
from fault_injection.scenario import parse_scenario, Scenario
from helpers import ManualClock
import pytest

S = 1_000_000_000
TIMEOUT_S = 3.0


def _scenario(*faults: dict) -> Scenario:
    return parse_scenario({'name': 't', 'faults': list(faults)})


class _Echo(socketserver.BaseRequestHandler):
    """Echo every byte back, counting connections on the server."""

    def handle(self) -> None:
        self.server.accepted += 1  # type: ignore[attr-defined]
        self.request.settimeout(TIMEOUT_S)
        try:
            while data := self.request.recv(65536):
                self.request.sendall(data)
        except OSError:
            pass  # the proxy reset us: the test is about that


class _Hello(http.server.BaseHTTPRequestHandler):
    """Answer every GET with an empty detection list."""

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        body = b'{"detections": []}'
        self.send_response(200)
        self.send_header('Content-Length', str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def _serve(server: socketserver.TCPServer) -> Iterator[socketserver.TCPServer]:
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(TIMEOUT_S)


@pytest.fixture
def echo() -> Iterator[socketserver.TCPServer]:
    """Start a threaded echo server on a free loopback port, counting its connections."""
    server = socketserver.ThreadingTCPServer(('127.0.0.1', 0), _Echo)
    server.daemon_threads = True
    server.block_on_close = False
    server.accepted = 0  # type: ignore[attr-defined]
    yield from _serve(server)


def _connect(address: tuple[str, int], timeout_s: float = TIMEOUT_S) -> socket.socket:
    return socket.create_connection(address, timeout=timeout_s)


def _recv_exactly(sock: socket.socket, n: int) -> bytes:
    chunks, got = [], 0
    for _ in range(n):  # bounded: every pass gets at least one byte or ends
        if got >= n:
            break
        chunk = sock.recv(n - got)
        if not chunk:
            break
        chunks.append(chunk)
        got += len(chunk)
    return b''.join(chunks)


def _roundtrip(address: tuple[str, int], data: bytes) -> bytes | None:
    """Echo ``data`` over a new connection; None if the connection is reset or closed."""
    try:
        with _connect(address) as sock:
            sock.sendall(data)
            reply = _recv_exactly(sock, len(data))
    except (ConnectionError, socket.timeout):
        return None
    return reply or None


def _proxy(echo: socketserver.TCPServer, scenario: Scenario | None = None,
           clock: ManualClock | None = None) -> FaultProxy:
    kwargs = {'clock': clock} if clock else {}
    return FaultProxy(echo.server_address[:2], scenario, seed=3, **kwargs)


def test_passes_bytes_through_unchanged(echo: socketserver.TCPServer) -> None:
    data = bytes(range(256)) * 800
    with _proxy(echo) as proxy:
        assert proxy.address[0] == '127.0.0.1' and proxy.address[1] > 0
        assert _roundtrip(proxy.address, data) == data
        assert _roundtrip(proxy.address, b'again') == b'again'
        assert proxy.stats['connections'] == 2 and proxy.stats['refused'] == 0


def test_outage_refuses_and_cuts_then_recovers(echo: socketserver.TCPServer) -> None:
    clock = ManualClock(0)
    scenario = _scenario({'kind': 'cloud_outage', 'start_s': 1, 'duration_s': 1})
    with _proxy(echo, scenario, clock) as proxy:
        open_conn = _connect(proxy.address)
        open_conn.sendall(b'before')
        assert _recv_exactly(open_conn, 6) == b'before'
        clock.advance(1500)
        assert proxy.now_s() == pytest.approx(1.5)
        with pytest.raises((ConnectionError, socket.timeout)):
            open_conn.sendall(b'during')
            if not _recv_exactly(open_conn, 6):
                raise ConnectionResetError('closed')
        open_conn.close()
        assert _roundtrip(proxy.address, b'refused') is None
        clock.advance(1000)
        assert _roundtrip(proxy.address, b'after') == b'after'
        assert proxy.stats['refused'] >= 1 and proxy.stats['cut'] >= 1


def test_set_scenario_restarts_the_timeline(echo: socketserver.TCPServer) -> None:
    clock = ManualClock(10 * S)
    with _proxy(echo, None, clock) as proxy:
        assert _roundtrip(proxy.address, b'x') == b'x'
        proxy.set_scenario(_scenario({'kind': 'cloud_outage', 'start_s': 0, 'duration_s': 1}),
                           origin_ns=clock())
        assert _roundtrip(proxy.address, b'x') is None
        clock.advance(1000)
        assert _roundtrip(proxy.address, b'x') == b'x'


def test_latency_delays_each_exchange(echo: socketserver.TCPServer) -> None:
    scenario = _scenario({'kind': 'latency', 'start_s': 0, 'duration_s': 60, 'delay_ms': 150,
                          'jitter_ms': 20})
    with _proxy(echo, scenario) as proxy, _connect(proxy.address) as sock:
        for _ in range(2):
            t0 = time.monotonic()
            sock.sendall(b'ping')
            assert _recv_exactly(sock, 4) == b'ping'
            assert time.monotonic() - t0 >= 0.130  # delay - jitter
        assert proxy.stats['delayed_chunks'] >= 2


def test_bandwidth_paces_the_transfer(echo: socketserver.TCPServer) -> None:
    mbps, size = 2.0, 60_000
    scenario = _scenario({'kind': 'bandwidth', 'start_s': 0, 'duration_s': 60, 'mbps': mbps})
    with _proxy(echo, scenario) as proxy, _connect(proxy.address) as sock:
        t0 = time.monotonic()
        sock.sendall(b'b' * size)
        sock.shutdown(socket.SHUT_WR)
        assert len(_recv_exactly(sock, size)) == size
        elapsed = time.monotonic() - t0
    assert elapsed >= 0.99 * size * 8 / (mbps * 1e6)
    assert proxy.stats['paced_bytes'] == 2 * size


def test_corruption_alters_the_reply_body_only() -> None:
    server = http.server.ThreadingHTTPServer(('127.0.0.1', 0), _Hello)
    server.daemon_threads = True
    for upstream in _serve(server):
        scenario = _scenario({'kind': 'corruption', 'start_s': 0, 'duration_s': 60})
        with FaultProxy(upstream.server_address[:2], scenario) as proxy:
            conn = http.client.HTTPConnection(*proxy.address, timeout=TIMEOUT_S)
            conn.request('GET', '/')
            reply = conn.getresponse()
            body = reply.read()
            conn.close()
            assert reply.status == 200 and len(body) == len(b'{"detections": []}')
            assert body != b'{"detections": []}'
            assert proxy.stats['corrupted'] == 1
            assert proxy.stats['corrupted_bytes'] == len(body)


def test_corruption_of_a_raw_stream_flips_every_byte(echo: socketserver.TCPServer) -> None:
    scenario = _scenario({'kind': 'corruption', 'start_s': 0, 'duration_s': 60})
    with _proxy(echo, scenario) as proxy:
        assert _roundtrip(proxy.address, b'\x00\x0f') == b'\xff\xf0'


def test_loss_black_holes_the_connection(echo: socketserver.TCPServer) -> None:
    scenario = _scenario({'kind': 'loss', 'start_s': 0, 'duration_s': 60, 'probability': 1})
    with _proxy(echo, scenario) as proxy, _connect(proxy.address, timeout_s=0.3) as sock:
        sock.sendall(b'anyone?')
        with pytest.raises(socket.timeout):
            sock.recv(10)
        assert proxy.stats['blackholed'] == 1
    assert echo.accepted == 0  # type: ignore[attr-defined]


def test_stop_closes_connections_and_ends_the_thread(echo: socketserver.TCPServer) -> None:
    proxy = _proxy(echo)
    proxy.start()
    address = proxy.address
    sock = _connect(address)
    try:
        sock.sendall(b'hi')
        assert _recv_exactly(sock, 2) == b'hi'
        proxy.stop()
        assert not proxy.running
        with pytest.raises(ConnectionError):
            sock.sendall(b'x')
            if not sock.recv(1):
                raise ConnectionResetError('closed')
    finally:
        sock.close()
    with pytest.raises(OSError):
        _connect(address, timeout_s=1.0).close()
    proxy.stop()  # a second stop is harmless
