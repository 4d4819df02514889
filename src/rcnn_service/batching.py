"""Adaptive batching for the service: requests that wait together run as one batch.

A single worker thread runs the detector. While it is busy, new requests queue; when it is
free it takes the next batch (up to ``max_batch``) from the queue. Under light load a
request runs alone at once (``max_wait_ms`` = 0) and under heavy load batches grow by
themselves, so nobody waits for a batch to fill. Each request keeps its own errors: a batch
that raises fails only if every image fails alone too.

The queue (:mod:`rcnn_service.fair_queue`) is bounded, serves robots in turn, and refuses a
request that cannot finish within its budget, at once or when its batch forms; the time each
batch took is measured here and feeds its estimates, and the pod's capacity
(:func:`capacity_per_s`) that the autoscaler divides the offered load by.
"""

from __future__ import annotations

import threading
import time
from typing import Callable, Generic, Sequence, TypeVar

from adaptive_offload.errors import ConfigError
from rcnn_service.fair_queue import ANONYMOUS, BatchTimes, FairQueue, MARGIN, Ticket
from rcnn_service.guard import ModelUnavailable, Overloaded

In = TypeVar('In')
Out = TypeVar('Out')


def capacity_per_s(times: BatchTimes, max_batch: int) -> float:
    """Return the images a second a model computes at its best batch size up to ``max_batch``.

    The rate is from each size's smoothed time (:meth:`BatchTimes.typical`), without
    admission's margin: a saturated model computes at its mean batch time, and the autoscaler's
    target utilisation (70 % in ``deploy/kubernetes/hpa.yaml``) is the headroom for its jitter.
    With the margin too, a jittery pod counted for less than it computes and the headroom was
    taken twice (a simulated fleet hour kept 19 % more GPU-seconds). Between and beyond the
    sizes timed the time is linear or per image, so the best rate is always at a timed size:
    usually the full batch that :meth:`AdaptiveBatcher.calibrate` times.

    Args:
        times: Measured batch times.
        max_batch: Largest batch the model runs.

    Returns:
        Images a second; 0 while no batch has been timed (unknown, not idle).
    """
    rates = [size / seconds for size in range(1, max_batch + 1)
             if (seconds := times.typical(size)) > 0]
    return max(rates, default=0.0)


class AdaptiveBatcher(Generic[In, Out]):
    """Runs ``run_batch`` on batches taken fairly from the requests that queued.

    Args:
        run_batch: Maps a list of inputs to one output each, in order.
        max_batch: Largest batch.
        max_wait_ms: How long a lone request waits for company (0: never).
        on_batch: Called with the size of each batch as it starts (metrics).
        max_queue: Most requests waiting at once; 0: 16 batches.
        on_refusal: Called with every request refused after it was queued (pushed out or
            expired), outside the lock (metrics).
        clock: Monotonic seconds; the budgets and batch times are measured on it.
        on_offer: Called once for every request that reaches admission, before it is
            admitted or refused (metrics: the offered load).
        admission_margin: Deviations of batch time admission allows beyond the smoothed
            time (see :class:`rcnn_service.fair_queue.BatchTimes`).
        on_busy: Called with the seconds each batch of requests took (metrics: the share of
            time the model computes).

    Raises:
        ConfigError: For a batch size below 1, a negative wait or margin, or a queue smaller
            than one batch.
    """

    def __init__(self, run_batch: Callable[[list[In]], Sequence[Out]], max_batch: int = 4,
                 max_wait_ms: float = 0.0,
                 on_batch: Callable[[int], None] | None = None, max_queue: int = 0,
                 on_refusal: Callable[[Overloaded], None] | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 on_offer: Callable[[], None] | None = None,
                 admission_margin: float = MARGIN,
                 on_busy: Callable[[float], None] | None = None) -> None:
        if max_batch < 1 or max_wait_ms < 0 or max_queue < 0:
            raise ConfigError(f'need max_batch >= 1, max_wait_ms >= 0 and max_queue >= 0, got '
                              f'{max_batch}, {max_wait_ms}, {max_queue}')
        self._run = run_batch
        self.max_batch = max_batch
        self._wait_s = max_wait_ms / 1e3
        self.times = BatchTimes(margin=admission_margin)
        self._queue: FairQueue[In, Out] = FairQueue(max_batch, max_queue or 16 * max_batch,
                                                    self.times)
        self._cond = threading.Condition()
        self._closed = False
        self._on_batch = on_batch
        self._on_refusal = on_refusal
        self._on_offer = on_offer
        self._on_busy = on_busy
        self._clock = clock
        self._thread = threading.Thread(target=self._loop, name='batcher', daemon=True)
        self._thread.start()

    def calibrate(self, sample: In, sizes: Sequence[int] = ()) -> None:
        """Time batches of ``sample`` before serving, so that admission knows batch times.

        Admission estimates a batch size it has not timed from the sizes it has; a service
        that timed only single images would refuse the requests that would form a batch, and
        so never time one. Call it before publishing the batcher.

        Args:
            sample: A typical input (e.g. a blank frame of the usual size).
            sizes: Batch sizes to time; empty: 1 and ``max_batch``.
        """
        for size in sorted(set(sizes or (1, self.max_batch))):
            start = self._clock()
            self._run([sample] * size)
            seconds = self._clock() - start
            with self._cond:
                self.times.observe(size, seconds)  # time unknown: the first request measures

    @property
    def capacity(self) -> float:
        """Images a second the model computes at its best batch size (0 until timed)."""
        with self._cond:  # the worker adds batch sizes to the times as they run
            return capacity_per_s(self.times, self.max_batch)

    @property
    def alive(self) -> bool:
        """Whether requests are taken and run (not closed, worker thread running)."""
        return not self._closed and self._thread.is_alive()

    @property
    def depth(self) -> int:
        """Requests waiting now (not the batch under way)."""
        with self._cond:
            return len(self._queue)

    def submit(self, item: In, robot: str = ANONYMOUS,
               budget_s: float | None = None) -> Ticket[In, Out]:
        """Queue one input; the ticket's future holds its output or its exception.

        Args:
            item: The model input.
            robot: Id of the robot that sent it (its turn in the fair order).
            budget_s: How long from now its answer is useful; None: no limit.

        Raises:
            Overloaded: When it cannot finish within its budget or the queue is full.
            RuntimeError: After :meth:`close`.
        """
        with self._cond:
            if self._closed:
                raise RuntimeError('batcher is closed')
            now = self._clock()
            ticket: Ticket[In, Out] = Ticket(item, robot or ANONYMOUS, now,
                                             None if budget_s is None else now + budget_s)
            if self._on_offer is not None:  # before push, which may refuse it
                self._on_offer()
            evicted = self._queue.push(ticket, now)
            self._cond.notify()
        for other in evicted:
            self._refuse(other, Overloaded(
                'evicted', other.robot, self._queue.retry_after_s(now),
                f'made room for robot {ticket.robot!r}, which held less of the full queue'))
        return ticket

    def close(self, timeout_s: float = 10.0, drain: bool = True) -> None:
        """Stop taking requests and join the worker once the queue is done.

        Args:
            timeout_s: Longest wait for the worker.
            drain: Run the queued requests first; False cancels them (their futures raise
                ``CancelledError``), so only the batch under way is finished.
        """
        with self._cond:
            self._closed = True
            dropped = [] if drain else self._queue.drain()
            self._cond.notify()
        for ticket in dropped:
            # Notified too: concurrent.futures.wait() counts a cancelled future as done only
            # then, and the worker that would notify it never sees it now.
            if ticket.future.cancel():
                ticket.future.set_running_or_notify_cancel()
        self._thread.join(timeout_s)

    def _next_batch(self) -> list[Ticket[In, Out]]:
        while True:
            with self._cond:
                while not len(self._queue) and not self._closed:
                    self._cond.wait()
                if self._wait_s and len(self._queue) < self.max_batch and not self._closed:
                    self._cond.wait_for(
                        lambda: len(self._queue) >= self.max_batch or self._closed, self._wait_s)
                now = self._clock()
                batch, expired = self._queue.pop_batch(now)
                if batch:
                    self._queue.running(now + self.times.estimate(len(batch)))
            for ticket in expired:
                self._refuse(ticket, Overloaded(
                    'expired', ticket.robot, 0.0,
                    f'its budget ran out after {(now - ticket.enqueued) * 1e3:.0f} ms in the '
                    'queue'))
            if batch or not expired:
                return batch  # empty: closed and drained

    def _refuse(self, ticket: Ticket[In, Out], err: Overloaded) -> None:
        if ticket.future.set_running_or_notify_cancel():  # not cancelled by its client
            ticket.future.set_exception(err)
            if self._on_refusal is not None:
                self._on_refusal(err)

    def _loop(self) -> None:
        while True:
            batch = self._next_batch()
            if not batch:
                return  # closed and drained
            batch = [t for t in batch if t.future.set_running_or_notify_cancel()]
            if batch:
                if self._on_batch is not None:
                    self._on_batch(len(batch))
                start = self._clock()
                self._finish(batch)
                if self._on_busy is not None:
                    self._on_busy(self._clock() - start)
            with self._cond:
                self._queue.running(None)

    def _finish(self, batch: list[Ticket[In, Out]]) -> None:
        start = self._clock()
        for ticket in batch:
            ticket.started = start
        try:
            outputs = list(self._run([t.item for t in batch]))
            if len(outputs) != len(batch):
                raise RuntimeError(f'batch of {len(batch)} gave {len(outputs)} outputs')
        except Exception as err:  # delivered to the waiting requests
            # A failed batch says nothing of how long a batch takes: its time is not kept.
            # A model that is gone (its process died, hung or restarts) fails every image
            # alike: running each alone would not help, and each request keeps the reason.
            if len(batch) == 1 or isinstance(err, ModelUnavailable):
                self._done(batch, start, timed=False)
                for ticket in batch:
                    ticket.future.set_exception(err)
                return
            for ticket in batch:  # one bad input must not fail its neighbours
                try:
                    out = self._run([ticket.item])[0]
                except Exception as single:
                    self._done([ticket], start, timed=False)
                    ticket.future.set_exception(single)
                else:
                    self._done([ticket], start, timed=False)
                    ticket.future.set_result(out)
            return
        self._done(batch, start)
        for ticket, out in zip(batch, outputs):
            ticket.future.set_result(out)

    def _done(self, batch: list[Ticket[In, Out]], start: float, timed: bool = True) -> None:
        end = self._clock()
        for ticket in batch:
            ticket.finished = end
        if timed:
            with self._cond:
                self.times.observe(len(batch), end - start, end,
                                   fresh=any(t.probe for t in batch))
