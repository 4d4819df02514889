"""The cloud detection service: torchvision R-CNN behind the Open Inference Protocol (V2 REST).

Speaks the subset of KServe V2 REST that ``cloud_bridge`` uses, so the bridge works the same
against this service, Triton or KServe: health and readiness, model metadata, inference with a
base64 ``image`` BYTES input, Prometheus metrics. Client data is only ever decoded as an image.
"""

from __future__ import annotations

import base64
import binascii
from collections import Counter
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
import json
import logging
import re
import socket
import threading
import time
from typing import Any

from adaptive_offload.errors import AdaptiveOffloadError
import cv2
import numpy as np
from rcnn_service.batching import AdaptiveBatcher
from rcnn_service.rcnn_detector import Detections, RcnnDetector

LOG = logging.getLogger('adaptive_offload.service')
_INFER = re.compile(r'^/v2/models/([^/]+)(?:/versions/[^/]+)?/infer$')
_MODEL = re.compile(r'^/v2/models/([^/]+)(?:/versions/[^/]+)?(/ready)?$')


@dataclass(frozen=True)
class ServiceConfig:
    """How the service runs.

    Attributes:
        arch: R-CNN architecture (see ``rcnn_service.rcnn_detector.ARCHITECTURES``).
        checkpoint: state_dict path; empty: random weights.
        device: ``cpu`` or ``cuda[:N]``.
        host: Bind address (loopback by default; 0.0.0.0 in a container).
        port: HTTP port; 0 picks a free one.
        model_name: Name in the V2 paths.
        token: Bearer token required from clients; empty: none.
        max_request_bytes: Larger request bodies are refused (413).
        max_image_side: Images with a longer side are refused (400).
        score_threshold: Detections below it are not returned.
        threads: torch intra-op threads; 0 keeps torch's default.
        max_batch: Largest batch of requests run together (adaptive batching).
        batch_wait_ms: How long a lone request waits for others (0: never).
    """

    arch: str = 'fasterrcnn_mobilenet_v3_large_fpn'
    checkpoint: str = ''
    device: str = 'cpu'
    host: str = '127.0.0.1'
    port: int = 8080
    model_name: str = 'rcnn'
    token: str = ''
    max_request_bytes: int = 8 << 20
    max_image_side: int = 4096
    score_threshold: float = 0.5
    threads: int = 0
    max_batch: int = 4
    batch_wait_ms: float = 0.0


class RequestError(AdaptiveOffloadError):
    """A request the service refuses, with its HTTP status."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class InferenceService:
    """The model and an HTTP server; the model loads in the background (not ready until warm).

    Args:
        config: Settings.
        detector: A ready detector (tests); None loads ``config.arch`` in the background.
    """

    def __init__(self, config: ServiceConfig, detector: RcnnDetector | None = None) -> None:
        self.config = config
        self._batcher: AdaptiveBatcher[np.ndarray, Detections] | None = None
        self.load_error = ''
        self.counts: Counter[str] = Counter()
        self._infer_seconds = 0.0
        self._lock = threading.Lock()
        self.connections: set[socket.socket] = set()
        self._server = ThreadingHTTPServer((config.host, config.port), _handler(self))
        # Request threads are joined on shutdown: one left inside torch when the interpreter
        # exits aborts the process ("terminate called without an active exception").
        self._server.daemon_threads = False
        self._server.block_on_close = True
        if detector is None:
            threading.Thread(target=self._load, name='model-load', daemon=True).start()
        else:
            self._use(detector)

    @property
    def url(self) -> str:
        """Base URL the service listens on."""
        # The socket's own address: server_address is typed for any bind() argument (a bytes
        # host too), though the server sets it from getsockname(), which gives a str.
        host, port = self._server.socket.getsockname()[:2]
        return f'http://{host}:{port}'

    @property
    def ready(self) -> bool:
        """Whether the model is loaded and warmed up."""
        return self._batcher is not None

    def _use(self, detector: RcnnDetector) -> None:
        self._batcher = AdaptiveBatcher(detector.detect, self.config.max_batch,
                                        self.config.batch_wait_ms)

    def _load(self) -> None:
        cfg = self.config
        try:
            self._use(RcnnDetector(cfg.arch, cfg.checkpoint, cfg.device,
                                   cfg.score_threshold, cfg.threads))
        except AdaptiveOffloadError as err:
            self.load_error = str(err)
            LOG.error('model failed to load: %s', err)

    def serve_forever(self) -> None:
        """Handle requests until :meth:`shutdown`."""
        self._server.serve_forever(poll_interval=0.2)

    def shutdown(self) -> None:
        """Stop serving, close every connection and wait for requests under way.

        Kept-alive client connections are cut too, so clients see the service gone at once,
        as they would if the process died, instead of being served by lingering threads. Call
        it from another thread than :meth:`serve_forever`.
        """
        self._server.shutdown()
        with self._lock:
            open_now = list(self.connections)
        for sock in open_now:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass  # already closed by the client
        self._server.server_close()  # joins the request threads, now that their sockets end
        if self._batcher is not None:
            self._batcher.close()

    def track(self, sock: socket.socket, alive: bool) -> None:
        """Note a client connection opening or closing (see :meth:`shutdown`)."""
        with self._lock:
            if alive:
                self.connections.add(sock)
            else:
                self.connections.discard(sock)

    def count(self, key: str, seconds: float = 0.0) -> None:
        """Count a request outcome (and its inference time)."""
        with self._lock:
            self.counts[key] += 1
            self._infer_seconds += seconds

    def metrics(self) -> str:
        """Prometheus text exposition of the counters."""
        with self._lock:
            lines = ['# TYPE adaptive_offload_requests_total counter']
            lines += [f'adaptive_offload_requests_total{{outcome="{k}"}} {v}'
                      for k, v in sorted(self.counts.items())]
            lines += ['# TYPE adaptive_offload_inference_seconds_total counter',
                      f'adaptive_offload_inference_seconds_total {self._infer_seconds:.6f}',
                      '# TYPE adaptive_offload_model_ready gauge',
                      f'adaptive_offload_model_ready {int(self.ready)}']
        return '\n'.join(lines) + '\n'

    def infer(self, body: bytes) -> dict[str, Any]:
        """Run one V2 inference request body.

        Raises:
            RequestError: 400 for malformed requests or images, 503 while not ready.
        """
        if self._batcher is None:
            raise RequestError(503, 'model not ready')
        image = decode_request(body, self.config.max_image_side)
        start = time.perf_counter()
        dets = self._batcher.submit(image).result()
        seconds = time.perf_counter() - start
        self.count('ok', seconds)
        response = v2_response(self.config.model_name, dets)
        response['parameters'] = server_time_parameters(seconds)
        return response


def decode_request(body: bytes, max_side: int) -> np.ndarray:
    """Decode the image of a V2 request with one base64 ``image`` BYTES input.

    Raises:
        RequestError: 400 naming what is wrong.
    """
    try:
        inputs = json.loads(body)['inputs']
    except (ValueError, KeyError, TypeError) as err:
        raise RequestError(400, f'not a V2 inference request: {err}') from err
    if not isinstance(inputs, list) or len(inputs) != 1 or not isinstance(inputs[0], dict):
        raise RequestError(400, 'expected exactly one input')
    tensor = inputs[0]
    if tensor.get('name') != 'image' or tensor.get('datatype') != 'BYTES':
        raise RequestError(400, 'expected input "image" of datatype BYTES, got '
                                f'{tensor.get("name")!r} {tensor.get("datatype")!r}')
    data = tensor.get('data')
    if not isinstance(data, list) or len(data) != 1 or not isinstance(data[0], str):
        raise RequestError(400, 'expected one base64 image per request')
    try:
        raw = base64.b64decode(data[0], validate=True)
    except (binascii.Error, ValueError) as err:
        raise RequestError(400, f'image is not base64: {err}') from err
    return decode_image(raw, max_side)


def decode_image(raw: bytes, max_side: int) -> np.ndarray:
    """Decode JPEG or PNG bytes from a client into a BGR image (never anything else).

    Raises:
        RequestError: 400 if the bytes are no image or the image is larger than ``max_side``.
    """
    image = cv2.imdecode(np.frombuffer(raw, np.uint8), cv2.IMREAD_COLOR) if raw else None
    if image is None:
        raise RequestError(400, 'image is not a decodable JPEG or PNG')
    if max(image.shape[:2]) > max_side:
        raise RequestError(400, f'image {image.shape[1]}x{image.shape[0]} exceeds '
                                f'{max_side} px')
    return image


def v2_response(model: str, dets: Detections) -> dict[str, Any]:
    """Build a V2 response of ``boxes``, ``scores``, ``labels`` (PNG ``masks`` for Mask R-CNN)."""
    n = len(dets.labels)
    outputs = [
        {'name': 'boxes', 'shape': [n, 4], 'datatype': 'FP32',
         'data': dets.boxes.reshape(-1).tolist()},
        {'name': 'scores', 'shape': [n], 'datatype': 'FP32', 'data': dets.scores.tolist()},
        {'name': 'labels', 'shape': [n], 'datatype': 'BYTES', 'data': list(dets.labels)},
    ]
    if dets.masks is not None:
        pngs = [base64.b64encode(cv2.imencode('.png', m * 255)[1].tobytes()).decode()
                for m in dets.masks]
        outputs.append({'name': 'masks', 'shape': [n], 'datatype': 'BYTES', 'data': pngs,
                        'parameters': {'content_type': 'base64', 'encoding': 'png'}})
    return {'model_name': model, 'outputs': outputs}


def server_time_parameters(seconds: float) -> dict[str, int]:
    """Response parameters carrying the server time, from which clients estimate bandwidth.

    Integer microseconds: the V2 gRPC mapping has no float parameter type, so a float would be
    dropped on the way (MLServer does).
    """
    return {'server_us': round(seconds * 1e6)}


def _handler(service: InferenceService) -> type[BaseHTTPRequestHandler]:
    cfg = service.config

    class Handler(BaseHTTPRequestHandler):
        protocol_version = 'HTTP/1.1'  # keep-alive: the bridge reuses its connection
        # Headers and body go out in two writes; with Nagle on, the body would wait for the
        # client's delayed ACK (40 ms on Linux loopback) on every reply.
        disable_nagle_algorithm = True

        def setup(self) -> None:
            super().setup()
            service.track(self.request, alive=True)

        def finish(self) -> None:
            service.track(self.request, alive=False)
            super().finish()

        def _send(self, status: int, body: Any, content_type: str = 'application/json') -> None:
            payload = body.encode() if isinstance(body, str) else json.dumps(body).encode()
            self.send_response(status)
            self.send_header('Content-Type', content_type)
            self.send_header('Content-Length', str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            if self.path == '/v2/health/live':
                self._send(200, {'live': True})
            elif self.path == '/v2/health/ready':
                self._send(200 if service.ready else 503, {'ready': service.ready})
            elif self.path == '/metrics':
                self._send(200, service.metrics(), 'text/plain; version=0.0.4')
            elif (match := _MODEL.match(self.path)) and match.group(1) == cfg.model_name:
                if match.group(2):
                    self._send(200 if service.ready else 503, {'ready': service.ready})
                else:
                    self._send(200, {'name': cfg.model_name, 'platform': 'pytorch',
                                     'versions': ['1'], 'inputs': [
                                         {'name': 'image', 'datatype': 'BYTES', 'shape': [1]}],
                                     'outputs': [{'name': n, 'datatype': t, 'shape': s}
                                                 for n, t, s in (('boxes', 'FP32', [-1, 4]),
                                                                 ('scores', 'FP32', [-1]),
                                                                 ('labels', 'BYTES', [-1]))]})
            else:
                self._send(404, {'error': f'no route {self.path}'})

        def do_POST(self) -> None:  # noqa: N802 - http.server's naming
            match = _INFER.match(self.path)
            self.close_connection = True  # until the body is read, the stream is not reusable
            try:
                if cfg.token and self.headers.get('Authorization') != f'Bearer {cfg.token}':
                    raise RequestError(401, 'missing or wrong bearer token')
                if not match or match.group(1) != cfg.model_name:
                    raise RequestError(404, f'no model route {self.path}')
                length = int(self.headers.get('Content-Length') or 0)
                if length > cfg.max_request_bytes:
                    raise RequestError(413, f'request of {length} bytes exceeds '
                                            f'{cfg.max_request_bytes}')
                body = self.rfile.read(length)
                self.close_connection = False
                status, reply = 200, service.infer(body)
            except RequestError as err:
                service.count(f'rejected_{err.status}')
                LOG.warning('rejected %s from %s: %s', err.status, self.client_address[0], err)
                status, reply = err.status, {'error': str(err)}
            except OSError:
                return  # the client went away, or the service is stopping and cut it
            except Exception as err:  # a failing model must answer, not drop the connection
                service.count('error_500')
                LOG.exception('inference failed')
                status, reply = 500, {'error': f'inference failed: {err}'}
            try:
                self._send(status, reply)
            except OSError:
                self.close_connection = True  # the client is gone; nothing to tell it

        def log_message(self, fmt: str, *args: Any) -> None:
            LOG.debug(fmt, *args)

    return Handler


def serve(config: ServiceConfig, announce: Any = print) -> None:
    """Run the service until SIGINT or SIGTERM; the model loads while it already listens.

    Args:
        config: Settings.
        announce: Called with one line saying where the service listens.
    """
    import signal

    service = InferenceService(config)

    def stop(signum: int, _frame: Any) -> None:
        threading.Thread(target=service.shutdown, name='shutdown').start()

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        announce(f'serving {config.arch} ({config.device}) as model {config.model_name!r} on '
                 f'{service.url}: POST /v2/models/{config.model_name}/infer, '
                 'GET /v2/health/ready, GET /metrics')
        service.serve_forever()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
