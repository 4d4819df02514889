"""The offered load a pod exports for the autoscaler: each request at admission, and its capacity.

The builtin runtime in process, with a detector that finds nothing in a set time, so that every
fate a request can meet at admission is produced on purpose.
"""

from __future__ import annotations

import base64
from concurrent.futures import Future, ThreadPoolExecutor
import json
import re
import threading
import time
from typing import Any, Callable

import cv2
import numpy as np
import pytest
from rcnn_service.guard import Overloaded, RequestError
from rcnn_service.rcnn_detector import Detections, RcnnDetector
from rcnn_service.service import InferenceService, ServiceConfig


class _TimedDetector(RcnnDetector):
    """Finds nothing; a batch of n images sleeps ``(1 + n) * unit_s``, held while gated."""

    def __init__(self, unit_s: float) -> None:
        self.unit_s = unit_s
        self.open = threading.Event()
        self.open.set()
        self.started = threading.Event()

    def detect(self, images: list[np.ndarray]) -> list[Detections]:
        self.started.set()
        if not self.open.wait(10.0):
            raise TimeoutError('the test never opened the gate')
        time.sleep((1 + len(images)) * self.unit_s)
        return [Detections(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), ())
                for _ in images]


def _body(robot: str, budget_us: int | None = None) -> bytes:
    image = cv2.imencode('.jpg', np.zeros((48, 64, 3), np.uint8))[1].tobytes()
    parameters: dict[str, Any] = {'robot_id': robot}
    if budget_us is not None:
        parameters['budget_us'] = budget_us
    return json.dumps({'parameters': parameters, 'inputs': [{
        'name': 'image', 'datatype': 'BYTES', 'shape': [1],
        'parameters': {'content_type': 'base64'},
        'data': [base64.b64encode(image).decode()]}]}).encode()


def _samples(service: InferenceService, name: str) -> dict[str, float]:
    """Return the labels -> value of every series of ``name`` in the service's /metrics."""
    return {m.group(1) or '': float(m.group(2)) for m in re.finditer(
        rf'^{re.escape(name)}(\{{[^}}]*\}})? (\S+)$', service.metrics(), re.M)}


def _until(condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + 10.0
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail('timed out')
        time.sleep(0.01)


def _fate(future: Future[Any]) -> str:
    try:
        future.result(30)
    except Overloaded as err:
        return err.reason
    return 'answered'


def test_the_capacity_gauge_is_the_full_batch_rate_from_calibration_and_follows_it() -> None:
    detector = _TimedDetector(0.05)  # one image 0.1 s (10/s), four 0.25 s (16/s)
    service = InferenceService(ServiceConfig(port=0, max_batch=4), detector)
    try:
        gauge = 'adaptive_offload_capacity_images_per_second'
        calibrated = _samples(service, gauge)['']
        assert 10.0 < calibrated <= 16.0  # the full batch's rate, less what sleep overshoots
        detector.unit_s = 0.15  # the GPU got three times slower
        service.infer(_body('r1'))  # the first request is a probe: it measures again
        assert _samples(service, gauge)[''] < calibrated / 2
    finally:
        service.shutdown()


def test_every_request_that_reaches_admission_is_offered_once_whatever_its_fate() -> None:
    detector = _TimedDetector(0.025)  # a lone image: 50 ms, so admission knows batch times
    service = InferenceService(ServiceConfig(port=0, max_batch=1, max_queue=3), detector)

    def depth() -> float:
        return _samples(service, 'adaptive_offload_queue_depth')['']

    pool = ThreadPoolExecutor(8)
    try:
        assert _samples(service, 'adaptive_offload_offered_total') == {'': 0.0}
        detector.started.clear()
        detector.open.clear()
        # The first request measures the model again whatever its budget: it runs, held by
        # the gate until after its budget.
        fates = {'a1': pool.submit(service.infer, _body('a', 300_000))}
        assert detector.started.wait(10)
        fates['a2'] = pool.submit(service.infer, _body('a'))
        fates['a3'] = pool.submit(service.infer, _body('a'))
        _until(lambda: depth() == 2)
        fates['c'] = pool.submit(service.infer, _body('c', 400_000))  # admitted, then too late
        _until(lambda: depth() == 3)
        fates['b1'] = pool.submit(service.infer, _body('b'))  # full: pushes a's newest out
        _until(lambda: fates['a3'].done())
        fates['b2'] = pool.submit(service.infer, _body('b', 1_000))  # refused at submit
        _until(lambda: fates['b2'].done())
        with pytest.raises(RequestError):
            service.infer(b'{"inputs": []}')  # malformed: never reached admission
        time.sleep(0.45)  # c's budget runs out in the queue
        detector.open.set()
        outcomes = {name: _fate(future) for name, future in fates.items()}
    finally:
        pool.shutdown()
        service.shutdown()
    assert outcomes == {'a1': 'answered', 'a2': 'answered', 'a3': 'evicted', 'c': 'expired',
                        'b1': 'answered', 'b2': 'budget'}
    offered = _samples(service, 'adaptive_offload_offered_total')['']
    goodput = _samples(service, 'adaptive_offload_goodput_total')['']
    late = _samples(service, 'adaptive_offload_late_answers_total')['']
    refusals = sum(_samples(service, 'adaptive_offload_refusals_total').values())
    assert (goodput, late, refusals) == (2, 1, 3)
    assert offered == goodput + late + refusals == 6
