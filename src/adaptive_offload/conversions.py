"""Conversions between ROS messages and the plain types, written once for rclpy and rosbags.

Every builder takes a :class:`MessageTypes`, the set of message classes to instantiate: the rclpy
classes on a robot (``adaptive_offload.ros_interface``) or a rosbags typestore's classes here
(``adaptive_offload.typestore``). Only fields common to both are used, and every field is passed
by keyword, because rosbags classes have no defaults.
"""

from __future__ import annotations

from dataclasses import dataclass
import math
from typing import Any, Callable, Iterable, Sequence

from adaptive_offload.datatypes import Detection, DetectionSet, Frame, Level
from adaptive_offload.errors import ConversionError
from adaptive_offload.health_records import HealthStatus
from adaptive_offload.image_header import image_size
import cv2
import numpy as np
from numpy.typing import ArrayLike

# encoding -> (channels, bytes per channel, cv2 conversion to BGR or None)
_RAW_ENCODINGS: dict[str, tuple[int, int, int | None]] = {
    'rgb8': (3, 1, cv2.COLOR_RGB2BGR),
    'bgr8': (3, 1, None),
    'rgba8': (4, 1, cv2.COLOR_RGBA2BGR),
    'bgra8': (4, 1, cv2.COLOR_BGRA2BGR),
    'mono8': (1, 1, cv2.COLOR_GRAY2BGR),
    'mono16': (1, 2, cv2.COLOR_GRAY2BGR),
}
RAW_ENCODINGS = tuple(_RAW_ENCODINGS)
COMPRESSED_FORMATS = ('jpeg', 'png')
MAX_COMPRESSED_PIXELS = 1 << 26
"""Largest compressed image decoded (8192x8192, 200 MB as BGR); its header is read first."""


@dataclass(frozen=True)
class MessageTypes:
    """Message classes that the builders instantiate, and array adapters for their fields.

    Attributes:
        byte_array: Makes the value of a ``uint8[]`` field from bytes (rclpy wants
            ``array.array('B')``, rosbags a numpy array).
        float32_array: Makes the value of a ``float32[]`` field from floats (the same).
    """

    Time: Any
    Header: Any
    Image: Any
    CompressedImage: Any
    String: Any
    Point: Any
    Quaternion: Any
    Pose: Any
    PoseWithCovariance: Any
    Point2D: Any
    Pose2D: Any
    BoundingBox2D: Any
    ObjectHypothesis: Any
    ObjectHypothesisWithPose: Any
    Detection2D: Any
    Detection2DArray: Any
    KeyValue: Any
    DiagnosticStatus: Any
    DiagnosticArray: Any
    VisionClass: Any
    LabelInfo: Any
    BatteryState: Any
    ColorRGBA: Any
    Duration: Any
    ImageMarker: Any
    byte_array: Callable[[bytes], Any]
    float32_array: Callable[[Sequence[float]], Any]


MAX_STAMP_NS = 2**31 * 1_000_000_000
"""First stamp a ``builtin_interfaces/Time`` cannot hold (its ``sec`` is an int32)."""


def stamp_to_ns(stamp: Any) -> int:
    """Convert a ``builtin_interfaces/Time`` to integer nanoseconds."""
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


def header(types: MessageTypes, stamp_ns: int, frame_id: str) -> Any:
    """Build a ``std_msgs/Header``.

    Raises:
        ConversionError: If the stamp is negative or past 2038 (``Time.sec`` is an int32).
    """
    if stamp_ns < 0:
        raise ConversionError('bad_stamp', f'negative stamp {stamp_ns}')
    if stamp_ns >= MAX_STAMP_NS:  # else serializing the message fails, far from here
        raise ConversionError('bad_stamp', f'stamp {stamp_ns} ns past the int32 seconds')
    sec, nanosec = divmod(int(stamp_ns), 1_000_000_000)
    return types.Header(stamp=types.Time(sec=sec, nanosec=nanosec), frame_id=frame_id)


def _buffer(data: Any) -> np.ndarray:
    if isinstance(data, np.ndarray):
        return data.view(np.uint8).reshape(-1)
    return np.frombuffer(data, dtype=np.uint8)


def image_to_frame(msg: Any) -> Frame:
    """Decode a ``sensor_msgs/Image`` or ``sensor_msgs/CompressedImage`` into a BGR frame.

    Args:
        msg: The message (rclpy or rosbags).

    Returns:
        The frame, whose image owns its memory.

    Raises:
        ConversionError: With reason ``unsupported_encoding``, ``empty_image``,
            ``size_mismatch``, ``truncated_image``, ``image_too_large`` (a compressed image
            over :data:`MAX_COMPRESSED_PIXELS`) or ``decode_failed``.
    """
    stamp_ns = stamp_to_ns(msg.header.stamp)
    if hasattr(msg, 'format'):
        image, encoding = _decode_compressed(str(msg.format), _buffer(msg.data))
    else:
        encoding = str(msg.encoding).lower()
        image = _decode_raw(encoding, int(msg.height), int(msg.width), int(msg.step),
                            bool(msg.is_bigendian), _buffer(msg.data))
    return Frame(stamp_ns=stamp_ns, frame_id=str(msg.header.frame_id), image=image,
                 encoding=encoding)


def _decode_raw(encoding: str, height: int, width: int, step: int, bigendian: bool,
                data: np.ndarray) -> np.ndarray:
    if encoding not in _RAW_ENCODINGS:
        raise ConversionError(
            'unsupported_encoding',
            f'{encoding!r} (supported: {", ".join(RAW_ENCODINGS + COMPRESSED_FORMATS)})')
    channels, depth, code = _RAW_ENCODINGS[encoding]
    if height <= 0 or width <= 0:
        raise ConversionError('empty_image', f'{width}x{height}')
    row = width * channels * depth
    if step < row:
        raise ConversionError('size_mismatch', f'step {step} < width*pixel size {row}')
    if data.size != step * height:
        raise ConversionError(
            'size_mismatch', f'{data.size} data bytes != step {step} * height {height}')
    rows = data.reshape(height, step)[:, :row]
    if depth == 2:
        dtype = np.dtype('>u2' if bigendian else '<u2')
        pixels = (np.ascontiguousarray(rows).view(dtype) >> 8).astype(np.uint8)
    else:
        pixels = rows
    pixels = pixels.reshape(height, width, channels) if channels > 1 \
        else pixels.reshape(height, width)
    if code is None:
        return np.array(pixels, dtype=np.uint8, order='C', copy=True)
    return cv2.cvtColor(np.ascontiguousarray(pixels), code)


def _decode_compressed(fmt: str, data: np.ndarray) -> tuple[np.ndarray, str]:
    lowered = fmt.lower()
    if 'compresseddepth' in lowered:
        raise ConversionError('unsupported_encoding', f'compressed depth {fmt!r}')
    kind = 'png' if 'png' in lowered else 'jpeg' if ('jpeg' in lowered or 'jpg' in lowered) \
        else ''
    if not kind:
        raise ConversionError('unsupported_encoding', f'compressed format {fmt!r}')
    if data.size == 0:
        raise ConversionError('empty_image', 'no compressed data')
    if kind == 'jpeg' and data[:2].tobytes() == b'\xff\xd8' and \
            b'\xff\xd9' not in data[-16:].tobytes():
        # libjpeg pads a truncated stream with grey and only warns: refuse it instead.
        raise ConversionError('truncated_image', 'JPEG without end-of-image marker')
    # The decoder allocates what the header declares: a 2 KB JPEG can declare 30000x30000.
    width, height = image_size(data.tobytes())
    if width * height > MAX_COMPRESSED_PIXELS:
        raise ConversionError('image_too_large', f'{kind} header declares {width}x{height} '
                                                 f'pixels, over {MAX_COMPRESSED_PIXELS}')
    try:
        image = cv2.imdecode(data, cv2.IMREAD_COLOR)
    except cv2.error as err:  # e.g. a size over OpenCV's own limit, if this one were raised
        raise ConversionError('decode_failed', f'{kind} data: {err}') from err
    if image is None or image.size == 0:
        raise ConversionError('decode_failed', f'{kind} data ({data.size} bytes) not decodable')
    return image, kind


def encode_image(image: np.ndarray, fmt: str, quality: int = 90) -> bytes:
    """Encode a BGR image as JPEG or PNG.

    Args:
        image: HxWx3 uint8 BGR image.
        fmt: ``jpeg`` or ``png``.
        quality: JPEG quality 1-100 (ignored for PNG).

    Returns:
        The encoded bytes.

    Raises:
        ConversionError: If the format is unknown or encoding fails.
    """
    if fmt == 'jpeg':
        ok, buf = cv2.imencode('.jpg', image, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    elif fmt == 'png':
        ok, buf = cv2.imencode('.png', image, [cv2.IMWRITE_PNG_COMPRESSION, 1])
    else:
        raise ConversionError('unsupported_encoding', f'cannot encode {fmt!r}')
    if not ok:
        raise ConversionError('encode_failed', f'{fmt} encoding failed')
    return buf.tobytes()


def frame_to_message(types: MessageTypes, image: np.ndarray, stamp_ns: int, frame_id: str,
                     encoding: str, quality: int = 90) -> Any:
    """Build an Image (raw encodings) or CompressedImage (``jpeg``/``png``) from a BGR image.

    Args:
        types: Message classes.
        image: HxWx3 uint8 BGR image.
        stamp_ns: Header stamp.
        frame_id: Header frame_id.
        encoding: One of :data:`RAW_ENCODINGS` (8-bit ones) or :data:`COMPRESSED_FORMATS`.
        quality: JPEG quality.

    Returns:
        The message.

    Raises:
        ConversionError: If the encoding is not supported.
    """
    hdr = header(types, stamp_ns, frame_id)
    if encoding in COMPRESSED_FORMATS:
        return types.CompressedImage(header=hdr, format=encoding,
                                     data=types.byte_array(encode_image(image, encoding, quality)))
    to_raw = {'rgb8': cv2.COLOR_BGR2RGB, 'bgr8': None, 'rgba8': cv2.COLOR_BGR2RGBA,
              'bgra8': cv2.COLOR_BGR2BGRA, 'mono8': cv2.COLOR_BGR2GRAY}
    if encoding not in to_raw:
        raise ConversionError('unsupported_encoding', f'cannot build {encoding!r} images')
    code = to_raw[encoding]
    pixels = np.ascontiguousarray(image if code is None else cv2.cvtColor(image, code))
    height, width = pixels.shape[:2]
    return types.Image(header=hdr, height=height, width=width, encoding=encoding,
                       is_bigendian=0, step=pixels.strides[0],
                       data=types.byte_array(pixels.tobytes()))


def detections_to_message(types: MessageTypes, dets: DetectionSet) -> Any:
    """Build a ``vision_msgs/Detection2DArray``; the header is the source image's.

    The class name goes into ``hypothesis.class_id``; the score is clipped to [0, 1].

    Raises:
        ConversionError: If a box or score is not finite.
    """
    hdr = header(types, dets.stamp_ns, dets.frame_id)
    out = []
    for det in dets.detections:
        values = (det.x1, det.y1, det.x2, det.y2, det.score)
        if not all(math.isfinite(v) for v in values):
            raise ConversionError('bad_detection', f'non-finite value in {det}')
        pose = types.PoseWithCovariance(
            pose=types.Pose(position=types.Point(x=0.0, y=0.0, z=0.0),
                            orientation=types.Quaternion(x=0.0, y=0.0, z=0.0, w=1.0)),
            covariance=np.zeros(36, dtype=np.float64))
        hypothesis = types.ObjectHypothesisWithPose(
            hypothesis=types.ObjectHypothesis(class_id=det.class_name,
                                              score=min(1.0, max(0.0, float(det.score)))),
            pose=pose)
        center = types.Pose2D(
            position=types.Point2D(x=(det.x1 + det.x2) / 2.0, y=(det.y1 + det.y2) / 2.0),
            theta=0.0)
        bbox = types.BoundingBox2D(center=center, size_x=float(det.x2 - det.x1),
                                   size_y=float(det.y2 - det.y1))
        out.append(types.Detection2D(header=hdr, results=[hypothesis], bbox=bbox, id=''))
    return types.Detection2DArray(header=hdr, detections=out)


def message_to_detections(msg: Any, source: str, model: str = '') -> DetectionSet:
    """Read a ``vision_msgs/Detection2DArray``; each detection keeps its best hypothesis.

    Raises:
        ConversionError: ``bad_detection`` for a box or score that is not finite, or a box of
            negative size (the mirror of what :func:`detections_to_message` refuses).
    """
    dets = []
    for det in msg.detections:
        if not det.results:
            continue
        scores = [float(r.hypothesis.score) for r in det.results]
        best = det.results[scores.index(max(scores))]
        cx, cy = float(det.bbox.center.position.x), float(det.bbox.center.position.y)
        half_w, half_h = float(det.bbox.size_x) / 2.0, float(det.bbox.size_y) / 2.0
        values = (cx, cy, half_w, half_h, *scores)
        if not all(math.isfinite(v) for v in values) or half_w < 0 or half_h < 0:
            raise ConversionError(
                'bad_detection',
                f'non-finite value or negative size in box {values[:4]} scores {scores}')
        corners = (cx - half_w, cy - half_h, cx + half_w, cy + half_h)
        if not all(math.isfinite(v) for v in corners):  # finite halves can add up to inf
            raise ConversionError('bad_detection', f'box {values[:4]} overflows')
        dets.append(Detection(*corners,
                              float(best.hypothesis.score), str(best.hypothesis.class_id)))
    return DetectionSet(stamp_ns=stamp_to_ns(msg.header.stamp),
                        frame_id=str(msg.header.frame_id), source=source,
                        detections=tuple(dets), model=model)


def _level_value(types: MessageTypes, level: Level) -> Any:
    return getattr(types.DiagnosticStatus, level.name)


def health_to_diagnostics(types: MessageTypes, statuses: Iterable[HealthStatus],
                          stamp_ns: int) -> Any:
    """Build a ``diagnostic_msgs/DiagnosticArray`` using the message's level constants."""
    status = [
        types.DiagnosticStatus(
            level=_level_value(types, s.level), name=s.name, message=s.message,
            hardware_id=s.hardware_id,
            values=[types.KeyValue(key=k, value=v) for k, v in s.values])
        for s in statuses
    ]
    return types.DiagnosticArray(header=header(types, stamp_ns, ''), status=status)


_LEVELS = frozenset(level.value for level in Level)


def diagnostics_to_health(msg: Any) -> list[HealthStatus]:
    """Read a ``diagnostic_msgs/DiagnosticArray`` (levels are bytes in rclpy, ints in rosbags).

    Raises:
        ConversionError: ``bad_level`` for a level that is none of the four of the message.
    """
    out = []
    for s in msg.status:
        level = s.level
        number = int.from_bytes(level, 'little') if isinstance(level, bytes) else int(level)
        if number not in _LEVELS:
            raise ConversionError('bad_level', f'diagnostic level {number} of {s.name!r} is '
                                               'none of OK, WARN, ERROR, STALE')
        out.append(HealthStatus(name=str(s.name), level=Level(number), message=str(s.message),
                                hardware_id=str(s.hardware_id),
                                values=tuple((str(kv.key), str(kv.value)) for kv in s.values)))
    return out


def label_info_message(types: MessageTypes, names: dict[int, str], threshold: float,
                       stamp_ns: int, frame_id: str = '') -> Any:
    """Build a ``vision_msgs/LabelInfo``: the class map of a detector and its threshold."""
    return types.LabelInfo(
        header=header(types, stamp_ns, frame_id),
        class_map=[types.VisionClass(class_id=int(k), class_name=v)
                   for k, v in sorted(names.items())],
        threshold=float(threshold))


def battery_message(types: MessageTypes, stamp_ns: int, voltage_v: float,
                    current_a: float) -> Any:
    """Build a ``sensor_msgs/BatteryState`` of a discharging battery (current negative).

    Args:
        types: Message classes.
        stamp_ns: Header stamp.
        voltage_v: Voltage.
        current_a: Current; ROS reports discharge as negative.
    """
    nan = float('nan')
    return types.BatteryState(
        header=header(types, stamp_ns, 'battery'), voltage=voltage_v, temperature=nan,
        current=current_a, charge=nan, capacity=nan, design_capacity=nan, percentage=nan,
        power_supply_status=2, power_supply_health=0, power_supply_technology=0, present=True,
        cell_voltage=types.float32_array(()), cell_temperature=types.float32_array(()),
        location='', serial_number='')


def battery_sample(msg: Any) -> tuple[float, float]:
    """Return (voltage, current) of a ``sensor_msgs/BatteryState``, NaN where unknown."""
    return float(msg.voltage), float(msg.current)


def string_message(types: MessageTypes, text: str) -> Any:
    """Build a ``std_msgs/String``."""
    return types.String(data=text)


def boxes_from_arrays(xyxy: ArrayLike, scores: ArrayLike, classes: ArrayLike,
                      names: Sequence[str] | dict[int, str], width: int,
                      height: int) -> tuple[Detection, ...]:
    """Turn detector output arrays into detections clipped to the image.

    Args:
        xyxy: Nx4 boxes in pixels of the original image.
        scores: N confidences.
        classes: N class indices.
        names: Class index to name.
        width: Image width, for clipping.
        height: Image height, for clipping.

    Returns:
        The detections, in input order.
    """
    boxes = np.asarray(xyxy, dtype=np.float64).reshape(-1, 4).copy()
    boxes[:, [0, 2]] = boxes[:, [0, 2]].clip(0, width)
    boxes[:, [1, 3]] = boxes[:, [1, 3]].clip(0, height)
    out = []
    for (x1, y1, x2, y2), score, cls in zip(boxes.tolist(), np.asarray(scores).tolist(),
                                            np.asarray(classes).astype(int).tolist()):
        if isinstance(names, dict):
            name = names.get(cls, str(cls))
        else:
            name = names[cls] if 0 <= cls < len(names) else str(cls)
        out.append(Detection(x1, y1, x2, y2, float(score), str(name)))
    return tuple(out)
