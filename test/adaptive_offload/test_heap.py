"""The start-up heap frozen out of garbage collection for a run."""

from __future__ import annotations

import gc
import weakref

from adaptive_offload.heap import frozen_start_up


class _Node:
    def __init__(self) -> None:
        self.other: _Node | None = None


def _garbage_cycle() -> weakref.ref[_Node]:
    a, b = _Node(), _Node()
    a.other, b.other = b, a
    return weakref.ref(a)


def test_objects_alive_at_entry_are_frozen_and_released_after() -> None:
    kept = _Node()
    with frozen_start_up():
        assert gc.get_freeze_count() > 0
        assert not any(obj is kept for obj in gc.get_objects())  # no collection walks it
    assert gc.get_freeze_count() == 0
    assert any(obj is kept for obj in gc.get_objects())


def test_garbage_at_entry_is_collected_not_frozen() -> None:
    dead = _garbage_cycle()
    with frozen_start_up():
        assert dead() is None


def test_garbage_made_during_the_run_is_still_collected() -> None:
    with frozen_start_up():
        dead = _garbage_cycle()
        gc.collect()
        assert dead() is None


def test_a_heap_frozen_outside_is_left_frozen() -> None:
    gc.freeze()
    try:
        outer = gc.get_freeze_count()
        with frozen_start_up():
            pass
        assert gc.get_freeze_count() == outer
    finally:
        gc.unfreeze()
