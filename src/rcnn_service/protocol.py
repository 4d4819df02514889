"""The service's side of the Open Inference Protocol: request decoding and replies.

One BYTES input ``image`` holding JPEG or PNG bytes (base64 over REST); replies of ``boxes``,
``scores``, ``labels`` (PNG ``masks`` for Mask R-CNN) and the server time. Client data is only
ever decoded as an image, and only after its header has shown a size within the limit.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

import cv2
import numpy as np
from rcnn_service.guard import check_image_header, RequestError
from rcnn_service.rcnn_detector import Detections

OUTPUTS = (('boxes', 'FP32', [-1, 4]), ('scores', 'FP32', [-1]), ('labels', 'BYTES', [-1]))
"""Name, datatype and shape of each output (``masks`` is added for Mask R-CNN)."""


def model_metadata(model: str) -> dict[str, Any]:
    """Return the V2 model metadata both runtimes answer."""
    return {'name': model, 'platform': 'pytorch', 'versions': ['1'],
            'inputs': [{'name': 'image', 'datatype': 'BYTES', 'shape': [1]}],
            'outputs': [{'name': n, 'datatype': t, 'shape': s} for n, t, s in OUTPUTS]}


def decode_request(body: bytes, max_side: int) -> np.ndarray:
    """Decode the image of a V2 request with one base64 ``image`` BYTES input.

    Raises:
        RequestError: 400 naming what is wrong.
    """
    try:
        inputs = json.loads(body)['inputs']
    except RecursionError as err:  # a body of 100 000 '[' nests deeper than json can read
        raise RequestError(400, 'not a V2 inference request: JSON nested too deeply') from err
    except (ValueError, KeyError, TypeError) as err:
        raise RequestError(400, f'not a V2 inference request: {err}') from err
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
    return decode_image(raw, max_side)


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


def v2_response(model: str, dets: Detections) -> dict[str, Any]:
    """Build a V2 response of ``boxes``, ``scores``, ``labels`` (PNG ``masks`` for Mask R-CNN)."""
    n = len(dets.labels)
    outputs = [
        {'name': 'boxes', 'shape': [n, 4], 'datatype': 'FP32',
         'data': dets.boxes.reshape(-1).tolist()},
        {'name': 'scores', 'shape': [n], 'datatype': 'FP32', 'data': dets.scores.tolist()},
        {'name': 'labels', 'shape': [n], 'datatype': 'BYTES', 'data': list(dets.labels)},
    ]
    if dets.masks is not None:
        pngs = [base64.b64encode(cv2.imencode('.png', m * 255)[1].tobytes()).decode()
                for m in dets.masks]
        outputs.append({'name': 'masks', 'shape': [n], 'datatype': 'BYTES', 'data': pngs,
                        'parameters': {'content_type': 'base64', 'encoding': 'png'}})
    return {'model_name': model, 'outputs': outputs}


def server_time_parameters(seconds: float) -> dict[str, int]:
    """Response parameters carrying the server time, from which clients estimate bandwidth.

    Integer microseconds: the V2 gRPC mapping has no float parameter type, so a float would be
    dropped on the way (MLServer does).
    """
    return {'server_us': round(seconds * 1e6)}
