"""Stop requests: sliced waits that notice them, and real SIGINT/SIGTERM turned into a stop."""

from __future__ import annotations

import io
import signal

from helpers import ManualClock
from offload_runtime.interrupts import SignalStop, SLICE_S, StopFlag
import pytest


class _Target:
    def __init__(self) -> None:
        self.stops = 0

    def stop(self) -> None:
        self.stops += 1


def _flag(clock: ManualClock, slept: list[float]) -> StopFlag:
    def sleep(seconds: float) -> None:
        slept.append(seconds)
        clock.advance(seconds * 1e3)
    return StopFlag(clock, sleep)


def test_sleep_until_sleeps_in_slices_up_to_the_deadline() -> None:
    clock, slept = ManualClock(), []
    flag = _flag(clock, slept)
    assert flag.sleep_until(clock() + 350_000_000)
    assert slept == pytest.approx([SLICE_S, SLICE_S, SLICE_S, 0.05])
    assert flag.sleep_until(clock() - 1) and len(slept) == 4  # past: no sleep at all


def test_a_stop_ends_a_long_sleep_within_one_slice() -> None:
    clock, slept, flags = ManualClock(), [], []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        clock.advance(seconds * 1e3)
        if len(slept) == 3:
            flags[0].request()  # as a signal handler would, between two slices
    flag = StopFlag(clock, sleep)
    flags.append(flag)
    assert not flag.sleep_until(clock() + 3600 * 1_000_000_000)
    assert len(slept) == 3
    assert flag.is_set() and not flag.sleep_until(clock() + 1)


def test_wait_repeats_a_bounded_wait_until_it_holds_or_a_stop() -> None:
    flag = StopFlag(ManualClock())
    asked: list[float] = []

    def wait(timeout: float) -> bool:
        asked.append(timeout)
        return len(asked) == 3
    assert flag.wait(wait) and asked == [SLICE_S] * 3

    def never(timeout: float) -> bool:
        asked.append(timeout)
        if len(asked) == 5:
            flag.request()
        return False
    assert not flag.wait(never) and len(asked) == 5
    assert not flag.wait(lambda timeout: True)  # the stop wins over a condition that holds


def test_a_stop_during_the_last_slice_wins_over_the_condition() -> None:
    flag = StopFlag(ManualClock())

    def wait(timeout: float) -> bool:
        flag.request()  # the worker took the frame, but Ctrl-C came meanwhile
        return True
    assert not flag.wait(wait)


def test_the_first_request_time_counts_for_expired() -> None:
    clock = ManualClock()
    flag = StopFlag(clock)
    assert not flag.expired(clock(), 0.0)
    flag.request()
    clock.advance(1500)
    flag.request()  # idempotent: a second request does not restart the drain
    assert not flag.expired(clock(), 2.0)
    clock.advance(500)
    assert flag.expired(clock(), 2.0)


def test_sigint_stops_the_target_and_a_second_exits_at_once() -> None:
    target, exits, err = _Target(), [], io.StringIO()
    before = signal.getsignal(signal.SIGINT)  # colcon test runs pytest with SIGINT ignored
    with SignalStop('cmd', exit_now=exits.append, err=err) as stopper:
        stopper.attach(target)
        signal.raise_signal(signal.SIGINT)  # the handler runs before raise_signal returns
        assert target.stops == 1 and stopper.signum == signal.SIGINT and not exits
        assert stopper.exit_code == 130
        signal.raise_signal(signal.SIGINT)
        assert exits == [130] and target.stops == 1
    lines = err.getvalue().splitlines()
    assert lines[0].startswith('cmd: SIGINT: stopping') and 'recover-bag' in lines[1]
    assert signal.getsignal(signal.SIGINT) is before


def test_sigterm_before_a_target_raises_and_stops_it_once_attached() -> None:
    target = _Target()
    previous = signal.getsignal(signal.SIGTERM)
    with SignalStop('cmd', err=io.StringIO()) as stopper:
        with pytest.raises(KeyboardInterrupt):
            signal.raise_signal(signal.SIGTERM)
        assert stopper.exit_code == 143
        stopper.attach(target)
        assert target.stops == 1
    assert signal.getsignal(signal.SIGTERM) is previous


def test_no_signal_no_exit_code() -> None:
    with SignalStop('cmd') as stopper:
        stopper.attach(_Target())
    assert stopper.signum is None and stopper.exit_code == 0
