"""Lossless compressors of tensor payloads (:mod:`adaptive_offload.tensor_codec`), by name.

Each decompresses into exactly the size the tensor's header states and allocates no more, so a
forged payload cannot make a receiver allocate what its header did not admit.
"""

from __future__ import annotations

import importlib
from typing import Any, Protocol

from adaptive_offload.errors import ConversionError

_READ_CHUNK = 1 << 20


class Compressor(Protocol):
    """A lossless byte compressor.

    Attributes:
        name: Registry key, written into the header (at most 8 ASCII characters).
    """

    name: str

    def compress(self, data: bytes) -> bytes:
        """Return ``data`` compressed."""

    def decompress(self, data: bytes, size: int) -> bytes:
        """Return the ``size`` bytes that ``data`` decompresses to, allocating no more.

        Raises:
            ConversionError: If ``data`` is malformed or does not hold exactly ``size`` bytes.
        """


class NoCompression:
    """The payload as is."""

    name = 'none'

    def compress(self, data: bytes) -> bytes:
        """Return ``data``."""
        return data

    def decompress(self, data: bytes, size: int) -> bytes:
        """Return ``data`` if it is ``size`` bytes.

        Raises:
            ConversionError: If it is not.
        """
        _check_size(len(data), size)
        return data


class ZstdCompressor:
    """Zstandard (PyPI ``zstandard``).

    Args:
        level: Compression level (1..22; 3 is zstd's default).
    """

    name = 'zstd'

    def __init__(self, level: int = 3) -> None:
        self.level = level

    def compress(self, data: bytes) -> bytes:
        """Compress into one zstd frame."""
        import zstandard

        return zstandard.ZstdCompressor(level=self.level).compress(data)

    def decompress(self, data: bytes, size: int) -> bytes:
        """Decompress one frame, reading at most ``size + 1`` bytes of output.

        Raises:
            ConversionError: If the frame is malformed or its content is not ``size`` bytes.
        """
        import zstandard

        # Not ZstdDecompressor.decompress: it trusts the frame's declared content size and
        # ignores max_output_size when one is present, so a forged frame could allocate any size.
        parts: list[bytes] = []
        got = 0
        try:
            with zstandard.ZstdDecompressor().stream_reader(data) as reader:
                while got <= size:
                    part = reader.read(min(_READ_CHUNK, size + 1 - got))
                    if not part:
                        break
                    parts.append(part)
                    got += len(part)
        except zstandard.ZstdError as exc:
            raise ConversionError('tensor_corrupt', f'zstd: {exc}') from exc
        _check_size(got, size)
        return b''.join(parts)


class Lz4Compressor:
    """LZ4 block format (PyPI ``lz4``); the header carries the size, so no frame is needed."""

    name = 'lz4'

    def compress(self, data: bytes) -> bytes:
        """Compress into one LZ4 block."""
        return bytes(_lz4_block().compress(data, store_size=False))

    def decompress(self, data: bytes, size: int) -> bytes:
        """Decompress into a buffer of exactly ``size`` bytes.

        Raises:
            ConversionError: If the block is malformed or does not hold ``size`` bytes.
        """
        block = _lz4_block()
        try:
            out = bytes(block.decompress(data, uncompressed_size=size))
        except block.LZ4BlockError as exc:
            raise ConversionError('tensor_corrupt', f'lz4: {exc}') from exc
        _check_size(len(out), size)
        return out


def _lz4_block() -> Any:
    # lz4 ships no type information; through import_module it is Any rather than a mypy error.
    return importlib.import_module('lz4.block')


def _check_size(got: int, size: int) -> None:
    if got != size:
        raise ConversionError('tensor_corrupt',
                              f'payload decompresses to {"over " if got > size else ""}'
                              f'{got} bytes, header says {size}')


COMPRESSORS: dict[str, Compressor] = {
    'zstd': ZstdCompressor(), 'lz4': Lz4Compressor(), 'none': NoCompression()}
"""Compressors by name: ``zstd``, ``lz4``, ``none``."""
