"""A simulated R-CNN service shared by a fleet: replicas, each with the service's own queue.

Each replica runs :class:`rcnn_service.fair_queue.FairQueue` and ``BatchTimes`` on the simulated
clock, so admission by budget, fair batches, the bound, expiry and the probe behave as they do
on a GPU server; only the model is replaced by a batch-time profile. A balancer spreads requests
over the replicas it believes ready, as a least-request L7 balancer does (two random choices,
the one with less work).

Replicas live as Kubernetes pods do:

* **starting**: scheduled (``scale_up_delay_s``), pulling the image and loading the model
  (``pod_start_s``); no traffic.
* **ready**: takes traffic.
* **lost**: its zone is unreachable. Traffic sent to it vanishes (robots time out) until the
  readiness probe fails (``detect_s``) and the balancer drops it; its replacement is created
  when the node controller evicts it (``evict_s``, Kubernetes' default toleration of an
  unreachable node is 300 s). Back as ready if the zone returns first.
* **draining**: scaled down; finishes its queue, takes no new work.

A crashed replica fails what it held (connection reset) and is restarted in place: ready again
after ``pod_start_s``.
"""

from __future__ import annotations

from dataclasses import dataclass
import math
import random
from typing import Callable, Protocol

from adaptive_offload.errors import ConfigError
from offload_runtime.service_settings import ServiceSettings
from rcnn_service.batching import capacity_per_s
from rcnn_service.fair_queue import BatchTimes, FairQueue, Ticket
from rcnn_service.guard import Overloaded

STARTING, READY, LOST, DRAINING, GONE = 'starting', 'ready', 'lost', 'draining', 'gone'


class Caller(Protocol):
    """Who sent a request: told once how it ended."""

    def answered(self, t_ns: int, token: int, server_ms: float, queue_ms: float) -> None:
        """Take the answer, which left the service at ``t_ns`` (times as the service says)."""

    def refused(self, t_ns: int, token: int, reason: str, retry_after_s: float) -> None:
        """Take a refusal (``overloaded``) or reset (``connection``) sent at ``t_ns``."""


@dataclass(frozen=True)
class Request:
    """A request as the service sees it.

    Attributes:
        caller: Who sent it.
        token: The caller's name for it.
        robot: Its fair-queue flow.
        tail_s: A split route's tail: its compute time alone; 0 for an image.
    """

    caller: Caller
    token: int
    robot: str
    tail_s: float = 0.0


class Replica:
    """One pod of the service."""

    def __init__(self, name: str, zone: int, state: str, ready_at_s: float, created_s: float,
                 settings: ServiceSettings) -> None:
        self.name, self.zone, self.state = name, zone, state
        self.ready_at_s = ready_at_s
        self.created_s = created_s
        self.times = BatchTimes()
        self.queue: FairQueue[Request, None] = FairQueue(
            settings.max_batch, settings.max_queue, self.times)
        self.batch: list[Ticket[Request, None]] = []
        self.routed = True  # the balancer still sends it traffic

    @property
    def load(self) -> int:
        """Requests queued or running."""
        return len(self.queue) + len(self.batch)


@dataclass
class Window:
    """What the service did since the last sample (the metrics an autoscaler scrapes)."""

    arrivals: int = 0
    offered: int = 0
    refusals: int = 0
    answers: int = 0
    started: int = 0
    waited_s: float = 0.0
    busy_s: float = 0.0


@dataclass(frozen=True)
class ServiceSample:
    """One scrape of the service.

    Attributes:
        t_s: When.
        seconds: Length of the window it covers.
        arrivals_per_s: Requests offered per second (refused ones included).
        refusals_per_s: Load refusals per second.
        mean_wait_s: Mean queue wait of the requests that started in the window.
        utilisation: Busy share of the ready replicas' time.
        ready: Replicas ready now.
        spec: Replicas asked for now.
        capacity_per_s: Requests a second one replica serves in time (from its profile).
        offered_per_s: Requests a second that reached a ready replica's admission, admitted or
            refused: what the replicas' ``adaptive_offload_offered_total`` counters count.
            Requests no replica saw (none routed, or sent into a lost zone) are not in it.
        ready_capacity_per_s: Images a second the ready replicas compute together, each at
            its best batch size by its own measured batch times: the sum of their
            ``adaptive_offload_capacity_images_per_second`` gauges (0: none ready).
    """

    t_s: float
    seconds: float
    arrivals_per_s: float
    refusals_per_s: float
    mean_wait_s: float
    utilisation: float
    ready: int
    spec: int
    capacity_per_s: float
    offered_per_s: float = 0.0
    ready_capacity_per_s: float = 0.0


Schedule = Callable[..., None]
"""``schedule(t_ns, handler, *args)``: call ``handler(t_ns, *args)`` at ``t_ns``."""


class ServiceModel:
    """The replicas, their balancer and their lifecycle, on the simulation's clock.

    Args:
        settings: The service.
        schedule: Puts an event on the simulation's queue.
        rng: Draws the balancer's choices and batch-time jitter.
        jitter: Log-normal sigma of each batch's time.
        budget_s: The budget a robot's request usually has, for the capacity estimate.
    """

    def __init__(self, settings: ServiceSettings, schedule: Schedule, rng: random.Random,
                 jitter: float = 0.1, budget_s: float = 0.2) -> None:
        if settings.first_ms <= 0:
            raise ConfigError('the service model needs a batch time (first_ms > 0)')
        self.s = settings
        self._schedule = schedule
        self._rng = rng
        self._jitter = jitter
        self.replicas: list[Replica] = []
        self._made = 0
        self.window = Window()
        self._window_start = 0.0
        self.gpu_s = 0.0  # provisioned replica-seconds, counted as replicas go
        self.busy_total_s = 0.0
        self.late_answers = 0
        self.refusals_total = 0
        self.arrivals_total = 0
        self.spec = settings.replicas
        fits = [b for b in range(1, settings.max_batch + 1) if 2 * settings.batch_s(b) <= budget_s]
        best = max(fits or [1])
        self.capacity_per_s = best / settings.batch_s(best)
        for _ in range(settings.replicas):
            self._add(0, ready_at_s=0.0, state=READY)

    # -- lifecycle ---------------------------------------------------------------------------

    def _add(self, t_ns: int, ready_at_s: float, state: str = STARTING,
             zone: int | None = None) -> Replica:
        zone = self._made % self.s.zones if zone is None else zone
        replica = Replica(f'r{self._made}', zone, state, ready_at_s, t_ns / 1e9, self.s)
        self._calibrate(replica)
        self._made += 1
        self.replicas.append(replica)
        if state == STARTING:
            self._schedule(int(ready_at_s * 1e9), self._on_ready, replica)
        return replica

    def _calibrate(self, replica: Replica) -> None:
        """Time a single and a full batch, as the service does before it serves."""
        for size in sorted({1, self.s.max_batch}):
            replica.times.observe(size, self._batch_time(size))

    def _batch_time(self, images: int, tail_s: float = 0.0) -> float:
        # As the real model runs one: its images as one batch, then each tail alone.
        base = self.s.batch_s(images) if images else 0.0
        return (base + tail_s) * math.exp(self._rng.gauss(0.0, self._jitter))

    def _on_ready(self, t_ns: int, replica: Replica) -> None:
        if replica.state == STARTING and replica.ready_at_s <= t_ns / 1e9 + 1e-9:
            replica.state = READY

    def _retire(self, t_ns: int, replica: Replica) -> None:
        replica.state = GONE
        self.gpu_s += t_ns / 1e9 - replica.created_s

    def live(self) -> list[Replica]:
        """Replicas that count towards the deployment (not draining or gone)."""
        return [r for r in self.replicas if r.state in (STARTING, READY, LOST)]

    def ready(self) -> int:
        """Replicas ready now."""
        return sum(1 for r in self.replicas if r.state == READY)

    def scale_to(self, t_ns: int, wanted: int) -> None:
        """Ask for ``wanted`` replicas (clamped to the settings' bounds)."""
        wanted = max(self.s.min_replicas, min(self.s.max_replicas, wanted))
        self.spec = wanted
        live = self.live()
        t_s = t_ns / 1e9
        for _ in range(wanted - len(live)):
            zones = [r.zone for r in live if r.state != LOST]
            healthy = {r.zone for r in self.replicas if r.state != LOST} or {0}
            zone = min(healthy, key=lambda z: (zones.count(z), z))
            live.append(self._add(t_ns, t_s + self.s.scale_up_delay_s + self.s.pod_start_s,
                                  zone=zone))
        # Scale down starting pods first, then the least loaded ready ones.
        order = sorted(live, key=lambda r: (r.state != STARTING, r.state != LOST, r.load))
        for replica in order[:max(0, len(live) - wanted)]:
            if replica.state in (STARTING, LOST):
                self._retire(t_ns, replica)
            else:
                replica.state = DRAINING
                if not replica.batch:
                    self._drain(t_ns, replica)

    def _drain(self, t_ns: int, replica: Replica) -> None:
        if not replica.batch and not len(replica.queue):
            self._retire(t_ns, replica)
        elif not replica.batch:
            self._next_batch(t_ns, replica)

    def crash(self, t_ns: int, count: int) -> list[str]:
        """Crash ``count`` ready replicas: what they held fails; each restarts in place."""
        victims = [r for r in self.replicas if r.state == READY][:count]
        for replica in victims:
            self._fail_all(t_ns, replica, 'connection')
            replica.state = STARTING
            replica.ready_at_s = t_ns / 1e9 + self.s.pod_start_s
            replica.times = BatchTimes()
            replica.queue = FairQueue(self.s.max_batch, self.s.max_queue, replica.times)
            self._calibrate(replica)
            self._schedule(int(replica.ready_at_s * 1e9), self._on_ready, replica)
        return [r.name for r in victims]

    def zone_down(self, t_ns: int, share: float, duration_s: float) -> list[str]:
        """Make the zones holding ``share`` of the replicas unreachable for ``duration_s``."""
        live = self.live()
        want = math.ceil(share * len(live))
        lost: list[Replica] = []
        for zone in sorted({r.zone for r in live}):
            if len(lost) >= want:
                break
            lost += [r for r in live if r.zone == zone]
        for replica in lost:
            replica.state = LOST
            replica.batch = []  # vanished with the zone: their robots time out
            replica.queue.drain()
        self._schedule(t_ns + int(self.s.detect_s * 1e9), self._unroute, lost)
        if duration_s < self.s.evict_s:
            self._schedule(t_ns + int(duration_s * 1e9), self._zone_back, lost)
        else:
            self._schedule(t_ns + int(self.s.evict_s * 1e9), self._evict, lost)
        return [r.name for r in lost]

    def _unroute(self, _t_ns: int, lost: list[Replica]) -> None:
        for replica in lost:
            if replica.state == LOST:
                replica.routed = False

    def _zone_back(self, _t_ns: int, lost: list[Replica]) -> None:
        for replica in lost:
            if replica.state == LOST:
                replica.state, replica.routed = READY, True

    def _evict(self, t_ns: int, lost: list[Replica]) -> None:
        gone = [r for r in lost if r.state == LOST]
        healthy = sorted({r.zone for r in self.replicas if r.state in (READY, STARTING)}) or [0]
        for n, replica in enumerate(gone):
            self._retire(t_ns, replica)
            self._add(t_ns, t_ns / 1e9 + self.s.scale_up_delay_s + self.s.pod_start_s,
                      zone=healthy[n % len(healthy)])

    # -- requests ----------------------------------------------------------------------------

    def submit(self, t_ns: int, request: Request, budget_s: float) -> None:
        """Balance a request that reaches the service at ``t_ns`` with ``budget_s`` left."""
        self.window.arrivals += 1
        self.arrivals_total += 1
        routed = [r for r in self.replicas if r.routed and r.state in (READY, LOST)]
        if not routed:
            self._refuse(t_ns, request, 'connection', 0.0)
            return
        first, second = self._rng.choice(routed), self._rng.choice(routed)
        replica = first if first.load <= second.load else second
        if replica.state == LOST:
            return  # black-holed: the robot's own timeout ends it
        now = t_ns / 1e9
        ticket: Ticket[Request, None] = Ticket(request, request.robot, now, now + budget_s)
        self.window.offered += 1
        try:
            evicted = replica.queue.push(ticket, now)
        except Overloaded as err:
            self._refuse(t_ns, request, 'overloaded', err.retry_after_s)
            return
        for old in evicted:
            self._refuse(t_ns, old.item, 'overloaded', replica.queue.retry_after_s(now))
        if not replica.batch:
            self._next_batch(t_ns, replica)

    def _refuse(self, t_ns: int, request: Request, reason: str, retry_after_s: float) -> None:
        self.window.refusals += 1
        self.refusals_total += 1
        request.caller.refused(t_ns, request.token, reason, retry_after_s)

    def _next_batch(self, t_ns: int, replica: Replica) -> None:
        now = t_ns / 1e9
        batch, expired = replica.queue.pop_batch(now)
        for ticket in expired:
            self._refuse(t_ns, ticket.item, 'overloaded', replica.queue.retry_after_s(now))
        if not batch:
            replica.queue.running(None)
            if replica.state == DRAINING:
                self._retire(t_ns, replica)
            return
        tails = [t.item.tail_s for t in batch if t.item.tail_s > 0]
        seconds = self._batch_time(len(batch) - len(tails), sum(tails))
        for ticket in batch:
            ticket.started = now
            self.window.started += 1
            self.window.waited_s += now - ticket.enqueued
        replica.batch = batch
        replica.queue.running(now + seconds)
        self.window.busy_s += seconds
        self.busy_total_s += seconds
        self._schedule(t_ns + int(seconds * 1e9), self._batch_done, replica, batch, seconds)

    def _batch_done(self, t_ns: int, replica: Replica, batch: list[Ticket[Request, None]],
                    seconds: float) -> None:
        if replica.batch is not batch:
            return  # crashed or lost meanwhile: already failed
        now = t_ns / 1e9
        replica.batch = []
        replica.times.observe(len(batch), seconds, now, fresh=any(t.probe for t in batch))
        for ticket in batch:
            self.window.answers += 1
            if ticket.deadline is not None and now > ticket.deadline:
                self.late_answers += 1
            started = now if ticket.started is None else ticket.started
            # As the service reports them: time in the service, and the wait within it.
            ticket.item.caller.answered(t_ns, ticket.item.token, (now - ticket.enqueued) * 1e3,
                                        (started - ticket.enqueued) * 1e3)
        self._next_batch(t_ns, replica)

    def _fail_all(self, t_ns: int, replica: Replica, reason: str) -> None:
        for ticket in replica.batch + replica.queue.drain():
            ticket.item.caller.refused(t_ns, ticket.item.token, reason, 0.0)
        replica.batch = []

    # -- metrics -----------------------------------------------------------------------------

    def sample(self, t_ns: int) -> ServiceSample:
        """Return the window since the last sample and start a new one."""
        t_s = t_ns / 1e9
        seconds = max(1e-9, t_s - self._window_start)
        ready = self.ready()
        w = self.window
        capacity = sum(capacity_per_s(r.times, self.s.max_batch)
                       for r in self.replicas if r.state == READY)
        out = ServiceSample(t_s, seconds, w.arrivals / seconds, w.refusals / seconds,
                            w.waited_s / max(1, w.started), w.busy_s / (seconds * max(1, ready)),
                            ready, self.spec, self.capacity_per_s, w.offered / seconds, capacity)
        self.window = Window()
        self._window_start = t_s
        return out

    def close(self, t_ns: int) -> None:
        """End of the run: count every replica's provisioned time."""
        for replica in self.replicas:
            if replica.state != GONE:
                self._retire(t_ns, replica)
