"""Energy-against-accuracy fronts: predictive swept over accuracy floors, baselines as points.

A fixed policy is one point of energy, accuracy and misses; predictive with a goal is a family
of points, one per accuracy floor. The matched table asks, for each baseline: which floor
reaches its accuracy, and does it do so with no more energy and no more misses? Accuracy is
the mAP measured against ground truth where the run had it (live), else the prior's.
"""

from __future__ import annotations

from dataclasses import dataclass
import math
from pathlib import Path
from typing import Protocol, Sequence

SWEPT = 'predictive floor '
"""Prefix of a swept run's policy label (``predictive floor 35``)."""
ACCURACY_SLACK = 0.5
"""mAP points a swept setting may fall short of a baseline and still match it."""
MISS_SLACK = 0.1
"""Miss-rate points a swept setting may exceed a baseline by and still be no worse."""


class RowLike(Protocol):
    """What the fronts read of an evaluation row (read-only: rows are frozen)."""

    @property
    def scenario(self) -> str:
        """Scenario name."""

    @property
    def policy(self) -> str:
        """Policy label."""

    @property
    def energy_j(self) -> float:
        """Robot energy per frame."""

    @property
    def accuracy(self) -> float:
        """The mAP the priors give."""

    @property
    def measured_map(self) -> float:
        """The mAP against ground truth; NaN without it."""

    @property
    def miss_pct(self) -> float:
        """Deadline misses, percent."""

    @property
    def p99_ms(self) -> float:
        """P99 latency."""


def swept_label(floor: float) -> str:
    """Return the policy label of predictive run with accuracy floor ``floor``."""
    return f'{SWEPT}{floor:g}'


def accuracy_of(row: RowLike) -> float:
    """Return the row's measured mAP where it has one, else its prior-based estimate."""
    return row.accuracy if math.isnan(row.measured_map) else row.measured_map


@dataclass(frozen=True)
class Match:
    """A baseline and the cheapest swept setting that reaches its accuracy.

    Attributes:
        scenario: Scenario name.
        baseline: The baseline row.
        setting: The swept row, None when no floor reached the baseline's accuracy.
    """

    scenario: str
    baseline: RowLike
    setting: RowLike | None

    @property
    def no_worse(self) -> bool:
        """Whether the setting uses no more energy and misses no more (within the slack)."""
        s, b = self.setting, self.baseline
        return s is not None and s.energy_j <= b.energy_j and \
            s.miss_pct <= b.miss_pct + MISS_SLACK


def match(rows: Sequence[RowLike]) -> list[Match]:
    """Pair every baseline with the least-energy swept setting of its scenario at its accuracy.

    Among settings with at least the baseline's accuracy (less :data:`ACCURACY_SLACK`), the one
    with the least energy; ties go to fewer misses.
    """
    out = []
    for base in (r for r in rows if not r.policy.startswith(SWEPT)):
        swept = [r for r in rows if r.scenario == base.scenario and r.policy.startswith(SWEPT)
                 and accuracy_of(r) >= accuracy_of(base) - ACCURACY_SLACK]
        best = min(swept, key=lambda r: (r.energy_j, r.miss_pct), default=None)
        out.append(Match(base.scenario, base, best))
    return out


def write_matched(out: Path, matches: Sequence[Match]) -> None:
    """Write ``matched.md``: each baseline beside the setting that matches its accuracy."""
    lines = ['| scenario | baseline | mAP | J/frame | miss % | P99 ms | predictive setting | mAP '
             '| J/frame | miss % | P99 ms | no worse |', '|' + '---|' * 12]
    for m in matches:
        b = m.baseline
        left = (f'| {m.scenario} | {b.policy} | {accuracy_of(b):.1f} | {b.energy_j:.3f} | '
                f'{b.miss_pct:.1f} | {b.p99_ms:.0f} |')
        s = m.setting
        if s is None:
            lines.append(left + ' none reaches it | - | - | - | - | no |')
        else:
            lines.append(left + f' {s.policy.removeprefix("predictive ")} | {accuracy_of(s):.1f} '
                         f'| {s.energy_j:.3f} | {s.miss_pct:.1f} | {s.p99_ms:.0f} | '
                         f'{"yes" if m.no_worse else "no"} |')
    (out / 'matched.md').write_text('\n'.join(lines) + '\n', encoding='utf-8')


def plot_front(out: Path, scenario: str, slug: str, rows: Sequence[RowLike]) -> None:
    """Draw ``front_<slug>.png``: the swept settings as a line, each baseline as a point."""
    import matplotlib

    matplotlib.use('Agg')
    from matplotlib import pyplot as plt

    mine = [r for r in rows if r.scenario == scenario]
    swept = sorted((r for r in mine if r.policy.startswith(SWEPT)), key=lambda r: r.energy_j)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    if swept:
        ax.plot([r.energy_j for r in swept], [accuracy_of(r) for r in swept], 'o-',
                color='tab:blue', label='predictive, swept accuracy floor')
        for r in swept:
            ax.annotate(r.policy.removeprefix(SWEPT), (r.energy_j, accuracy_of(r)),
                        fontsize=6, xytext=(3, -8), textcoords='offset points')
    for r in mine:
        if not r.policy.startswith(SWEPT):
            ax.plot(r.energy_j, accuracy_of(r), 's', label=f'{r.policy} ({r.miss_pct:.1f} % miss)')
    ax.set(xlabel='robot energy per frame (J)', ylabel='mAP@[.5:.95]',
           title=f'{scenario}: energy against accuracy')
    ax.legend(fontsize=6)
    fig.savefig(out / f'front_{slug}.png', dpi=100)
    plt.close(fig)
