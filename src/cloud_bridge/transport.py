"""Clients of the Open Inference Protocol (KServe V2), so any V2 server can be the cloud."""

from __future__ import annotations

import base64
import functools
import http.client
import json
from pathlib import Path
import socket
import ssl
import threading
import time
from typing import Any, Callable, Mapping
from urllib.parse import SplitResult, urlsplit

from adaptive_offload.errors import CloudError, ConfigError
from adaptive_offload.inference_transport import CloudReply, InferenceTransport
from cloud_bridge.request_budget import overloaded, RequestBudget
from cloud_bridge.v2_replies import consistent, parse_v2_reply, refusal
import numpy as np


_STALE = (BrokenPipeError, ConnectionResetError, ConnectionAbortedError,
          http.client.RemoteDisconnected)
"""How a request on a kept-alive connection the server has closed fails."""


class V2RestTransport:
    """V2 REST client: the image goes base64-encoded in a BYTES tensor named ``image``.

    The reply must hold ``boxes`` (FP32, Nx4), ``scores`` (FP32, N) and ``labels`` (BYTES, N).
    Thread-safe: each request borrows a persistent connection from a pool (one per request in
    flight); a connection that failed is closed instead of returned.

    Args:
        url: Server base URL, ``http://host:port`` or ``https://host:port``.
        model: Model name on the server.
        token: Bearer token; empty sends none.
        ca_file: PEM file of the CA(s) that sign an https server's certificate; empty trusts
            the system's CAs.
        robot_id: Id sent with every request (the service's fair turns); empty: none.

    Raises:
        ConfigError: For a URL that is not http(s) with a host, or has a bad port; for a CA
            file that does not load, or one given with plain http.
    """

    def __init__(self, url: str, model: str, token: str = '', ca_file: str = '',
                 robot_id: str = '') -> None:
        self._budget = RequestBudget(robot_id)
        parts = urlsplit(url)
        host = parts.hostname
        if parts.scheme not in ('http', 'https') or not host:
            raise ConfigError(f'cloud URL {url!r} must be http://host:port or https://...')
        port = _port(url, parts)
        self._connect: Callable[..., http.client.HTTPConnection] = http.client.HTTPConnection
        if parts.scheme == 'https':
            self._connect = functools.partial(http.client.HTTPSConnection,
                                              context=_client_context(ca_file))
        elif ca_file:
            raise ConfigError(f'a CA file is for https:// URLs, not {url!r}')
        self._host, self._port = host, port
        self._model_path = f'{parts.path.rstrip("/")}/v2/models/{model}'
        self._path = f'{self._model_path}/infer'
        self._headers = {'Content-Type': 'application/json'}
        if token:
            self._headers['Authorization'] = f'Bearer {token}'
        self._idle: list[http.client.HTTPConnection] = []
        self._lock = threading.Lock()

    def _connection(self, timeout_s: float) -> tuple[http.client.HTTPConnection, bool]:
        """Return a connection from the pool (and True) or a new one (and False)."""
        with self._lock:
            conn = self._idle.pop() if self._idle else None
        reused = conn is not None and conn.sock is not None
        if conn is None:
            conn = self._connect(self._host, self._port, timeout=timeout_s)
        conn.timeout = timeout_s
        if conn.sock is not None:
            conn.sock.settimeout(timeout_s)
        return conn, reused

    def infer(self, image: bytes, timeout_s: float) -> CloudReply:
        """See :class:`InferenceTransport`."""
        if timeout_s <= 0:
            raise CloudError('timeout', 'no time left before the deadline')
        body = json.dumps({'parameters': self.request_parameters(timeout_s), 'inputs': [{
            'name': 'image', 'shape': [1], 'datatype': 'BYTES',
            'parameters': {'content_type': 'base64'},
            'data': [base64.b64encode(image).decode('ascii')]}]}).encode()
        return self.post(body, timeout_s)

    def request_parameters(self, timeout_s: float) -> dict[str, Any]:
        """Return the V2 request parameters (robot id, budget) of a request of ``timeout_s``."""
        return self._budget.parameters(timeout_s)

    def post(self, body: bytes, timeout_s: float,
             headers: Mapping[str, str] | None = None) -> CloudReply:
        """Send one V2 inference request body to the model and read the detections back.

        Args:
            body: The request body (its parameters from :meth:`request_parameters`).
            timeout_s: Time left for the whole exchange.
            headers: More HTTP headers; they replace the defaults of the same name.

        Raises:
            CloudError: As :meth:`infer`.
        """
        if timeout_s <= 0:
            raise CloudError('timeout', 'no time left before the deadline')
        sent_headers = {**self._headers, **(headers or {})}
        deadline = time.perf_counter() + timeout_s
        while True:
            start = time.perf_counter()
            conn, reused = self._connection(deadline - start)
            sent = 0
            try:
                conn.request('POST', self._path, body, sent_headers)
                sent = len(body)
                response = conn.getresponse()
                payload = response.read()
                break
            except (socket.timeout, TimeoutError) as err:
                conn.close()
                raise CloudError('timeout', str(err), sent) from err
            except ssl.SSLError as err:  # before OSError: a certificate problem, not the link
                conn.close()
                raise CloudError('tls', str(err), sent) from err
            except (OSError, http.client.HTTPException) as err:
                early = _early_response(conn) if conn.sock is not None and sent == 0 else None
                if early is not None:
                    response, payload = early
                    break
                conn.close()
                # Servers close kept-alive connections left idle (uvicorn after 5 s, the
                # builtin runtime after 10 s); a request on one fails before the server read
                # it, so it goes again, on another connection. Its bytes are not charged: the
                # write mostly fails at once, and they would distort the rate estimate.
                if reused and isinstance(err, _STALE) and time.perf_counter() < deadline:
                    continue
                raise CloudError('connection', str(err) or type(err).__name__, sent) from err
        elapsed_ms = (time.perf_counter() - start) * 1e3
        if conn.sock is not None:
            with self._lock:
                self._idle.append(conn)
        if response.status != 200:
            raise refusal(response, payload, sent)
        try:
            boxes, scores, labels, server_ms, queue_ms = parse_v2_reply(payload)
        except CloudError as err:
            err.bytes_sent = sent
            raise
        self._budget.observe(elapsed_ms, server_ms)
        return CloudReply(boxes, scores, labels, elapsed_ms, len(body), server_ms, queue_ms)

    def metadata(self, timeout_s: float) -> dict[str, Any]:
        """Return the model's V2 metadata, as ``GET /v2/models/<model>`` answers it.

        Raises:
            CloudError: ``timeout``, ``connection``, ``tls``, ``http_<code>`` or
                ``bad_reply`` (not a JSON object).
        """
        if timeout_s <= 0:
            raise CloudError('timeout', 'no time left before the deadline')
        conn, _ = self._connection(timeout_s)
        try:
            conn.request('GET', self._model_path, headers=self._headers)
            response = conn.getresponse()
            payload = response.read()
        except (socket.timeout, TimeoutError) as err:
            conn.close()
            raise CloudError('timeout', str(err)) from err
        except ssl.SSLError as err:
            conn.close()
            raise CloudError('tls', str(err)) from err
        except (OSError, http.client.HTTPException) as err:
            conn.close()
            raise CloudError('connection', str(err) or type(err).__name__) from err
        with self._lock:
            self._idle.append(conn)
        if response.status != 200:
            raise refusal(response, payload, 0)
        try:
            meta = json.loads(payload)
        except ValueError as err:
            raise CloudError('bad_reply', f'model metadata is not JSON: {err}') from err
        if not isinstance(meta, dict):
            raise CloudError('bad_reply', 'model metadata is not a JSON object')
        return meta

    def close(self) -> None:
        """See :class:`InferenceTransport`."""
        with self._lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()


def _early_response(conn: http.client.HTTPConnection
                    ) -> tuple[http.client.HTTPResponse, bytes] | None:
    """Read the answer a server sent before it read the whole body, if it sent one.

    A server refusing a request on its headers (401, 413) answers and closes without reading
    the body, so writing the rest fails with a broken pipe or a reset. Its answer is already
    in the receive buffer, and it says why, which the write error does not.
    """
    try:
        response = conn.getresponse()
        return response, response.read()
    except (OSError, http.client.HTTPException):
        conn.close()
        return None


class V2GrpcTransport:
    """V2 gRPC client (KServe ``inference.GRPCInferenceService``, as Triton and MLServer serve).

    The image goes as raw bytes in a BYTES tensor named ``image``; replies as for
    :class:`V2RestTransport`, with the server time in the ``server_us`` parameter. After a
    connection failure the channel is rebuilt, so a returning server is used at the next
    request instead of after gRPC's reconnect backoff (up to two minutes by default).

    Args:
        url: ``grpc://host:port``, or ``grpcs://host:port`` for TLS.
        model: Model name on the server.
        token: Bearer token sent as ``authorization`` metadata; empty sends none.
        ca_file: PEM file of the CA(s) that sign a grpcs server's certificate; empty trusts
            the system's CAs.
        robot_id: Id sent with every request (the service's fair turns); empty: none.

    Raises:
        ConfigError: For a URL without host and port, or with a bad port; for a CA file that
            does not load, or one given with plain grpc.
    """

    def __init__(self, url: str, model: str, token: str = '', ca_file: str = '',
                 robot_id: str = '') -> None:
        import grpc

        self._budget = RequestBudget(robot_id)
        parts = urlsplit(url)
        port = _port(url, parts)
        if parts.scheme not in ('grpc', 'grpcs') or not parts.hostname or not port:
            raise ConfigError(f'cloud URL {url!r} must be grpc://host:port or grpcs://...')
        self._target = f'{parts.hostname}:{port}'
        self._credentials = None
        if parts.scheme == 'grpcs':
            _client_context(ca_file)  # the same check, the same error, as https
            self._credentials = grpc.ssl_channel_credentials(
                Path(ca_file).read_bytes() if ca_file else None)
        elif ca_file:
            raise ConfigError(f'a CA file is for grpcs:// URLs, not {url!r}')
        self._model = model
        self._headers = {'authorization': f'Bearer {token}'} if token else None
        self._client: Any = None
        self._lock = threading.Lock()

    def infer(self, image: bytes, timeout_s: float) -> CloudReply:
        """See :class:`InferenceTransport`."""
        import tritonclient.grpc as grpcclient
        from tritonclient.utils import InferenceServerException

        if timeout_s <= 0:
            raise CloudError('timeout', 'no time left before the deadline')
        with self._lock:
            if self._client is None:
                self._client = grpcclient.InferenceServerClient(self._target,
                                                                creds=self._credentials)
            client = self._client
        tensor = grpcclient.InferInput('image', [1], 'BYTES')
        tensor.set_data_from_numpy(np.array([image], dtype=object))
        start = time.perf_counter()
        try:
            result = client.infer(self._model, [tensor], client_timeout=timeout_s,
                                  headers=self._headers,
                                  parameters=self._budget.parameters(timeout_s))
        except InferenceServerException as err:
            code = str(err.status() or '').rsplit('.', 1)[-1]
            if code == 'RESOURCE_EXHAUSTED' and 'overloaded' in (err.message() or ''):
                raise overloaded(err.message(), len(image)) from err
            if code in ('UNAVAILABLE', 'CANCELLED', ''):
                self._discard(client)
            reason = {'DEADLINE_EXCEEDED': 'timeout', 'UNAVAILABLE': 'connection',
                      'CANCELLED': 'connection'}.get(
                code, f'grpc_{code.lower() or "error"}')
            # Only an unreachable server never got the request.
            sent = 0 if reason == 'connection' else len(image)
            raise CloudError(reason, err.message() or code, sent) from err
        elapsed_ms = (time.perf_counter() - start) * 1e3
        outputs = [result.as_numpy(name) for name in ('boxes', 'scores', 'labels')]
        if any(o is None for o in outputs):
            raise CloudError('bad_reply', 'reply lacks boxes, scores or labels', len(image))
        try:
            boxes = outputs[0].astype(np.float64).reshape(-1, 4)
            scores = outputs[1].astype(np.float64).reshape(-1)
            labels = tuple(v.decode(errors='replace') if isinstance(v, bytes) else str(v)
                           for v in outputs[2].reshape(-1))
        except (ValueError, TypeError) as err:
            raise CloudError('bad_reply', f'not a detection reply: {err}') from err
        parameters = result.get_response().parameters
        server_ms, queue_ms = (parameters[k].int64_param / 1e3 if k in parameters else None
                               for k in ('server_us', 'queue_us'))
        self._budget.observe(elapsed_ms, server_ms)
        return CloudReply(*consistent(boxes, scores, labels), elapsed_ms, len(image),
                          server_ms, queue_ms)

    def _discard(self, client: Any) -> None:
        with self._lock:
            if self._client is client:  # another request may have replaced it already
                self._client = None
        client.close()

    def close(self) -> None:
        """See :class:`InferenceTransport`."""
        with self._lock:
            client, self._client = self._client, None
        if client is not None:
            client.close()


TRANSPORTS: dict[str, Callable[..., InferenceTransport]] = {
    'grpc': V2GrpcTransport,
    'grpcs': V2GrpcTransport,
    'http': V2RestTransport,
    'https': V2RestTransport,
}
"""Transports by URL scheme: ``grpc(s)://host:port`` (default) or ``http(s)://host:port``."""


def _client_context(ca_file: str) -> ssl.SSLContext:
    """Return a TLS client context that verifies the server against ``ca_file``.

    Raises:
        ConfigError: If the file is missing or holds no usable certificate.
    """
    if ca_file and not Path(ca_file).is_file():
        raise ConfigError(f'CA file {ca_file!r} not found')
    try:
        return ssl.create_default_context(cafile=ca_file or None)
    except (ssl.SSLError, ValueError) as err:
        raise ConfigError(f'CA file {ca_file!r} does not load: {err}') from err


def _port(url: str, parts: SplitResult) -> int | None:
    """Return the port of a URL split into ``parts``, None when it has none.

    Raises:
        ConfigError: For a port that is no number or out of range (urllib's ValueError would
            otherwise surface on the first request).
    """
    try:
        return parts.port
    except ValueError as err:
        raise ConfigError(f'cloud URL {url!r}: bad port ({err})') from err


def make_transport(url: str, model: str, token: str = '', ca_file: str = '',
                   robot_id: str = '') -> InferenceTransport:
    """Return the transport for ``url``'s scheme.

    Args:
        url: The service: ``grpc://``, ``grpcs://``, ``http://`` or ``https://host:port``.
        model: Model name on the server.
        token: Bearer token; empty sends none.
        ca_file: CA file that verifies a TLS server; empty trusts the system's CAs.
        robot_id: Id sent with every request; empty sends none.

    Raises:
        ConfigError: For a scheme no transport speaks, or a bad URL or CA file.
    """
    scheme = urlsplit(url).scheme
    if scheme not in TRANSPORTS:
        raise ConfigError(f'cloud URL {url!r}: scheme must be one of '
                          f'{", ".join(s + "://" for s in TRANSPORTS)}')
    return TRANSPORTS[scheme](url, model, token, ca_file, robot_id)
