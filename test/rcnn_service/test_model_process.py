"""The model in a process of its own: same answers, fast failure, restarts, no leftovers.

The shipped compact R-CNN at 320 px, in a child process started with ``spawn``. Waits on real
child processes are bounded; the restart policy is checked on an injected clock.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import threading
import time
from typing import Any, Iterator
import urllib.error
import urllib.request

import cv2
from helpers import (child_processes, compact_service, dying_model_child, process_gone,
                     resource_tracker_pids, shapes_frame, SHAPES_RCNN, wait_until)
import numpy as np
from prometheus_client import CollectorRegistry
import pytest
from rcnn_service.compact_rcnn import COMPACT_ARCH
from rcnn_service.guard import ModelUnavailable
from rcnn_service.model_process import DEATH_CAUSES, ModelProcess, RestartPolicy
from rcnn_service.rcnn_detector import Detections
from rcnn_service.service import InferenceService, ModelCrashLoop, serve, ServiceConfig
from rcnn_service.service_metrics import ServiceMetrics
from rcnn_service.shared_frames import AttachedFrames, SharedFrames

CONFIG = ServiceConfig(arch=COMPACT_ARCH, checkpoint=SHAPES_RCNN, input_size=320, port=0,
                       max_image_side=1000, model_process=True)
START_S = 180.0  # bound on a child's start (spawn, torch import, load, warm-up) on 2 cores


def _body(image: np.ndarray) -> bytes:
    png = base64.b64encode(cv2.imencode('.png', image)[1].tobytes()).decode()
    return json.dumps({'inputs': [{'name': 'image', 'datatype': 'BYTES', 'shape': [1],
                                   'data': [png]}]}).encode()


def _post(url: str, body: bytes) -> tuple[int, dict[str, Any], str]:
    request = urllib.request.Request(f'{url}/v2/models/rcnn/infer', data=body,
                                     headers={'Content-Type': 'application/json'})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read()), ''
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read()), err.headers.get('Retry-After', '')


def _ready(url: str) -> int:
    try:
        with urllib.request.urlopen(f'{url}/v2/health/ready', timeout=10) as response:
            return int(response.status)
    except urllib.error.HTTPError as err:
        return err.code


@pytest.fixture(scope='module')
def service() -> Iterator[InferenceService]:
    before = set(child_processes())
    svc = InferenceService(CONFIG)
    threading.Thread(target=svc.serve_forever, daemon=True).start()
    try:
        assert wait_until(lambda: svc.ready or bool(svc.load_error), START_S), 'not ready in time'
        assert svc.ready, svc.load_error
        yield svc
    finally:
        pid = getattr(svc.model, 'pid', None)
        svc.shutdown()
    assert pid is None or process_gone(pid, 10.0)
    assert set(child_processes()) - before - resource_tracker_pids() == set()


def test_the_process_model_answers_what_the_in_process_model_answers(
        service: InferenceService) -> None:
    body = _body(shapes_frame())
    status, remote, _ = _post(service.url, body)
    with compact_service() as local_service:
        local_status, local, _ = _post(local_service.url, body)
    assert (status, local_status) == (200, 200)
    # The same model on the same frame; two processes may sum in another order (their own
    # thread pools), so float rounding is all that may differ.
    assert [o['name'] for o in remote['outputs']] == [o['name'] for o in local['outputs']]
    for theirs, ours in zip(remote['outputs'], local['outputs']):
        assert (theirs['shape'], theirs['datatype']) == (ours['shape'], ours['datatype'])
        if ours['datatype'] == 'BYTES':  # class names
            assert theirs['data'] == ours['data']
        else:
            assert np.allclose(theirs['data'], ours['data'], rtol=0, atol=1e-3)
    assert len(remote['outputs'][0]['data']) == 16  # four objects, as the scene holds


def test_malformed_frames_are_refused_before_the_child(service: InferenceService) -> None:
    model = service.model
    assert isinstance(model, ModelProcess)
    batches = model._batch
    not_png = json.dumps({'inputs': [{'name': 'image', 'datatype': 'BYTES', 'shape': [1],
                                      'data': [base64.b64encode(b'no image').decode()]}]})
    huge = _body(np.zeros((10, 1200, 3), np.uint8))
    for body in (not_png.encode(), huge, b'{"not json'):
        assert _post(service.url, body)[0] == 400
    assert model._batch == batches


def test_a_dead_child_fails_its_batch_at_once_and_comes_back(
        service: InferenceService) -> None:
    model = service.model
    assert isinstance(model, ModelProcess)
    pid = model.pid
    assert pid is not None
    os.kill(pid, signal.SIGSTOP)  # the batch waits in the child: it is surely in flight
    answer: list[tuple[int, dict[str, Any], str]] = []
    sender = threading.Thread(target=lambda: answer.append(
        _post(service.url, _body(shapes_frame()))))
    batches = model._batch
    sender.start()
    assert wait_until(lambda: model._batch > batches, 30.0)
    killed = time.monotonic()
    os.kill(pid, signal.SIGKILL)
    sender.join(30.0)
    failed_s = time.monotonic() - killed
    status, body, retry_after = answer[0]
    assert (status, failed_s < 5.0) == (503, True)
    assert 'model unavailable' in body['error'] and int(retry_after) >= 1
    assert body['parameters']['reason'] == 'model_restarting'
    assert process_gone(pid, 10.0)
    # Restarting: not ready, and inference is refused with Retry-After meanwhile.
    assert not model.ready and _ready(service.url) == 503
    status, body, retry_after = _post(service.url, _body(shapes_frame()))
    assert status == 503 and retry_after and 'restarting' in body['error']
    assert wait_until(lambda: service.ready, START_S)
    assert _ready(service.url) == 200 and model.pid not in (None, pid)
    assert _post(service.url, _body(shapes_frame()))[0] == 200


def test_the_policy_backs_off_doubling_and_gives_up_at_the_fourth_death() -> None:
    policy = RestartPolicy()
    assert [policy.died(t, t - 5) for t in (0.0, 10.0, 20.0)] == [1.0, 2.0, 4.0]
    assert policy.died(30.0, 25.0) is None  # 4 deaths within 300 s
    spaced = RestartPolicy()
    delays = [spaced.died(t, t - 50) for t in (0.0, 100.0, 200.0, 350.0, 420.0, 480.0)]
    assert delays == [1.0, 2.0, 4.0, 8.0, 16.0, None]  # the death at 0 left the window
    capped = RestartPolicy(max_deaths=100)
    assert [capped.died(float(t), t - 1.0) for t in range(7)][-2:] == [30.0, 30.0]
    assert capped.died(1000.0, 600.0) == 1.0  # up for the whole window: doubling restarts


def test_a_crash_loop_gives_up_and_leaves_no_child() -> None:
    reasons: list[str] = []
    registry = CollectorRegistry()
    metrics = ServiceMetrics(registry)
    model = ModelProcess(CONFIG, RestartPolicy(first_s=0.01, max_s=0.05), reasons.append,
                         on_death=metrics.death_counter(DEATH_CAUSES), child=dying_model_child)
    try:
        assert model.wait_settled(120.0)
        assert model.starts == 4 and not model.ready and len(reasons) == 1
        # Every cause is exported from the start, so an alert sees the first death.
        deaths = {cause: registry.get_sample_value('adaptive_offload_model_process_deaths_total',
                                                   {'cause': cause}) for cause in DEATH_CAUSES}
        assert deaths == {'exited': 4.0, 'batch_timeout': 0.0, 'load_timeout': 0.0}
        assert 'died 4 times within 300 s (last exit status 3)' in reasons[0]
        with pytest.raises(ModelUnavailable):
            model.run([np.zeros((8, 8, 3), np.uint8)])
    finally:
        model.close()
    assert model.pid is None


def test_a_crash_loop_stops_serve_with_its_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    class Dying(InferenceService):
        def __init__(self, config: ServiceConfig, upstream: Any = None) -> None:
            super().__init__(config, _Blank(), upstream=upstream)
            threading.Timer(0.5, self._give_up, ('the model process died 4 times',)).start()

    monkeypatch.setattr('rcnn_service.service.InferenceService', Dying)
    with pytest.raises(ModelCrashLoop, match='died 4 times: the service stopped'):
        serve(ServiceConfig(port=0), announce=lambda line: None)


class _Blank:
    def detect(self, images: list[np.ndarray]) -> list[Detections]:
        return [Detections(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), ())
                for _ in images]


def test_frames_cross_through_shared_memory_and_too_many_inline() -> None:
    frames = SharedFrames(2, 64 * 64 * 3)
    try:
        batch = [np.full((8, 8, 3), i, np.uint8) for i in range(3)] + \
            [np.ones((100, 100, 3), np.uint8)]
        headers = frames.put(batch)
        assert [h.slot for h in headers] == [0, 1, -1, -1]
        attached = AttachedFrames(frames.names)
        assert all(np.array_equal(attached.get(h), f) for h, f in zip(headers, batch))
    finally:
        frames.close()
