"""Fuzzing the builtin server on loopback: malformed requests get a 4xx, never a 5xx or a hang.

Each example is one connection that sends a damaged request and closes its sending side; the
server must answer (4xx) or close within a bounded time, and answer liveness afterwards.
Budget: a share of the profile's (test/fuzzing.py), as each example is a round trip.
"""

from __future__ import annotations

import base64
import json
import re
import socket
import threading
import time
from typing import Iterator

from attack_kit import statuses
from fuzzing import budget, damaged_images, encoded_images
from hypothesis import given, strategies as st
import numpy as np
import pytest
from rcnn_service.rcnn_detector import Detections, RcnnDetector
from rcnn_service.service import InferenceService, ServiceConfig

TOKEN = 'fuzz-token'
WAIT_S = 10.0  # far above the request timeout: reaching it means the server hung


class _EmptyDetector(RcnnDetector):
    """Finds nothing, at once: these tests are about the server, not the model."""

    def __init__(self) -> None:
        pass  # no torch model

    def detect(self, images: list[np.ndarray]) -> list[Detections]:
        return [Detections(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), ())
                for _ in images]


@pytest.fixture(scope='module')
def port() -> Iterator[int]:
    service = InferenceService(ServiceConfig(port=0, tokens=(TOKEN,), request_timeout_s=1.0,
                                             max_request_bytes=4096, max_image_side=32),
                               _EmptyDetector())
    threading.Thread(target=service.serve_forever, daemon=True).start()
    yield int(service.url.rsplit(':', 1)[1])
    service.shutdown()


def _body(image: bytes) -> bytes:
    return json.dumps({'inputs': [{'name': 'image', 'datatype': 'BYTES', 'shape': [1],
                                   'data': [base64.b64encode(image).decode()]}]}).encode()


def _request(body: bytes, method: str = 'POST', path: str = '/v2/models/rcnn/infer',
             headers: tuple[str, ...] = ()) -> bytes:
    head = [f'{method} {path} HTTP/1.1', 'Host: rcnn', f'Authorization: Bearer {TOKEN}',
            'Content-Type: application/json', f'Content-Length: {len(body)}', *headers]
    return '\r\n'.join(head).encode('latin-1') + b'\r\n\r\n' + body


def _replace_header(request: bytes, name: bytes, line: bytes) -> bytes:
    head, _, body = request.partition(b'\r\n\r\n')
    lines = [ln for ln in head.split(b'\r\n') if not ln.lower().startswith(name.lower() + b':')]
    return b'\r\n'.join([*lines, *([line] if line else [])]) + b'\r\n\r\n' + body


JSON = st.recursive(st.none() | st.integers() | st.text(max_size=6),
                    lambda inner: st.lists(inner, max_size=3) |
                    st.dictionaries(st.text(max_size=6), inner, max_size=3), max_leaves=8)
LATIN1 = st.text(st.characters(codec='latin-1', exclude_characters='\r\n'), max_size=30)


@st.composite
def malformed(draw: st.DrawFn) -> tuple[str, bytes]:
    """Draw (kind, raw bytes) of a valid inference request with one thing wrong."""
    image = draw(encoded_images(16))
    valid = _request(_body(image))
    kind = draw(st.sampled_from(('image', 'json', 'binary', 'length', 'transfer', 'encoding',
                                 'token', 'path', 'method', 'header', 'flip', 'garbage')))
    if kind == 'image':  # a damaged image (or one over the size limit) in a valid request
        return kind, _request(_body(draw(damaged_images(48))))
    if kind == 'json':
        return kind, _request(json.dumps(draw(JSON)).encode())
    if kind == 'binary':
        return kind, _request(draw(st.binary(max_size=300)))
    if kind == 'length':
        value = draw(st.sampled_from(('-1', '1e3', '0x10', '+5', '', ' ', '99999999999999999999',
                                      '5000', '10, 20')) | LATIN1)
        return kind, _replace_header(valid, b'Content-Length',
                                     f'Content-Length: {value}'.encode('latin-1'))
    if kind == 'transfer':
        coding = draw(st.sampled_from(('chunked', 'gzip, chunked', 'identity')) | LATIN1)
        return kind, _request(_body(image), headers=(f'Transfer-Encoding: {coding}',))
    if kind == 'encoding':
        coding = draw(st.sampled_from(('gzip', 'br', 'deflate', 'identity, gzip')))
        return kind, _request(_body(image), headers=(f'Content-Encoding: {coding}',))
    if kind == 'token':
        auth = draw(st.sampled_from(('', 'Bearer', 'Basic Zm9v', f'Bearer {TOKEN}x')) | LATIN1)
        line = f'Authorization: {auth}'.encode('latin-1') if draw(st.booleans()) else b''
        return kind, _replace_header(valid, b'Authorization', line)
    if kind == 'path':
        path = '/' + draw(st.text(st.characters(codec='ascii', exclude_characters=' \r\n'),
                                  max_size=40))
        return kind, _request(_body(image), path=path)
    if kind == 'method':
        method = draw(st.sampled_from(('PUT', 'DELETE', 'PATCH', 'OPTIONS', 'HEAD', 'GET',
                                       'CONNECT', 'TRACE', 'post')))
        return kind, _request(_body(image), method=method)
    if kind == 'header':  # arbitrary header lines, possibly harmless
        lines = draw(st.lists(st.tuples(LATIN1, LATIN1), min_size=1, max_size=4))
        return kind, _request(_body(image), headers=tuple(f'{n}: {v}' for n, v in lines))
    if kind == 'flip':  # bytes of the request line and headers damaged, possibly harmless
        data = bytearray(valid)
        end = valid.index(b'\r\n\r\n')
        for pos in draw(st.lists(st.integers(0, end - 1), min_size=1, max_size=4)):
            data[pos] = draw(st.integers(0, 255))
        return kind, bytes(data)
    return kind, draw(st.binary(min_size=1, max_size=300))


def _exchange(port: int, data: bytes) -> tuple[bytes, bool]:
    """Send a request; return what came back and whether the exchange ended.

    It ends when the server closes or a whole response has come. A request whose headers are
    incomplete is followed by the end of the sending side (the client gives up); a whole one
    is not, since the server (uvicorn) takes a half-closed connection for a client that left
    and answers nobody. A server refusing early (413, 400) closes with the body unread, which
    resets the connection: the send or the shutdown may fail then, and the answer still counts.
    """
    received = b''
    deadline = time.monotonic() + WAIT_S
    with socket.create_connection(('127.0.0.1', port), timeout=WAIT_S) as sock:
        try:
            sock.sendall(data)
            if not _whole_head(data):
                sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        while time.monotonic() < deadline:
            sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                part = sock.recv(65536)
            except TimeoutError:
                return received, False
            except OSError:
                return received, True
            if not part:
                return received, True
            received += part
            if _whole_response(received):
                return received, True
    return received, False


def _whole_head(data: bytes) -> bool:
    return b'\r\n\r\n' in data or b'\n\n' in data


def _whole_response(received: bytes) -> bool:
    head, sep, body = received.partition(b'\r\n\r\n')
    if not sep:
        return False
    match = re.search(rb'(?im)^content-length:\s*(\d+)\s*$', head)
    return match is not None and len(body) >= int(match.group(1))


MAYBE_VALID = {'header', 'flip'}  # the damage may leave a request the service accepts


def _live(port: int) -> bool:
    got, _ = _exchange(port, b'GET /v2/health/live HTTP/1.1\r\nHost: rcnn\r\n\r\n')
    return statuses(got) == [200]


@budget(0.5)
@given(malformed())
def test_malformed_requests_get_a_4xx_and_the_service_lives_on(
        port: int, case: tuple[str, bytes]) -> None:
    kind, data = case
    got, closed = _exchange(port, data)
    assert closed, f'{kind}: the server neither answered nor closed in {WAIT_S} s'
    codes = statuses(got)
    assert all(code < 500 for code in codes), (kind, got[:300])
    blank_first_line = not data.split(b'\n', 1)[0].strip()
    # A blank line is no request, and a client that gave up mid-headers may get no answer.
    if kind not in MAYBE_VALID and not blank_first_line and _whole_head(data):
        # a damaged image may well decode (a flipped pixel byte): such an answer is a 200
        assert codes and (all(400 <= c < 500 for c in codes) or kind == 'image'), \
            (kind, got[:300])
    assert _live(port)


def test_deeply_nested_json_gets_a_400_not_a_500(port: int) -> None:
    """Found by fuzzing: json's RecursionError escaped decoding and was answered 500."""
    got, _ = _exchange(port, _request(b'[' * 4000))
    assert statuses(got) == [400]
