"""Reading input rosbags and writing output rosbags (rosbag2, MCAP) with rosbags."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
import time
from typing import Any, Callable, Iterable, Iterator

from adaptive_offload.errors import BagError
from adaptive_offload.graph import QOS
from offload_runtime import mcap_direct
from rosbags.interfaces import (Qos, QosDurability, QosHistory, QosLiveliness, QosReliability,
                                QosTime)
from rosbags.rosbag2 import Reader, Writer
from rosbags.rosbag2.enums import StoragePlugin

IMAGE_TYPES = ('sensor_msgs/msg/Image', 'sensor_msgs/msg/CompressedImage')
_ZERO = QosTime(sec=0, nsec=0)
FLUSH_AFTER_S = 1.0


def qos(name: str) -> Qos:
    """Return a QoS of the graph's table as bag metadata records it (what bag play offers)."""
    spec = QOS[name]
    return Qos(history=QosHistory.KEEP_LAST, depth=spec.depth,
               reliability=QosReliability.RELIABLE if spec.reliable
               else QosReliability.BEST_EFFORT,
               durability=QosDurability.TRANSIENT_LOCAL if spec.latched
               else QosDurability.VOLATILE,
               deadline=_ZERO, lifespan=_ZERO, liveliness=QosLiveliness.AUTOMATIC,
               liveliness_lease_duration=_ZERO, avoid_ros_namespace_conventions=False)


@dataclass(frozen=True)
class RawMessage:
    """One serialized message of the input bag."""

    connection: Any
    timestamp: int
    data: bytes


class InputBag:
    """An input bag and its chosen image topic.

    Args:
        path: Bag folder (or a single .mcap/.db3 file of one).
        topic: Image topic; empty picks the only image topic in the bag.

    Raises:
        BagError: If the path is not a readable bag, the bag is empty, or the topic is missing
            or ambiguous.
    """

    def __init__(self, path: str | Path, topic: str = '') -> None:
        path = Path(path)
        if path.is_file() and path.suffix in ('.mcap', '.db3'):
            path = path.parent
        if not path.exists():
            raise BagError(f'{path}: no such bag')
        try:
            self._reader = Reader(path)
            self._reader.open()
        except Exception as err:  # rosbags raises several types for unreadable bags
            raise BagError(f'{path}: not a readable rosbag2 bag ({err})') from err
        self.path = path
        try:
            topic = self._choose(topic)
        except BagError:
            self.close()
            raise
        self.topic = topic
        self.frame_count = sum(c.msgcount for c in self._reader.connections if c.topic == topic)

    def _choose(self, topic: str) -> str:
        images = sorted({c.topic for c in self._reader.connections if c.msgtype in IMAGE_TYPES})
        if self._reader.message_count == 0:
            raise BagError(f'{self.path}: the bag holds no messages')
        if topic and topic not in images:
            raise BagError(f'{self.path}: no image topic {topic!r} (image topics: '
                           f'{", ".join(images) or "none"})')
        if not topic and len(images) != 1:
            found = ', '.join(images) if images else 'topics: ' + self.topic_list()
            raise BagError(f'{self.path}: {"several" if images else "no"} image topics '
                           f'({found}); name one with --topic')
        return topic or images[0]

    def topic_list(self) -> str:
        """All topics with their types, for messages."""
        return ', '.join(f'{c.topic} [{c.msgtype}]' for c in self._reader.connections)

    @property
    def connections(self) -> list[Any]:
        """Connections of every topic in the bag."""
        return list(self._reader.connections)

    @property
    def custom_data(self) -> dict[str, str]:
        """The bag's custom metadata (rosbag2 ``custom_data``); empty when it has none."""
        # rosbags reads custom_data but has no public property for it (0.11): its storage's.
        metadata = getattr(getattr(self._reader, 'storage', None), 'metadata', None)
        found = getattr(metadata, 'custom', None)
        return {str(k): str(v) for k, v in found.items()} if isinstance(found, dict) else {}

    @property
    def start_ns(self) -> int:
        """Log time of the bag's first message (0 for an empty bag)."""
        return int(self._reader.start_time) if self._reader.message_count else 0

    def messages(self) -> Iterator[RawMessage]:
        """Every message of the bag in log-time order.

        Raises:
            BagError: If the bag is damaged past what its index showed (a chunk that does not
                read back).
        """
        found = iter(self._reader.messages())
        while True:
            try:
                conn, timestamp, data = next(found)
            except StopIteration:
                return
            except Exception as err:  # rosbags raises several types for a damaged chunk
                raise BagError(f'{self.path}: damaged, cannot be read on ({err!r})') from err
            yield RawMessage(conn, timestamp, data)

    def close(self) -> None:
        """Close the reader."""
        self._reader.close()

    def __enter__(self) -> InputBag:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class OutputBag:
    """An MCAP rosbag2 bag being written; topics are added on first use.

    Messages are written in chunks. rosbags closes a chunk at 1 MiB and writes the MCAP
    summary and metadata.yaml only at :meth:`close`; this bag also closes and flushes the open
    chunk once its oldest message is ``flush_after_s`` old (:meth:`flush_due`), so that a
    killed process loses at most that much: ``adaptive-offload recover-bag`` reads the
    complete chunks back.

    Args:
        path: Bag folder to create (must not exist).
        typestore: Typestore that serializes the messages and provides their definitions.
        clock: Monotonic nanosecond clock, for the age of the open chunk.
        flush_after_s: Longest a written message waits in memory; 0 never flushes early.

    Raises:
        BagError: If the folder exists or cannot be created.
    """

    def __init__(self, path: str | Path, typestore: Any,
                 clock: Callable[[], int] = time.monotonic_ns,
                 flush_after_s: float = FLUSH_AFTER_S) -> None:
        path = Path(path)
        if path.exists():
            raise BagError(f'{path}: already exists; choose a new output folder')
        try:
            self._writer = Writer(path, version=9, storage_plugin=StoragePlugin.MCAP)
            self._writer.open()
        except Exception as err:  # rosbags raises several types for unwritable paths
            raise BagError(f'{path}: cannot create bag ({err})') from err
        self.path = path
        self._store = typestore
        self._connections: dict[str, Any] = {}
        self._clock = clock
        self._flush_after_ns = int(flush_after_s * 1e9)
        self._unflushed_since: int | None = None
        storage = self._writer.storage
        # The chunk and the file of rosbags' MCAP storage are not public API: without them
        # (another rosbags version) the bag is written as before, whole only at close.
        self._chunked = all(hasattr(storage, name) for name in ('chunk', 'close_chunk', 'bio'))
        if self._chunked:
            mcap_direct.install(storage)

    def set_custom_data(self, key: str, value: str) -> None:
        """Record ``key: value`` in the bag's metadata (rosbag2 ``custom_data``)."""
        self._writer.set_custom_data(key, value)

    def add_topic(self, topic: str, msgtype: str, profile: Qos | None = None) -> None:
        """Declare a topic with the QoS ``ros2 bag play`` should offer."""
        if topic not in self._connections:
            self._connections[topic] = self._writer.add_connection(
                topic, msgtype, typestore=self._store,
                offered_qos_profiles=[profile or qos('result')])
            # rosbags compiles a type's serializer on first use (some ms, holding the GIL):
            # here, before the frames, rather than on the first message in the middle of them.
            self._store.get_msgdef(msgtype)

    def write(self, topic: str, msg: Any, timestamp: int) -> None:
        """Serialize and write a message on a declared topic."""
        conn = self._connections[topic]
        self._writer.write(conn, timestamp, self._store.serialize_cdr(msg, conn.msgtype))
        self._written()

    def copy_topic(self, source: Any) -> None:
        """Declare a topic of an input bag, keeping its type, definition and QoS."""
        if source.topic not in self._connections:
            self._connections[source.topic] = self._writer.add_connection(
                source.topic, source.msgtype, msgdef=source.msgdef.data,
                rihs01=source.digest if str(source.digest).startswith('RIHS01_') else None,
                offered_qos_profiles=list(getattr(source.ext, 'offered_qos_profiles', [])) or
                [qos('sensor')])

    def write_raw(self, topic: str, data: bytes, timestamp: int) -> None:
        """Write an already serialized message."""
        self._writer.write(self._connections[topic], timestamp, data)
        self._written()

    def _written(self) -> None:
        if self._unflushed_since is None:
            self._unflushed_since = self._clock()
        self.flush_due()

    def flush_due(self) -> bool:
        """Flush the open chunk if its oldest message is ``flush_after_s`` old.

        Returns:
            Whether it flushed.
        """
        if self._unflushed_since is None or not self._flush_after_ns or \
                self._clock() - self._unflushed_since < self._flush_after_ns:
            return False
        self.flush()
        return True

    def flush(self) -> None:
        """Close the open chunk and hand the file's buffer to the OS (a kill keeps it)."""
        # rosbags' MCAP writer has no public flush: its chunk and file are internal attributes.
        storage: Any = self._writer.storage
        if self._chunked and storage is not None:
            if storage.chunk.msgs:  # channels alone wait for their first message
                storage.close_chunk()
            storage.bio.flush()
        self._unflushed_since = None

    def close(self) -> None:
        """Finish the bag (writes metadata.yaml)."""
        self._writer.close()


def declare_outputs(out: OutputBag, inputs: Iterable[Any],
                    outputs: Iterable[tuple[str, str, str]]) -> None:
    """Declare what a replay of the graph writes: the input topics, then every output.

    Args:
        out: The output bag.
        inputs: Connections of the input bag, copied as they are.
        outputs: (topic, message type, QoS name) of every output the replay writes.
    """
    for conn in inputs:
        out.copy_topic(conn)
    for topic, msgtype, qos_name in outputs:
        out.add_topic(topic, msgtype, qos(qos_name))
