"""Health checks in the manner of diagnostic_updater's DiagnosticTask: each reports a status."""

from __future__ import annotations

from collections import deque
import math
from typing import Protocol

from adaptive_offload import topics
from adaptive_offload.datatypes import Decision, InferenceReport, Level
from adaptive_offload.health_records import HealthStatus
from health_monitor.link_checks import AnomalyDetector, RobustZ
import numpy as np


class HealthCheck(Protocol):
    """A named check that reports its state at a given time."""

    name: str

    def run(self, now_ns: int) -> HealthStatus:
        """Return the check's state at ``now_ns``."""


class TopicRateCheck:
    """Heartbeat and rate of one topic.

    STALE when nothing arrived for ``stale_after_s`` (or ever, once that long has passed since
    the check started); WARN when the rate over the window is below ``min_rate_hz`` times
    ``1 - tolerance``; OK otherwise. A topic slow by design gets ``min_rate_hz`` 0: only its
    heartbeat is watched, so it never warns for being slow.

    Args:
        topic: Topic name.
        min_rate_hz: Lowest acceptable rate; 0 disables the rate test.
        stale_after_s: Silence after which the topic is STALE; 0 disables the heartbeat test.
        start_ns: When the check started (grace period for the first message and the window).
        window_s: Window of the rate estimate.
        tolerance: Fraction below ``min_rate_hz`` still accepted.
        hardware_id: What the topic comes from.
    """

    def __init__(self, topic: str, min_rate_hz: float, stale_after_s: float, start_ns: int,
                 window_s: float = 5.0, tolerance: float = 0.1, hardware_id: str = '') -> None:
        self.topic = topic
        self.name = topics.topic_rate_check(topic)
        self._min_rate = min_rate_hz
        self._stale_ns = int(stale_after_s * 1e9)
        self._window_ns = int(window_s * 1e9)
        self._tolerance = tolerance
        self._start_ns = start_ns
        self._hardware_id = hardware_id
        self._stamps: deque[int] = deque()
        self._count = 0
        # Kept apart from the window's stamps: once the window has emptied, silence still
        # counts from the last message, not from the start.
        self._last_ns: int | None = None

    def tick(self, now_ns: int) -> None:
        """Record one message arrival."""
        self._stamps.append(now_ns)
        self._count += 1
        self._last_ns = now_ns

    def run(self, now_ns: int) -> HealthStatus:
        """Return the check's state at ``now_ns``."""
        while self._stamps and self._stamps[0] < now_ns - self._window_ns:
            self._stamps.popleft()
        span_ns = min(self._window_ns, now_ns - self._start_ns)
        rate = len(self._stamps) / (span_ns / 1e9) if span_ns > 0 else 0.0
        silent_ns = now_ns - (self._last_ns if self._last_ns is not None else self._start_ns)
        values = (('rate_hz', f'{rate:.2f}'), ('min_rate_hz', f'{self._min_rate:.2f}'),
                  ('messages', str(self._count)),
                  ('silent_s', f'{silent_ns / 1e9:.2f}'))
        if self._stale_ns and silent_ns > self._stale_ns:
            level, message = Level.STALE, f'no message for {silent_ns / 1e9:.1f} s'
        elif self._min_rate and span_ns >= self._window_ns and \
                rate < self._min_rate * (1.0 - self._tolerance):
            level, message = Level.WARN, f'rate {rate:.2f} Hz below {self._min_rate:.2f} Hz'
        else:
            level, message = Level.OK, f'{rate:.2f} Hz'
        return HealthStatus(self.name, level, message, self._hardware_id, values)

    def next_change_ns(self, now_ns: int) -> int | None:
        """Return when :meth:`run` may next give another level with no new message, if ever.

        Call it after :meth:`run` at ``now_ns``. Silence makes the topic STALE once; the rate
        can fall below the minimum only once the window is full and only as stamps leave it,
        so the first stamp whose leaving takes the rate below the minimum is the next change.
        """
        due = []
        silent_from = self._last_ns if self._last_ns is not None else self._start_ns
        if self._stale_ns:
            due.append(silent_from + self._stale_ns + 1)
        if self._min_rate:
            due.append(self._start_ns + self._window_ns)
            window_s = self._window_ns / 1e9
            floor = self._min_rate * (1.0 - self._tolerance)
            left = len(self._stamps)
            if left and left / window_s >= floor:
                # The k-th oldest stamp leaves the window at its time + window + 1 ns.
                gone = min(left, max(1, math.floor(left - floor * window_s)))
                while gone < left and (left - gone) / window_s >= floor:
                    gone += 1
                due.append(self._stamps[gone - 1] + self._window_ns + 1)
        return min((t for t in due if t > now_ns), default=None)


class CloudCheck:
    """The cloud's health, from the bridge's per-frame reports.

    ERROR while the bridge's circuit breaker is open or after ``fail_after`` consecutive failed
    requests; WARN when the latest round trip is a latency anomaly: above the window's median
    by more than ``k`` scaled median absolute deviations (a robust z-score) and by at least
    ``ratio`` times the median, so that jitter on a steady link is no anomaly; OK otherwise,
    including while the cloud is simply not used.

    Args:
        fail_after: Consecutive failures that make the cloud ERROR.
        window: Round trips the anomaly test looks at.
        k: Robust z-score above which a round trip may be anomalous.
        ratio: Least multiple of the median round trip that is anomalous.
        hardware_id: What the check is about (the service URL).
        detector: Anomaly model (``health_monitor.link_checks``); robust z-score by default.
    """

    name = topics.CHECK_CLOUD

    def __init__(self, fail_after: int = 3, window: int = 50, k: float = 4.0,
                 ratio: float = 1.5, hardware_id: str = '',
                 detector: AnomalyDetector | None = None) -> None:
        self._fail_after = fail_after
        self._rtts: deque[float] = deque(maxlen=window)
        self._detector = detector or RobustZ(k)
        self._ratio = ratio
        self._hardware_id = hardware_id
        self._failures = 0
        self._breaker = ''
        self._last_reason = ''
        self._anomaly = False
        self._requests = 0

    def report(self, report: InferenceReport) -> None:
        """Feed in one cloud report; skipped and dropped frames made no request."""
        if report.source != 'cloud' or report.status not in ('ok', 'failed'):
            return
        self._requests += 1
        self._breaker = report.breaker
        if report.status == 'failed':
            self._failures += 1
            self._last_reason = report.reason
            return
        self._failures = 0
        rtt = report.inference_ms
        if len(self._rtts) >= 10:
            self._anomaly = rtt >= self._ratio * float(np.median(self._rtts)) and \
                self._detector.is_anomaly(rtt, self._rtts)
        self._rtts.append(rtt)

    def next_change_ns(self, now_ns: int) -> int | None:
        """Return None: only reports change the level, never time alone."""
        return None

    def run(self, now_ns: int) -> HealthStatus:
        """Return the check's state (the time is not needed: it judges the latest requests)."""
        values = (('requests', str(self._requests)),
                  ('consecutive_failures', str(self._failures)),
                  ('breaker', self._breaker or '-'),
                  ('rtt_p50_ms', f'{np.median(self._rtts):.1f}' if self._rtts else '-'))
        if self._breaker == 'open' or self._failures >= self._fail_after:
            level = Level.ERROR
            message = f'cloud failing: {self._failures} in a row ({self._last_reason})'
        elif self._anomaly:
            level, message = Level.WARN, 'cloud round trip anomalous'
        else:
            level = Level.OK
            message = 'cloud answering' if self._requests else 'cloud not used'
        return HealthStatus(self.name, level, message, self._hardware_id, values)


class GoalsCheck:
    """Whether the manager's decisions meet every bound the user set (diagnostic ``goals``).

    WARN names the bounds that gave way (the accuracy floor, energy budget, cloud spend cap or
    deadline no option could meet) and why the policy chose what it did; OK when none did.

    Args:
        hardware_id: What the decisions come from.
    """

    name = topics.CHECK_GOALS

    def __init__(self, hardware_id: str = '') -> None:
        self._hardware_id = hardware_id
        self._decision: Decision | None = None

    def decision(self, decision: Decision) -> None:
        """Take the manager's newest decision."""
        self._decision = decision

    def next_change_ns(self, now_ns: int) -> int | None:
        """Return None: only decisions change the level, never time alone."""
        return None

    def run(self, now_ns: int) -> HealthStatus:
        """Return the check's state: the newest decision's unmet bounds."""
        d = self._decision
        if d is None:
            return HealthStatus(self.name, Level.OK, 'no decision yet', self._hardware_id, ())
        values = (('policy', d.policy), ('route', d.route.value), ('reason', d.reason))
        if d.unmet:
            return HealthStatus(self.name, Level.WARN, f'bounds given way: {d.unmet}',
                                self._hardware_id, values)
        return HealthStatus(self.name, Level.OK, 'every bound met', self._hardware_id, values)
