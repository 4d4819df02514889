"""The MLServer guard's parts alone: the ASGI middleware, the gRPC interceptor, the log filter."""

from __future__ import annotations

import asyncio
import base64
import logging
from typing import Any

from adaptive_offload.errors import ConfigError
import grpc
from mlserver.errors import MLServerError, ModelNotFound
from mlserver.settings import ModelParameters, ModelSettings
from mlserver.types import InferenceRequest
from prometheus_client import CollectorRegistry
import pytest
from rcnn_service import mlserver_runtime
from rcnn_service.fair_queue import MARGIN
from rcnn_service.guard import RequestError, Tokens
from rcnn_service.mlserver_guard import (_quiet_refusals, DropAbandoned, GrpcGuard, Refused,
                                         RestGuard, ServerGuard)
from rcnn_service.mlserver_runtime import config_from_extra, request_image_bytes
from rcnn_service.service_metrics import ServiceMetrics


class _App:
    """The ASGI app behind the guard: records whether it was called."""

    def __init__(self) -> None:
        self.called = False

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        self.called = True
        await send({'type': 'http.response.start', 'status': 200, 'headers': []})
        await send({'type': 'http.response.body', 'body': b'app'})


def _call(guard: ServerGuard, method: str, path: str,
          headers: dict[str, str]) -> tuple[int, dict[bytes, bytes], bool, bool]:
    """Run one request through RestGuard; return status, headers, app called, body read."""
    app, sent, read = _App(), [], []

    async def receive() -> dict[str, Any]:
        read.append(True)
        return {'type': 'http.request', 'body': b'', 'more_body': False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {'type': 'http', 'method': method, 'path': path, 'client': ('10.0.0.9', 5),
             'headers': [(k.lower().encode(), v.encode()) for k, v in headers.items()]}
    asyncio.run(RestGuard(app, guard)(scope, receive, send))
    return sent[0]['status'], dict(sent[0]['headers']), app.called, bool(read)


def _guard(ready: bool = True) -> ServerGuard:
    async def is_ready() -> bool:
        return ready
    return ServerGuard(Tokens(['t0k']), 1000, is_ready)


@pytest.mark.parametrize('method, path, headers, status', [
    ('POST', '/v2/models/rcnn/infer', {}, 401),
    ('POST', '/v2/models/rcnn/infer', {'Authorization': 'Bearer nope'}, 401),
    ('POST', '/v2/repository/models/rcnn/unload', {'Authorization': 'Bearer t0k'}, 403),
    ('POST', '/v2/models/rcnn/infer', {'Authorization': 'Bearer t0k',
                                       'Content-Encoding': 'gzip', 'Content-Length': '10'}, 415),
    ('POST', '/v2/models/rcnn/infer', {'Authorization': 'Bearer t0k',
                                       'Content-Length': '1001'}, 413),
    ('POST', '/v2/models/rcnn/infer', {'Authorization': 'Bearer t0k', 'Content-Length': '4',
                                       'Transfer-Encoding': 'chunked'}, 400),
    ('GET', '/v2', {}, 401),
])
def test_refused_on_headers_without_reading_the_body(method: str, path: str,
                                                     headers: dict[str, str],
                                                     status: int) -> None:
    got, head, called, read = _call(_guard(), method, path, headers)
    assert (got, called, read) == (status, False, False)
    assert head[b'connection'] == b'close'
    assert (b'www-authenticate' in head) == (status == 401)


def test_accepted_requests_and_probes() -> None:
    auth = {'Authorization': 'Bearer t0k', 'Content-Length': '1000'}
    assert _call(_guard(), 'POST', '/v2/models/rcnn/infer', auth)[::2] == (200, True)
    assert _call(_guard(), 'GET', '/v2/health/live', {})[::2] == (200, True)
    assert _call(_guard(), 'GET', '/v2/models/rcnn/ready', {})[::2] == (200, True)
    # Readiness is the model's, not MLServer's (which says 200 with no model at all).
    assert _call(_guard(True), 'GET', '/v2/health/ready', {})[::2] == (200, False)
    assert _call(_guard(False), 'GET', '/v2/health/ready', {})[::2] == (503, False)


class _Details:
    def __init__(self, method: str, metadata: tuple[tuple[str, str], ...] = ()) -> None:
        self.method = method
        self.invocation_metadata = [_Metadatum(k, v) for k, v in metadata]


class _Metadatum:
    def __init__(self, key: str, value: str) -> None:
        self.key, self.value = key, value


class _Context:
    def __init__(self) -> None:
        self.aborted: tuple[Any, str] | None = None

    def peer(self) -> str:
        return 'ipv4:10.0.0.9:5'

    async def abort(self, code: Any, details: str) -> None:
        self.aborted = (code, details)
        raise grpc.aio.AbortError()


def _intercept(method: str, metadata: tuple[tuple[str, str], ...] = (),
               behavior: Any = None) -> tuple[Any, _Context]:
    async def ok(request: Any, context: Any) -> str:
        return 'served'

    async def continuation(details: Any) -> Any:
        return grpc.unary_unary_rpc_method_handler(behavior or ok, request_deserializer=bytes)

    async def run() -> tuple[Any, _Context]:
        handler = await GrpcGuard(_guard()).intercept_service(continuation,
                                                              _Details(method, metadata))
        context = _Context()
        try:
            return await handler.unary_unary(b'raw', context), context
        except grpc.aio.AbortError:
            return handler.request_deserializer, context

    return asyncio.run(run())


@pytest.mark.parametrize('method, metadata, code', [
    ('ModelInfer', (), grpc.StatusCode.UNAUTHENTICATED),
    ('ModelMetadata', (('authorization', 'Bearer nope'),), grpc.StatusCode.UNAUTHENTICATED),
    ('RepositoryModelUnload', (('authorization', 'Bearer t0k'),),
     grpc.StatusCode.PERMISSION_DENIED),
])
def test_grpc_refusals_are_never_parsed(method: str, metadata: Any, code: Any) -> None:
    deserializer, context = _intercept(f'/inference.GRPCInferenceService/{method}', metadata)
    assert deserializer is None and context.aborted[0] == code


def test_grpc_calls_pass_and_library_errors_get_their_codes() -> None:
    auth = (('authorization', 'Bearer t0k'),)
    assert _intercept('/inference.GRPCInferenceService/ModelInfer', auth)[0] == 'served'

    async def unknown(request: Any, context: Any) -> None:
        raise ModelNotFound('nope')

    _, context = _intercept('/inference.GRPCInferenceService/ModelReady', (), unknown)
    assert context.aborted[0] == grpc.StatusCode.NOT_FOUND  # was UNKNOWN


def test_tracebacks_of_refusals_are_filtered_from_mlserver_log() -> None:
    def record(err: BaseException | None) -> logging.LogRecord:
        return logging.LogRecord('mlserver.grpc', logging.ERROR, __file__, 1, str(err), (),
                                 (type(err), err, None) if err else None)

    assert not _quiet_refusals(record(Refused('too big', 413)))
    assert not _quiet_refusals(record(ModelNotFound('nope')))
    assert _quiet_refusals(record(MLServerError('broken', 500)))
    assert _quiet_refusals(record(ValueError('bug')))
    assert _quiet_refusals(record(None))


def test_runtime_settings_and_its_own_checks() -> None:
    config = config_from_extra({'tokens': ['a', 'b'], 'max_request_bytes': 10})
    assert config.tokens == ('a', 'b')
    with pytest.raises(ConfigError, match='list of strings'):
        config_from_extra({'tokens': [1]})
    image = base64.b64encode(b'\xff\xd8' + bytes(4)).decode()
    payload = InferenceRequest.model_validate({'inputs': [
        {'name': 'image', 'datatype': 'BYTES', 'shape': [1], 'data': [image]}],
        'parameters': {'headers': {'Authorization': 'Bearer b'}}})
    assert request_image_bytes(payload, config) == b'\xff\xd8' + bytes(4)
    with pytest.raises(RequestError) as err:
        request_image_bytes(payload, config, Tokens(['c']))
    assert err.value.status == 401
    with pytest.raises(RequestError) as err:
        request_image_bytes(payload, config_from_extra({'max_request_bytes': 5}))
    assert err.value.status == 413


def _abandon(client_leaves_at: str, fail: bool = False) -> tuple[list[str], list[Any], int]:
    """Run a POST through DropAbandoned; the client disconnects at ``client_leaves_at``."""
    events: list[str] = []
    sent: list[Any] = []
    dropped: list[int] = []
    answer_started = asyncio.Event()
    release = asyncio.Event()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()  # the whole body
        events.append('read')
        try:
            await release.wait()  # waits for the model
        except asyncio.CancelledError:
            events.append('cancelled')
            raise
        if fail:
            raise RuntimeError('model failed')
        await send({'type': 'http.response.start', 'status': 200, 'headers': []})
        answer_started.set()
        await asyncio.sleep(0)  # the client may leave while the body is on its way
        await send({'type': 'http.response.body', 'body': b'{}'})
        events.append('answered')

    async def run() -> None:
        gone = asyncio.Event()
        messages = [{'type': 'http.request', 'body': b'{}', 'more_body': False}]

        async def receive() -> Any:
            if messages:
                return messages.pop()
            await gone.wait()
            return {'type': 'http.disconnect'}

        async def send(message: Any) -> None:
            sent.append(message)

        async def client() -> None:
            await asyncio.sleep(0.01)
            if client_leaves_at == 'waiting':
                gone.set()
                return
            release.set()
            if client_leaves_at == 'answering':
                await answer_started.wait()
                gone.set()

        middleware = DropAbandoned(app, lambda: dropped.append(1))
        await asyncio.wait_for(asyncio.gather(middleware(
            {'type': 'http', 'method': 'POST', 'path': '/v2/models/m/infer'}, receive, send),
            client()), 5)

    try:
        asyncio.run(run())
    except RuntimeError as err:
        events.append(str(err))
    return events, sent, len(dropped)


def test_a_client_that_leaves_while_its_request_waits_cancels_it() -> None:
    events, sent, dropped = _abandon('waiting')
    assert events == ['read', 'cancelled'] and sent == [] and dropped == 1


def test_a_client_that_stays_or_leaves_during_the_answer_gets_it_whole() -> None:
    for moment in ('never', 'answering'):
        events, sent, dropped = _abandon(moment)
        assert events == ['read', 'answered'] and len(sent) == 2 and dropped == 0, moment


def test_a_failing_handler_still_fails_through_the_middleware() -> None:
    events, sent, dropped = _abandon('never', fail=True)
    assert events == ['read', 'model failed'] and dropped == 0


class _Model:
    """An image model that answers at once: what admission sees of the runtime is its batcher."""

    ready, tail = True, None

    def run(self, frames: list[bytes]) -> list[dict[str, Any]]:
        return [{} for _ in frames]

    def close(self) -> None:
        self.ready = False


@pytest.mark.parametrize('extra, margin', [({'admission_margin': 1.5}, 1.5), ({}, MARGIN)])
def test_the_runtime_gives_admission_its_configured_margin(
        monkeypatch: pytest.MonkeyPatch, extra: dict[str, Any], margin: float) -> None:
    monkeypatch.setattr(mlserver_runtime, 'load_model', lambda cfg: _Model())
    monkeypatch.setattr(mlserver_runtime, '_load_metrics',
                        lambda: ServiceMetrics(CollectorRegistry()))
    runtime = mlserver_runtime.RcnnRuntime(ModelSettings(
        name='rcnn', implementation=mlserver_runtime.RcnnRuntime,
        parameters=ModelParameters(extra=extra)))
    asyncio.run(runtime.load())
    try:
        assert runtime._batcher.times.margin == margin
    finally:
        asyncio.run(runtime.unload())


@pytest.mark.parametrize('margin', [-1.0, float('inf')])
def test_the_runtime_refuses_a_margin_admission_cannot_use(
        monkeypatch: pytest.MonkeyPatch, margin: float) -> None:
    monkeypatch.setattr(mlserver_runtime, 'load_model', lambda cfg: _Model())
    runtime = mlserver_runtime.RcnnRuntime(ModelSettings(
        name='rcnn', implementation=mlserver_runtime.RcnnRuntime,
        parameters=ModelParameters(extra={'admission_margin': margin})))
    with pytest.raises(ConfigError, match='admission margin'):
        asyncio.run(runtime.load())
