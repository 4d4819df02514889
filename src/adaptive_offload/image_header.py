"""Image sizes read from PNG and JPEG headers, without decoding anything.

A small file can declare a huge image (a 2 KB JPEG of 30000x30000 decodes to 2.7 GB in 15 s),
so every decoder of outside data (bags, topics, client requests) reads the size here first and
refuses what is too large before the decoder allocates it.
"""

from __future__ import annotations

import struct

from adaptive_offload.errors import ConversionError

PNG_SIGNATURE = b'\x89PNG\r\n\x1a\n'
JPEG_SOI = b'\xff\xd8'

# Start-of-frame markers (baseline, progressive, lossless, arithmetic): they hold the size.
_SOF = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE,
                  0xCF})


def image_size(data: bytes) -> tuple[int, int]:
    """Return ``(width, height)`` from a PNG or JPEG header, without decoding anything.

    Raises:
        ConversionError: ``decode_failed`` if the bytes are neither, or their header is cut
            short, invalid or declares an empty image.
    """
    if data.startswith(PNG_SIGNATURE):
        if len(data) < 24 or data[12:16] != b'IHDR':  # IHDR must come first
            raise ConversionError('decode_failed', 'PNG header is cut short or lacks IHDR')
        width, height = struct.unpack('>II', data[16:24])
    elif data.startswith(JPEG_SOI):
        width, height = _jpeg_size(data)
    else:
        raise ConversionError('decode_failed', 'image is not a decodable JPEG or PNG')
    if not width or not height:
        raise ConversionError('decode_failed',
                              f'image header gives an empty image {width}x{height}')
    return width, height


def _jpeg_size(data: bytes) -> tuple[int, int]:
    pos = 2
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            break
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in (0x01, *range(0xD0, 0xD8)):  # stand-alone markers carry no length
            pos += 2
            continue
        (length,) = struct.unpack('>H', data[pos + 2:pos + 4])
        if marker in _SOF:
            if pos + 9 > len(data) or length < 7:
                break
            height, width = struct.unpack('>HH', data[pos + 5:pos + 9])
            return width, height
        if marker == 0xDA or length < 2:  # scan data before any frame header
            break
        pos += 2 + length
    raise ConversionError('decode_failed', 'JPEG header is cut short or has no frame header')
