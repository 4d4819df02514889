"""The simulators' event queue and their workers' newest-frame slot."""

from __future__ import annotations

from offload_runtime.sim_events import EventQueue, NewestSlot


def test_events_run_in_time_order_frames_first_at_one_time() -> None:
    queue, seen = EventQueue(), []
    queue.at(20, lambda t, name: seen.append((t, name)), 'late')
    queue.at(10, lambda t, name: seen.append((t, name)), 'other')
    queue.at(10, lambda t, name: seen.append((t, name)), 'frame', first=True)
    queue.run(until_ns=15)
    assert seen == [(10, 'frame'), (10, 'other')]
    queue.run()
    assert seen[-1] == (20, 'late')


def test_a_busy_worker_keeps_only_the_newest_waiting_item() -> None:
    slot: NewestSlot[int] = NewestSlot()
    assert slot.offer(1) == (True, None) and slot.busy
    assert slot.offer(2) == (False, None)
    assert slot.offer(3) == (False, 2)  # 2 is superseded
    assert slot.done() == 3 and slot.busy  # 3 starts at once
    assert slot.done() is None and not slot.busy
    assert slot.offer(4) == (True, None)
