"""Frames of a batch cross to the model's process through shared memory, not the pipe.

Pickling a batch of 640x480 frames through a pipe copies each one twice and holds the
interpreter while it does (16 frames: tens of milliseconds); writing them into shared memory
is one copy (about a millisecond). The parent owns a small pool of slots, each as large as the
largest frame the service accepts; the pipe carries only a :class:`FrameHeader` per frame.
Slots are reused batch after batch: the parent writes a batch only once the last one has been
answered. A frame that does not fit a slot (more frames than slots) crosses inline, pickled.
"""

from __future__ import annotations

from dataclasses import dataclass
from multiprocessing import shared_memory
import shutil
import sys
from typing import Sequence, Sized

import numpy as np

SHM_DIR = '/dev/shm'


@dataclass(frozen=True)
class FrameHeader:
    """Where one frame of a batch lies, as the pipe carries it.

    Attributes:
        slot: Index of its slot; -1 when it crossed inline.
        shape: Its array shape.
        dtype: Its numpy dtype, by name.
        inline: The frame itself, when it did not fit a slot.
    """

    slot: int
    shape: tuple[int, ...]
    dtype: str
    inline: np.ndarray | None = None


def slot_bytes(max_image_side: int) -> int:
    """Return the bytes of the largest frame accepted: a square BGR uint8 image."""
    return max_image_side * max_image_side * 3


class SharedFrames:
    """The parent's pool of shared-memory slots (it creates and finally removes them).

    Pages are only backed once written, so a slot as large as the largest accepted frame costs
    what the frames written into it take.

    Args:
        slots: Slots in the pool (the largest batch).
        size: Bytes of each slot.
    """

    def __init__(self, slots: int, size: int) -> None:
        self.size = size
        self._segments: list[shared_memory.SharedMemory] = []
        try:
            for _ in range(slots):
                self._segments.append(shared_memory.SharedMemory(create=True, size=size))
        except BaseException:
            self.close()
            raise

    @property
    def names(self) -> tuple[str, ...]:
        """The segments' names, for the child to attach."""
        return tuple(s.name for s in self._segments)

    @property
    def total_bytes(self) -> int:
        """Bytes the pool may take once every slot is full."""
        return self.size * len(self._segments)

    def room_left(self) -> int:
        """Bytes free where shared memory lives (-1 when unknown)."""
        try:
            return shutil.disk_usage(SHM_DIR).free
        except OSError:
            return -1

    def put(self, frames: Sequence[np.ndarray]) -> list[FrameHeader]:
        """Write frames into the slots, in order; return their headers.

        Args:
            frames: Arrays; the caller does not write again until the child has answered.
        """
        headers = []
        for index, frame in enumerate(frames):
            if index < len(self._segments) and frame.nbytes <= self.size:
                view = np.ndarray(frame.shape, frame.dtype, self._segments[index].buf)
                view[...] = frame
                headers.append(FrameHeader(index, tuple(frame.shape), frame.dtype.str))
            else:
                headers.append(FrameHeader(-1, tuple(frame.shape), frame.dtype.str,
                                           np.ascontiguousarray(frame)))
        return headers

    def close(self) -> None:
        """Remove the segments (the child, if any, has stopped)."""
        for segment in self._segments:
            segment.close()
            try:
                segment.unlink()
            except FileNotFoundError:
                pass
        self._segments = []


class AttachedFrames:
    """The child's view of the parent's slots.

    Args:
        names: The segments' names (:attr:`SharedFrames.names`).
    """

    def __init__(self, names: Sequence[str]) -> None:
        self._segments = [_attach(name) for name in names]

    def get(self, header: FrameHeader) -> np.ndarray:
        """Return the frame a header names (a view of its slot: read it before answering)."""
        if header.slot < 0:
            if header.inline is None:
                raise ValueError('an inline frame header without its frame')
            return header.inline
        return np.ndarray(header.shape, np.dtype(header.dtype), self._segments[header.slot].buf)


def _attach(segment: str) -> shared_memory.SharedMemory:
    """Attach a segment without registering it with the resource tracker.

    A spawned child shares its parent's tracker; registering (and so unregistering) the
    parent's segments from here would leave them unremoved if the parent were killed.
    """
    if sys.version_info >= (3, 13):
        return shared_memory.SharedMemory(name=segment, track=False)
    from multiprocessing import resource_tracker

    register = resource_tracker.register

    def register_other(name: Sized, rtype: str) -> None:
        if rtype != 'shared_memory':
            register(name, rtype)

    resource_tracker.register = register_other  # only this child's thread runs yet
    try:
        return shared_memory.SharedMemory(name=segment)
    finally:
        resource_tracker.register = register
