"""Rebuilding a readable bag from the MCAP file of a killed replay.

A replay killed by SIGKILL (or a power cut, or the OOM killer) leaves its output bag without
metadata.yaml and without the MCAP summary and footer that readers look for first. The data
section before the cut is intact up to the last chunk the writer flushed
(:class:`~offload_runtime.bagio.OutputBag` flushes one at least every second): this module
reads the MCAP records in file order, stops at the first incomplete one, and writes what it
read to a new, finalised bag.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path
import struct
from typing import BinaryIO, Iterator
import zlib

from adaptive_offload.errors import BagError
from rosbags.interfaces import Connection, Qos
from rosbags.rosbag2 import Writer
from rosbags.rosbag2.enums import StoragePlugin
from rosbags.typesys import get_types_from_idl, get_types_from_msg, get_typestore, Stores

MAGIC = b'\x89MCAP0\r\n'
MAX_CHUNK_BYTES = 1 << 30
"""Largest decompressed chunk read (writers close chunks at a few MiB)."""
_HEADER, _FOOTER, _SCHEMA, _CHANNEL, _MESSAGE, _CHUNK, _DATA_END = \
    0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x0F


@dataclass(frozen=True)
class Schema:
    """A message type as the MCAP file defines it."""

    schema_id: int
    name: str
    encoding: str
    data: str


@dataclass(frozen=True)
class Channel:
    """A topic of the MCAP file."""

    channel_id: int
    schema_id: int
    topic: str
    message_encoding: str
    metadata: dict[str, str]


@dataclass(frozen=True)
class Message:
    """One message record."""

    channel_id: int
    log_time: int
    data: bytes


@dataclass
class Scan:
    """What reading an MCAP file's data section found.

    Attributes:
        schemas: Schemas by id.
        channels: Channels by id.
        end: Why reading stopped: ``end of data`` for a finalised file, else where it was cut.
    """

    schemas: dict[int, Schema] = field(default_factory=dict)
    channels: dict[int, Channel] = field(default_factory=dict)
    end: str = ''


@dataclass(frozen=True)
class Recovery:
    """What :func:`recover_bag` wrote.

    Attributes:
        out: The new bag folder (not created when nothing was recovered).
        messages: Messages recovered.
        counts: Messages recovered by topic.
        end: Why reading stopped in the last file (see :class:`Scan`).
        skipped: Messages left out by type: types whose own definition does not parse (their
            hash, which only the lost metadata.yaml held, cannot be rebuilt).
    """

    out: Path
    messages: int
    counts: dict[str, int]
    end: str
    skipped: dict[str, int] = field(default_factory=dict)


def _string(rec: BytesIO) -> str:
    (size,) = struct.unpack('<I', _exact(rec, 4))
    return _exact(rec, size).decode()


def _exact(rec: BinaryIO, size: int) -> bytes:
    if size > _left(rec):  # a damaged length: read() would fail on it, or allocate it
        raise EOFError
    data = rec.read(size)
    if len(data) != size:
        raise EOFError
    return data


def _schema(content: bytes) -> Schema:
    rec = BytesIO(content)
    (schema_id,) = struct.unpack('<H', _exact(rec, 2))
    name, encoding = _string(rec), _string(rec)
    return Schema(schema_id, name, encoding, _string(rec))


def _channel(content: bytes) -> Channel:
    rec = BytesIO(content)
    channel_id, schema_id = struct.unpack('<HH', _exact(rec, 4))
    topic, encoding = _string(rec), _string(rec)
    (size,) = struct.unpack('<I', _exact(rec, 4))
    pairs = BytesIO(_exact(rec, size))
    metadata = {}
    while pairs.tell() < size:
        key = _string(pairs)
        metadata[key] = _string(pairs)
    return Channel(channel_id, schema_id, topic, encoding, metadata)


def _chunk_records(content: bytes) -> bytes:
    """Return a chunk's records, or raise ValueError if they are not what it declares."""
    rec = BytesIO(content)
    _, _, size, crc = struct.unpack('<QQQI', _exact(rec, 28))
    compression = _string(rec)
    (length,) = struct.unpack('<Q', _exact(rec, 8))
    data = _exact(rec, length)
    if compression and size > MAX_CHUNK_BYTES:  # a damaged size: the decoder would allocate it
        raise ValueError(f'chunk declares {size} bytes, over {MAX_CHUNK_BYTES}')
    if compression:
        # Only other writers compress (OutputBag does not); rosbags can undo what it writes.
        from rosbags.rosbag2.storage_mcap import DECOMPRESSORS

        if compression not in DECOMPRESSORS:
            raise ValueError(f'unsupported chunk compression {compression!r}')
        data = DECOMPRESSORS[compression](data, size)
    if len(data) != size or (crc and zlib.crc32(data) != crc):
        raise ValueError('chunk size or checksum mismatch')
    return data


def _records(stream: BinaryIO) -> Iterator[tuple[int, bytes]]:
    """Yield (opcode, content) of every complete record; stops at a partial one."""
    while True:
        head = stream.read(9)
        if len(head) < 9:
            if head:
                raise EOFError
            return
        opcode, length = struct.unpack('<BQ', head)
        # A damaged length (up to 2**64) must not reach read(), which allocates it first.
        if length > _left(stream):
            raise EOFError
        content = stream.read(length)
        if len(content) != length:
            raise EOFError
        yield opcode, content


def _left(stream: BinaryIO) -> int:
    here = stream.tell()
    end = stream.seek(0, 2)
    stream.seek(here)
    return end - here


def read_mcap(path: Path, scan: Scan) -> Iterator[Message]:
    """Yield the messages of an MCAP file up to its first incomplete record.

    Schemas and channels go to ``scan`` as they are read (always before their messages), and
    ``scan.end`` says why reading stopped. A file another process is still writing can be
    read too: what it has flushed so far.

    Args:
        path: The .mcap file.
        scan: Filled in while reading.

    Raises:
        BagError: If the file cannot be read or is not MCAP.
    """
    try:
        stream = path.open('rb')
    except OSError as err:
        raise BagError(f'{path}: cannot read ({err.strerror})') from err
    with stream:
        magic = stream.read(len(MAGIC))
        if not magic:  # killed before the first write reached the file
            scan.end = 'empty file'
            return
        if magic != MAGIC[:len(magic)]:
            raise BagError(f'{path}: not an MCAP file')
        if len(magic) < len(MAGIC):
            scan.end = 'cut in the magic'
            return
        yield from _read_data(stream, scan)


def _read_data(stream: BinaryIO, scan: Scan) -> Iterator[Message]:
    offset = stream.tell()
    scan.end = 'end of file'
    try:
        for opcode, content in _records(stream):
            if opcode in (_DATA_END, _FOOTER):
                scan.end = 'end of data'
                return
            if opcode == _CHUNK:
                try:
                    inner = _chunk_records(content)
                except (EOFError, ValueError) as err:
                    scan.end = f'bad chunk at byte {offset} ({err or "cut"})'
                    return
                try:
                    for inner_op, inner_content in _records(BytesIO(inner)):
                        yield from _record(inner_op, inner_content, scan)
                except _BAD_RECORD as err:
                    scan.end = f'bad record in the chunk at byte {offset} ({err or "cut"})'
                    return
            else:
                try:
                    yield from _record(opcode, content, scan)
                except _BAD_RECORD as err:
                    scan.end = f'bad record at byte {offset} ({err or "cut"})'
                    return
            offset = stream.tell()
    except EOFError:
        scan.end = f'cut at byte {offset}'


# What a record damaged inside (a length, a string) raises while it is read.
_BAD_RECORD = (EOFError, ValueError, struct.error)


def _record(opcode: int, content: bytes, scan: Scan) -> Iterator[Message]:
    if opcode == _SCHEMA:
        schema = _schema(content)
        scan.schemas.setdefault(schema.schema_id, schema)
    elif opcode == _CHANNEL:
        channel = _channel(content)
        scan.channels.setdefault(channel.channel_id, channel)
    elif opcode == _MESSAGE:
        channel_id, _, log_time, _ = struct.unpack_from('<HIQQ', content)
        yield Message(channel_id, log_time, content[22:])


def count_messages(path: Path) -> dict[str, int]:
    """Return how many complete messages each topic of an MCAP file holds so far."""
    scan = Scan()
    counts: dict[str, int] = {}
    for msg in read_mcap(path, scan):
        channel = scan.channels.get(msg.channel_id)
        if channel is not None:  # a damaged id: recover_bag leaves the message out too
            counts[channel.topic] = counts.get(channel.topic, 0) + 1
    return counts


def mcap_files(bag: Path) -> list[Path]:
    """Return the .mcap files of a bag folder (a split bag's in order), or the file itself.

    Raises:
        BagError: If there is no such path or no .mcap file in it.
    """
    if bag.is_file():
        return [bag]
    if not bag.is_dir():
        raise BagError(f'{bag}: no such bag')
    files = sorted(bag.glob('*.mcap'), key=lambda p: (len(p.name), p.name))
    if not files:
        raise BagError(f'{bag}: no .mcap file in it')
    return files


class _Rebuilt:
    """The new bag, opened at the first message so that nothing recovered leaves no folder."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.writer: Writer | None = None
        self.connections: dict[tuple[str, str], Connection] = {}
        self.counts: dict[str, int] = {}
        self.skipped: dict[str, int] = {}
        self._hashes: dict[str, str | None] = {}

    def write(self, schema: Schema, channel: Channel, msg: Message) -> None:
        if schema.name not in self._hashes:
            self._hashes[schema.name] = _rihs01(schema)
        rihs01 = self._hashes[schema.name]
        if rihs01 is None:
            self.skipped[schema.name] = self.skipped.get(schema.name, 0) + 1
            return
        if self.writer is None:
            self.writer = Writer(self.out, version=9, storage_plugin=StoragePlugin.MCAP)
            self.writer.open()
        key = (channel.topic, schema.name)
        if key not in self.connections:
            self.connections[key] = self.writer.add_connection(
                channel.topic, schema.name, msgdef=schema.data, rihs01=rihs01,
                serialization_format=channel.message_encoding,
                offered_qos_profiles=_qos(channel.metadata.get('offered_qos_profiles', '')))
        self.writer.write(self.connections[key], msg.log_time, msg.data)
        self.counts[channel.topic] = self.counts.get(channel.topic, 0) + 1


def _rihs01(schema: Schema) -> str | None:
    """Hash the type from its own definition (the hashes were in the lost metadata.yaml)."""
    store = get_typestore(Stores.EMPTY)
    try:
        if schema.encoding == 'ros2msg':
            store.register(get_types_from_msg(schema.data, schema.name))
        else:
            store.register(get_types_from_idl(schema.data))
        return str(store.hash_rihs01(schema.name))
    except Exception:  # noqa: BLE001 - rosbags raises several types for a bad definition
        return None


def _qos(text: str) -> list[Qos]:
    try:
        from rosbags.rosbag2.metadata import parse_qos

        return parse_qos(text)
    except Exception:  # noqa: BLE001 - an unparsable profile is left out, the data is kept
        return []


def recover_bag(bag: Path, out: Path | None = None) -> Recovery:
    """Write a finalised rosbag2 bag holding every complete message of ``bag``.

    Args:
        bag: The unfinished bag folder, or its .mcap file.
        out: The new bag folder (must not exist); default ``BAG-recovered`` beside the bag.

    Returns:
        What was recovered; ``messages`` 0 when nothing was (and ``out`` is not created).

    Raises:
        BagError: If the input cannot be read or is not MCAP, or ``out`` exists.
    """
    files = mcap_files(bag)
    folder = bag if bag.is_dir() else bag.parent
    out = out or folder.with_name(f'{folder.name}-recovered')
    if out.exists():
        raise BagError(f'{out}: already exists; choose a new output folder')
    rebuilt = _Rebuilt(out)
    end = ''
    try:
        for path in files:
            scan = Scan()
            for msg in read_mcap(path, scan):
                channel = scan.channels.get(msg.channel_id)
                schema = scan.schemas.get(channel.schema_id) if channel else None
                if channel is not None and schema is not None:
                    rebuilt.write(schema, channel, msg)
            end = f'{path.name}: {scan.end}'
    finally:
        if rebuilt.writer is not None:
            rebuilt.writer.close()
    return Recovery(out, sum(rebuilt.counts.values()), rebuilt.counts, end, rebuilt.skipped)
