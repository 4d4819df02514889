"""Latency and link models the predictive policy reasons with.

- :class:`SlidingQuantiles`: exact quantiles over the last ``window`` samples of one component
  (edge inference per model and size, JPEG encode, round trip, server time), no older than
  ``max_age_s``, so estimates follow change instead of averaging over the whole run.
- The uplink bandwidth is ``adaptive_offload.uplink.UplinkEstimator``, shared with the bridge
  and the health monitor.
- :class:`ArForecaster`: a short-horizon autoregressive forecaster (AR(p) by least squares over a
  sliding window, the short-term part of the ARIMA forecasts of the resilience study), so a
  route can change ahead of a worsening trend.
- :class:`LatencyBook`: the per-component quantiles of every target, keyed by name.
"""

from __future__ import annotations

import bisect
from collections import deque
import itertools
import math

from adaptive_offload.errors import ConfigError
import numpy as np


class SlidingQuantiles:
    """Quantiles of the last ``window`` samples, at most ``max_age_s`` old (sorted window).

    A sample-count window alone goes stale when a series is fed rarely (the cloud probed once
    a second while the robot runs on the edge): a spike would stay in it for minutes. With
    ``max_age_s``, :meth:`expire` drops older samples but always keeps the newest ``min_keep``,
    so an estimate never vanishes for want of fresh samples; it only stops trusting old ones.

    A regime change is forgotten faster still: when the newest ``shift_run`` samples all lie
    beyond the 5th (95th) percentile of at least as many older ones, the older ones describe
    a state that has ended (CPU contention over, a latency spike begun) and are dropped.
    Steady samples do that by chance once in about 4,400 samples with 20 older ones
    (shift_run 5) and far less often in fuller windows; right after a reset (5 older ones)
    about once in 130, which costs nothing but a smaller window of the same distribution.

    Args:
        window: Samples kept at most.
        max_age_s: Oldest sample kept (seconds of the caller's clock); None keeps any age.
        min_keep: Newest samples kept whatever their age.
        shift_run: Newest samples that, all beyond the older ones' tail, mark a regime
            change; 0 never forgets on a shift.

    Raises:
        ConfigError: For a window below 1, a max age not above 0 or a negative min_keep or
            shift_run.
    """

    def __init__(self, window: int = 200, max_age_s: float | None = None,
                 min_keep: int = 20, shift_run: int = 0) -> None:
        if window < 1:
            raise ConfigError(f'window must be >= 1, got {window}')
        if (max_age_s is not None and not max_age_s > 0) or min_keep < 0 or shift_run < 0:
            raise ConfigError(f'need max_age_s > 0, min_keep >= 0 and shift_run >= 0, got '
                              f'{max_age_s}, {min_keep}, {shift_run}')
        self._shift_run = shift_run
        self._order: deque[tuple[float, float]] = deque()  # (time, value), oldest first
        self._sorted: list[float] = []
        self._window = window
        self._max_age = max_age_s
        self._min_keep = min_keep
        self._sum = 0.0
        self._logs: tuple[float, float] | None = None  # see log_moments(), until samples change

    def __len__(self) -> int:
        return len(self._order)

    def add(self, value: float, t_s: float = 0.0) -> None:
        """Add one sample taken at ``t_s`` (non-finite samples are ignored: no latency)."""
        if not math.isfinite(value):
            return
        if len(self._order) == self._window:
            self._pop()
        self._order.append((t_s, value))
        bisect.insort(self._sorted, value)
        self._sum += value
        self._logs = None
        if self._shifted():
            while len(self._order) > self._shift_run:
                self._pop()

    def _shifted(self) -> bool:
        """Whether the newest ``shift_run`` samples all lie beyond the older ones' 5 % tail."""
        run = self._shift_run
        older = len(self._order) - run
        if not run or older < run:
            return False
        newest = [v for _, v in itertools.islice(reversed(self._order), run)]
        # Older samples at or below the run's largest, at or above its smallest: the sorted
        # window counts the run's own too. Ties never count as beyond.
        below = bisect.bisect_right(self._sorted, max(newest)) - run
        above = len(self._sorted) - bisect.bisect_left(self._sorted, min(newest)) - run
        return min(below, above) <= 0.05 * older

    def keep_newest(self, n: int) -> None:
        """Forget all but the newest ``n`` samples (the caller knows the older ones are stale)."""
        while len(self._order) > max(n, 0):
            self._pop()

    def expire(self, now_s: float) -> None:
        """Forget samples older than ``max_age_s`` at ``now_s``, keeping ``min_keep``."""
        if self._max_age is None:
            return
        while len(self._order) > self._min_keep and now_s - self._order[0][0] > self._max_age:
            self._pop()

    def _pop(self) -> None:
        _, old = self._order.popleft()
        del self._sorted[bisect.bisect_left(self._sorted, old)]
        self._sum -= old
        self._logs = None

    @property
    def newest_s(self) -> float | None:
        """When the newest sample was taken, or None without samples."""
        return self._order[-1][0] if self._order else None

    def newest(self, n: int) -> list[float]:
        """Return the newest ``n`` samples (fewer if the window holds fewer), oldest first."""
        start = max(0, len(self._order) - n)
        return [v for _, v in itertools.islice(self._order, start, None)]

    def span_s(self, n: int) -> float:
        """Return the time from the ``n``-th newest sample to the newest (0 with fewer)."""
        if n < 1 or len(self._order) < n:
            return 0.0
        return self._order[-1][0] - self._order[-n][0]

    def mean(self) -> float | None:
        """Mean of the window, or None without samples."""
        return self._sum / len(self._order) if self._order else None

    def quantile(self, q: float) -> float | None:
        """Quantile ``q`` of the window, linearly interpolated; None without samples."""
        if not self._sorted:
            return None
        pos = min(max(q, 0.0), 1.0) * (len(self._sorted) - 1)
        low = int(pos)
        high = min(low + 1, len(self._sorted) - 1)
        return self._sorted[low] + (self._sorted[high] - self._sorted[low]) * (pos - low)

    def exceedance(self, threshold: float) -> float | None:
        """Share of samples above ``threshold``: the empirical P(X > threshold)."""
        if not self._sorted:
            return None
        return 1.0 - bisect.bisect_right(self._sorted, threshold) / len(self._sorted)

    def values(self) -> list[float]:
        """Return the samples, smallest first."""
        return list(self._sorted)

    def log_moments(self) -> tuple[float, float]:
        """Return the mean and standard deviation of the samples' logs (samples floored at 1e-3).

        Kept until the samples change: a plan asks for them once per option.

        Raises:
            ValueError: Without samples.
        """
        if not self._sorted:
            raise ValueError('no samples')
        if self._logs is None:
            logs = np.log(np.maximum(self._sorted, 1e-3))
            self._logs = (float(logs.mean()), float(logs.std()))
        return self._logs


def tail_probability(series: SlidingQuantiles | None, threshold: float,
                     prior_ms: float | None = None, min_samples: int = 20,
                     sigma_floor: float = 0.5) -> float | None:
    """P(latency > ``threshold``) from a series, cautious while it has few samples.

    With ``min_samples`` or more samples this is the empirical share above the threshold.
    With fewer (or none, given a ``prior_ms`` such as a device profile's figure) the latency
    is taken as log-normal around the samples' geometric mean (else the prior), with a log
    spread of at least ``sigma_floor / sqrt(n)``, widened by ``sqrt(1 + 1/n)`` for the
    uncertain mean: a figure ten times inside the deadline is trusted at once, one near it
    only once a few samples agree.

    Returns:
        The probability, or None without samples and without a prior.
    """
    n = len(series) if series is not None else 0
    if series is not None and n >= min_samples:
        return series.exceedance(threshold)
    if threshold <= 0:
        return 1.0
    if series is not None and n:
        mu, spread = series.log_moments()
        sigma = max(spread, sigma_floor / math.sqrt(n)) * math.sqrt(1.0 + 1.0 / n)
    elif prior_ms is not None and prior_ms > 0:
        mu, sigma = math.log(prior_ms), sigma_floor
    else:
        return None
    return 0.5 * math.erfc((math.log(threshold) - mu) / (sigma * math.sqrt(2.0)))


class LatencyBook:
    """Sliding quantiles per (component, target) key, created on first use.

    Args:
        window: Samples kept per key.
        max_age_s: Oldest sample kept per key (see :class:`SlidingQuantiles`).
        shift_run: Run that marks a regime change (see :class:`SlidingQuantiles`).
    """

    def __init__(self, window: int = 200, max_age_s: float | None = None,
                 shift_run: int = 0) -> None:
        self._window = window
        self._max_age = max_age_s
        self._shift_run = shift_run
        self._series: dict[str, SlidingQuantiles] = {}

    def add(self, key: str, value_ms: float, t_s: float = 0.0) -> None:
        """Record one measurement of ``key`` taken at ``t_s``."""
        series = self._series.get(key)
        if series is None:
            series = self._series[key] = SlidingQuantiles(self._window, self._max_age,
                                                          shift_run=self._shift_run)
        series.add(value_ms, t_s)

    def expire(self, now_s: float) -> None:
        """Forget old samples of every key (see :meth:`SlidingQuantiles.expire`)."""
        for series in self._series.values():
            series.expire(now_s)

    def keep_newest(self, key: str, n: int) -> None:
        """Forget all but the newest ``n`` samples of ``key`` (nothing if never measured)."""
        series = self._series.get(key)
        if series is not None:
            series.keep_newest(n)

    def get(self, key: str) -> SlidingQuantiles | None:
        """Return the quantiles of ``key``, if it was ever measured."""
        return self._series.get(key)

    def quantile(self, key: str, q: float) -> float | None:
        """Return the ``q`` quantile of ``key``, or None if never measured."""
        series = self._series.get(key)
        return series.quantile(q) if series is not None else None


class ArForecaster:
    """AR(p) forecasts of a series from a sliding window, refitted by least squares.

    ``y[t] = c + a1*y[t-1] + ... + ap*y[t-p]`` is fitted on the last ``window`` values at
    every :meth:`forecast`; with fewer than ``3 * (p + 1)`` values, or a singular fit, the
    forecast is the last value (persistence). Forecasts are clipped to ``[0, 10 x max seen]``
    so one unstable fit cannot produce absurd predictions.

    Args:
        order: p.
        window: Values kept.

    Raises:
        ConfigError: For an order below 1 or a window too small to fit it.
    """

    def __init__(self, order: int = 2, window: int = 60) -> None:
        if order < 1 or window < 3 * (order + 1):
            raise ConfigError(f'need order >= 1 and window >= 3 * (order + 1), got {order}, '
                              f'{window}')
        self._p = order
        self._values: deque[float] = deque(maxlen=window)
        self._cache: dict[int, float] = {}

    def add(self, value: float) -> None:
        """Append one observation (non-finite values are skipped)."""
        if math.isfinite(value):
            self._values.append(float(value))
            self._cache.clear()

    def keep_newest(self, n: int) -> None:
        """Forget all but the newest ``n`` values (a level shift is a step, not a trend)."""
        while len(self._values) > max(n, 0):
            self._values.popleft()
        self._cache.clear()

    def forecast(self, steps: int = 1) -> float | None:
        """Forecast the value ``steps`` ahead; None without data (refits only on new data)."""
        if not self._values:
            return None
        if steps not in self._cache:
            self._cache[steps] = self._fit_forecast(steps)
        return self._cache[steps]

    def _fit_forecast(self, steps: int) -> float:
        y = np.asarray(self._values)
        if len(y) < 3 * (self._p + 1) or np.ptp(y) == 0:
            return float(y[-1])
        p = self._p
        lags = np.column_stack([y[p - k - 1:len(y) - k - 1] for k in range(p)])
        design = np.column_stack([np.ones(len(lags)), lags])
        coef, *_ = np.linalg.lstsq(design, y[p:], rcond=None)
        if not np.all(np.isfinite(coef)):
            return float(y[-1])
        history = list(y[-p:])
        for _ in range(max(1, steps)):
            nxt = coef[0] + sum(coef[k + 1] * history[-k - 1] for k in range(p))
            history.append(float(np.clip(nxt, 0.0, 10.0 * y.max())))
        return history[-1]
