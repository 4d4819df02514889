"""A learned bottleneck as a split route: the robot's encoder, the service's decoder and tail.

The builtin service with the shipped compact R-CNN at 320 px and its shipped bottleneck (after
``body.3``); the robot's head is the bridge's :class:`SplitRoute`, loaded from the same files.
"""

from __future__ import annotations

from dataclasses import replace
import json
from pathlib import Path
import threading
from typing import Any, Iterator
import urllib.error
import urllib.request

from adaptive_offload.errors import ConfigError
from adaptive_offload.split_wire import encode_wire_tensor, request_body, split_from_encoded
from cloud_bridge.split_head import load_detector, SplitRoute
from cloud_bridge.tail_client import V2TailTransport
from helpers import head_payload, shapes_frame, SHAPES_RCNN
import numpy as np
import pytest
from rcnn_service.bottleneck import BLOB, load_bottleneck
from rcnn_service.compact_rcnn import COMPACT_ARCH
from rcnn_service.rcnn_detector import RcnnDetector
from rcnn_service.rcnn_split import encode_payload, RcnnSplit
from rcnn_service.service import InferenceService, ServiceConfig
import torch

BOTTLENECK = str(Path(SHAPES_RCNN).with_name('rcnn-shapes-bottleneck.pt'))
OPTION = f'{COMPACT_ARCH}@320:body.3:bottleneck'
TOKEN = 't0k'


def _serve(bottleneck: str = BOTTLENECK, checkpoint: str = SHAPES_RCNN) -> InferenceService:
    service = InferenceService(ServiceConfig(port=0, tokens=(TOKEN,), bottleneck=bottleneck),
                               RcnnDetector(COMPACT_ARCH, checkpoint, input_size=320))
    threading.Thread(target=service.serve_forever, daemon=True).start()
    return service


@pytest.fixture(scope='module')
def service() -> Iterator[InferenceService]:
    started = _serve()
    yield started
    started.shutdown()


def _route(service: InferenceService, bottleneck: str = BOTTLENECK) -> SplitRoute:
    return SplitRoute([OPTION], V2TailTransport(service.url, 'rcnn', token=TOKEN),
                      load_detector(SHAPES_RCNN), bottleneck=load_bottleneck(bottleneck))


def test_the_tail_metadata_names_the_bottleneck(service: InferenceService) -> None:
    assert service.tail is not None
    meta = service.tail.metadata('rcnn-tail', 1)['split']['bottleneck']
    assert (meta['point'], meta['crossing'], meta['input']) == (4, 'body.3', BLOB)
    assert meta['width'] == load_bottleneck(BOTTLENECK).spec.width
    assert len(meta['weights_sha256']) == 64


def test_the_code_is_a_few_kib_and_the_answer_is_what_decoder_and_tail_give_here(
        service: InferenceService) -> None:
    route = _route(service)
    frame = shapes_frame()
    try:
        payload = route.head(OPTION, frame)
        assert set(payload.blobs) == {BLOB} and payload.tensor_bytes < 8 << 10
        naive = encode_payload(head_payload(RcnnSplit(RcnnDetector(
            COMPACT_ARCH, SHAPES_RCNN, input_size=320).model), frame, 4), 'int8', 'zstd')
        assert payload.tensor_bytes < naive.tensor_bytes / 4
        reply = route.send(OPTION, payload, 30.0)
    finally:
        route.close()
    local = RcnnDetector(COMPACT_ARCH, SHAPES_RCNN, input_size=320)
    with torch.inference_mode():
        restored = load_bottleneck(BOTTLENECK).decode(payload)
        expected = local.detections(RcnnSplit(local.model).tail(restored))[0]
    assert len(expected.labels) >= 3 and reply.labels == expected.labels
    np.testing.assert_allclose(reply.boxes, expected.boxes, atol=1e-2)


def _post(service: InferenceService, body: bytes, length: int) -> tuple[int, str]:
    request = urllib.request.Request(
        f'{service.url}/v2/models/rcnn-tail/infer', data=body,
        headers={'Authorization': f'Bearer {TOKEN}', 'Inference-Header-Content-Length':
                 str(length), 'Content-Type': 'application/octet-stream'})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())['error']


def _code() -> Any:
    model = RcnnDetector(COMPACT_ARCH, SHAPES_RCNN, input_size=320).model
    with torch.inference_mode():
        return load_bottleneck(BOTTLENECK).encode(head_payload(RcnnSplit(model),
                                                               shapes_frame(), 4))


def test_a_code_the_service_cannot_take_is_a_400_that_says_why(
        service: InferenceService) -> None:
    code = _code()
    wire = split_from_encoded(code.meta, code.blobs)
    tensor = wire.tensors[0]
    other = encode_wire_tensor('body.3', np.zeros((1, 24, 30, 40), np.float32), 'int8')
    cases = [
        (replace(wire, point=3), 'crosses alone at split point 4'),
        (replace(wire, tensors=(tensor, other)), 'crosses alone at split point 4'),
        (replace(wire, tensors=(replace(tensor, shape=(1, 7, 5, 5)),)),
         'needs INT8 of shape'),
        (replace(wire, tensors=(replace(tensor, data=tensor.data[:-9]),)), 'tensor bottleneck'),
    ]
    for bad, message in cases:
        body, length = request_body(bad)
        status, error = _post(service, body, length)
        assert status == 400 and message in error, error


def test_a_service_without_a_bottleneck_refuses_a_code_naming_the_flag() -> None:
    plain = _serve(bottleneck='')
    try:
        assert plain.tail is not None
        assert plain.tail.metadata('rcnn-tail', 1)['split']['bottleneck'] is None
        body, length = request_body(split_from_encoded(_code().meta, _code().blobs))
        status, error = _post(plain, body, length)
        route = _route(plain)
        try:
            with pytest.raises(ConfigError, match='split_bottleneck'):
                route.send(OPTION, route.head(OPTION, shapes_frame()), 30.0)
        finally:
            route.close()
    finally:
        plain.shutdown()
    assert status == 400 and '--bottleneck' in error


def test_a_bottleneck_of_other_weights_is_refused_by_the_service_and_by_the_robot(
        tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match='retrain it'):
        _serve(checkpoint='')  # random weights: the shipped bottleneck was not trained for them
    with pytest.raises(ConfigError, match='other .* weights'):
        SplitRoute([OPTION], V2TailTransport('http://127.0.0.1:1', 'rcnn'), load_detector(''),
                   bottleneck=load_bottleneck(BOTTLENECK))


def test_a_bottleneck_option_without_a_bottleneck_is_refused_at_start() -> None:
    with pytest.raises(ConfigError, match='needs split_bottleneck'):
        SplitRoute([OPTION], V2TailTransport('http://127.0.0.1:1', 'rcnn'),
                   load_detector(SHAPES_RCNN))
    with pytest.raises(ConfigError, match='trained for split point 4'):
        SplitRoute([f'{COMPACT_ARCH}@320:body.2:bottleneck'],
                   V2TailTransport('http://127.0.0.1:1', 'rcnn'), load_detector(SHAPES_RCNN),
                   bottleneck=load_bottleneck(BOTTLENECK))


def test_the_robots_report_says_a_robot_with_another_bottleneck_is_refused(
        service: InferenceService, tmp_path: Path) -> None:
    other = load_bottleneck(BOTTLENECK)
    with torch.no_grad():
        for weight in other.net.parameters():
            weight.mul_(1.01)
    path = other.save(tmp_path / 'other.pt')
    route = _route(service, str(path))
    try:
        with pytest.raises(ConfigError, match='decodes bottleneck'):
            route.send(OPTION, route.head(OPTION, shapes_frame()), 30.0)
    finally:
        route.close()
