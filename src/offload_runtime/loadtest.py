"""A fleet against one service: N robot clients, each the real cloud bridge, for a bounded time.

Each robot sends camera frames at a fixed rate through its own :class:`CloudBridge` (its own
``robot_id``, connections, back-off and circuit breaker), with the route and deadline of a
cloud decision. Like the bridge node it keeps at most ``max_in_flight`` requests under way; a
frame due while they are all busy is not sent (``busy``). What comes back is sorted into:

* ``good``: an answer within the deadline (the goodput);
* ``late``: an answer after it (the transport's timeout is the deadline, so rare);
* ``refused``: a load refusal (``overloaded``), which returns at once;
* ``backoff``: not sent, the bridge holding off after a refusal;
* ``timeout``: no answer by the deadline;
* ``breaker``: not sent, the bridge's circuit breaker open after consecutive failures;
* ``error``: anything else (:attr:`LoadResult.errors` keeps the reasons).

The service's own view comes from its ``/metrics`` before and after: answers it computed
within their budget and after it (``late_answers``, which admission by budget should keep at 0).
"""

from __future__ import annotations

from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
import random
import re
import threading
import time
from typing import Any, Callable, Mapping
import urllib.request

from adaptive_offload.conversions import frame_to_message
from adaptive_offload.datatypes import Decision, Route
from adaptive_offload.typestore import make_typestore, message_types
from cloud_bridge.bridge import CloudBridge
from cloud_bridge.bridge_config import CloudConfig
from cloud_bridge.endpoints import HedgedEndpoints
import numpy as np

OUTCOMES = ('good', 'late', 'refused', 'backoff', 'timeout', 'breaker', 'error', 'busy')


@dataclass(frozen=True)
class LoadSpec:
    """One point of a load test.

    Attributes:
        robots: Robot clients, each with its own bridge.
        fps: Frames per second each robot sends.
        deadline_ms: Each frame's deadline (the cloud decision's).
        seconds: How long frames are sent.
        frame_size: (height, width) of the camera frames.
        max_in_flight: Requests a robot keeps under way at once (cloud_bridge's parameter).
        seed: Draws each robot's phase within a frame period, and its back-off.
    """

    robots: int
    fps: float
    deadline_ms: float
    seconds: float
    frame_size: tuple[int, int] = (240, 320)
    max_in_flight: int = 2
    seed: int = 0


@dataclass
class LoadResult:
    """What one point measured.

    Attributes:
        spec: The point.
        counts: Frames per outcome (see :data:`OUTCOMES`).
        latencies_ms: Round trips of the answered frames (good and late).
        elapsed_s: Time from the first frame due to the last request finished.
        server: Change in the service's counters over the point (``goodput``,
            ``late_answers``, ``refusals``); empty when its metrics could not be read.
        errors: Reasons of the ``error`` outcomes.
        requests: Requests the robots sent over several endpoints (hedges included); 0 with
            one endpoint.
        hedged: Of them, the hedges.
    """

    spec: LoadSpec
    counts: Counter[str] = field(default_factory=Counter)
    latencies_ms: list[float] = field(default_factory=list)
    elapsed_s: float = 0.0
    server: dict[str, float] = field(default_factory=dict)
    errors: Counter[str] = field(default_factory=Counter)
    requests: int = 0
    hedged: int = 0

    @property
    def offered_fps(self) -> float:
        """Frames due per second, over the fleet."""
        return self.spec.robots * self.spec.fps

    @property
    def goodput_fps(self) -> float:
        """Answers within the deadline per second."""
        return self.counts['good'] / self.spec.seconds

    def percentile_ms(self, q: float) -> float:
        """Latency percentile ``q`` (0-100) of the answered frames; NaN with none."""
        return float(np.percentile(self.latencies_ms, q)) if self.latencies_ms else float('nan')

    def row(self) -> dict[str, Any]:
        """Return the figures of the point, for a table or JSON."""
        frames = max(1, sum(self.counts.values()))
        return {'robots': self.spec.robots, 'offered_fps': round(self.offered_fps, 2),
                'goodput_fps': round(self.goodput_fps, 2),
                'p50_ms': round(self.percentile_ms(50), 1),
                'p99_ms': round(self.percentile_ms(99), 1),
                'refused_pct': round(100 * self.counts['refused'] / frames, 1),
                'backoff_pct': round(100 * self.counts['backoff'] / frames, 1),
                'timeout_pct': round(100 * self.counts['timeout'] / frames, 1),
                'breaker_pct': round(100 * self.counts['breaker'] / frames, 1),
                'late': self.counts['late'], 'busy': self.counts['busy'],
                'errors': self.counts['error'],
                'server_late': self.server.get('late_answers', float('nan'))}


def classify(status: str, reason: str, total_ms: float, deadline_ms: float) -> str:
    """Sort one frame's cloud report into an outcome of :data:`OUTCOMES`."""
    if status == 'ok':
        return 'good' if total_ms <= deadline_ms else 'late'
    if reason.startswith('overloaded'):
        return 'refused'
    if reason == 'backoff':
        return 'backoff'
    if reason.startswith('timeout'):
        return 'timeout'
    if reason == 'circuit_open':
        return 'breaker'
    return 'error'


class _Robot:
    """One robot: its bridge, its frame, and the requests it has under way."""

    def __init__(self, index: int, url: str, model: str, token: str, spec: LoadSpec,
                 rng: random.Random, params: Mapping[str, Any], types: Any) -> None:
        config = CloudConfig.from_params({'url': url, 'model': model, 'token': token,
                                          'robot_id': f'robot-{index}', 'max_retries': 0,
                                          **params})
        self.transport = config.make_transport()
        self.bridge = CloudBridge(self.transport, max_retries=0, model=config.model,
                                  rng=random.Random(rng.random()))
        height, width = spec.frame_size
        image = np.random.default_rng(index).integers(0, 255, (height, width, 3), np.uint8)
        self._types = types
        self._image = image
        self.phase_s = rng.random() / spec.fps
        self.busy = 0
        self.lock = threading.Lock()

    def message(self, seq: int) -> Any:
        """Return the robot's camera frame stamped ``seq``."""
        return frame_to_message(self._types, self._image, seq + 1, 'camera', 'bgr8')


def run_point(url: str, spec: LoadSpec, model: str = 'rcnn', token: str = '',
              metrics_url: str = '', bridge_params: Mapping[str, Any] | None = None,
              clock: Callable[[], float] = time.monotonic,
              sleep: Callable[[float], None] = time.sleep) -> LoadResult:
    """Run one load point against the service at ``url``; bounded by ``spec.seconds``.

    Args:
        url: The service (any URL the bridge takes).
        spec: Robots, rate, deadline and duration.
        model: Model name on the service.
        token: Bearer token every robot sends.
        metrics_url: The service's ``/metrics``; empty: its counters are not read.
        bridge_params: More cloud_bridge parameters of every robot (``hedge_share``...).
        clock: Monotonic seconds.
        sleep: Waits between frames.

    Returns:
        The counts and latencies of every frame due.
    """
    rng = random.Random(spec.seed)
    types = message_types(make_typestore('jazzy'))  # one for the fleet: it takes a while
    robots = [_Robot(i, url, model, token, spec, rng, bridge_params or {}, types)
              for i in range(spec.robots)]
    decision = Decision(route=Route.CLOUD, deadline_ms=spec.deadline_ms, offload_every=1)
    result = LoadResult(spec)
    lock = threading.Lock()
    before = read_counters(metrics_url)

    def send(robot: _Robot, seq: int) -> None:
        try:
            _, report = robot.bridge.process(robot.message(seq), decision)
            reason = report.reason
            outcome = classify(report.status, reason, report.total_ms, spec.deadline_ms)
        except Exception as err:  # a load test counts what fails; it does not stop
            outcome, report, reason = 'error', None, type(err).__name__
        finally:
            with robot.lock:
                robot.busy -= 1
        with lock:
            result.counts[outcome] += 1
            if outcome == 'error':
                result.errors[reason.split(':')[0]] += 1
            if outcome in ('good', 'late') and report is not None:
                result.latencies_ms.append(report.total_ms)

    schedule = sorted((robot.phase_s + k / spec.fps, i)
                      for i, robot in enumerate(robots)
                      for k in range(int(spec.seconds * spec.fps)))
    workers = max(1, spec.robots * spec.max_in_flight)
    start = clock()
    with ThreadPoolExecutor(workers, thread_name_prefix='robot') as pool:
        for seq, (due, index) in enumerate(schedule):
            wait = start + due - clock()
            if wait > 0:
                sleep(wait)
            robot = robots[index]
            with robot.lock:
                full = robot.busy >= spec.max_in_flight
                if not full:
                    robot.busy += 1
            if full:
                with lock:
                    result.counts['busy'] += 1
                continue
            pool.submit(send, robot, seq)
    result.elapsed_s = clock() - start
    for robot in robots:
        if isinstance(robot.transport, HedgedEndpoints):
            result.requests += sum(e.requests for e in robot.transport.endpoints)
            result.hedged += robot.transport.hedged
        robot.transport.close()
    after = read_counters(metrics_url)
    if before and after:
        result.server = {k: after.get(k, 0.0) - before.get(k, 0.0) for k in after}
    return result


_COUNTERS = {'goodput': 'adaptive_offload_goodput_total',
             'late_answers': 'adaptive_offload_late_answers_total',
             'refusals': 'adaptive_offload_refusals_total'}


def read_counters(metrics_url: str, timeout_s: float = 5.0) -> dict[str, float]:
    """Read the service's goodput, late answer and refusal counters (summed over labels).

    Returns:
        Counter name -> value; empty without a URL or when it cannot be read.
    """
    if not metrics_url:
        return {}
    try:
        with urllib.request.urlopen(metrics_url, timeout=timeout_s) as response:
            text = response.read().decode()
    except OSError:
        return {}
    values: dict[str, float] = {}
    for key, name in _COUNTERS.items():
        found = re.findall(rf'^{name}(?:{{[^}}]*}})? (\S+)$', text, re.M)
        values[key] = sum(float(v) for v in found)
    return values


def format_table(results: list[LoadResult]) -> str:
    """Return the results as an aligned text table, one row per point."""
    rows = [r.row() for r in results]
    if not rows:
        return ''
    keys = list(rows[0])
    widths = {k: max(len(k), *(len(str(r[k])) for r in rows)) for k in keys}
    lines = ['  '.join(k.rjust(widths[k]) for k in keys)]
    lines += ['  '.join(str(r[k]).rjust(widths[k]) for k in keys) for r in rows]
    return '\n'.join(lines)
