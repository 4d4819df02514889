"""Fuzzing the service's request decoding: any bytes give an image within the limit or a 4xx.

Budgets: test/fuzzing.py (``ADAPTIVE_OFFLOAD_FUZZ=fuzz`` for a longer run).
"""

from __future__ import annotations

import base64
import json
from typing import Any

from fuzzing import budget, damaged_images, encoded_images
from hypothesis import given, strategies as st
import numpy as np
from rcnn_service.guard import (body_length, check_body, check_image_header, image_size,
                                RequestError)
from rcnn_service.protocol import decode_image, decode_request

MAX_SIDE = 20

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                max_size=4),
    max_leaves=12)


def _is_image(image: Any, max_side: int) -> bool:
    return (isinstance(image, np.ndarray) and image.dtype == np.uint8 and image.ndim == 3
            and image.shape[2] == 3 and 0 < max(image.shape[:2]) <= max_side
            and min(image.shape[:2]) > 0)


def _refused(err: RequestError) -> bool:
    return 400 <= err.status < 500


@budget()
@given(damaged_images())
def test_header_sizes_are_positive_or_refused(data: bytes) -> None:
    try:
        width, height = image_size(data)
    except RequestError as err:
        assert _refused(err)
    else:
        assert 0 < width < 2**32 and 0 < height < 2**32


@budget()
@given(damaged_images(), st.integers(1, 32))
def test_decoded_images_are_bgr_within_the_limit(data: bytes, max_side: int) -> None:
    try:
        image = decode_image(data, max_side)
    except RequestError as err:
        assert _refused(err)
    else:
        assert _is_image(image, max_side)
        assert max(check_image_header(data, max_side)) <= max_side


def _request(image: bytes, **changes: Any) -> dict[str, Any]:
    tensor = {'name': 'image', 'datatype': 'BYTES', 'shape': [1],
              'data': [base64.b64encode(image).decode()]}
    tensor.update(changes)
    return {'inputs': [tensor]}


@st.composite
def bad_requests(draw: st.DrawFn) -> bytes:
    """Draw a valid V2 request with one part replaced by something arbitrary, or none at all."""
    image = draw(damaged_images())
    body: Any = _request(image)
    part = draw(st.sampled_from(('none', 'root', 'inputs', 'tensor', 'field', 'base64',
                                 'bytes')))
    if part == 'root':
        body = draw(JSON)
    elif part == 'inputs':
        body['inputs'] = draw(JSON)
    elif part == 'tensor':
        body['inputs'] = [draw(JSON)] * draw(st.integers(0, 2))
    elif part == 'field':
        body['inputs'][0][draw(st.sampled_from(('name', 'datatype', 'shape', 'data')))] = \
            draw(JSON)
    elif part == 'base64':
        body['inputs'][0]['data'] = [draw(st.text(max_size=40))]
    elif part == 'bytes':
        return draw(st.binary(max_size=200))
    return json.dumps(body).encode()


@budget()
@given(bad_requests())
def test_requests_decode_to_an_image_or_a_4xx(body: bytes) -> None:
    try:
        image = decode_request(body, MAX_SIDE)
    except RequestError as err:
        assert _refused(err)
    else:
        assert _is_image(image, MAX_SIDE)


@budget(0.5)
@given(encoded_images())
def test_valid_requests_decode(image: bytes) -> None:
    assert _is_image(decode_request(json.dumps(_request(image)).encode(), 24), 24)


HEADER_VALUE = st.text(st.characters(codec='latin-1'), max_size=24) | \
    st.integers(-5, 2**70).map(str)


@budget()
@given(st.lists(HEADER_VALUE, max_size=2), st.lists(HEADER_VALUE, max_size=3),
       st.lists(HEADER_VALUE, max_size=2), st.integers(0, 2**20))
def test_framing_headers_give_a_length_or_a_4xx(
        transfer_encoding: list[str], content_length: list[str], content_encoding: list[str],
        limit: int) -> None:
    try:
        length = body_length(transfer_encoding, content_length)
        check_body(length, content_encoding, limit)
    except RequestError as err:
        assert _refused(err)
    else:
        assert 0 <= length <= limit
        assert not transfer_encoding


def test_deeply_nested_json_is_a_400_not_a_recursion_error() -> None:
    """Found by fuzzing: json's decoder raised RecursionError, which the server answered 500."""
    for body in (b'[' * 100_000, b'{"inputs": ' + b'[' * 100_000,
                 b'{"a":' * 50_000 + b'1' + b'}' * 50_000):
        try:
            decode_request(body, MAX_SIDE)
        except RequestError as err:
            assert err.status == 400
        else:
            raise AssertionError('decoded')
