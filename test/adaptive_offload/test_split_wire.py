"""The tail request on the wire: built by the robot, read back by the service, bounded."""

from __future__ import annotations

import json
from types import SimpleNamespace
from typing import Any

from adaptive_offload.errors import ConversionError
from adaptive_offload.split_request import decode_wire_tensor, parse_request
from adaptive_offload.split_wire import (encode_split, encode_wire_tensor, format_sizes,
                                         HEADER_LENGTH, parse_sizes, request_body,
                                         split_from_encoded, SplitTensors, tail_model_name,
                                         weights_digest, WireTensor)
from adaptive_offload.tensor_codec import encode_tensor
import numpy as np
import pytest

RNG = np.random.default_rng(0)
FEATURES = {'body.3': RNG.normal(size=(1, 24, 32, 40)).astype(np.float32),
            'body.4': RNG.normal(size=(1, 40, 16, 20)).astype(np.float32)}


def _payload() -> SimpleNamespace:
    """Return a head's payload as RcnnSplit.head does (arrays stand in for torch tensors)."""
    return SimpleNamespace(point=5, tensors=FEATURES, padded_size=(256, 320),
                           image_sizes=((240, 320),), original_sizes=((480, 640),))


def _body(encoding: str = 'fp32', compression: str = 'zstd') -> tuple[bytes, int]:
    return request_body(encode_split(_payload(), encoding, compression),
                        {'robot_id': 'r1', 'budget_us': 5000}, request_id='7')


def _edited(edit: Any, encoding: str = 'fp32') -> tuple[bytes, int]:
    """Return a valid body whose JSON header ``edit`` changed in place."""
    body, length = _body(encoding)
    header = json.loads(body[:length])
    edit(header)
    head = json.dumps(header).encode()
    return head + body[length:], len(head)


@pytest.mark.parametrize('compression', ['zstd', 'lz4', 'none'])
def test_fp32_comes_back_exactly_with_its_sizes_and_parameters(compression: str) -> None:
    body, length = _body('fp32', compression)
    request = parse_request(body, length)
    assert request.request_id == '7' and request.outputs is None
    assert request.parameters['robot_id'] == 'r1' and request.parameters['budget_us'] == 5000
    split = request.split
    assert (split.point, split.padded_size) == (5, (256, 320))
    assert (split.image_sizes, split.original_sizes) == (((240, 320),), ((480, 640),))
    assert [t.name for t in split.tensors] == ['body.3', 'body.4']
    for tensor in split.tensors:
        assert tensor.datatype == 'FP32' and tensor.compression == compression
        assert np.array_equal(decode_wire_tensor(tensor), FEATURES[tensor.name])


@pytest.mark.parametrize(('encoding', 'datatype'), [('fp16', 'FP16'), ('int8', 'INT8')])
def test_lossy_encodings_stay_within_their_bounds(encoding: str, datatype: str) -> None:
    body, length = _body(encoding)
    for tensor in parse_request(body, length).split.tensors:
        original = FEATURES[tensor.name]
        decoded = decode_wire_tensor(tensor)
        assert tensor.datatype == datatype and decoded.dtype == np.float32
        if encoding == 'fp16':
            assert np.allclose(decoded, original, rtol=2 ** -10, atol=1e-7)
        else:  # half a step of its channel's scale
            assert tensor.scales.shape == (original.shape[1],)
            step = np.abs(original).max(axis=(0, 2, 3)) / 127
            assert (np.abs(decoded - original) <= step[None, :, None, None] / 2 + 1e-6).all()


def test_tensor_codec_blobs_go_as_they_are() -> None:
    meta = {'point': 5, 'padded_size': [256, 320], 'image_sizes': [[240, 320]],
            'original_sizes': [[480, 640]]}
    blobs = {name: encode_tensor(a, 'int8', 'lz4') for name, a in FEATURES.items()}
    split = split_from_encoded(meta, blobs)
    direct = encode_split(_payload(), 'int8', 'lz4')
    assert split.point == direct.point and split.image_sizes == direct.image_sizes
    for a, b in zip(split.tensors, direct.tensors):
        assert (a.name, a.datatype, a.shape, a.data) == (b.name, b.datatype, b.shape, b.data)
        assert np.array_equal(a.scales, b.scales)
    with pytest.raises(ConversionError, match='split_meta'):
        split_from_encoded({'point': 5}, blobs)


def test_names_sizes_and_the_tensor_total() -> None:
    assert tail_model_name('rcnn') == 'rcnn-tail'
    assert format_sizes([(240, 320), (300, 200)]) == '240x320,300x200'
    assert parse_sizes('240x320, 300x200') == ((240, 320), (300, 200))
    for bad in ('', '240', '240x0', '-1x2', '1x2,', 7, None, '1234567x1'):
        with pytest.raises(ConversionError, match='HxW'):
            parse_sizes(bad)
    split = encode_split(_payload(), 'fp16', 'none')
    assert split.tensor_bytes == sum(a.size * 2 for a in FEATURES.values())


@pytest.mark.parametrize(('edit', 'match'), [
    (lambda h: h.pop('parameters'), 'no parameters object'),
    (lambda h: h['parameters'].update(point='5'), 'point must be an integer'),
    (lambda h: h['parameters'].update(padded_size='256x320,256x320'), 'one HxW'),
    (lambda h: h['parameters'].update(image_sizes='240by320'), 'image_sizes must be HxW'),
    (lambda h: h.update(inputs=[]), 'inputs must be a list of 1 to'),
    (lambda h: h['inputs'][1].update(name='body.3'), 'body.3 is given twice'),
    (lambda h: h['inputs'][0].update(shape=[1, -24, 32, 40]), 'non-negative integers'),
    (lambda h: h['inputs'][0].update(data=[1.0]), 'not JSON'),
    (lambda h: h['inputs'][0]['parameters'].pop('binary_data_size'), 'binary_data_size must'),
    (lambda h: h['inputs'][0]['parameters'].update(scales='@@'), 'scales is not base64'),
    (lambda h: h['inputs'][0]['parameters'].update(scales='AAA='), 'no float32 array'),
    (lambda h: h.update(id=3), 'id must be a string'),
    (lambda h: h.update(outputs=['boxes']), 'outputs must be a list of objects'),
])
def test_malformed_headers_are_named(edit: Any, match: str) -> None:
    body, length = _edited(edit)
    with pytest.raises(ConversionError, match=match):
        parse_request(body, length)


def test_the_body_must_hold_exactly_the_bytes_the_header_describes() -> None:
    body, length = _body()
    with pytest.raises(ConversionError, match='header is missing'):
        parse_request(body, None)
    with pytest.raises(ConversionError, match='not within the body'):
        parse_request(body, len(body) + 1)
    with pytest.raises(ConversionError, match='does not parse'):
        parse_request(body, length - 1)
    with pytest.raises(ConversionError, match='tensor_truncated: tensor body.4'):
        parse_request(body[:-1], length)
    with pytest.raises(ConversionError, match='1 bytes follow the tensors'):
        parse_request(body + b'\0', length)
    deep = b'[' * 100_000
    with pytest.raises(ConversionError, match='nested too deeply|does not parse'):
        parse_request(deep, len(deep))


def _tensor(**changes: Any) -> WireTensor:
    tensor = encode_wire_tensor('x', FEATURES['body.3'], 'int8', 'zstd')
    fields = {**tensor.__dict__, **changes}
    return WireTensor(**fields)


@pytest.mark.parametrize(('tensor', 'match'), [
    (_tensor(datatype='FP64'), "tensor_datatype: datatype 'FP64'"),
    (_tensor(compression='gzip'), "tensor_compression: compression 'gzip'"),
    (_tensor(scales=np.ones(3, np.float32)), '3 scales for INT8'),
    (_tensor(scales=np.full(24, np.nan, np.float32)), 'finite and non-negative'),
    (_tensor(data=b'not zstd at all'), 'tensor_corrupt'),
    (_tensor(shape=(1, 24, 32, 41)), 'tensor_corrupt'),  # the bytes hold fewer elements
])
def test_bad_tensors_are_refused_on_decoding(tensor: WireTensor, match: str) -> None:
    with pytest.raises(ConversionError, match=match):
        decode_wire_tensor(tensor)


def test_a_small_body_cannot_decode_into_gigabytes() -> None:
    zeros = encode_wire_tensor('x', np.zeros((1, 8, 64, 64), np.float32), 'fp32', 'zstd')
    bomb = WireTensor('x', 'FP32', (1, 1024, 1024, 1024), 'zstd', zeros.data)
    with pytest.raises(ConversionError, match='tensor_too_large: shape .* 4294967296 bytes'):
        decode_wire_tensor(bomb)
    with pytest.raises(ConversionError, match='tensor_too_large'):
        decode_wire_tensor(zeros, max_bytes=zeros.decoded_bytes - 1)
    assert decode_wire_tensor(zeros, max_bytes=zeros.decoded_bytes).shape == (1, 8, 64, 64)


def test_non_finite_values_are_refused() -> None:
    values = FEATURES['body.3'].copy()
    values[0, 3, 1, 1] = np.inf
    for encoding in ('fp32', 'fp16'):
        with pytest.raises(ConversionError, match='tensor_range: holds NaN or infinity'):
            decode_wire_tensor(encode_wire_tensor('x', values, encoding, 'lz4'))
    with pytest.raises(ConversionError, match='int8 cannot encode'):
        encode_wire_tensor('x', values, 'int8')


def test_encoding_refuses_what_it_cannot_send() -> None:
    with pytest.raises(ConversionError, match="unknown encoding/compression 'fp8'"):
        encode_wire_tensor('x', FEATURES['body.3'], 'fp8')
    with pytest.raises(ConversionError, match='no float tensor'):
        encode_wire_tensor('x', np.zeros((1, 2), np.int32), 'fp32')


def test_weights_digest_sees_names_dtypes_shapes_and_values() -> None:
    state = {'a.weight': np.arange(6, dtype=np.float32).reshape(2, 3),
             'a.count': np.array(3, np.int64)}
    digest = weights_digest(state)
    assert digest == weights_digest(dict(reversed(list(state.items()))))
    assert len(digest) == 64
    changed = [{**state, 'a.weight': state['a.weight'] + 1},
               {**state, 'a.weight': state['a.weight'].reshape(3, 2)},
               {**state, 'a.weight': state['a.weight'].astype(np.float64)},
               {'b.weight': state['a.weight'], 'a.count': state['a.count']}]
    assert len({weights_digest(s) for s in changed} | {digest}) == 5


def test_the_header_length_header_is_the_v2_binary_extension_one() -> None:
    assert HEADER_LENGTH == 'Inference-Header-Content-Length'
    split = SplitTensors(0, (32, 32), ((32, 32),), ((32, 32),), ())
    body, length = request_body(split)
    assert body[:length] == body and json.loads(body)['inputs'] == []
