"""Hostile clients for the cloud service, and the figures of what an attack costs the server.

Used by test/rcnn_service/test_attacks.py (small payloads, generous bounds) and by
benchmarks/bench_attacks.py (the payloads of issue 13, figures printed).
"""

from __future__ import annotations

from dataclasses import dataclass
import os
from pathlib import Path
import re
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any, Callable
import urllib.error
import urllib.request
import zlib

from helpers import free_ports

ROOT = Path(__file__).resolve().parents[1]
ARCH = 'fasterrcnn_mobilenet_v3_large_320_fpn'
TOKEN = 'robot-1-s3cret'


class ServedProcess:
    """``adaptive-offload serve`` in a child process, its log kept in a file.

    Args:
        runtime: ``builtin`` or ``mlserver``.
        extra: More ``serve`` arguments.
        src: Source tree to run (another checkout measures older code); default: the
            environment's ``ATTACK_KIT_SRC``, else this checkout's.
        legacy_token: Pass the token as ``--token`` (code from before tokens left argv);
            default: when the source's CLI has no ``--token-file``.
    """

    def __init__(self, runtime: str, extra: tuple[str, ...] = (), src: Path | None = None,
                 legacy_token: bool | None = None) -> None:
        # ATTACK_KIT_SRC runs the attacks against another checkout's src (older code).
        src = src or Path(os.environ.get('ATTACK_KIT_SRC') or ROOT / 'src')
        if legacy_token is None:
            cli = ''.join(f.read_text() for f in (src / 'offload_runtime').glob('*cli*.py'))
            legacy_token = "'--token-file'" not in cli
        self.runtime = runtime
        self.rest, self.grpc, self.metrics = free_ports(3)
        self.log = tempfile.NamedTemporaryFile('w+', suffix='.log', delete=False)
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(
            p for p in (str(src), os.environ.get('PYTHONPATH', '')) if p))
        argv = [sys.executable, '-m', 'offload_runtime.cli', 'serve', '--runtime', runtime,
                '--arch', ARCH, '--threads', '1', '--score-threshold', '0.0',
                '--port', str(self.rest), '--grpc-port', str(self.grpc),
                '--metrics-port', str(self.metrics), *extra]
        if legacy_token:
            argv += ['--token', TOKEN]
        else:
            env['ADAPTIVE_OFFLOAD_TOKENS'] = TOKEN
        self.proc = subprocess.Popen(argv, stdout=self.log, stderr=subprocess.STDOUT, env=env)
        try:
            self._wait_ready()
        except BaseException:  # never leave a server behind
            self.stop()
            raise

    @property
    def url(self) -> str:
        """REST base URL."""
        return f'http://127.0.0.1:{self.rest}'

    def _wait_ready(self) -> None:
        for _ in range(1800):  # bounded: the model warms up before readiness (busy CI)
            if self.proc.poll() is not None:
                raise RuntimeError(f'server exited with {self.proc.returncode}: '
                                   f'{self.log_text()[-2000:]}')
            try:
                with urllib.request.urlopen(f'{self.url}/v2/health/ready', timeout=1):
                    return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError('server never became ready')

    def log_text(self) -> str:
        """Everything the server printed so far."""
        return Path(self.log.name).read_text(errors='replace')

    def _status_kb(self, field: str) -> int:
        text = Path(f'/proc/{self.proc.pid}/status').read_text()
        return int(re.search(rf'^{field}:\s+(\d+)', text, re.M).group(1))

    def reset_peak(self) -> int:
        """Reset the peak resident memory (Linux), and return the resident memory in KiB."""
        try:
            Path(f'/proc/{self.proc.pid}/clear_refs').write_text('5')
        except OSError:
            pass  # not permitted: the peak then includes earlier ones, growth is overstated
        return self._status_kb('VmRSS')

    def peak_kb(self) -> int:
        """Peak resident memory since :meth:`reset_peak`, KiB."""
        return self._status_kb('VmHWM')

    def stop(self) -> None:
        """Kill and reap the server."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(30)
        self.log.close()
        os.unlink(self.log.name)


def gzip_bomb(expanded: int) -> bytes:
    """Return a gzip stream of ``expanded`` zero bytes (about 1/1000 of that in size)."""
    comp = zlib.compressobj(9, zlib.DEFLATED, 31)
    chunk = bytes(1 << 20)
    parts = [comp.compress(chunk[:min(len(chunk), expanded - i)])
             for i in range(0, expanded, len(chunk))]
    return b''.join(parts) + comp.flush()


def png_bomb(width: int, height: int) -> bytes:
    """Return a valid RGB PNG of ``width`` x ``height`` black pixels, made without the pixels."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack('>I', len(data)) + kind + data + struct.pack(
            '>I', zlib.crc32(kind + data))

    comp = zlib.compressobj(9)
    row = bytes(1 + 3 * width)  # filter byte 0, then the pixels
    rows_per = max(1, (4 << 20) // len(row))
    idat = [comp.compress(row * min(rows_per, height - y)) for y in range(0, height, rows_per)]
    idat.append(comp.flush())
    return (b'\x89PNG\r\n\x1a\n' + chunk(b'IHDR', struct.pack('>IIBBBBB', width, height, 8, 2,
                                                              0, 0, 0))
            + chunk(b'IDAT', b''.join(idat)) + chunk(b'IEND', b''))


def raw_exchange(port: int, data: bytes, timeout_s: float = 10.0,
                 keep_open: bool = True) -> tuple[bytes, bool]:
    """Send raw bytes, read until the server closes or ``timeout_s`` passes.

    Args:
        port: Loopback port.
        data: What to send.
        timeout_s: Longest wait.
        keep_open: Leave the sending side open (a client that would send more).

    Returns:
        Everything received, and whether the server closed the connection.
    """
    received = b''
    with socket.create_connection(('127.0.0.1', port), timeout=timeout_s) as sock:
        sock.sendall(data)
        if not keep_open:
            sock.shutdown(socket.SHUT_WR)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                part = sock.recv(65536)
            except (socket.timeout, TimeoutError):
                return received, False
            except ConnectionResetError:
                return received, True
            if not part:
                return received, True
            received += part
    return received, False


def statuses(received: bytes) -> list[int]:
    """Return the status code of every HTTP response in a raw byte stream."""
    return [int(m) for m in re.findall(rb'HTTP/1\.[01] (\d{3}) ', received)]


def http(method: str, url: str, body: bytes | None = None, token: str | None = None,
         headers: dict[str, str] | None = None, timeout_s: float = 60.0) -> tuple[int, bytes]:
    """Send one request with urllib; return the status and the body, errors included."""
    head = dict(headers or {})
    if token is not None:
        head['Authorization'] = f'Bearer {token}'
    request = urllib.request.Request(url, data=body, method=method, headers=head)
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


class LivenessProbe:
    """Polls a liveness check every 50 ms in a thread and keeps its slowest answer.

    Args:
        check: Raises or returns; its duration is the latency.
    """

    def __init__(self, check: Callable[[], Any]) -> None:
        self._check = check
        self._stop = threading.Event()
        self.latencies: list[float] = []
        self.failures = 0
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> LivenessProbe:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join(60)

    def _run(self) -> None:
        while not self._stop.is_set():
            start = time.perf_counter()
            try:
                self._check()
            except Exception:  # a probe that fails is counted, not raised in a thread
                self.failures += 1
            self.latencies.append(time.perf_counter() - start)
            self._stop.wait(0.05)

    @property
    def worst_ms(self) -> float:
        """Slowest answer, ms."""
        return max(self.latencies, default=0.0) * 1e3


def rest_live(url: str) -> Callable[[], Any]:
    """Return a check of ``GET /v2/health/live`` on a new connection each time."""
    def check() -> None:
        with urllib.request.urlopen(f'{url}/v2/health/live', timeout=30) as response:
            response.read()
    return check


@dataclass
class Cost:
    """What one attack cost the server.

    Attributes:
        outcome: The attack's result (a status, a gRPC code).
        seconds: Time until the answer.
        growth_mb: Peak resident memory over the level before, MB.
        live_worst_ms: Slowest liveness answer while it ran.
        live_failures: Liveness checks that failed meanwhile.
    """

    outcome: Any
    seconds: float
    growth_mb: float
    live_worst_ms: float
    live_failures: int


def measure(server: ServedProcess, attack: Callable[[], Any],
            live: Callable[[], Any] | None = None) -> Cost:
    """Run ``attack`` against ``server`` while a liveness probe polls it; return the cost."""
    before = server.reset_peak()
    with LivenessProbe(live or rest_live(server.url)) as probe:
        time.sleep(0.1)
        start = time.perf_counter()
        outcome = attack()
        seconds = time.perf_counter() - start
        time.sleep(0.1)
    return Cost(outcome, seconds, (server.peak_kb() - before) / 1024, probe.worst_ms,
                probe.failures)
