"""What a routing policy is: the plan it gives, its settings and the protocol it keeps.

Kept apart from the registry (:mod:`offload_manager.policies`), which imports the policies,
so that the policies can import these without a cycle.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, NamedTuple, Protocol

from adaptive_offload.datatypes import DetectionSet, FrameRecord, InferenceReport, Route


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
    split_probe: str = ''


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

    def observe_report(self, report: InferenceReport, now_ns: int | None = None) -> None:
        """Learn from a worker's report of one frame, taken at ``now_ns`` (None: unknown)."""

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
