"""The service's side of the Open Inference Protocol: request decoding and replies.

One BYTES input ``image`` holding JPEG or PNG bytes (base64 over REST); replies of ``boxes``,
``scores``, ``labels`` (PNG ``masks`` for Mask R-CNN) and the server time. Client data is only
ever decoded as an image, and only after its header has shown a size within the limit.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from importlib import metadata
import json
import re
from typing import Any, Mapping

import cv2
import numpy as np
from rcnn_service.guard import check_image_header, RequestError
from rcnn_service.rcnn_detector import Detections

OUTPUTS = (('boxes', 'FP32', [-1, 4]), ('scores', 'FP32', [-1]), ('labels', 'BYTES', [-1]))
"""Name, datatype and shape of each output (``masks`` is added for Mask R-CNN)."""
MASKS = 'masks'
MODEL_VERSION = '1'
"""The one version of the model both runtimes serve (``/versions/1/``; none means it too)."""
SERVER_NAME = 'adaptive-offload'
ROBOT_ID = 'robot_id'
"""Request parameter naming the robot that sends it (its turn in the fair queue)."""
BUDGET_US = 'budget_us'
"""Request parameter: microseconds from arrival after which its answer is of no use."""
_ROBOT_ID = re.compile(r'^[A-Za-z0-9_.:/-]{1,64}$')


def server_metadata() -> dict[str, Any]:
    """Return the V2 server metadata (``GET /v2``) both runtimes answer."""
    try:
        version = metadata.version('adaptive_offload')
    except metadata.PackageNotFoundError:  # run from a source tree that was never installed
        version = '0+unknown'
    return {'name': SERVER_NAME, 'version': version, 'extensions': []}


def model_metadata(model: str) -> dict[str, Any]:
    """Return the V2 model metadata both runtimes answer."""
    return {'name': model, 'platform': 'pytorch', 'versions': [MODEL_VERSION],
            'inputs': [{'name': 'image', 'datatype': 'BYTES', 'shape': [1]}],
            'outputs': [{'name': n, 'datatype': t, 'shape': s} for n, t, s in OUTPUTS]}


@dataclass(frozen=True)
class RequestContext:
    """Who sent a request and how long its answer is useful (its V2 request parameters).

    Attributes:
        robot: The ``robot_id`` parameter; empty when it had none.
        budget_s: The ``budget_us`` parameter in seconds; None when it had none.
    """

    robot: str = ''
    budget_s: float | None = None


def request_context(parameters: Mapping[str, Any] | None) -> RequestContext:
    """Read ``robot_id`` and ``budget_us`` from a request's parameters (others are ignored).

    Raises:
        RequestError: 400 for a robot id that is not 1-64 characters of letters, digits and
            ``_.:/-`` (it becomes a metrics label), or a budget that is not a non-negative
            integer.
    """
    if not parameters:
        return RequestContext()
    robot = parameters.get(ROBOT_ID, '')
    if robot != '' and (not isinstance(robot, str) or not _ROBOT_ID.match(robot)):
        raise RequestError(400, f'{ROBOT_ID} must be 1-64 characters of letters, digits and '
                                f'_.:/-, got {str(robot)[:80]!r}')
    budget = parameters.get(BUDGET_US)
    if budget is not None and (isinstance(budget, bool) or not isinstance(budget, int) or
                               budget < 0):
        raise RequestError(400, f'{BUDGET_US} must be a non-negative integer, got '
                                f'{str(budget)[:80]!r}')
    return RequestContext(robot, None if budget is None else budget / 1e6)


@dataclass(frozen=True)
class V2Request:
    """What an inference request asks for.

    Attributes:
        image: The decoded BGR image.
        request_id: The request's ``id``, echoed in the response; empty when it had none.
        outputs: The outputs it asked for, in its order; None: all of them.
        context: Its robot and budget.
    """

    image: np.ndarray
    request_id: str = ''
    outputs: tuple[str, ...] | None = None
    context: RequestContext = RequestContext()


def decode_request(body: bytes, max_side: int) -> np.ndarray:
    """Decode the image of a V2 request with one base64 ``image`` BYTES input.

    Raises:
        RequestError: 400 naming what is wrong.
    """
    return parse_request(body, max_side).image


def parse_request(body: bytes, max_side: int) -> V2Request:
    """Read a V2 REST inference request: its image, ``id`` and requested ``outputs``.

    Raises:
        RequestError: 400 naming what is wrong.
    """
    try:
        request = json.loads(body)
        inputs = request['inputs']
    except RecursionError as err:  # a body of 100 000 '[' nests deeper than json can read
        raise RequestError(400, 'not a V2 inference request: JSON nested too deeply') from err
    except (ValueError, KeyError, TypeError) as err:
        raise RequestError(400, f'not a V2 inference request: {err}') from err
    request_id = request.get('id', '')
    if not isinstance(request_id, str):
        raise RequestError(400, 'the request id must be a string')
    parameters = request.get('parameters')
    if parameters is not None and not isinstance(parameters, dict):
        raise RequestError(400, 'the request parameters must be an object')
    context = request_context(parameters)
    outputs = request.get('outputs')
    if outputs is not None:
        if not isinstance(outputs, list) or \
                not all(isinstance(o, dict) and isinstance(o.get('name'), str) for o in outputs):
            raise RequestError(400, 'outputs must be a list of objects with a name')
        outputs = requested_outputs([o['name'] for o in outputs], masks=True)
    if not isinstance(inputs, list) or len(inputs) != 1 or not isinstance(inputs[0], dict):
        raise RequestError(400, 'expected exactly one input')
    tensor = inputs[0]
    if tensor.get('name') != 'image' or tensor.get('datatype') != 'BYTES':
        raise RequestError(400, 'expected input "image" of datatype BYTES, got '
                                f'{tensor.get("name")!r} {tensor.get("datatype")!r}')
    data = tensor.get('data')
    if not isinstance(data, list) or len(data) != 1 or not isinstance(data[0], str):
        raise RequestError(400, 'expected one base64 image per request')
    try:
        raw = base64.b64decode(data[0], validate=True)
    except (binascii.Error, ValueError) as err:
        raise RequestError(400, f'image is not base64: {err}') from err
    return V2Request(decode_image(raw, max_side), request_id, outputs, context)


def requested_outputs(names: list[str], masks: bool) -> tuple[str, ...] | None:
    """Check the names of the outputs a request asks for; None (all) when it names none.

    Args:
        names: The names, in the request's order.
        masks: Whether ``masks`` is known (Mask R-CNN; checked again when the reply is built).

    Raises:
        RequestError: 400 for a name the model has no output for, or a name given twice.
    """
    known = [n for n, _, _ in OUTPUTS] + ([MASKS] if masks else [])
    unknown = [n for n in names if n not in known]
    if unknown:
        raise RequestError(400, f'no output named {", ".join(map(repr, unknown))} '
                                f'(outputs: {", ".join(known)})')
    if len(set(names)) != len(names):
        raise RequestError(400, 'an output is requested twice')
    return tuple(names) or None


def decode_image(raw: bytes, max_side: int) -> np.ndarray:
    """Decode JPEG or PNG bytes from a client into a BGR image (never anything else).

    The size comes from the header first: a small file can declare a huge image (an 875 KB
    PNG of 30000x30000 decodes to 2.7 GB), so nothing larger than ``max_side`` is decoded.

    Raises:
        RequestError: 400 if the bytes are no image or the image is larger than ``max_side``.
    """
    check_image_header(raw, max_side)
    image = cv2.imdecode(np.frombuffer(raw, np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        raise RequestError(400, 'image is not a decodable JPEG or PNG')
    if max(image.shape[:2]) > max_side:  # the decoder disagreed with the header
        raise RequestError(400, f'image {image.shape[1]}x{image.shape[0]} exceeds '
                                f'{max_side} px')
    return image


def v2_response(model: str, dets: Detections, outputs: tuple[str, ...] | None = None,
                request_id: str = '') -> dict[str, Any]:
    """Build a V2 response of ``boxes``, ``scores``, ``labels`` (PNG ``masks`` for Mask R-CNN).

    Args:
        model: The model's name.
        dets: Its detections.
        outputs: The outputs to send, in this order; None: all.
        request_id: The request's ``id``, echoed; empty sends none.

    Raises:
        RequestError: 400 when ``masks`` is asked of a model that has none.
    """
    n = len(dets.labels)
    tensors: list[dict[str, Any]] = [
        {'name': 'boxes', 'shape': [n, 4], 'datatype': 'FP32',
         'data': dets.boxes.reshape(-1).tolist()},
        {'name': 'scores', 'shape': [n], 'datatype': 'FP32', 'data': dets.scores.tolist()},
        {'name': 'labels', 'shape': [n], 'datatype': 'BYTES', 'data': list(dets.labels)},
    ]
    if dets.masks is not None and (outputs is None or MASKS in outputs):
        pngs = [base64.b64encode(cv2.imencode('.png', m * 255)[1].tobytes()).decode()
                for m in dets.masks]
        tensors.append({'name': MASKS, 'shape': [n], 'datatype': 'BYTES', 'data': pngs,
                        'parameters': {'content_type': 'base64', 'encoding': 'png'}})
    if outputs is not None:
        by_name = {t['name']: t for t in tensors}
        if MASKS in outputs and MASKS not in by_name:
            raise RequestError(400, 'this model has no masks output (a Mask R-CNN has)')
        tensors = [by_name[name] for name in outputs]
    response: dict[str, Any] = {'model_name': model, 'model_version': MODEL_VERSION,
                                'outputs': tensors}
    if request_id:
        response['id'] = request_id
    return response


def server_time_parameters(seconds: float, queue_s: float = 0.0) -> dict[str, int]:
    """Return the response parameters: the server time, and the queue wait within it.

    Clients estimate bandwidth from the server time, and see the service's load in the wait.

    Integer microseconds: the V2 gRPC mapping has no float parameter type, so a float would be
    dropped on the way (MLServer does).
    """
    return {'server_us': round(seconds * 1e6), 'queue_us': round(queue_s * 1e6)}
