"""More detectors: cloud readiness probes, bandwidth collapse, latency anomaly models.

- :class:`ReadinessCheck` judges the results of active probes of the service's
  ``/v2/health/ready`` (a :class:`ReadinessProber` thread runs them, so no ROS callback waits
  on the network): WARN after one failed probe, ERROR after ``fail_after``, STALE when no probe
  result came for three periods.
- :class:`BandwidthCheck` compares the recent uplink rate with its long-run baseline: WARN when
  it collapsed below ``collapse_ratio`` of it, ERROR below ``floor_mbps``.
- Latency anomaly detectors behind one protocol and a registry (:data:`ANOMALY_DETECTORS`):
  ``robust`` (median and MAD z-score) and ``isolation_forest`` (scikit-learn).
"""

from __future__ import annotations

import threading
import time
from typing import Callable, Protocol, Sequence
import urllib.error
import urllib.request

from adaptive_offload import topics
from adaptive_offload.datatypes import InferenceReport, Level
from adaptive_offload.health_records import HealthStatus
from adaptive_offload.uplink import UplinkEstimator
import numpy as np


class ReadinessCheck:
    """The cloud's readiness as active probes see it.

    Args:
        url: Probed endpoint (for the status).
        period_s: Probe period.
        fail_after: Consecutive failed probes that make it ERROR.
    """

    name = topics.CHECK_CLOUD_READINESS

    def __init__(self, url: str, period_s: float = 1.0, fail_after: int = 3) -> None:
        self._url = url
        self._period_ns = int(period_s * 1e9)
        self._fail_after = fail_after
        self._lock = threading.Lock()
        self._failures = 0
        self._last_ns: int | None = None
        self._last_error = ''

    def record(self, ready: bool, now_ns: int, error: str = '') -> None:
        """Record one probe result."""
        with self._lock:
            self._failures = 0 if ready else self._failures + 1
            self._last_ns = now_ns
            self._last_error = error

    def run(self, now_ns: int) -> HealthStatus:
        """See :class:`health_monitor.checks.HealthCheck`."""
        with self._lock:
            failures, last, error = self._failures, self._last_ns, self._last_error
        values = (('url', self._url), ('consecutive_failures', str(failures)))
        if last is None or now_ns - last > 3 * self._period_ns:
            return HealthStatus(self.name, Level.STALE, 'no probe result', self._url, values)
        if failures >= self._fail_after:
            level, message = Level.ERROR, f'not ready: {failures} probes failed ({error})'
        elif failures:
            level, message = Level.WARN, f'probe failed ({error})'
        else:
            level, message = Level.OK, 'ready'
        return HealthStatus(self.name, level, message, self._url, values)


def http_ready_probe(url: str, timeout_s: float = 0.5) -> Callable[[], tuple[bool, str]]:
    """Probe ``{url}/v2/health/ready``; return (ready, error text)."""
    def probe() -> tuple[bool, str]:
        try:
            with urllib.request.urlopen(f'{url.rstrip("/")}/v2/health/ready',
                                        timeout=timeout_s) as reply:
                return reply.status == 200, ''
        except urllib.error.HTTPError as err:
            return False, f'HTTP {err.code}'
        except (urllib.error.URLError, OSError) as err:
            return False, str(getattr(err, 'reason', err))
    return probe


class ReadinessProber:
    """Runs a probe every period on its own thread and records into a :class:`ReadinessCheck`.

    Args:
        check: Where results go.
        probe: Returns (ready, error text); must have its own timeout.
        period_s: Probe period.
        clock: Nanosecond clock of the check (ROS time on a robot).
    """

    def __init__(self, check: ReadinessCheck, probe: Callable[[], tuple[bool, str]],
                 period_s: float, clock: Callable[[], int] = time.monotonic_ns) -> None:
        self._check, self._probe, self._period, self._clock = check, probe, period_s, clock
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name='readiness-probe', daemon=True)

    def start(self) -> None:
        """Start probing."""
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            ready, error = self._probe()
            self._check.record(ready, self._clock(), error)
            self._stop.wait(self._period)

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop probing (waits for a probe under way, bounded by its timeout)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout_s)


class BandwidthCheck:
    """Uplink bandwidth collapse, from the rates of the bridge's successful requests.

    Args:
        baseline: Requests in the long-run baseline.
        recent: Requests in the recent estimate.
        collapse_ratio: WARN when recent < this x baseline.
        floor_mbps: ERROR when recent < this.
        hardware_id: What the check is about.
    """

    name = topics.CHECK_UPLINK_BANDWIDTH

    def __init__(self, baseline: int = 100, recent: int = 5, collapse_ratio: float = 0.3,
                 floor_mbps: float = 1.0, hardware_id: str = '') -> None:
        self._base = UplinkEstimator(baseline)
        self._recent = UplinkEstimator(recent)
        self._ratio, self._floor, self._hw = collapse_ratio, floor_mbps, hardware_id

    def report(self, report: InferenceReport) -> None:
        """Take one cloud report; only successful requests with a measurable transfer count."""
        if self._recent.add_report(report):
            self._base.add_report(report)

    def next_change_ns(self, now_ns: int) -> int | None:
        """Return None: only reports change the level, never time alone."""
        return None

    def run(self, now_ns: int) -> HealthStatus:
        """See :class:`health_monitor.checks.HealthCheck`."""
        base, recent = self._base.mbps, self._recent.mbps
        if not self._recent.full or base is None or recent is None:
            return HealthStatus(self.name, Level.OK, 'not enough requests yet', self._hw, ())
        values = (('baseline_mbps', f'{base:.1f}'), ('recent_mbps', f'{recent:.1f}'))
        if recent < self._floor:
            level, message = Level.ERROR, f'uplink {recent:.2f} Mbit/s below {self._floor}'
        elif recent < self._ratio * base:
            level, message = Level.WARN, f'uplink collapsed to {recent / base:.0%} of baseline'
        else:
            level, message = Level.OK, f'uplink {recent:.1f} Mbit/s'
        return HealthStatus(self.name, level, message, self._hw, values)


class AnomalyDetector(Protocol):
    """Judges whether a latency is anomalous against the recent window."""

    def is_anomaly(self, value: float, window: Sequence[float]) -> bool:
        """Whether ``value`` is anomalous given ``window`` (at least 10 values)."""


class RobustZ:
    """Median and MAD z-score above ``k`` (robust to the outliers it is looking for)."""

    def __init__(self, k: float = 4.0) -> None:
        self._k = k

    def is_anomaly(self, value: float, window: Sequence[float]) -> bool:
        """See :class:`AnomalyDetector`."""
        median = float(np.median(window))
        mad = float(np.median(np.abs(np.asarray(window) - median))) or 1e-3
        return (value - median) / (1.4826 * mad) > self._k


class IsolationForestDetector:
    """scikit-learn IsolationForest over the window plus the candidate value.

    The candidate is part of the fit: a forest fitted on the window alone scores a value far
    outside its range like the window's own extreme, which is no anomaly. Fitting per call
    costs milliseconds; the cloud check asks only about round trips already above its ratio
    gate, so that is rare.

    Args:
        contamination: Expected share of anomalies.
        seed: Random state of the forest.
    """

    def __init__(self, contamination: float = 0.02, seed: int = 0) -> None:
        self._contamination, self._seed = contamination, seed

    def is_anomaly(self, value: float, window: Sequence[float]) -> bool:
        """See :class:`AnomalyDetector`."""
        from sklearn.ensemble import IsolationForest

        data = np.asarray([*window, value], dtype=float).reshape(-1, 1)
        forest = IsolationForest(n_estimators=100, contamination=self._contamination,
                                 random_state=self._seed).fit(data)
        return bool(forest.predict([[value]])[0] == -1) and value > float(np.median(window))


ANOMALY_DETECTORS: dict[str, Callable[[], AnomalyDetector]] = {
    'robust': RobustZ,
    'isolation_forest': IsolationForestDetector,
}
