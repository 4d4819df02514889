"""Shared pieces of the fuzz tests: the example budget and strategies of damaged images.

The budget comes from the hypothesis profile: ``ci`` (the default, small and derandomized, so
CI is fast and reproducible) or ``fuzz`` (``ADAPTIVE_OFFLOAD_FUZZ=fuzz`` or
``--hypothesis-profile fuzz``: 50 times the examples, random, for a longer local run). Both are
registered by test/conftest.py.
"""

from __future__ import annotations

import struct
import zlib

import cv2
from hypothesis import settings, strategies as st
import numpy as np

CI_EXAMPLES = 100
"""Examples per fuzz test of the ``ci`` profile (a test may take a share of it)."""


def budget(share: float = 1.0) -> settings:
    """Return settings running ``share`` of the profile's examples (at least one).

    Expensive targets (a server on loopback, a bag on disk) take a share below 1.
    """
    return settings(max_examples=max(1, round(settings.default.max_examples * share)))


def encode(image: np.ndarray, ext: str) -> bytes:
    """Encode an image with OpenCV (``.jpg`` or ``.png``)."""
    ok, buf = cv2.imencode(ext, image)
    if not ok:
        raise RuntimeError(f'cannot encode {ext}')
    return buf.tobytes()


@st.composite
def images(draw: st.DrawFn, max_side: int = 24) -> np.ndarray:
    """Draw a small BGR, grey or BGRA image of random content (uint8)."""
    height = draw(st.integers(1, max_side))
    width = draw(st.integers(1, max_side))
    channels = draw(st.sampled_from((1, 3, 4)))
    seed = draw(st.integers(0, 2**32 - 1))
    shape = (height, width) if channels == 1 else (height, width, channels)
    return np.random.default_rng(seed).integers(0, 256, shape, np.uint8)


def encoded_images(max_side: int = 24) -> st.SearchStrategy[bytes]:
    """Return valid JPEG and PNG files of small images."""
    return st.builds(encode, images(max_side), st.sampled_from(('.jpg', '.png')))


def _set_png_size(data: bytes, width: int, height: int) -> bytes:
    ihdr = b'IHDR' + struct.pack('>II', width, height) + data[24:29]
    return data[:12] + ihdr + struct.pack('>I', zlib.crc32(ihdr)) + data[33:]  # CRC kept valid


def _set_jpeg_size(data: bytes, width: int, height: int) -> bytes:
    for sof in (b'\xff\xc0', b'\xff\xc2'):
        pos = data.find(sof)
        if pos > 0:
            return data[:pos + 5] + struct.pack('>HH', height, width) + data[pos + 9:]
    return data


def resized_header(data: bytes, width: int, height: int) -> bytes:
    """Return an image file whose header declares another size than its data holds."""
    if data.startswith(b'\x89PNG'):
        return _set_png_size(data, width, height)
    return _set_jpeg_size(data, width & 0xFFFF, height & 0xFFFF)


@st.composite
def mutated(draw: st.DrawFn, valid: st.SearchStrategy[bytes]) -> bytes:
    """Damage valid bytes: flip, cut, insert, overwrite, or declare a huge size in the header."""
    data = bytearray(draw(valid))
    mutation = draw(st.sampled_from(('flip', 'cut', 'insert', 'overwrite', 'size')))
    if mutation == 'size':
        big = st.integers(0, 2**32 - 1) | st.sampled_from((0, 1, 65535, 65536, 30000))
        return resized_header(bytes(data), draw(big), draw(big))
    for _ in range(draw(st.integers(1, 8))):
        pos = draw(st.integers(0, max(0, len(data) - 1)))
        if mutation == 'flip' and data:
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif mutation == 'cut':
            del data[pos:]
            break
        elif mutation == 'insert':
            data[pos:pos] = draw(st.binary(min_size=1, max_size=16))
        elif data:
            chunk = draw(st.binary(min_size=1, max_size=16))
            data[pos:pos + len(chunk)] = chunk
    return bytes(data)


def damaged_images(max_side: int = 24) -> st.SearchStrategy[bytes]:
    """Return valid images, damaged ones, and arbitrary bytes (some starting like an image)."""
    magic = st.sampled_from((b'', b'\x89PNG\r\n\x1a\n', b'\xff\xd8', b'\xff\xd8\xff'))
    return st.one_of(encoded_images(max_side), mutated(encoded_images(max_side)),
                     st.builds(lambda m, rest: m + rest, magic, st.binary(max_size=64)))
