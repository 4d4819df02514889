"""The R-CNN detector as an MLServer runtime: Open Inference Protocol over REST and gRPC.

MLServer gives the protocol (REST on ``http_port``, gRPC on ``grpc_port``), readiness that
stays false until :meth:`RcnnRuntime.load` has warmed the model up, and Prometheus metrics on
``metrics_port``. The runtime does its own adaptive batching (:mod:`rcnn_service.batching`)
instead of MLServer's: MLServer merges requests before ``predict`` sees them, so one bad image
or one request without the token would fail or pass for the whole batch; here every request
is checked alone and only decoded images are batched.

Input: one ``image`` BYTES tensor holding JPEG or PNG bytes (raw over gRPC, base64 over REST).
Output: ``boxes`` (FP32 Nx4), ``scores`` (FP32 N), ``labels`` (BYTES N), PNG ``masks`` for
Mask R-CNN, and the server time as the integer parameter ``server_us``.

``serve_mlserver`` runs MLServer with the guard of :mod:`rcnn_service.mlserver_guard` in
front; the runtime checks each request again itself (token, size, image header), so it stays
safe when run by a plain ``mlserver start``. Images are decoded off the event loop.

Next to it ``<model>-tail`` serves the tail of the same model's split, on the same loaded model
and in the same queue (:mod:`rcnn_service.mlserver_tail`).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
from dataclasses import asdict, fields
import functools
import logging
import os
import signal
import time
from typing import Any, Callable, Mapping

from adaptive_offload.errors import ConfigError
from adaptive_offload.split_wire import tail_model_name
from mlserver import MLModel
from mlserver.types import InferenceRequest, InferenceResponse
import numpy as np
from rcnn_service.asgi_guard import MAX_HEADER_BYTES
from rcnn_service.batching import AdaptiveBatcher
from rcnn_service.guard import Overloaded, RequestError, Tokens
from rcnn_service.http_server import ensure_ports_free, HttpLimits, protocol_class
from rcnn_service.image_model import ImageModel, LocalModel
from rcnn_service.mlserver_guard import record_rejection, ServerGuard
from rcnn_service.mlserver_refusals import OverloadedRefusal, Refused
from rcnn_service.mlserver_tail import (publish, SharedModel, tail_model_settings,
                                        TailServingMLServer, withdraw)
from rcnn_service.model_process import DEATH_CAUSES, ModelProcess
from rcnn_service.protocol import (decode_image, MODEL_VERSION, OUTPUTS, request_context,
                                   requested_outputs, server_metadata, SERVER_NAME,
                                   server_time_parameters, v2_response)
from rcnn_service.rcnn_detector import calibration_frame, RcnnDetector
from rcnn_service.service import ModelCrashLoop, ServiceConfig
from rcnn_service.service_metrics import ServiceMetrics

LOG = logging.getLogger('adaptive_offload.mlserver')
BUILTIN_ONLY = ('host', 'port', 'request_timeout_s', 'max_connections', 'shutdown_grace_s',
                'tls')
"""ServiceConfig fields MLServer's own settings hold, or that only the builtin server uses."""


@functools.lru_cache(maxsize=1)
def _load_metrics() -> ServiceMetrics:
    """Return the queue metrics on MLServer's registry, made once per process (twice fails)."""
    from prometheus_client import REGISTRY

    return ServiceMetrics(REGISTRY)


def config_from_extra(extra: Mapping[str, Any] | None) -> ServiceConfig:
    """Return a :class:`ServiceConfig` from a model-settings ``parameters.extra`` mapping.

    Raises:
        ConfigError: For unknown keys or values of the wrong type.
    """
    extra = dict(extra or {})
    known = {f.name: f for f in fields(ServiceConfig)}
    unknown = set(extra) - set(known)
    if unknown:
        raise ConfigError(f'unknown runtime settings: {", ".join(sorted(unknown))}')
    defaults = asdict(ServiceConfig())
    for name, value in extra.items():
        want = type(defaults[name])
        if want is tuple and isinstance(value, list):  # from a JSON model-settings file
            extra[name] = value = tuple(value)
        if want is tuple and not all(isinstance(v, str) for v in value):
            raise ConfigError(f'runtime setting {name} must be a list of strings')
        if want is float and isinstance(value, int) and not isinstance(value, bool):
            extra[name] = float(value)
        elif not isinstance(value, want) or isinstance(value, bool) != (want is bool):
            raise ConfigError(f'runtime setting {name} must be {want.__name__}, got {value!r}')
    return ServiceConfig(**extra)


def request_image_bytes(payload: InferenceRequest, config: ServiceConfig,
                        tokens: Tokens | None = None) -> bytes:
    """Check a request (token, input name and type, size) and return its image bytes.

    Raises:
        RequestError: 401 for a missing or wrong token, 413 for an oversize image, 400 for
            anything else that is not one JPEG/PNG ``image`` BYTES input.
    """
    headers = {str(k).lower(): v for k, v in
               ((payload.parameters.headers if payload.parameters else None) or {}).items()}
    if not (tokens or Tokens(config.tokens)).accept(headers.get('authorization')):
        raise RequestError(401, 'missing or wrong bearer token')
    if len(payload.inputs) != 1:
        raise RequestError(400, f'expected exactly one input, got {len(payload.inputs)}')
    tensor = payload.inputs[0]
    datatype = str(getattr(tensor.datatype, 'value', tensor.datatype))
    if tensor.name != 'image' or datatype != 'BYTES':
        raise RequestError(400, f'expected input "image" of datatype BYTES, got '
                                f'{tensor.name!r} {datatype!r}')
    data = list(tensor.data)
    if len(data) != 1 or not isinstance(data[0], (bytes, str)):
        raise RequestError(400, 'expected one image per request')
    raw = data[0]
    if isinstance(raw, str):  # JSON cannot carry bytes: REST clients send base64
        try:
            raw = base64.b64decode(raw, validate=True)
        except (binascii.Error, ValueError) as err:
            raise RequestError(400, f'image is not base64: {err}') from err
    if len(raw) > config.max_request_bytes:
        raise RequestError(413, f'image of {len(raw)} bytes exceeds {config.max_request_bytes}')
    return raw


def load_model(config: ServiceConfig) -> ImageModel:
    """Load the model of ``config``: in this process, or in its own (``model_process``).

    A model process that keeps dying stops the server (SIGTERM to itself), and
    :func:`serve_mlserver` then raises :class:`rcnn_service.service.ModelCrashLoop`.

    Raises:
        AdaptiveOffloadError: If the model does not load.
    """
    if not config.model_process:
        return LocalModel(RcnnDetector(config.arch, config.checkpoint, config.device,
                                       config.score_threshold, config.threads,
                                       config.input_size))

    def give_up(reason: str) -> None:
        _CRASH_LOOP.append(reason)
        os.kill(os.getpid(), signal.SIGTERM)

    process = ModelProcess(config, on_give_up=give_up,
                           on_death=_load_metrics().death_counter(DEATH_CAUSES))
    process.wait_settled()
    if not process.ready:
        process.close()
        raise ConfigError(process.load_error or process.gave_up or
                          'the model process did not start')
    return process


_CRASH_LOOP: list[str] = []
"""Why a model process of this server gave up, if one did."""


class RcnnRuntime(MLModel):
    """MLServer runtime around :class:`rcnn_service.rcnn_detector.RcnnDetector`.

    Its settings are the fields of :class:`ServiceConfig` under ``parameters.extra`` of the
    model settings (host and port fields are ignored: MLServer's own settings hold those).
    """

    async def load(self) -> bool:
        """Build and warm up the detector without blocking the server; then ready."""
        params = self.settings.parameters
        self._config = config_from_extra(params.extra if params else None)
        cfg = self._config
        self._tokens = Tokens(cfg.tokens)
        self._model = await asyncio.get_running_loop().run_in_executor(None, load_model, cfg)
        metrics = _load_metrics()
        batcher = AdaptiveBatcher(self._model.run, cfg.max_batch, cfg.batch_wait_ms,
                                  metrics.batch_size.observe, cfg.max_queue, metrics.refused,
                                  on_offer=metrics.offered.inc,
                                  admission_margin=cfg.admission_margin,
                                  on_busy=metrics.busy.inc)
        await asyncio.get_running_loop().run_in_executor(
            None, batcher.calibrate, calibration_frame())
        self._batcher = batcher
        metrics.watch(lambda: self._batcher.depth, lambda: self._batcher.capacity)
        publish(self.name, SharedModel(cfg, self._model, batcher, metrics.answered,
                                       metrics.refused))
        LOG.info('model %s ready: %s on %s', self.name, cfg.arch, cfg.device)
        return True

    async def unload(self) -> bool:
        """Stop the batching thread after the batch under way; cancel the queued requests.

        MLServer unloads after its servers stopped (``GuardedMLServer.stop``), once their
        graceful shutdown answered what it could: nobody waits for the queue any more.
        """
        withdraw(self.name)

        def close() -> None:
            self._batcher.close(drain=False)
            self._model.close()

        await asyncio.get_running_loop().run_in_executor(None, close)
        return True

    @property
    def ready(self) -> bool:
        """Whether the model is loaded and its batching thread runs (MLServer's readiness)."""
        batcher, model = getattr(self, '_batcher', None), getattr(self, '_model', None)
        return (self.__dict__.get('_loaded', False) and batcher is not None and batcher.alive
                and model is not None and model.ready)

    @ready.setter
    def ready(self, value: bool) -> None:
        self.__dict__['_loaded'] = value  # MLServer sets it after load() and unload()

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        """Detect objects in the request's image.

        Raises:
            Refused: With the HTTP status of a refused request (gRPC maps it).
        """
        start = time.perf_counter()
        try:
            outputs = requested_outputs([o.name for o in payload.outputs or ()], masks=True)
            # Off the event loop: base64 and image decoding would stall every other request
            # and the health probes for as long as they take.
            image = await asyncio.get_running_loop().run_in_executor(
                None, self._decode, payload)
            context = request_context(_parameters(payload))
            if not self._model.ready:  # its process is restarting
                raise self._model.unavailable('the model process is restarting')
            try:
                ticket = self._batcher.submit(image, context.robot, context.budget_s)
            except RuntimeError as err:  # closed while this request was decoded
                raise RequestError(503, 'the service is stopping') from err
        except RequestError as err:
            record_rejection(err.status, '-', err)
            if isinstance(err, Overloaded):
                _load_metrics().refused(err)
                raise OverloadedRefusal(err) from err
            raise Refused(str(err), status_code=err.status) from err
        try:
            dets = await asyncio.wrap_future(ticket.future)
        except Overloaded as err:  # pushed out of the queue, or its budget ran out there
            record_rejection(err.status, '-', err)
            raise OverloadedRefusal(err) from err
        except asyncio.CancelledError as err:
            if not ticket.future.cancelled():  # this request's own task was cancelled
                raise
            # Dropped from the queue at unload: an answer, not a task torn down mid-request.
            raise Refused('the service is stopping', status_code=503) from err
        _load_metrics().answered(ticket.queue_wait_s, ticket.in_budget)
        try:
            response = v2_response(self.name, dets, outputs)
        except RequestError as err:
            record_rejection(err.status, '-', err)
            raise Refused(str(err), status_code=err.status) from err
        response['parameters'] = server_time_parameters(time.perf_counter() - start,
                                                        ticket.queue_wait_s)
        return InferenceResponse.model_validate(response)

    def _decode(self, payload: InferenceRequest) -> np.ndarray:
        cfg = self._config
        return decode_image(request_image_bytes(payload, cfg, self._tokens), cfg.max_image_side)


def _parameters(payload: InferenceRequest) -> dict[str, Any]:
    """Return a request's own parameters (gRPC's typed values arrive as plain ones)."""
    params = payload.parameters
    return dict(params.model_extra or {}) if params is not None else {}


def mlserver_settings(config: ServiceConfig, grpc_port: int, metrics_port: int) -> tuple[Any, Any]:
    """Return the server and model settings that run ``config`` on MLServer.

    Returns:
        ``(Settings, ModelSettings)``; MLServer's parallel workers stay off (the batcher
        needs all requests in one place): ``model_process`` moves the model alone out of the
        server's process instead.
    """
    from mlserver.settings import ModelParameters, ModelSettings, Settings
    from mlserver.types import MetadataTensor

    runtime = {k: v for k, v in asdict(config).items() if k not in BUILTIN_ONLY}
    # debug (MLServer's default) would log a line per call and put tracebacks in 500 replies.
    settings = Settings(host=config.host, http_port=config.port, grpc_port=grpc_port,
                        metrics_port=metrics_port, parallel_workers=0, debug=False,
                        grpc_max_message_length=config.max_request_bytes + (64 << 10),
                        load_models_at_startup=True, server_name=SERVER_NAME,
                        server_version=server_metadata()['version'])
    # Through the settings MLServer passes on to uvicorn: the builtin runtime's HTTP protocol
    # (h11 with a deadline for a request's headers and body and for an idle connection, and
    # 503 beyond max_connections), its backlog and header limit, and on SIGTERM
    # shutdown_grace_s for the requests under way (MLServer's gRPC gets 5 s).
    limits = HttpLimits(config.request_timeout_s, config.max_connections, record_rejection)
    rest: dict[str, Any] = {'http': protocol_class(limits),
                            'h11_max_incomplete_event_size': MAX_HEADER_BYTES,
                            'timeout_keep_alive': max(1, round(config.request_timeout_s)),
                            'limit_concurrency': config.max_connections + 1, 'backlog': 128,
                            'timeout_graceful_shutdown': max(1, round(config.shutdown_grace_s))}
    if config.tls is not None:
        config.tls.server_context()  # a bad pair stops the service here, in one line
        rest.update(ssl_certfile=config.tls.cert, ssl_keyfile=config.tls.key)
    settings._custom_rest_server_settings = rest
    model = ModelSettings(
        name=config.model_name, implementation=RcnnRuntime, platform='pytorch',
        versions=[MODEL_VERSION],
        parameters=ModelParameters(version=MODEL_VERSION, extra=runtime),
        inputs=[MetadataTensor(name='image', datatype='BYTES', shape=[1])],
        outputs=[MetadataTensor(name=n, datatype=t, shape=s) for n, t, s in OUTPUTS])
    return settings, model


def serve_mlserver(config: ServiceConfig, grpc_port: int = 8081, metrics_port: int = 8082,
                   announce: Callable[[str], Any] = print) -> None:
    """Run the service on MLServer until SIGINT or SIGTERM (MLServer handles both).

    Args:
        config: Settings; ``port`` is the REST port.
        grpc_port: gRPC port.
        metrics_port: Port of ``/metrics``.
        announce: Called with one line saying where the service listens.

    Raises:
        ConfigError: If a port is not free.
    """
    ensure_ports_free(config.host, {'--port': config.port, '--grpc-port': grpc_port,
                                    '--metrics-port': metrics_port})
    settings, model = mlserver_settings(config, grpc_port, metrics_port)

    async def main() -> None:
        # installs its signal handlers on the running loop
        guard = ServerGuard(Tokens(config.tokens), config.max_request_bytes)
        server = TailServingMLServer(settings, guard, config.model_name, config.tls)
        rest, grpc = ('https', 'grpcs') if config.tls else ('http', 'grpc')
        announce(f'serving {config.arch} ({config.device}) as model {config.model_name!r} on '
                 f'MLServer: REST {rest}://{config.host}:{config.port}, gRPC '
                 f'{grpc}://{config.host}:{grpc_port} (split tail: model '
                 f'{tail_model_name(config.model_name)!r} over REST), metrics '
                 f'http://{config.host}:{metrics_port}/metrics')
        await server.start([model, tail_model_settings(config)])

    asyncio.run(main())
    if _CRASH_LOOP:
        raise ModelCrashLoop(f'{_CRASH_LOOP[-1]}: the service stopped')
