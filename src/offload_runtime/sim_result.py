"""What one simulated run gives: its frame records and the figures kept per frame."""

from __future__ import annotations

from dataclasses import dataclass, field

from adaptive_offload.datatypes import FrameRecord


@dataclass
class SimResult:
    """Records and per-frame figures of one run."""

    records: list[FrameRecord] = field(default_factory=list)
    energy_j: dict[int, float] = field(default_factory=dict)
    accuracy: dict[int, float] = field(default_factory=dict)
    routes: list[tuple[float, str]] = field(default_factory=list)
    cloud_requests: int = 0
    bytes_sent: int = 0
    gpu_seconds: float = 0.0
    tiers: dict[int, dict[str, float]] = field(default_factory=dict)
