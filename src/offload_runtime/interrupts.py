"""Stopping a replay on SIGINT or SIGTERM: an orderly, prompt stop instead of a traceback.

The first signal asks the attached target (a :class:`~offload_runtime.replay.Replay`) to
stop: it stops playing, drains its workers, finalises the output bag and returns the result
of the frames so far; the command then exits with 128 + the signal number (130 for Ctrl-C,
143 for SIGTERM, as a shell reports a process the signal ended). A second signal exits at
once, leaving the output bag to ``adaptive-offload recover-bag``.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from types import FrameType, TracebackType
from typing import Callable, Protocol, Sequence, TextIO

SLICE_S = 0.1  # the longest a stopped replay waits before it notices


class Stoppable(Protocol):
    """What a signal stops."""

    def stop(self) -> None:
        """Ask to stop; thread-safe and idempotent."""


class StopFlag:
    """A stop request, and waits sliced so that they notice it within :data:`SLICE_S`.

    Setting it is a plain attribute write (no lock, no :class:`threading.Event`): a signal
    handler runs between two bytecodes of the main thread and would deadlock on a lock that
    thread already holds. Nobody blocks on the flag; every wait polls it between slices.

    Args:
        clock: Monotonic nanosecond clock.
        sleep: Sleeps seconds (tests inject a fake).
        slice_s: Longest single wait.
    """

    def __init__(self, clock: Callable[[], int] = time.monotonic_ns,
                 sleep: Callable[[float], None] = time.sleep, slice_s: float = SLICE_S) -> None:
        self._clock = clock
        self._sleep = sleep
        self._slice_s = slice_s
        self._at: int | None = None

    def request(self) -> None:
        """Request the stop (the first request's time is kept)."""
        if self._at is None:
            self._at = self._clock()

    def is_set(self) -> bool:
        """Whether a stop was requested."""
        return self._at is not None

    def expired(self, now_ns: int, after_s: float) -> bool:
        """Whether a stop was requested at least ``after_s`` before ``now_ns``."""
        return self._at is not None and now_ns - self._at >= after_s * 1e9

    def sleep_until(self, deadline_ns: int) -> bool:
        """Sleep until the clock reaches ``deadline_ns``, in slices.

        Returns:
            True at the deadline, False as soon as a stop is seen.
        """
        while self._at is None:
            left_s = (deadline_ns - self._clock()) / 1e9
            if left_s <= 0:
                return True
            self._sleep(min(left_s, self._slice_s))
        return False

    def wait(self, wait: Callable[[float], bool]) -> bool:
        """Repeat a bounded wait, one slice at a time, until it succeeds or a stop is seen.

        Args:
            wait: Waits at most the seconds it is given for a condition; True if it holds.

        Returns:
            True when the condition holds, False when a stop came first or during the last
            slice (the caller must not act on a condition that came with the stop).
        """
        while self._at is None:
            if wait(self._slice_s):
                return self._at is None
        return False


class SignalStop:
    """Context manager: while inside, SIGINT and SIGTERM stop a target instead of raising.

    Before a target is attached (the replay is still loading its models and nothing has been
    written) the first signal raises :class:`KeyboardInterrupt`. A second signal writes one
    line and exits at once with 128 + its number.

    Args:
        name: Prefix of the lines written (the command).
        signals: Signals handled.
        exit_now: Ends the process on a second signal (tests inject a fake).
        err: Where the lines go.
    """

    def __init__(self, name: str, signals: Sequence[int] = (signal.SIGINT, signal.SIGTERM),
                 exit_now: Callable[[int], None] = os._exit, err: TextIO | None = None) -> None:
        self._name = name
        self._signals = tuple(signals)
        self._exit_now = exit_now
        self._err = err
        self._target: Stoppable | None = None
        self._previous: dict[int, object] = {}
        self.signum: int | None = None

    def __enter__(self) -> SignalStop:
        for signum in self._signals:
            self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)  # type: ignore[arg-type]
        self._previous.clear()

    @property
    def exit_code(self) -> int:
        """128 + the first signal's number (0 when none came)."""
        return 128 + self.signum if self.signum is not None else 0

    def attach(self, target: Stoppable) -> None:
        """Stop ``target`` on the next signal (at once if one already came)."""
        self._target = target
        if self.signum is not None:
            target.stop()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is not None:
            self._say(f'{signal.Signals(signum).name} again: exiting now; the output bag is '
                      'not finalised (adaptive-offload recover-bag rebuilds it)')
            self._exit_now(128 + signum)
            return
        self.signum = signum
        if self._target is None:
            raise KeyboardInterrupt
        self._say(f'{signal.Signals(signum).name}: stopping, finishing the output bag '
                  '(again to exit at once)')
        self._target.stop()

    def _say(self, line: str) -> None:
        err = self._err or sys.stderr
        try:
            err.write(f'{self._name}: {line}\n')
            err.flush()
        except (OSError, RuntimeError, ValueError):  # stderr closed, or in mid-write
            pass
