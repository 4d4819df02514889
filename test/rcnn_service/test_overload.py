"""A fleet's shared service on loopback: budgets, fair turns, refusals and their metrics.

Both runtimes run as ``adaptive-offload serve`` in a child process, one request at a time per
batch (``--max-batch 1``), so the order of the answers shows the order of the queue. The
clients are the bridge's own transports, REST and gRPC.
"""

from __future__ import annotations

import base64
from concurrent.futures import ThreadPoolExecutor
from email.message import Message
import json
import re
import threading
import time
from typing import Any, Iterator
import urllib.error
import urllib.request

from adaptive_offload.errors import CloudError
from attack_kit import ServedProcess, TOKEN
from cloud_bridge.transport import make_transport
import cv2
import numpy as np
import pytest

RUNTIMES = ['builtin', 'mlserver']


@pytest.fixture(scope='module', params=RUNTIMES)
def server(request: pytest.FixtureRequest) -> Iterator[ServedProcess]:
    srv = ServedProcess(request.param, ('--max-batch', '1', '--max-queue', '32'))
    yield srv
    srv.stop()


def _jpeg() -> bytes:
    image = np.random.default_rng(0).integers(0, 255, (480, 640, 3), np.uint8)
    return cv2.imencode('.jpg', image)[1].tobytes()


def _post(srv: ServedProcess, parameters: dict[str, Any]) -> tuple[int, Message, Any]:
    body = json.dumps({'parameters': parameters, 'inputs': [{
        'name': 'image', 'datatype': 'BYTES', 'shape': [1],
        'parameters': {'content_type': 'base64'},
        'data': [base64.b64encode(_jpeg()).decode()]}]}).encode()
    request = urllib.request.Request(
        f'{srv.url}/v2/models/rcnn/infer', data=body, method='POST',
        headers={'Authorization': f'Bearer {TOKEN}', 'Content-Type': 'application/json'})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, response.headers, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, err.headers, json.loads(err.read())


def _metrics(srv: ServedProcess) -> str:
    port = srv.rest if srv.runtime == 'builtin' else srv.metrics
    with urllib.request.urlopen(f'http://127.0.0.1:{port}/metrics', timeout=10) as response:
        return response.read().decode()


def _sample(text: str, name: str, labels: str = '') -> float:
    found = re.search(rf'^{re.escape(name)}{re.escape(labels)} (\S+)$', text, re.M)
    return float(found.group(1)) if found else 0.0


def test_a_request_that_cannot_finish_in_its_budget_is_refused_at_once(
        server: ServedProcess) -> None:
    status, _, reply = _post(server, {'robot_id': 'warm', 'budget_us': 60_000_000})
    assert status == 200  # the service has now timed a batch
    assert reply['parameters']['queue_us'] >= 0
    assert reply['parameters']['server_us'] >= reply['parameters']['queue_us']
    start = time.perf_counter()
    status, headers, reply = _post(server, {'robot_id': 'hurried', 'budget_us': 1})
    assert status == 503 and 'overloaded (budget)' in reply['error']
    assert int(headers.get('Retry-After', '0')) >= 1  # whole seconds, HTTP's finest
    assert time.perf_counter() - start < 5.0  # refused, not computed (bound only: busy CI)
    text = _metrics(server)
    assert _sample(text, 'adaptive_offload_refusals_total',
                   '{reason="budget",robot="hurried"}') == 1
    assert _sample(text, 'adaptive_offload_goodput_total') >= 1
    assert 'adaptive_offload_queue_depth' in text
    assert _sample(text, 'adaptive_offload_queue_wait_seconds_count') >= 1
    # The offered load the autoscaler sizes by, in both runtimes: each request that reached
    # admission once, answered or refused, and the capacity measured before serving.
    answered = _sample(text, 'adaptive_offload_goodput_total') + \
        _sample(text, 'adaptive_offload_late_answers_total')
    refused = sum(float(v) for v in re.findall(
        r'^adaptive_offload_refusals_total\{.*\} (\S+)$', text, re.M))
    assert _sample(text, 'adaptive_offload_offered_total') == answered + refused >= 2
    assert _sample(text, 'adaptive_offload_capacity_images_per_second') > 0
    # counted, not logged: under load refusing is how the service works, not an incident
    assert 'overloaded' not in server.log_text()


def test_the_bridge_transports_read_a_refusal_as_overloaded(server: ServedProcess) -> None:
    urls = {'http': server.url}
    if server.runtime == 'mlserver':  # the builtin runtime serves REST only
        urls['grpc'] = f'grpc://127.0.0.1:{server.grpc}'
    for scheme, url in urls.items():
        transport = make_transport(url, 'rcnn', TOKEN, robot_id=f'robot-{scheme}')
        try:
            reply = transport.infer(_jpeg(), 60.0)
            # the service's time and, within it, the queue wait: the load robots' managers see
            assert reply.server_ms is not None and reply.queue_ms is not None
            assert 0.0 <= reply.queue_ms <= reply.server_ms
            # a budget of a microsecond: what a robot whose deadline is all but gone sends
            transport._budget.parameters = lambda timeout_s, s=scheme: {  # type: ignore
                'robot_id': f'robot-{s}', 'budget_us': 1}
            with pytest.raises(CloudError) as refused:
                transport.infer(_jpeg(), 60.0)
        finally:
            transport.close()
        assert refused.value.reason == 'overloaded', scheme
        assert 0.0 <= refused.value.retry_after_s < 60.0
        assert _sample(_metrics(server), 'adaptive_offload_refusals_total',
                       f'{{reason="budget",robot="robot-{scheme}"}}') == 1


def test_bad_request_parameters_are_refused_with_the_reason(server: ServedProcess) -> None:
    status, _, reply = _post(server, {'robot_id': 'a robot; drop table', 'budget_us': 1000})
    assert status == 400 and 'robot_id' in reply['error']
    status, _, reply = _post(server, {'robot_id': 'r', 'budget_us': -5})
    assert status == 400 and 'budget_us' in reply['error']


def test_a_quiet_robot_waits_one_turn_not_behind_a_chatty_robots_queue(
        server: ServedProcess) -> None:
    done: list[str] = []
    lock = threading.Lock()

    def send(robot: str) -> None:
        status, _, _ = _post(server, {'robot_id': robot, 'budget_us': 120_000_000})
        assert status == 200
        with lock:
            done.append(robot)

    with ThreadPoolExecutor(8) as pool:
        chatty = [pool.submit(send, 'chatty') for _ in range(6)]
        for _ in range(600):  # bounded: until most of chatty's requests wait in the queue
            if _sample(_metrics(server), 'adaptive_offload_queue_depth') >= 4:
                break
            time.sleep(0.01)
        else:
            pytest.fail('the chatty robot never filled the queue')
        quiet = pool.submit(send, 'quiet')
        for future in [*chatty, quiet]:
            future.result(120)
    # FIFO would answer the quiet robot last (index 6). In turns, when the queue held 4 of
    # chatty's 6, at most 2 had started; after the quiet robot's arrival at most one more of
    # chatty's goes before it.
    assert done.index('quiet') <= 3, done
