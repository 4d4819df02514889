"""Intermediate tensors on the wire: a float array as self-describing, compressed bytes.

A split DNN (see ``edge_inference.yolo_split``) sends the feature maps that cross the split from
one tier to the other. :func:`encode_tensor` turns one float array into bytes: an *encoding*
(``fp32``, ``fp16`` or ``int8``, the latter with a symmetric per-channel scale over axis 1)
followed by a *compression* (``zstd``, ``lz4`` or ``none``). :func:`decode_tensor` needs nothing
but those bytes, and rejects corrupt, truncated or oversized input with
:class:`~adaptive_offload.errors.ConversionError` before allocating more than ``max_bytes``.

Wire layout (little-endian)::

    magic 'AOTN' | version u8 | encoding 8s | compression 8s | dtype 8s | ndim u8
    | scale count u32 | payload length u64 | crc32 u32      (the fixed header, 46 bytes)
    | shape: ndim x u64 | scales: count x f32 | payload

The CRC-32 covers every byte but its own; the payload is the encoded array,
C-ordered, compressed.
"""

from __future__ import annotations

from dataclasses import dataclass
import math
import struct
from typing import Any, Protocol
import zlib

from adaptive_offload.errors import ConversionError
from adaptive_offload.tensor_compression import COMPRESSORS
import numpy as np

MAGIC = b'AOTN'
VERSION = 1
DEFAULT_MAX_BYTES = 256 * 1024 * 1024
"""Default bound of a decoded array's size (bytes); a YOLO feature map at 640 px is ~3 MB."""

MAX_NDIM = 8
INT8_LEVELS = 127
"""Symmetric int8: codes -127..127, so that ``-q`` is always representable."""

HEADER = struct.Struct('<4sB8s8s8sBIQI')
"""The fixed part of the header (see the module's docstring)."""
_CRC_AT = HEADER.size - 4
_NAME_BYTES = 8
_DTYPES: dict[str, np.dtype] = {'float16': np.dtype('<f2'), 'float32': np.dtype('<f4'),
                                'float64': np.dtype('<f8')}
_FP16_MAX = float(np.finfo(np.float16).max)


class Encoding(Protocol):
    """How a float array becomes a fixed-width array on the wire (before compression).

    Attributes:
        name: Registry key, written into the header (at most 8 ASCII characters).
        wire_dtype: Little-endian dtype of the encoded elements.
    """

    name: str
    wire_dtype: np.dtype

    def scale_count(self, shape: tuple[int, ...]) -> int:
        """Return how many float32 scales an array of ``shape`` carries."""

    def encode(self, array: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Return (the encoded array, its float32 scales).

        Raises:
            ConversionError: If the values cannot be represented in this encoding.
        """

    def decode(self, wire: np.ndarray, scales: np.ndarray, dtype: np.dtype) -> np.ndarray:
        """Return the float array of ``dtype`` that ``wire`` and ``scales`` encode."""


class Fp32Encoding:
    """Lossless: the array as little-endian float32 (a float64 array is rounded once)."""

    name = 'fp32'
    wire_dtype: np.dtype = np.dtype('<f4')

    def scale_count(self, shape: tuple[int, ...]) -> int:
        """Carry no scales."""
        return 0

    def encode(self, array: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Cast to float32."""
        return array.astype(self.wire_dtype), np.empty(0, np.float32)

    def decode(self, wire: np.ndarray, scales: np.ndarray, dtype: np.dtype) -> np.ndarray:
        """Cast back to ``dtype``."""
        return wire.astype(dtype)


class Fp16Encoding:
    """Half precision: relative error at most 2**-11 for normal values."""

    name = 'fp16'
    wire_dtype: np.dtype = np.dtype('<f2')

    def scale_count(self, shape: tuple[int, ...]) -> int:
        """Carry no scales."""
        return 0

    def encode(self, array: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Round to float16.

        Raises:
            ConversionError: If a finite value is beyond float16's range (it would become inf).
        """
        finite = array[np.isfinite(array)]
        if finite.size and float(np.abs(finite).max()) > _FP16_MAX:
            raise ConversionError('tensor_range', f'|value| > {_FP16_MAX:g} does not fit fp16')
        return array.astype(self.wire_dtype), np.empty(0, np.float32)

    def decode(self, wire: np.ndarray, scales: np.ndarray, dtype: np.dtype) -> np.ndarray:
        """Widen back to ``dtype``."""
        return wire.astype(dtype)


class Int8Encoding:
    """Symmetric linear int8 with one scale per channel (axis 1; one scale below 2-D).

    A value ``x`` of channel ``c`` is sent as ``round(x / s_c)`` with
    ``s_c = max |x[:, c]| / 127``, so its error after decoding is at most ``s_c / 2``.
    """

    name = 'int8'
    wire_dtype: np.dtype = np.dtype('i1')

    def scale_count(self, shape: tuple[int, ...]) -> int:
        """One scale per channel of axis 1, or one for a 0-D/1-D array."""
        return shape[1] if len(shape) >= 2 else 1

    def encode(self, array: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Quantize per channel.

        Raises:
            ConversionError: If the array holds NaN or infinity.
        """
        if not np.isfinite(array).all():
            raise ConversionError('tensor_range', 'int8 cannot encode NaN or infinity')
        values = array.astype(np.float32)
        channels = self._by_channel(values)
        peak = np.abs(channels).max(axis=1) if channels.size else np.zeros(len(channels))
        scales = (peak / INT8_LEVELS).astype(np.float32)
        # An all-zero channel keeps scale 0: it decodes to zeros without a division by zero.
        inverse = np.divide(1.0, scales, out=np.zeros_like(scales), where=scales > 0)
        codes = np.rint(channels * inverse[:, None]).clip(-INT8_LEVELS, INT8_LEVELS)
        wire = self._from_channels(codes.astype(self.wire_dtype), values.shape)
        return wire, scales

    def decode(self, wire: np.ndarray, scales: np.ndarray, dtype: np.dtype) -> np.ndarray:
        """Multiply the codes by their channel's scale."""
        channels = self._by_channel(wire).astype(np.float32) * scales[:, None]
        return self._from_channels(channels, wire.shape).astype(dtype)

    @staticmethod
    def _by_channel(array: np.ndarray) -> np.ndarray:
        # (channels, everything else), channel-major: axis 1 to the front.
        if array.ndim < 2:
            return array.reshape(1, array.size)
        channels = array.shape[1]
        rest = array.size // channels if channels else 0
        return np.moveaxis(array, 1, 0).reshape(channels, rest)

    @staticmethod
    def _from_channels(channels: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
        if len(shape) < 2:
            return channels.reshape(shape)
        moved = (shape[1], shape[0]) + shape[2:]
        return np.ascontiguousarray(np.moveaxis(channels.reshape(moved), 0, 1))


ENCODINGS: dict[str, Encoding] = {
    'fp32': Fp32Encoding(), 'fp16': Fp16Encoding(), 'int8': Int8Encoding()}
"""Encodings by name: ``fp32`` (lossless), ``fp16``, ``int8``."""


@dataclass(frozen=True)
class TensorHeader:
    """What the bytes of one encoded tensor say about it.

    Attributes:
        encoding: Key of :data:`ENCODINGS`.
        compression: Key of :data:`COMPRESSORS`.
        dtype: Dtype of the decoded array (``float16``, ``float32`` or ``float64``).
        shape: Shape of the decoded array.
        scales: The encoding's float32 scales (empty for fp16/fp32).
        payload_offset: Where the compressed payload starts.
        payload_size: Its length in bytes.
    """

    encoding: str
    compression: str
    dtype: str
    shape: tuple[int, ...]
    scales: np.ndarray
    payload_offset: int
    payload_size: int

    @property
    def decoded_bytes(self) -> int:
        """Size of the decoded array in bytes."""
        return math.prod(self.shape) * _DTYPES[self.dtype].itemsize

    @property
    def wire_bytes(self) -> int:
        """Size of the encoded, not yet compressed, payload in bytes."""
        return math.prod(self.shape) * ENCODINGS[self.encoding].wire_dtype.itemsize


def encode_tensor(array: np.ndarray, encoding: str = 'fp16', compression: str = 'zstd') -> bytes:
    """Encode a float array as self-describing bytes.

    Args:
        array: float16/32/64 array of at most 8 dimensions (NCHW for a feature map).
        encoding: Key of :data:`ENCODINGS`.
        compression: Key of :data:`COMPRESSORS`.

    Returns:
        Bytes that :func:`decode_tensor` turns back into an array of the same shape and dtype.

    Raises:
        ConversionError: If the encoding or compression is unknown, the array is not a float
            array, has too many dimensions, or holds values the encoding cannot represent.
    """
    codec = _registered(ENCODINGS, encoding, 'encoding')
    compressor = _registered(COMPRESSORS, compression, 'compression')
    array = np.asarray(array)
    dtype = array.dtype.newbyteorder('<') if array.dtype.kind == 'f' else array.dtype
    name = next((k for k, v in _DTYPES.items() if v == dtype), None)
    if name is None:
        raise ConversionError('tensor_dtype', f'cannot encode {array.dtype} (float16/32/64 only)')
    if array.ndim > MAX_NDIM:
        raise ConversionError('tensor_shape', f'{array.ndim} dimensions (at most {MAX_NDIM})')
    wire, scales = codec.encode(array)
    payload = compressor.compress(np.ascontiguousarray(wire, codec.wire_dtype).tobytes())
    body = (struct.pack(f'<{array.ndim}Q', *array.shape)
            + scales.astype('<f4').tobytes() + payload)
    fixed = HEADER.pack(MAGIC, VERSION, _name_bytes(codec.name), _name_bytes(compressor.name),
                        name.encode(), array.ndim, scales.size, len(payload), 0)
    return fixed[:_CRC_AT] + struct.pack('<I', _crc(fixed, body)) + body


def read_header(data: bytes, max_bytes: int = DEFAULT_MAX_BYTES) -> TensorHeader:
    """Parse and check the header of :func:`encode_tensor`'s bytes, without decompressing.

    Args:
        data: The encoded tensor.
        max_bytes: Largest decoded array accepted, in bytes.

    Returns:
        The header.

    Raises:
        ConversionError: If the bytes are truncated, corrupt, of an unknown format, or would
            decode to more than ``max_bytes``.
    """
    view = memoryview(data)
    if len(view) < HEADER.size:
        raise ConversionError('tensor_truncated',
                              f'{len(view)} bytes, shorter than the {HEADER.size}-byte header')
    (magic, version, enc, comp, dtype, ndim, n_scales, payload_size,
     crc) = HEADER.unpack_from(view)
    if magic != MAGIC:
        raise ConversionError('tensor_header', f'bad magic {bytes(magic)!r}, not a tensor')
    if version != VERSION:
        raise ConversionError('tensor_header', f'format version {version} (expected {VERSION})')
    encoding, compression, dtype_name = (_name_str(enc), _name_str(comp), _name_str(dtype))
    codec = ENCODINGS.get(encoding)
    if codec is None or compression not in COMPRESSORS or dtype_name not in _DTYPES:
        raise ConversionError('tensor_header', f'unknown encoding/compression/dtype '
                              f'{encoding!r}/{compression!r}/{dtype_name!r}')
    if ndim > MAX_NDIM:
        raise ConversionError('tensor_header', f'{ndim} dimensions (at most {MAX_NDIM})')
    scales_at = HEADER.size + 8 * ndim
    payload_at = scales_at + 4 * n_scales
    if len(view) != payload_at + payload_size:
        kind = 'tensor_truncated' if len(view) < payload_at + payload_size else 'tensor_corrupt'
        raise ConversionError(kind, f'{len(view)} bytes, header says '
                              f'{payload_at + payload_size}')
    if _crc(view[:HEADER.size], view[HEADER.size:]) != crc:
        raise ConversionError('tensor_corrupt', 'CRC-32 mismatch')
    shape = struct.unpack_from(f'<{ndim}Q', view, HEADER.size)
    size = math.prod(shape) * _DTYPES[dtype_name].itemsize
    if size > max_bytes:
        raise ConversionError('tensor_too_large', f'shape {shape} decodes to {size} bytes '
                              f'(max_bytes {max_bytes})')
    if n_scales != codec.scale_count(shape):
        raise ConversionError('tensor_header', f'{n_scales} scales for {encoding} of shape '
                              f'{shape}')
    scales = np.frombuffer(view, '<f4', n_scales, scales_at).astype(np.float32)
    if not (np.isfinite(scales).all() and (scales >= 0).all()):
        raise ConversionError('tensor_corrupt', 'scales must be finite and non-negative')
    return TensorHeader(encoding, compression, dtype_name, shape, scales, payload_at,
                        payload_size)


def decode_tensor(data: bytes, max_bytes: int = DEFAULT_MAX_BYTES) -> np.ndarray:
    """Decode :func:`encode_tensor`'s bytes.

    Args:
        data: The encoded tensor.
        max_bytes: Largest decoded array accepted, in bytes; nothing larger is allocated.

    Returns:
        A new, writable, C-contiguous array of the encoded shape and dtype.

    Raises:
        ConversionError: If the bytes are truncated, corrupt, of an unknown format, or would
            decode to more than ``max_bytes``.
    """
    header = read_header(data, max_bytes)
    codec = ENCODINGS[header.encoding]
    payload = memoryview(data)[header.payload_offset:]
    raw = COMPRESSORS[header.compression].decompress(bytes(payload), header.wire_bytes)
    wire = np.frombuffer(raw, codec.wire_dtype).reshape(header.shape)
    out = codec.decode(wire, header.scales, np.dtype(header.dtype))
    return np.require(out, np.dtype(header.dtype).newbyteorder('='), ('C', 'W'))


def _registered(registry: dict[str, Any], name: str, what: str) -> Any:
    if name not in registry:
        raise ConversionError(f'tensor_{what}',
                              f'unknown {what} {name!r} (one of {sorted(registry)})')
    return registry[name]


def _crc(fixed: bytes | memoryview, body: bytes | memoryview) -> int:
    # Everything but the CRC field itself.
    return zlib.crc32(body, zlib.crc32(fixed[:_CRC_AT]))


def _name_bytes(name: str) -> bytes:
    raw = name.encode('ascii')
    if len(raw) > _NAME_BYTES:
        raise ConversionError('tensor_header', f'name {name!r} longer than {_NAME_BYTES} bytes')
    return raw


def _name_str(raw: bytes) -> str:
    return raw.rstrip(b'\0').decode('ascii', 'replace')
