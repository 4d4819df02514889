"""The split route of the bridge: the head here, the tail on the real service on loopback."""

from __future__ import annotations

from pathlib import Path
import re
import threading
from typing import Any, Iterator, Mapping

from adaptive_offload.conversions import frame_to_message, MessageTypes
from adaptive_offload.datatypes import Decision, Route
from adaptive_offload.errors import ConfigError
from adaptive_offload.inference_transport import CloudReply
from adaptive_offload.split_wire import FORWARD_ENCODING, FORWARD_TO
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
from rcnn_service.service_config import ServiceConfig

CHECKPOINT = SHAPES_RCNN
FP16 = f'{COMPACT_ARCH}@320:body.3:fp16+zstd'
INT8 = f'{COMPACT_ARCH}@320:body.3:int8+lz4'
THREE = f'{COMPACT_ARCH}@320:body.2/body.3:int8+zstd'
TO_END = f'{COMPACT_ARCH}@320:body.2/end:fp16+zstd'


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


class FakeTail:
    """A tail model that answers with the metadata it is given and records what it is sent."""

    def __init__(self, metadata: Mapping[str, Any]) -> None:
        self._metadata = metadata
        self.sent: list[tuple[str, Mapping[str, Any] | None]] = []
        self.metadata_reads = 0
        self.closed = False

    def metadata(self, timeout_s: float) -> Mapping[str, Any]:
        self.metadata_reads += 1
        return self._metadata

    def infer(self, payload: Any, timeout_s: float,
              parameters: Mapping[str, Any] | None = None) -> CloudReply:
        self.sent.append((payload.meta['point'], parameters))
        return CloudReply(np.zeros((0, 4)), np.zeros(0), (), 1.0, 100)

    def close(self) -> None:
        self.closed = True


@pytest.fixture(scope='module')
def tail_metadata(service: InferenceService) -> dict[str, Any]:
    tail = V2TailTransport(service.url, 'rcnn')
    try:
        return tail.metadata(30.0)
    finally:
        tail.close()


def _with(metadata: Mapping[str, Any], **split: Any) -> dict[str, Any]:
    return {**metadata, 'split': {**metadata['split'], **split}}


def _send(route: SplitRoute, option: str, frame: np.ndarray) -> CloudReply:
    return route.send(option, route.head(option, frame), 30.0)


def test_three_tier_options_go_to_the_middle_device_with_their_second_cut(
        tail_metadata: dict[str, Any], frame: np.ndarray) -> None:
    cloud, middle = FakeTail(tail_metadata), FakeTail(_with(tail_metadata, forwards=True))
    route = SplitRoute([FP16, THREE, TO_END], cloud, load_detector(CHECKPOINT), middle)
    for option in (THREE, TO_END, FP16, THREE):
        _send(route, option, frame)
    # body.2 is point 3 of the compact R-CNN, body.3 point 4.
    assert middle.sent == [(3, {FORWARD_TO: 'body.3', FORWARD_ENCODING: 'int8+zstd'}),
                           (3, None), (3, {FORWARD_TO: 'body.3', FORWARD_ENCODING: 'int8+zstd'})]
    assert cloud.sent == [(4, None)]
    assert (middle.metadata_reads, cloud.metadata_reads) == (2, 1)  # once per option
    route.close()
    assert middle.closed and cloud.closed


def test_a_middle_device_that_forwards_nowhere_takes_only_options_to_the_end(
        tail_metadata: dict[str, Any], frame: np.ndarray) -> None:
    middle = FakeTail(tail_metadata)  # a service started without --upstream
    route = SplitRoute([THREE, TO_END], FakeTail(tail_metadata), load_detector(CHECKPOINT),
                       middle)
    for _ in range(2):  # refused from the cached check the second time
        with pytest.raises(ConfigError, match='forwards to no cloud: start its service with '
                                              '--upstream'):
            _send(route, THREE, frame)
    _send(route, TO_END, frame)
    assert middle.sent == [(3, None)] and middle.metadata_reads == 2


def test_a_middle_device_of_other_weights_or_points_is_refused(
        tail_metadata: dict[str, Any], frame: np.ndarray) -> None:
    other = FakeTail(_with(tail_metadata, forwards=True, weights_sha256='0' * 64))
    route = SplitRoute([THREE, TO_END], FakeTail(tail_metadata), load_detector(CHECKPOINT),
                       other)
    for option in (THREE, TO_END):
        with pytest.raises(ConfigError, match="the middle device runs weights '0000"):
            _send(route, option, frame)
    points = [p for p in tail_metadata['split']['points'] if p['name'] != 'body.3']
    cut = FakeTail(_with(tail_metadata, forwards=True, points=points))
    route = SplitRoute([THREE], FakeTail(tail_metadata), load_detector(CHECKPOINT), cut)
    with pytest.raises(ConfigError, match="the middle device has no point 'body.3' at 4"):
        _send(route, THREE, frame)
    assert other.sent == cut.sent == []


def test_three_tier_options_a_route_cannot_run_are_refused_at_construction(
        tail_metadata: dict[str, Any]) -> None:
    loader, tail = load_detector(CHECKPOINT), FakeTail(tail_metadata)
    with pytest.raises(ConfigError, match='split_middle_url'):
        SplitRoute([FP16, THREE], tail, loader)
    for cuts in ('body.3/body.2', 'body.3/body.3', 'body.2/body.99'):
        with pytest.raises(ConfigError, match='must be a split point after'):
            SplitRoute([f'{COMPACT_ARCH}@320:{cuts}:int8+zstd'], tail, loader, tail)


def test_three_tier_settings_need_a_middle_url(service: InferenceService) -> None:
    base = {'url': service.url, 'split_checkpoint': CHECKPOINT}
    three = re.escape(f'{THREE!r} has three tiers: set split_middle_url')
    with pytest.raises(ConfigError, match=three):
        CloudConfig.from_params({**base, 'split_options': [FP16, THREE]})
    with pytest.raises(ConfigError, match='http://host:port'):
        CloudConfig.from_params({**base, 'split_options': [THREE],
                                 'split_middle_url': 'grpc://127.0.0.1:8081'})
    config = CloudConfig.from_params({**base, 'split_options': [FP16, THREE],
                                      'split_middle_url': 'http://192.0.2.7:8080'})
    middle = config.make_middle()
    assert middle is not None and middle.model == 'rcnn-tail'
    middle.close()
    two = CloudConfig.from_params({**base, 'split_options': [FP16],
                                   'split_middle_url': 'http://192.0.2.7:8080'})
    assert two.make_middle() is None


def test_a_three_tier_chain_answers_what_the_whole_model_answers(
        service: InferenceService, frame: np.ndarray, types: MessageTypes) -> None:
    from offload_runtime.upstream_tail import UpstreamTail

    expected = RcnnDetector(COMPACT_ARCH, CHECKPOINT, input_size=320).detect([frame])[0]
    middle_service = InferenceService(
        ServiceConfig(port=0), RcnnDetector(COMPACT_ARCH, CHECKPOINT, input_size=320),
        upstream=UpstreamTail(service.url, 'rcnn'))
    threading.Thread(target=middle_service.serve_forever, daemon=True).start()
    config = CloudConfig.from_params({'url': service.url, 'split_options': [THREE, TO_END],
                                      'split_checkpoint': CHECKPOINT,
                                      'split_middle_url': middle_service.url})
    split = config.make_split()
    assert split is not None
    bridge = config.make_bridge(split=split)
    try:
        for option in (THREE, TO_END):
            dets, report = bridge.process(_msg(types, frame),
                                          Decision(route=Route.SPLIT, split=option,
                                                   deadline_ms=30000.0))
            assert report.status == 'ok', report.reason
            assert sorted(d.class_name for d in dets.detections) == sorted(expected.labels)
    finally:
        split.close()
        middle_service.shutdown()
