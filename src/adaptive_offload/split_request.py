"""The service's side of :mod:`adaptive_offload.split_wire`: reading a tail request.

:func:`parse_request` splits a V2 binary-extension body into its JSON header and each tensor's
bytes, checking that they add up, without decoding anything; :func:`decode_wire_tensor` decodes
one tensor once its size is known to be within a bound, so that a few compressed bytes cannot
expand into gigabytes.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
import json
import math
from typing import Any

from adaptive_offload.errors import ConversionError
from adaptive_offload.split_wire import (BINARY_DATA_SIZE, COMPRESSION, DATATYPES, HEADER_LENGTH,
                                         IMAGE_SIZES, MAX_TENSORS, ORIGINAL_SIZES, PADDED_SIZE,
                                         parse_sizes, POINT, SCALES, SplitTensors, WireTensor)
from adaptive_offload.tensor_codec import DEFAULT_MAX_BYTES, ENCODINGS, MAX_NDIM
from adaptive_offload.tensor_compression import COMPRESSORS
import numpy as np

_MAX_NAME = 128


@dataclass(frozen=True)
class SplitRequest:
    """A tail request as the service reads it.

    Attributes:
        split: The split point, sizes and tensors (not decoded yet).
        parameters: Every request parameter (``robot_id``, ``budget_us``... included).
        request_id: The request's ``id``; empty when it had none.
        outputs: Names of the outputs asked for, in order; None: all.
    """

    split: SplitTensors
    parameters: dict[str, Any]
    request_id: str = ''
    outputs: list[str] | None = None


def parse_request(body: bytes, header_length: int | None) -> SplitRequest:
    """Read a tail request: its JSON header, then each tensor's bytes (not decoded).

    Args:
        body: The HTTP body.
        header_length: The :data:`HEADER_LENGTH` header's value; None when absent.

    Raises:
        ConversionError: ``split_request`` naming what is malformed.
    """
    if header_length is None:
        raise _bad(f'send the tensors as binary data: the {HEADER_LENGTH} header is missing')
    if not 0 < header_length <= len(body):
        raise _bad(f'{HEADER_LENGTH} {header_length} is not within the body of '
                   f'{len(body)} bytes')
    try:
        header = json.loads(body[:header_length])
    except RecursionError as err:
        raise _bad('JSON header nested too deeply') from err
    except ValueError as err:
        raise _bad(f'the JSON header does not parse: {err}') from err
    if not isinstance(header, dict):
        raise _bad('the JSON header is not an object')
    params = header.get('parameters')
    inputs = header.get('inputs')
    if not isinstance(params, dict):
        raise _bad('the request has no parameters object (point, padded_size, image_sizes, '
                   'original_sizes)')
    if not isinstance(inputs, list) or not 0 < len(inputs) <= MAX_TENSORS:
        raise _bad(f'inputs must be a list of 1 to {MAX_TENSORS} tensors')
    request_id = header.get('id', '')
    if not isinstance(request_id, str):
        raise _bad('the request id must be a string')
    outputs = header.get('outputs')
    if outputs is not None:
        if not isinstance(outputs, list) or not all(
                isinstance(o, dict) and isinstance(o.get('name'), str) for o in outputs):
            raise _bad('outputs must be a list of objects with a name')
        outputs = [o['name'] for o in outputs]
    point = params.get(POINT)
    if isinstance(point, bool) or not isinstance(point, int):
        raise _bad(f'parameter {POINT} must be an integer, got {str(point)[:40]!r}')
    padded = parse_sizes(params.get(PADDED_SIZE), PADDED_SIZE)
    if len(padded) != 1:
        raise _bad(f'{PADDED_SIZE} must be one HxW')
    tensors: list[WireTensor] = []
    offset = header_length
    for item in inputs:
        tensor = _tensor(item, body, offset, {t.name for t in tensors})
        offset += len(tensor.data)
        tensors.append(tensor)
    if offset != len(body):
        raise _bad(f'{len(body) - offset} bytes follow the tensors the header describes')
    split = SplitTensors(point, padded[0], parse_sizes(params.get(IMAGE_SIZES), IMAGE_SIZES),
                         parse_sizes(params.get(ORIGINAL_SIZES), ORIGINAL_SIZES),
                         tuple(tensors))
    return SplitRequest(split, params, request_id, outputs)


def decode_wire_tensor(tensor: WireTensor, max_bytes: int = DEFAULT_MAX_BYTES) -> np.ndarray:
    """Decode one tensor into a new float32 array, refusing it before it exceeds ``max_bytes``.

    Raises:
        ConversionError: ``tensor_datatype``, ``tensor_compression``, ``tensor_header`` (the
            scales), ``tensor_too_large``, ``tensor_corrupt`` (the compressed bytes do not
            hold exactly the shape's elements) or ``tensor_range`` (NaN or infinity).
    """
    codec = ENCODINGS.get(DATATYPES.get(tensor.datatype, ''))
    if codec is None:
        raise ConversionError('tensor_datatype', f'datatype {tensor.datatype!r} (one of '
                              f'{", ".join(DATATYPES)})')
    compressor = COMPRESSORS.get(tensor.compression)
    if compressor is None:
        raise ConversionError('tensor_compression', f'compression {tensor.compression!r} '
                              f'(one of {", ".join(sorted(COMPRESSORS))})')
    if tensor.decoded_bytes > max_bytes:
        raise ConversionError('tensor_too_large', f'shape {list(tensor.shape)} decodes to '
                              f'{tensor.decoded_bytes} bytes (at most {max_bytes})')
    scales = tensor.scales
    if scales.size != codec.scale_count(tensor.shape):
        raise ConversionError('tensor_header', f'{scales.size} scales for {tensor.datatype} of '
                              f'shape {list(tensor.shape)} (expected '
                              f'{codec.scale_count(tensor.shape)})')
    if not (np.isfinite(scales).all() and (scales >= 0).all()):
        raise ConversionError('tensor_header', 'scales must be finite and non-negative')
    size = math.prod(tensor.shape) * codec.wire_dtype.itemsize
    raw = compressor.decompress(tensor.data, size)
    wire = np.frombuffer(raw, codec.wire_dtype).reshape(tensor.shape)
    out = codec.decode(wire, scales, np.dtype(np.float32))
    if not np.isfinite(out).all():
        raise ConversionError('tensor_range', 'holds NaN or infinity')
    return np.require(out, np.float32, ('C', 'W'))


def _tensor(item: Any, body: bytes, offset: int, seen: set[str]) -> WireTensor:
    """Read one input of the JSON header, its bytes starting at ``offset`` of ``body``."""
    if not isinstance(item, dict):
        raise _bad('each input must be an object')
    name, datatype, shape = item.get('name'), item.get('datatype'), item.get('shape')
    if not isinstance(name, str) or not 0 < len(name) <= _MAX_NAME:
        raise _bad(f'an input has no name of 1 to {_MAX_NAME} characters')
    if name in seen:
        raise _bad(f'tensor {name} is given twice')
    if not isinstance(datatype, str):
        raise _bad(f'tensor {name} has no datatype')
    if not isinstance(shape, list) or len(shape) > MAX_NDIM or not all(
            isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in shape):
        raise _bad(f'tensor {name}: shape must be at most {MAX_NDIM} non-negative integers')
    params = item.get('parameters') or {}
    if not isinstance(params, dict):
        raise _bad(f'tensor {name}: parameters must be an object')
    if 'data' in item:
        raise _bad(f'tensor {name}: send its data as binary ({BINARY_DATA_SIZE}), not JSON')
    size = params.get(BINARY_DATA_SIZE)
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise _bad(f'tensor {name}: parameter {BINARY_DATA_SIZE} must be a non-negative integer')
    if offset + size > len(body):
        raise ConversionError('tensor_truncated', f'tensor {name}: {BINARY_DATA_SIZE} {size} '
                              f'but {len(body) - offset} bytes are left in the body')
    compression = params.get(COMPRESSION, 'none')
    if not isinstance(compression, str):
        raise _bad(f'tensor {name}: parameter {COMPRESSION} must be a string')
    scales = np.empty(0, np.float32)
    if SCALES in params:
        try:
            raw = base64.b64decode(params[SCALES], validate=True)
        except (binascii.Error, ValueError, TypeError) as err:
            raise _bad(f'tensor {name}: {SCALES} is not base64: {err}') from err
        if len(raw) % 4:
            raise _bad(f'tensor {name}: {SCALES} of {len(raw)} bytes is no float32 array')
        scales = np.frombuffer(raw, '<f4').astype(np.float32)
    return WireTensor(name, datatype, tuple(shape), compression,
                      bytes(memoryview(body)[offset:offset + size]), scales)


def _bad(detail: str) -> ConversionError:
    return ConversionError('split_request', detail)
