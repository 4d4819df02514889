"""Intermediate tensors on the wire: round trips, the int8 error bound, and damaged input."""

from __future__ import annotations

import struct
import subprocess
import sys
import tracemalloc
import zlib

from adaptive_offload.errors import ConversionError
from adaptive_offload.tensor_codec import (COMPRESSORS, decode_tensor, encode_tensor, ENCODINGS,
                                           HEADER, INT8_LEVELS, MAGIC, read_header, VERSION)
from fuzzing import budget
from helpers import child_env
from hypothesis import given, strategies as st
import numpy as np
import pytest
import zstandard

CODECS = [(e, c) for e in ('fp32', 'fp16', 'int8') for c in ('zstd', 'lz4', 'none')]


def feature_map(shape: tuple[int, ...] = (1, 8, 12, 10), seed: int = 0) -> np.ndarray:
    """Return a post-activation-like float32 map whose channels differ in magnitude."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape).astype(np.float32)
    if len(shape) >= 2:
        gains = np.logspace(-2, 2, shape[1], dtype=np.float32)
        x *= gains.reshape((1, -1) + (1,) * (len(shape) - 2))
    return np.maximum(x, -0.28)  # SiLU's floor: a skewed range, as YOLO's maps are


def forge(shape: tuple[int, ...], payload: bytes, encoding: str = 'fp16',
          compression: str = 'zstd', scales: tuple[float, ...] = ()) -> bytes:
    """Build a well-formed header (valid CRC) around any payload."""
    body = struct.pack(f'<{len(shape)}Q', *shape) + struct.pack(f'<{len(scales)}f', *scales) \
        + payload
    fixed = HEADER.pack(MAGIC, VERSION, encoding.encode(), compression.encode(), b'float32',
                        len(shape), len(scales), len(payload), 0)
    crc = zlib.crc32(body, zlib.crc32(fixed[:-4]))
    return fixed[:-4] + struct.pack('<I', crc) + body


@pytest.mark.parametrize(('encoding', 'compression'), CODECS)
def test_round_trip_keeps_shape_and_dtype(encoding: str, compression: str) -> None:
    x = feature_map()
    blob = encode_tensor(x, encoding, compression)
    y = decode_tensor(blob)
    assert y.shape == x.shape and y.dtype == np.float32
    assert y.flags.c_contiguous and y.flags.writeable
    header = read_header(blob)
    assert (header.encoding, header.compression, header.shape) == (encoding, compression,
                                                                   x.shape)
    if encoding == 'fp32':
        assert np.array_equal(x, y)
    elif encoding == 'fp16':
        assert np.array_equal(y, x.astype(np.float16).astype(np.float32))
    else:
        assert header.scales.shape == (x.shape[1],)


def test_compression_shrinks_and_fp16_int8_halve_and_quarter() -> None:
    x = np.zeros((1, 16, 40, 40), np.float32)
    x[:, :, 10:20, 10:20] = feature_map((1, 16, 10, 10))
    raw = len(encode_tensor(x, 'fp32', 'none'))
    assert len(encode_tensor(x, 'fp16', 'none')) < raw / 2 + 200
    assert len(encode_tensor(x, 'int8', 'none')) < raw / 4 + 200
    for name in ('zstd', 'lz4'):
        assert len(encode_tensor(x, 'fp16', name)) < len(encode_tensor(x, 'fp16', 'none')) / 4


@pytest.mark.parametrize('shape', [(1, 8, 12, 10), (2, 5, 7), (3, 4), (9,), ()])
def test_int8_error_is_at_most_half_a_step_of_its_channel(shape: tuple[int, ...]) -> None:
    x = feature_map(shape, seed=len(shape))
    y = decode_tensor(encode_tensor(x, 'int8', 'zstd'))
    channels = np.moveaxis(x, 1, 0).reshape(shape[1], -1) if len(shape) >= 2 \
        else x.reshape(1, -1)
    error = np.moveaxis(np.abs(x - y), 1, 0).reshape(channels.shape) if len(shape) >= 2 \
        else np.abs(x - y).reshape(1, -1)
    step = np.abs(channels).max(axis=1) / INT8_LEVELS
    assert (error.max(axis=1) <= step / 2 * (1 + 1e-5) + 1e-30).all()
    # Each channel's peak is a code of +-127, so it comes back to within rounding.
    peaks = np.abs(channels).argmax(axis=1)
    rows = np.arange(len(peaks))
    assert (error[rows, peaks] <= 1e-6 * np.abs(channels[rows, peaks])).all()


def test_int8_zero_channels_empty_and_scalar_arrays() -> None:
    x = feature_map((1, 4, 3, 3))
    x[:, 2] = 0
    y = decode_tensor(encode_tensor(x, 'int8', 'lz4'))
    assert (y[:, 2] == 0).all() and np.isfinite(y).all()
    for empty in (np.zeros((2, 0, 3), np.float32), np.zeros((0, 3), np.float32)):
        assert decode_tensor(encode_tensor(empty, 'int8', 'zstd')).shape == empty.shape
    assert decode_tensor(encode_tensor(np.float32(-2.5), 'int8', 'none')) == -2.5


@pytest.mark.parametrize('dtype', ['<f2', '<f8', '>f4'])
def test_other_float_dtypes_and_layouts_come_back_as_they_were(dtype: str) -> None:
    x = feature_map((2, 3, 4, 5)).astype(dtype).transpose(0, 1, 3, 2)  # not C-contiguous
    y = decode_tensor(encode_tensor(x, 'fp32', 'zstd'))
    assert y.dtype == np.dtype(dtype).newbyteorder('=') and y.shape == x.shape
    assert np.array_equal(y, x.astype(np.float32).astype(y.dtype))


def test_fp16_keeps_non_finite_values_and_refuses_overflow() -> None:
    x = np.array([[np.inf, -np.inf, 1.0]], np.float32)
    y = decode_tensor(encode_tensor(x, 'fp16', 'zstd'))
    assert np.array_equal(x, y)
    with pytest.raises(ConversionError, match='fp16'):
        encode_tensor(np.array([1e5], np.float32), 'fp16')


@pytest.mark.parametrize(('kwargs', 'match'), [
    ({'encoding': 'bf16'}, 'unknown encoding'),
    ({'compression': 'gzip'}, 'unknown compression'),
    ({'array': np.arange(4)}, 'float16/32/64 only'),
    ({'array': np.zeros((1,) * 9, np.float32)}, 'at most 8'),
    ({'array': np.array([np.nan], np.float32), 'encoding': 'int8'}, 'NaN'),
])
def test_encode_rejects_what_it_cannot_send(kwargs: dict, match: str) -> None:
    args = {'array': feature_map(), 'encoding': 'fp16', 'compression': 'zstd', **kwargs}
    with pytest.raises(ConversionError, match=match):
        encode_tensor(**args)


@pytest.mark.parametrize(('encoding', 'compression'), CODECS)
def test_every_truncation_and_every_flipped_byte_is_a_conversion_error(
        encoding: str, compression: str) -> None:
    blob = encode_tensor(feature_map((1, 3, 4, 4)), encoding, compression)
    for n in range(len(blob)):
        with pytest.raises(ConversionError):
            decode_tensor(blob[:n])
    for i in range(len(blob)):
        damaged = bytearray(blob)
        damaged[i] ^= 0xFF
        with pytest.raises(ConversionError):
            decode_tensor(bytes(damaged))
    with pytest.raises(ConversionError, match='tensor_corrupt'):
        decode_tensor(blob + b'\0')


def test_reasons_name_what_went_wrong() -> None:
    blob = encode_tensor(feature_map())
    cases = [(blob[:10], 'tensor_truncated'), (b'JUNK' + blob[4:], 'tensor_header'),
             (blob[:-1], 'tensor_truncated'),
             (blob[:-1] + bytes([blob[-1] ^ 1]), 'tensor_corrupt')]
    for data, reason in cases:
        with pytest.raises(ConversionError) as info:
            decode_tensor(data)
        assert info.value.reason == reason


def test_max_bytes_bounds_the_decoded_size_before_anything_is_allocated() -> None:
    x = feature_map()
    with pytest.raises(ConversionError, match='max_bytes') as info:
        decode_tensor(encode_tensor(x), max_bytes=x.nbytes - 1)
    assert info.value.reason == 'tensor_too_large'
    assert decode_tensor(encode_tensor(x), max_bytes=x.nbytes).shape == x.shape
    huge = forge((1 << 20, 1 << 20, 1 << 20), b'')  # 4 EiB claimed, no payload
    with pytest.raises(ConversionError, match='max_bytes'):
        decode_tensor(huge)


def test_forged_scales_and_scale_counts_are_rejected() -> None:
    payload = bytes(2 * 4)
    good = forge((1, 2, 2, 2), payload, 'int8', 'none', (1.0, 2.0))
    assert decode_tensor(good).shape == (1, 2, 2, 2)
    for scales in ((1.0,), (1.0, 2.0, 3.0), (1.0, float('nan')), (-1.0, 1.0)):
        with pytest.raises(ConversionError, match='scales'):
            decode_tensor(forge((1, 2, 2, 2), payload, 'int8', 'none', scales))


@pytest.mark.parametrize('declared', [True, False])
def test_a_decompression_bomb_stops_at_the_declared_size(declared: bool) -> None:
    """A payload inflating to 256 MiB behind a 64-element header: refused, in bounded memory.

    ``declared``: the zstd frame states its content size (one-shot) or not (streamed).
    """
    zeros = bytes(1 << 20)
    if declared:
        bomb = zstandard.ZstdCompressor().compress(bytes(64 << 20))
    else:
        stream = zstandard.ZstdCompressor().compressobj()
        bomb = b''.join(stream.compress(zeros) for _ in range(256)) + stream.flush()
    tracemalloc.start()
    try:
        with pytest.raises(ConversionError, match='tensor_corrupt'):
            decode_tensor(forge((1, 1, 8, 8), bomb, 'fp16', 'zstd'))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8 << 20
    lz4_bomb = COMPRESSORS['lz4'].compress(zeros)
    with pytest.raises(ConversionError, match='tensor_corrupt'):
        decode_tensor(forge((1, 1, 8, 8), lz4_bomb, 'fp16', 'lz4'))


def test_a_too_short_payload_is_refused() -> None:
    for name in ('zstd', 'lz4', 'none'):
        short = COMPRESSORS[name].compress(bytes(100))
        with pytest.raises(ConversionError, match='tensor_corrupt'):
            decode_tensor(forge((1, 1, 8, 8), short, 'fp16', name))


def test_the_registries_take_another_compressor(monkeypatch: pytest.MonkeyPatch) -> None:
    class Zlib:
        name = 'zlib'

        def compress(self, data: bytes) -> bytes:
            return zlib.compress(data)

        def decompress(self, data: bytes, size: int) -> bytes:
            return zlib.decompressobj().decompress(data, size)

    assert set(ENCODINGS) == {'fp32', 'fp16', 'int8'}
    assert set(COMPRESSORS) == {'zstd', 'lz4', 'none'}
    monkeypatch.setitem(COMPRESSORS, 'zlib', Zlib())
    x = feature_map()
    assert np.array_equal(decode_tensor(encode_tensor(x, 'fp32', 'zlib')), x)


def test_importing_the_codec_loads_neither_torch_nor_a_compressor() -> None:
    code = ('import sys, adaptive_offload.tensor_codec\n'
            'print(sorted({"torch", "zstandard", "lz4"} & set(sys.modules)))')
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                         check=True, timeout=60, env=child_env()).stdout
    assert out.strip() == '[]'


@budget(0.5)
@given(st.binary(max_size=200))
def test_arbitrary_bytes_decode_or_raise_conversion_error(data: bytes) -> None:
    try:
        decode_tensor(data, max_bytes=1 << 16)
    except ConversionError:
        pass


@budget(0.5)
@given(st.sampled_from(CODECS), st.data())
def test_mutated_valid_blobs_decode_or_raise_conversion_error(codec: tuple[str, str],
                                                              data: st.DataObject) -> None:
    blob = bytearray(encode_tensor(feature_map((1, 2, 3, 3)), *codec))
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(blob) - 1))
        blob[i] = data.draw(st.integers(0, 255))
    try:
        y = decode_tensor(bytes(blob), max_bytes=1 << 16)
    except ConversionError:
        return
    assert y.nbytes <= 1 << 16
