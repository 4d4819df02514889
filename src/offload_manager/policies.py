"""Routing policies, chosen by name from a registry."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable, Protocol

from adaptive_offload.errors import ConfigError
from adaptive_offload.types import FrameRecord, InferenceReport, Route


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


@dataclass(frozen=True)
class PolicySettings:
    """The manager parameters policies read.

    Attributes:
        deadline_ms: Per-frame deadline.
        static_route: Route of the ``static`` policy.
        defaults: The plan the parameters describe (route, models, quality, sampling).
    """

    deadline_ms: float
    static_route: Route
    defaults: Plan


class Policy(Protocol):
    """Chooses a plan from what it has observed."""

    def plan(self, now_ns: int) -> Plan:
        """The plan to apply from ``now_ns``."""

    def observe_report(self, report: InferenceReport) -> None:
        """Learn from a worker's report of one frame."""

    def observe_record(self, record: FrameRecord) -> None:
        """Learn from the outcome of one frame."""


class FixedRoutePolicy:
    """Always the same route and settings: the edge-only, cloud-only and static baselines.

    It observes nothing, which is what makes it a baseline.

    Args:
        settings: Manager parameters.
        route: The route to keep.
        name: Policy name, given as the reason.
    """

    def __init__(self, settings: PolicySettings, route: Route, name: str) -> None:
        self._plan = replace(settings.defaults, route=route,
                             reason=f'{name}: fixed route {route.value}')

    def plan(self, now_ns: int) -> Plan:
        """The fixed plan."""
        return self._plan

    def observe_report(self, report: InferenceReport) -> None:
        """Ignored by a fixed policy."""

    def observe_record(self, record: FrameRecord) -> None:
        """Ignored by a fixed policy."""


POLICIES: dict[str, Callable[[PolicySettings], Policy]] = {
    'edge-only': lambda s: FixedRoutePolicy(s, Route.EDGE, 'edge-only'),
    'cloud-only': lambda s: FixedRoutePolicy(s, Route.CLOUD, 'cloud-only'),
    'static': lambda s: FixedRoutePolicy(s, s.static_route, 'static'),
}


def create_policy(name: str, settings: PolicySettings) -> Policy:
    """Build a registered policy.

    Raises:
        ConfigError: If no policy has that name.
    """
    if name not in POLICIES:
        raise ConfigError(f'unknown policy {name!r} (known: {", ".join(sorted(POLICIES))})')
    return POLICIES[name](settings)
