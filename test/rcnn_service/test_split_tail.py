"""The tail model on the builtin service, on loopback: a robot's head plus the service's tail.

The shipped compact R-CNN at 320 px (a 320x240 frame is read as is) on both sides: the robot's
head is a second detector loaded from the same checkpoint, as a robot would load it. In fp32 the
tail's answer is the image endpoint's, exactly; fp16 and int8 keep the detections within the
bounds ``test_rcnn_split`` measured.
"""

from __future__ import annotations

import base64
from concurrent.futures import ThreadPoolExecutor
import json
from pathlib import Path
import re
import threading
from typing import Any, Iterator
import urllib.error
import urllib.request

from adaptive_offload.inference_transport import CloudReply
from adaptive_offload.split_wire import (encode_split, encode_wire_tensor, request_body,
                                         SplitTensors, tail_model_name, weights_digest)
from cloud_bridge.tail_client import V2TailTransport
from cloud_bridge.transport import V2RestTransport
import cv2
from helpers import head_payload, image_answer, shapes_frame
import numpy as np
import pytest
from rcnn_service.compact_rcnn import COMPACT_ARCH
from rcnn_service.guard import RequestError
from rcnn_service.rcnn_detector import Detections, RcnnDetector
from rcnn_service.rcnn_split import RcnnPayload, RcnnSplit
from rcnn_service.service import InferenceService, ServiceConfig
from rcnn_service.split_tail import SplitTail
import torch

CHECKPOINT = str(Path(__file__).resolve().parents[2] / 'models' / 'rcnn-shapes.pt')
TOKEN = 't0k'
INPUT_SIZE = 320
POINTS = 15  # transform, 13 MobileNetV3-Small stages, FPN
# (least IoU of a matched detection, largest score difference), as test_rcnn_split.
TOLERANCES = {'fp16': (0.99, 0.005), 'int8': (0.9, 0.05)}


def _detector() -> RcnnDetector:
    return RcnnDetector(COMPACT_ARCH, CHECKPOINT, input_size=INPUT_SIZE)


def _start(detector: RcnnDetector, **settings: Any) -> InferenceService:
    service = InferenceService(ServiceConfig(port=0, tokens=(TOKEN,), max_image_side=1000,
                                             **settings), detector)
    threading.Thread(target=service.serve_forever, daemon=True).start()
    return service


@pytest.fixture(scope='module')
def robot_model() -> Any:
    """Load the robot's copy of the model from the same checkpoint."""
    return _detector().model


@pytest.fixture(scope='module')
def head(robot_model: Any) -> RcnnSplit:
    """Split the robot's copy of the model."""
    return RcnnSplit(robot_model)


@pytest.fixture(scope='module')
def service() -> Iterator[InferenceService]:
    svc = _start(_detector())
    yield svc
    svc.shutdown()


@pytest.fixture(scope='module')
def frame() -> np.ndarray:
    return shapes_frame()


@pytest.fixture(scope='module')
def reference(service: InferenceService, frame: np.ndarray) -> CloudReply:
    """Return the image endpoint's answer for the frame (PNG: decoded exactly)."""
    reply = image_answer(service.url, frame, TOKEN, 30)
    assert len(reply.labels) == 4
    return reply


def _payload(head: RcnnSplit, frame: np.ndarray, k: int) -> RcnnPayload:
    return head_payload(head, frame, k)


def _tail(service: InferenceService, encoding: str = 'fp32') -> V2TailTransport:
    return V2TailTransport(service.url, 'rcnn', token=TOKEN, robot_id='r1', encoding=encoding)


def _post(service: InferenceService, body: bytes, header_length: int | None,
          token: str = TOKEN, model: str = 'rcnn-tail') -> tuple[int, dict[str, Any]]:
    headers = {'Authorization': f'Bearer {token}', 'Content-Type': 'application/octet-stream'}
    if header_length is not None:
        headers['Inference-Header-Content-Length'] = str(header_length)
    request = urllib.request.Request(f'{service.url}/v2/models/{model}/infer', data=body,
                                     headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def _get(service: InferenceService, path: str, token: str = TOKEN) -> tuple[int, Any]:
    request = urllib.request.Request(service.url + path,
                                     headers={'Authorization': f'Bearer {token}'})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def _matched(reference: CloudReply, reply: CloudReply) -> tuple[float, float]:
    """Return the least IoU and the largest score difference of same-label matches."""
    from torchvision.ops import box_iou

    same = torch.tensor([[a == b for b in reply.labels] for a in reference.labels])
    iou = box_iou(torch.from_numpy(reference.boxes), torch.from_numpy(reply.boxes)) * same
    best, index = iou.max(1)
    scores = np.abs(reference.scores - reply.scores[index.numpy()])
    return float(best.min()), float(scores.max())


def test_head_plus_tail_is_the_image_endpoint_exactly_in_fp32(
        service: InferenceService, head: RcnnSplit, frame: np.ndarray,
        reference: CloudReply) -> None:
    answered = service.tail_counts['ok']
    tail = _tail(service)
    try:
        for k in range(POINTS):
            reply = tail.infer(_payload(head, frame, k), timeout_s=30)
            assert np.array_equal(reply.boxes, reference.boxes), k
            assert np.array_equal(reply.scores, reference.scores), k
            assert reply.labels == reference.labels, k
            assert reply.server_ms is not None and reply.queue_ms is not None
    finally:
        tail.close()
    assert service.tail_counts['ok'] == answered + POINTS
    assert re.search(r'^adaptive_offload_tail_requests_total\{outcome="ok"\} [1-9]',
                     service.metrics(), re.M)


@pytest.mark.parametrize('encoding', ['fp16', 'int8'])
def test_lossy_tensors_keep_the_detections(service: InferenceService, head: RcnnSplit,
                                           frame: np.ndarray, reference: CloudReply,
                                           encoding: str) -> None:
    least_iou, score_error = TOLERANCES[encoding]
    tail = _tail(service, encoding)
    try:
        for k in (0, 4, 9, 14):
            reply = tail.infer(_payload(head, frame, k), timeout_s=30)
            assert len(reply.labels) == len(reference.labels), k
            iou, score = _matched(reference, reply)
            assert iou >= least_iou and score <= score_error, (k, iou, score)
            assert reply.bytes_sent < tail.wire(_payload(head, frame, k)).tensor_bytes + 4096
    finally:
        tail.close()


def test_the_metadata_lists_the_split_points_and_the_weights(
        service: InferenceService, robot_model: Any) -> None:
    status, meta = _get(service, '/v2/models/rcnn-tail')
    assert status == 200 and meta['name'] == 'rcnn-tail'
    split = meta['split']
    assert split['arch'] == COMPACT_ARCH
    assert split['weights_sha256'] == weights_digest(robot_model.state_dict())
    assert (split['min_size'], split['max_size'], split['size_divisible']) == (320, 320, 32)
    assert split['datatypes'] == ['FP32', 'FP16', 'INT8']
    assert [p['index'] for p in split['points']] == list(range(POINTS))
    assert split['points'][5] == {'index': 5, 'name': 'body.4', 'crossing': [
        {'name': 'body.3', 'channels': 24, 'stride': 8},
        {'name': 'body.4', 'channels': 40, 'stride': 16}]}
    assert split['points'][14]['crossing'][-1] == {'name': 'fpn.pool', 'channels': 128,
                                                   'stride': 64}
    assert {'name': 'body.12', 'datatype': 'FP32', 'shape': [1, 576, -1, -1]} in meta['inputs']
    assert [o['name'] for o in meta['outputs']] == ['boxes', 'scores', 'labels']
    assert _get(service, '/v2/models/rcnn-tail/versions/1')[0] == 200
    assert _get(service, '/v2/models/rcnn-tail/versions/2')[0] == 404


def test_the_tail_needs_the_token_the_image_model_needs(
        service: InferenceService, head: RcnnSplit, frame: np.ndarray) -> None:
    body, length = request_body(encode_split(_payload(head, frame, 14), 'fp16'))
    for token in ('', 'wrong'):
        status, reply = _post(service, body, length, token=token)
        assert status == 401 and 'token' in reply['error']
        assert _get(service, '/v2/models/rcnn-tail', token=token)[0] == 401
    with urllib.request.urlopen(service.url + '/v2/models/rcnn-tail/ready', timeout=10) as r:
        assert r.status == 200 and json.loads(r.read()) == {'ready': True}
    assert _post(service, body, length)[0] == 200


def _valid(head: RcnnSplit, frame: np.ndarray, k: int = 5,
           encoding: str = 'fp32') -> tuple[bytes, int]:
    return request_body(encode_split(_payload(head, frame, k), encoding, 'zstd'),
                        {'robot_id': 'r1'})


def _edit_header(body: bytes, length: int, edit: Any) -> tuple[bytes, int]:
    header = json.loads(body[:length])
    edit(header)
    head = json.dumps(header).encode()
    return head + body[length:], len(head)


def _params(**values: Any) -> Any:
    return lambda h: h['parameters'].update(values)


def _input(index: int, **values: Any) -> Any:
    return lambda h: h['inputs'][index].update(values)


@pytest.mark.parametrize(('edit', 'message'), [
    (_params(point=99), 'unknown split point 99: this model splits at 0..14'),
    (_params(point='5'), 'point must be an integer'),
    (_input(0, datatype='FP64'), "tensor body.3: datatype 'FP64', not one of FP32, FP16, INT8"),
    (_input(0, shape=[1, 16, 32, 40]), r'tensor body.3 of shape [1, 16, 32, 40]: split point 5 '
                                       r'at padded size 256x320 needs [1, 24, 32, 40]'),
    (_input(1, shape=[1, 40, 17, 20]), 'needs [1, 40, 16, 20]'),
    (_input(1, shape=[40, 16, 20]), 'needs [1, 40, 16, 20]'),
    (_params(padded_size='288x320'), 'image size 240x320 does not pad to padded size 288x320'),
    (_params(padded_size='250x320'), 'does not pad to padded size 250x320'),
    (_params(original_sizes='240x100'), 'is not original size 240x100 resized'),
    (_params(original_sizes='2400x3200'), 'over the limits'),
    (_params(padded_size='99968x320'), 'over the limits'),
    (_params(image_sizes='240x320,240x320', original_sizes='240x320,240x320'),
     'one image per request'),
    (_params(image_sizes='0x320'), 'image_sizes must be HxW'),
    (_params(budget_us=-1), 'budget_us must be a non-negative integer'),
    (_params(robot_id='a robot; drop table'), 'robot_id must be'),
    (_input(0, data=[0.0]), 'not JSON'),
    (lambda h: h.update(outputs=[{'name': 'bogus'}]), "no output named 'bogus'"),
])
def test_bad_requests_get_a_400_that_names_the_problem(
        service: InferenceService, head: RcnnSplit, frame: np.ndarray, edit: Any,
        message: str) -> None:
    status, reply = _post(service, *_edit_header(*_valid(head, frame), edit))
    assert status == 400 and message in reply['error'], reply
    assert _post(service, *_valid(head, frame))[0] == 200  # and the service serves on


def _without(body: bytes, length: int, name: str) -> tuple[bytes, int]:
    """Drop one tensor, its header entry and its bytes."""
    header = json.loads(body[:length])
    data, offset = {}, length
    for item in header['inputs']:
        size = item['parameters']['binary_data_size']
        data[item['name']] = body[offset:offset + size]
        offset += size
    header['inputs'] = [i for i in header['inputs'] if i['name'] != name]
    head = json.dumps(header).encode()
    return head + b''.join(data[i['name']] for i in header['inputs']), len(head)


def _with_tensor(body: bytes, length: int, tensor: Any) -> tuple[bytes, int]:
    """Add one more tensor (last) to a valid body."""
    extra = request_body(SplitTensors(0, (1, 1), ((1, 1),), ((1, 1),), (tensor,)))
    header = json.loads(body[:length])
    header['inputs'] += json.loads(extra[0][:extra[1]])['inputs']
    head = json.dumps(header).encode()
    return head + body[length:] + extra[0][extra[1]:], len(head)


def test_missing_extra_corrupt_truncated_and_non_finite_tensors_are_400s(
        service: InferenceService, head: RcnnSplit, frame: np.ndarray) -> None:
    body, length = _valid(head, frame)
    tensors = dict(_payload(head, frame, 5).tensors)
    tensors['body.3'] = tensors['body.3'].clone()
    tensors['body.3'][0, 0, 0, 0] = float('nan')
    nan = RcnnPayload(5, tensors, (256, 320), ((240, 320),), ((240, 320),))
    corrupt = bytearray(body)
    corrupt[length] ^= 0xFF  # the magic number of body.3's zstd frame
    cases = {
        "missing ['body.3'], not taken []": _without(body, length, 'body.3'),
        "missing [], not taken ['body.9']": _with_tensor(
            body, length, encode_wire_tensor('body.9', np.zeros((1, 96, 8, 10), np.float32))),
        'tensor body.3 is given twice': _with_tensor(
            body, length, encode_wire_tensor('body.3', np.zeros((1, 24, 32, 40), np.float32))),
        'tensor body.3: tensor_corrupt': (bytes(corrupt), length),
        'tensor_truncated: tensor body.4': (body[:-5], length),
        '5 bytes follow the tensors': (body + bytes(5), length),
        'tensor body.3: tensor_range: holds NaN or infinity': request_body(
            encode_split(nan, 'fp32', 'lz4')),
        'Inference-Header-Content-Length header is missing': (body, None),
        'is not within the body': (body, len(body) + 1),
        'the JSON header does not parse': (body, length - 3),
    }
    for message, (data, header_length) in cases.items():
        status, reply = _post(service, data, header_length)
        assert status == 400 and message in reply['error'], (message, reply)
    assert _post(service, *_valid(head, frame))[0] == 200
    assert service.tail_counts['rejected_400'] >= len(cases)


def test_a_bad_header_length_is_refused_before_the_body_is_read(
        service: InferenceService) -> None:
    request = urllib.request.Request(
        f'{service.url}/v2/models/rcnn-tail/infer', data=b'{}', headers={
            'Authorization': f'Bearer {TOKEN}', 'Inference-Header-Content-Length': 'abc'})
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(request, timeout=10)
    assert err.value.code == 400 and 'bad Inference-Header-Content-Length' in \
        json.loads(err.value.read())['error']


def test_tensors_over_the_decoded_size_cap_are_refused_before_decoding(
        head: RcnnSplit, frame: np.ndarray) -> None:
    svc = _start(_detector(), max_tail_bytes=1_000_000)  # body.0 at 256x320: 1.3 MB
    try:
        status, reply = _post(svc, *_valid(head, frame, k=1))
        assert status == 400 and 'the tensors decode to 1310720 bytes, over the cap of 1000000' \
            in reply['error']
        assert _post(svc, *_valid(head, frame, k=14, encoding='int8'))[0] == 200
    finally:
        svc.shutdown()


class _GatedDetector(RcnnDetector):
    """The compact detector, whose image batches wait at a gate while it is closed."""

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.gate.set()
        self.started = threading.Event()
        super().__init__(COMPACT_ARCH, CHECKPOINT, input_size=INPUT_SIZE)

    def detect(self, images: list[np.ndarray]) -> list[Detections]:
        self.started.set()
        if not self.gate.wait(30):
            raise TimeoutError('the test never opened the gate')
        return super().detect(images)


def test_an_over_budget_tail_request_is_refused_like_an_image_request(
        head: RcnnSplit, frame: np.ndarray) -> None:
    detector = _GatedDetector()
    svc = _start(detector, max_batch=1)
    pool = ThreadPoolExecutor(1)
    image = V2RestTransport(svc.url, 'rcnn', token=TOKEN, robot_id='busy')
    try:
        detector.started.clear()
        detector.gate.clear()
        busy = pool.submit(image.infer, cv2.imencode('.png', frame)[1].tobytes(), 30.0)
        assert detector.started.wait(30)  # the model is busy: admission plans with its times
        tail = _post(svc, *_edit_header(*_valid(head, frame, k=14), _params(budget_us=1)))
        image_body = json.dumps({'parameters': {'robot_id': 'r2', 'budget_us': 1}, 'inputs': [{
            'name': 'image', 'datatype': 'BYTES', 'shape': [1],
            'data': [base64.b64encode(cv2.imencode('.png', frame)[1]).decode()]}]}).encode()
        request = urllib.request.Request(f'{svc.url}/v2/models/rcnn/infer', data=image_body,
                                         headers={'Authorization': f'Bearer {TOKEN}'})
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(request, timeout=30)
        image_refusal = (err.value.code, json.loads(err.value.read()))
        for status, reply in (tail, image_refusal):
            assert status == 503 and 'overloaded (budget)' in reply['error']
            assert reply['parameters']['reason'] == 'budget'
            assert reply['parameters']['retry_after_us'] > 0
        detector.gate.set()
        assert len(busy.result(30).labels) == 4
        samples = re.findall(r'^adaptive_offload_refusals_total\{reason="budget",robot="(\S+)"\} '
                             r'(\S+)$', svc.metrics(), re.M)
        assert sorted(samples) == [('r1', '1.0'), ('r2', '1.0')]
        assert svc.tail_counts['rejected_503'] == 1
    finally:
        detector.gate.set()
        pool.shutdown()
        image.close()
        svc.shutdown()


class _NoModel(RcnnDetector):
    """A stand-in detector with no torch model: nothing to split."""

    def __init__(self) -> None:
        pass

    def detect(self, images: list[np.ndarray]) -> list[Detections]:
        return [Detections(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), ())
                for _ in images]


def test_a_model_that_does_not_split_serves_no_tail() -> None:
    svc = _start(_NoModel())
    try:
        assert svc.tail is None and svc.tail_name == tail_model_name('rcnn')
        assert _get(svc, '/v2/models/rcnn-tail')[0] == 404
        assert _post(svc, b'{}', 2)[0] == 404
        assert _get(svc, '/v2/models/rcnn')[0] == 200
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(svc.url + '/v2/models/rcnn-tail/ready', timeout=10)
        assert err.value.code == 503
    finally:
        svc.shutdown()


def test_a_shape_torch_rejects_is_the_clients_fault(service: InferenceService,
                                                    head: RcnnSplit, frame: np.ndarray) -> None:
    """Past the checks (here bypassed), what the model refuses is still a 400, not a 500."""
    tail = service.tail
    assert isinstance(tail, SplitTail)
    good = _payload(head, frame, 5).tensors
    wrong = RcnnPayload(5, {'body.3': good['body.3'], 'body.4': good['body.4'][:, :7]},
                        (256, 320), ((240, 320),), ((240, 320),))
    with pytest.raises(RequestError, match='the model cannot run on these tensors') as err:
        tail.run(wrong)
    assert err.value.status == 400
    padded = RcnnPayload(5, dict(good), (256, 320), ((240, 320), (240, 320)), ((240, 320),))
    with pytest.raises(RequestError, match='the tail refused the tensors') as err:
        tail.run(padded)
    assert err.value.status == 400
