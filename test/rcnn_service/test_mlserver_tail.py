"""The split tail on the MLServer runtime: a robot's head, the tail through MLServer's REST port.

One MLServer service of the shipped compact R-CNN at 320 px for the whole module (each start
costs seconds); the robot's head is a second detector loaded from the same checkpoint.
"""

from __future__ import annotations

import http.client
import json
import re
from typing import Any, Callable, Iterator
import urllib.error
import urllib.request

from adaptive_offload.conversions import frame_to_message, MessageTypes
from adaptive_offload.datatypes import Decision, Route
from adaptive_offload.errors import CloudError
from adaptive_offload.inference_transport import CloudReply
from adaptive_offload.split_wire import encode_split, request_body, weights_digest
from cloud_bridge.bridge import CloudBridge
from cloud_bridge.split_head import load_detector, SplitRoute
from cloud_bridge.tail_client import V2TailTransport
from cloud_bridge.transport import V2GrpcTransport
import cv2
from helpers import head_payload, image_answer, shapes_frame, SHAPES_RCNN
import numpy as np
import pytest
from rcnn_service.compact_rcnn import COMPACT_ARCH
from rcnn_service.rcnn_detector import RcnnDetector
from rcnn_service.rcnn_split import RcnnPayload, RcnnSplit
from rcnn_service.split_tail import SplitTail
from test_mlserver_runtime import Server, TOKEN
import torch

MAX_BODY = 2_000_000
FP16 = f'{COMPACT_ARCH}@320:body.3:fp16+zstd'
# (least IoU of a matched detection, largest score difference), as test_split_tail.
FP16_TOLERANCE = (0.99, 0.005)


@pytest.fixture(scope='module')
def server() -> Iterator[Server]:
    srv = Server(args=('--arch', COMPACT_ARCH, '--checkpoint', SHAPES_RCNN, '--input-size',
                       '320', '--max-request-bytes', str(MAX_BODY), '--max-image-side', '1000',
                       '--score-threshold', '0.5'))
    yield srv
    srv.kill()


@pytest.fixture(scope='module')
def robot() -> RcnnDetector:
    """Load the robot's copy of the model from the same checkpoint."""
    return RcnnDetector(COMPACT_ARCH, SHAPES_RCNN, input_size=320)


@pytest.fixture(scope='module')
def head(robot: RcnnDetector) -> RcnnSplit:
    return RcnnSplit(robot.model)


@pytest.fixture(scope='module')
def frame() -> np.ndarray:
    return shapes_frame()


@pytest.fixture(scope='module')
def reference(server: Server, frame: np.ndarray) -> CloudReply:
    """Return the image model's answer for the frame (PNG: decoded exactly)."""
    reply = image_answer(server.rest_url, frame, TOKEN, 60)
    assert len(reply.labels) == 4
    return reply


def _payload(head: RcnnSplit, frame: np.ndarray, k: int) -> RcnnPayload:
    return head_payload(head, frame, k)


def _request(server: Server, path: str, body: bytes | None = None,
             headers: dict[str, str] | None = None, token: str = TOKEN) -> tuple[int, Any]:
    request = urllib.request.Request(f'{server.rest_url}{path}', data=body,
                                     headers={'Authorization': f'Bearer {token}',
                                              **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b'{}')


def _post_tail(server: Server, body: bytes, header_length: int | None,
               token: str = TOKEN) -> tuple[int, Any]:
    headers = {'Content-Type': 'application/octet-stream'}
    if header_length is not None:
        headers['Inference-Header-Content-Length'] = str(header_length)
    return _request(server, '/v2/models/rcnn-tail/infer', body, headers, token)


def _edited(body: bytes, length: int, edit: Callable[[dict[str, Any]], None]
            ) -> tuple[bytes, int]:
    """Return a tail request body whose JSON header ``edit`` changed, and its header length."""
    header = json.loads(body[:length])
    edit(header)
    head = json.dumps(header).encode()
    return head + body[length:], len(head)


def _matched(reference: CloudReply, reply: CloudReply) -> tuple[float, float]:
    from torchvision.ops import box_iou

    same = torch.tensor([[a == b for b in reply.labels] for a in reference.labels])
    iou = box_iou(torch.from_numpy(reference.boxes), torch.from_numpy(reply.boxes)) * same
    best, index = iou.max(1)
    return float(best.min()), float(np.abs(reference.scores - reply.scores[index.numpy()]).max())


def _metrics(server: Server) -> str:
    with urllib.request.urlopen(f'http://127.0.0.1:{server.metrics}/metrics',
                                timeout=10) as reply:
        return str(reply.read().decode())


def test_head_plus_tail_answers_what_the_image_model_answers(
        server: Server, head: RcnnSplit, frame: np.ndarray, reference: CloudReply) -> None:
    exact = V2TailTransport(server.rest_url, 'rcnn', token=TOKEN, robot_id='r1',
                            encoding='fp32')
    lossy = V2TailTransport(server.rest_url, 'rcnn', token=TOKEN, robot_id='r1',
                            encoding='fp16')
    try:
        for k in (0, 4, 14):
            reply = exact.infer(_payload(head, frame, k), timeout_s=60)
            assert np.array_equal(reply.boxes, reference.boxes), k
            assert np.array_equal(reply.scores, reference.scores), k
            assert reply.labels == reference.labels, k
            assert reply.server_ms is not None and reply.queue_ms is not None
            iou, score = _matched(reference, lossy.infer(_payload(head, frame, k), 60))
            assert iou >= FP16_TOLERANCE[0] and score <= FP16_TOLERANCE[1], (k, iou, score)
    finally:
        exact.close()
        lossy.close()
    assert re.search(r'^adaptive_offload_tail_requests_total\{outcome="ok"\} [1-9]',
                     _metrics(server), re.M)


def test_the_bridge_checks_the_metadata_and_runs_a_split_decision(
        server: Server, frame: np.ndarray, types: MessageTypes, reference: CloudReply) -> None:
    def route(checkpoint: str) -> SplitRoute:
        return SplitRoute([FP16], V2TailTransport(server.rest_url, 'rcnn', TOKEN),
                          load_detector(checkpoint))

    message = frame_to_message(types, np.ascontiguousarray(frame[:, :, ::-1]), 7, 'cam',
                               'rgb8')
    decision = Decision(route=Route.SPLIT, split=FP16, deadline_ms=60000.0)
    for checkpoint in (SHAPES_RCNN, ''):  # '': random weights, another digest
        split = route(checkpoint)
        bridge = CloudBridge(V2TailTransport(server.rest_url, 'rcnn', TOKEN), split=split)
        try:
            dets, report = bridge.process(message, decision)
        finally:
            split.close()
        if checkpoint:
            assert report.status == 'ok', report.reason
            assert sorted(d.class_name for d in dets.detections) == sorted(reference.labels)
        else:
            assert dets is None and 'the service runs weights' in report.reason


def test_the_metadata_is_the_builtin_runtimes(server: Server, robot: RcnnDetector) -> None:
    status, meta = _request(server, '/v2/models/rcnn-tail')
    assert status == 200
    assert meta == SplitTail(robot).metadata('rcnn-tail', 256 << 20)
    assert meta['split']['weights_sha256'] == weights_digest(robot.model.state_dict())
    assert _request(server, '/v2/models/rcnn-tail/versions/1')[0] == 200
    assert 400 <= _request(server, '/v2/models/rcnn-tail/versions/2')[0] < 500
    with urllib.request.urlopen(f'{server.rest_url}/v2/models/rcnn-tail/ready',
                                timeout=10) as reply:  # open, as the image model's
        assert reply.status == 200


def test_the_tail_needs_the_token_the_image_model_needs(
        server: Server, head: RcnnSplit, frame: np.ndarray) -> None:
    body, length = request_body(encode_split(_payload(head, frame, 14), 'fp16'))
    for token in ('', 'wrong'):
        status, reply = _post_tail(server, body, length, token=token)
        assert status == 401 and 'token' in reply['error']
        assert _request(server, '/v2/models/rcnn-tail', token=token)[0] == 401


def _datatype(header: dict[str, Any]) -> None:
    header['inputs'][0]['datatype'] = 'FP64'


def _shape(header: dict[str, Any]) -> None:
    header['inputs'][0]['shape'][2] += 1


def _point(header: dict[str, Any]) -> None:
    header['parameters']['point'] = 99


@pytest.mark.parametrize(('edit', 'reason'), [(_datatype, 'datatype'), (_shape, 'shape'),
                                              (_point, 'unknown split point')])
def test_bad_tensors_are_refused_with_the_reason(
        server: Server, head: RcnnSplit, frame: np.ndarray,
        edit: Callable[[dict[str, Any]], None], reason: str) -> None:
    body, length = _edited(*request_body(encode_split(_payload(head, frame, 4), 'fp16')), edit)
    status, reply = _post_tail(server, body, length)
    assert status == 400 and reason in reply['error'], reply


def test_bodies_the_tail_cannot_read_are_refused(
        server: Server, head: RcnnSplit, frame: np.ndarray) -> None:
    body, length = request_body(encode_split(_payload(head, frame, 4), 'fp16'))
    status, reply = _post_tail(server, body, None)
    assert status == 400 and 'binary data' in reply['error']
    # Refused on its Content-Length, before a byte of it is read, as an oversize image is.
    connection = http.client.HTTPConnection('127.0.0.1', server.rest, timeout=30)
    try:
        connection.putrequest('POST', '/v2/models/rcnn-tail/infer')
        for name, value in (('Authorization', f'Bearer {TOKEN}'),
                            ('Content-Length', str(MAX_BODY + 1)),
                            ('Inference-Header-Content-Length', str(length))):
            connection.putheader(name, value)
        connection.endheaders()
        response = connection.getresponse()
        assert response.status == 413 and 'bytes' in json.loads(response.read())['error']
    finally:
        connection.close()
    status, reply = _post_tail(server, body[:-1], length)
    assert status == 400, reply
    assert re.search(r'^adaptive_offload_tail_requests_total\{outcome="rejected_400"\} [1-9]',
                     _metrics(server), re.M)


def test_grpc_inference_on_the_tail_says_to_use_rest(server: Server) -> None:
    transport = V2GrpcTransport(server.grpc_url, 'rcnn-tail', TOKEN)
    try:
        with pytest.raises(CloudError, match='REST'):
            transport.infer(cv2.imencode('.png', shapes_frame())[1].tobytes(), timeout_s=30)
    finally:
        transport.close()


def test_the_tail_runs_in_the_model_process_too(
        head: RcnnSplit, frame: np.ndarray, reference: CloudReply) -> None:
    srv = Server(args=('--arch', COMPACT_ARCH, '--checkpoint', SHAPES_RCNN, '--input-size',
                       '320', '--score-threshold', '0.5', '--model-process'))
    tail = V2TailTransport(srv.rest_url, 'rcnn', token=TOKEN, encoding='fp16')
    try:
        assert _request(srv, '/v2/models/rcnn-tail')[1]['split']['arch'] == COMPACT_ARCH
        iou, score = _matched(reference, tail.infer(_payload(head, frame, 9), timeout_s=60))
        assert iou >= FP16_TOLERANCE[0] and score <= FP16_TOLERANCE[1], (iou, score)
    finally:
        tail.close()
        srv.kill()
