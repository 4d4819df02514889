"""The cloud detection service: torchvision R-CNN behind the Open Inference Protocol (V2 REST).

Speaks the subset of KServe V2 REST that ``cloud_bridge`` uses, so the bridge works the same
against this service, Triton or KServe: health and readiness, model metadata, inference with a
base64 ``image`` BYTES input, Prometheus metrics. Client data is only ever decoded as an image.
Who may call what, and the limits checked before any work, are in :mod:`rcnn_service.guard`;
the routes are :mod:`rcnn_service.asgi_app`, the HTTP server (uvicorn) is
:mod:`rcnn_service.http_server`. Next to the image model it serves the tail of the same model
(``<model>-tail``, :mod:`rcnn_service.split_tail`) to robots that ran its head.
"""

from __future__ import annotations

from collections import Counter
from concurrent.futures import CancelledError, ThreadPoolExecutor, wait
import logging
import threading
import time
from typing import Any, Callable

from adaptive_offload.errors import AdaptiveOffloadError, ConfigError
from adaptive_offload.heap import frozen_start_up
from adaptive_offload.split_wire import tail_model_name
from prometheus_client import CollectorRegistry
from rcnn_service.asgi_app import make_app
from rcnn_service.batching import AdaptiveBatcher
from rcnn_service.bottleneck import load_bottleneck
from rcnn_service.fair_queue import Ticket
from rcnn_service.guard import Overloaded, RejectionLog, RequestError, Tokens
from rcnn_service.http_server import ensure_ports_free, HttpLimits, HttpServer
from rcnn_service.image_model import ImageModel, LocalModel
from rcnn_service.middle_part import MiddlePart, Upstream
from rcnn_service.model_process import DEATH_CAUSES, ModelProcess
from rcnn_service.protocol import (parse_request, RequestContext, server_time_parameters,
                                   v2_response)
from rcnn_service.rcnn_detector import calibration_frame, Detections, RcnnDetector
from rcnn_service.service_config import ServiceConfig
from rcnn_service.service_metrics import exposition, ServiceMetrics
from rcnn_service.split_tail import ModelInput, TailChecks
from rcnn_service.tls import report_failed_handshakes

__all__ = ['InferenceService', 'ModelCrashLoop', 'serve', 'ServiceConfig']

LOG = logging.getLogger('adaptive_offload.service')
_WORKERS = 64
"""Requests decoded or waiting for the model at once; more wait for a thread."""
_SETTLE_S = 3600.0
"""Longest wait for a model process's first start (a first CUDA start can take minutes)."""


class ModelCrashLoop(AdaptiveOffloadError):
    """The model's process kept dying: the service stopped (the command exits with 2)."""


class InferenceService:
    """The model and an HTTP server; the model loads in the background (not ready until warm).

    Args:
        config: Settings; with ``model_process`` the model runs in a process of its own.
        detector: A ready detector (tests); None loads ``config.arch`` in the background.
        model: A ready model of either kind (instead of ``detector``).
        upstream: The cloud's tail, to which three-tier requests are forwarded
            (:mod:`rcnn_service.middle_part`); None: this service forwards nothing.

    Attributes:
        crash_loop: Why the service stopped itself (its model process kept dying); empty
            otherwise.
    """

    def __init__(self, config: ServiceConfig, detector: RcnnDetector | None = None,
                 model: ImageModel | None = None, upstream: Upstream | None = None) -> None:
        if upstream is not None and config.model_process:
            raise ConfigError('a service with an upstream runs its model in the serving process, '
                              'where the middle part runs: drop model_process')
        self.config = config
        self.upstream = upstream
        self.middle: MiddlePart | None = None  # set with the model, with an upstream
        self._batcher: AdaptiveBatcher[ModelInput, Detections] | None = None
        self.model: ImageModel | None = None
        self.tail: TailChecks | None = None  # set with the model, if it splits
        self.crash_loop = ''
        self.stopper: threading.Thread | None = None  # the shutdown a crash loop started
        self.tail_name = tail_model_name(config.model_name)
        self.load_error = ''
        self.counts: Counter[str] = Counter()
        self.tail_counts: Counter[str] = Counter()
        self._infer_seconds = 0.0
        self._lock = threading.Lock()
        self.under_way = 0  # requests in infer: decoded, or waiting for the model
        self.stopping = False
        self.tokens = Tokens(config.tokens)
        self._registry = CollectorRegistry()
        self.load = ServiceMetrics(self._registry)
        self.load.watch(lambda: self._batcher.depth if self._batcher else 0,
                        lambda: self._batcher.capacity if self._batcher else 0.0)
        self._rejections = RejectionLog(LOG)
        # Requests wait for the model in these threads (one each), never on the event loop.
        self._executor = ThreadPoolExecutor(_WORKERS, thread_name_prefix='request')
        tls = config.tls.server_context() if config.tls else None
        if tls is not None:
            report_failed_handshakes(tls, lambda reason: self.reject('tls', '?', reason))
        self._server = HttpServer(
            make_app(self, self._executor), (config.host, config.port),
            HttpLimits(config.request_timeout_s, config.max_connections, self.reject), tls)
        if model is not None or detector is not None:
            self._use(model or LocalModel(detector))
        else:
            threading.Thread(target=self._load, name='model-load', daemon=True).start()

    @property
    def url(self) -> str:
        """Base URL the service listens on."""
        host, port = self._server.socket.getsockname()[:2]
        return f'{"https" if self.config.tls else "http"}://{host}:{port}'

    @property
    def ready(self) -> bool:
        """Whether the model is loaded, warm, batching, and its process not restarting."""
        model = self.model
        return (self._batcher is not None and self._batcher.alive and model is not None
                and model.ready)

    def _use(self, model: ImageModel) -> None:
        cfg = self.config
        if cfg.bottleneck:  # checked against the model before anything serves
            if model.tail is None:
                raise ConfigError(f'{cfg.arch} does not split: no tail to take the '
                                  f'bottleneck {cfg.bottleneck!r}')
            model.tail.use_bottleneck(load_bottleneck(cfg.bottleneck))
        batcher: AdaptiveBatcher[ModelInput, Detections] = AdaptiveBatcher(
            model.run, cfg.max_batch, cfg.batch_wait_ms,
            self.load.batch_size.observe, cfg.max_queue, self.load.refused,
            on_offer=self.load.offered.inc, admission_margin=cfg.admission_margin,
            on_busy=self.load.busy.inc)
        self.model = model
        batcher.calibrate(calibration_frame())
        self.tail = model.tail
        split_tail = getattr(model, 'split_tail', None)
        if self.upstream is not None and split_tail is not None:
            self.middle = MiddlePart(split_tail, self.upstream, max(1, cfg.max_batch),
                                     cfg.request_timeout_s)
        self._batcher = batcher
        if self.stopping:  # shut down while it loaded: nobody else closes it
            batcher.close(timeout_s=0.0, drain=False)
            model.close()

    def _load(self) -> None:
        cfg = self.config
        try:
            if cfg.model_process:
                self._use(self._model_process())
            else:
                self._use(LocalModel(RcnnDetector(cfg.arch, cfg.checkpoint, cfg.device,
                                                  cfg.score_threshold, cfg.threads,
                                                  cfg.input_size)))
        except AdaptiveOffloadError as err:
            self.load_error = str(err)
            LOG.error('model failed to load: %s', err)

    def _model_process(self) -> ImageModel:
        """Start the model's process; return it once it is ready (raise if it never is)."""
        process = ModelProcess(self.config, on_give_up=self._give_up,
                               on_death=self.load.death_counter(DEATH_CAUSES))
        self.model = process  # closed by shutdown, even while it starts
        process.wait_settled(_SETTLE_S)
        if not process.ready:
            process.close()
            raise AdaptiveOffloadError(process.load_error or process.gave_up or
                                       'the model process did not start')
        return process

    def _give_up(self, reason: str) -> None:
        """Stop the service: its model process keeps dying (a crash loop must not look alive)."""
        self.crash_loop = reason
        self.stopper = threading.Thread(target=self.shutdown, name='shutdown', daemon=True)
        self.stopper.start()

    @property
    def connections(self) -> int:
        """Client connections open now."""
        return self._server.connections

    def serve_forever(self) -> None:
        """Handle requests until :meth:`shutdown`."""
        self._server.serve_forever()

    def shutdown(self, grace_s: float = 0.0) -> None:
        """Stop serving, letting requests under way finish for up to ``grace_s``.

        New connections are refused and idle ones closed at once; requests answered within
        the grace period get ``Connection: close``. After it the requests still queued for the
        model are dropped (none is computed for a client that is gone), the ones still under
        way answered 503 and every connection left is cut. With no grace, clients see the
        service gone at once, as they would if the process died. Call it from another thread
        than :meth:`serve_forever`.

        Args:
            grace_s: How long requests under way may take to finish.
        """
        self.stopping = True
        if self._server.stop(grace_s):
            self._server.wait(grace_s)
        if self._batcher is not None:
            self._batcher.close(timeout_s=0.0, drain=False)  # cancel the queue, do not wait
        self._server.wait()
        if self._batcher is not None:
            self._batcher.close()  # joins the worker once the batch under way is done
        if self.model is not None:
            self.model.close()  # stops the model's process: none is left behind
        self._executor.shutdown(wait=True, cancel_futures=True)
        if self.upstream is not None:
            self.upstream.close()

    def reject(self, status: int | str, peer: str, reason: object) -> None:
        """Count and log (rate-limited, one line) a refused request.

        A load refusal is counted, not logged: under load it is how the service works, and
        ``adaptive_offload_refusals_total`` says how often, for which robot and why.
        """
        self.count(f'rejected_{status}')
        if not isinstance(reason, Overloaded):
            self._rejections(status, peer, reason)

    def count(self, key: str, seconds: float = 0.0) -> None:
        """Count a request outcome (and its inference time)."""
        with self._lock:
            self.counts[key] += 1
            self._infer_seconds += seconds

    def count_tail(self, key: str) -> None:
        """Count the outcome of a request to the tail model (counted by :meth:`count` too)."""
        with self._lock:
            self.tail_counts[key] += 1

    def metrics(self) -> str:
        """Prometheus text exposition of the counters."""
        with self._lock:
            lines = ['# TYPE adaptive_offload_requests_total counter']
            lines += [f'adaptive_offload_requests_total{{outcome="{k}"}} {v}'
                      for k, v in sorted(self.counts.items())]
            lines += ['# TYPE adaptive_offload_inference_seconds_total counter',
                      f'adaptive_offload_inference_seconds_total {self._infer_seconds:.6f}',
                      '# TYPE adaptive_offload_model_ready gauge',
                      f'adaptive_offload_model_ready {int(self.ready)}',
                      '# TYPE adaptive_offload_tail_requests_total counter']
            lines += [f'adaptive_offload_tail_requests_total{{outcome="{k}"}} {v}'
                      for k, v in sorted(self.tail_counts.items())]
        return '\n'.join(lines) + '\n' + exposition(self._registry)

    def infer(self, body: bytes,
              client_gone: Callable[[], bool] = lambda: False) -> dict[str, Any]:
        """Run one V2 inference request body.

        Args:
            body: The request body.
            client_gone: Whether the client has closed its connection; a request whose client
                left while it waited for the model is dropped, not computed.

        Raises:
            RequestError: 400 for malformed requests or images, 503 while not ready or
                stopping, 499 when the client left.
        """
        def work(batcher: AdaptiveBatcher[ModelInput, Detections]) -> dict[str, Any]:
            request = parse_request(body, self.config.max_image_side)
            dets, ticket, seconds = self._compute(batcher, request.image, request.context,
                                                  client_gone)
            return self._reply(self.config.model_name, dets, request.outputs,
                               request.request_id, ticket, seconds)

        return self._under_way(work, client_gone)

    def infer_tail(self, body: bytes, header_length: int | None,
                   client_gone: Callable[[], bool] = lambda: False) -> dict[str, Any]:
        """Run one request to the tail model: a head's tensors, in the V2 binary extension.

        Args:
            body: The request body: JSON header, then the tensors' bytes.
            header_length: The ``Inference-Header-Content-Length`` header; None when absent.
            client_gone: As for :meth:`infer`.

        Raises:
            RequestError: 400 for malformed requests (naming the problem), 404 when the model
                does not split, 503 while not ready or stopping, 499 when the client left.
        """
        def work(batcher: AdaptiveBatcher[ModelInput, Detections]) -> dict[str, Any]:
            if self.tail is None:
                raise RequestError(404, f'model {self.config.arch} does not split: no '
                                        f'{self.tail_name}')
            request = self.tail.read(body, header_length, self.config.max_tail_bytes,
                                     self.config.max_image_side)
            if request.forward is not None:
                if self.middle is None:
                    raise RequestError(400, 'this service forwards to no cloud (it was started '
                                            'without an upstream): send no forward_to')
                dets, seconds, wait_s = self.middle.run(request)
                self.count('ok', seconds)
                return {**v2_response(self.tail_name, dets, request.outputs, request.request_id),
                        'parameters': server_time_parameters(seconds, wait_s)}
            dets, ticket, seconds = self._compute(batcher, request.job, request.context,
                                                  client_gone)
            return self._reply(self.tail_name, dets, request.outputs, request.request_id,
                               ticket, seconds)

        return self._under_way(work, client_gone)

    def _under_way(self, work: Callable[[AdaptiveBatcher[ModelInput, Detections]], Any],
                   client_gone: Callable[[], bool]) -> dict[str, Any]:
        """Run ``work`` on the batcher, counted as under way (refused when not ready)."""
        with self._lock:
            self.under_way += 1
        try:
            batcher, model = self._batcher, self.model
            if batcher is None or not batcher.alive or model is None:
                raise RequestError(503, 'model not ready')
            if not model.ready:  # its process is restarting: come back later
                raise model.unavailable('the model process is restarting')
            if client_gone():  # it waited for a thread: nothing is decoded for nobody
                raise RequestError(499, 'the client left before its request ran')
            reply: dict[str, Any] = work(batcher)
            return reply
        finally:
            with self._lock:
                self.under_way -= 1

    def _compute(self, batcher: AdaptiveBatcher[ModelInput, Detections], item: ModelInput,
                 context: RequestContext, client_gone: Callable[[], bool]
                 ) -> tuple[Detections, Ticket[ModelInput, Detections], float]:
        """Queue ``item`` for the model and wait for its detections (admission may refuse)."""
        start = time.perf_counter()
        try:
            ticket = batcher.submit(item, context.robot, context.budget_s)
        except RuntimeError as err:  # closed while this request was decoded
            raise RequestError(503, 'the service is stopping') from err
        except Overloaded as err:
            self.load.refused(err)
            raise
        future = ticket.future
        while not wait([future], timeout=0.1).done:
            if client_gone() and future.cancel():
                raise RequestError(499, 'the client left before its request ran')
        try:
            dets = future.result()
        except CancelledError as err:
            raise RequestError(503, 'the service is stopping') from err
        return dets, ticket, time.perf_counter() - start

    def _reply(self, model: str, dets: Detections, outputs: tuple[str, ...] | None,
               request_id: str, ticket: Ticket[ModelInput, Detections],
               seconds: float) -> dict[str, Any]:
        self.count('ok', seconds)
        self.load.answered(ticket.queue_wait_s, ticket.in_budget)
        response = v2_response(model, dets, outputs, request_id)
        response['parameters'] = server_time_parameters(seconds, ticket.queue_wait_s)
        return response


def serve(config: ServiceConfig, announce: Any = print, upstream: Upstream | None = None) -> None:
    """Run the service until SIGINT or SIGTERM; the model loads while it already listens.

    Args:
        config: Settings.
        announce: Called with one line saying where the service listens.
        upstream: The cloud's tail, for a middle device (see :class:`InferenceService`).

    Raises:
        ConfigError: If the port is not free.
    """
    import signal

    ensure_ports_free(config.host, {'--port': config.port})
    service = InferenceService(config, upstream=upstream)
    stopping: list[threading.Thread] = []

    def stop(signum: int, _frame: Any) -> None:
        if not stopping:  # a second signal changes nothing: the grace period is bounded
            stopping.append(threading.Thread(target=service.shutdown, name='shutdown',
                                             args=(config.shutdown_grace_s,)))
            stopping[0].start()

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        where = f'{config.device}, own process' if config.model_process else config.device
        announce(f'serving {config.arch} ({where}) as model {config.model_name!r} on '
                 f'{service.url}: POST /v2/models/{config.model_name}/infer, '
                 f'POST /v2/models/{service.tail_name}/infer (split tail), '
                 'GET /v2/health/ready, GET /metrics'
                 + (f'; forwarding three-tier requests to {getattr(upstream, "url", "")}'
                    if upstream is not None else ''))
        with frozen_start_up():
            service.serve_forever()
        for thread in stopping:
            thread.join()
        if service.stopper is not None:
            service.stopper.join()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if service.crash_loop:
        raise ModelCrashLoop(f'{service.crash_loop}: the service stopped')
