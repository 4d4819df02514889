"""Clients of the Open Inference Protocol (KServe V2), so any V2 server can be the cloud."""

from __future__ import annotations

import base64
import http.client
import json
import socket
import time
from dataclasses import dataclass
from typing import Callable, Protocol
from urllib.parse import urlsplit

import numpy as np

from adaptive_offload.errors import CloudError, ConfigError


@dataclass(frozen=True)
class CloudReply:
    """Detections returned by the service, in pixels of the image that was sent.

    Attributes:
        boxes: Nx4 float array, x1 y1 x2 y2.
        scores: N confidences.
        labels: N class names.
        request_ms: Round trip measured by the client.
        bytes_sent: Request body size.
        server_ms: Server-side time when the server reports it (``parameters.server_ms``).
    """

    boxes: np.ndarray
    scores: np.ndarray
    labels: tuple[str, ...]
    request_ms: float
    bytes_sent: int
    server_ms: float | None = None


class InferenceTransport(Protocol):
    """Sends one encoded image to the service."""

    def infer(self, image: bytes, timeout_s: float) -> CloudReply:
        """Run inference on JPEG/PNG bytes within ``timeout_s``.

        Raises:
            CloudError: With reason ``timeout``, ``connection``, ``http_<code>`` or
                ``bad_reply``.
        """

    def close(self) -> None:
        """Release connections."""


class V2RestTransport:
    """V2 REST client: the image goes base64-encoded in a BYTES tensor named ``image``.

    The reply must hold ``boxes`` (FP32, Nx4), ``scores`` (FP32, N) and ``labels`` (BYTES, N).
    One persistent HTTP connection is kept and reopened after any failure.

    Args:
        url: Server base URL, ``http://host:port``.
        model: Model name on the server.
        token: Bearer token; empty sends none.
    """

    def __init__(self, url: str, model: str, token: str = '') -> None:
        parts = urlsplit(url)
        if parts.scheme not in ('http', 'https') or not parts.hostname:
            raise ConfigError(f'cloud URL {url!r} must be http://host:port or https://...')
        self._parts = parts
        self._path = f'{parts.path.rstrip("/")}/v2/models/{model}/infer'
        self._headers = {'Content-Type': 'application/json'}
        if token:
            self._headers['Authorization'] = f'Bearer {token}'
        self._conn: http.client.HTTPConnection | None = None

    def _connection(self, timeout_s: float) -> http.client.HTTPConnection:
        if self._conn is None:
            kind = http.client.HTTPSConnection if self._parts.scheme == 'https' \
                else http.client.HTTPConnection
            self._conn = kind(self._parts.hostname, self._parts.port, timeout=timeout_s)
        self._conn.timeout = timeout_s
        if self._conn.sock is not None:
            self._conn.sock.settimeout(timeout_s)
        return self._conn

    def infer(self, image: bytes, timeout_s: float) -> CloudReply:
        """See :class:`InferenceTransport`."""
        if timeout_s <= 0:
            raise CloudError('timeout', 'no time left before the deadline')
        body = json.dumps({'inputs': [{
            'name': 'image', 'shape': [1], 'datatype': 'BYTES',
            'parameters': {'content_type': 'base64'},
            'data': [base64.b64encode(image).decode('ascii')]}]}).encode()
        start = time.perf_counter()
        try:
            conn = self._connection(timeout_s)
            conn.request('POST', self._path, body, self._headers)
            response = conn.getresponse()
            payload = response.read()
        except (socket.timeout, TimeoutError) as err:
            self.close()
            raise CloudError('timeout', str(err)) from err
        except (OSError, http.client.HTTPException) as err:
            self.close()
            raise CloudError('connection', str(err) or type(err).__name__) from err
        elapsed_ms = (time.perf_counter() - start) * 1e3
        if response.status != 200:
            raise CloudError(f'http_{response.status}', payload[:200].decode(errors='replace'))
        boxes, scores, labels, server_ms = parse_v2_reply(payload)
        return CloudReply(boxes, scores, labels, elapsed_ms, len(body), server_ms)

    def close(self) -> None:
        """See :class:`InferenceTransport`."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def parse_v2_reply(payload: bytes) -> tuple[np.ndarray, np.ndarray, tuple[str, ...],
                                            float | None]:
    """Read boxes, scores, labels and the optional server time from a V2 JSON response.

    Raises:
        CloudError: ``bad_reply`` if the payload is not such a response or is inconsistent.
    """
    try:
        body = json.loads(payload)
        outputs = {o['name']: o for o in body['outputs']}
        server_ms = (body.get('parameters') or {}).get('server_ms')
        server_ms = None if server_ms is None else float(server_ms)
        boxes = np.asarray(outputs['boxes']['data'], dtype=np.float64).reshape(-1, 4)
        scores = np.asarray(outputs['scores']['data'], dtype=np.float64).reshape(-1)
        labels = tuple(str(v) for v in outputs['labels']['data'])
    except (ValueError, KeyError, TypeError) as err:
        raise CloudError('bad_reply', f'not a V2 detection response: {err}') from err
    if not len(boxes) == len(scores) == len(labels) or not np.isfinite(boxes).all() or \
            not np.isfinite(scores).all():
        raise CloudError('bad_reply', 'boxes, scores and labels disagree or are not finite')
    return boxes, scores, labels, server_ms


TRANSPORTS: dict[str, Callable[[str, str, str], InferenceTransport]] = {
    'rest': V2RestTransport,
}
