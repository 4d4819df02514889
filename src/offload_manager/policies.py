"""Routing policies (:mod:`offload_manager.policy`), chosen by name from a registry."""

from __future__ import annotations

from dataclasses import replace
from typing import Callable

from adaptive_offload.datatypes import DetectionSet, FrameRecord, InferenceReport, Route
from adaptive_offload.errors import ConfigError
from offload_manager.policy import AccuracyView, Plan, Policy, PolicySettings


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

    def observe_report(self, report: InferenceReport, now_ns: int | None = None) -> None:
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
