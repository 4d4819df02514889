"""The builtin runtime's routes, as a bare ASGI app behind the REST guard.

:func:`make_app` returns the app :mod:`rcnn_service.http_server` serves: the guard of
:mod:`rcnn_service.asgi_guard` first (framing, token, limits, readiness), then these routes.
Decoding and inference run in a thread pool, never on the event loop; while a request waits
for the model, the loop watches its connection, and a client that left has its queued work
dropped. Two models are served: the image model (``model_name``) and the tail of its split
(``<model_name>-tail``, requests in the V2 binary data extension; see
:mod:`rcnn_service.split_tail`).
"""

from __future__ import annotations

import asyncio
from concurrent.futures import Executor
import functools
import json
import logging
import re
import threading
from typing import Any, Callable, TYPE_CHECKING

from rcnn_service.asgi_guard import (header_length, header_values, peer_of, read_body, refusal,
                                     respond, RestGuard, ServerGuard)
from rcnn_service.guard import RequestError
from rcnn_service.protocol import model_metadata, MODEL_VERSION, server_metadata

if TYPE_CHECKING:
    from rcnn_service.service import InferenceService

LOG = logging.getLogger('adaptive_offload.service')
_INFER = re.compile(r'^/v2/models/([^/]+)(?:/versions/([^/]+))?/infer$')
_MODEL = re.compile(r'^/v2/models/([^/]+)(?:/versions/([^/]+))?(/ready)?$')
_METRICS_TYPE = 'text/plain; version=0.0.4'
IMAGE, TAIL = 'image', 'tail'

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

    def _served(self, match: re.Match[str] | None) -> str:
        """Which model a model route names (and its one version, if any): IMAGE, TAIL or ''."""
        if match is None or match.group(2) not in (None, MODEL_VERSION):
            return ''
        models = {self.service.config.model_name: IMAGE, self.service.tail_name: TAIL}
        return models.get(match.group(1), '')

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
        elif (match := _MODEL.match(path)) and (model := self._served(match)):
            tail = service.tail if service.ready else None
            if match.group(3):
                ready = service.ready and (model == IMAGE or tail is not None)
                await self._send(send, 200 if ready else 503, {'ready': ready})
            elif model == IMAGE:
                await self._send(send, 200, model_metadata(service.config.model_name))
            elif tail is not None:
                await self._send(send, 200, tail.metadata(
                    service.tail_name, service.config.max_tail_bytes, service.middle is not None))
            elif not service.ready:
                raise RequestError(503, 'model not ready')
            else:
                raise RequestError(404, f'model {service.config.arch} does not split')
        else:
            raise RequestError(404, f'no route {path}')

    async def _post(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        path = scope['path']
        model = self._served(_INFER.match(path))
        if not model:
            raise RequestError(404, f'no model route {path}')
        service = self.service
        header_bytes = header_length(scope) if model == TAIL else None
        body = await read_body(receive, service.config.max_request_bytes)
        if body is None:
            return  # the client left (or took too long: the server answered 408)
        infer: Callable[[Callable[[], bool]], dict[str, Any]] = functools.partial(
            service.infer_tail, body, header_bytes) if model == TAIL else \
            functools.partial(service.infer, body)
        count = service.count_tail if model == TAIL else _uncounted
        gone = threading.Event()
        watcher = asyncio.ensure_future(_watch(receive, gone))
        loop = asyncio.get_running_loop()
        try:
            reply = await loop.run_in_executor(self.executor, infer, gone.is_set)
        except RequestError as err:
            count('abandoned' if err.status == 499 else f'rejected_{err.status}')
            if err.status == 499:
                service.count('abandoned')  # nobody to answer
            else:  # the body was read: the connection can carry the next request
                await self._refuse(scope, send, err, close=False)
            return
        except asyncio.CancelledError:
            # The server's grace period ran out; the model may still finish this one in vain.
            await self._refuse(scope, send, RequestError(503, 'the service is stopping'),
                               close=True)
            return
        except Exception as err:  # a failing model must answer, not drop the connection
            count('error_500')
            service.count('error_500')
            LOG.exception('inference failed')
            await self._send(send, 500, {'error': f'inference failed: {err}'})
            return
        finally:
            watcher.cancel()
            gone.set()  # if the thread still waits, nobody will read its answer
        count('ok')
        await self._send(send, 200, reply)

    async def _refuse(self, scope: dict[str, Any], send: Send, err: RequestError,
                      close: bool) -> None:
        self.service.reject(err.status, peer_of(scope), err)
        body, retry_after = refusal(err)
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


def _uncounted(outcome: str) -> None:
    pass


async def _watch(receive: Receive, gone: threading.Event) -> None:
    """Set ``gone`` once the client disconnects (the request's body has been read)."""
    while (await receive())['type'] != 'http.disconnect':
        pass  # a pipelined request's bytes wait in the server's buffer, never as a message
    gone.set()
