"""The adaptive policies: predictive (the default) and the published baselines beside it.

All of them read one :class:`Observations` and differ only in how they choose an option:

- ``predictive``: per decision, every option (route x edge model@size x JPEG quality) is
  estimated, and the one using least robot energy is chosen among those meeting every bound
  the user set: P(latency > deadline) <= epsilon, an accuracy floor, an energy budget, a cloud
  spend cap; hedging comes out of the same search when the edge alone cannot meet the bounds
  and the cloud's answer is cheap insurance.
- ``weighted-score``: the adaptive-partitioning study's S = w1 E_dev/E_norm + w2 E_tot/E_norm +
  w3 L/L_norm over options with mean latency L <= L_max, re-evaluated on its own period.
- ``reactive``: cloud until N consecutive cloud failures, then edge; back after a cool-down.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from adaptive_offload.datatypes import DetectionSet, FrameRecord, InferenceReport, Route
from offload_manager.observations import Estimate, Observations, Option
from offload_manager.policy import AccuracyView, Plan, PolicySettings
from offload_manager.size_spread import spread_sizes
from offload_manager.split_observations import edge_probe_plan, split_probe_plan


class _ObservingPolicy:
    """Feeds :class:`Observations` and turns a chosen option into a plan."""

    name = ''
    chooses_splits = False  # whether the configured split options are among its options

    def __init__(self, settings: PolicySettings, observations: Observations) -> None:
        self.settings = settings
        self.obs = observations
        self.current: Option | None = None
        self._options: list[Option] | None = None

    def retune(self, settings: PolicySettings) -> None:
        """See :class:`offload_manager.policy.Policy`: the options are listed anew."""
        self.settings = settings
        self._options = None

    def observe_report(self, report: InferenceReport, now_ns: int | None = None) -> None:
        """See :class:`offload_manager.policy.Policy`."""
        self.obs.observe_report(report, now_ns)

    def observe_record(self, record: FrameRecord) -> None:
        """See :class:`offload_manager.policy.Policy`."""
        self.obs.observe_record(record)

    def observe_detections(self, dets: DetectionSet) -> None:
        """See :class:`offload_manager.policy.Policy`."""
        self.obs.observe_detections(dets)

    def observe_health(self, cloud_error: bool) -> None:
        """See :class:`offload_manager.policy.Policy`."""
        self.obs.health(cloud_error)

    def observe_history(self, outcomes: list[tuple[float, bool]]) -> None:
        """See :class:`offload_manager.policy.Policy`."""
        for t_s, ok in outcomes:
            self.obs.availability.observe(t_s, ok)

    def edge_accuracy(self, model: str, imgsz: int) -> AccuracyView:
        """See :class:`offload_manager.policy.Policy`: what the options are estimated with."""
        return AccuracyView(self.obs.accuracy.edge(model, imgsz), self.obs.accuracy.samples)

    def options(self) -> list[Option]:
        """Every option the settings allow."""
        if self._options is not None:
            return self._options
        out = []
        for i, spec in enumerate(self.settings.edge_options):
            model, imgsz = spec.rsplit('@', 1)
            # On the edge route only probes are encoded: the smallest frame measures the link.
            out.append(Option(Route.EDGE, model, int(imgsz), min(self.settings.qualities)))
            for q in self.settings.qualities:
                out.append(Option(Route.HEDGED, model, int(imgsz), q))
                if i == 0:  # the edge model does not matter on the cloud route
                    out.append(Option(Route.CLOUD, model, int(imgsz), q))
        if self.chooses_splits:
            out += [self.split_option(split) for split in self.settings.splits]
        self._options = out
        return out

    def split_option(self, name: str) -> Option:
        """Return the option of split ``name``: the split route, or the edge detector's split.

        The edge detector's (figures ``edge``) is an edge route that names its model and size;
        the cloud model's is the split route at the parameters' edge model and quality.
        """
        fig = self.settings.splits[name]
        if fig.edge:
            return Option(Route.EDGE, fig.spec.arch, fig.spec.imgsz,
                          min(self.settings.qualities), name)
        d = self.settings.defaults
        return Option(Route.SPLIT, d.edge_model, d.edge_imgsz, d.jpeg_quality, name)

    def default_option(self) -> Option:
        """Return the option the parameters describe (used until something is measured)."""
        d = self.settings.defaults
        return Option(d.route, d.edge_model, d.edge_imgsz, d.jpeg_quality)

    def to_plan(self, option: Option, reason: str) -> Plan:
        """Return the plan applying ``option``."""
        return self._apply(option, f'{self.name}: {reason}', {})

    def probing_plan(self, option: Option, reason: str, unmet: str | None = None) -> Plan:
        """Return ``probing(to_plan(option, reason))``, given way on ``unmet``, built at once.

        Args:
            option: The option to apply.
            reason: Why, as for :meth:`to_plan`.
            unmet: The bounds given way; None keeps the default plan's.

        Returns:
            The plan.
        """
        reason = f'{self.name}: {reason}'
        changes: dict[str, Any] = {}
        if option.route is not Route.HEDGED and self.settings.probe_every:  # as probing()
            changes['probe_every'] = self.settings.probe_every
            reason = f'{reason}; probing'
        if unmet is not None:
            changes['unmet'] = unmet
        return self._apply(option, reason, changes)

    def _apply(self, option: Option, reason: str, changes: dict[str, Any]) -> Plan:
        """Make ``option`` current and return the default plan with it and ``changes``."""
        self.current = option
        if option.route in (Route.CLOUD, Route.HEDGED):  # the quality of the JPEGs going out
            self.obs.quality = option.jpeg_quality
        return replace(self.settings.defaults, route=option.route, edge_model=option.edge_model,
                       edge_imgsz=option.edge_imgsz, jpeg_quality=option.jpeg_quality,
                       reason=reason, split=option.split, **changes)

    def probing(self, plan: Plan) -> Plan:
        """On a one-sided route, probe the other side every ``probe_every``-th frame.

        On the edge route, cloud probes keep the cloud's figures (latency, availability,
        agreement) current, so a recovered or faster cloud is noticed; a probe costs the robot
        its radio energy. On the cloud route, edge probes do the same for the edge: without
        them an edge slowed by CPU contention would be remembered as slow long after the
        contention ended. Their answers are not waited for.
        """
        if plan.route is not Route.HEDGED and self.settings.probe_every:
            return replace(plan, probe_every=self.settings.probe_every,
                           reason=f'{plan.reason}; probing')
        return plan

    def estimates(self) -> list[Estimate]:
        """Estimates of every option that has the measurements it needs."""
        self.obs.prepare()
        found = (self.obs.estimate(o, self.settings.deadline_ms) for o in self.options())
        return [e for e in found if e is not None]


GIVE_WAY = ('energy budget', 'accuracy floor', 'cloud spend cap', 'deadline')
"""The order in which the user's bounds give way when no option meets them all: the robot's
energy first, the deadline (safety) last."""
ENERGY_TIE_J = 1e-3
"""Options whose energies differ by less are tied; the weights break the tie."""
CONFIRM_S = 1.0
"""Longest burst of confirm probes (every frame to the cloud) per suspected faster link."""


class PredictivePolicy(_ObservingPolicy):
    """Least robot energy subject to every bound the user set, feasibility first.

    The bounds: P(latency > deadline) <= epsilon, expected mAP >= ``accuracy_floor``, energy
    per frame <= ``energy_budget_j``, cloud spend <= ``spend_cap_usd_h`` (each 0: unset). When
    no option meets them all, bounds give way in the order of :data:`GIVE_WAY`, each as little
    as the options allow, and the decision names them (``unmet``). The weights only break ties
    between options within :data:`ENERGY_TIE_J`.

    Options never measured are estimated from the device profile where it has figures; on the
    edge route the cloud is probed (every ``probe_every``-th frame, answer not waited for),
    so a recovered cloud is noticed. A new choice must use ``hysteresis`` (relative) less
    energy than the current one unless the current one broke a bound.

    Confirm probes: when a probe's uplink rate says the link got faster but too few rates
    agree yet to make it a change point (``adaptive_offload.uplink``), every frame is also
    sent to the cloud, so the next rates come within a few frame periods instead of a probe
    period each, and a recovered link is confirmed (or not) within about a second. The
    burst is bounded: at most :data:`CONFIRM_S` per suspicion (about ``CONFIRM_S`` x the
    frame rate probes, 10 at 10 fps, each at the edge option's smallest JPEG), and a new
    suspicion needs a new run of faster rates, which only an ordinary probe can begin once
    the burst is over, so a link that keeps looking faster without being so costs at most
    one burst per ``probe_every`` frames.

    JPEGs go out at another quality now and then while the uplink fit needs sizes that differ
    (``offload_manager.size_spread``, which states what that costs).
    """

    name = 'predictive'
    chooses_splits = True

    def __init__(self, settings: PolicySettings, observations: Observations) -> None:
        super().__init__(settings, observations)
        self._confirm: tuple[int, float] | None = None  # (run of faster rates, began at s)

    def plan(self, now_ns: int) -> Plan:
        """See :class:`offload_manager.policy.Policy`."""
        s = self.settings
        self.obs.now_s = now_ns / 1e9
        estimates = self.estimates()
        if not estimates:
            return self.probing_plan(self.default_option(), 'no measurements yet')
        cost_ref = max((e.cost_usd for e in estimates), default=0.0) or 1.0
        acc_ref = max(e.accuracy for e in estimates) or 1.0
        rate = self.obs.frame_rate()  # nothing is observed during a plan
        scored = [(e, self._excess(e, rate)) for e in estimates]

        def key(e: Estimate) -> tuple[float, float]:
            tie = (s.weight_energy * e.energy_j / max(e.energy_j, ENERGY_TIE_J) +
                   s.weight_accuracy * (acc_ref - e.accuracy) / acc_ref +
                   s.weight_cost * e.cost_usd / cost_ref)
            return round(e.energy_j / ENERGY_TIE_J), tie

        # Excesses are in GIVE_WAY order: an option meets the bounds left once as many of
        # them as it needs, up to its last one broken, have given way. As few as can give way.
        needs = [max((i + 1 for i, v in enumerate(excess) if v > 0), default=0)
                 for _, excess in scored]
        given = min(needs)
        candidates = [pair for pair, need in zip(scored, needs) if need == given]

        # Each bound given way, from the last to give way, is missed as little as it can be.
        def rank(scored_e: tuple[Estimate, tuple[float, ...]]) -> tuple[float, ...]:
            e, excess = scored_e
            return (*reversed(excess[:given]), *key(e))

        best, best_excess = min(candidates, key=rank)
        unmet = [b for b, v in zip(GIVE_WAY[:given], best_excess) if v > 0]
        if not unmet and self.current is not None:
            current = next((e for e, _ in candidates if e.option == self.current), None)
            if current is not None and current.energy_j <= best.energy_j * (1 + s.hysteresis):
                best = current
        why = (f'{best.option.key}: P(miss) {best.p_miss:.3f}, {best.energy_j:.2f} J, '
               f'mAP {best.accuracy:.1f}, {self._spend(best, rate):.2f} USD/h')
        if unmet:
            why += '; gave way: ' + ', '.join(unmet)
        plan = self.probing_plan(best.option, why, ', '.join(unmet))
        if plan.route is Route.CLOUD and plan.probe_every:
            plan = edge_probe_plan(plan, estimates, s.epsilon)
        plan = split_probe_plan(plan, estimates, best)
        if plan.probe_every and plan.route is Route.EDGE:
            if self._confirming():
                plan = replace(plan, probe_every=1, split_probe='',
                               reason=f'{plan.reason}; confirming a faster link')
            elif self._learning(estimates, best):
                plan = replace(plan, probe_every=1, split_probe='',
                               reason=f"{plan.reason}; learning the cloud's availability")
        return spread_sizes(plan, self.obs, s)

    def _learning(self, estimates: list[Estimate], best: Estimate) -> bool:
        """Whether to probe every frame: the cloud would save energy, but is not known yet.

        Until the availability predictor has learnt from enough outcomes it trusts only the
        last few (at most 11/12, beyond any usual epsilon), and ordinary probes bring one a
        probe period: half a minute at 10 fps. When a cheaper cloud option answers in time
        and has not failed, but is held back by that alone, probing every frame learns it in
        a few seconds (8 at 10 fps), at a probe's radio and encode per frame, once per run (a
        learnt predictor stays learnt).
        """
        availability = self.obs.availability
        if availability.fitted or availability.recent_failures():
            return False  # known, or failing: ordinary probes watch for its return
        deadline, epsilon = self.settings.deadline_ms, self.settings.epsilon
        for e in estimates:
            if e.option.route is Route.CLOUD and e.energy_j < best.energy_j:
                late = self.obs.cloud_late(e.option.jpeg_quality, deadline)
                if late is not None and late <= epsilon:  # only its availability is unknown
                    return True
        return False

    def _confirming(self) -> bool:
        """Whether the cloud is probed every frame now: a faster link suspected, the burst on."""
        bandwidth = self.obs.bandwidth
        if not bandwidth.rising:
            self._confirm = None
            return False
        if self._confirm is None or self._confirm[0] != bandwidth.run_starts:
            self._confirm = (bandwidth.run_starts, self.obs.now_s)
        return self.obs.now_s - self._confirm[1] < CONFIRM_S

    def spend_usd_h(self, estimate: Estimate) -> float:
        """Cloud spend of an option at the measured frame rate (its share of frames sent)."""
        return self._spend(estimate, self.obs.frame_rate())

    def _spend(self, estimate: Estimate, frame_rate: float) -> float:
        """Cloud spend of an option at ``frame_rate`` (see :meth:`spend_usd_h`)."""
        every = self.settings.defaults.offload_every
        return estimate.cost_usd * frame_rate * 3600.0 / every

    def excess(self, e: Estimate) -> dict[str, float]:
        """How far ``e`` is beyond each bound, relative to the bound (0: met or unset)."""
        return dict(zip(GIVE_WAY, self._excess(e, self.obs.frame_rate())))

    def _excess(self, e: Estimate, frame_rate: float) -> tuple[float, ...]:
        """:meth:`excess` at ``frame_rate``, in the order of :data:`GIVE_WAY`."""
        s = self.settings
        spend = self._spend(e, frame_rate)
        return (
            max(0.0, e.energy_j / s.energy_budget_j - 1) if s.energy_budget_j else 0.0,
            max(0.0, 1 - e.accuracy / s.accuracy_floor) if s.accuracy_floor else 0.0,
            max(0.0, spend / s.spend_cap_usd_h - 1) if s.spend_cap_usd_h else 0.0,
            max(0.0, e.p_miss / s.epsilon - 1),
        )


class WeightedScorePolicy(_ObservingPolicy):
    """The weighted score with a latency cap, re-evaluated every ``score_period_s``.

    E_dev is the robot's energy, E_tot adds the server's (its power while it computes), L the
    expected (mean) latency, each normalised by the largest among the options. On a one-sided
    route the other side is probed every ``probe_every``-th frame (as predictive does), so
    every option's figures stay measured.
    """

    name = 'weighted-score'

    def __init__(self, settings: PolicySettings, observations: Observations) -> None:
        super().__init__(settings, observations)
        self._next_s = 0.0
        self._plan: Plan | None = None

    def plan(self, now_ns: int) -> Plan:
        """See :class:`offload_manager.policy.Policy`."""
        s = self.settings
        self.obs.now_s = now_ns / 1e9
        if self._plan is not None and self.obs.now_s < self._next_s:
            return self._plan
        self._next_s = self.obs.now_s + s.score_period_s
        estimates = [e for e in self.estimates() if e.latency_ms <= s.deadline_ms]
        if not estimates:
            self._plan = self.probing_plan(self.default_option(), 'no option under L_max')
            return self._plan
        whole_ms = self.obs.book.quantile('cloud:server', 0.5) or 0
        server_j = {id(e): self.server_j(e, whole_ms) if e.option.route is not Route.EDGE
                    else 0.0 for e in estimates}
        e_norm = max(e.energy_j + server_j[id(e)] for e in estimates) or 1.0
        l_norm = max(e.latency_ms for e in estimates) or 1.0
        w1, w2, w3 = s.score_weights
        best = min(estimates, key=lambda e: w1 * e.energy_j / e_norm +
                   w2 * (e.energy_j + server_j[id(e)]) / e_norm + w3 * e.latency_ms / l_norm)
        # Probes measure the side not chosen, as the study re-measures every option: without
        # them a cloud never sent to would never be known to meet L_max.
        self._plan = self.probing_plan(best.option, f'{best.option.key}: lowest S')
        return self._plan

    def server_ms(self, estimate: Estimate, whole_ms: float) -> float:
        """Server time of an offloading option: the whole model's measured median."""
        return whole_ms

    def server_j(self, estimate: Estimate, whole_ms: float) -> float:
        """Energy of the devices beside the robot for an offloading option (E_tot - E_dev)."""
        return self.settings.server_power_w * self.server_ms(estimate, whole_ms) / 1e3


class ReactivePolicy(_ObservingPolicy):
    """Threshold failover: the cloud until ``failover_after`` consecutive failures, then edge.

    After ``failback_s`` on the edge it tries the cloud again.
    """

    name = 'reactive'

    def __init__(self, settings: PolicySettings, observations: Observations) -> None:
        super().__init__(settings, observations)
        self._failures = 0
        self._edge_since: float | None = None

    def observe_report(self, report: InferenceReport, now_ns: int | None = None) -> None:
        """Count consecutive cloud failures."""
        super().observe_report(report, now_ns)
        if report.source == 'cloud' and report.status in ('ok', 'failed'):
            self._failures = 0 if report.status == 'ok' else self._failures + 1

    def plan(self, now_ns: int) -> Plan:
        """See :class:`offload_manager.policy.Policy`."""
        s = self.settings
        self.obs.now_s = now_ns / 1e9
        base = self.default_option()
        if self._edge_since is None and self._failures >= s.failover_after:
            self._edge_since = self.obs.now_s
        if self._edge_since is not None and self.obs.now_s - self._edge_since >= s.failback_s:
            self._edge_since, self._failures = None, 0
        if self._edge_since is not None:
            return self.to_plan(replace(base, route=Route.EDGE),
                                f'{s.failover_after} cloud failures: edge')
        return self.to_plan(replace(base, route=Route.CLOUD), 'cloud')
