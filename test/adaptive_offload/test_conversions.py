"""Conversions against ROS 2 message classes (rosbags Humble and Jazzy stores), through CDR."""

from __future__ import annotations

import math
from typing import Any

from adaptive_offload.conversions import (battery_message, battery_sample, boxes_from_arrays,
                                          detections_to_message, diagnostics_to_health,
                                          encode_image, frame_to_message, header,
                                          health_to_diagnostics, image_to_frame,
                                          message_to_detections)
from adaptive_offload.datatypes import Detection, DetectionSet, Level
from adaptive_offload.errors import ConversionError
from adaptive_offload.health_records import HealthStatus
from adaptive_offload.typestore import message_types
import numpy as np
import pytest

RNG = np.random.default_rng(7)
BGR = RNG.integers(0, 255, (17, 33, 3), np.uint8)  # odd sizes on purpose


def _cdr(store: Any, msg: Any) -> Any:
    return store.deserialize_cdr(store.serialize_cdr(msg, msg.__msgtype__), msg.__msgtype__)


def _raw(store: Any, encoding: str, pixels: np.ndarray, step: int, bigendian: int = 0) -> Any:
    t = message_types(store)
    height, width = pixels.shape[:2]
    rows = pixels.reshape(height, -1).view(np.uint8)
    padded = np.zeros((height, step), np.uint8)
    padded[:, :rows.shape[1]] = rows
    padded[:, rows.shape[1]:] = 0xAB  # padding that must be ignored
    return _cdr(store, t.Image(header=header(t, 5, 'cam'), height=height, width=width,
                               encoding=encoding, is_bigendian=bigendian, step=step,
                               data=padded.reshape(-1)))


@pytest.mark.parametrize('encoding, pixels, expected', [
    ('bgr8', BGR, BGR),
    ('rgb8', BGR[:, :, ::-1], BGR),
    ('bgra8', np.dstack([BGR, np.full(BGR.shape[:2], 9, np.uint8)]), BGR),
    ('rgba8', np.dstack([BGR[:, :, ::-1], np.full(BGR.shape[:2], 9, np.uint8)]), BGR),
    ('mono8', BGR[:, :, 0], np.dstack([BGR[:, :, 0]] * 3)),
])
@pytest.mark.parametrize('padding', [0, 7])
def test_raw_encodings_decode_exactly_with_any_step(store: Any, encoding: str,
                                                    pixels: np.ndarray, expected: np.ndarray,
                                                    padding: int) -> None:
    row = pixels.shape[1] * (pixels.shape[2] if pixels.ndim == 3 else 1)
    frame = image_to_frame(_raw(store, encoding, np.ascontiguousarray(pixels), row + padding))
    assert frame.image.dtype == np.uint8 and frame.image.flags['C_CONTIGUOUS']
    np.testing.assert_array_equal(frame.image, expected)
    assert (frame.stamp_ns, frame.frame_id, frame.encoding) == (5, 'cam', encoding)


@pytest.mark.parametrize('bigendian', [0, 1])
def test_mono16_honours_the_big_endian_flag(store: Any, bigendian: int) -> None:
    values = np.array([[0x1234, 0xFF01], [0x0080, 0x8000]], np.uint16)
    pixels = values.astype('>u2' if bigendian else '<u2')
    frame = image_to_frame(_raw(store, 'mono16', pixels, 4, bigendian))
    np.testing.assert_array_equal(frame.image[:, :, 0], [[0x12, 0xFF], [0x00, 0x80]])


@pytest.mark.parametrize('fmt', ['jpeg', 'png', 'rgb8; jpeg compressed bgr8', 'PNG'])
def test_compressed_images(store: Any, fmt: str) -> None:
    t = message_types(store)
    smooth = np.dstack([np.tile(np.arange(64, dtype=np.uint8), (48, 1))] * 3) * 3
    kind = 'png' if 'png' in fmt.lower() else 'jpeg'
    msg = _cdr(store, t.CompressedImage(header=header(t, 9, 'cam'), format=fmt,
                                        data=np.frombuffer(encode_image(smooth, kind, 95),
                                                           np.uint8)))
    frame = image_to_frame(msg)
    error = np.abs(frame.image.astype(int) - smooth.astype(int)).mean()
    assert frame.encoding == kind and (error == 0 if kind == 'png' else error < 3)


def test_frame_to_message_round_trips_every_encoding(store: Any) -> None:
    t = message_types(store)
    for encoding in ('rgb8', 'bgr8', 'rgba8', 'bgra8', 'png'):
        back = image_to_frame(_cdr(store, frame_to_message(t, BGR, 3, 'c', encoding)))
        np.testing.assert_array_equal(back.image, BGR)
    gray = image_to_frame(_cdr(store, frame_to_message(t, BGR, 3, 'c', 'mono8'))).image
    assert (gray[:, :, 0] == gray[:, :, 2]).all()
    with pytest.raises(ConversionError) as err:
        frame_to_message(t, BGR, 3, 'c', 'yuv422')
    assert err.value.reason == 'unsupported_encoding'


def _bad_raw(store: Any, **change: Any) -> Any:
    msg = _raw(store, 'rgb8', BGR, 33 * 3)
    for key, value in change.items():
        setattr(msg, key, value)
    return msg


@pytest.mark.parametrize('change, reason', [
    ({'encoding': '16UC1'}, 'unsupported_encoding'),
    ({'encoding': 'yuv422'}, 'unsupported_encoding'),
    ({'encoding': '32FC1'}, 'unsupported_encoding'),
    ({'step': 33 * 3 - 1}, 'size_mismatch'),
    ({'data': np.zeros(10, np.uint8)}, 'size_mismatch'),
    ({'data': np.zeros(17 * 99 + 1, np.uint8)}, 'size_mismatch'),
    ({'width': 0}, 'empty_image'),
    ({'height': 0}, 'empty_image'),
])
def test_bad_raw_images_raise_with_a_reason(store: Any, change: dict, reason: str) -> None:
    with pytest.raises(ConversionError) as err:
        image_to_frame(_bad_raw(store, **change))
    assert err.value.reason == reason


@pytest.mark.parametrize('fmt, data, reason', [
    ('jpeg', b'', 'empty_image'),
    ('png', b'\x89PNG\r\n\x1a\n' + b'\x00' * 40, 'decode_failed'),
    ('jpeg', b'\xff\xd8' + bytes(range(200)), 'truncated_image'),
    ('jpeg', encode_image(BGR, 'jpeg', 90)[:300], 'truncated_image'),
    ('16UC1; compressedDepth', b'x', 'unsupported_encoding'),
    ('tiff', b'x', 'unsupported_encoding'),
])
def test_bad_compressed_images_raise_with_a_reason(store: Any, fmt: str, data: bytes,
                                                   reason: str) -> None:
    t = message_types(store)
    msg = t.CompressedImage(header=header(t, 1, 'c'), format=fmt,
                            data=np.frombuffer(data, np.uint8))
    with pytest.raises(ConversionError) as err:
        image_to_frame(_cdr(store, msg))
    assert err.value.reason == reason


def test_detections_round_trip_with_header_and_class_names(store: Any) -> None:
    t = message_types(store)
    dets = DetectionSet(1_700_000_000_500_000_000, 'cam', 'edge',
                        (Detection(10.0, 20.0, 50.0, 80.0, 0.75, 'person'),
                         Detection(0.0, 0.0, 4.0, 2.0, 1.0, 'car')), 'yolov8n')
    msg = _cdr(store, detections_to_message(t, dets))
    assert (msg.header.stamp.sec, msg.header.stamp.nanosec) == (1_700_000_000, 500_000_000)
    assert msg.header.frame_id == 'cam' and msg.detections[0].header.frame_id == 'cam'
    first = msg.detections[0]
    assert first.results[0].hypothesis.class_id == 'person'
    assert (first.bbox.center.position.x, first.bbox.center.position.y) == (30.0, 50.0)
    assert (first.bbox.size_x, first.bbox.size_y) == (40.0, 60.0)
    assert message_to_detections(msg, 'edge', 'yolov8n') == dets


def test_scores_are_clipped_and_non_finite_boxes_refused(store: Any) -> None:
    t = message_types(store)
    clipped = detections_to_message(t, DetectionSet(1, 'c', 'e', (
        Detection(0, 0, 1, 1, 1.7, 'a'), Detection(0, 0, 1, 1, -0.2, 'b'))))
    assert [d.results[0].hypothesis.score for d in clipped.detections] == [1.0, 0.0]
    with pytest.raises(ConversionError) as err:
        detections_to_message(t, DetectionSet(1, 'c', 'e', (
            Detection(math.nan, 0, 1, 1, 0.5, 'a'),)))
    assert err.value.reason == 'bad_detection'
    with pytest.raises(ConversionError, match='negative stamp'):
        header(t, -1, 'c')


def test_best_hypothesis_is_kept_when_reading(store: Any) -> None:
    t = message_types(store)
    msg = detections_to_message(t, DetectionSet(1, 'c', 'e', (
        Detection(0, 0, 2, 2, 0.3, 'cat'),)))
    low = msg.detections[0].results[0]
    high = t.ObjectHypothesisWithPose(
        hypothesis=t.ObjectHypothesis(class_id='dog', score=0.9), pose=low.pose)
    msg.detections[0].results = [low, high]
    assert message_to_detections(_cdr(store, msg), 'e').detections[0].class_name == 'dog'


def test_diagnostics_round_trip_every_level(store: Any) -> None:
    t = message_types(store)
    statuses = [HealthStatus(f'check {lvl.name}', lvl, f'm{lvl.value}', 'robot',
                             (('rate_hz', '9.5'), ('k', 'v'))) for lvl in Level]
    msg = _cdr(store, health_to_diagnostics(t, statuses, 42))
    constants = [t.DiagnosticStatus.OK, t.DiagnosticStatus.WARN, t.DiagnosticStatus.ERROR,
                 t.DiagnosticStatus.STALE]
    assert [s.level for s in msg.status] == constants
    assert diagnostics_to_health(msg) == statuses


def test_rclpy_style_byte_levels_are_read() -> None:
    class Status:
        level, name, message, hardware_id, values = b'\x02', 'n', 'm', 'h', []

    class Array:
        status = [Status()]

    assert diagnostics_to_health(Array())[0].level is Level.ERROR


def test_boxes_from_arrays_clips_and_names() -> None:
    dets = boxes_from_arrays(np.array([[-5, 2, 120, 40], [1, 1, 2, 2]]), np.array([0.5, 0.4]),
                             np.array([0, 7]), {0: 'person'}, 100, 30)
    assert (dets[0].x1, dets[0].x2, dets[0].y2) == (0.0, 100.0, 30.0)
    assert [d.class_name for d in dets] == ['person', '7']
    assert boxes_from_arrays(np.zeros((1, 4)), [0.1], [1], ['a', 'b'], 10, 10)[0].class_name \
        == 'b'


def test_battery_state_round_trips_through_cdr(store: Any) -> None:
    msg = _cdr(store, battery_message(message_types(store), 5_000_000_123, 12.5, -1.25))
    assert msg.__msgtype__ == 'sensor_msgs/msg/BatteryState'
    assert battery_sample(msg) == (12.5, -1.25)
    assert (msg.header.stamp.sec, msg.header.stamp.nanosec) == (5, 123)
    assert math.isnan(msg.percentage) and msg.present
    msg.voltage = float('nan')  # unknown: the reader skips it
    assert math.isnan(battery_sample(msg)[0])
