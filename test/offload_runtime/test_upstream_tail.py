"""Three tiers over real services on loopback: robot head, middle device, cloud tail.

The cloud and the middle device each run the builtin service with the shipped compact R-CNN
at 320 px; the middle one forwards through :class:`UpstreamTail`. The robot's head is a third
copy of the model. What comes back must be what the three parts give when run here in turn
(same encodings), and the robot must be refused when the cloud cannot finish the payload.
"""

from __future__ import annotations

import threading
from typing import Iterator

from adaptive_offload.errors import CloudError
from adaptive_offload.split_wire import FORWARD_ENCODING, FORWARD_TO
from cloud_bridge.tail_client import V2TailTransport
from helpers import head_payload, shapes_frame, SHAPES_RCNN
import numpy as np
from offload_runtime.upstream_tail import UpstreamTail
import pytest
from rcnn_service.compact_rcnn import COMPACT_ARCH
from rcnn_service.rcnn_detector import RcnnDetector
from rcnn_service.rcnn_split import decode_payload, encode_payload, RcnnSplit
from rcnn_service.service import InferenceService, ServiceConfig
import torch

CLOUD_TOKEN, ROBOT_TOKEN = 'cloud-t', 'robot-t'


def _serve(detector: RcnnDetector, token: str,
           upstream: UpstreamTail | None = None) -> InferenceService:
    service = InferenceService(ServiceConfig(port=0, tokens=(token,)), detector,
                               upstream=upstream)
    threading.Thread(target=service.serve_forever, daemon=True).start()
    return service


def _detector(checkpoint: str = SHAPES_RCNN) -> RcnnDetector:
    return RcnnDetector(COMPACT_ARCH, checkpoint, input_size=320)


@pytest.fixture(scope='module')
def cloud() -> Iterator[InferenceService]:
    service = _serve(_detector(), CLOUD_TOKEN)
    yield service
    service.shutdown()


@pytest.fixture(scope='module')
def middle(cloud: InferenceService) -> Iterator[InferenceService]:
    service = _serve(_detector(), ROBOT_TOKEN, UpstreamTail(cloud.url, 'rcnn', CLOUD_TOKEN))
    yield service
    service.shutdown()


@pytest.fixture(scope='module')
def robot_head() -> RcnnSplit:
    return RcnnSplit(_detector().model)


def _robot(service: InferenceService) -> V2TailTransport:
    return V2TailTransport(service.url, 'rcnn', token=ROBOT_TOKEN, robot_id='robot-3')


@pytest.mark.parametrize(('i', 'j', 'precision', 'codec'), [
    ('body.2', 'body.3', 'int8', 'zstd'), ('transform', 'body.9', 'fp16', 'lz4'),
    ('body.1', 'fpn', 'int8', 'lz4')])
def test_three_tiers_answer_what_head_middle_and_tail_give_in_turn(
        cloud: InferenceService, middle: InferenceService, robot_head: RcnnSplit, i: str,
        j: str, precision: str, codec: str) -> None:
    index = {p.name: p.index for p in robot_head.points}
    frame = shapes_frame()
    sent = encode_payload(head_payload(robot_head, frame, index[i]), precision, codec)
    before = cloud.tail_counts['ok']
    robot = _robot(middle)
    try:
        reply = robot.infer(sent, 30.0, {FORWARD_TO: j,
                                         FORWARD_ENCODING: f'{precision}+{codec}'})
    finally:
        robot.close()
    assert cloud.tail_counts['ok'] == before + 1  # the cloud ran the tail
    local = _detector()
    with torch.inference_mode():
        handed = robot_head.middle(decode_payload(sent), index[j])
        tail = robot_head.tail(decode_payload(encode_payload(handed, precision, codec)))
    expected = local.detections(tail)[0]
    assert len(expected.labels) == 4
    assert reply.labels == expected.labels
    np.testing.assert_allclose(reply.boxes, expected.boxes, atol=1e-3)
    np.testing.assert_allclose(reply.scores, expected.scores, atol=1e-5)


def test_a_cloud_of_other_weights_is_refused_with_both_digests(
        robot_head: RcnnSplit) -> None:
    other = _serve(_detector(''), CLOUD_TOKEN)  # random weights: same architecture
    middle = _serve(_detector(), ROBOT_TOKEN, UpstreamTail(other.url, 'rcnn', CLOUD_TOKEN))
    robot = _robot(middle)
    try:
        sent = encode_payload(head_payload(robot_head, shapes_frame(), 2), 'int8', 'zstd')
        with pytest.raises(CloudError) as err:
            robot.infer(sent, 30.0, {FORWARD_TO: 'body.3', FORWARD_ENCODING: 'int8+zstd'})
    finally:
        robot.close()
        middle.shutdown()
        other.shutdown()
    assert err.value.reason == 'http_502'
    assert other.tail is not None and middle.tail is not None
    for digest in (other.tail.weights_sha256, middle.tail.weights_sha256):
        assert digest in err.value.detail  # the robot's report says which weights differ
    assert other.tail_counts['ok'] == 0


def test_an_unreachable_cloud_or_a_wrong_token_is_a_502_naming_the_cloud(
        cloud: InferenceService, robot_head: RcnnSplit) -> None:
    import socket

    with socket.socket() as closed:
        closed.bind(('127.0.0.1', 0))
        gone = f'http://127.0.0.1:{closed.getsockname()[1]}'
    sent = encode_payload(head_payload(robot_head, shapes_frame(), 2), 'int8', 'zstd')
    for url, token, reason in ((gone, CLOUD_TOKEN, 'connection'),
                               (cloud.url, 'wrong', 'http_401')):
        middle = _serve(_detector(), ROBOT_TOKEN, UpstreamTail(url, 'rcnn', token))
        robot = _robot(middle)
        try:
            with pytest.raises(CloudError) as err:
                robot.infer(sent, 30.0, {FORWARD_TO: 'body.3', FORWARD_ENCODING: 'int8+zstd'})
        finally:
            robot.close()
            middle.shutdown()
        assert err.value.reason == 'http_502'
        assert url in err.value.detail and reason in err.value.detail
