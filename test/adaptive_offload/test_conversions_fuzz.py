"""Fuzzing the message readers: any message gives a valid record or a ConversionError.

Messages go through CDR, as a subscriber or a bag reader gets them. Budgets: test/fuzzing.py.
"""

from __future__ import annotations

import math
from typing import Any

from adaptive_offload.conversions import (battery_sample, COMPRESSED_FORMATS,
                                          diagnostics_to_health, header, image_to_frame,
                                          MAX_COMPRESSED_PIXELS, MAX_STAMP_NS,
                                          message_to_detections,
                                          RAW_ENCODINGS)
from adaptive_offload.datatypes import Frame, Level
from adaptive_offload.errors import ConversionError
from adaptive_offload.typestore import make_typestore, message_types
from fuzzing import budget, damaged_images, encode, resized_header
from hypothesis import given, strategies as st
import numpy as np
import pytest

STORE = make_typestore('jazzy')
T = message_types(STORE)
UINT32 = st.integers(0, 64) | st.integers(0, 2**32 - 1)
TEXT = st.text(max_size=12)
FLOAT = st.floats(width=64)  # NaN and infinities included


def _cdr(msg: Any) -> Any:
    return STORE.deserialize_cdr(STORE.serialize_cdr(msg, msg.__msgtype__), msg.__msgtype__)


def _stamp() -> st.SearchStrategy[Any]:
    return st.builds(lambda ns, frame: header(T, ns, frame), st.integers(0, MAX_STAMP_NS - 1),
                     TEXT)


def _check_frame(frame: Frame) -> None:
    image = frame.image
    assert isinstance(image, np.ndarray) and image.dtype == np.uint8
    assert image.ndim == 3 and image.shape[2] == 3 and image.flags.c_contiguous
    assert 0 < image.shape[0] * image.shape[1] <= MAX_COMPRESSED_PIXELS


@st.composite
def raw_images(draw: st.DrawFn) -> Any:
    """Draw a ``sensor_msgs/Image`` whose fields and data may disagree."""
    encoding = draw(st.sampled_from(RAW_ENCODINGS) | st.sampled_from(('RGB8', 'yuv422', ''))
                    | TEXT)
    height, width = draw(UINT32), draw(UINT32)
    step = draw(st.sampled_from(('fit', 'padded')) | UINT32)
    if step in ('fit', 'padded'):
        step = min(width * 4 * 2 + (3 if step == 'padded' else 0), 2**32 - 1)
    size = draw(st.sampled_from(('fit', 'other')))
    length = step * height if size == 'fit' and step * height <= 1 << 14 \
        else draw(st.integers(0, 1 << 12))
    data = draw(st.binary(min_size=length, max_size=length))
    return T.Image(header=draw(_stamp()), height=height, width=width, encoding=encoding,
                   is_bigendian=draw(st.integers(0, 1)), step=step,
                   data=np.frombuffer(data, np.uint8))


@budget()
@given(raw_images())
def test_raw_images_give_a_bgr_frame_or_a_conversion_error(msg: Any) -> None:
    try:
        frame = image_to_frame(_cdr(msg))
    except ConversionError as err:
        assert err.reason in ('unsupported_encoding', 'empty_image', 'size_mismatch')
    else:
        _check_frame(frame)
        assert (frame.height, frame.width) == (msg.height, msg.width)


FORMATS = st.sampled_from((*COMPRESSED_FORMATS, 'jpg', 'rgb8; jpeg compressed bgr8',
                           'png; compressedDepth', 'PNG', 'bmp')) | TEXT


@budget()
@given(FORMATS, damaged_images(64))
def test_compressed_images_give_a_bgr_frame_or_a_conversion_error(fmt: str, data: bytes) -> None:
    msg = T.CompressedImage(header=header(T, 1, 'cam'), format=fmt,
                            data=np.frombuffer(data, np.uint8))
    try:
        frame = image_to_frame(_cdr(msg))
    except ConversionError as err:
        assert err.reason in ('unsupported_encoding', 'empty_image', 'truncated_image',
                              'image_too_large', 'decode_failed')
    else:
        _check_frame(frame)


@pytest.mark.parametrize('ext, width, height', [
    ('.jpg', 30000, 30000),  # decoded to 2.7 GB in 15 s before
    ('.jpg', 40000, 40000),  # over OpenCV's own limit: cv2.error escaped before
    ('.png', 30000, 30000),
    ('.png', 2**31, 1),
])
def test_a_small_file_declaring_a_huge_image_is_refused_before_decoding(
        ext: str, width: int, height: int) -> None:
    """Found by fuzzing: the decoder allocated whatever size a tiny file's header declared."""
    data = resized_header(encode(np.zeros((8, 8, 3), np.uint8), ext), width, height)
    msg = T.CompressedImage(header=header(T, 1, 'cam'), format=ext[1:].replace('jpg', 'jpeg'),
                            data=np.frombuffer(data, np.uint8))
    with pytest.raises(ConversionError) as err:
        image_to_frame(msg)
    assert err.value.reason == 'image_too_large'


def test_data_of_another_format_is_refused() -> None:
    """A BMP labelled jpeg was decoded whatever size it declared; only JPEG and PNG are read."""
    data = encode(np.zeros((8, 8, 3), np.uint8), '.bmp')
    msg = T.CompressedImage(header=header(T, 1, 'cam'), format='jpeg',
                            data=np.frombuffer(data, np.uint8))
    with pytest.raises(ConversionError, match='decode_failed'):
        image_to_frame(msg)


def _detection(box: tuple[float, float, float, float], hypotheses: list[tuple[str, float]]) -> Any:
    pose = T.PoseWithCovariance(
        pose=T.Pose(position=T.Point(x=0.0, y=0.0, z=0.0),
                    orientation=T.Quaternion(x=0.0, y=0.0, z=0.0, w=1.0)),
        covariance=np.zeros(36, np.float64))
    results = [T.ObjectHypothesisWithPose(hypothesis=T.ObjectHypothesis(class_id=c, score=s),
                                          pose=pose) for c, s in hypotheses]
    cx, cy, sx, sy = box
    bbox = T.BoundingBox2D(center=T.Pose2D(position=T.Point2D(x=cx, y=cy), theta=0.0),
                           size_x=sx, size_y=sy)
    return T.Detection2D(header=header(T, 0, ''), results=results, bbox=bbox, id='')


DETECTIONS = st.lists(st.builds(_detection, st.tuples(FLOAT, FLOAT, FLOAT, FLOAT),
                                st.lists(st.tuples(TEXT, FLOAT), max_size=3)), max_size=4)


@budget()
@given(_stamp(), DETECTIONS)
def test_detections_are_finite_or_a_conversion_error(hdr: Any, detections: list[Any]) -> None:
    msg = _cdr(T.Detection2DArray(header=hdr, detections=detections))
    try:
        dets = message_to_detections(msg, 'truth')
    except ConversionError as err:
        assert err.reason == 'bad_detection'
        return
    assert len(dets.detections) == sum(1 for d in detections if d.results)
    for det in dets.detections:
        values = (det.x1, det.y1, det.x2, det.y2, det.score)
        assert all(math.isfinite(v) for v in values)
        assert det.x1 <= det.x2 and det.y1 <= det.y2


def test_a_non_finite_detection_is_a_conversion_error() -> None:
    """Found by fuzzing: NaN and infinite boxes and scores were read as detections."""
    for box, score in (((math.nan, 1.0, 2.0, 2.0), 0.5), ((1.0, 1.0, math.inf, 2.0), 0.5),
                       ((1.0, 1.0, 2.0, 2.0), math.nan)):
        msg = T.Detection2DArray(header=header(T, 0, ''),
                                 detections=[_detection(box, [('a', score)])])
        with pytest.raises(ConversionError, match='bad_detection'):
            message_to_detections(msg, 'truth')


STATUS = st.builds(lambda level, name, kv: T.DiagnosticStatus(
    level=level, name=name, message=name, hardware_id='',
    values=[T.KeyValue(key=k, value=v) for k, v in kv]),
    st.integers(-128, 127), TEXT, st.lists(st.tuples(TEXT, TEXT), max_size=3))  # a byte


@budget()
@given(_stamp(), st.lists(STATUS, max_size=4))
def test_diagnostics_give_health_or_a_conversion_error(hdr: Any, statuses: list[Any]) -> None:
    msg = _cdr(T.DiagnosticArray(header=hdr, status=statuses))
    try:
        health = diagnostics_to_health(msg)
    except ConversionError as err:
        assert err.reason == 'bad_level'
        assert any(s.level not in range(4) for s in statuses)
    else:
        assert [h.level.value for h in health] == [s.level for s in statuses]


def test_a_stamp_past_2038_is_a_conversion_error_not_a_struct_error() -> None:
    """Found by fuzzing: header() took it, and serializing the message failed (struct.error)."""
    with pytest.raises(ConversionError, match='bad_stamp'):
        header(T, MAX_STAMP_NS, 'cam')
    assert header(T, MAX_STAMP_NS - 1, 'cam').stamp.sec == 2**31 - 1


def test_an_unknown_diagnostic_level_is_a_conversion_error() -> None:
    """Found by fuzzing: level 4 raised ValueError from the Level enum."""
    msg = T.DiagnosticArray(header=header(T, 0, ''), status=[T.DiagnosticStatus(
        level=4, name='n', message='m', hardware_id='', values=[])])
    with pytest.raises(ConversionError, match='bad_level'):
        diagnostics_to_health(msg)
    assert Level.STALE.value == 3


@budget(0.5)
@given(st.floats(width=32), st.floats(width=32))
def test_battery_samples_are_read_as_they_are(voltage: float, current: float) -> None:
    msg = _cdr(T.BatteryState(
        header=header(T, 0, 'battery'), voltage=voltage, temperature=0.0, current=current,
        charge=0.0, capacity=0.0, design_capacity=0.0, percentage=0.0, power_supply_status=2,
        power_supply_health=0, power_supply_technology=0, present=True,
        cell_voltage=T.float32_array(()), cell_temperature=T.float32_array(()), location='',
        serial_number=''))
    got = battery_sample(msg)
    expected = (voltage, current)
    assert all(g == e or (math.isnan(g) and math.isnan(e)) for g, e in zip(got, expected))
