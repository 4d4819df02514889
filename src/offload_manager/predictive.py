"""The adaptive policies: predictive (the default) and the published baselines beside it.

All of them read one :class:`Observations` and differ only in how they choose an option:

- ``predictive``: per decision, every option (route x edge model@size x JPEG quality) is
  scored on weighted robot energy, accuracy loss and cloud cost, subject to
  P(latency > deadline) <= epsilon; hedging comes out of the same search when the edge alone
  cannot meet the bound and the cloud's answer is cheap insurance.
- ``weighted-score``: the adaptive-partitioning study's S = w1 E_dev/E_norm + w2 E_tot/E_norm +
  w3 L/L_norm over options with mean latency L <= L_max, re-evaluated on its own period.
- ``reactive``: cloud until N consecutive cloud failures, then edge; back after a cool-down.
"""

from __future__ import annotations

from dataclasses import replace

from adaptive_offload.datatypes import DetectionSet, FrameRecord, InferenceReport, Route
from offload_manager.observations import Estimate, Observations, Option
from offload_manager.policies import Plan, PolicySettings


class _ObservingPolicy:
    """Feeds :class:`Observations` and turns a chosen option into a plan."""

    name = ''

    def __init__(self, settings: PolicySettings, observations: Observations) -> None:
        self.settings = settings
        self.obs = observations
        self.current: Option | None = None
        self._options: list[Option] | None = None

    def retune(self, settings: PolicySettings) -> None:
        """See :class:`offload_manager.policies.Policy`: the options are listed anew."""
        self.settings = settings
        self._options = None

    def observe_report(self, report: InferenceReport) -> None:
        """See :class:`offload_manager.policies.Policy`."""
        self.obs.observe_report(report)

    def observe_record(self, record: FrameRecord) -> None:
        """See :class:`offload_manager.policies.Policy`."""
        self.obs.observe_record(record)

    def observe_detections(self, dets: DetectionSet) -> None:
        """See :class:`offload_manager.policies.Policy`."""
        self.obs.observe_detections(dets)

    def observe_health(self, cloud_error: bool) -> None:
        """See :class:`offload_manager.policies.Policy`."""
        self.obs.health(cloud_error)

    def observe_history(self, outcomes: list[tuple[float, bool]]) -> None:
        """See :class:`offload_manager.policies.Policy`."""
        for t_s, ok in outcomes:
            self.obs.availability.observe(t_s, ok)

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
        self._options = out
        return out

    def default_option(self) -> Option:
        """Return the option the parameters describe (used until something is measured)."""
        d = self.settings.defaults
        return Option(d.route, d.edge_model, d.edge_imgsz, d.jpeg_quality)

    def to_plan(self, option: Option, reason: str) -> Plan:
        """Return the plan applying ``option``."""
        self.current = option
        if option.route is not Route.EDGE:  # the quality of the requests now going out
            self.obs.quality = option.jpeg_quality
        return replace(self.settings.defaults, route=option.route, edge_model=option.edge_model,
                       edge_imgsz=option.edge_imgsz, jpeg_quality=option.jpeg_quality,
                       reason=f'{self.name}: {reason}')

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


class PredictivePolicy(_ObservingPolicy):
    """Minimum weighted energy, accuracy loss and cost subject to P(miss) <= epsilon.

    Options never measured are estimated from the device profile where it has figures; on the
    edge route the cloud is probed (every ``probe_every``-th frame, answer not waited for),
    so a recovered cloud is noticed. A new choice must beat the current one by ``hysteresis``
    (relative score) unless the current one broke the bound.
    """

    name = 'predictive'

    def plan(self, now_ns: int) -> Plan:
        """See :class:`offload_manager.policies.Policy`."""
        s = self.settings
        self.obs.now_s = now_ns / 1e9
        estimates = self.estimates()
        if not estimates:
            return self.probing(self.to_plan(self.default_option(), 'no measurements yet'))
        edge_ref = min((e.energy_j for e in estimates if e.option.route is Route.EDGE),
                       default=max(e.energy_j for e in estimates)) or 1.0
        cost_ref = max((e.cost_usd for e in estimates), default=0.0) or 1.0
        acc_ref = max(e.accuracy for e in estimates) or 1.0

        def score(e: Estimate) -> float:
            return (s.weight_energy * e.energy_j / edge_ref +
                    s.weight_accuracy * (acc_ref - e.accuracy) / acc_ref +
                    s.weight_cost * e.cost_usd / cost_ref)

        feasible = [e for e in estimates if e.p_miss <= s.epsilon]
        if feasible:
            best = min(feasible, key=score)
            current = next((e for e in feasible if e.option == self.current), None)
            if current is not None and score(current) <= score(best) * (1 + s.hysteresis):
                best = current
            why = (f'{best.option.key}: P(miss) {best.p_miss:.3f}, {best.energy_j:.2f} J, '
                   f'mAP {best.accuracy:.1f}')
        else:
            best = min(estimates, key=lambda e: (e.p_miss, score(e)))
            why = f'{best.option.key}: no option meets epsilon; lowest P(miss) {best.p_miss:.3f}'
        return self.probing(self.to_plan(best.option, why))


class WeightedScorePolicy(_ObservingPolicy):
    """The weighted score with a latency cap, re-evaluated every ``score_period_s``.

    E_dev is the robot's energy, E_tot adds the server's (its power while it computes), L the
    expected (mean) latency, each normalised by the largest among the options.
    """

    name = 'weighted-score'

    def __init__(self, settings: PolicySettings, observations: Observations) -> None:
        super().__init__(settings, observations)
        self._next_s = 0.0
        self._plan: Plan | None = None

    def plan(self, now_ns: int) -> Plan:
        """See :class:`offload_manager.policies.Policy`."""
        s = self.settings
        self.obs.now_s = now_ns / 1e9
        if self._plan is not None and self.obs.now_s < self._next_s:
            return self._plan
        self._next_s = self.obs.now_s + s.score_period_s
        estimates = [e for e in self.estimates() if e.latency_ms <= s.deadline_ms]
        if not estimates:
            self._plan = self.to_plan(self.default_option(), 'no option under L_max')
            return self._plan
        server_j = {id(e): s.server_power_w * (self.obs.book.quantile('cloud:server', 0.5) or 0)
                    / 1e3 if e.option.route is not Route.EDGE else 0.0 for e in estimates}
        e_norm = max(e.energy_j + server_j[id(e)] for e in estimates) or 1.0
        l_norm = max(e.latency_ms for e in estimates) or 1.0
        w1, w2, w3 = s.score_weights
        best = min(estimates, key=lambda e: w1 * e.energy_j / e_norm +
                   w2 * (e.energy_j + server_j[id(e)]) / e_norm + w3 * e.latency_ms / l_norm)
        self._plan = self.to_plan(best.option, f'{best.option.key}: lowest S')
        return self._plan


class ReactivePolicy(_ObservingPolicy):
    """Threshold failover: the cloud until ``failover_after`` consecutive failures, then edge.

    After ``failback_s`` on the edge it tries the cloud again.
    """

    name = 'reactive'

    def __init__(self, settings: PolicySettings, observations: Observations) -> None:
        super().__init__(settings, observations)
        self._failures = 0
        self._edge_since: float | None = None

    def observe_report(self, report: InferenceReport) -> None:
        """Count consecutive cloud failures."""
        super().observe_report(report)
        if report.source == 'cloud' and report.status in ('ok', 'failed'):
            self._failures = 0 if report.status == 'ok' else self._failures + 1

    def plan(self, now_ns: int) -> Plan:
        """See :class:`offload_manager.policies.Policy`."""
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
