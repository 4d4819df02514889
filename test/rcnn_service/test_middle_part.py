"""The middle part of three tiers on the builtin service, with a cloud that is a stand-in.

The middle device's service is real (the shipped compact R-CNN at 320 px, on loopback); the
cloud behind it is an object that records what it is sent and answers or refuses as told, so
that each refusal and the budget can be checked. The whole chain over real services is in
``test/offload_runtime/test_upstream_tail.py``.
"""

from __future__ import annotations

import threading
from typing import Any, Iterator, Mapping

from adaptive_offload.errors import CloudError
from adaptive_offload.split_wire import FORWARD_ENCODING, FORWARD_TO
from cloud_bridge.tail_client import V2TailTransport
from helpers import head_payload, shapes_frame, SHAPES_RCNN
import numpy as np
import pytest
from rcnn_service.compact_rcnn import COMPACT_ARCH
from rcnn_service.guard import Overloaded, RequestError
from rcnn_service.middle_part import disagreement, MiddlePart
from rcnn_service.protocol import RequestContext
from rcnn_service.rcnn_detector import Detections, RcnnDetector
from rcnn_service.rcnn_split import encode_payload, EncodedPayload, RcnnSplit
from rcnn_service.service import InferenceService, ServiceConfig
from rcnn_service.split_tail import Forward, SplitTail, TailJob, TailRequest

TOKEN = 't0k'
ANSWER = Detections(np.array([[1, 2, 30, 40]], np.float32), np.array([0.9], np.float32),
                    ('circle',))


class FakeCloud:
    """The cloud's tail: records each request, answers :data:`ANSWER` or raises ``error``."""

    def __init__(self, metadata: Mapping[str, Any]) -> None:
        self.meta = dict(metadata)
        self.sent: list[tuple[EncodedPayload, float, str]] = []
        self.asked = 0
        self.error: Exception | None = None
        self.hold: threading.Event | None = None
        self.entered = threading.Event()

    def metadata(self, timeout_s: float) -> Mapping[str, Any]:
        self.asked += 1
        return self.meta

    def infer(self, payload: EncodedPayload, timeout_s: float, robot: str) -> Detections:
        self.sent.append((payload, timeout_s, robot))
        self.entered.set()
        if self.hold is not None:
            self.hold.wait(30)
        if self.error is not None:
            raise self.error
        return ANSWER

    def close(self) -> None:
        pass


@pytest.fixture(scope='module')
def detector() -> RcnnDetector:
    return RcnnDetector(COMPACT_ARCH, SHAPES_RCNN, input_size=320)


@pytest.fixture(scope='module')
def tail(detector: RcnnDetector) -> SplitTail:
    return SplitTail(detector)


@pytest.fixture()
def cloud(tail: SplitTail) -> FakeCloud:
    return FakeCloud(tail.metadata('rcnn-tail', 1 << 20))


@pytest.fixture()
def middle(detector: RcnnDetector, cloud: FakeCloud) -> Iterator[InferenceService]:
    service = InferenceService(ServiceConfig(port=0, tokens=(TOKEN,)), detector,
                               upstream=cloud)
    threading.Thread(target=service.serve_forever, daemon=True).start()
    yield service
    service.shutdown()


@pytest.fixture(scope='module')
def payload(detector: RcnnDetector) -> EncodedPayload:
    """Run the robot's head to body.2 (point 2) and encode it int8+zstd."""
    return encode_payload(head_payload(RcnnSplit(detector.model), shapes_frame(), 2), 'int8',
                          'zstd')


def _robot(service: InferenceService) -> V2TailTransport:
    return V2TailTransport(service.url, 'rcnn', token=TOKEN, robot_id='r7')


def _forward(to: str = 'body.3', encoding: str = 'int8+zstd', **more: Any) -> dict[str, Any]:
    return {FORWARD_TO: to, FORWARD_ENCODING: encoding, **more}


def test_a_forwarded_request_runs_to_j_and_answers_with_the_clouds_detections(
        middle: InferenceService, cloud: FakeCloud, tail: SplitTail,
        payload: EncodedPayload) -> None:
    robot = _robot(middle)
    try:
        assert robot.metadata(10.0)['split']['forwards'] is True
        reply = robot.infer(payload, 20.0, _forward())
    finally:
        robot.close()
    assert reply.labels == ANSWER.labels and np.array_equal(reply.boxes, ANSWER.boxes)
    (sent, timeout_s, robot_id), = cloud.sent
    assert robot_id == 'r7'  # the cloud serves robots in turn: it sees the robot, not the Pi
    assert 0 < timeout_s <= 20.0
    point = {p.name: p for p in tail.split.points}['body.3']
    assert sent.meta['point'] == point.index and set(sent.blobs) == set(point.crossing)


def test_without_forward_to_the_middle_device_runs_the_whole_rest(
        middle: InferenceService, cloud: FakeCloud, payload: EncodedPayload) -> None:
    robot = _robot(middle)
    try:
        reply = robot.infer(payload, 20.0)
    finally:
        robot.close()
    assert len(reply.labels) == 4 and cloud.sent == []  # the i/end option: nothing forwarded


@pytest.mark.parametrize(('params', 'message'), [
    (_forward(to='body.1'), 'after point 2'),
    (_forward(to='transform'), 'after point 2'),
    (_forward(to='body.99'), 'after point 2'),
    ({FORWARD_TO: 'body.3'}, 'forward_encoding must be'),
    ({FORWARD_ENCODING: 'int8+zstd'}, 'forward_to must name'),
    (_forward(encoding='fp32+zstd'), 'forward_encoding must be'),
    (_forward(encoding='int8+gzip'), 'forward_encoding must be'),
    (_forward(to=3), 'forward_to must name'),
])
def test_a_bad_forward_is_a_400_that_says_why(middle: InferenceService, cloud: FakeCloud,
                                              payload: EncodedPayload, params: dict[str, Any],
                                              message: str) -> None:
    robot = _robot(middle)
    try:
        with pytest.raises(CloudError) as err:
            robot.infer(payload, 20.0, params)
    finally:
        robot.close()
    assert err.value.reason == 'http_400' and message in err.value.detail
    assert cloud.sent == []


def test_a_service_without_an_upstream_refuses_a_forward(detector: RcnnDetector,
                                                         payload: EncodedPayload) -> None:
    service = InferenceService(ServiceConfig(port=0, tokens=(TOKEN,)), detector)
    threading.Thread(target=service.serve_forever, daemon=True).start()
    robot = _robot(service)
    try:
        assert robot.metadata(10.0)['split']['forwards'] is False
        with pytest.raises(CloudError) as err:
            robot.infer(payload, 20.0, _forward())
    finally:
        robot.close()
        service.shutdown()
    assert err.value.reason == 'http_400' and 'forwards to no cloud' in err.value.detail


@pytest.mark.parametrize(('error', 'reason'), [
    (Overloaded('upstream', 'r7', 0.25, 'the cloud refused'), 'overloaded'),
    (RequestError(504, 'the cloud at x: timeout: slow'), 'http_504'),
    (RequestError(502, 'the cloud at x: connection: refused'), 'http_502'),
])
def test_the_clouds_refusals_reach_the_robot_as_the_cloud_gave_them(
        middle: InferenceService, cloud: FakeCloud, payload: EncodedPayload,
        error: Exception, reason: str) -> None:
    cloud.error = error
    robot = _robot(middle)
    try:
        with pytest.raises(CloudError) as err:
            robot.infer(payload, 20.0, _forward())
    finally:
        robot.close()
    assert err.value.reason == reason
    if reason == 'overloaded':
        assert err.value.retry_after_s == pytest.approx(0.25)  # the robot backs off as told


def test_a_request_whose_budget_ran_out_in_the_middle_is_a_504_and_not_forwarded(
        middle: InferenceService, cloud: FakeCloud, payload: EncodedPayload) -> None:
    robot = _robot(middle)
    try:
        with pytest.raises(CloudError) as err:
            robot.infer(payload, 20.0, _forward(budget_us=0))
    finally:
        robot.close()
    assert err.value.reason == 'http_504' and 'budget' in err.value.detail
    assert cloud.sent == []


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _request(tail: SplitTail, payload: EncodedPayload, budget_s: float | None = 5.0
             ) -> TailRequest:
    from rcnn_service.rcnn_split import decode_payload

    point = {p.name: p.index for p in tail.split.points}['body.3']
    return TailRequest(TailJob(decode_payload(payload)), RequestContext('r1', budget_s), None,
                       '', Forward(point, 'fp16', 'lz4'))


def test_a_cloud_of_other_weights_is_refused_and_asked_again_only_after_recheck_s(
        tail: SplitTail, cloud: FakeCloud, payload: EncodedPayload) -> None:
    cloud.meta['split'] = {**cloud.meta['split'], 'weights_sha256': 'f' * 64}
    clock = Clock()
    part = MiddlePart(tail, cloud, recheck_s=30.0, clock=clock)
    for _ in range(2):
        with pytest.raises(RequestError) as err:
            part.run(_request(tail, payload))
        assert err.value.status == 502 and 'f' * 64 in str(err.value)
        assert tail.weights_sha256 in str(err.value)
    assert cloud.asked == 1 and cloud.sent == []
    cloud.meta['split'] = {**cloud.meta['split'], 'weights_sha256': tail.weights_sha256}
    clock.now += 30.0  # the cloud was redeployed with the right checkpoint
    detections, _, _ = part.run(_request(tail, payload))
    assert detections == ANSWER and cloud.asked == 2
    part.run(_request(tail, payload))
    assert cloud.asked == 2  # an agreeing cloud is not asked again


def test_disagreement_names_architecture_weights_and_points(tail: SplitTail) -> None:
    meta = tail.metadata('rcnn-tail', 1)
    assert disagreement(meta, tail.spec) == ''
    assert 'names no split model' in disagreement({}, tail.spec)
    assert 'runs' in disagreement({'split': {**meta['split'], 'arch': 'other'}}, tail.spec)
    points = meta['split']['points'][:-1]
    assert 'other points' in disagreement({'split': {**meta['split'], 'points': points}},
                                          tail.spec)


def test_more_than_max_waiting_requests_are_refused_as_overloaded(
        tail: SplitTail, cloud: FakeCloud, payload: EncodedPayload) -> None:
    cloud.hold = threading.Event()
    part = MiddlePart(tail, cloud, max_waiting=1)
    first = threading.Thread(target=part.run, args=(_request(tail, payload),))
    first.start()
    try:
        assert cloud.entered.wait(30)
        with pytest.raises(Overloaded) as err:
            part.run(_request(tail, payload))
        assert err.value.reason == 'queue_full'
    finally:
        cloud.hold.set()
        first.join(30)
    part.run(_request(tail, payload))  # the slot is free again
    assert len(cloud.sent) == 2
