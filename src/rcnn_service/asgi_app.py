"""The builtin runtime's routes, as a bare ASGI app behind the REST guard.

:func:`make_app` returns the app :mod:`rcnn_service.http_server` serves: the guard of
:mod:`rcnn_service.asgi_guard` first (framing, token, limits, readiness), then these routes.
Decoding and inference run in a thread pool, never on the event loop; while a request waits
for the model, the loop watches its connection, and a client that left has its queued work
dropped.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import Executor
import json
import logging
import re
import threading
from typing import Any, Callable, TYPE_CHECKING

from rcnn_service.asgi_guard import header_values, peer_of, respond, RestGuard, ServerGuard
from rcnn_service.guard import Overloaded, RequestError
from rcnn_service.protocol import model_metadata, MODEL_VERSION, server_metadata

if TYPE_CHECKING:
    from rcnn_service.service import InferenceService

LOG = logging.getLogger('adaptive_offload.service')
_INFER = re.compile(r'^/v2/models/([^/]+)(?:/versions/([^/]+))?/infer$')
_MODEL = re.compile(r'^/v2/models/([^/]+)(?:/versions/([^/]+))?(/ready)?$')
_METRICS_TYPE = 'text/plain; version=0.0.4'

Receive = Callable[[], Any]
Send = Callable[[dict[str, Any]], Any]


def make_app(service: InferenceService, executor: Executor) -> RestGuard:
    """Return the ASGI app serving ``service``, guarded.

    Args:
        service: What answers: model, counters, settings.
        executor: Where requests are decoded and wait for the model.
    """
    async def ready() -> bool:
        return service.ready

    guard = ServerGuard(service.tokens, service.config.max_request_bytes, ready, service.reject)
    return RestGuard(BuiltinApp(service, executor), guard)


class BuiltinApp:
    """The V2 routes of the builtin runtime (the guard in front has checked the headers).

    Args:
        service: What answers.
        executor: Where requests are decoded and wait for the model.
    """

    def __init__(self, service: InferenceService, executor: Executor) -> None:
        self.service = service
        self.executor = executor

    def _served(self, match: re.Match[str]) -> bool:
        """Whether a model route names the served model (and its one version, if any)."""
        return match.group(1) == self.service.config.model_name and \
            match.group(2) in (None, MODEL_VERSION)

    async def __call__(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        """Serve one HTTP request."""
        if scope['type'] != 'http':
            return  # lifespan and websocket scopes: the server runs neither
        method, path = scope['method'], scope['path']
        # Until a body is read, the connection cannot carry another request.
        unread = any(v.strip() != '0' for v in header_values(scope, 'content-length'))
        try:
            if method == 'GET':
                await self._get(path, send)
            elif method == 'POST':
                await self._post(scope, receive, send)
            else:
                raise RequestError(405, f'method {method} is not allowed')
        except RequestError as err:
            await self._refuse(scope, send, err, unread)

    async def _get(self, path: str, send: Send) -> None:
        service = self.service
        if path == '/v2/health/live':
            await self._send(send, 200, {'live': True})
        elif path == '/metrics':
            await self._send(send, 200, service.metrics(), _METRICS_TYPE)
        elif path in ('/v2', '/v2/'):
            await self._send(send, 200, server_metadata())
        elif (match := _MODEL.match(path)) and self._served(match):
            if match.group(3):
                await self._send(send, 200 if service.ready else 503, {'ready': service.ready})
            else:
                await self._send(send, 200, model_metadata(service.config.model_name))
        else:
            raise RequestError(404, f'no route {path}')

    async def _post(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        path = scope['path']
        match = _INFER.match(path)
        if not match or not self._served(match):
            raise RequestError(404, f'no model route {path}')
        body = await _read_body(receive, self.service.config.max_request_bytes)
        if body is None:
            return  # the client left (or took too long: the server answered 408)
        gone = threading.Event()
        watcher = asyncio.ensure_future(_watch(receive, gone))
        loop = asyncio.get_running_loop()
        try:
            reply = await loop.run_in_executor(self.executor, self.service.infer, body,
                                               gone.is_set)
        except RequestError as err:
            if err.status == 499:
                self.service.count('abandoned')  # nobody to answer
            else:  # the body was read: the connection can carry the next request
                await self._refuse(scope, send, err, close=False)
            return
        except asyncio.CancelledError:
            # The server's grace period ran out; the model may still finish this one in vain.
            await self._refuse(scope, send, RequestError(503, 'the service is stopping'),
                               close=True)
            return
        except Exception as err:  # a failing model must answer, not drop the connection
            self.service.count('error_500')
            LOG.exception('inference failed')
            await self._send(send, 500, {'error': f'inference failed: {err}'})
            return
        finally:
            watcher.cancel()
            gone.set()  # if the thread still waits, nobody will read its answer
        await self._send(send, 200, reply)

    async def _refuse(self, scope: dict[str, Any], send: Send, err: RequestError,
                      close: bool) -> None:
        self.service.reject(err.status, peer_of(scope), err)
        body: dict[str, Any] = {'error': str(err)}
        retry_after = ''
        if isinstance(err, Overloaded):
            body['parameters'] = {'reason': err.reason,
                                  'retry_after_us': round(err.retry_after_s * 1e6)}
            retry_after = err.retry_after_header
        await respond(send, err.status, body, close or self.service.stopping, retry_after)

    async def _send(self, send: Send, status: int, body: Any,
                    content_type: str = 'application/json') -> None:
        payload = body.encode() if isinstance(body, str) else json.dumps(body).encode()
        headers = [(b'content-type', content_type.encode()),
                   (b'content-length', str(len(payload)).encode())]
        if self.service.stopping:
            headers.append((b'connection', b'close'))  # the last answer on this connection
        await send({'type': 'http.response.start', 'status': status, 'headers': headers})
        await send({'type': 'http.response.body', 'body': payload})


async def _read_body(receive: Receive, limit: int) -> bytes | None:
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


async def _watch(receive: Receive, gone: threading.Event) -> None:
    """Set ``gone`` once the client disconnects (the request's body has been read)."""
    while (await receive())['type'] != 'http.disconnect':
        pass  # a pipelined request's bytes wait in the server's buffer, never as a message
    gone.set()
