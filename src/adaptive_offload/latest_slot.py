"""Newest-items hand-off between a producer (camera callback, bag player) and workers."""

from __future__ import annotations

from collections import deque
import threading
from typing import Generic, TypeVar

T = TypeVar('T')


class LatestSlot(Generic[T]):
    """A bounded mailbox that drops its oldest item when a new one arrives and it is full.

    With the default capacity of 1, a put replaces the item still waiting: the worker always
    processes the newest frame and latency never grows with a backlog. The caller records
    every item handed back by :meth:`put` as dropped, so nothing is lost silently. Items are
    taken oldest first.

    Args:
        capacity: How many items may wait.

    Raises:
        ValueError: For a capacity below 1.
    """

    def __init__(self, capacity: int = 1) -> None:
        if capacity < 1:
            raise ValueError(f'capacity must be >= 1, got {capacity}')
        self._cond = threading.Condition()
        self._items: deque[T] = deque()
        self._capacity = capacity
        self._closed = False

    def put(self, item: T) -> T | None:
        """Offer an item.

        Args:
            item: The new item.

        Returns:
            The oldest waiting item it pushed out, or None.
        """
        with self._cond:
            replaced = self._items.popleft() if len(self._items) >= self._capacity else None
            self._items.append(item)
            self._cond.notify_all()
            return replaced

    def take(self, timeout: float | None = None) -> T | None:
        """Wait for an item and remove it.

        Args:
            timeout: Seconds to wait; None waits until an item arrives or the slot closes.

        Returns:
            The item, or None on timeout or when the slot is closed and empty.
        """
        with self._cond:
            self._cond.wait_for(lambda: bool(self._items) or self._closed, timeout)
            if not self._items:
                return None
            item = self._items.popleft()
            self._cond.notify_all()
            return item

    def wait_empty(self, timeout: float | None = None) -> bool:
        """Wait until every waiting item has been taken; True when the slot is empty."""
        with self._cond:
            return self._cond.wait_for(lambda: not self._items or self._closed, timeout) and \
                not self._items

    def close(self) -> None:
        """Wake every waiter; :meth:`take` returns what is left, then None."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._closed
