"""The split computing study's baselines, over the configured split options.

- ``static-split``: always the split option with the best latency in the profiles (robot head
  and encode; on three tiers the LAN and the middle device's part; the payload at
  :data:`PROFILE_UPLINK_MBPS` with :data:`PROFILE_RTT_MS`; decode and tail), whatever the link
  does: the study's comparison.
- ``split-score``: the weighted score (``weighted-score``) over the split options and the
  whole-frame options together, each split option's server energy from its tail time, and a
  three-tier option's middle device's over its part (the study's S(i, j) under L_max).
"""

from __future__ import annotations

from offload_manager.observations import Estimate, Observations
from offload_manager.policy import Plan, PolicySettings
from offload_manager.predictive import _ObservingPolicy, WeightedScorePolicy

PROFILE_UPLINK_MBPS = 50.0
"""The link a static split is chosen for: the simulator's nominal uplink."""
PROFILE_RTT_MS = 30.0
"""Its round trip (the simulator's nominal one), paid by options that reach the cloud."""


def profile_latency_ms(settings: PolicySettings, name: str) -> float:
    """Return a split option's latency by the profiles, at :data:`PROFILE_UPLINK_MBPS`."""
    fig = settings.splits[name]
    if not fig.to_cloud:
        return fig.before_wan_ms
    return fig.before_wan_ms + fig.wan_bytes * 8 / (PROFILE_UPLINK_MBPS * 1e3) + \
        PROFILE_RTT_MS + fig.server_ms


class StaticSplitPolicy(_ObservingPolicy):
    """Always the split option of best profiled latency (observations are kept, not used)."""

    name = 'static-split'

    def __init__(self, settings: PolicySettings, observations: Observations) -> None:
        super().__init__(settings, observations)
        self._plan: Plan | None = None

    def retune(self, settings: PolicySettings) -> None:
        """See :class:`offload_manager.policy.Policy`: the option is chosen anew."""
        super().retune(settings)
        self._plan = None

    def plan(self, now_ns: int) -> Plan:
        """See :class:`offload_manager.policy.Policy`."""
        if self._plan is None:
            s = self.settings
            best = min(s.splits, key=lambda name: profile_latency_ms(s, name))
            option = self.split_option(best)
            self._plan = self.to_plan(
                option, f'{option.key}: best profiled latency '
                        f'{profile_latency_ms(s, best):.0f} ms')
        return self._plan


class SplitScorePolicy(WeightedScorePolicy):
    """The weighted score over split and whole-frame options (see the module)."""

    name = 'split-score'
    chooses_splits = True

    def server_ms(self, estimate: Estimate, whole_ms: float) -> float:
        """Server time of an option: a split option's decode and tail, else the whole model's."""
        fig = self.settings.splits.get(estimate.option.split)
        return fig.server_ms if fig is not None else whole_ms

    def server_j(self, estimate: Estimate, whole_ms: float) -> float:
        """Return the server's energy over its part, and a middle device's over its own."""
        fig = self.settings.splits.get(estimate.option.split)
        middle = fig.middle_j if fig is not None else 0.0
        return super().server_j(estimate, whole_ms) + middle
