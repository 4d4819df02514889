"""The service's request queue: bounded, fair across robots, and aware of each request's budget.

A fleet shares one model. Three rules keep it working for somebody under overload:

* **Admission by budget.** A request carries the time its robot will wait (``budget_us``). The
  queue estimates when the request would finish (what is queued ahead of it, in fair order,
  plus the batch under way, from measured batch times) and refuses at once a request that
  would finish too late: the robot falls back to its edge now instead of after a timeout, and
  the model computes nothing nobody will use.
* **Fair batches.** Requests are queued per robot and batches are formed round-robin, one
  request per robot per turn, so a robot that sends ten times as much waits for itself, not
  the others.
* **A bound.** When ``max_queue`` requests wait, a new one is refused, unless another robot
  holds more of the queue than the newcomer's robot: then that robot's newest request makes
  room.

A request admitted on an estimate can still run late (the estimate was short, or quieter
robots were served first). Each is checked again when its batch forms and refused then
(``expired``) rather than computed after its budget.

Estimates come only from batches that ran, and a service that refuses everything runs none: a
slow batch (a GPU hiccup, a busy host) would keep it refusing after the cause had gone. So when
the model is idle, nothing waits, and the newest batch time is older than ``remeasure_s``, one
request is admitted whatever its estimate, as a probe that measures again.
"""

from __future__ import annotations

from collections import deque, OrderedDict
from concurrent.futures import Future
from dataclasses import dataclass, field
import math
from typing import Generic, TypeVar

from adaptive_offload.errors import ConfigError
from rcnn_service.guard import Overloaded

In = TypeVar('In')
Out = TypeVar('Out')

ANONYMOUS = '-'
"""Robot id of requests that name none; they share one turn."""
MARGIN = 4.0
"""Deviations of batch time that a batch is expected to take beyond its smoothed time."""


@dataclass(eq=False)
class Ticket(Generic[In, Out]):
    """One queued request and, once run, how long it waited and computed.

    Attributes:
        item: The model input.
        robot: Id of the robot that sent it.
        enqueued: When it was queued (queue clock, seconds).
        deadline: When its answer stops being useful; None: never.
        future: Its output, or the exception that refused or failed it.
        probe: Admitted to measure the model again, whatever its estimate.
        started: When its batch started; None until then.
        finished: When its batch ended; None until then.
    """

    item: In
    robot: str
    enqueued: float
    deadline: float | None = None
    future: Future[Out] = field(default_factory=Future)
    probe: bool = False
    started: float | None = None
    finished: float | None = None

    @property
    def queue_wait_s(self) -> float:
        """Seconds between queueing and the start of its batch (0 before it starts)."""
        return 0.0 if self.started is None else self.started - self.enqueued

    @property
    def compute_s(self) -> float:
        """Seconds its batch took (0 before it ends)."""
        if self.started is None or self.finished is None:
            return 0.0
        return self.finished - self.started

    @property
    def in_budget(self) -> bool:
        """Whether it finished by its deadline (always, without one)."""
        return self.finished is not None and (self.deadline is None or
                                              self.finished <= self.deadline)


class BatchTimes:
    """Smoothed seconds per batch, for each batch size the model has run, with a margin.

    The estimate is the smoothed time plus ``margin`` times the smoothed relative
    deviation (of each size's time from its own smoothed time), as TCP bounds a round trip by
    its smoothed time plus four deviations (RFC 6298): admission on the mean alone would let
    about half of the requests it admits at the edge of their budget finish after it. An
    answer computed after its budget costs the robot its whole deadline, where a refusal costs
    it nothing (it falls back to its edge at once), so the margin is wide. The deviation is
    relative and pooled over every size: a size timed once (a full batch, from the calibration)
    is as unsteady as the others, not exactly its one time.

    A size not seen yet is interpolated between the nearest sizes seen on either side; beyond
    the sizes seen, it is scaled from the nearest by the number of images (conservative above:
    batching makes the per-image time smaller, not larger). Scaling alone between sizes made a
    service that had timed only single images refuse every request that would have formed a
    batch, so it never timed one: the service times a full batch at start
    (:meth:`AdaptiveBatcher.calibrate`).

    Args:
        alpha: Weight of the newest batch in the smoothed time and deviation.
        margin: Deviations allowed beyond the smoothed time (:data:`MARGIN` by default).

    Raises:
        ConfigError: For ``alpha`` outside (0, 1] or a negative ``margin``.
    """

    def __init__(self, alpha: float = 0.2, margin: float = MARGIN) -> None:
        if not 0.0 < alpha <= 1.0:
            raise ConfigError(f'alpha must be in (0, 1], got {alpha}')
        if not 0.0 <= margin < math.inf:
            raise ConfigError(f'the admission margin must be a finite number >= 0 deviations, '
                              f'got {margin}')
        self._alpha = alpha
        self.margin = margin
        self._seconds: dict[int, float] = {}
        self.spread = 0.0  # smoothed |time / smoothed time of its size - 1|
        self.measured_at: float | None = None

    @property
    def known(self) -> bool:
        """Say whether any batch has been timed."""
        return bool(self._seconds)

    def observe(self, size: int, seconds: float, at: float | None = None,
                fresh: bool = False) -> None:
        """Record that a batch of ``size`` took ``seconds``, ending at ``at`` (queue clock).

        Args:
            size: Requests in the batch.
            seconds: How long it ran.
            at: When it ended; None: unknown (the next idle request is a probe).
            fresh: It ran a probe: the older times are stale. They are scaled by how much
                this batch's time differs from theirs (the machine got slower or faster, not
                its batching), so the probe deviates from them by nothing. It counts so: a
                service refusing every request runs only probes, and a deviation they never
                lowered would keep it refusing after the jitter that raised it had gone.
        """
        self.measured_at = at
        if fresh and self._seconds:
            ratio = seconds / self._interpolate(self._seconds, size)
            self._seconds = {s: t * ratio for s, t in self._seconds.items()}
            self._seconds[size] = seconds
            self.spread -= self._alpha * self.spread
            return
        old = self._seconds.get(size)
        if old is None:  # an interpolation's error is no jitter: it is not counted
            self._seconds[size] = seconds
            return
        self.spread += self._alpha * (abs(seconds / old - 1.0) - self.spread)
        self._seconds[size] = old + self._alpha * (seconds - old)

    def estimate(self, size: int) -> float:
        """Return the seconds a batch of ``size`` is expected to take at most (0 before any)."""
        return self.typical(size) * (1.0 + self.margin * self.spread)

    def typical(self, size: int) -> float:
        """Return the smoothed seconds of a batch of ``size``, without the margin (0 before any).

        What a busy model's batches take on average, so what it computes in a second: the
        margin bounds one answer's lateness, not the rate.
        """
        if not self._seconds:
            return 0.0
        return self._interpolate(self._seconds, size)

    @staticmethod
    def _interpolate(table: dict[int, float], size: int) -> float:
        """Return ``table``'s value at ``size``: between sizes linear, beyond them per image."""
        if size in table:
            return table[size]
        below = max((s for s in table if s < size), default=None)
        above = min((s for s in table if s > size), default=None)
        if below is not None and above is not None:
            low, high = table[below], table[above]
            return low + (high - low) * (size - below) / (above - below)
        nearest = below if above is None else above  # one of them is a size in the table
        return table[nearest] * size / nearest if nearest else 0.0


class FairQueue(Generic[In, Out]):
    """Per-robot queues served round-robin, bounded, with admission by budget.

    Not thread-safe: the batcher calls it under its own lock.

    Args:
        max_batch: Largest batch the model runs.
        max_queue: Most requests waiting at once.
        times: Measured batch times (shared with whoever runs the batches).
        remeasure_s: Age of the newest batch time after which an idle model takes a probe.

    Raises:
        ConfigError: For a queue smaller than one batch.
    """

    def __init__(self, max_batch: int, max_queue: int, times: BatchTimes,
                 remeasure_s: float = 1.0) -> None:
        if max_queue < max_batch:
            raise ConfigError(f'max_queue ({max_queue}) must hold at least one batch '
                              f'({max_batch})')
        self.max_batch = max_batch
        self.max_queue = max_queue
        self.times = times
        self._remeasure_s = remeasure_s
        # Robots in serving order: the next batch starts with the first; a robot served goes
        # to the back.
        self._robots: OrderedDict[str, deque[Ticket[In, Out]]] = OrderedDict()
        self._size = 0
        self._busy_until: float | None = None

    def __len__(self) -> int:
        return self._size

    def depth(self, robot: str) -> int:
        """Return how many requests of ``robot`` wait now."""
        queue = self._robots.get(robot)
        return len(queue) if queue else 0

    def running(self, until: float | None) -> None:
        """Say when the batch under way is expected to end (None: the model is idle)."""
        self._busy_until = until

    def expected_finish(self, robot: str, now: float) -> float:
        """When a request of ``robot`` queued now would finish, from the measured times."""
        mine = self.depth(robot)
        ahead = mine + sum(min(len(q), mine + 1) for r, q in self._robots.items() if r != robot)
        full, rest = divmod(ahead, self.max_batch)
        start = max(now, self._busy_until or now)
        return start + full * self.times.estimate(self.max_batch) + \
            self.times.estimate(rest + 1)

    def retry_after_s(self, now: float) -> float:
        """Seconds until the queue has drained, by the measured times."""
        start = max(now, self._busy_until or now)
        batches = math.ceil(self._size / self.max_batch)
        return start - now + batches * self.times.estimate(self.max_batch)

    def push(self, ticket: Ticket[In, Out], now: float) -> list[Ticket[In, Out]]:
        """Queue a request, or refuse it.

        Returns:
            Requests of other robots pushed out to make room; their futures are still to be
            failed (by the caller, outside its lock).

        Raises:
            Overloaded: ``budget`` when it would finish after its deadline; ``queue_full``
                when the queue is full of robots that hold no more of it than this one.
        """
        measured = self.times.measured_at
        ticket.probe = self._size == 0 and self._busy_until is None and \
            (measured is None or now - measured > self._remeasure_s)
        if ticket.deadline is not None and self.times.known and not ticket.probe:
            finish = self.expected_finish(ticket.robot, now)
            if finish > ticket.deadline:
                raise Overloaded(
                    'budget', ticket.robot, self.retry_after_s(now),
                    f'expected to finish in {(finish - now) * 1e3:.0f} ms, after its budget '
                    f'of {(ticket.deadline - now) * 1e3:.0f} ms')
        evicted: list[Ticket[In, Out]] = []
        if self._size >= self.max_queue:
            mine = self.depth(ticket.robot)
            greedy = max(self._robots, key=lambda r: len(self._robots[r]))
            if len(self._robots[greedy]) <= mine + 1:
                raise Overloaded('queue_full', ticket.robot, self.retry_after_s(now),
                                 f'{self._size} requests queued (max_queue {self.max_queue})')
            evicted.append(self._robots[greedy].pop())
            self._size -= 1
        self._robots.setdefault(ticket.robot, deque()).append(ticket)
        self._size += 1
        return evicted

    def pop_batch(self, now: float) -> tuple[list[Ticket[In, Out]], list[Ticket[In, Out]]]:
        """Take the next batch, one request per robot per turn.

        Returns:
            The batch, and the requests taken out because they can no longer finish by their
            deadline (their futures are still to be failed).
        """
        batch: list[Ticket[In, Out]] = []
        expired: list[Ticket[In, Out]] = []
        while self._robots and len(batch) < self.max_batch:
            robot, queue = next(iter(self._robots.items()))
            ticket = queue.popleft()
            self._size -= 1
            if queue:
                self._robots.move_to_end(robot)
            else:
                del self._robots[robot]
            size = min(self.max_batch, len(batch) + 1 + self._size)
            # A probe runs whatever its estimate says, but never once its budget is gone.
            late = ticket.deadline is not None and (
                now >= ticket.deadline or
                (not ticket.probe and now + self.times.estimate(size) > ticket.deadline))
            if late:
                expired.append(ticket)
            else:
                batch.append(ticket)
        return batch, expired

    def drain(self) -> list[Ticket[In, Out]]:
        """Take every queued request out (closing without running them)."""
        tickets = [t for q in self._robots.values() for t in q]
        self._robots.clear()
        self._size = 0
        return tickets
