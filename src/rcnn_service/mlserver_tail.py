"""The split tail on MLServer: ``<model>-tail`` run by the image model's own model and queue.

The image runtime (:class:`rcnn_service.mlserver_runtime.RcnnRuntime`) publishes its loaded
model, batcher and settings here under its model name (:func:`publish`); the tail model's
runtime (:class:`RcnnTailRuntime`) waits for them in its ``load``. So there is one copy of the
weights (on the GPU, or in the one model process) and one fair queue: a tail request waits in
the same queue, under the same admission, as an image, as in the builtin runtime.

MLServer's REST parses every body as JSON and has no V2 binary data extension, so the tail's
requests (a head's tensors, :mod:`adaptive_offload.split_wire`) and its metadata (which carries
the split points and the weights' digest the bridge checks) are answered by
:class:`TailRoutes`, an ASGI middleware behind the REST guard and the abandoned-request
middleware: the token, the body limit and the disabled repository API are checked first, as for
images, and a client that leaves cancels its place in the queue. Readiness
(``/v2/models/<model>-tail/ready``) is MLServer's, from :attr:`RcnnTailRuntime.ready`. gRPC
reaches the tail's runtime, which refuses inference with a clear INVALID_ARGUMENT: the tail
takes the binary extension over REST only (the builtin runtime has no gRPC at all).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
import functools
import logging
import math
import re
import time
from typing import Any, Callable

from adaptive_offload.errors import ConfigError
from adaptive_offload.split_wire import HEADER_LENGTH, tail_model_name
from mlserver import MLModel
from mlserver.types import InferenceRequest, InferenceResponse
from rcnn_service.asgi_guard import (header_length, header_values, peer_of, read_body, refusal,
                                     respond)
from rcnn_service.batching import AdaptiveBatcher
from rcnn_service.guard import Overloaded, RequestError
from rcnn_service.image_model import ImageModel
from rcnn_service.mlserver_guard import DropAbandoned, GuardedMLServer, record_rejection
from rcnn_service.mlserver_refusals import Refused
from rcnn_service.protocol import (MODEL_VERSION, OUTPUTS, server_time_parameters,
                                   v2_response)
from rcnn_service.service_config import ServiceConfig
from rcnn_service.split_tail import TailChecks

LOG = logging.getLogger('adaptive_offload.mlserver')
IMAGE_MODEL = 'image_model'
"""The tail's ``parameters.extra`` key naming the image model whose model it runs."""
LOAD_TIMEOUT = 'load_timeout_s'
"""The tail's ``parameters.extra`` key: how long its load waits for the image model."""
LOAD_TIMEOUT_S = 900.0
"""Its default: the image model's load (a model process's start, warm-up, calibration) ends
well within it, or has failed; a tail still waiting then must fail MLServer's load, not hang it.
"""
_POLL_S = 0.05
_ROUTE = re.compile(r'^/v2/models/([^/]+)(?:/versions/([^/]+))?(/infer)?$')
REST_ONLY = ('the tail model takes the V2 binary data extension over REST only: POST the '
             "head's tensors to /v2/models/{name}/infer with the " + HEADER_LENGTH +
             ' header')


@dataclass(frozen=True)
class SharedModel:
    """What the image runtime shares with the tail runtime of the same process.

    Attributes:
        config: The image runtime's settings (limits, token, ``max_tail_bytes``).
        model: Its loaded model; ``model.tail`` checks tail requests.
        batcher: Its queue and batching thread.
        answered: Records an answered request's queue wait and whether it was in budget.
        refused: Records a request the queue refused.
    """

    config: ServiceConfig
    model: ImageModel
    batcher: AdaptiveBatcher[Any, Any]
    answered: Callable[[float, bool], None]
    refused: Callable[[Overloaded], None]

    @property
    def ready(self) -> bool:
        """Whether the model can serve now and splits."""
        return self.batcher.alive and self.model.ready and self.model.tail is not None


_SHARED: dict[str, SharedModel] = {}
"""The loaded image models of this process, by model name."""


def publish(name: str, shared: SharedModel) -> None:
    """Make image model ``name``'s model available to its tail (once it is loaded)."""
    _SHARED[name] = shared


def withdraw(name: str) -> None:
    """Stop serving the tail of image model ``name`` (it is unloading)."""
    _SHARED.pop(name, None)


@functools.lru_cache(maxsize=1)
def _tail_requests() -> Any:
    """Return the tail's request counter on MLServer's registry, made once per process."""
    from prometheus_client import Counter

    return Counter('adaptive_offload_tail_requests', 'Requests to the split tail model',
                   ['outcome'])


def count_tail(outcome: str) -> None:
    """Count a tail request's outcome (``ok``, ``rejected_<status>``, ``abandoned``...)."""
    _tail_requests().labels(outcome).inc()


class RcnnTailRuntime(MLModel):
    """MLServer runtime of ``<model>-tail``: the image runtime's model, shared (no copy).

    Its settings name the image model under ``parameters.extra.image_model``.
    """

    async def load(self) -> bool:
        """Wait until the image model of the same process has loaded and published its model.

        It waits at most ``parameters.extra.load_timeout_s`` (default :data:`LOAD_TIMEOUT_S`).

        Raises:
            ConfigError: If the settings name no image model, or a timeout that is not a
                finite number above 0, or the image model was not published within it.
        """
        params = self.settings.parameters
        extra = (params.extra if params else None) or {}
        image = extra.get(IMAGE_MODEL)
        if not isinstance(image, str):
            raise ConfigError(f'the tail model needs parameters.extra.{IMAGE_MODEL}')
        timeout_s = extra.get(LOAD_TIMEOUT, LOAD_TIMEOUT_S)
        if isinstance(timeout_s, bool) or not isinstance(timeout_s, (int, float)) or \
                not 0 < timeout_s < math.inf:
            raise ConfigError(f'parameters.extra.{LOAD_TIMEOUT} of the tail model must be a '
                              f'number of seconds above 0, got {timeout_s!r}')
        self._image = image
        # MLServer loads all models at once (asyncio.gather): the image model's load runs.
        deadline = time.monotonic() + timeout_s
        while image not in _SHARED:
            if time.monotonic() >= deadline:
                raise ConfigError(f'model {self.name}: image model {image!r} did not load '
                                  f'within {timeout_s:g} s (parameters.extra.{LOAD_TIMEOUT}); '
                                  'it failed to load or is still loading')
            await asyncio.sleep(_POLL_S)
        LOG.info('model %s ready: the tail of %s', self.name, image)
        return True

    async def unload(self) -> bool:
        """Nothing to release: the image runtime owns the model and its queue."""
        return True

    @property
    def ready(self) -> bool:
        """Whether the image model is loaded, its model splits, and it can serve now."""
        shared = _SHARED.get(self.__dict__.get('_image', ''))
        return self.__dict__.get('_loaded', False) and shared is not None and shared.ready

    @ready.setter
    def ready(self, value: bool) -> None:
        self.__dict__['_loaded'] = value  # MLServer sets it after load() and unload()

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        """Refuse: tail requests come over REST, answered by :class:`TailRoutes`.

        Raises:
            Refused: 400, saying how to send a tail request.
        """
        err = RequestError(400, REST_ONLY.format(name=self.name))
        record_rejection(err.status, '-', err)
        count_tail(f'rejected_{err.status}')
        raise Refused(str(err), status_code=err.status)


def tail_model_settings(config: ServiceConfig) -> Any:
    """Return the MLServer model settings of ``config``'s tail model."""
    from mlserver.settings import ModelParameters, ModelSettings
    from mlserver.types import MetadataTensor

    return ModelSettings(
        name=tail_model_name(config.model_name), implementation=RcnnTailRuntime,
        platform='pytorch', versions=[MODEL_VERSION],
        parameters=ModelParameters(version=MODEL_VERSION,
                                   extra={IMAGE_MODEL: config.model_name}),
        outputs=[MetadataTensor(name=n, datatype=t, shape=s) for n, t, s in OUTPUTS])


class TailRoutes:
    """ASGI middleware: the tail's inference and metadata routes, in front of MLServer's.

    Args:
        app: The ASGI app behind it (MLServer's).
        model_name: The image model's name; the routes are those of ``<model_name>-tail``.
    """

    def __init__(self, app: Any, model_name: str) -> None:
        self.app = app
        self.image = model_name
        self.name = tail_model_name(model_name)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        """Answer the tail's metadata and inference; pass anything else on."""
        match = _ROUTE.match(scope.get('path', '')) if scope['type'] == 'http' else None
        if match is None or match.group(1) != self.name or \
                match.group(2) not in (None, MODEL_VERSION):
            await self.app(scope, receive, send)
            return
        method, infer = scope['method'], bool(match.group(3))
        if method == 'GET' and not infer:
            await self._metadata(scope, send)
        elif method == 'POST' and infer:
            await self._infer(scope, receive, send)
        else:
            await self.app(scope, receive, send)

    def _shared(self) -> tuple[SharedModel, TailChecks]:
        shared = _SHARED.get(self.image)
        if shared is None or not shared.batcher.alive:
            raise RequestError(503, 'model not ready')
        tail = shared.model.tail
        if tail is None:
            if not shared.model.ready:  # a model process restarting knows no spec yet
                raise shared.model.unavailable('the model process is restarting')
            raise RequestError(404, f'model {shared.config.arch} does not split: no '
                                    f'{self.name}')
        return shared, tail

    async def _metadata(self, scope: dict[str, Any], send: Any) -> None:
        try:
            shared, tail = self._shared()
        except RequestError as err:
            await _refuse(scope, send, err, close=False)
            return
        await respond(send, 200, tail.metadata(self.name, shared.config.max_tail_bytes),
                      close=False)

    async def _infer(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        body_read = not any(v.strip() != '0' for v in header_values(scope, 'content-length'))
        try:
            shared, tail = self._shared()
            cfg = shared.config
            header_bytes = header_length(scope)
            body = await read_body(receive, cfg.max_request_bytes)
            if body is None:
                count_tail('abandoned')
                return  # the client left: nobody to answer
            body_read = True
            # From here, as the image runtime's: the bridge takes the rest for the transfer.
            start = time.perf_counter()
            request = await asyncio.get_running_loop().run_in_executor(
                None, tail.read, body, header_bytes, cfg.max_tail_bytes, cfg.max_image_side)
            if request.forward is not None:  # its metadata says so: split.forwards false
                raise RequestError(400, 'this service forwards to no cloud (the MLServer '
                                        'runtime never does): send no forward_to')
            if not shared.model.ready:  # its process is restarting
                raise shared.model.unavailable('the model process is restarting')
            try:
                ticket = shared.batcher.submit(request.job, request.context.robot,
                                               request.context.budget_s)
            except RuntimeError as err:  # closed while this request was read
                raise RequestError(503, 'the service is stopping') from err
            except Overloaded as err:
                shared.refused(err)
                raise
            # Cancelled (DropAbandoned, the client left) cancels the ticket too.
            dets = await asyncio.wrap_future(ticket.future)
            shared.answered(ticket.queue_wait_s, ticket.in_budget)
            reply = v2_response(self.name, dets, request.outputs, request.request_id)
        except RequestError as err:
            count_tail(f'rejected_{err.status}')
            await _refuse(scope, send, err, close=not body_read)
            return
        except asyncio.CancelledError:
            count_tail('abandoned')
            raise
        except Exception as err:  # a failing model must answer, not drop the connection
            count_tail('error_500')
            LOG.exception('tail inference failed')
            await respond(send, 500, {'error': f'inference failed: {err}'}, close=False)
            return
        reply['parameters'] = server_time_parameters(time.perf_counter() - start,
                                                     ticket.queue_wait_s)
        count_tail('ok')
        await respond(send, 200, reply, close=False)


async def _refuse(scope: dict[str, Any], send: Any, err: RequestError, close: bool) -> None:
    """Record and answer a refusal as the builtin runtime does (reason and Retry-After)."""
    record_rejection(err.status, peer_of(scope), err)
    body, retry_after = refusal(err)
    await respond(send, err.status, body, close, retry_after)


class TailServingMLServer(GuardedMLServer):
    """:class:`GuardedMLServer` with :class:`TailRoutes` behind its REST guard.

    Raises:
        ConfigError: If the REST app's middleware is not where expected.
    """

    def _create_servers(self) -> None:
        super()._create_servers()
        from starlette.middleware import Middleware

        stack = self._rest_server._app.user_middleware
        # Behind the guard and DropAbandoned (first is outermost): checked, and cancellable.
        where = next((i for i, m in enumerate(stack) if m.cls is DropAbandoned), None)
        if where is None:
            raise ConfigError('the REST app has no DropAbandoned middleware: the tail routes '
                              'could not be installed behind the guard')
        # Starlette types an app's scope as MutableMapping; these routes take the dict it is.
        routes: Any = TailRoutes
        stack.insert(where + 1, Middleware(routes, model_name=self._model_name))
