"""Routing policies, chosen by name from a registry."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Callable, Mapping, NamedTuple, Protocol

from adaptive_offload.datatypes import DetectionSet, FrameRecord, InferenceReport, Route
from adaptive_offload.errors import ConfigError


@dataclass(frozen=True)
class Plan:
    """What a policy wants applied; the manager stamps it into a :class:`Decision`."""

    route: Route
    edge_model: str
    edge_imgsz: int
    jpeg_quality: int
    cloud_max_side: int
    offload_every: int
    hedge_delay_ms: float
    reason: str
    probe_every: int = 0
    unmet: str = ''
    split: str = ''


class AccuracyView(NamedTuple):
    """A policy's current estimate of the edge model's accuracy.

    Attributes:
        m_ap: Estimated mAP@[.5:.95], 0-100: the prior corrected by edge/cloud agreement.
        samples: Agreement samples taken so far (every edge model together).
    """

    m_ap: float
    samples: int


@dataclass(frozen=True)
class PolicySettings:
    """The manager parameters policies read.

    Attributes:
        deadline_ms: Per-frame deadline.
        static_route: Route of the ``static`` policy.
        defaults: The plan the parameters describe (route, models, quality, sampling).
        energy: Energy model of the robot (``offload_manager.energy.EnergyModel``); the
            adaptive policies need one.
        edge_profile_ms: The robot's inference times by ``model@imgsz`` (device profile).
        gpu_price_per_hour: Cloud price, USD per GPU-hour.
        server_power_w: Cloud GPU power (the weighted score's total energy).
        cloud_model: Cloud model name (accuracy prior).
        edge_options: ``model@imgsz`` the edge may be asked to run.
        qualities: JPEG qualities to choose from.
        epsilon: Largest acceptable P(latency > deadline).
        accuracy_floor: Lowest acceptable expected mAP (0-100); 0: none.
        energy_budget_j: Largest acceptable robot energy per frame (J); 0: none.
        spend_cap_usd_h: Largest acceptable cloud spend (USD/hour); 0: none.
        weight_energy: Weight of robot energy (relative to the edge option's).
        weight_accuracy: Weight of accuracy loss (relative to the best option's).
        weight_cost: Weight of cloud cost (relative to the dearest option's).
        hysteresis: Relative score gain needed to leave a feasible current option.
        probe_every: On the edge (cloud) route, every n-th frame also goes to the cloud
            (edge) as a probe whose answer is not waited for; 0: never probe.
        score_period_s: Re-evaluation period of the weighted score.
        score_weights: w1, w2, w3 of the weighted score.
        failover_after: Consecutive cloud failures before the reactive policy fails over.
        failback_s: Time on the edge before the reactive policy tries the cloud again.
        seed: Seed of learning policies' exploration.
        splits: Split options the policies may choose, by name
            (``offload_manager.split_figures.SplitFigures``); empty: none.
    """

    deadline_ms: float
    static_route: Route
    defaults: Plan
    energy: Any = None
    edge_profile_ms: dict[str, float] = field(default_factory=dict)
    gpu_price_per_hour: float = 0.0
    server_power_w: float = 0.0
    cloud_model: str = 'fasterrcnn_resnet50_fpn_v2'
    edge_options: tuple[str, ...] = ()
    qualities: tuple[int, ...] = (50, 75, 95)
    epsilon: float = 0.01
    accuracy_floor: float = 0.0
    energy_budget_j: float = 0.0
    spend_cap_usd_h: float = 0.0
    weight_energy: float = 1.0
    weight_accuracy: float = 1.0
    weight_cost: float = 0.2
    hysteresis: float = 0.05
    probe_every: int = 10
    score_period_s: float = 2.0
    score_weights: tuple[float, float, float] = (0.4, 0.2, 0.4)
    failover_after: int = 3
    failback_s: float = 10.0
    seed: int = 0
    splits: Mapping[str, Any] = field(default_factory=dict)


class Policy(Protocol):
    """Chooses a plan from what it has observed."""

    def plan(self, now_ns: int) -> Plan:
        """Return the plan to apply from ``now_ns``."""

    def observe_report(self, report: InferenceReport) -> None:
        """Learn from a worker's report of one frame."""

    def observe_record(self, record: FrameRecord) -> None:
        """Learn from the outcome of one frame."""

    def observe_detections(self, dets: DetectionSet) -> None:
        """Learn from a source's detections (edge/cloud agreement)."""

    def observe_health(self, cloud_error: bool) -> None:
        """Learn from the health monitor's view of the cloud."""

    def observe_history(self, outcomes: list[tuple[float, bool]]) -> None:
        """Learn from past cloud request outcomes ((seconds, ok), before now)."""

    def retune(self, settings: PolicySettings) -> None:
        """Take new settings (parameters set at runtime), keeping what was learned."""

    def edge_accuracy(self, model: str, imgsz: int) -> AccuracyView | None:
        """Return the estimated accuracy of ``model`` at ``imgsz``; None if none is kept."""


class FixedRoutePolicy:
    """Always the same route and settings: the edge-only, cloud-only and static baselines.

    It observes nothing, which is what makes it a baseline.

    Args:
        settings: Manager parameters.
        route: The route to keep.
        name: Policy name, given as the reason.
    """

    def __init__(self, settings: PolicySettings, route: Route, name: str) -> None:
        self._route = route
        self._name = name
        self.retune(settings)

    def retune(self, settings: PolicySettings) -> None:
        """Take new settings; ``static`` follows a new ``static_route``."""
        route = settings.static_route if self._name == 'static' else self._route
        self._plan = replace(settings.defaults, route=route,
                             reason=f'{self._name}: fixed route {route.value}')

    def plan(self, now_ns: int) -> Plan:
        """Return the fixed plan."""
        return self._plan

    def observe_report(self, report: InferenceReport) -> None:
        """Ignored by a fixed policy."""

    def observe_record(self, record: FrameRecord) -> None:
        """Ignored by a fixed policy."""

    def observe_detections(self, dets: DetectionSet) -> None:
        """Ignored by a fixed policy."""

    def observe_health(self, cloud_error: bool) -> None:
        """Ignored by a fixed policy."""

    def observe_history(self, outcomes: list[tuple[float, bool]]) -> None:
        """Ignored by a fixed policy."""

    def edge_accuracy(self, model: str, imgsz: int) -> AccuracyView | None:
        """Return None: a fixed policy estimates nothing."""
        return None


def _adaptive(kind: str) -> Callable[[PolicySettings], Policy]:
    def build(settings: PolicySettings) -> Policy:
        from offload_manager import learning, predictive, split_policies
        from offload_manager.observations import Observations

        if settings.energy is None:
            raise ConfigError(f'policy {kind!r} needs an energy model (a device profile)')
        classes: dict[str, Callable[[PolicySettings, Observations], Policy]] = {
            'predictive': predictive.PredictivePolicy,
            'weighted-score': predictive.WeightedScorePolicy,
            'reactive': predictive.ReactivePolicy,
            'mdp-svr': learning.MdpSvrPolicy,
            'q-learning': learning.QLearningPolicy,
            'static-split': split_policies.StaticSplitPolicy,
            'split-score': split_policies.SplitScorePolicy}
        obs = Observations(settings.energy, settings.cloud_model, settings.gpu_price_per_hour,
                           settings.edge_profile_ms)
        if settings.splits:
            from offload_manager.split_observations import SplitObservations

            obs = SplitObservations(settings.energy, settings.splits,
                                    cloud_model=settings.cloud_model,
                                    gpu_price_per_hour=settings.gpu_price_per_hour,
                                    edge_profile_ms=settings.edge_profile_ms)
        return classes[kind](settings, obs)
    return build


POLICIES: dict[str, Callable[[PolicySettings], Policy]] = {
    'edge-only': lambda s: FixedRoutePolicy(s, Route.EDGE, 'edge-only'),
    'cloud-only': lambda s: FixedRoutePolicy(s, Route.CLOUD, 'cloud-only'),
    'static': lambda s: FixedRoutePolicy(s, s.static_route, 'static'),
    **{name: _adaptive(name) for name in ('predictive', 'weighted-score', 'reactive', 'mdp-svr',
                                          'q-learning', 'static-split', 'split-score')},
}


def create_policy(name: str, settings: PolicySettings) -> Policy:
    """Build a registered policy.

    Raises:
        ConfigError: If no policy has that name.
    """
    if name not in POLICIES:
        raise ConfigError(f'unknown policy {name!r} (known: {", ".join(sorted(POLICIES))})')
    return POLICIES[name](settings)
