"""Messages to records and back at the graph's ports, one way for rclpy and the replay.

An input port's record kind says what its handler takes (:func:`decode_input` reads it from a
message); an output port's kind says how its record becomes a message (:func:`encode_output`).
The replay passes records between the cores as they are and encodes them only for the output
bag; the rclpy nodes decode every message they take and encode every record they publish.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from adaptive_offload.conversions import (detections_to_message, frame_to_message, header,
                                          health_to_diagnostics, label_info_message,
                                          message_to_detections, MessageTypes, stamp_to_ns)
from adaptive_offload.datatypes import Decision, Frame, FrameRecord, InferenceReport, JsonRecord
from adaptive_offload.drawing import detections_to_image_marker
from adaptive_offload.errors import ConversionError
from adaptive_offload.graph import Port
from adaptive_offload.health_records import FaultEvent, HealthEvent, HealthStatus
from adaptive_offload.split_frame import SplitFrame

# The input kinds whose messages are std_msgs/String holding a record's JSON.
JSON_RECORDS: Mapping[str, type[JsonRecord]] = {
    'decision': Decision, 'report': InferenceReport, 'health_event': HealthEvent,
    'frame_record': FrameRecord, 'fault': FaultEvent}


@dataclass(frozen=True)
class FrameHeader:
    """The key of a camera frame: what the manager needs of an image message."""

    stamp_ns: int
    frame_id: str


@dataclass(frozen=True)
class BatterySample:
    """Voltage and current of a ``sensor_msgs/BatteryState`` (NaN where unknown)."""

    voltage_v: float
    current_a: float


@dataclass(frozen=True)
class LabelMap:
    """A detector's class map and confidence threshold (``vision_msgs/LabelInfo``)."""

    names: Mapping[int, str]
    threshold: float
    stamp_ns: int


@dataclass(frozen=True)
class Diagnostics:
    """The statuses of one ``/diagnostics`` message."""

    statuses: Sequence[HealthStatus]
    stamp_ns: int


def decode_input(port: Port, msg: Any) -> Any:
    """Return the record an input's handler takes, read from a message.

    Raises:
        ConversionError: If the message does not hold a valid record of the port's kind.
    """
    kind = port.kind
    if kind == 'image':
        return msg
    if kind == 'frame':
        return FrameHeader(stamp_to_ns(msg.header.stamp), str(msg.header.frame_id))
    if kind == 'arrival':
        return port.topic
    if kind == 'detections':
        return message_to_detections(msg, port.source)
    if kind == 'battery':
        return BatterySample(float(msg.voltage), float(msg.current))
    record_type = JSON_RECORDS.get(kind)
    if record_type is None:
        raise ConversionError('unknown_kind', f'input {port.name}: record kind {kind!r}')
    return record_type.from_json(msg.data)


def encode_output(types: MessageTypes, port: Port, record: Any) -> Any:
    """Return the message an output publishes for a record.

    Raises:
        ConversionError: For an unknown output kind.
    """
    kind = port.kind
    if kind == 'detections':
        return detections_to_message(types, record)
    if kind == 'json':
        return types.String(data=record.to_json())
    if kind == 'diagnostics':
        return health_to_diagnostics(types, record.statuses, record.stamp_ns)
    if kind == 'label_info':
        return label_info_message(types, dict(record.names), record.threshold, record.stamp_ns)
    if kind == 'image_marker':
        return detections_to_image_marker(types, record)
    if kind == 'image':
        frame: Frame = record
        return frame_to_message(types, frame.image, frame.stamp_ns, frame.frame_id,
                                frame.encoding)
    if kind == 'split_frame':
        split: SplitFrame = record
        return types.CompressedImage(header=header(types, split.stamp_ns, split.frame_id),
                                     format=split.format, data=types.byte_array(split.data))
    raise ConversionError('unknown_kind', f'output {port.name}: kind {kind!r}')
