"""Newest-item hand-off between a producer (camera callback, bag player) and a worker."""

from __future__ import annotations

import threading
from typing import Generic, TypeVar

T = TypeVar('T')


class LatestSlot(Generic[T]):
    """A depth-1 mailbox: putting an item replaces the one still waiting and hands it back.

    The worker therefore always processes the newest frame and latency never grows with a
    backlog; the caller records every replaced item as dropped, so nothing is lost silently.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._item: T | None = None
        self._full = False
        self._closed = False

    def put(self, item: T) -> T | None:
        """Offer an item.

        Args:
            item: The new item.

        Returns:
            The waiting item it replaced, or None.
        """
        with self._cond:
            replaced = self._item if self._full else None
            self._item, self._full = item, True
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
            self._cond.wait_for(lambda: self._full or self._closed, timeout)
            if not self._full:
                return None
            item, self._item, self._full = self._item, None, False
            self._cond.notify_all()
            return item

    def wait_empty(self, timeout: float | None = None) -> bool:
        """Wait until the waiting item has been taken; True when the slot is empty."""
        with self._cond:
            return self._cond.wait_for(lambda: not self._full or self._closed, timeout) and \
                not self._full

    def close(self) -> None:
        """Wake every waiter; :meth:`take` returns what is left, then None."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._closed
