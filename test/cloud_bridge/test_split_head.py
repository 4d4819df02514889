"""The split route of the bridge: the head here, the tail on the real service on loopback."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

from adaptive_offload.conversions import frame_to_message, MessageTypes
from adaptive_offload.datatypes import Decision, Route
from adaptive_offload.errors import ConfigError
from cloud_bridge.bridge import CloudBridge
from cloud_bridge.bridge_config import CloudConfig
from cloud_bridge.split_head import load_detector, SplitRoute
from cloud_bridge.tail_client import V2TailTransport
from helpers import compact_service, shapes_frame, SHAPES_RCNN
import numpy as np
import pytest
from rcnn_service.compact_rcnn import COMPACT_ARCH
from rcnn_service.rcnn_detector import RcnnDetector
from rcnn_service.service import InferenceService

CHECKPOINT = SHAPES_RCNN
FP16 = f'{COMPACT_ARCH}@320:body.3:fp16+zstd'
INT8 = f'{COMPACT_ARCH}@320:body.3:int8+lz4'


@pytest.fixture(scope='module')
def service() -> Iterator[InferenceService]:
    with compact_service() as svc:
        yield svc


@pytest.fixture(scope='module')
def frame() -> np.ndarray:
    return shapes_frame()


def _msg(types: MessageTypes, frame: np.ndarray) -> Any:
    return frame_to_message(types, np.ascontiguousarray(frame[:, :, ::-1]), 7, 'cam', 'rgb8')


def _route(service: InferenceService, options: list[str], checkpoint: str = CHECKPOINT
           ) -> SplitRoute:
    return SplitRoute(options, V2TailTransport(service.url, 'rcnn'), load_detector(checkpoint))


def test_a_split_decision_answers_what_the_whole_model_answers(
        service: InferenceService, frame: np.ndarray, types: MessageTypes) -> None:
    expected = RcnnDetector(COMPACT_ARCH, CHECKPOINT, input_size=320).detect([frame])[0]
    split = _route(service, [FP16, INT8])
    bridge = CloudBridge(V2TailTransport(service.url, 'rcnn'), split=split)
    try:
        assert bridge.split_options == (FP16, INT8)
        for option in (FP16, INT8):
            dets, report = bridge.process(_msg(types, frame),
                                          Decision(route=Route.SPLIT, split=option,
                                                   deadline_ms=30000.0))
            assert report.status == 'ok', report.reason
            assert report.model == dets.model == f'split:{option}'
            labels = [d.class_name for d in dets.detections]
            assert len(labels) == 4 and sorted(labels) == sorted(expected.labels)
            boxes = np.array([[d.x1, d.y1, d.x2, d.y2] for d in dets.detections])
            order = np.lexsort(boxes.T[::-1])
            want = expected.boxes[np.lexsort(expected.boxes.T[::-1])]
            assert np.abs(boxes[order] - want).max() < 3.0  # pixels, after fp16 / int8
            # The head's time is the robot's compute; the request's bytes are the payload's.
            assert 0 < report.inference_ms < report.total_ms
            assert report.bytes_sent > 1000 and report.server_ms > 0 and report.imgsz == 320
    finally:
        split.close()


def test_a_head_of_other_weights_is_refused_without_opening_the_breaker(
        service: InferenceService, frame: np.ndarray, types: MessageTypes,
        tmp_path: Path) -> None:
    split = _route(service, [FP16], checkpoint='')  # random weights: another digest
    bridge = CloudBridge(V2TailTransport(service.url, 'rcnn'), split=split)
    decision = Decision(route=Route.SPLIT, split=FP16, deadline_ms=30000.0)
    try:
        for _ in range(4):  # past the breaker's threshold of 3
            dets, report = bridge.process(_msg(types, frame), decision)
            assert dets is None and report.status == 'failed'
            assert 'the service runs weights' in report.reason and 'split_checkpoint' in \
                report.reason
        assert bridge.breaker.state.value == 'closed'
    finally:
        split.close()


def test_split_decisions_the_bridge_cannot_run_fail_with_the_reason(
        service: InferenceService, frame: np.ndarray, types: MessageTypes) -> None:
    split = _route(service, [FP16])
    plain = CloudBridge(V2TailTransport(service.url, 'rcnn'))
    bridge = CloudBridge(V2TailTransport(service.url, 'rcnn'), split=split)
    try:
        _, report = plain.process(_msg(types, frame),
                                  Decision(route=Route.SPLIT, split=FP16, deadline_ms=30000.0))
        assert report.status == 'failed' and 'runs no split head' in report.reason
        _, report = bridge.process(_msg(types, frame),
                                   Decision(route=Route.SPLIT, split=INT8, deadline_ms=30000.0))
        assert report.status == 'failed' and "not in this bridge's split_options" in \
            report.reason
        assert report.model == f'split:{INT8}'
    finally:
        split.close()


def test_split_settings_it_cannot_use_are_refused_at_start(
        service: InferenceService) -> None:
    with pytest.raises(ConfigError, match='need split_checkpoint'):
        CloudConfig.from_params({'url': service.url, 'split_options': [FP16]})
    with pytest.raises(ConfigError, match='arch@imgsz:point:encoding'):
        CloudConfig.from_params({'url': service.url, 'split_options': ['rcnn@320:body.3'],
                                 'split_checkpoint': CHECKPOINT})
    with pytest.raises(ConfigError, match='three tiers run in the simulator only'):
        CloudConfig.from_params({'url': service.url,
                                 'split_options': [f'{COMPACT_ARCH}@320:body.2/body.3:int8+zstd'],
                                 'split_checkpoint': CHECKPOINT})
    with pytest.raises(ConfigError, match='REST endpoint'):
        CloudConfig.from_params({'url': 'grpc://127.0.0.1:8081', 'split_options': [FP16],
                                 'split_checkpoint': CHECKPOINT})
    config = CloudConfig.from_params({'url': 'grpc://127.0.0.1:8081', 'split_options': [FP16],
                                      'split_checkpoint': CHECKPOINT,
                                      'split_url': service.url})
    assert config.splits() == (FP16,) and config.make_tail().model == 'rcnn-tail'
    with pytest.raises(ConfigError, match='http://host:port'):
        CloudConfig.from_params({'url': service.url, 'split_url': 'grpc://127.0.0.1:8081'})
    with pytest.raises(ConfigError, match="has no point 'body.99'"):
        _route(service, [f'{COMPACT_ARCH}@320:body.99:int8+zstd'])
    with pytest.raises(ConfigError, match='at least one split option'):
        _route(service, [])
