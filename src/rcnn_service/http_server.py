"""The builtin runtime's HTTP/1.1 server: stdlib threads, with the framing and limits hardened.

Each connection has a thread, so every way a client could hold one is bounded: a request (line,
headers and body) must arrive within ``request_timeout_s`` of its first byte, an idle
keep-alive connection is closed after as long, at most ``max_connections`` are served at once
(the rest get 503 at once, from the accepting thread, without blocking it), and the listen
backlog is 128. Framing follows RFC 9112 strictly: no chunked bodies, no Transfer-Encoding
with Content-Length, one decimal Content-Length, no body on GET; a request refused before its
body was read closes the connection, so no byte of it is ever parsed as a request.
"""

from __future__ import annotations

from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
import io
import json
import logging
import math
import re
import select
import socket
import ssl
import sys
import threading
import time
from typing import Any, Callable, TYPE_CHECKING
from urllib.parse import urlsplit

from rcnn_service.guard import (Access, body_length, check_body, DISABLED_MESSAGE,
                                RequestError, rest_access)
from rcnn_service.protocol import model_metadata, MODEL_VERSION, server_metadata

if TYPE_CHECKING:
    from rcnn_service.service import InferenceService

LOG = logging.getLogger('adaptive_offload.service')
_INFER = re.compile(r'^/v2/models/([^/]+)(?:/versions/([^/]+))?/infer$')
_MODEL = re.compile(r'^/v2/models/([^/]+)(?:/versions/([^/]+))?(/ready)?$')
_BUSY_BODY = b'{"error": "too many connections"}'
_BUSY = (b'HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n'
         b'Content-Length: %d\r\nRetry-After: 1\r\nConnection: close\r\n\r\n%s'
         % (len(_BUSY_BODY), _BUSY_BODY))


class DeadlineReader(io.RawIOBase):
    """Socket reads that fail once a deadline has passed, however slowly bytes trickle in.

    A plain socket timeout bounds each ``recv`` only: a client sending a byte every few
    seconds would hold its thread for ever.
    """

    def __init__(self, sock: socket.socket) -> None:
        super().__init__()
        self._sock = sock
        self.deadline = math.inf

    def readable(self) -> bool:
        """Return True: this is a reader."""
        return True

    def readinto(self, buffer: Any) -> int:
        """Read what has arrived, waiting at most until the deadline.

        Raises:
            TimeoutError: Once the deadline has passed.
        """
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError('request not received in time')
        self._sock.settimeout(left)
        return self._sock.recv_into(buffer)


class GuardedHTTPServer(ThreadingHTTPServer):
    """A threading HTTP server with a connection limit and a 128-deep listen backlog.

    With TLS, the handshake happens in the connection's thread, within ``handshake_timeout_s``:
    a client that connects and never completes it holds neither the accepting thread nor its
    own for longer.

    Args:
        address: ``(host, port)``.
        handler: Request handler class.
        max_connections: Connections served at once; more get 503 and are closed.
        on_refused: Called with the client address of each connection refused.
        tls: Server TLS context; None serves plain HTTP.
        handshake_timeout_s: How long a TLS handshake may take.
    """

    request_queue_size = 128
    # Request threads are joined on shutdown: one left inside torch when the interpreter
    # exits aborts the process ("terminate called without an active exception").
    daemon_threads = False
    block_on_close = True

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler],
                 max_connections: int, on_refused: Callable[[str], None],
                 tls: ssl.SSLContext | None = None, handshake_timeout_s: float = 10.0) -> None:
        self.max_connections = max_connections
        self.tls = tls
        self._handshake_timeout_s = handshake_timeout_s
        self._on_refused = on_refused
        self._active = 0
        self._active_lock = threading.Lock()
        super().__init__(address, handler)

    @property
    def active(self) -> int:
        """Connections being served now."""
        return self._active

    def process_request(self, request: Any, client_address: Any) -> None:
        """Serve the connection in a thread, or refuse it at once when the limit is reached."""
        with self._active_lock:
            full = self._active >= self.max_connections
            if not full:
                self._active += 1
        if not full:
            super().process_request(request, client_address)
            return
        try:  # never block the accepting thread on a client
            request.setblocking(False)
            request.send(_BUSY)
        except OSError:
            pass
        self._on_refused(client_address[0])
        self.shutdown_request(request)

    def get_request(self) -> tuple[Any, Any]:
        """Accept a connection; with TLS, wrap it without handshaking yet."""
        sock, address = super().get_request()
        if self.tls is not None:
            sock = self.tls.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        return sock, address

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        """Serve one connection (after its TLS handshake), then free its place."""
        try:
            if isinstance(request, ssl.SSLSocket):
                try:
                    request.settimeout(self._handshake_timeout_s)
                    request.do_handshake()
                except OSError as err:  # ssl.SSLError and timeouts are OSErrors
                    LOG.warning('TLS handshake with %s failed: %s', client_address[0], err)
                    self.shutdown_request(request)
                    return
            super().process_request_thread(request, client_address)
        finally:
            with self._active_lock:
                self._active -= 1

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Log a connection that failed unexpectedly in one line (no traceback per client)."""
        LOG.warning('connection from %s failed: %r', client_address[0], sys.exc_info()[1])


def make_handler(service: InferenceService) -> type[BaseHTTPRequestHandler]:
    """Return the request handler class serving ``service``."""
    cfg = service.config

    def _served(match: re.Match[str]) -> bool:
        """Whether a model route names the served model (and its one version, if any)."""
        return match.group(1) == cfg.model_name and match.group(2) in (None, MODEL_VERSION)

    class Handler(BaseHTTPRequestHandler):
        protocol_version = 'HTTP/1.1'  # keep-alive: the bridge reuses its connection
        # Headers and body go out in two writes; with Nagle on, the body would wait for the
        # client's delayed ACK (40 ms on Linux loopback) on every reply.
        disable_nagle_algorithm = True

        def setup(self) -> None:
            super().setup()
            self.rfile.close()
            self._reader = DeadlineReader(self.connection)
            self._buffered = io.BufferedReader(self._reader)
            self.rfile = self._buffered
            service.track(self.request, False)

        def finish(self) -> None:
            service.track(self.request, None)
            super().finish()

        def _client_gone(self) -> bool:
            try:
                if not select.select([self.connection], [], [], 0)[0]:
                    return False
                # The TCP socket's own recv: a TLS socket refuses flags, and a closed
                # connection shows as end of stream below TLS too.
                return socket.socket.recv(self.connection, 1, socket.MSG_PEEK) == b''
            except OSError:
                return True  # reset

        def handle_one_request(self) -> None:
            started = False
            try:
                self._reader.deadline = time.monotonic() + cfg.request_timeout_s  # idle
                if not self._buffered.peek(1):
                    self.close_connection = True  # the client closed
                    return
                started = True
                service.track(self.request, True)
                self._reader.deadline = time.monotonic() + cfg.request_timeout_s
                self.raw_requestline = self.rfile.readline(65537)
                if len(self.raw_requestline) > 65536:
                    self.requestline, self.command = '', ''
                    self.send_error(414, 'request line too long')
                    return
                if self.parse_request():  # else it has answered 400, 414 or 431
                    self._dispatch()
                self.wfile.flush()
                service.track(self.request, False)
            except TimeoutError:
                self.close_connection = True
                if started:
                    self._refuse(RequestError(408, 'request not received within '
                                                   f'{cfg.request_timeout_s:g} s'))
            except OSError:
                self.close_connection = True  # the client went away, or shutdown cut it

        def handle_expect_100(self) -> bool:
            return True  # 100 Continue goes out only once the request passed its checks

        def flush_headers(self) -> None:
            # Writes get their own timeout: the reader left the socket's at what remained.
            self.connection.settimeout(cfg.request_timeout_s)
            super().flush_headers()

        def send_error(self, code: int, message: str | None = None,
                       explain: str | None = None) -> None:
            self.close_connection = True  # the request line or headers were unreadable
            if getattr(self, 'request_version', 'HTTP/0.9') == 'HTTP/0.9':
                self.request_version = 'HTTP/1.0'  # 0.9 is never spoken: send a status line
            self._refuse(RequestError(code, message or explain or 'bad request'))

        def _dispatch(self) -> None:
            path = urlsplit(self.path).path
            headers = self.headers
            keep_alive = not self.close_connection
            try:
                self.close_connection = True  # until the body is read, or known to be empty
                length = body_length(headers.get_all('Transfer-Encoding', []),
                                     headers.get_all('Content-Length', []))
                self.close_connection = not keep_alive or bool(length)
                access = rest_access(self.command, path)
                if access is not Access.OPEN and \
                        not service.tokens.accept(headers.get('Authorization')):
                    raise RequestError(401, 'missing or wrong bearer token')
                if access is Access.DISABLED:
                    raise RequestError(403, DISABLED_MESSAGE)
                if self.command == 'GET':
                    if length:
                        raise RequestError(400, 'a GET request carries no body')
                    self._get(path)
                elif self.command == 'POST':
                    self._post(path, length, keep_alive)
                else:
                    raise RequestError(405, f'method {self.command} is not allowed')
            except RequestError as err:
                self._refuse(err)

        def _get(self, path: str) -> None:
            if path == '/v2/health/live':
                self._send(200, {'live': True})
            elif path == '/v2/health/ready':
                self._send(200 if service.ready else 503, {'ready': service.ready})
            elif path == '/metrics':
                self._send(200, service.metrics(), 'text/plain; version=0.0.4')
            elif path in ('/v2', '/v2/'):
                self._send(200, server_metadata())
            elif (match := _MODEL.match(path)) and _served(match):
                if match.group(3):
                    self._send(200 if service.ready else 503, {'ready': service.ready})
                else:
                    self._send(200, model_metadata(cfg.model_name))
            else:
                raise RequestError(404, f'no route {path}')

        def _post(self, path: str, length: int, keep_alive: bool) -> None:
            match = _INFER.match(path)
            if not match or not _served(match):
                raise RequestError(404, f'no model route {path}')
            check_body(length, self.headers.get_all('Content-Encoding', []),
                       cfg.max_request_bytes)
            if self.headers.get('Expect', '').lower() == '100-continue':
                self.send_response_only(100)
                self.end_headers()
            body = self.rfile.read(length)
            if len(body) < length:
                return  # the client closed before sending it all
            self.close_connection = not keep_alive
            try:
                status, reply = 200, service.infer(body, self._client_gone)
            except RequestError as err:
                if err.status == 499:  # nobody to answer
                    service.count('abandoned')
                    self.close_connection = True
                    return
                raise  # answered by _dispatch
            except Exception as err:  # a failing model must answer, not drop the connection
                service.count('error_500')
                LOG.exception('inference failed')
                status, reply = 500, {'error': f'inference failed: {err}'}
            self._send(status, reply)

        def _refuse(self, err: RequestError) -> None:
            service.reject(err.status, self.client_address[0], err)
            extra = {401: {'WWW-Authenticate': 'Bearer'},
                     405: {'Allow': 'GET, POST'}}.get(err.status, {})
            try:
                self._send(err.status, {'error': str(err)}, extra=extra)
            except OSError:
                self.close_connection = True

        def _send(self, status: int, body: Any, content_type: str = 'application/json',
                  extra: dict[str, str] | None = None) -> None:
            payload = body.encode() if isinstance(body, str) else json.dumps(body).encode()
            self.send_response(status)
            self.send_header('Content-Type', content_type)
            self.send_header('Content-Length', str(len(payload)))
            for name, value in (extra or {}).items():
                self.send_header(name, value)
            if service.stopping:
                self.close_connection = True  # the last answer on this connection
            if self.close_connection:
                self.send_header('Connection', 'close')
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, fmt: str, *args: Any) -> None:
            LOG.debug(fmt, *args)

    return Handler
