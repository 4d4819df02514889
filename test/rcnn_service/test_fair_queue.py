"""The fair queue: robots take turns, requests that cannot finish in time are refused early."""

from __future__ import annotations

from adaptive_offload.errors import ConfigError
import pytest
from rcnn_service.batching import capacity_per_s
from rcnn_service.fair_queue import BatchTimes, FairQueue, Ticket
from rcnn_service.guard import Overloaded


def _queue(max_batch: int = 4, max_queue: int = 64, one: float = 0.1,
           full: float = 0.2) -> FairQueue[str, str]:
    times = BatchTimes()
    times.observe(1, one, at=0.0)
    times.observe(max_batch, full, at=0.0)
    return FairQueue(max_batch, max_queue, times)


def _push(queue: FairQueue[str, str], robot: str, n: int = 1, now: float = 0.0,
          budget: float | None = None) -> list[Ticket[str, str]]:
    tickets = [Ticket(f'{robot}{i}', robot, now, None if budget is None else now + budget)
               for i in range(n)]
    for ticket in tickets:
        queue.push(ticket, now)
    return tickets


def test_batches_take_robots_in_turn_whatever_they_sent() -> None:
    queue = _queue()
    _push(queue, 'chatty', 6)
    _push(queue, 'quiet', 2)
    first, expired = queue.pop_batch(0.0)
    assert [t.item for t in first] == ['chatty0', 'quiet0', 'chatty1', 'quiet1']
    assert not expired
    _push(queue, 'late')  # a newcomer waits one turn, not for chatty's whole queue
    second, _ = queue.pop_batch(0.0)
    assert [t.item for t in second] == ['chatty2', 'late0', 'chatty3', 'chatty4']
    assert len(queue) == 1 and queue.depth('chatty') == 1


def test_a_request_that_would_finish_after_its_budget_is_refused_at_once() -> None:
    queue = _queue()
    for robot in range(8):  # one request each: two full batches (0.2 s each) ahead
        _push(queue, f'r{robot}')
    queue.running(0.05)  # the batch under way ends in 50 ms
    # expected: 0.05 + 2 x 0.2 + 0.1 (its own batch of one) = 0.55 s
    assert queue.expected_finish('new', 0.0) == pytest.approx(0.55)
    with pytest.raises(Overloaded) as refused:
        _push(queue, 'new', budget=0.5)
    assert refused.value.reason == 'budget' and refused.value.status == 503
    assert refused.value.robot == 'new'
    assert refused.value.retry_after_s == pytest.approx(0.45)  # until the queue has drained
    assert refused.value.retry_after_header == '1'
    assert len(queue) == 8  # nothing queued for it
    _push(queue, 'new', budget=0.6)
    assert len(queue) == 9


def test_fair_order_is_what_admission_estimates() -> None:
    queue = _queue(one=0.1, full=0.2)
    _push(queue, 'chatty', 12)
    # a quiet robot's first request waits for one request per robot, not for chatty's 12
    # a batch of two: between the timed batches of one (0.1 s) and four (0.2 s)
    assert queue.expected_finish('quiet', 0.0) == pytest.approx(0.1 + 0.1 / 3)
    _push(queue, 'quiet', budget=0.25)
    batch, _ = queue.pop_batch(0.0)
    assert 'quiet0' in [t.item for t in batch]


def test_nothing_is_refused_for_time_before_a_batch_was_timed() -> None:
    queue: FairQueue[str, str] = FairQueue(2, 8, BatchTimes())
    _push(queue, 'a', 4, budget=0.0)
    assert len(queue) == 4


def test_an_idle_model_whose_estimate_is_old_takes_one_probe_to_measure_again() -> None:
    queue = _queue(one=10.0, full=20.0)  # one slow batch: every budget looks too short
    with pytest.raises(Overloaded):
        _push(queue, 'a', now=0.5, budget=0.2)
    probe = _push(queue, 'a', now=1.5, budget=0.2)[0]  # idle, and measured 1.5 s ago
    assert probe.probe
    with pytest.raises(Overloaded):  # one probe at a time: the next one waits its result
        _push(queue, 'b', now=1.5, budget=0.2)
    batch, expired = queue.pop_batch(1.5)
    assert batch == [probe] and not expired
    queue.running(1.6)
    with pytest.raises(Overloaded):  # busy: no probe, whatever the age
        _push(queue, 'b', now=3.0, budget=0.2)
    queue.times.observe(1, 0.05, at=3.0, fresh=True)  # the probe: the model is fast again
    queue.running(None)
    assert not _push(queue, 'b', now=3.1, budget=0.2)[0].probe  # admitted on the estimate


def test_a_probe_whose_budget_is_already_gone_is_not_computed() -> None:
    queue = _queue(one=10.0, full=20.0)
    probe = _push(queue, 'a', now=5.0, budget=0.0)[0]
    assert probe.probe
    assert queue.pop_batch(5.0) == ([], [probe])


def test_a_full_queue_makes_room_by_taking_from_the_robot_holding_most() -> None:
    queue = _queue(max_batch=2, max_queue=4)
    hog = _push(queue, 'hog', 4)
    assert queue.push(Ticket('q0', 'quiet', 0.0), 0.0) == [hog[3]]  # hog's newest goes
    assert queue.push(Ticket('q1', 'quiet', 0.0), 0.0) == [hog[2]]
    with pytest.raises(Overloaded) as refused:  # 2 against 2: nobody holds more
        queue.push(Ticket('q2', 'quiet', 0.0), 0.0)
    assert refused.value.reason == 'queue_full'
    with pytest.raises(Overloaded):  # the hog cannot push out its own requests either
        queue.push(Ticket('h4', 'hog', 0.0), 0.0)
    assert len(queue) == 4 and queue.depth('hog') == 2 and queue.depth('quiet') == 2


def test_a_request_whose_budget_ran_out_in_the_queue_is_not_computed() -> None:
    queue = _queue()
    doomed = _push(queue, 'a', budget=0.15)[0]  # admitted: alone it takes 0.1 s
    fine = _push(queue, 'b', budget=10.0)[0]
    batch, expired = queue.pop_batch(0.1)  # 0.1 s later it would finish at 0.25
    assert expired == [doomed] and batch == [fine] and not len(queue)


def test_drain_empties_every_robot() -> None:
    queue = _queue()
    tickets = _push(queue, 'a', 2) + _push(queue, 'b', 1)
    assert sorted(t.item for t in queue.drain()) == sorted(t.item for t in tickets)
    assert len(queue) == 0 and queue.pop_batch(0.0) == ([], [])


def test_batch_times_smooth_and_scale_to_sizes_not_seen() -> None:
    times = BatchTimes(alpha=0.5)
    assert not times.known and times.estimate(3) == 0.0
    times.observe(2, 0.2)
    assert times.estimate(4) == pytest.approx(0.4)  # per image, from the nearest size
    assert times.estimate(1) == pytest.approx(0.1)
    times.observe(1, 0.05, fresh=True)  # a probe's time rescales every older one
    assert times.estimate(2) == pytest.approx(0.1)  # 0.2 at 2 was 0.1 at 1: half
    times.observe(4, 0.11)  # sizes between two timed ones are interpolated, not scaled
    assert times.estimate(3) == pytest.approx(0.105)
    assert times.estimate(8) == pytest.approx(0.22)  # beyond them: scaled per image
    times.observe(1, 0.1, fresh=True)  # twice as slow now: the batching profile is kept
    assert times.estimate(4) == pytest.approx(0.22) and times.estimate(3) == pytest.approx(0.21)
    with pytest.raises(ConfigError):
        BatchTimes(alpha=0.0)


def test_batch_times_allow_four_relative_deviations_pooled_over_sizes() -> None:
    times = BatchTimes(alpha=0.5)
    times.observe(1, 0.1)
    times.observe(8, 0.4)  # a size's first time is no news of the jitter
    assert times.spread == 0.0 and times.estimate(8) == pytest.approx(0.4)
    times.observe(1, 0.12)  # 20 % over its smoothed time: half of it enters the deviation
    assert times.spread == pytest.approx(0.1)
    assert times.estimate(1) == pytest.approx(0.11 * 1.4)
    # The full batch, timed once, is taken as unsteady as the single image measured it.
    assert times.estimate(8) == pytest.approx(0.4 * 1.4)
    narrow = BatchTimes(alpha=0.5, margin=1.0)  # a service told to allow one deviation
    narrow.observe(1, 0.1)
    narrow.observe(1, 0.12)
    assert narrow.estimate(1) == pytest.approx(0.11 * 1.1)
    for margin in (-1.0, float('nan'), float('inf')):
        with pytest.raises(ConfigError, match='margin'):
            BatchTimes(margin=margin)
    times.observe(1, 0.22, fresh=True)  # a step of the machine's speed is not jitter ...
    assert times.spread == pytest.approx(0.05)  # ... but a time that matches the new speed
    assert times.estimate(8) == pytest.approx(0.8 * 1.2)
    for _ in range(10):  # a service refusing everything runs probes alone: they lower it
        times.observe(1, 0.22, fresh=True)
    assert times.spread < 0.0001 and times.estimate(1) == pytest.approx(0.22, rel=1e-3)


def test_a_service_refusing_for_past_jitter_admits_again_once_probes_run_steady() -> None:
    queue = _queue(max_batch=1, one=0.1)
    now = 10.0
    for seconds in (0.3, 0.1, 0.3, 0.1):  # a jittery spell: batches of one at 0.1-0.3 s
        queue.times.observe(1, seconds, at=now)
    with pytest.raises(Overloaded):  # a 0.25 s budget is under the jittery estimate
        _push(queue, 'r', now=now, budget=0.25)
    for _ in range(12):  # refusing all but probes: one each time the newest time is stale
        now += 2.0
        probe, = _push(queue, 'r', now=now, budget=0.25)
        assert probe.probe
        assert queue.pop_batch(now) == ([probe], [])
        queue.times.observe(1, 0.1, at=now, fresh=True)  # steady again
    ticket, = _push(queue, 'r', now=now, budget=0.25)  # a batch just ran: no probe
    assert not ticket.probe and len(queue) == 1


def test_a_queue_smaller_than_a_batch_is_refused() -> None:
    with pytest.raises(ConfigError, match='max_queue'):
        FairQueue(4, 3, BatchTimes())


def test_the_capacity_is_the_mean_rate_not_the_admission_estimates() -> None:
    times = BatchTimes(alpha=0.5)
    times.observe(4, 0.2)
    times.observe(4, 0.3)  # jitter: the deviation makes admission's estimate longer
    assert times.estimate(4) > times.typical(4) == pytest.approx(0.25)
    # A saturated model computes at its mean time; the HPA's target is the headroom.
    assert capacity_per_s(times, 4) == pytest.approx(4 / 0.25)
    assert capacity_per_s(BatchTimes(), 4) == 0.0 and BatchTimes().typical(4) == 0.0
