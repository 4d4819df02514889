"""Baselines that plan over availability states or learn from rewards.

- ``mdp-svr``: the MDP+SVR study's approach. The SVR availability prediction is discretised
  into levels; transitions between levels are counted as decisions go by; value iteration over
  (level, current route) with a switching cost picks the route. Rewards are minus the modelled
  robot energy (relative to the edge route) minus a penalty times P(miss).
- ``q-learning``: online tabular Q-learning over (availability level, bandwidth level, last
  route), rewarded per frame record with minus energy minus a miss penalty; epsilon-greedy
  with an injected random generator.

Both choose the route only; model, size and quality stay as the parameters set them.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import replace
import random

from adaptive_offload.datatypes import FrameRecord, Route
import numpy as np
from offload_manager.observations import Observations, Option
from offload_manager.policy import Plan, PolicySettings
from offload_manager.predictive import _ObservingPolicy

ROUTES = (Route.EDGE, Route.CLOUD, Route.HEDGED)
LEVELS = 5
MISS_PENALTY = 5.0  # one missed deadline weighs as much as 5 edge frames' energy
SWITCH_COST = 0.05


def _level(availability: float, levels: int = LEVELS) -> int:
    return min(levels - 1, int(availability * levels))


class MdpSvrPolicy(_ObservingPolicy):
    """Value iteration over (availability level, route) with SVR-predicted availability."""

    name = 'mdp-svr'

    def __init__(self, settings: PolicySettings, observations: Observations,
                 discount: float = 0.9) -> None:
        super().__init__(settings, observations)
        self._counts = np.ones((LEVELS, LEVELS)) + np.eye(LEVELS) * 4  # prior: levels persist
        self._last_level: int | None = None
        self._gamma = discount
        self._route = settings.defaults.route

    def _rewards(self) -> np.ndarray | None:
        """Reward of each route at each availability level (levels x routes)."""
        base = self.default_option()
        self.obs.prepare()
        table = np.zeros((LEVELS, len(ROUTES)))
        edge_est = self.obs.estimate(replace(base, route=Route.EDGE), self.settings.deadline_ms)
        if edge_est is None:
            return None
        for r, route in enumerate(ROUTES):
            est = self.obs.estimate(replace(base, route=route), self.settings.deadline_ms)
            if est is None:
                table[:, r] = -np.inf
                continue
            late = self.obs.cloud_late(base.jpeg_quality, self.settings.deadline_ms)
            late = 1.0 if late is None else late
            p_edge = edge_est.p_miss
            for level in range(LEVELS):
                avail = (level + 0.5) / LEVELS
                p_cloud = 1 - avail * (1 - late)
                p_miss = {Route.EDGE: p_edge, Route.CLOUD: p_cloud,
                          Route.HEDGED: p_edge * p_cloud}[route]
                energy = est.energy_j / max(edge_est.energy_j, 1e-9)
                table[level, r] = -(energy + MISS_PENALTY * p_miss)
        return table

    def plan(self, now_ns: int) -> Plan:
        """See :class:`offload_manager.policy.Policy`."""
        self.obs.now_s = now_ns / 1e9
        level = _level(self.obs.availability.predict(self.obs.now_s))
        if self._last_level is not None:
            self._counts[self._last_level, level] += 1
        self._last_level = level
        rewards = self._rewards()
        if rewards is None:
            return self.probing(self.to_plan(self.default_option(), 'no measurements yet'))
        transition = self._counts / self._counts.sum(axis=1, keepdims=True)
        n = len(ROUTES)
        value = np.zeros((LEVELS, n))  # value of (level, current route)
        for _ in range(200):
            expected = transition @ value  # E[V(next level, route)] per level and route
            q = rewards[:, None, :] - SWITCH_COST * (1 - np.eye(n))[None, :, :] + \
                self._gamma * expected[:, None, :]
            new = q.max(axis=2)
            if np.max(np.abs(new - value)) < 1e-6:
                value = new
                break
            value = new
        expected = transition @ value
        current = ROUTES.index(self._route) if self._route in ROUTES else 0
        q_now = rewards[level] - SWITCH_COST * (np.arange(n) != current) + \
            self._gamma * expected[level]
        self._route = ROUTES[int(np.argmax(q_now))]
        option = replace(self.default_option(), route=self._route)
        return self.probing(self.to_plan(option, f'availability level {level}/{LEVELS - 1}: '
                                                 f'{self._route.value}'))


class QLearningPolicy(_ObservingPolicy):
    """Tabular Q-learning over discretised availability, bandwidth and last route.

    Args:
        settings: Manager parameters (``seed`` seeds exploration).
        observations: Shared measurements.
        alpha: Learning rate.
        discount: Discount of future rewards.
        explore: Probability of a random route per decision.
    """

    name = 'q-learning'

    def __init__(self, settings: PolicySettings, observations: Observations,
                 alpha: float = 0.2, discount: float = 0.8, explore: float = 0.05) -> None:
        super().__init__(settings, observations)
        self.q: dict[tuple[int, int, int], np.ndarray] = defaultdict(
            lambda: np.zeros(len(ROUTES)))
        self._rng = random.Random(settings.seed)
        self._alpha, self._gamma, self._explore = alpha, discount, explore
        self._state: tuple[int, int, int] | None = None
        self._route = settings.defaults.route

    def state(self) -> tuple[int, int, int]:
        """(availability level 0-2, bandwidth level 0-3, last route index)."""
        avail = _level(self.obs.availability.predict(self.obs.now_s), 3)
        mbps = self.obs.bandwidth.mbps
        band = 0 if mbps is None else 1 + int(mbps >= 5) + int(mbps >= 20)
        return avail, band, ROUTES.index(self._route) if self._route in ROUTES else 0

    def observe_record(self, record: FrameRecord) -> None:
        """Reward the route the frame was routed by."""
        super().observe_record(record)
        self.obs.prepare()
        if self._state is None or record.route not in {r.value for r in ROUTES}:
            return
        action = ROUTES.index(Route(record.route))
        base = self.default_option()
        est = self.obs.estimate(Option(Route(record.route), base.edge_model, base.edge_imgsz,
                                       base.jpeg_quality), self.settings.deadline_ms)
        edge = self.obs.estimate(replace(base, route=Route.EDGE), self.settings.deadline_ms)
        energy = est.energy_j / max(edge.energy_j, 1e-9) if est and edge else 1.0
        reward = -(energy + MISS_PENALTY * (not record.deadline_met))
        nxt = self.state()
        table = self.q[self._state]
        table[action] += self._alpha * (reward + self._gamma * self.q[nxt].max() -
                                        table[action])

    def plan(self, now_ns: int) -> Plan:
        """See :class:`offload_manager.policy.Policy`."""
        self.obs.now_s = now_ns / 1e9
        self._state = self.state()
        values = self.q[self._state]
        if self._rng.random() < self._explore:
            choice, why = self._rng.randrange(len(ROUTES)), 'exploring'
        else:
            choice, why = int(np.argmax(values)), f'Q {values.max():.2f}'
        self._route = ROUTES[choice]
        return self.to_plan(replace(self.default_option(), route=self._route),
                            f'state {self._state}: {self._route.value} ({why})')
