"""Large messages go to the MCAP file in one write, not through rosbags' in-memory chunk.

rosbags' MCAP writer builds each message record in a BytesIO, copies it into the chunk's
BytesIO, copies the chunk out again when it closes it, and copies it into the chunk record
before the file gets it: five copies of every camera frame, about 1.2 ms for a 640x480 rgb8
image on this project's 2-core test machine, which is 5 % of what the edge model takes per
frame at 320. Here a large message closes the pending chunk with itself as the last record,
written straight from the caller's buffer: the chunk's small records (channels, detections)
are copied once, the image not at all before the file.

The chunk is the one MCAP specifies (``0x06``: start and end time, records length, CRC 0 for
"not computed", compression name, records), followed by its message indexes (``0x07``); its
chunk index goes to the writer's list, which rosbags writes into the summary at close. It
relies on rosbags' writer internals (``chunk``, ``chunks``, ``bio``, ``compression``);
:func:`install` leaves a writer without them (or writing compressed chunks) as it is.
"""

from __future__ import annotations

from collections import defaultdict
from io import BytesIO
import struct
from typing import Any

LARGE = 256 << 10
"""Messages from this size on are written directly (a 320x240 mono8 image and up)."""

_OP_MESSAGE, _OP_CHUNK, _OP_MESSAGE_INDEX = 0x05, 0x06, 0x07
_NO_MESSAGE = 2**63 - 1  # rosbags' start time of an empty chunk
_MESSAGE_HEADER = struct.Struct('<BQHIQQ')  # op, record length, channel, sequence, log, publish
_MESSAGE_FIELDS = _MESSAGE_HEADER.size - 9  # what the record length counts before the data


def install(storage: Any) -> bool:
    """Route the large messages of an open rosbags MCAP storage writer through this module.

    Args:
        storage: ``rosbags`` ``Writer.storage`` after ``open()``.

    Returns:
        Whether it was installed (False: the storage lacks the internals or compresses).
    """
    needed = ('chunk', 'chunks', 'bio', 'compression', 'write', 'channel_stats',
              'message_start_time', 'message_end_time')
    if not all(hasattr(storage, name) for name in needed) or storage.compression != '' or \
            not hasattr(storage.chunk, 'msgs'):
        return False
    small = storage.write

    def write(connection: Any, timestamp: int, data: bytes | memoryview) -> None:
        if len(data) < LARGE:
            small(connection, timestamp, data)
        else:
            write_chunk_with(storage, connection.id, timestamp, data)

    storage.write = write
    return True


def write_chunk_with(storage: Any, channel: int, timestamp: int, data: bytes | memoryview
                     ) -> None:
    """Close the storage's pending chunk with one more message, written from ``data`` as is.

    Args:
        storage: An open rosbags MCAP storage writer (see :func:`install`).
        channel: The message's channel (connection) id.
        timestamp: Its log and publish time (ns).
        data: The serialized message.
    """
    pending = storage.chunk
    head = pending.bio.getbuffer()
    message_offset = len(head)
    header = _MESSAGE_HEADER.pack(_OP_MESSAGE, _MESSAGE_FIELDS + len(data), channel, 0,
                                  timestamp, timestamp)
    records = len(head) + len(header) + len(data)
    start = min(pending.message_start_time, timestamp)
    end = max(pending.message_end_time, timestamp)
    name = storage.compression.encode()
    bio = storage.bio
    chunk_start = bio.tell()
    bio.write(struct.pack('<BQQQQI', _OP_CHUNK, 8 + 8 + 8 + 4 + 4 + len(name) + 8 + records,
                          start, end, records, 0))
    bio.write(struct.pack('<I', len(name)) + name + struct.pack('<Q', records))
    bio.write(head)
    bio.write(header)
    bio.write(data)
    chunk_end = bio.tell()

    messages = pending.msgs
    messages[channel].append((timestamp, message_offset))
    offsets: list[tuple[int, int]] = []
    for cid, entries in messages.items():
        offsets.append((cid, bio.tell()))
        bio.write(struct.pack('<BQHI', _OP_MESSAGE_INDEX, 2 + 4 + 16 * len(entries), cid,
                              16 * len(entries)))
        bio.write(b''.join(struct.pack('<QQ', ts, off) for ts, off in entries))
    index = BytesIO()
    index.write(struct.pack('<QQQQI', start, end, chunk_start, chunk_end - chunk_start,
                            10 * len(offsets)))
    index.write(b''.join(struct.pack('<HQ', cid, off) for cid, off in offsets))
    index.write(struct.pack('<Q', bio.tell() - chunk_end))
    index.write(struct.pack('<I', len(name)) + name)
    index.write(struct.pack('<QQ', records, records))  # compressed size = uncompressed size
    storage.chunks.append(index)

    storage.message_start_time = min(timestamp, storage.message_start_time)
    storage.message_end_time = max(timestamp, storage.message_end_time)
    storage.channel_stats[channel] += 1
    storage.chunk = type(pending)(_NO_MESSAGE, 0, BytesIO(), defaultdict(list))
