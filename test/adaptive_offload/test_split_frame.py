"""A split frame: crossing tensors in a CompressedImage, read back within bounds."""

from __future__ import annotations

import array

from adaptive_offload import graph
from adaptive_offload.errors import ConversionError
from adaptive_offload.graph_codec import decode_input, encode_output
from adaptive_offload.split_frame import (MAX_HEADER_BYTES, read_split_frame, SPLIT_FORMAT,
                                          split_frame, SplitFrame)
from adaptive_offload.split_request import decode_wire_tensor
from adaptive_offload.split_wire import encode_wire_tensor, HEADER_LENGTH, SplitTensors
from adaptive_offload.typestore import make_typestore, message_types
import numpy as np
import pytest

TENSOR = np.arange(2 * 3 * 4 * 5, dtype=np.float32).reshape(2, 3, 4, 5) / 7


def _frame() -> SplitFrame:
    split = SplitTensors(6, (64, 96), ((48, 96),), ((480, 960),),
                         (encode_wire_tensor('layer_5', TENSOR, 'fp32', 'zstd'),))
    return split_frame(7_000_000_123, 'cam', split, {'model': 'm', 'decision_seq': 3})


def test_the_body_is_a_v2_request_and_its_header_length_is_in_the_format() -> None:
    frame = _frame()
    kind, _, parameter = frame.format.partition(';')
    assert kind == SPLIT_FORMAT and parameter.strip().startswith('header_length=')
    header_length = int(parameter.split('=')[1])
    assert frame.data[:1] == b'{' and frame.data[header_length - 1:header_length] == b'}'
    assert HEADER_LENGTH == 'Inference-Header-Content-Length'  # what header_length stands for
    request = read_split_frame(frame.format, frame.data, 1 << 20)
    assert request.split.point == 6 and request.split.padded_size == (64, 96)
    assert request.split.image_sizes == ((48, 96),)
    assert request.split.original_sizes == ((480, 960),)
    assert request.parameters['model'] == 'm' and request.parameters['decision_seq'] == 3
    assert np.array_equal(decode_wire_tensor(request.split.tensors[0]), TENSOR)


@pytest.mark.parametrize('wrap', [bytes, bytearray, lambda b: array.array('B', b),
                                  lambda b: np.frombuffer(b, np.uint8)])
def test_data_is_read_as_rclpy_and_rosbags_give_it(wrap: object) -> None:
    frame = _frame()
    request = read_split_frame(frame.format, wrap(frame.data), 1 << 20)  # type: ignore
    assert request.split.tensors[0].name == 'layer_5'


def test_a_split_frame_crosses_the_graph_as_a_compressed_image() -> None:
    types = message_types(make_typestore('jazzy'))
    head = graph.edge_inference('/camera/image_raw', False, 'robot', split_role='head')
    tail = graph.edge_inference('/camera/image_raw', False, 'pi', split_role='tail',
                                split_topic='/robot/edge/split')
    frame = _frame()
    msg = encode_output(types, head.output('split'), frame)
    assert (msg.header.stamp.sec, msg.header.stamp.nanosec) == (7, 123)
    assert msg.header.frame_id == 'cam' and msg.format == frame.format
    assert bytes(msg.data) == frame.data
    assert decode_input(tail.inputs[0], msg) is msg  # the tail's worker reads it
    assert read_split_frame(msg.format, msg.data, 1 << 20).split.point == 6


@pytest.mark.parametrize(('fmt', 'match'), [
    ('jpeg', 'split_format: format'),
    (SPLIT_FORMAT, 'no header_length'),
    (f'{SPLIT_FORMAT}; header_length=abc', 'no header_length'),
    (f'{SPLIT_FORMAT}; header_length={MAX_HEADER_BYTES + 1}', 'over'),
    (f'{SPLIT_FORMAT}; header_length=0', 'split_request'),
    (f'{SPLIT_FORMAT}; header_length=12', 'split_request: the JSON header'),
])
def test_a_bad_format_or_header_length_is_refused(fmt: str, match: str) -> None:
    with pytest.raises(ConversionError, match=match):
        read_split_frame(fmt, _frame().data, 1 << 20)


def test_a_body_over_the_bound_is_refused_before_it_is_parsed() -> None:
    frame = _frame()
    with pytest.raises(ConversionError, match='split_too_large') as err:
        read_split_frame(frame.format, frame.data + bytes(1 << 20), 1 << 20)
    assert err.value.reason == 'split_too_large'


def test_a_truncated_body_is_refused() -> None:
    frame = _frame()
    with pytest.raises(ConversionError, match='tensor_truncated'):
        read_split_frame(frame.format, frame.data[:-5], 1 << 20)
    with pytest.raises(ConversionError, match='split_format: data is not bytes'):
        read_split_frame(frame.format, object(), 1 << 20)
