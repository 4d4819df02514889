"""The rules of :mod:`rcnn_service.guard` put in front of MLServer's REST and gRPC servers.

MLServer checks nothing before a model's ``predict``: its repository API can unload the model
(after which readiness still says 200), it gzip-decompresses any REST body in full, and its
gRPC errors other than 400/404/422/500 become UNKNOWN with a traceback in the log. So the
service runs MLServer with

* the ASGI middleware of the builtin runtime (:class:`rcnn_service.asgi_guard.RestGuard`),
  outermost, that refuses a request on its headers alone (token, disabled repository API,
  framing, Content-Encoding, Content-Length) before any body byte is read, and answers
  readiness from the model's own state;
* a gRPC interceptor, first, that does the same on the call's method and metadata before the
  message is even parsed, and maps refusals to UNAUTHENTICATED, PERMISSION_DENIED,
  RESOURCE_EXHAUSTED, INVALID_ARGUMENT and NOT_FOUND;
* a log filter that turns MLServer's traceback per refused gRPC call into the one
  rate-limited line every refusal gets;
* an ASGI middleware that cancels a REST request whose client disconnected before its answer
  (:class:`DropAbandoned`), so queued work nobody waits for is never computed.

It reaches into MLServer's servers (``_rest_server._app``, ``_grpc_server``), which its public
API does not expose; :class:`GuardedMLServer` fails loudly if a version changes them.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from typing import Any, Awaitable, Callable, Sequence

from adaptive_offload.errors import ConfigError
import grpc
from mlserver import MLServer
from mlserver.errors import MLServerError
from mlserver.grpc import dataplane_pb2 as pb
from mlserver.grpc import utils as grpc_utils
from mlserver.grpc.server import GRPCServer
from rcnn_service import asgi_guard
from rcnn_service.asgi_guard import RestGuard
from rcnn_service.guard import (Access, DISABLED_MESSAGE, grpc_access, Overloaded,
                                RejectionLog, RequestError, Tokens)
from rcnn_service.mlserver_refusals import AbortAsOverloaded, OverloadedRefusal, REFUSED, Refused
from rcnn_service.tls import report_failed_handshakes, TlsFiles

LOG = logging.getLogger('adaptive_offload.mlserver')

GRPC_CODES = {400: grpc.StatusCode.INVALID_ARGUMENT, 401: grpc.StatusCode.UNAUTHENTICATED,
              403: grpc.StatusCode.PERMISSION_DENIED, 404: grpc.StatusCode.NOT_FOUND,
              411: grpc.StatusCode.INVALID_ARGUMENT, 413: grpc.StatusCode.RESOURCE_EXHAUSTED,
              415: grpc.StatusCode.INVALID_ARGUMENT, 422: grpc.StatusCode.FAILED_PRECONDITION,
              503: grpc.StatusCode.UNAVAILABLE}
"""gRPC code of each HTTP status the service refuses with."""


@functools.lru_cache(maxsize=1)
def _rejections() -> tuple[Any, RejectionLog]:
    """Return the refusal counter and log, made once per process (a second counter fails)."""
    from prometheus_client import Counter

    return (Counter('adaptive_offload_rejected_requests', 'Requests the runtime refused',
                    ['status']), RejectionLog(LOG))


@functools.lru_cache(maxsize=1)
def _abandoned() -> Any:
    """Return the counter of requests dropped because their client left, made once."""
    from prometheus_client import Counter

    return Counter('adaptive_offload_abandoned_requests',
                   'REST requests dropped because their client disconnected before the answer')


def record_rejection(status: int | str, peer: str, reason: object) -> None:
    """Count a refused request and log it in one line (rate-limited).

    A load refusal is counted, not logged: the queue's metrics say how often, for whom, why.
    """
    counter, log = _rejections()
    counter.labels(str(status)).inc()
    if not isinstance(reason, Overloaded):
        log(status, peer, reason)


class ServerGuard(asgi_guard.ServerGuard):
    """The rules of :class:`rcnn_service.asgi_guard.ServerGuard`, refusals counted for Prometheus.

    Args:
        tokens: Accepted bearer tokens.
        max_request_bytes: Largest REST body.
        ready: Whether the model can serve now (set by :class:`GuardedMLServer`).
    """

    def __init__(self, tokens: Tokens, max_request_bytes: int,
                 ready: Callable[[], Awaitable[bool]] | None = None) -> None:
        super().__init__(tokens, max_request_bytes, ready, record_rejection)


class DropAbandoned:
    """ASGI middleware: cancel a POST whose client disconnects before its answer starts.

    It also gives an overloaded 503 its ``Retry-After`` header (MLServer's error answers have
    no way to carry one).

    Starlette runs a request handler to its end even after the client has gone, so under
    overload MLServer computed every queued image for clients that had given up (a robot's
    deadline is far shorter than a queue). Cancelling the handler cancels its place in the
    batcher's queue (``asyncio.wrap_future`` passes the cancellation on); a batch already
    running finishes. gRPC needs nothing of this: grpc.aio cancels the call's task itself.

    Args:
        app: The ASGI app behind it.
        on_abandoned: Called once per request dropped this way.
    """

    def __init__(self, app: Any, on_abandoned: Callable[[], None] = lambda: None) -> None:
        self.app = app
        self.on_abandoned = on_abandoned

    async def __call__(self, scope: dict[str, Any], receive: Callable[[], Awaitable[Any]],
                       send: Callable[[Any], Awaitable[None]]) -> None:
        """Run the request; a client that leaves after its body was read cancels it."""
        if scope['type'] != 'http' or scope.get('method') != 'POST':
            await self.app(scope, receive, send)
            return
        body_read = asyncio.Event()
        answering = asyncio.Event()
        refused: list[OverloadedRefusal] = []
        REFUSED.set(refused)  # the handler's task starts with a copy of this context

        async def tracked_receive() -> Any:
            message = await receive()
            if message['type'] != 'http.request' or not message.get('more_body', False):
                body_read.set()
            return message

        async def tracked_send(message: Any) -> None:
            answering.set()
            if message['type'] == 'http.response.start' and message['status'] == 503 and \
                    refused:
                headers = [*message.get('headers', ()),
                           (b'retry-after', refused[-1].overloaded.retry_after_header.encode())]
                message = {**message, 'headers': headers}
            await send(message)

        task = asyncio.ensure_future(self.app(scope, tracked_receive, tracked_send))
        left = asyncio.ensure_future(self._left(receive, body_read, answering))
        try:
            await asyncio.wait([task, left], return_when=asyncio.FIRST_COMPLETED)
            if task.done():
                task.result()  # the handler's own exception goes on to the server
                return
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass
            self.on_abandoned()  # nobody to answer: the server closes the connection
        finally:
            task.cancel()  # only when this request itself was cancelled (server shutdown)
            left.cancel()

    @staticmethod
    async def _left(receive: Callable[[], Awaitable[Any]], body_read: asyncio.Event,
                    answering: asyncio.Event) -> None:
        """Return once the client disconnects before the answer starts; else never."""
        await body_read.wait()  # the handler reads the body itself; only then is it ours
        while (await receive())['type'] != 'http.disconnect':
            pass  # a pipelined request's bytes wait in the server's buffer, never as a message
        if answering.is_set():  # after the answer, uvicorn reports a finished cycle this way
            await asyncio.Event().wait()


class GrpcGuard(grpc.aio.ServerInterceptor):
    """gRPC interceptor: refuse on method and metadata, before the message is parsed.

    Args:
        guard: The rules.
    """

    def __init__(self, guard: ServerGuard) -> None:
        self.guard = guard

    async def intercept_service(self, continuation: Callable[[Any], Awaitable[Any]],
                                details: grpc.HandlerCallDetails) -> Any:
        """Return the call's handler, or one that refuses it."""
        handler = await continuation(details)
        if handler is None:
            return None  # no such method: gRPC answers UNIMPLEMENTED
        method = details.method
        access = grpc_access(method)
        if access is not Access.OPEN:
            metadata = {m.key: m.value for m in details.invocation_metadata or ()}
            if not self.guard.tokens.accept(metadata.get('authorization')):
                return _refusal(handler, RequestError(401, 'missing or wrong bearer token'))
            if access is Access.DISABLED:
                return _refusal(handler, RequestError(403, DISABLED_MESSAGE))
        if method.endswith('/ServerReady'):
            async def ready(request: Any, context: Any) -> Any:
                return pb.ServerReadyResponse(ready=await self.guard.ready())
            return handler._replace(unary_unary=ready)
        if handler.unary_unary is not None:
            return handler._replace(unary_unary=_mapped(handler.unary_unary))
        return handler


def _refusal(handler: Any, err: RequestError) -> Any:
    code = GRPC_CODES.get(err.status, grpc.StatusCode.INVALID_ARGUMENT)

    async def refuse(request: Any, context: Any) -> Any:
        peer = str(context.peer() or '?')
        record_rejection(err.status, peer, err)
        await context.abort(code, str(err))

    async def refuse_stream(request: Any, context: Any) -> Any:
        await refuse(request, context)
        yield None  # never reached: abort raises; makes this an async generator

    kind = ('stream_stream' if handler.response_streaming else 'stream_unary') \
        if handler.request_streaming else \
        ('unary_stream' if handler.response_streaming else 'unary_unary')
    behavior = refuse_stream if handler.response_streaming else refuse
    # No deserializer: a refused message is never parsed.
    return handler._replace(request_deserializer=None, **{kind: behavior})


def _mapped(behavior: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    """Wrap a unary behavior so an MLServerError it lets out gets its gRPC code, not UNKNOWN."""
    async def call(request: Any, context: Any) -> Any:
        refused: list[OverloadedRefusal] = []
        REFUSED.set(refused)
        guarded = AbortAsOverloaded(context, refused)
        try:
            return await behavior(request, guarded)
        except MLServerError as err:
            if not isinstance(err, Refused):
                record_rejection(err.status_code, str(context.peer() or '?'), err)
            await guarded.abort(GRPC_CODES.get(err.status_code, grpc.StatusCode.INTERNAL),
                                str(err))
    return call


def _quiet_refusals(record: logging.LogRecord) -> bool:
    """Drop MLServer's traceback for a refused gRPC call; the refusal gets its one line."""
    err = record.exc_info[1] if record.exc_info else None
    if isinstance(err, OverloadedRefusal):
        return False
    if not isinstance(err, MLServerError) or err.status_code >= 500:
        return True
    if not isinstance(err, Refused):
        record_rejection(err.status_code, '?', err)
    return False


class _GuardedGRPCServer(GRPCServer):
    """MLServer's gRPC server with :class:`GrpcGuard` as its first interceptor, and TLS.

    MLServer builds its interceptor list and its ``grpc.aio`` server in ``_create_server`` and
    only ever binds an insecure port: both are taken as MLServer assigns them.
    """

    def __init__(self, *args: Any, guard: GrpcGuard,
                 credentials: grpc.ServerCredentials | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._guard = guard
        self._credentials = credentials

    @property
    def _interceptors(self) -> list[Any]:
        return self.__dict__['_guarded_interceptors']

    @_interceptors.setter
    def _interceptors(self, value: list[Any]) -> None:
        self.__dict__['_guarded_interceptors'] = [self._guard, *value]

    @property
    def _server(self) -> Any:
        return self.__dict__['_guarded_server']

    @_server.setter
    def _server(self, server: Any) -> None:
        credentials = self._credentials
        if credentials is not None:
            # The one port MLServer binds is bound with TLS: no plain-text port is ever open.
            server.add_insecure_port = functools.partial(_secure_port, server, credentials)
        self.__dict__['_guarded_server'] = server

    def _create_server(self) -> Any:
        server = super()._create_server()
        if self.__dict__.get('_guarded_interceptors', [None])[0] is not self._guard:
            raise ConfigError('this MLServer version builds its gRPC server differently: '
                              'the request guard could not be installed')
        if self._credentials is not None and not getattr(server, '_adaptive_offload_tls',
                                                         False):
            raise ConfigError('this MLServer version binds its gRPC port differently: TLS '
                              'could not be set up')
        return server


def _report_rest_handshakes(rest: Any) -> None:
    """Report the REST port's failed TLS handshakes, on the context uvicorn makes from files."""
    get_config = getattr(rest, '_get_config', None)
    if get_config is None:
        raise ConfigError('this MLServer version configures uvicorn differently: failed TLS '
                          'handshakes could not be reported')

    def config() -> Any:
        cfg = get_config()
        load = cfg.load

        def load_and_report() -> None:
            load()
            if cfg.ssl is not None:
                report_failed_handshakes(
                    cfg.ssl, lambda reason: record_rejection('tls', '?', reason))
        cfg.load = load_and_report
        return cfg

    rest._get_config = config


def _secure_port(server: Any, credentials: grpc.ServerCredentials, address: str) -> int:
    server._adaptive_offload_tls = True
    return int(server.add_secure_port(address, credentials))


class GuardedMLServer(MLServer):
    """MLServer with the guard in front of REST and gRPC; readiness is the model's.

    Args:
        settings: MLServer settings.
        guard: The rules.
        model_name: The model whose readiness is the server's.
        tls: Certificate and key for gRPC (REST's go to uvicorn through the settings).

    Raises:
        ConfigError: If this MLServer version does not have the servers where expected, or
            the TLS files do not load.
    """

    def __init__(self, settings: Any, guard: ServerGuard, model_name: str,
                 tls: TlsFiles | None = None) -> None:
        self._guard = guard
        self._model_name = model_name
        self._grpc_credentials = None if tls is None else \
            grpc.ssl_server_credentials([tls.pem()])
        super().__init__(settings)

    async def start(self, models_settings: Sequence[Any] = ()) -> None:
        """Serve until the servers stop, then unload the models.

        MLServer's own start returns with the models loaded once its servers stopped (on
        SIGTERM, after their graceful shutdown): the process would then exit with the batching
        thread inside a forward pass, which aborts the interpreter (SIGABRT, exit -6) instead
        of the clean exit Kubernetes waits for.
        """
        try:
            await super().start(list(models_settings))
        finally:
            for model in list(await self._model_registry.get_models()):
                await model.unload()

    def _create_servers(self) -> None:
        super()._create_servers()
        app = getattr(getattr(self, '_rest_server', None), '_app', None)
        data_plane = getattr(self, '_data_plane', None)
        if app is None or data_plane is None:
            raise ConfigError('this MLServer version has no REST app or data plane where '
                              'expected: the request guard could not be installed')

        async def ready() -> bool:
            try:
                return bool(await data_plane.model_ready(self._model_name))
            except MLServerError:
                return False  # unknown (unloaded) model

        self._guard.ready = ready
        _report_rest_handshakes(self._rest_server)
        app.add_middleware(DropAbandoned, on_abandoned=_abandoned().inc)
        app.add_middleware(RestGuard, guard=self._guard)  # added last: outermost
        self._grpc_server = _GuardedGRPCServer(
            self._settings, data_plane, self._model_repository_handlers,
            guard=GrpcGuard(self._guard), credentials=self._grpc_credentials)
        for status, code in GRPC_CODES.items():  # what predict's refusals map to
            grpc_utils.STATUS_CODE_MAPPING.setdefault(status, code)
        logging.getLogger('mlserver.grpc').addFilter(_quiet_refusals)
