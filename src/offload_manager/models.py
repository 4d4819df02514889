"""Latency and link models the predictive policy reasons with.

- :class:`SlidingQuantiles`: exact quantiles over the last ``window`` samples of one component
  (edge inference per model and size, JPEG encode, round trip, server time), so estimates follow
  change instead of averaging over the whole run.
- :class:`BandwidthEstimator`: uplink bandwidth from transfer times, as a median of per-request
  rates (a retransmission or a GC pause does not move it).
- :class:`ArForecaster`: a short-horizon autoregressive forecaster (AR(p) by least squares over a
  sliding window, the short-term part of the ARIMA forecasts of the resilience study), so a
  route can change ahead of a worsening trend.
- :class:`LatencyBook`: the per-component quantiles of every target, keyed by name.
"""

from __future__ import annotations

import bisect
import math
import statistics
from collections import deque

import numpy as np

from adaptive_offload.errors import ConfigError


class SlidingQuantiles:
    """Quantiles of the last ``window`` samples (sorted window: O(window) per update).

    Args:
        window: Samples kept.

    Raises:
        ConfigError: For a window below 1.
    """

    def __init__(self, window: int = 200) -> None:
        if window < 1:
            raise ConfigError(f'window must be >= 1, got {window}')
        self._order: deque[float] = deque()
        self._sorted: list[float] = []
        self._window = window
        self._sum = 0.0

    def __len__(self) -> int:
        return len(self._order)

    def add(self, value: float) -> None:
        """Add one sample (non-finite samples are ignored: they carry no latency)."""
        if not math.isfinite(value):
            return
        if len(self._order) == self._window:
            old = self._order.popleft()
            del self._sorted[bisect.bisect_left(self._sorted, old)]
            self._sum -= old
        self._order.append(value)
        bisect.insort(self._sorted, value)
        self._sum += value

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


class LatencyBook:
    """Sliding quantiles per (component, target) key, created on first use.

    Args:
        window: Samples kept per key.
    """

    def __init__(self, window: int = 200) -> None:
        self._window = window
        self._series: dict[str, SlidingQuantiles] = {}

    def add(self, key: str, value_ms: float) -> None:
        """Record one measurement of ``key``."""
        self._series.setdefault(key, SlidingQuantiles(self._window)).add(value_ms)

    def get(self, key: str) -> SlidingQuantiles | None:
        """The quantiles of ``key``, if it was ever measured."""
        return self._series.get(key)

    def quantile(self, key: str, q: float) -> float | None:
        """The ``q`` quantile of ``key``, or None if never measured."""
        series = self._series.get(key)
        return series.quantile(q) if series is not None else None


class BandwidthEstimator:
    """Uplink bandwidth in Mbit/s from (bytes, transfer time) of recent requests.

    Each request gives one rate, bytes over transfer time (round trip less server time); the
    estimate is the median of the last ``window`` rates, so a few slow transfers do not swing it
    but a lasting drop moves it within half a window.

    Args:
        window: Requests kept.
    """

    def __init__(self, window: int = 15) -> None:
        self._rates: deque[float] = deque(maxlen=window)
        self._median: float | None = None

    def add(self, bytes_sent: int, transfer_ms: float) -> None:
        """Record one request; transfers under 0.1 ms are not measurable and are skipped."""
        if bytes_sent > 0 and transfer_ms >= 0.1:
            self._rates.append(bytes_sent * 8 / (transfer_ms * 1e3))
            self._median = statistics.median(self._rates)

    @property
    def mbps(self) -> float | None:
        """The estimate, or None before any measurable request."""
        return self._median

    def transfer_ms(self, nbytes: int) -> float | None:
        """Predicted time to send ``nbytes`` at the estimated bandwidth."""
        mbps = self.mbps
        return nbytes * 8 / (mbps * 1e3) if mbps else None


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

    def forecast(self, steps: int = 1) -> float | None:
        """The value ``steps`` ahead, or None without data (refitted only after new data)."""
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
