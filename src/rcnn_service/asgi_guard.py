"""The REST guard of both runtimes: an ASGI middleware that refuses requests on their headers.

It runs outermost, in front of the builtin runtime's app (:mod:`rcnn_service.asgi_app`) and of
MLServer's, and applies the rules of :mod:`rcnn_service.guard` before any body byte is read:
the length of the request target and headers, framing (Transfer-Encoding, Content-Length,
no body on GET), token, the disabled repository API, Content-Encoding and body length. A
refusal closes the connection, since its body was not read. It also answers readiness from the
model's own state. It imports neither MLServer nor gRPC, so the builtin runtime runs without
them.
"""

from __future__ import annotations

import json
import re
from typing import Any, Awaitable, Callable

from adaptive_offload.split_wire import HEADER_LENGTH

from rcnn_service.guard import (Access, body_length, check_body, DISABLED_MESSAGE,
                                Overloaded, RequestError, rest_access, Tokens)

MAX_TARGET_BYTES = 8 << 10
"""Longest request target (path and query); longer ones are refused (414)."""
MAX_HEADER_BYTES = 16 << 10
"""Most bytes of request line and headers; more are refused (431, or 400 from the parser)."""

Reject = Callable[[int, str, object], None]
"""Counts and logs one refused request: ``(status, peer, reason)``."""


class ServerGuard:
    """What the guards check, how they record a refusal and how they answer readiness.

    Args:
        tokens: Accepted bearer tokens.
        max_request_bytes: Largest REST body.
        ready: Whether the model can serve now (a runtime sets it once it knows its model).
        reject: Records each refusal; by default it is not recorded.
    """

    def __init__(self, tokens: Tokens, max_request_bytes: int,
                 ready: Callable[[], Awaitable[bool]] | None = None,
                 reject: Reject | None = None) -> None:
        self.tokens = tokens
        self.max_request_bytes = max_request_bytes
        self.ready = ready or _never_ready
        self.reject: Reject = reject or _unrecorded


async def _never_ready() -> bool:
    return False


def _unrecorded(status: int, peer: str, reason: object) -> None:
    pass


def header_values(scope: dict[str, Any], name: str) -> list[str]:
    """Return every value of one request header (``name`` in lower case) of an ASGI scope."""
    key = name.encode('latin-1')
    return [v.decode('latin-1') for k, v in scope.get('headers', ()) if k.lower() == key]


def peer_of(scope: dict[str, Any]) -> str:
    """Return the client's address of an ASGI scope, ``?`` when unknown."""
    return str((scope.get('client') or ('?',))[0])


class RestGuard:
    """ASGI middleware: refuse on headers alone, before the app behind reads or expands a body.

    Args:
        app: The ASGI app behind it.
        guard: The rules.
    """

    def __init__(self, app: Any, guard: ServerGuard) -> None:
        self.app = app
        self.guard = guard

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        """Serve one ASGI connection scope."""
        if scope['type'] != 'http':
            await self.app(scope, receive, send)
            return
        method, path = scope['method'], scope['path']
        try:
            # The HTTP parser bounds only headers that arrive in pieces, not a whole request.
            if len(scope.get('raw_path') or b'') + len(scope.get('query_string') or b'') > \
                    MAX_TARGET_BYTES:
                raise RequestError(414, f'request target over {MAX_TARGET_BYTES} bytes')
            if sum(len(k) + len(v) + 4 for k, v in scope.get('headers', ())) > MAX_HEADER_BYTES:
                raise RequestError(431, f'headers over {MAX_HEADER_BYTES} bytes')
            length = body_length(header_values(scope, 'transfer-encoding'),
                                 header_values(scope, 'content-length'))
            if length and method in ('GET', 'HEAD'):
                raise RequestError(400, f'a {method} request carries no body')
            access = rest_access(method, path)
            if access is not Access.OPEN and not self.guard.tokens.accept(
                    next(iter(header_values(scope, 'authorization')), None)):
                raise RequestError(401, 'missing or wrong bearer token')
            if access is Access.DISABLED:
                raise RequestError(403, DISABLED_MESSAGE)
            check_body(length, header_values(scope, 'content-encoding'),
                       self.guard.max_request_bytes)
        except RequestError as err:
            self.guard.reject(err.status, peer_of(scope), err)
            await respond(send, err.status, {'error': str(err)}, close=True)
            return
        if path == '/v2/health/ready':  # MLServer's says 200 with no model at all
            ready = await self.guard.ready()
            await respond(send, 200 if ready else 503, {'ready': ready}, close=False)
            return
        await self.app(scope, receive, send)


async def respond(send: Any, status: int, body: dict[str, Any], close: bool,
                  retry_after: str = '') -> None:
    """Send a whole JSON response; ``close`` ends the connection after it.

    A 401 says which scheme to use (``WWW-Authenticate``), a 405 which methods are allowed, an
    overloaded 503 when to come back (``retry_after``, whole seconds).
    """
    payload = json.dumps(body).encode()
    headers = [(b'content-type', b'application/json'),
               (b'content-length', str(len(payload)).encode())]
    if retry_after:
        headers.append((b'retry-after', retry_after.encode()))
    if status == 401:
        headers.append((b'www-authenticate', b'Bearer'))
    elif status == 405:
        headers.append((b'allow', b'GET, POST'))
    if close:  # e.g. the body was not read: the connection cannot carry another request
        headers.append((b'connection', b'close'))
    await send({'type': 'http.response.start', 'status': status, 'headers': headers})
    await send({'type': 'http.response.body', 'body': payload})


async def read_body(receive: Any, limit: int) -> bytes | None:
    """Return the whole request body, None if the client left before sending it all.

    Raises:
        RequestError: 413 past ``limit`` bytes (the guard has checked Content-Length; this
            holds whatever the framing).
    """
    parts, size = [], 0
    while True:
        message = await receive()
        if message['type'] == 'http.disconnect':
            return None
        part = message.get('body', b'')
        size += len(part)
        if size > limit:
            raise RequestError(413, f'request of more than {limit} bytes')
        parts.append(part)
        if not message.get('more_body', False):
            return b''.join(parts)


_DIGITS = re.compile(r'^[0-9]{1,18}$')


def header_length(scope: dict[str, Any]) -> int | None:
    """Return a tail request's JSON header length (binary data extension); None if not given.

    Raises:
        RequestError: 400 for a value that is not one number (before the body is read).
    """
    values = header_values(scope, HEADER_LENGTH.lower())
    if len(values) > 1 or (values and not _DIGITS.match(values[0].strip())):
        raise RequestError(400, f'bad {HEADER_LENGTH} {", ".join(values)[:40]!r}')
    return int(values[0]) if values else None


def refusal(err: RequestError) -> tuple[dict[str, Any], str]:
    """Return a refusal's JSON body and Retry-After value ('' unless it is a load refusal)."""
    body: dict[str, Any] = {'error': str(err)}
    if not isinstance(err, Overloaded):
        return body, ''
    body['parameters'] = {'reason': err.reason, 'retry_after_us': round(err.retry_after_s * 1e6)}
    return body, err.retry_after_header
