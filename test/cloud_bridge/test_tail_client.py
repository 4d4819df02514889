"""The bridge's tail client against the real builtin service on loopback (compact model)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Iterator

from adaptive_offload.errors import CloudError, ConfigError
from cloud_bridge.bridge_config import CloudConfig
from cloud_bridge.tail_client import V2TailTransport
import cv2
from helpers import compact_service, shapes_frame, SHAPES_RCNN
import numpy as np
import pytest
from rcnn_service.compact_rcnn import COMPACT_ARCH
from rcnn_service.rcnn_detector import image_tensor, RcnnDetector
from rcnn_service.rcnn_split import encode_payload, RcnnPayload, RcnnSplit
from rcnn_service.service import InferenceService
import torch

CHECKPOINT = SHAPES_RCNN
TOKEN = 'bridge-t0k'


@pytest.fixture(scope='module')
def service() -> Iterator[InferenceService]:
    with compact_service(tokens=(TOKEN,)) as svc:
        yield svc


@pytest.fixture(scope='module')
def frame() -> np.ndarray:
    return shapes_frame()


@pytest.fixture(scope='module')
def payload(frame: np.ndarray) -> RcnnPayload:
    """Run the robot's head (its own copy of the model) to the FPN."""
    split = RcnnSplit(RcnnDetector(COMPACT_ARCH, CHECKPOINT, input_size=320).model)
    with torch.inference_mode():
        return split.head([image_tensor(frame)], len(split.points) - 1)


def _config(service: InferenceService, tmp_path: Path) -> CloudConfig:
    token_file = tmp_path / 'token'
    token_file.write_text(TOKEN + '\n')
    return CloudConfig.from_params({'url': service.url, 'token_file': str(token_file),
                                    'robot_id': 'r9'})


def test_an_encoded_payload_gets_the_detections_the_image_gets(
        service: InferenceService, frame: np.ndarray, payload: RcnnPayload,
        tmp_path: Path) -> None:
    config = _config(service, tmp_path)
    image_transport = config.make_transport()
    tail = config.make_tail()
    try:
        expected = image_transport.infer(cv2.imencode('.png', frame)[1].tobytes(), 30.0)
        reply = tail.infer(encode_payload(payload, 'fp32', 'lz4'), 30.0)
    finally:
        image_transport.close()
        tail.close()
    assert tail.model == 'rcnn-tail'
    assert len(expected.labels) == 4 and reply.labels == expected.labels
    assert np.array_equal(reply.boxes, expected.boxes)
    assert np.array_equal(reply.scores, expected.scores)
    assert reply.request_ms > 0 and reply.server_ms is not None
    assert reply.bytes_sent > encode_payload(payload, 'fp32', 'lz4').tensor_bytes


def test_refusals_are_cloud_errors_as_for_images(service: InferenceService,
                                                 payload: RcnnPayload) -> None:
    tail = V2TailTransport(service.url, 'rcnn', token=TOKEN, encoding='int8')
    stranger = V2TailTransport(service.url, 'rcnn', token='wrong')
    try:
        assert len(tail.infer(payload, 30.0).labels) == 4
        with pytest.raises(CloudError) as err:
            stranger.infer(payload, 30.0)
        assert err.value.reason == 'http_401' and err.value.bytes_sent > 0
        wrong_point = dataclasses.replace(tail.wire(payload), point=99)
        with pytest.raises(CloudError, match='unknown split point 99') as err:
            tail.infer(wrong_point, 30.0)
        assert err.value.reason == 'http_400'
        with pytest.raises(CloudError, match='timeout'):
            tail.infer(payload, 0.0)
        unknown = V2TailTransport(service.url, 'nomodel', token=TOKEN)
        with pytest.raises(CloudError) as err:
            unknown.infer(payload, 30.0)
        assert err.value.reason == 'http_404'
        unknown.close()
    finally:
        tail.close()
        stranger.close()


def test_settings_it_cannot_use_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match='http://host:port'):
        V2TailTransport('grpc://127.0.0.1:8081', 'rcnn')
    with pytest.raises(ConfigError, match="unknown encoding/compression 'fp8'"):
        V2TailTransport('http://127.0.0.1:8080', 'rcnn', encoding='fp8')
    config = CloudConfig.from_params({'url': 'grpc://127.0.0.1:8081'})
    with pytest.raises(ConfigError, match='REST endpoint'):
        config.make_tail()
    rest = CloudConfig.from_params({'url': 'grpc://127.0.0.1:8081',
                                    'split_url': 'http://127.0.0.1:8080'})
    transport = rest.make_tail(encoding='fp32', compression='none')
    assert (transport.encoding, transport.compression) == ('fp32', 'none')
    transport.close()
