"""What a fleet simulation measures: frame outcomes of every robot, replicas over time, recovery.

Frames are counted as they end, not kept (a fleet hour is millions of records). Recovery after
each failure is read from the per-second counts:

* **MTTR**: from the failure's start until the fleet's deadline-miss share, over 10 s windows,
  is back under ``max(1 %, twice the share in the minute before)`` and stays there for 30 s.
  0 when the failure never raised it.
* **Capacity recovery**: from the failure's start until as many replicas are ready as just
  before it. 0 when none was lost.
"""

from __future__ import annotations

from array import array
import csv
from dataclasses import asdict, dataclass, fields
import math
from pathlib import Path
from typing import Sequence

from adaptive_offload.datatypes import FrameRecord
import numpy as np

WINDOW_S = 10
STAY_S = 30
BEFORE_S = 60


class FleetCounts:
    """Frame outcomes of the whole fleet, per second of camera time."""

    def __init__(self) -> None:
        self.frames = 0
        self.misses = 0
        self.drops = 0
        self.late = 0  # ended after the deadline without being marked dropped: must stay 0
        self.cloud = 0
        self.energy_j = 0.0
        self.latencies = array('d')
        self.per_second: dict[int, list[int]] = {}

    def add(self, record: FrameRecord) -> None:
        """Count one ended frame."""
        self.frames += 1
        second = self.per_second.setdefault(record.stamp_ns // 1_000_000_000, [0, 0])
        second[0] += 1
        if not record.deadline_met:
            self.misses += 1
            second[1] += 1
        if record.latency_ms is None:
            self.drops += 1
        else:
            self.latencies.append(record.latency_ms)
            if record.latency_ms > record.deadline_ms:
                self.late += 1
        if record.result_source == 'cloud':
            self.cloud += 1
        self.energy_j += record.energy_j or 0.0

    def miss_share(self, start_s: int, end_s: int) -> float | None:
        """Share of the frames of ``[start_s, end_s)`` that missed; None without frames."""
        frames = misses = 0
        for s in range(start_s, end_s):
            n, m = self.per_second.get(s, (0, 0))
            frames += n
            misses += m
        return misses / frames if frames else None


def mttr_s(counts: FleetCounts, start_s: float, end_s: float) -> float:
    """Seconds from ``start_s`` until the fleet's misses are back to normal (NaN: never)."""
    s0 = int(start_s)
    before = counts.miss_share(max(0, s0 - BEFORE_S), s0) or 0.0
    limit = max(0.01, 2.0 * before)

    def ok(s: int) -> bool:
        share = counts.miss_share(s, s + WINDOW_S)
        return share is None or share <= limit

    last = int(end_s) - WINDOW_S
    for s in range(s0, last + 1):
        if all(ok(x) for x in range(s, min(last, s + STAY_S) + 1)):
            return float(s - s0)
    return math.nan


def capacity_recovery_s(ready: Sequence[tuple[float, int]], start_s: float) -> float:
    """Seconds from ``start_s`` until as many replicas are ready as just before (NaN: never).

    Args:
        ready: (time, replicas ready) samples in time order.
        start_s: When the failure began.
    """
    before = [n for t, n in ready if t < start_s]
    if not before:
        return 0.0
    target = before[-1]
    after = [(t, n) for t, n in ready if t >= start_s]
    if all(n >= target for _, n in after):
        return 0.0
    dropped = False
    for t, n in after:
        dropped = dropped or n < target
        if dropped and n >= target:
            return t - start_s
    return math.nan


@dataclass(frozen=True)
class FleetRow:
    """One scenario x policy x scaler line of the fleet table."""

    scenario: str
    policy: str
    scaler: str
    robots: int
    frames: int
    miss_pct: float
    late_frames: int
    p50_ms: float
    p99_ms: float
    energy_j: float
    cloud_pct: float
    refusals: int
    late_answers: int
    gpu_s: float
    cost: float
    utilisation: float
    mean_replicas: float
    mttr_s: float
    capacity_s: float
    sim_s: float
    wall_s: float

    @property
    def speed(self) -> float:
        """Simulated seconds per wall-clock second."""
        return self.sim_s / self.wall_s if self.wall_s > 0 else math.inf


def percentiles(values: array) -> tuple[float, float]:
    """Return P50 and P99 of ``values`` (NaN when empty)."""
    if not len(values):
        return math.nan, math.nan
    p50, p99 = np.percentile(np.frombuffer(values, dtype=np.float64), [50, 99])
    return float(p50), float(p99)


def write_fleet_table(out: Path, rows: Sequence[FleetRow]) -> None:
    """Write ``fleet.csv`` and ``fleet.md``, the resilience table of every run."""
    names = [f.name for f in fields(FleetRow)]
    with (out / 'fleet.csv').open('w', newline='', encoding='utf-8') as fh:
        writer = csv.DictWriter(fh, fieldnames=names)
        writer.writeheader()
        for row in rows:
            writer.writerow(asdict(row))
    lines = ['| scenario | policy | scaler | robots | miss % | late | P99 ms | J/frame | cloud % '
             '| refusals | GPU-s | cost $ | util % | replicas | MTTR s | capacity back s '
             '| x real time |',
             '|' + '---|' * 17]
    for r in rows:
        lines.append(
            f'| {r.scenario} | {r.policy} | {r.scaler} | {r.robots} | {r.miss_pct:.2f} '
            f'| {r.late_frames} | {r.p99_ms:.0f} | {r.energy_j:.3f} | {r.cloud_pct:.1f} '
            f'| {r.refusals} | {r.gpu_s:.0f} | {r.cost:.2f} | {100 * r.utilisation:.0f} '
            f'| {r.mean_replicas:.1f} | {_s(r.mttr_s)} | {_s(r.capacity_s)} | {r.speed:.0f} |')
    (out / 'fleet.md').write_text('\n'.join(lines) + '\n', encoding='utf-8')


def _s(value: float) -> str:
    return 'never' if math.isnan(value) else f'{value:.0f}'
