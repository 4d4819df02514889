"""Split computing on the wire: a split detector's crossing tensors as a V2 inference request.

A robot that runs the head of a split R-CNN sends what crosses the split to the service's tail
model (``<model>-tail``, :func:`tail_model_name`) as an Open Inference Protocol (V2) REST
request in the binary tensor data extension: a JSON header, then each tensor's bytes. The robot
builds it here; the service reads it with :mod:`adaptive_offload.split_request`, so that neither
side imports the other:

* one input per crossing tensor: ``name`` (the tensor's name at the split point), ``datatype``
  ``FP32``, ``FP16`` or ``INT8``, ``shape`` (NCHW) and the parameters ``binary_data_size``
  (bytes of it after the header), ``compression`` (``none``, ``zstd`` or ``lz4``: how those
  bytes are compressed) and, for ``INT8``, ``scales`` (base64 of the little-endian float32
  per-channel scales, see :class:`adaptive_offload.tensor_codec.Int8Encoding`);
* request parameters ``point`` (the split point's index), ``padded_size`` (``HxW``),
  ``image_sizes`` and ``original_sizes`` (``HxW`` per image, separated by commas), plus whatever
  else the caller adds (``robot_id``, ``budget_us``; to a middle device of three tiers,
  ``forward_to`` and ``forward_encoding``: :data:`FORWARD_TO`);
* the HTTP header ``Inference-Header-Content-Length`` (:data:`HEADER_LENGTH`): the JSON
  header's length in bytes.

V2 parameters are strings, integers or booleans (its gRPC mapping has no lists), hence sizes as
``HxW`` and the scales as base64. Nothing here imports torch: torch tensors are read through
their ``numpy()``.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
import hashlib
import json
import math
import re
from typing import Any, Mapping, Protocol, Sequence

from adaptive_offload.errors import ConversionError
from adaptive_offload.tensor_codec import ENCODINGS, MAX_NDIM, read_header
from adaptive_offload.tensor_compression import COMPRESSORS
import numpy as np

TAIL_SUFFIX = '-tail'
"""The tail model's name is the image model's name and this."""
HEADER_LENGTH = 'Inference-Header-Content-Length'
"""HTTP header of the V2 binary data extension: the length of the JSON header."""
POINT, PADDED_SIZE = 'point', 'padded_size'
IMAGE_SIZES, ORIGINAL_SIZES = 'image_sizes', 'original_sizes'
BINARY_DATA_SIZE, COMPRESSION, SCALES = 'binary_data_size', 'compression', 'scales'
FORWARD_TO, FORWARD_ENCODING = 'forward_to', 'forward_encoding'
"""Request parameters of a three-tier request to the middle device's tail: the name of the
point after which it hands over to the cloud's tail, and the encoding (``int8+zstd``) of what
crosses there. Without them the middle device runs the whole rest of the model."""
DATATYPES = {'FP32': 'fp32', 'FP16': 'fp16', 'INT8': 'int8'}
"""V2 datatype of a crossing tensor -> its encoding in :data:`tensor_codec.ENCODINGS`."""
MAX_TENSORS = 64
"""Most inputs a request may hold (a split point has a handful)."""

_DATATYPE_OF = {encoding: datatype for datatype, encoding in DATATYPES.items()}
_SIZE = re.compile(r'^([0-9]{1,6})x([0-9]{1,6})$')

Size = tuple[int, int]


def tail_model_name(model: str) -> str:
    """Return the name of the tail model served next to image model ``model``."""
    return model + TAIL_SUFFIX


@dataclass(frozen=True)
class WireTensor:
    """One crossing tensor as it travels: encoded, compressed, described by V2 fields.

    Attributes:
        name: The tensor's name at the split point.
        datatype: ``FP32``, ``FP16`` or ``INT8``.
        shape: Its shape (NCHW).
        compression: Key of ``tensor_compression.COMPRESSORS``.
        scales: float32 per-channel scales (``INT8``); empty otherwise.
        data: The encoded elements, C-ordered, compressed.
    """

    name: str
    datatype: str
    shape: tuple[int, ...]
    compression: str
    data: bytes
    scales: np.ndarray = field(default_factory=lambda: np.empty(0, np.float32))

    @property
    def decoded_bytes(self) -> int:
        """Size of the tensor once decoded to float32."""
        return math.prod(self.shape) * 4


@dataclass(frozen=True)
class SplitTensors:
    """What a head sends a tail for one request, ready for the wire.

    Attributes:
        point: Index of the split point.
        padded_size: (height, width) of the padded batch.
        image_sizes: Per image, (height, width) after resizing.
        original_sizes: Per image, (height, width) as taken.
        tensors: The crossing tensors.
    """

    point: int
    padded_size: Size
    image_sizes: tuple[Size, ...]
    original_sizes: tuple[Size, ...]
    tensors: tuple[WireTensor, ...]

    @property
    def tensor_bytes(self) -> int:
        """Bytes of tensor data on the wire."""
        return sum(len(t.data) for t in self.tensors)


class SplitPayload(Protocol):
    """What a split model's head returns (``rcnn_service.rcnn_split.RcnnPayload``)."""

    @property
    def point(self) -> int:
        """Index of the split point."""

    @property
    def tensors(self) -> Mapping[str, Any]:
        """The crossing tensors by name: torch tensors or arrays."""

    @property
    def padded_size(self) -> Size:
        """(height, width) of the padded batch."""

    @property
    def image_sizes(self) -> Sequence[Size]:
        """Per image, (height, width) after resizing."""

    @property
    def original_sizes(self) -> Sequence[Size]:
        """Per image, (height, width) as taken."""


def encode_wire_tensor(name: str, array: Any, encoding: str = 'fp16',
                       compression: str = 'zstd') -> WireTensor:
    """Encode one float tensor (a torch tensor or an array) for the wire.

    Raises:
        ConversionError: For an unknown encoding or compression, a non-float tensor, or values
            the encoding cannot represent.
    """
    codec, compressor = ENCODINGS.get(encoding), COMPRESSORS.get(compression)
    if codec is None or compressor is None:
        raise ConversionError('tensor_encoding', f'unknown encoding/compression '
                              f'{encoding!r}/{compression!r} (encodings {sorted(ENCODINGS)}, '
                              f'compressions {sorted(COMPRESSORS)})')
    values = _numpy(array)
    if values.dtype.kind != 'f' or values.ndim > MAX_NDIM:
        raise ConversionError('tensor_dtype', f'tensor {name}: {values.dtype} of '
                              f'{values.ndim} dimensions is no float tensor to encode')
    wire, scales = codec.encode(values)
    data = compressor.compress(np.ascontiguousarray(wire, codec.wire_dtype).tobytes())
    return WireTensor(name, _DATATYPE_OF[encoding], tuple(int(s) for s in values.shape),
                      compression, data, scales.astype(np.float32))


def wire_tensor_from_blob(name: str, blob: bytes) -> WireTensor:
    """Return a tensor :func:`tensor_codec.encode_tensor` encoded, for the wire, as it is.

    Raises:
        ConversionError: If the blob is truncated or corrupt.
    """
    header = read_header(blob, max_bytes=2 ** 62)  # the receiver checks its own bound
    data = bytes(memoryview(blob)[header.payload_offset:])
    return WireTensor(name, _DATATYPE_OF[header.encoding], tuple(header.shape),
                      header.compression, data, header.scales)


def encode_split(payload: SplitPayload, encoding: str = 'fp16',
                 compression: str = 'zstd') -> SplitTensors:
    """Encode a head's payload for the wire.

    Raises:
        ConversionError: If a tensor cannot be encoded so.
    """
    return SplitTensors(
        int(payload.point), _pair(payload.padded_size),
        tuple(_pair(s) for s in payload.image_sizes),
        tuple(_pair(s) for s in payload.original_sizes),
        tuple(encode_wire_tensor(name, t, encoding, compression)
              for name, t in payload.tensors.items()))


def split_from_encoded(meta: Mapping[str, Any], blobs: Mapping[str, bytes]) -> SplitTensors:
    """Return ``rcnn_service.rcnn_split.encode_payload``'s result for the wire, not re-encoded.

    Args:
        meta: ``point``, ``padded_size``, ``image_sizes``, ``original_sizes``.
        blobs: The tensors as :func:`tensor_codec.encode_tensor` bytes, by name.

    Raises:
        ConversionError: If the metadata is malformed or a blob is corrupt.
    """
    try:
        return SplitTensors(
            int(meta[POINT]), _pair(meta[PADDED_SIZE]),
            tuple(_pair(s) for s in meta[IMAGE_SIZES]),
            tuple(_pair(s) for s in meta[ORIGINAL_SIZES]),
            tuple(wire_tensor_from_blob(n, b) for n, b in blobs.items()))
    except (KeyError, TypeError, ValueError) as err:
        raise ConversionError('split_meta', f'not a split payload: {err!r}') from err


def request_body(split: SplitTensors, parameters: Mapping[str, Any] | None = None,
                 request_id: str = '') -> tuple[bytes, int]:
    """Return the V2 REST request body of ``split`` and the length of its JSON header.

    Args:
        split: What to send.
        parameters: More request parameters (``robot_id``, ``budget_us``).
        request_id: The request's ``id``; empty sends none.

    Returns:
        The body, and the value of the :data:`HEADER_LENGTH` HTTP header.
    """
    inputs = []
    for t in split.tensors:
        params: dict[str, Any] = {BINARY_DATA_SIZE: len(t.data), COMPRESSION: t.compression}
        if t.scales.size:
            params[SCALES] = base64.b64encode(t.scales.astype('<f4').tobytes()).decode('ascii')
        inputs.append({'name': t.name, 'datatype': t.datatype, 'shape': list(t.shape),
                       'parameters': params})
    header: dict[str, Any] = {'parameters': {
        **(parameters or {}), POINT: split.point, PADDED_SIZE: format_sizes([split.padded_size]),
        IMAGE_SIZES: format_sizes(split.image_sizes),
        ORIGINAL_SIZES: format_sizes(split.original_sizes)}, 'inputs': inputs}
    if request_id:
        header['id'] = request_id
    head = json.dumps(header).encode()
    return head + b''.join(t.data for t in split.tensors), len(head)


def format_sizes(sizes: Sequence[Size]) -> str:
    """Return sizes as the wire writes them: ``HxW`` separated by commas."""
    return ','.join(f'{int(h)}x{int(w)}' for h, w in sizes)


def parse_sizes(text: Any, what: str = 'sizes') -> tuple[Size, ...]:
    """Read :func:`format_sizes`'s text; every side positive.

    Raises:
        ConversionError: ``split_request`` if it is not such text.
    """
    parts = text.split(',') if isinstance(text, str) and text else []
    found = [_SIZE.match(p.strip()) for p in parts]
    sizes = tuple((int(m.group(1)), int(m.group(2))) for m in found if m)
    if not sizes or len(sizes) != len(parts) or min(min(s) for s in sizes) < 1:
        raise _bad(f'parameter {what} must be HxW (positive integers), separated by commas, '
                   f'got {str(text)[:40]!r}')
    return sizes


def weights_digest(state: Mapping[str, Any]) -> str:
    """Return the SHA-256 of a model's weights (a state_dict): names, dtypes, shapes, values.

    A head and a tail split from the same weights have the same digest, whatever file or
    device they were loaded from.
    """
    digest = hashlib.sha256()
    for name in sorted(state):
        values = _numpy(state[name])
        values = values.astype(values.dtype.newbyteorder('<'))
        digest.update(f'{name}\0{values.dtype.str}\0{list(values.shape)}\0'.encode())
        digest.update(values.tobytes(order='C'))
    return digest.hexdigest()


def _numpy(value: Any) -> np.ndarray:
    if hasattr(value, 'detach'):  # a torch tensor, on any device
        value = value.detach().cpu().numpy()
    return np.asarray(value)


def _pair(value: Any) -> Size:
    h, w = value
    return int(h), int(w)


def _bad(detail: str) -> ConversionError:
    return ConversionError('split_request', detail)
