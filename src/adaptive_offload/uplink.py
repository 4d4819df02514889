"""Uplink bandwidth from the cloud requests, estimated one way for every role.

The bridge, the manager and the health monitor share this estimator and its threshold.

Each request gives one rate, its body's bytes over its transfer time (round trip less the time
the server says it spent). The estimate is the median of the last ``window`` rates, so that a
few slow transfers do not swing it but a lasting drop moves it within half a window.

Two options serve the manager, which must follow a link that changes and predict how long a
payload of another size takes:

- Change points (``change_run``): when the newest ``change_run`` rates all lie beyond
  ``change_factor`` times the median of the older ones, and beyond three robust spreads of it,
  in the same direction, the older rates describe a link that is gone: they are dropped and
  the median follows at once. :attr:`UplinkEstimator.changed` says so, and in which direction.
- The fixed part of a request (``fit_window``): the non-server time of a request is not all
  transfer. Propagation and per-request overhead (the round trip of an empty request, the
  *base*) come on top: on a 50 Mbit/s link with a 30 ms round trip a 14 kB JPEG's non-server
  time is 32 ms, of which 2 ms is transfer, and bytes over all of it reads 3.4 Mbit/s. With
  ``fit_window`` the estimator fits ``non_server_ms = base + bytes / rate`` and rates each
  request as its bytes over ``non_server - base``. The fit needs sizes that differ: a sender
  whose requests are all alike (one JPEG quality) asks :attr:`UplinkEstimator.needs_spread`
  and sends some at another size.
"""

from __future__ import annotations

from collections import deque
import statistics

from adaptive_offload.datatypes import InferenceReport
from adaptive_offload.errors import ConfigError
import numpy as np

# Shorter transfers are not measurable: clock resolution and the server's own rounding of its
# time (microseconds) would make up most of them.
MIN_TRANSFER_MS = 0.1
MAD_SIGMA = 1.4826  # a median absolute deviation in standard deviations of a normal spread
CHANGE_SPREADS = 3.0  # robust spreads beyond the older rates' median that a change needs
# The base is fitted only over requests whose sizes differ by this ratio or more: with sizes
# alike, base and rate cannot be told apart (any base fits one size with some rate).
SIZE_SPAN = 1.5
MIN_FIT = 6  # requests a fit needs
# Requests the fit window needs on the rarer side of a SIZE_SPAN gap for the fit to be steady:
# with fewer, every far pair shares one of a few requests, and its jitter is the slope's.
SPREAD_WANTED = 6
# A request's transfer is taken as at least this share of its non-server time: where the
# transfer is within the base's jitter, ``non_server - base`` may be ~0 or negative.
MIN_TRANSFER_SHARE = 0.05


def transfer_rate_mbps(bytes_sent: int, transfer_ms: float) -> float | None:
    """Return one request's rate in Mbit/s, or None when it is not measurable."""
    if bytes_sent <= 0 or transfer_ms < MIN_TRANSFER_MS:
        return None
    return bytes_sent * 8 / (transfer_ms * 1e3)


def fit_line(sizes: np.ndarray, times: np.ndarray) -> tuple[float, float] | None:
    """Fit ``times = base + sizes * k`` by Theil-Sen: (base, k), None where sizes are alike.

    Theil-Sen (the median of the pairwise slopes, then the median intercept) because a few
    requests delayed by a retransmission or a busy radio would pull a least-squares line.

    Args:
        sizes: Request bytes.
        times: Their non-server times, ms.

    Returns:
        The base in ms (0 .. the quickest request's time) and ms per byte, or None when the
        sizes span less than :data:`SIZE_SPAN`, fewer than :data:`MIN_FIT` requests are given,
        or the slope is not positive.
    """
    if len(sizes) < MIN_FIT or sizes.min() <= 0 or sizes.max() < SIZE_SPAN * sizes.min():
        return None
    db = sizes[None, :] - sizes[:, None]
    dt = times[None, :] - times[:, None]
    # Only pairs of clearly different sizes: near-equal sizes give slopes of pure noise.
    far = db > (SIZE_SPAN - 1.0) * sizes.min()
    if not far.any():
        return None
    slope = float(np.median(dt[far] / db[far]))
    if slope <= 0:
        return None
    base = float(np.median(times - slope * sizes))
    return min(max(base, 0.0), float(times.min())), slope


class UplinkEstimator:
    """Median uplink rate of the last ``window`` measurable requests.

    Args:
        window: Requests kept.
        change_run: Newest rates that, all beyond ``change_factor`` and three robust spreads
            of the older rates' median in one direction, mark a change point (see the
            module); 0 never.
        change_factor: Ratio to the older rates' median a change needs (> 1).
        fit_window: Requests over which the fixed part of a request's time is fitted (see the
            module); 0: rates are bytes over the whole non-server time, as the bridge and the
            health monitor read them.

    Raises:
        ConfigError: For a window below 1, a change run not below the window, a factor not
            above 1 or a negative run or fit window.
    """

    def __init__(self, window: int = 15, change_run: int = 0, change_factor: float = 1.3,
                 fit_window: int = 0) -> None:
        if window < 1 or not 0 <= change_run < window or not change_factor > 1 or \
                fit_window < 0:
            raise ConfigError(f'need window >= 1, 0 <= change_run < window, change_factor > 1 '
                              f'and fit_window >= 0, got {window}, {change_run}, '
                              f'{change_factor}, {fit_window}')
        self._window = window
        self._run_needed = change_run
        self._factor = change_factor
        self._fit_window = fit_window
        self._rates: deque[float] = deque(maxlen=window)  # bytes over all non-server time
        self._rate_bytes: deque[int] = deque(maxlen=window)  # their requests' sizes
        self._requests: deque[tuple[int, float]] = deque(maxlen=max(window, fit_window))
        self._median: float | None = None
        self._base: float | None = None
        self._slope: float | None = None  # ms per byte of the newest requests' fit, if any
        self._run = 0  # newest rates beyond the older ones, all in direction _run_dir
        self._run_dir = 0
        self.run_starts = 0
        """Runs of rates beyond the older ones begun so far (tells one suspicion from the
        next)."""
        self.changed = 0
        """Direction of the change point the last measurable request made: 1 faster,
        -1 slower, 0 none."""
        self.changes = 0
        """Change points so far."""

    def add(self, bytes_sent: int, transfer_ms: float) -> bool:
        """Record one request; False when it was not measurable and was skipped.

        Args:
            bytes_sent: The request's body bytes.
            transfer_ms: Its non-server time (round trip less the server's time).

        Returns:
            Whether it was measurable (and counted).
        """
        rate = transfer_rate_mbps(bytes_sent, transfer_ms)
        if rate is None:
            return False
        self.changed = 0
        if self._run_needed:
            self._follow(rate, bytes_sent)
        self._rates.append(rate)
        self._rate_bytes.append(bytes_sent)
        self._requests.append((bytes_sent, transfer_ms))
        if self._run_needed and self._run >= self._run_needed:
            self._change_point()
        if self._fit_window:
            self._refit()
        self._median = self._estimate()
        return True

    def _beyond(self, rate: float, nbytes: int, older: list[tuple[float, int]]) -> int:
        """1 (-1) if ``rate`` is beyond the factor and the spreads above (below) ``older``.

        Only the older rates of requests of about ``nbytes`` (within :data:`SIZE_SPAN`) count:
        on one link a larger request's rate is higher, the base weighing less in its time, so
        a request of another size (one sent to spread the fit) is no sign of a change. With
        fewer of them than a change run, 0.
        """
        alike = [r for r, b in older if nbytes < b * SIZE_SPAN and b < nbytes * SIZE_SPAN]
        if len(alike) < self._run_needed:
            return 0
        median = statistics.median(alike)
        spread = CHANGE_SPREADS * MAD_SIGMA * statistics.median(abs(r - median) for r in alike)
        if rate > median * self._factor and rate > median + spread:
            return 1
        if rate < median / self._factor and rate < median - spread:
            return -1
        return 0

    def _follow(self, rate: float, nbytes: int) -> None:
        """Extend the run of rates beyond the older ones with ``rate``, or end it."""
        rates = list(zip(self._rates, self._rate_bytes))
        direction = self._beyond(rate, nbytes, rates[:len(rates) - self._run])
        if self._run and direction == self._run_dir:
            self._run += 1
            return
        if self._run:  # the run ended: its rates are older ones now
            direction = self._beyond(rate, nbytes, rates)
        self._run, self._run_dir = (1, direction) if direction else (0, 0)
        self.run_starts += 1 if direction else 0

    def _change_point(self) -> None:
        """Forget the rates older than the run: they describe a link that is gone."""
        while len(self._rates) > self._run:
            self._rates.popleft()
            self._rate_bytes.popleft()
        while len(self._requests) > self._run:
            self._requests.popleft()
        self.changed, self.changes = self._run_dir, self.changes + 1
        self._run, self._run_dir = 0, 0

    def _refit(self) -> None:
        """Refit the base where the newest requests' sizes differ enough; else keep it.

        A base once fitted is kept when sizes stop varying: it is the path's propagation and
        per-request overhead, which a change of bandwidth leaves alone. It never exceeds the
        quickest newest request's time (a path that became shorter).
        """
        recent = list(self._requests)[-self._fit_window:]
        sizes = np.array([b for b, _ in recent], dtype=float)
        times = np.array([t for _, t in recent], dtype=float)
        fitted = fit_line(sizes, times)
        self._slope = None if fitted is None else fitted[1]
        if fitted is not None:
            self._base = fitted[0]
        if self._base is not None:
            self._base = min(self._base, float(times.min()))

    def _estimate(self) -> float:
        """Return the rate: the fit's where sizes vary, else the median above the base.

        Where sizes vary the fitted slope is the rate: per-request rates of small requests,
        whose transfer is within the base's jitter, would scatter and bias a median.
        """
        if not self._fit_window or not self._base:
            return statistics.median(self._rates)
        if self._slope is not None:
            return 8 / (self._slope * 1e3)
        base = self._base
        rates = [b * 8 / (max(t - base, MIN_TRANSFER_SHARE * t) * 1e3)
                 for b, t in list(self._requests)[-self._window:]]
        return statistics.median(rates)

    def add_report(self, report: InferenceReport) -> bool:
        """Record a cloud report's request; only answered ones count (False otherwise)."""
        if report.source != 'cloud' or report.status != 'ok':
            return False
        return self.add(report.bytes_sent, report.inference_ms - report.server_ms)

    @property
    def mbps(self) -> float | None:
        """The estimate, or None before any measurable request."""
        return self._median

    @property
    def base_ms(self) -> float:
        """Fixed part of a request's non-server time; 0 until fitted (or without a fit)."""
        return self._base or 0.0

    @property
    def spread(self) -> int:
        """Requests of the fit window on the rarer side of a :data:`SIZE_SPAN` size gap.

        Those at least :data:`SIZE_SPAN` times the window's smallest and the others are
        counted apart; the fewer of the two is returned: 0 where sizes are alike or there is
        no fit window.
        """
        if not self._fit_window or not self._requests:
            return 0
        sizes = [b for b, _ in list(self._requests)[-self._fit_window:]]
        floor = SIZE_SPAN * min(sizes)
        far = sum(1 for b in sizes if b >= floor)
        return min(far, len(sizes) - far)

    @property
    def needs_spread(self) -> bool:
        """Whether the fit wants requests of another size (:attr:`spread` too small).

        True while :attr:`spread` is below :data:`SPREAD_WANTED`; never without a fit window.
        """
        return bool(self._fit_window) and self.spread < SPREAD_WANTED

    @property
    def rising(self) -> int:
        """Newest rates beyond the older ones upwards, not (yet) a change point; 0 if none."""
        return self._run if self._run_dir > 0 else 0

    @property
    def full(self) -> bool:
        """Whether the window holds as many requests as it keeps."""
        return len(self._rates) == self._rates.maxlen

    def transfer_ms(self, nbytes: int) -> float | None:
        """Predicted time to send ``nbytes`` at the estimated bandwidth (the base excluded)."""
        mbps = self.mbps
        return nbytes * 8 / (mbps * 1e3) if mbps else None
