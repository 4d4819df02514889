"""What ``evaluate`` writes of its runs: the table's rows, ``table.md``/``table.csv`` and plots.

The table has one row per scenario and policy; each scenario has three plots: the latency
CDF per policy, the route each policy chose over time with the faults shaded, and the robot's
energy per frame.
"""

from __future__ import annotations

import csv
import dataclasses
from dataclasses import dataclass
import math
from pathlib import Path

from fault_injection.scenario import Scenario
import numpy as np


@dataclass(frozen=True)
class Row:
    """One scenario x policy line of the table.

    ``accuracy`` is the mAP the priors give the models that served the frames;
    ``measured_map`` the mAP@[.5:.95] (0-100) of the results against the bag's ground truth
    (live mode; NaN in the simulator, which has no images).
    """

    scenario: str
    policy: str
    mode: str
    frames: int
    energy_j: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    miss_pct: float
    accuracy: float
    cloud_requests: int
    mb_sent: float
    gpu_s: float
    cost_per_1000: float
    measured_map: float = math.nan


@dataclass
class Trace:
    """What the plots need of one run."""

    latencies: list[float]
    energy: list[float]
    routes: list[tuple[float, str]]


def slug(text: str) -> str:
    """Return ``text`` as a short file-name part: letters and digits, the rest ``_``."""
    return ''.join(c if c.isalnum() else '_' for c in text).strip('_')[:40]


def write_table(out: Path, rows: list[Row]) -> None:
    """``table.csv`` and ``table.md``."""
    names = [f.name for f in dataclasses.fields(Row)]
    with (out / 'table.csv').open('w', newline='', encoding='utf-8') as fh:
        writer = csv.writer(fh)
        writer.writerow(names)
        writer.writerows([getattr(r, n) for n in names] for r in rows)
    head = ('| scenario | policy | energy J/frame | P50 ms | P95 ms | P99 ms | miss % | mAP proxy '
            '| mAP measured | cloud req | MB sent | GPU s | USD/1k frames |')
    lines = [head, '|' + '---|' * 13]
    lines += [f'| {r.scenario} | {r.policy} | {r.energy_j:.3f} | {r.p50_ms:.0f} | '
              f'{r.p95_ms:.0f} | {r.p99_ms:.0f} | {r.miss_pct:.1f} | {r.accuracy:.1f} | '
              f'{"-" if math.isnan(r.measured_map) else f"{r.measured_map:.1f}"} | '
              f'{r.cloud_requests} | {r.mb_sent:.1f} | {r.gpu_s:.1f} | {r.cost_per_1000:.4f} |'
              for r in rows]
    (out / 'table.md').write_text('\n'.join(lines) + '\n', encoding='utf-8')


def plot(out: Path, scenario: Scenario, traces: dict[str, Trace]) -> None:
    """Latency CDF, route timeline with faults, and energy per frame of one scenario."""
    import matplotlib

    matplotlib.use('Agg')
    from matplotlib import pyplot as plt

    name = slug(scenario.name)
    fig, ax = plt.subplots(figsize=(7, 4))
    for policy, trace in traces.items():
        lat = np.sort(trace.latencies)
        if len(lat):
            ax.plot(lat, np.arange(1, len(lat) + 1) / len(lat), label=policy)
    ax.set(xlabel='latency (ms)', ylabel='fraction of frames', title=scenario.name)
    ax.legend(fontsize=7)
    fig.savefig(out / f'latency_cdf_{name}.png', dpi=100)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(7, 4))
    levels = {'edge': 0, 'hedged': 1, 'cloud': 2, 'split': 3}
    for i, (policy, trace) in enumerate(traces.items()):
        if trace.routes:
            t, r = zip(*trace.routes)
            ax.step(t, [levels.get(x, 0) + 0.04 * i for x in r], where='post', label=policy)
    for fault in scenario.faults:
        ax.axvspan(fault.start_s, fault.end_s, color='red', alpha=0.15)
    ax.set(yticks=list(levels.values()), yticklabels=list(levels), xlabel='time (s)',
           title=f'{scenario.name}: routes (faults shaded)')
    if any(trace.routes for trace in traces.values()):
        ax.legend(fontsize=7)
    fig.savefig(out / f'routes_{name}.png', dpi=100)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(7, 4))
    names = list(traces)
    ax.bar(names, [float(np.mean(traces[p].energy)) if traces[p].energy else 0 for p in names])
    ax.set(ylabel='robot energy per frame (J)', title=scenario.name)
    ax.tick_params(axis='x', rotation=45, labelsize=7)
    fig.tight_layout()
    fig.savefig(out / f'energy_{name}.png', dpi=100)
    plt.close(fig)
