"""Autoscalers of the simulated service: what decides how many replicas run.

Every ``sync_s`` the fleet simulation scrapes the service (:class:`ServiceSample`) and asks
its scaler how many replicas it wants. Scalers, by name (:data:`SCALERS`):

* ``static``: never changes the count (what a fixed Deployment does).
* ``reactive``: the Kubernetes HPA of ``deploy/kubernetes/hpa.yaml`` on its four per-pod
  metrics, each over the adapter's one-minute window: the offered utilisation (requests that
  reached admission over what the ready pods compute at their best batch size, target 70 %),
  the busy share (the share of time the pods compute, target 70 %), the queue wait and the
  refusals a second. It follows whichever asks for most, with the HPA's
  rules: a 10 % tolerance, pods not ready counted as idle when scaling up, at most twice the
  replicas per 30 s, and a 300 s stabilisation window before scaling down.
* ``predictive``: forecasts the fleet's request rate one pod start ahead (AR(2) on the
  scraped rates; ``predictive-lstm``: a small LSTM, the study's option) and the replica
  failures of that time (a Poisson rate from the failures seen,
  with a prior of one per replica-day), and asks for enough replicas ahead of time; never fewer
  than ``reactive`` asks for, so a wrong forecast costs money, not deadlines.
* ``learned``: tabular Q-learning of the replica count (the learned-allocation baseline),
  trained online on the run itself: state is load per ready replica, refusals and pods
  starting; reward is minus the refused share and minus the replicas added (the state does
  not hold the count, so a reward on the count itself is mostly noise to it).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
import math
import random
from typing import Callable, Protocol

from adaptive_offload.errors import ConfigError
from offload_runtime.rate_forecasts import FORECASTERS
from offload_runtime.service_model import ServiceSample
from offload_runtime.service_settings import ServiceSettings


@dataclass(frozen=True)
class HpaSettings:
    """The HPA's configuration (defaults: ``deploy/kubernetes/hpa.yaml``).

    Attributes:
        sync_s: How often the controller acts (``--horizontal-pod-autoscaler-sync-period``).
        target_wait_s: Per-pod target of the mean queue wait.
        target_refusals_per_s: Per-pod target of load refusals a second.
        target_offered_utilisation: Per-pod target of the offered utilisation: requests a
            second that reached admission over the images a second the pod computes
            (``adaptive_offload_offered_utilisation``, ``averageValue: 700m``). 0.7 is the
            predictive scaler's ``utilisation``: what it showed a replica should be offered.
        target_busy_share: Per-pod target of the share of time the pod computes
            (``adaptive_offload_busy_share``, ``averageValue: 700m``). Pods whose batches do
            not fill compute far less than their best batch size allows: the offered
            utilisation then reads low while they are busy.
        tolerance: Ratios within ``1 +- tolerance`` of the target change nothing.
        metric_window_s: Window the metrics are averaged over (the adapter's ``rate[1m]``).
        scale_up_factor: Most the replicas may grow by in ``scale_up_period_s``.
        scale_up_period_s: Period of that limit.
        scale_down_window_s: Scale-down stabilisation window.
        utilisation: Share of a replica's capacity the predictive scaler plans to use.
    """

    sync_s: float = 15.0
    target_wait_s: float = 0.05
    target_refusals_per_s: float = 0.5
    target_offered_utilisation: float = 0.7
    target_busy_share: float = 0.7
    tolerance: float = 0.1
    metric_window_s: float = 60.0
    scale_up_factor: float = 2.0
    scale_up_period_s: float = 30.0
    scale_down_window_s: float = 300.0
    utilisation: float = 0.7

    def __post_init__(self) -> None:
        if self.sync_s <= 0 or self.target_wait_s <= 0 or self.target_refusals_per_s <= 0:
            raise ConfigError('sync_s, target_wait_s and target_refusals_per_s must be > 0')
        if not 0 < self.utilisation <= 1 or self.scale_up_factor < 1:
            raise ConfigError('need 0 < utilisation <= 1 and scale_up_factor >= 1')
        if not 0 < self.target_offered_utilisation <= 1 or not 0 < self.target_busy_share <= 1:
            raise ConfigError('need 0 < target_offered_utilisation <= 1 and '
                              '0 < target_busy_share <= 1')


class Scaler(Protocol):
    """Decides the replica count from each scrape of the service."""

    def desired(self, sample: ServiceSample) -> int:
        """Return the replicas wanted now."""


class StaticScaler:
    """Keeps whatever runs."""

    def __init__(self, hpa: HpaSettings, service: ServiceSettings, rng: random.Random) -> None:
        del hpa, service, rng

    def desired(self, sample: ServiceSample) -> int:
        """Return the current count."""
        return sample.spec


class ReactiveHpa:
    """The Kubernetes HPA's algorithm on the offered utilisation, queue wait and refusals."""

    def __init__(self, hpa: HpaSettings, service: ServiceSettings, rng: random.Random) -> None:
        del rng
        self.hpa, self.service = hpa, service
        self._samples: deque[ServiceSample] = deque()
        self._recommendations: deque[tuple[float, int]] = deque()
        self._sizes: deque[tuple[float, int]] = deque()

    def desired(self, sample: ServiceSample) -> int:
        """Return the HPA's count for this scrape."""
        h = self.hpa
        self._samples.append(sample)
        while self._samples[0].t_s <= sample.t_s - h.metric_window_s:
            self._samples.popleft()
        seconds = sum(s.seconds for s in self._samples)
        wait = sum(s.mean_wait_s * s.seconds for s in self._samples) / seconds
        refusals = sum(s.refusals_per_s * s.seconds for s in self._samples) / seconds
        offered = sum(s.offered_per_s * s.seconds for s in self._samples) / seconds
        busy = sum(s.utilisation * s.seconds for s in self._samples) / seconds
        spec, ready = sample.spec, max(1, sample.ready)
        proposals = []
        # With several metrics the HPA follows whichever asks for the most replicas.
        metrics = [(wait, h.target_wait_s), (refusals / ready, h.target_refusals_per_s),
                   (busy, h.target_busy_share)]
        if sample.ready_capacity_per_s > 0:  # no pod ready reports a capacity: no metric
            metrics.append((offered / sample.ready_capacity_per_s,
                            h.target_offered_utilisation))
        for usage, target in metrics:
            ratio = usage / target
            if ratio > 1 and sample.ready < spec:
                ratio *= sample.ready / spec  # pods not ready count as idle when scaling up
            proposals.append(spec if abs(ratio - 1) <= h.tolerance else math.ceil(spec * ratio))
        wanted = max(proposals)
        return self._limit(sample.t_s, spec, wanted)

    def _limit(self, t_s: float, spec: int, wanted: int) -> int:
        """Apply the scale-up rate limit and the scale-down stabilisation window."""
        h = self.hpa
        self._sizes.append((t_s, spec))
        while self._sizes[0][0] < t_s - h.scale_up_period_s:
            self._sizes.popleft()
        ceiling = max(spec + 1, math.floor(min(s for _, s in self._sizes) * h.scale_up_factor))
        wanted = min(wanted, ceiling)
        self._recommendations.append((t_s, wanted))
        while self._recommendations[0][0] < t_s - h.scale_down_window_s:
            self._recommendations.popleft()
        if wanted < spec:
            wanted = min(spec, max(r for _, r in self._recommendations))
        return max(self.service.min_replicas, min(self.service.max_replicas, wanted))


class PredictiveScaler:
    """Scales ahead of the forecast request rate and replica failures, never below the HPA."""

    PRIOR_FAILURES_PER_S = 1.0 / 86_400.0
    """Prior failure rate of one replica: once a day."""

    def __init__(self, hpa: HpaSettings, service: ServiceSettings, rng: random.Random,
                 forecaster: str = 'ar') -> None:
        self.hpa, self.service = hpa, service
        self._reactive = ReactiveHpa(hpa, service, rng)
        self._rates = FORECASTERS[forecaster]()
        self._steps = max(1, math.ceil((service.scale_up_delay_s + service.pod_start_s)
                                       / hpa.sync_s))
        self._failures = 0
        self._replica_s = 0.0
        self._last: ServiceSample | None = None

    def desired(self, sample: ServiceSample) -> int:
        """Return the count the forecast needs, or the HPA's if more."""
        reactive = self._reactive.desired(sample)
        last, self._last = self._last, sample
        if last is not None:
            self._replica_s += sample.ready * sample.seconds
            if sample.spec >= last.spec and sample.ready < last.ready:
                self._failures += last.ready - sample.ready
        self._rates.add(sample.arrivals_per_s)
        forecast = max(self._rates.forecast(self._steps) or 0.0, sample.arrivals_per_s)
        need = math.ceil(forecast / (sample.capacity_per_s * self.hpa.utilisation))
        rate = (self._failures + 1.0) / (self._replica_s + 1.0 / self.PRIOR_FAILURES_PER_S)
        mean = rate * max(1, need) * (self.service.pod_start_s + self.service.scale_up_delay_s)
        wanted = max(reactive, need + spare_for(mean))
        return max(self.service.min_replicas, min(self.service.max_replicas, wanted))


def spare_for(mean_failures: float, risk: float = 0.01) -> int:
    """Return the fewest spares k with P(more than k failures) < ``risk`` (Poisson)."""
    k, term = 0, math.exp(-mean_failures)
    cumulative = term
    while 1.0 - cumulative >= risk and k < 100:
        k += 1
        term *= mean_failures / k
        cumulative += term
    return k


class LearnedScaler:
    """Tabular Q-learning of the replica count, online (epsilon-greedy, seeded)."""

    ACTIONS = (-1, 0, 1, 2)

    def __init__(self, hpa: HpaSettings, service: ServiceSettings, rng: random.Random,
                 alpha: float = 0.2, gamma: float = 0.9, epsilon: float = 0.1,
                 replica_cost: float = 1.0) -> None:
        self.hpa, self.service, self._rng = hpa, service, rng
        self._alpha, self._gamma, self._epsilon = alpha, gamma, epsilon
        self._cost = replica_cost
        self._q: dict[tuple[tuple[int, int, int], int], float] = {}
        self._last: tuple[tuple[int, int, int], int] | None = None
        self._last_spec = service.replicas

    @staticmethod
    def state(sample: ServiceSample) -> tuple[int, int, int]:
        """Load per ready replica (fifths of capacity, up to 2x), refusing, pods starting."""
        load = sample.arrivals_per_s / (sample.capacity_per_s * max(1, sample.ready))
        return (min(10, int(load * 5)), int(sample.refusals_per_s > 0),
                int(sample.ready < sample.spec))

    def desired(self, sample: ServiceSample) -> int:
        """Learn from the last action's outcome, then act."""
        state = self.state(sample)
        refused = sample.refusals_per_s / max(sample.arrivals_per_s, 1e-9)
        reward = -100.0 * refused - self._cost * (sample.spec - self._last_spec)
        self._last_spec = sample.spec
        best = max(self._q.get((state, a), 0.0) for a in self.ACTIONS)
        if self._last is not None:
            old = self._q.get(self._last, 0.0)
            self._q[self._last] = old + self._alpha * (reward + self._gamma * best - old)
        if self._rng.random() < self._epsilon:
            action = self._rng.choice(self.ACTIONS)
        else:
            action = max(self.ACTIONS, key=lambda a: (self._q.get((state, a), 0.0), -abs(a)))
        self._last = (state, action)
        return max(self.service.min_replicas,
                   min(self.service.max_replicas, sample.spec + action))


ScalerFactory = Callable[[HpaSettings, ServiceSettings, random.Random], Scaler]

SCALERS: dict[str, ScalerFactory] = {
    'static': StaticScaler,
    'reactive': ReactiveHpa,
    'predictive': PredictiveScaler,
    'predictive-lstm': lambda hpa, service, rng: PredictiveScaler(hpa, service, rng, 'lstm'),
    'learned': LearnedScaler,
}
"""Scaler name -> factory."""


def make_scaler(name: str, hpa: HpaSettings, service: ServiceSettings,
                rng: random.Random) -> Scaler:
    """Build a registered scaler.

    Raises:
        ConfigError: For an unknown name.
    """
    try:
        factory = SCALERS[name]
    except KeyError:
        raise ConfigError(f'unknown scaler {name!r} (known: {", ".join(SCALERS)})') from None
    return factory(hpa, service, rng)
