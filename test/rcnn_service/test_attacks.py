"""The attacks of issue 13 against the real service on loopback, both runtimes.

Each server runs as ``adaptive-offload serve`` in a child process with a token from the
environment, so its memory is measured alone. Payloads are smaller than the issue's (a 64 MiB
gzip bomb, a 12000x12000 PNG): enough to cost hundreds of MB before the guard, quick to make.
Bounds on time are generous, only to keep a regression from hanging the suite;
benchmarks/bench_attacks.py prints the figures.
"""

from __future__ import annotations

import base64
import json
from typing import Any, Iterator

from attack_kit import (gzip_bomb, http, measure, png_bomb, raw_exchange, rest_live,
                        ServedProcess, statuses, TOKEN)
from cloud_bridge.transport import V2RestTransport
import cv2
import numpy as np
import pytest

MAX_GROWTH_MB = 100  # the decoded 12000x12000 PNG alone is 412 MB
RUNTIMES = ['builtin', 'mlserver']


@pytest.fixture(scope='module', params=RUNTIMES)
def server(request: pytest.FixtureRequest) -> Iterator[ServedProcess]:
    srv = ServedProcess(request.param, ('--max-request-bytes', '2000000'))
    yield srv
    srv.stop()


def _jpeg() -> bytes:
    image = np.random.default_rng(0).integers(0, 255, (120, 160, 3), np.uint8)
    return cv2.imencode('.jpg', image)[1].tobytes()


def _infer_body(image: bytes) -> bytes:
    return json.dumps({'inputs': [{'name': 'image', 'datatype': 'BYTES', 'shape': [1],
                                   'data': [base64.b64encode(image).decode()]}]}).encode()


def _serves(srv: ServedProcess) -> bool:
    reply = V2RestTransport(srv.url, 'rcnn', TOKEN).infer(_jpeg(), timeout_s=60)
    return len(reply.labels) == len(reply.scores)


def test_nobody_unloads_the_model_and_readiness_stays_true(server: ServedProcess) -> None:
    unload = f'{server.url}/v2/repository/models/rcnn/unload'
    assert http('POST', unload)[0] == 401
    assert http('POST', unload, token='wrong')[0] == 401
    assert http('POST', unload, token=TOKEN)[0] == 403  # disabled, even with the token
    assert http('POST', f'{server.url}/v2/repository/index', b'{}', TOKEN)[0] == 403
    assert http('GET', f'{server.url}/v2/health/ready')[0] == 200
    assert _serves(server)


def test_metadata_needs_the_token_and_probes_do_not(server: ServedProcess) -> None:
    meta = f'{server.url}/v2/models/rcnn'
    assert http('GET', meta)[0] == 401
    code, body = http('GET', meta, token=TOKEN)
    assert code == 200 and json.loads(body)['name'] == 'rcnn'
    for path in ('/v2/health/live', '/v2/health/ready', '/v2/models/rcnn/ready'):
        assert http('GET', server.url + path)[0] == 200, path


@pytest.mark.parametrize('token, status', [(None, 401), (TOKEN, 415)])
def test_a_gzip_bomb_is_refused_unopened(server: ServedProcess, token: str | None,
                                         status: int) -> None:
    bomb = gzip_bomb(64 << 20)
    cost = measure(server, lambda: http(
        'POST', f'{server.url}/v2/models/rcnn/infer', bomb, token,
        {'Content-Encoding': 'gzip', 'Content-Type': 'application/json'})[0])
    assert cost.outcome == status
    assert cost.growth_mb < MAX_GROWTH_MB and cost.live_failures == 0
    assert cost.seconds < 5 and cost.live_worst_ms < 2000  # generous: a busy machine


def test_a_png_bomb_is_refused_from_its_header(server: ServedProcess) -> None:
    body = _infer_body(png_bomb(12000, 12000))  # 420 KB declaring 412 MB of pixels
    cost = measure(server, lambda: http('POST', f'{server.url}/v2/models/rcnn/infer', body,
                                        TOKEN, {'Content-Type': 'application/json'}))
    status, reply = cost.outcome
    assert status == 400 and b'12000x12000 exceeds 4096' in reply
    assert cost.growth_mb < MAX_GROWTH_MB and cost.live_failures == 0
    assert cost.seconds < 5 and cost.live_worst_ms < 2000
    assert _serves(server)


_INFER = b'POST /v2/models/rcnn/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n' \
    b'Authorization: Bearer ' + TOKEN.encode() + b'\r\n'  # past the token, as the issue's


@pytest.mark.parametrize('head', [
    b'Content-Length: -1\r\n',
    b'Content-Length: abc\r\n',
    b'Content-Length: 5\r\nContent-Length: 7\r\n',
])
def test_a_bad_content_length_is_a_400_at_once(server: ServedProcess, head: bytes) -> None:
    """The body is never waited for: -1 used to read until the client closed."""
    got, closed = raw_exchange(server.rest, _INFER + head + b'\r\n{"inputs": [', 10.0)
    assert statuses(got) == [400] and closed


def test_a_request_smuggled_in_a_chunked_body_is_never_run(server: ServedProcess) -> None:
    """TE.CL: a front end framing by Content-Length would pass the GET on as body."""
    smuggled = b'GET /v2/models/rcnn HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ' + \
        TOKEN.encode() + b'\r\n\r\n'
    chunked = b'0\r\n\r\n' + smuggled
    head = b'Transfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n'
    got, closed = raw_exchange(server.rest, _INFER + head + chunked, 10.0)
    assert statuses(got) == [400] and closed  # one answer, then the connection is gone


def test_a_chunked_body_is_refused_before_it_is_read(server: ServedProcess) -> None:
    """Bodies need Content-Length (the guard's rule, both runtimes): 411, connection closed."""
    smuggled = b'GET /v2/models/rcnn HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ' + \
        TOKEN.encode() + b'\r\n\r\n'
    chunked = b'5\r\n{"a":\r\n0\r\n\r\n' + smuggled
    got, closed = raw_exchange(server.rest, _INFER + b'Transfer-Encoding: chunked\r\n\r\n' +
                               chunked, 10.0)
    assert statuses(got) == [411] and closed  # the request after the body never runs


def test_a_get_with_a_body_does_not_smuggle_a_request(server: ServedProcess) -> None:
    smuggled = b'POST /v2/repository/models/rcnn/unload HTTP/1.1\r\nHost: x\r\n\r\n'
    data = b'GET /v2/health/live HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s' % (
        len(smuggled), smuggled)
    got, _ = raw_exchange(server.rest, data, 10.0, keep_open=False)
    assert len(statuses(got)) == 1  # the body is never parsed as a second request


def test_an_oversize_body_is_refused_before_it_is_sent(server: ServedProcess) -> None:
    head = _INFER + b'Content-Length: 1000000000\r\n\r\n'
    got, closed = raw_exchange(server.rest, head, 10.0)
    assert statuses(got) == [413] and closed


def test_grpc_refusals_have_their_codes_and_log_one_line_each() -> None:
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    srv = ServedProcess('mlserver', ('--max-request-bytes', '200000'))
    try:
        client = grpcclient.InferenceServerClient(f'127.0.0.1:{srv.grpc}')
        auth = {'authorization': f'Bearer {TOKEN}'}

        def code(call: Any) -> str:
            try:
                call()
            except InferenceServerException as err:
                return str(err.status()).rsplit('.', 1)[-1]
            return 'OK'

        def infer(data: bytes, headers: dict[str, str] | None = auth, model: str = 'rcnn',
                  **kwargs: Any) -> Any:
            tensor = grpcclient.InferInput('image', [1], 'BYTES')
            tensor.set_data_from_numpy(np.array([data], dtype=object))
            return lambda: client.infer(model, [tensor], headers=headers, **kwargs)

        codes = {
            'no token': code(infer(_jpeg(), None)),
            'wrong token': code(infer(_jpeg(), {'authorization': 'Bearer nope'})),
            'oversize': code(infer(b'\xff\xd8' + bytes(200_000))),
            'bad image': code(infer(b'not an image')),
            'png bomb': code(infer(png_bomb(6000, 6000))),  # 105 KB, under the limit
            'unknown model': code(infer(_jpeg(), model='nope')),
            'model ready, unknown': code(lambda: client.is_model_ready('nope')),
            'metadata, no token': code(lambda: client.get_model_metadata('rcnn')),
            'unload, no token': code(lambda: client.unload_model('rcnn')),
            'unload': code(lambda: client.unload_model('rcnn', headers=auth)),
            'gzip bomb': code(infer(bytes(64 << 20), compression_algorithm='gzip')),
            'ok': code(infer(_jpeg())),
        }
        assert codes == {
            'no token': 'UNAUTHENTICATED', 'wrong token': 'UNAUTHENTICATED',
            'oversize': 'RESOURCE_EXHAUSTED', 'bad image': 'INVALID_ARGUMENT',
            'png bomb': 'INVALID_ARGUMENT', 'unknown model': 'NOT_FOUND',
            'model ready, unknown': 'NOT_FOUND', 'metadata, no token': 'UNAUTHENTICATED',
            'unload, no token': 'UNAUTHENTICATED', 'unload': 'PERMISSION_DENIED',
            'gzip bomb': 'RESOURCE_EXHAUSTED', 'ok': 'OK'}
        assert client.is_server_ready() and client.is_model_ready('rcnn')
        client.close()
        log = srv.log_text()
        assert 'Traceback' not in log
        assert log.count('rejected ') == 10  # the gzip bomb never reaches the service's code
    finally:
        srv.stop()


def test_liveness_answers_over_grpc_while_a_png_bomb_is_refused() -> None:
    import tritonclient.grpc as grpcclient

    srv = ServedProcess('mlserver')
    try:
        client = grpcclient.InferenceServerClient(f'127.0.0.1:{srv.grpc}')
        prober = grpcclient.InferenceServerClient(f'127.0.0.1:{srv.grpc}')
        tensor = grpcclient.InferInput('image', [1], 'BYTES')
        tensor.set_data_from_numpy(np.array([png_bomb(12000, 12000)], dtype=object))

        def attack() -> str:
            try:
                client.infer('rcnn', [tensor], headers={'authorization': f'Bearer {TOKEN}'})
            except Exception as err:  # the refusal is the expected outcome
                return str(err)
            return 'served'

        cost = measure(srv, attack, prober.is_server_live)
        assert 'exceeds 4096' in cost.outcome and cost.live_failures == 0
        assert cost.growth_mb < MAX_GROWTH_MB and cost.live_worst_ms < 2000
        rest = measure(srv, attack, rest_live(srv.url))
        assert rest.live_failures == 0 and rest.live_worst_ms < 2000
    finally:
        srv.stop()
