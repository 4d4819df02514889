"""The builtin runtime's HTTP/1.1 server: uvicorn (h11) with the limits it lacks added.

HTTP framing is h11's (a maintained parser): it refuses a bad or repeated Content-Length, an
unknown Transfer-Encoding and oversized headers with 400, and the guard in front of the app
refuses chunked bodies and Transfer-Encoding with Content-Length. uvicorn bounds idle
keep-alive connections but has no deadline for a request whose headers or body trickle in,
so :class:`GuardedProtocol` adds one: a request (line, headers and body) must arrive within
``request_timeout_s`` of its first byte (else 408 and the connection closes), and a
connection with no request under way is closed after as long. It also refuses connections
beyond ``max_connections`` at once with 503. The listen backlog is 128, a TLS handshake must
complete within the request timeout, and access logging is off: refusals get the service's
rate-limited line instead.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from http import HTTPStatus
import json
import logging
import math
import socket
import ssl
import sys
import threading
from typing import Any, Callable, ClassVar, Iterator

from adaptive_offload.errors import ConfigError
import h11
from rcnn_service.asgi_guard import MAX_HEADER_BYTES
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.protocols.utils import get_remote_addr

BACKLOG = 128
LOG = logging.getLogger('adaptive_offload.service.http')
# uvicorn logs every unparsable request; the refusal gets the service's rate-limited line.
LOG.addFilter(lambda record: record.getMessage() != 'Invalid HTTP request received.')


@dataclass(frozen=True)
class HttpLimits:
    """How long and how many clients may hold the server.

    Attributes:
        request_timeout_s: A request must arrive within this time of its first byte, an idle
            connection is closed after it, and a TLS handshake must complete within it.
        max_connections: Connections served at once; more get 503 and are closed.
        reject: Counts and logs one refusal: ``(status, peer, reason)``.
    """

    request_timeout_s: float
    max_connections: int
    reject: Callable[[int, str, object], None]


_PHRASES = frozenset(s.value for s in HTTPStatus)


def _raw_response(status: int, reason: str, message: str, extra: bytes = b'') -> bytes:
    body = json.dumps({'error': message}).encode()
    return (b'HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n'
            b'%sConnection: close\r\n\r\n%s' % (status, reason.encode(), len(body), extra,
                                                body))


_BUSY = _raw_response(503, 'Service Unavailable', 'too many connections', b'Retry-After: 1\r\n')


class GuardedProtocol(H11Protocol):
    """uvicorn's h11 protocol with a request deadline and a connection limit.

    A connection is idle (no byte of a request yet), receiving (a request's line, headers or
    body are arriving) or busy (the request is whole: the app answers it). Idle and receiving
    each have ``request_timeout_s``, counted from when the phase began; busy has none. A
    subclass made by :func:`protocol_class` sets :attr:`limits`.
    """

    limits: ClassVar[HttpLimits]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.logger = LOG
        self._phase = ''
        self._timer: asyncio.TimerHandle | None = None
        self._refused = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        """Serve the connection, or refuse it at once when the limit is reached."""
        if len(self.connections) >= self.limits.max_connections:
            self._refused = True
            self.transport = transport
            transport.write(_BUSY)
            transport.close()
            self.limits.reject(503, _peer(get_remote_addr(transport)), 'too many connections')
            return
        sock = transport.get_extra_info('socket')
        if sock is not None:
            # asyncio sets it only on sockets made with proto IPPROTO_TCP, and
            # socket.create_server's has 0: each reply's body would wait for the client's
            # delayed ACK of its headers (40 ms on Linux loopback).
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        super().connection_made(transport)
        self._update_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        """Forget the connection and its deadline."""
        self._cancel_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        """Parse what arrived; a request's first byte starts its deadline."""
        if self._refused:
            return
        super().data_received(data)
        self._update_timer()

    def on_response_complete(self) -> None:
        """Go on with the next request, and its deadline."""
        super().on_response_complete()
        self._update_timer()

    def send_400_response(self, msg: str) -> None:
        """Refuse a request h11 cannot parse: bad framing, oversized headers, no Host.

        uvicorn calls it while handling h11's error, whose status hint (400, 431, 501) and
        message are the answer's.
        """
        err = sys.exc_info()[1]
        status = getattr(err, 'error_status_hint', 400)
        reason = f'invalid HTTP request: {err or msg}'[:200]  # h11 quotes the client's bytes
        self.limits.reject(status, _peer(self.client), reason)
        phrase = HTTPStatus(status).phrase if status in _PHRASES else 'Bad Request'
        self.transport.write(_raw_response(status, phrase, reason))
        self.transport.close()

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _update_timer(self) -> None:
        if self.transport.is_closing():
            self._cancel_timer()
            return
        state = self.conn.their_state
        if state is h11.SEND_BODY or (state is h11.IDLE and self.conn.trailing_data[0]):
            phase = 'receiving'
        else:
            phase = 'idle' if state is h11.IDLE else 'busy'
        if phase == self._phase:
            return
        self._phase = phase
        self._cancel_timer()
        if phase != 'busy':
            self._timer = self.loop.call_later(self.limits.request_timeout_s, self._expired)

    def _expired(self) -> None:
        self._timer = None
        if self.transport.is_closing():
            return
        cycle = self.cycle
        if self._phase == 'receiving' and (cycle is None or not cycle.response_started):
            timeout = self.limits.request_timeout_s
            self.limits.reject(408, _peer(self.client),
                               f'request not received within {timeout:g} s')
            self.transport.write(_raw_response(408, 'Request Timeout',
                                               f'request not received within {timeout:g} s'))
            if cycle is not None:  # the app waiting for the body sees the client gone
                cycle.disconnected = True
                cycle.message_event.set()
        self.transport.close()


def _peer(address: tuple[str, int] | None) -> str:
    return address[0] if address else '?'


def protocol_class(limits: HttpLimits) -> type[GuardedProtocol]:
    """Return the protocol class uvicorn instantiates per connection, with these limits."""
    return type('LimitedProtocol', (GuardedProtocol,), {'limits': limits})


class _Server(uvicorn.Server):
    """uvicorn's server on a socket bound beforehand, TLS with a handshake deadline.

    uvicorn creates its asyncio server without a TLS handshake timeout (asyncio's default is
    60 s) and installs signal handlers when run in the main thread; the service handles
    SIGTERM itself (:func:`rcnn_service.service.serve`).
    """

    def __init__(self, config: uvicorn.Config, sock: socket.socket,
                 tls: ssl.SSLContext | None, handshake_timeout_s: float) -> None:
        super().__init__(config)
        self._sock = sock
        self._tls = tls
        self._handshake_timeout_s = handshake_timeout_s
        self.closing = threading.Event()

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        """Leave the process's signal handlers alone."""
        yield

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        """Listen on the bound socket."""
        await self.lifespan.startup()
        config = self.config

        def create_protocol() -> asyncio.Protocol:
            return config.http_protocol_class(  # type: ignore[call-arg]
                config=config, server_state=self.server_state, app_state=self.lifespan.state)

        loop = asyncio.get_running_loop()
        self.servers = [await loop.create_server(
            create_protocol, sock=self._sock, ssl=self._tls, backlog=BACKLOG,
            ssl_handshake_timeout=self._handshake_timeout_s if self._tls else None)]
        self.started = True

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        """Stop gracefully, then cut the connections the grace period left."""
        # What uvicorn's shutdown does first, done here too to tell the service when no new
        # request can come (then it may drop the model's queue): both steps can be repeated.
        for server in self.servers:
            server.close()
        for connection in list(self.server_state.connections):
            connection.shutdown()
        self.closing.set()
        await super().shutdown(sockets)
        for connection in list(self.server_state.connections):
            transport = getattr(connection, 'transport', None)
            if transport is not None:
                transport.abort()


class HttpServer:
    """uvicorn serving an ASGI app on ``(host, port)``, listening from construction on.

    Args:
        app: The ASGI app.
        address: ``(host, port)``; port 0 picks a free one.
        limits: Deadlines and the connection limit.
        tls: Server TLS context; None serves plain HTTP.
    """

    def __init__(self, app: Any, address: tuple[str, int], limits: HttpLimits,
                 tls: ssl.SSLContext | None = None) -> None:
        # Bound and listening now: the port is known, and clients queue in the backlog,
        # before serve_forever runs.
        self.socket = socket.create_server(address, backlog=BACKLOG)
        config = uvicorn.Config(
            app, http=protocol_class(limits), ws='none', lifespan='off', interface='asgi3',
            loop='asyncio', log_config=None, access_log=False, server_header=False,
            proxy_headers=False, backlog=BACKLOG, h11_max_incomplete_event_size=MAX_HEADER_BYTES,
            timeout_keep_alive=max(1, math.ceil(limits.request_timeout_s)),
            # A backstop only: GuardedProtocol refuses connections beyond the limit first.
            limit_concurrency=limits.max_connections + 1)
        self._server = _Server(config, self.socket, tls, limits.request_timeout_s)
        self._lock = threading.Lock()
        self._started = False
        self._closed = False
        self._done = threading.Event()

    @property
    def connections(self) -> int:
        """Connections open now (TLS ones once their handshake completed)."""
        return len(self._server.server_state.connections)

    def serve_forever(self) -> None:
        """Serve until :meth:`stop` (in the calling thread, on an event loop of its own)."""
        with self._lock:
            if self._closed:
                return
            self._started = True
        try:
            self._server.run(sockets=[self.socket])
        finally:
            self._done.set()

    def stop(self, grace_s: float) -> bool:
        """Stop accepting and close idle connections; requests under way get ``grace_s``.

        It returns once no new request can come.

        Returns:
            Whether the server was running (then :meth:`wait` tells when it has stopped).
        """
        with self._lock:
            self._closed = True
            if not self._started:
                self.socket.close()
                self._done.set()
                return False
        # uvicorn annotates it as int; it is used as seconds for asyncio.timeout, a float.
        self._server.config.timeout_graceful_shutdown = grace_s  # type: ignore[assignment]
        self._server.should_exit = True
        while not self._server.closing.wait(0.05) and not self._done.is_set():
            pass  # until no new request can come (the loop looks every 0.1 s)
        return True

    def wait(self, timeout_s: float | None = None) -> bool:
        """Wait until the server has stopped; return whether it has."""
        return self._done.wait(timeout_s)


def ensure_ports_free(host: str, ports: dict[str, int]) -> None:
    """Refuse, in one line, a port another process listens on, before anything starts.

    Without this, the servers fail deep inside their event loops: a traceback, and MLServer
    keeps its other servers running.

    Args:
        host: The address the service binds.
        ports: Option name -> port (0, picked by the system, is always free).

    Raises:
        ConfigError: Naming the first port in use and the option that sets it.
    """
    for option, port in ports.items():
        if not port:
            continue
        family = socket.AF_INET6 if ':' in host else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            # As the servers bind: a port left in TIME_WAIT by a stopped service is free.
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((host, port))
            except OSError as err:
                raise ConfigError(f'port {port} on {host} is not free ({err.strerror}): stop '
                                  f'what listens there or choose another with {option}') from err
