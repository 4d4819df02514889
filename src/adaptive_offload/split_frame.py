"""A split detector's crossing tensors as one ``sensor_msgs/CompressedImage`` on the ROS graph.

The head of a split edge detector (``edge_inference.split_roles``) publishes, for each frame it
ran, one CompressedImage: its header is the frame's (stamp, frame_id), and its ``data`` is a V2
inference request body exactly as :func:`adaptive_offload.split_wire.request_body` writes it for
the service's tail model: a JSON header (request parameters, and per tensor its name, datatype,
shape, compression and int8 scales), then each tensor's bytes. Its ``format`` names the content
and carries the JSON header's length, which V2 sends as an HTTP header::

    adaptive_offload/yolo-split; header_length=<bytes>

So the tensors travel in the one format this package has for them, the message is plain CDR
(a string and a byte sequence), and the body could be posted to a V2 tail model as it is. The
tail reads it back with :func:`read_split_frame`, which bounds what it parses and leaves the
tensors encoded (:func:`adaptive_offload.split_request.decode_wire_tensor` decodes each within
a bound).
"""

from __future__ import annotations

from dataclasses import dataclass
import re
from typing import Any, Mapping

from adaptive_offload.errors import ConversionError
from adaptive_offload.split_request import parse_request, SplitRequest
from adaptive_offload.split_wire import request_body, SplitTensors
import numpy as np

SPLIT_FORMAT = 'adaptive_offload/yolo-split'
"""``format`` of a split frame, before its ``; header_length=<n>`` parameter."""
MAX_HEADER_BYTES = 64 * 1024
"""Longest JSON header read (a split point's few tensors need well under 2 KiB)."""

_HEADER_LENGTH = re.compile(r'^\s*header_length\s*=\s*([0-9]{1,9})\s*$')


@dataclass(frozen=True)
class SplitFrame:
    """One frame's crossing tensors, ready to publish (the ``split_frame`` output kind).

    Attributes:
        stamp_ns: Header stamp of the camera frame the head ran on.
        frame_id: Its header frame_id.
        format: The message's ``format``: :data:`SPLIT_FORMAT` and the header length (the
            message field's name).
        data: The V2 request body: JSON header, then the tensors' bytes.
    """

    stamp_ns: int
    frame_id: str
    format: str  # noqa: A003 - the CompressedImage field it fills
    data: bytes


def split_frame(stamp_ns: int, frame_id: str, split: SplitTensors,
                parameters: Mapping[str, Any]) -> SplitFrame:
    """Return the message record of one frame's encoded crossing tensors.

    Args:
        stamp_ns: The camera frame's stamp.
        frame_id: Its frame_id.
        split: The split point, sizes and encoded tensors.
        parameters: More request parameters (model, weights digest, letterbox...).
    """
    body, header_length = request_body(split, parameters)
    return SplitFrame(stamp_ns, frame_id, f'{SPLIT_FORMAT}; header_length={header_length}', body)


def read_split_frame(fmt: str, data: Any, max_bytes: int) -> SplitRequest:
    """Read a split frame's ``format`` and ``data`` into a request, its tensors still encoded.

    Args:
        fmt: The message's ``format``.
        data: Its ``data`` (bytes, an ``array('B')`` from rclpy or a numpy array from rosbags).
        max_bytes: Most bytes the body may hold beyond its JSON header.

    Returns:
        The parsed request (see :func:`adaptive_offload.split_request.parse_request`).

    Raises:
        ConversionError: ``split_format`` for another format or a missing header length,
            ``split_too_large`` for a body over the bound, ``split_request`` or
            ``tensor_truncated`` for a body that does not add up.
    """
    kind, _, rest = fmt.partition(';')
    if kind.strip() != SPLIT_FORMAT:
        raise ConversionError('split_format', f'format {fmt[:60]!r} is not {SPLIT_FORMAT!r}')
    match = _HEADER_LENGTH.match(rest)
    if match is None:
        raise ConversionError('split_format', f'format {fmt[:80]!r} gives no header_length=<n>')
    header_length = int(match.group(1))
    if header_length > MAX_HEADER_BYTES:
        raise ConversionError('split_format', f'header_length {header_length} is over '
                                              f'{MAX_HEADER_BYTES} bytes')
    body = _as_bytes(data)
    if len(body) > max_bytes + header_length:
        raise ConversionError('split_too_large', f'{len(body)} bytes, over the '
                                                 f'{max_bytes}-byte bound plus its header')
    return parse_request(body, header_length)


def _as_bytes(data: Any) -> bytes:
    if isinstance(data, bytes):
        return data
    if isinstance(data, np.ndarray):
        return data.tobytes()
    try:
        return bytes(data)
    except (TypeError, ValueError) as err:
        raise ConversionError('split_format', f'data is not bytes: {err}') from err
