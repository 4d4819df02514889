"""Adaptive batching: batches form from the requests that wait, errors stay per request."""

from __future__ import annotations

import threading

from adaptive_offload.errors import ConfigError
import pytest
from rcnn_service.batching import AdaptiveBatcher
from rcnn_service.guard import ModelUnavailable, Overloaded


class _GatedModel:
    """Doubles its inputs; the first batch blocks until released, so others queue behind it."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.started = threading.Event()
        self.batches: list[list[int]] = []

    def __call__(self, items: list[int]) -> list[int]:
        self.batches.append(list(items))
        self.started.set()
        if not self.release.wait(10.0):
            raise TimeoutError('test never released the model')
        if any(i < 0 for i in items):
            raise ValueError(f'negative input in {items}')
        return [2 * i for i in items]


def test_requests_queued_behind_a_busy_model_run_as_one_batch() -> None:
    model = _GatedModel()
    sizes: list[int] = []
    batcher = AdaptiveBatcher(model, max_batch=4, on_batch=sizes.append)
    first = batcher.submit(1).future
    assert model.started.wait(10.0)
    # they arrive while the model is busy
    queued = [batcher.submit(i).future for i in (2, 3, 4, 5, 6)]
    model.release.set()
    assert first.result(10.0) == 2
    assert [f.result(10.0) for f in queued] == [4, 6, 8, 10, 12]
    batcher.close()
    assert model.batches == [[1], [2, 3, 4, 5], [6]]  # a lone request never waited for company
    assert sizes == [1, 4, 1]


def test_one_bad_input_fails_only_its_own_request() -> None:
    model = _GatedModel()
    batcher = AdaptiveBatcher(model, max_batch=4)
    first = batcher.submit(1).future
    assert model.started.wait(10.0)
    good, bad = batcher.submit(2).future, batcher.submit(-1).future
    other = batcher.submit(3).future
    model.release.set()
    assert first.result(10.0) == 2 and good.result(10.0) == 4 and other.result(10.0) == 6
    with pytest.raises(ValueError, match='negative'):
        bad.result(10.0)
    batcher.close()


class _LostModel(_GatedModel):
    """The gated model whose process is lost after its first batch (hung, killed)."""

    def __call__(self, items: list[int]) -> list[int]:
        if self.batches:
            self.batches.append(list(items))
            raise ModelUnavailable('the model process did not finish this batch within the '
                                   'batch timeout of 1 s', 1.0)
        return super().__call__(items)


def test_a_lost_model_fails_the_whole_batch_at_once_with_its_reason() -> None:
    model = _LostModel()
    batcher = AdaptiveBatcher(model, max_batch=4)
    first = batcher.submit(1).future
    assert model.started.wait(10.0)
    queued = [batcher.submit(i).future for i in (2, 3)]
    model.release.set()
    assert first.result(10.0) == 2
    for future in queued:
        with pytest.raises(ModelUnavailable, match='batch timeout of 1 s'):
            future.result(10.0)
    batcher.close()
    assert model.batches == [[1], [2, 3]]  # not run again image by image


def test_wait_lets_a_lone_request_collect_company() -> None:
    model = _GatedModel()
    model.release.set()
    batcher = AdaptiveBatcher(model, max_batch=2, max_wait_ms=5000.0)
    # The second request arrives within the wait; the full batch starts without waiting it out.
    a, b = batcher.submit(1).future, batcher.submit(2).future
    assert a.result(10.0) == 2 and b.result(10.0) == 4
    batcher.close()
    assert model.batches == [[1, 2]]


def test_close_finishes_queued_requests_then_refuses() -> None:
    model = _GatedModel()
    batcher = AdaptiveBatcher(model, max_batch=1)
    futures = [batcher.submit(i).future for i in range(3)]
    model.release.set()
    batcher.close()
    assert [f.result(0) for f in futures] == [0, 2, 4]
    with pytest.raises(RuntimeError, match='closed'):
        batcher.submit(9)


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ConfigError):
        AdaptiveBatcher(lambda items: items, max_batch=0)
    with pytest.raises(ConfigError):
        AdaptiveBatcher(lambda items: items, max_wait_ms=-1)


def test_close_without_drain_cancels_the_queue_and_finishes_the_batch_under_way() -> None:
    model = _GatedModel()
    batcher = AdaptiveBatcher(model, max_batch=1)
    running = batcher.submit(1).future
    assert model.started.wait(10)
    queued = [batcher.submit(i).future for i in (2, 3)]
    batcher.close(timeout_s=0.0, drain=False)
    assert all(f.cancelled() for f in queued) and not batcher.alive
    model.release.set()
    batcher.close()
    assert running.result(10) == 2 and model.batches == [[1]]


class _StepClock:
    """Seconds that move only when told (the batcher's budgets and batch times use it)."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_each_request_learns_its_queue_wait_and_compute_time_on_the_given_clock() -> None:
    clock = _StepClock()

    def model(items: list[int]) -> list[int]:
        clock.now += 0.25  # the model takes a quarter of a second
        return items

    batcher = AdaptiveBatcher(model, max_batch=2, clock=clock)
    ticket = batcher.submit(1, robot='r1', budget_s=1.0)
    assert ticket.future.result(10) == 1
    batcher.close()
    assert ticket.robot == 'r1' and ticket.queue_wait_s == 0.0
    assert ticket.compute_s == pytest.approx(0.25) and ticket.in_budget
    assert batcher.times.estimate(1) == pytest.approx(0.25)


def test_refusals_after_queueing_fail_the_request_and_are_reported() -> None:
    model = _GatedModel()
    refusals: list[Overloaded] = []
    batcher = AdaptiveBatcher(model, max_batch=1, max_queue=2, on_refusal=refusals.append)
    running = batcher.submit(1, robot='hog').future
    assert model.started.wait(10)
    queued = [batcher.submit(i, robot='hog').future for i in (2, 3)]
    quiet = batcher.submit(4, robot='quiet').future  # the queue is full: hog's newest goes
    with pytest.raises(Overloaded, match='evicted'):
        queued[1].result(10)
    with pytest.raises(Overloaded, match='queue_full'):
        batcher.submit(5, robot='quiet')  # 1 each now: nobody holds more
    model.release.set()
    assert running.result(10) == 2 and queued[0].result(10) == 4 and quiet.result(10) == 8
    batcher.close()
    assert [(r.reason, r.robot) for r in refusals] == [('evicted', 'hog')]


def test_calibration_times_a_single_and_a_full_batch_before_serving() -> None:
    now = [0.0]
    sizes: list[int] = []

    def run(items: list[int]) -> list[int]:
        sizes.append(len(items))
        now[0] += 0.1 + 0.02 * (len(items) - 1)  # batching: each extra image adds 20 ms
        return items

    batcher = AdaptiveBatcher(run, max_batch=4, clock=lambda: now[0])
    try:
        batcher.calibrate(7)
        assert sizes == [1, 4]
        assert batcher.times.estimate(1) == pytest.approx(0.1)
        # a batch of two is estimated between them (0.12 s), not as two single images (0.2 s)
        assert batcher.times.estimate(2) == pytest.approx(0.12)
        assert batcher.times.measured_at is None  # the first request measures again
        batcher.calibrate(7, sizes=(2,))
        assert sizes == [1, 4, 2] and batcher.times.estimate(2) == pytest.approx(0.12)
    finally:
        batcher.close()


def test_every_request_that_reaches_admission_is_offered_once_whatever_its_fate() -> None:
    model = _GatedModel()
    offered: list[int] = []
    batcher = AdaptiveBatcher(model, max_batch=1, max_queue=2,
                              on_offer=lambda: offered.append(1))
    running = batcher.submit(1, robot='hog').future
    assert model.started.wait(10)
    queued = [batcher.submit(i, robot='hog').future for i in (2, 3)]
    batcher.submit(4, robot='quiet')  # pushes hog's newest out: offered once, not again
    with pytest.raises(Overloaded, match='queue_full'):
        batcher.submit(5, robot='quiet')  # refused at submit: offered all the same
    model.release.set()
    assert running.result(10) == 2 and queued[0].result(10) == 4
    batcher.close()
    with pytest.raises(RuntimeError, match='closed'):
        batcher.submit(6)  # never reached admission
    assert len(offered) == 5


def test_the_time_each_batch_computes_is_reported_busy_calibration_aside() -> None:
    now = [0.0]

    def run(items: list[int]) -> list[int]:
        now[0] += 0.1 + 0.02 * (len(items) - 1)
        return items

    busy: list[float] = []
    batcher = AdaptiveBatcher(run, max_batch=4, clock=lambda: now[0], on_busy=busy.append)
    try:
        batcher.calibrate(7)
        assert busy == []  # the model's own timing before serving: no request's load
        assert batcher.submit(1).future.result(10) == 1
        batcher.submit(2).future.result(10)
    finally:
        batcher.close()
    assert busy == pytest.approx([0.1, 0.1])


def test_capacity_is_the_best_rate_of_the_batch_times_and_follows_them() -> None:
    now = [0.0]
    slowdown = [1.0]

    def run(items: list[int]) -> list[int]:
        now[0] += slowdown[0] * (0.1 + 0.02 * (len(items) - 1))
        return items

    batcher = AdaptiveBatcher(run, max_batch=4, clock=lambda: now[0])
    try:
        assert batcher.capacity == 0.0  # nothing timed: unknown
        batcher.calibrate(7)
        # 4 images in 0.16 s beat 1 in 0.1 s: the full batch's rate, not the single's
        assert batcher.capacity == pytest.approx(4 / 0.16)
        slowdown[0] = 2.0  # the GPU got twice slower
        assert batcher.submit(1).future.result(10) == 1  # a probe: it measures again
        assert batcher.capacity == pytest.approx(4 / 0.32)
    finally:
        batcher.close()


@pytest.mark.parametrize('margin, admitted', [(0.0, True), (4.0, False)])
def test_the_admission_margin_decides_what_a_jittery_model_admits(margin: float,
                                                                  admitted: bool) -> None:
    clock = _StepClock()
    steps = iter([0.1, 0.2] * 4)

    def model(items: list[int]) -> list[int]:
        clock.now += next(steps)  # 0.1 and 0.2 s in turn: 0.15 s, give or take a third
        return items

    batcher = AdaptiveBatcher(model, max_batch=1, clock=clock, admission_margin=margin)
    try:
        for item in range(6):
            batcher.submit(item).future.result(10)
        if admitted:  # the smoothed time alone fits the budget
            assert batcher.submit(9, budget_s=0.2).future.result(10) == 9
        else:  # four deviations beyond it do not
            with pytest.raises(Overloaded, match='budget'):
                batcher.submit(9, budget_s=0.2)
    finally:
        batcher.close()
