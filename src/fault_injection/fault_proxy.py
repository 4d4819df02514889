"""Network-level fault injection: a TCP proxy that applies a scenario to real connections.

Point the cloud bridge at :attr:`FaultProxy.address` instead of the server. cloud_outage: new
connections are reset once accepted, open ones are cut. latency: each chunk from client to
server is held ``delay_ms`` +- ``jitter_ms``, so an exchange takes ``delay_ms`` longer, as with
the client-side injector. bandwidth: each direction is paced to ``mbps``, shared by all
connections. loss: with ``probability`` a new connection is black-holed (what the client sends
is swallowed). corruption: with ``probability`` a new connection's reply bytes are inverted
after the HTTP headers (all of them if the reply is not HTTP).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import struct
import threading
import time
from typing import Callable, Mapping

from fault_injection.scenario import Scenario

_STATS = ('connections', 'refused', 'cut', 'blackholed', 'swallowed_bytes', 'corrupted',
          'corrupted_bytes', 'delayed_chunks', 'paced_bytes', 'upstream_failed')
_INVERT = bytes(range(255, -1, -1))


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close a connection with a TCP reset rather than an orderly FIN."""
    if not writer.transport.is_closing():
        with contextlib.suppress(OSError, AttributeError):  # already dead: abort() will do
            writer.get_extra_info('socket').setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                                       struct.pack('ii', 1, 0))
        writer.transport.abort()


class _Cut(Exception):
    """An outage began: the connection is to be reset."""


class _Corrupter:
    """Inverts the bytes of a reply stream after the HTTP headers, or all of it if not HTTP."""

    def __init__(self) -> None:
        self.head = b''
        self.in_body = False

    def __call__(self, data: bytes) -> tuple[bytes, int]:
        start = 0
        if not self.in_body:
            seen = len(self.head)
            self.head += data
            end = self.head.find(b'\r\n\r\n')
            if not self.head.startswith(b'HTTP/'[:len(self.head)]):
                self.in_body = True
            elif end >= 0 or len(self.head) > 65536:
                self.in_body = True
                start = max(0, end + 4 - seen) if end >= 0 else len(data)
            else:
                return data, 0
        body = data[start:].translate(_INVERT)
        return data[:start] + body, len(body)


class FaultProxy:
    """A TCP proxy on a background thread that injects a scenario's faults as time passes.

    Args:
        upstream: ``(host, port)`` of the real server.
        scenario: The faults; none by default.
        host: Address to listen on.
        port: Port to listen on; 0 picks a free one (see :attr:`address`).
        clock: Monotonic nanosecond clock; scenario times count from :meth:`start`.
        seed: Seed of the jitter, loss and corruption draws.
        poll_s: How often open connections are checked for an outage that began.
        timeout_s: Bound on connecting upstream and on starting and stopping the thread.
    """

    def __init__(self, upstream: tuple[str, int], scenario: Scenario | None = None,
                 host: str = '127.0.0.1', port: int = 0,
                 clock: Callable[[], int] = time.monotonic_ns, seed: int = 0,
                 poll_s: float = 0.01, timeout_s: float = 5.0) -> None:
        self._upstream = upstream
        self._scenario = scenario or Scenario('none', ())
        self._listen = (host, port)
        self._clock = clock
        self._origin_ns = clock()
        self._rng = random.Random(seed)
        self._poll_s = poll_s
        self._timeout_s = timeout_s
        self._stats = dict.fromkeys(_STATS, 0)
        # per direction, when the paced link is next free (a token bucket without burst)
        self._free = {'up': 0.0, 'down': 0.0}
        # client end -> upstream end (once connected) of each open connection
        self._conns: dict[asyncio.StreamWriter, list[asyncio.StreamWriter]] = {}
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._address: tuple[str, int] | None = None

    @property
    def address(self) -> tuple[str, int]:
        """``(host, port)`` the proxy listens on (once started)."""
        if self._address is None:
            raise RuntimeError('FaultProxy not started')
        return self._address

    @property
    def stats(self) -> dict[str, int]:
        """Counts of what was injected (a copy): connections, refused, cut, blackholed, ..."""
        return dict(self._stats)

    @property
    def running(self) -> bool:
        """Whether the proxy thread is alive."""
        return self._thread is not None and self._thread.is_alive()

    def now_s(self) -> float:
        """Scenario time, seconds."""
        return (self._clock() - self._origin_ns) / 1e9

    def set_scenario(self, scenario: Scenario, origin_ns: int | None = None) -> None:
        """Switch to another scenario, optionally restarting its time at ``origin_ns``."""
        self._scenario = scenario
        if origin_ns is not None:
            self._origin_ns = origin_ns

    def start(self, origin_ns: int | None = None) -> None:
        """Listen and serve on a background thread; scenario time counts from ``origin_ns``.

        Raises:
            OSError: If the address cannot be listened on.
            RuntimeError: If already started or the thread does not come up in time.
        """
        if self.running:
            raise RuntimeError('FaultProxy already started')
        self._origin_ns = self._clock() if origin_ns is None else origin_ns
        self._ready.clear()
        self._error = None
        self._thread = threading.Thread(target=asyncio.run, args=(self._main(),),
                                        name='fault-proxy', daemon=True)
        self._thread.start()
        if not self._ready.wait(self._timeout_s):
            raise RuntimeError('FaultProxy did not start in time')
        if self._error is not None:
            self._thread.join(self._timeout_s)
            raise self._error

    def stop(self) -> None:
        """Reset every connection, stop listening and end the thread (bounded by timeout_s)."""
        loop, stopping = self._loop, self._stopping
        if self._thread is None or loop is None or stopping is None:
            return
        with contextlib.suppress(RuntimeError):  # the loop already ended
            loop.call_soon_threadsafe(stopping.set)
        self._thread.join(self._timeout_s)

    def __enter__(self) -> FaultProxy:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _faults(self, cut: bool = False) -> Mapping[str, Mapping[str, float]]:
        """Return the faults in force by kind; raises _Cut instead if ``cut`` and in an outage."""
        faults = {f.kind: f.params for f in self._scenario.active(self.now_s())}
        if cut and 'cloud_outage' in faults:
            raise _Cut()
        return faults

    async def _main(self) -> None:
        self._loop, self._stopping = asyncio.get_running_loop(), asyncio.Event()
        try:
            server = await asyncio.start_server(self._handle, *self._listen)
            self._address = server.sockets[0].getsockname()[:2]
        except OSError as err:
            self._error = err
            return
        finally:
            self._ready.set()
        watcher = asyncio.ensure_future(self._watch())
        await self._stopping.wait()
        server.close()
        watcher.cancel()
        self._cut_all()  # asyncio.run() then cancels the handlers, which end at once

    def _cut_all(self) -> int:
        conns = list(self._conns.items())
        for client, upstream in conns:
            for end in (client, *upstream):
                _reset(end)
        self._conns.clear()
        return len(conns)

    async def _watch(self) -> None:
        while True:
            if 'cloud_outage' in self._faults():
                self._stats['cut'] += self._cut_all()
            await asyncio.sleep(self._poll_s)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._stats['connections'] += 1
        faults = self._faults()
        if 'cloud_outage' in faults:
            self._stats['refused'] += 1
            _reset(writer)
            return
        upstream: list[asyncio.StreamWriter] = []
        self._conns[writer] = upstream
        try:
            if 'loss' in faults and self._rng.random() < faults['loss']['probability']:
                self._stats['blackholed'] += 1
                while data := await reader.read(65536):
                    self._stats['swallowed_bytes'] += len(data)
                return
            corrupt = ('corruption' in faults and
                       self._rng.random() < faults['corruption']['probability'])
            try:
                up_reader, up_writer = await asyncio.wait_for(
                    asyncio.open_connection(*self._upstream), self._timeout_s)
            except (OSError, asyncio.TimeoutError):
                self._stats['upstream_failed'] += 1
                raise
            upstream.append(up_writer)
            self._stats['corrupted'] += corrupt
            await self._pipe(reader, up_writer, up_reader, writer,
                             _Corrupter() if corrupt else None)
        except (_Cut, OSError, asyncio.TimeoutError, asyncio.CancelledError) as err:
            # cancelled only by stop(), and this is the task's outermost frame
            self._stats['cut'] += isinstance(err, _Cut)
            for end in (writer, *upstream):
                _reset(end)
        finally:
            self._conns.pop(writer, None)
            for end in (writer, *upstream):
                end.close()

    async def _pipe(self, client_r: asyncio.StreamReader, up_w: asyncio.StreamWriter,
                    up_r: asyncio.StreamReader, client_w: asyncio.StreamWriter,
                    corrupter: _Corrupter | None) -> None:
        """Forward both ways, each through a delay line read on while its chunks wait."""
        up: asyncio.Queue[tuple[float, bytes] | None] = asyncio.Queue(maxsize=64)
        down: asyncio.Queue[tuple[float, bytes] | None] = asyncio.Queue(maxsize=64)
        tasks = [asyncio.ensure_future(c) for c in (
            self._receive(client_r, up, 'up', None), self._send(up, up_w, 'up'),
            self._receive(up_r, down, 'down', corrupter), self._send(down, client_w, 'down'))]
        try:
            await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()  # the others, after one failed

    async def _receive(self, reader: asyncio.StreamReader,
                       line: asyncio.Queue[tuple[float, bytes] | None], direction: str,
                       corrupter: _Corrupter | None) -> None:
        loop = asyncio.get_running_loop()
        release = 0.0
        while data := await reader.read(65536):
            faults = self._faults(cut=True)
            delay = 0.0
            if direction == 'up' and 'latency' in faults:
                jitter = faults['latency']['jitter_ms']
                delay = max(0.0, faults['latency']['delay_ms'] +
                            self._rng.uniform(-jitter, jitter)) / 1e3
                self._stats['delayed_chunks'] += 1
            if corrupter is not None:
                data, flipped = corrupter(data)
                self._stats['corrupted_bytes'] += flipped
            # a later chunk never overtakes an earlier one, whatever the jitter
            release = max(release, loop.time() + delay)
            await line.put((release, data))
        await line.put(None)

    async def _send(self, line: asyncio.Queue[tuple[float, bytes] | None],
                    writer: asyncio.StreamWriter, direction: str) -> None:
        loop = asyncio.get_running_loop()
        while (item := await line.get()) is not None:
            release, data = item
            if release > loop.time():
                await asyncio.sleep(release - loop.time())
            faults = self._faults(cut=True)
            rate = faults['bandwidth']['mbps'] * 1e6 / 8 if 'bandwidth' in faults else 0.0
            # slices of 20 ms keep the pace smooth
            step = max(1024, int(rate / 50)) if rate else len(data)
            for i in range(0, len(data), step):
                if rate:
                    piece = len(data[i:i + step])
                    self._free[direction] = max(self._free[direction], loop.time()) + piece / rate
                    self._stats['paced_bytes'] += piece
                    await asyncio.sleep(self._free[direction] - loop.time())
                writer.write(data[i:i + step])
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
