"""The discrete-event queue the simulators run on, and the newest-frame slot of their workers."""

from __future__ import annotations

import heapq
from typing import Callable, Generic, TypeVar

T = TypeVar('T')

MS = 1_000_000
"""Nanoseconds per millisecond."""


class EventQueue:
    """Events in time order; at one time, frames first, then the others in the order queued."""

    def __init__(self) -> None:
        self._heap: list[tuple[int, int, int, Callable[..., None], tuple]] = []
        self._n = 0

    def at(self, t_ns: int, handler: Callable[..., None], *args: object,
           first: bool = False) -> None:
        """Call ``handler(t_ns, *args)`` at ``t_ns``."""
        self._n += 1
        heapq.heappush(self._heap, (t_ns, 0 if first else 1, self._n, handler, args))

    def run(self, until_ns: int | None = None) -> None:
        """Handle events in order until none is left (or the next is after ``until_ns``)."""
        heap = self._heap
        while heap and (until_ns is None or heap[0][0] <= until_ns):
            t, _, _, handler, args = heapq.heappop(heap)
            handler(t, *args)


class NewestSlot(Generic[T]):
    """A worker that runs one item at a time, holding only the newest of those that wait.

    As the nodes' frame workers do: an item offered while one waits supersedes it.
    """

    def __init__(self) -> None:
        self.busy = False
        self._waiting: T | None = None

    def offer(self, item: T) -> tuple[bool, T | None]:
        """Offer ``item``; return whether to start it now, and the waiting item it supersedes."""
        if not self.busy:
            self.busy = True
            return True, None
        superseded, self._waiting = self._waiting, item
        return False, superseded

    def done(self) -> T | None:
        """End the item under way; return the waiting one, to start now, if any."""
        item, self._waiting = self._waiting, None
        self.busy = item is not None
        return item
