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
"""

from __future__ import annotations

import asyncio
import base64
import binascii
from dataclasses import asdict, fields
import functools
import logging
import time
from typing import Any, Callable, Mapping

from adaptive_offload.errors import ConfigError
from mlserver import MLModel
from mlserver.errors import MLServerError
from mlserver.types import InferenceRequest, InferenceResponse
from rcnn_service.batching import AdaptiveBatcher
from rcnn_service.rcnn_detector import RcnnDetector
from rcnn_service.service import (decode_image, RequestError, server_time_parameters,
                                  ServiceConfig, v2_response)

LOG = logging.getLogger('adaptive_offload.mlserver')


@functools.lru_cache(maxsize=1)
def _metrics() -> tuple[Any, Any]:
    """Return the runtime's Prometheus metrics, made once per process (twice fails)."""
    from prometheus_client import Counter, Histogram

    return (Counter('adaptive_offload_rejected_requests', 'Requests the runtime refused',
                    ['status']),
            Histogram('adaptive_offload_batch_size', 'Requests per model batch',
                      buckets=(1, 2, 3, 4, 6, 8, 12, 16, 32)))


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
        if want is float and isinstance(value, int) and not isinstance(value, bool):
            extra[name] = float(value)
        elif not isinstance(value, want) or isinstance(value, bool) != (want is bool):
            raise ConfigError(f'runtime setting {name} must be {want.__name__}, got {value!r}')
    return ServiceConfig(**extra)


def request_image_bytes(payload: InferenceRequest, config: ServiceConfig) -> bytes:
    """Check a request (token, input name and type, size) and return its image bytes.

    Raises:
        RequestError: 401 for a missing or wrong token, 413 for an oversize image, 400 for
            anything else that is not one JPEG/PNG ``image`` BYTES input.
    """
    headers = {str(k).lower(): v for k, v in
               ((payload.parameters.headers if payload.parameters else None) or {}).items()}
    if config.token and headers.get('authorization') != f'Bearer {config.token}':
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
        detector = await asyncio.get_running_loop().run_in_executor(None, lambda: RcnnDetector(
            cfg.arch, cfg.checkpoint, cfg.device, cfg.score_threshold, cfg.threads))
        self._batcher = AdaptiveBatcher(detector.detect, cfg.max_batch, cfg.batch_wait_ms,
                                        _metrics()[1].observe)
        LOG.info('model %s ready: %s on %s', self.name, cfg.arch, cfg.device)
        return True

    async def unload(self) -> bool:
        """Finish queued requests and stop the batching thread."""
        await asyncio.get_running_loop().run_in_executor(None, self._batcher.close)
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        """Detect objects in the request's image.

        Raises:
            MLServerError: With the HTTP status of a refused request (gRPC maps it).
        """
        start = time.perf_counter()
        try:
            image = decode_image(request_image_bytes(payload, self._config),
                                 self._config.max_image_side)
        except RequestError as err:
            _metrics()[0].labels(str(err.status)).inc()
            LOG.warning('rejected %s: %s', err.status, err)
            raise MLServerError(str(err), status_code=err.status) from err
        dets = await asyncio.wrap_future(self._batcher.submit(image))
        response = v2_response(self.name, dets)
        response['parameters'] = server_time_parameters(time.perf_counter() - start)
        return InferenceResponse.model_validate(response)


def mlserver_settings(config: ServiceConfig, grpc_port: int, metrics_port: int) -> tuple[Any, Any]:
    """Return the server and model settings that run ``config`` on MLServer.

    Returns:
        ``(Settings, ModelSettings)``; the model runs in the server process (no parallel
        workers: torch already uses every core, and the batcher needs all requests in one
        place).
    """
    from mlserver.settings import ModelParameters, ModelSettings, Settings
    from mlserver.types import MetadataTensor

    runtime = {k: v for k, v in asdict(config).items() if k not in ('host', 'port')}
    settings = Settings(host=config.host, http_port=config.port, grpc_port=grpc_port,
                        metrics_port=metrics_port, parallel_workers=0,
                        grpc_max_message_length=config.max_request_bytes + (64 << 10),
                        load_models_at_startup=True)
    model = ModelSettings(
        name=config.model_name, implementation=RcnnRuntime, platform='pytorch',
        parameters=ModelParameters(extra=runtime),
        inputs=[MetadataTensor(name='image', datatype='BYTES', shape=[1])],
        outputs=[MetadataTensor(name=n, datatype=t, shape=s) for n, t, s in (
            ('boxes', 'FP32', [-1, 4]), ('scores', 'FP32', [-1]), ('labels', 'BYTES', [-1]))])
    return settings, model


def serve_mlserver(config: ServiceConfig, grpc_port: int = 8081, metrics_port: int = 8082,
                   announce: Callable[[str], Any] = print) -> None:
    """Run the service on MLServer until SIGINT or SIGTERM (MLServer handles both).

    Args:
        config: Settings; ``port`` is the REST port.
        grpc_port: gRPC port.
        metrics_port: Port of ``/metrics``.
        announce: Called with one line saying where the service listens.
    """
    from mlserver import MLServer

    settings, model = mlserver_settings(config, grpc_port, metrics_port)

    async def main() -> None:
        server = MLServer(settings)  # installs its signal handlers on the running loop
        announce(f'serving {config.arch} ({config.device}) as model {config.model_name!r} on '
                 f'MLServer: REST http://{config.host}:{config.port}, gRPC '
                 f'{config.host}:{grpc_port}, metrics http://{config.host}:{metrics_port}'
                 '/metrics')
        await server.start([model])

    asyncio.run(main())
