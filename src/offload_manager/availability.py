"""Cloud availability: P(the cloud answers within the deadline) over the next horizon.

Predicted from the recent history of request outcomes and health events, as the MDP+SVR study
predicts availability from failure history: features of the past (failure share over three
windows, time since the last failure, the current failure run, whether the health monitor
reports the cloud in ERROR) map to the share of requests that succeed in the next ``horizon``,
learned online by support vector regression (scikit-learn ``SVR``) and refitted as outcomes
come in. Until enough labelled samples exist, the prediction is the smoothed success share of
the last ten requests.
"""

from __future__ import annotations

import bisect
from collections import deque

from adaptive_offload.errors import ConfigError
import numpy as np

WINDOWS_S = (5.0, 30.0, 120.0)


class AvailabilityPredictor:
    """Online SVR over failure-history features.

    ``REFRESH_S``: how often the SVR is asked (its answer is cached in between).

    Args:
        horizon_s: How far ahead availability is predicted.
        min_samples: Labelled samples needed before the SVR is used.
        refit_every: Refit after this many new labelled samples.
        max_samples: Labelled samples kept for fitting (oldest dropped).
        history_s: Outcomes older than this are forgotten.

    Raises:
        ConfigError: For non-positive settings.
    """

    REFRESH_S = 0.5

    def __init__(self, horizon_s: float = 5.0, min_samples: int = 30, refit_every: int = 20,
                 max_samples: int = 400, history_s: float = 600.0) -> None:
        if min(horizon_s, min_samples, refit_every, max_samples, history_s) <= 0:
            raise ConfigError('availability settings must be > 0')
        self._horizon = horizon_s
        self._min = min_samples
        self._refit_every = refit_every
        self._history_s = history_s
        self._times: list[float] = []
        self._oks: list[bool] = []
        self._health_error = False
        self._unlabelled: deque[tuple[float, np.ndarray]] = deque()
        self._x: deque[np.ndarray] = deque(maxlen=max_samples)
        self._y: deque[float] = deque(maxlen=max_samples)
        self._new = 0
        self._model: RbfSurface | float | None = None
        self._fits = 0
        self._cached: tuple[tuple[int, int, bool], float] | None = None
        # Imported here, at start-up: scikit-learn takes seconds to import, and the first fit
        # comes mid-run, where that would freeze the manager (measured: 2.3 s on a 2-core CPU).
        from sklearn.svm import SVR

        self._svr = SVR

    def observe(self, t_s: float, ok: bool) -> None:
        """Record one request outcome at ``t_s`` (seconds, monotonic)."""
        self._label_until(t_s)
        self._unlabelled.append((t_s, self.features(t_s)))
        self._times.append(t_s)
        self._oks.append(ok)
        cut = bisect.bisect_left(self._times, t_s - max(self._history_s, WINDOWS_S[-1]))
        if cut:
            del self._times[:cut], self._oks[:cut]

    def health(self, error: bool) -> None:
        """Return the health monitor's view of the cloud: in ERROR or not."""
        self._health_error = error

    def features(self, t_s: float) -> np.ndarray:
        """Return the feature vector at ``t_s``."""
        feats = []
        for window in WINDOWS_S:
            start = bisect.bisect_left(self._times, t_s - window)
            oks = self._oks[start:]
            feats.append(1.0 - (sum(oks) + 1) / (len(oks) + 2))  # smoothed failure share
        last_fail = next((t for t, ok in zip(reversed(self._times), reversed(self._oks))
                          if not ok), None)
        since = min(t_s - last_fail, WINDOWS_S[-1]) if last_fail is not None else WINDOWS_S[-1]
        run = 0
        for ok in reversed(self._oks):
            if ok:
                break
            run += 1
        feats += [since / WINDOWS_S[-1], min(run, 10) / 10, float(self._health_error)]
        return np.asarray(feats)

    def _label_until(self, t_s: float) -> None:
        """Label the samples whose horizon has passed with the success share in it."""
        while self._unlabelled and self._unlabelled[0][0] + self._horizon <= t_s:
            t0, x = self._unlabelled.popleft()
            lo = bisect.bisect_right(self._times, t0)
            hi = bisect.bisect_right(self._times, t0 + self._horizon)
            oks = self._oks[lo:hi]
            if not oks:
                continue
            self._x.append(x)
            self._y.append(sum(oks) / len(oks))
            self._new += 1
        if len(self._y) >= self._min and (self._model is None or
                                          self._new >= self._refit_every):
            self._fit()

    def _fit(self) -> None:
        y = np.asarray(self._y)
        if np.ptp(y) == 0:
            self._model = float(y[0])  # nothing to learn: a constant
        else:
            x = np.vstack(self._x)
            gamma = _scale_gamma(x)
            fitted = self._svr(kernel='rbf', C=1.0, epsilon=0.05, gamma=gamma).fit(x, y)
            self._model = RbfSurface(fitted.support_vectors_, fitted.dual_coef_[0],
                                     float(fitted.intercept_[0]), gamma)
        self._new = 0
        self._fits += 1

    def predict(self, t_s: float) -> float:
        """P(a request in the next horizon succeeds within its deadline), in [0, 1]."""
        self._label_until(t_s)
        recent = self._recent_share()
        if self._model is None:
            return recent
        # The SVR answers for the next horizon: asking it twice a second is enough, and keeps
        # a decision cheap. A failure now is taken at once from the recent share instead.
        key = (self._fits, int(t_s / self.REFRESH_S), self._health_error)
        if self._cached is None or self._cached[0] != key:
            if isinstance(self._model, float):
                value = self._model
            else:
                value = self._model(self.features(t_s))
            self._cached = (key, value)
        value = self._cached[1]
        if self._health_error or (self._oks and not self._oks[-1]):
            value = min(value, recent)
        return float(np.clip(value, 0.0, 1.0))

    def _recent_share(self, last: int = 10) -> float:
        """Smoothed success share of the last requests: quick to see an outage begin."""
        oks = self._oks[-last:]
        return (sum(oks) + 1) / (len(oks) + 2)

    def recent_failures(self, last: int = 10) -> int:
        """Return how many of the last ``last`` requests failed."""
        return sum(1 for ok in self._oks[-last:] if not ok)

    @property
    def fitted(self) -> bool:
        """Whether predictions come from a fitted model."""
        return self._model is not None


def _scale_gamma(x: np.ndarray) -> float:
    """Return the RBF width of scikit-learn's ``gamma='scale'``: 1 / (features x variance)."""
    variance = float(x.var())
    return 1.0 / (x.shape[1] * variance) if variance > 0 else 1.0


class RbfSurface:
    """A fitted RBF support vector regression, evaluated on one point with numpy alone.

    scikit-learn's ``predict`` validates its input on every call, which costs about 0.6 ms
    for one point, several times the sum itself: a plan asks twice a second on every robot.

    Args:
        support: Support vectors, one per row.
        coef: Their dual coefficients.
        intercept: The regression's constant.
        gamma: The kernel's width.
    """

    def __init__(self, support: np.ndarray, coef: np.ndarray, intercept: float,
                 gamma: float) -> None:
        self._support = np.asarray(support, dtype=float)
        self._coef = np.asarray(coef, dtype=float)
        self._intercept = intercept
        self._gamma = gamma

    def __call__(self, x: np.ndarray) -> float:
        """Return the regression's value at the feature vector ``x``."""
        distance = ((self._support - x) ** 2).sum(axis=1)
        return float(self._coef @ np.exp(-self._gamma * distance) + self._intercept)
