"""Offload manager core: issues decisions on a period and arbitrates every frame."""

from __future__ import annotations

import dataclasses
import math
import random
import time
from typing import Any, Mapping

from adaptive_offload import topics
from adaptive_offload.datatypes import Decision, DetectionSet, InferenceReport, Level
from adaptive_offload.errors import ConfigError
from adaptive_offload.graph_codec import BatterySample, FrameHeader
from adaptive_offload.health_records import HealthEvent
from offload_manager.energy import BatteryReader
from offload_manager.frame_outcomes import Arbiter, Outcome
from offload_manager.manager_config import (ADAPTIVE, default_devices_file, frame_energy, LIVE,
                                            ManagerConfig, PARAMETERS)
from offload_manager.policies import create_policy
from offload_manager.policy import Plan, Policy

ARRIVALS_KEPT = 512
"""Frames whose arrival the manager remembers, to time the answers of split tails."""

__all__ = ['ADAPTIVE', 'default_devices_file', 'frame_energy', 'LIVE', 'ManagerConfig',
           'OffloadManager', 'PARAMETERS']


class OffloadManager:
    """Issues decisions and turns sources' results into one outcome per frame.

    All methods take the current time; the caller owns the clock (ROS time on a robot, the
    replay clock in the standalone runtime, a manual clock in tests).

    Args:
        config: Parameters.
        policy: Policy to use; by default the one ``config.policy`` names.
        executes_split: Whether the caller executes split routes: the simulator, a replay
            whose cloud bridge runs the options' heads, the ROS nodes (``cloud_bridge`` with the
            same ``split_options``); without it, ``split_options`` are refused.

    Raises:
        ConfigError: For split options where they cannot be executed, or unusable parameters.
    """

    def __init__(self, config: ManagerConfig, policy: Policy | None = None,
                 executes_split: bool = False) -> None:
        if config.splits() and not executes_split:
            # A split decision here would have no worker to carry it: every frame would drop.
            raise ConfigError('split_options: nothing here executes split routes (the '
                              'simulator does, and a cloud bridge given the same split_options '
                              "and the service's weights as split_checkpoint)")
        self.config = config
        self._policy = policy or create_policy(config.policy, config.policy_settings())
        # A frame that may still meet its deadline is never given up on.
        self._arbiter = Arbiter(tuple(config.edge_sources),
                                max(config.result_timeout_ms, config.deadline_ms))
        self._decision: Decision | None = None
        self._plan: Plan | None = None
        self._planned_ns = 0
        self._held: tuple[Plan, int] | None = None  # a switch onto the cloud, and when it goes
        self._switch_rng = random.Random(f'{config.seed}:cloud-switch')
        self._seq = 0
        self._history_pending = bool(config.history_file)
        self._battery = BatteryReader() if config.energy_reader == 'battery' else None
        self._energy = frame_energy(config, self._battery)
        self._ended: list[Outcome] = []  # frames refused on arrival, until the next poll
        self._arrived: dict[tuple[int, str], int] = {}  # the newest frames' arrival times

    def reconfigure(self, values: Mapping[str, Any]) -> ManagerConfig:
        """Apply parameters set at runtime; the next decision (issued at the next tick) shows them.

        The policy keeps what it learned unless ``policy`` names another one.

        Args:
            values: New values of live parameters (see :data:`PARAMETERS`).

        Returns:
            The new configuration.

        Raises:
            ConfigError: For a parameter that is not live or a value the manager refuses; the
                configuration in force is then unchanged.
        """
        fixed = sorted(name for name in values if name not in LIVE)
        if fixed:
            raise ConfigError(f'{", ".join(fixed)}: only set at start-up')
        config = ManagerConfig.from_params({**dataclasses.asdict(self.config), **values})
        settings = config.policy_settings()
        if config.policy != self.config.policy:
            self._policy = create_policy(config.policy, settings)
        else:
            self._policy.retune(settings)
        self.config = config
        self._arbiter.set_timeout(max(config.result_timeout_ms, config.deadline_ms))
        self._plan = None  # re-plan at the next tick, which then issues a decision
        return config

    @property
    def decision(self) -> Decision | None:
        """The decision in force, if one was issued."""
        return self._decision

    @property
    def pending(self) -> int:
        """Frames still waiting for a result."""
        return self._arbiter.pending

    def tick(self, now_ns: int) -> Decision | None:
        """Issue a decision if the plan changed or the period elapsed; returns it if issued."""
        plan = self._plan_at(now_ns)
        last = self._decision
        due = last is None or plan != self._plan or \
            now_ns - last.issued_ns >= self.config.decision_period_s * 1e9
        if not due:
            return None
        return self._issue(plan, now_ns)

    def _in_force(self, now_ns: int) -> Decision:
        """Return the decision in force; a frame before the first tick has the first issued."""
        if self._decision is not None:
            return self._decision
        return self._issue(self._plan_at(now_ns), now_ns)

    def _plan_at(self, now_ns: int) -> Plan:
        """Return the policy's plan, asked anew when none is kept or the plan period ended."""
        if self._history_pending:  # on the first tick: history needs the caller's clock
            from adaptive_offload.failure_log import load_outcomes

            self._history_pending = False
            self._policy.observe_history(load_outcomes(self.config.history_file, time.time(),
                                                       now_ns / 1e9))
        if self._plan is None or now_ns - self._planned_ns >= self.config.plan_period_s * 1e9:
            plan = self._hold(self._policy.plan(now_ns), now_ns)
            self._planned_ns = now_ns
        elif self._held is not None and now_ns >= self._held[1]:
            plan, self._held = self._held[0], None
        else:
            plan = self._plan
        return plan

    def _hold(self, plan: Plan, now_ns: int) -> Plan:
        """Hold a switch onto the cloud until its drawn time (``cloud_switch_jitter_s``).

        A fleet whose robots see one cause at once (a hard scene for all, an update that slows
        every edge) would otherwise reach the shared service within one decision period.
        """
        jitter_s = self.config.cloud_switch_jitter_s
        current = self._plan
        if not jitter_s or current is None or current.route.uses_cloud or \
                not plan.route.uses_cloud:
            self._held = None
            return plan
        switch_ns = self._held[1] if self._held is not None else \
            now_ns + int(self._switch_rng.uniform(0.0, jitter_s) * 1e9)
        if now_ns >= switch_ns:
            self._held = None
            return plan
        self._held = (plan, switch_ns)
        return current

    def _issue(self, plan: Plan, now_ns: int) -> Decision:
        """Issue the next decision, carrying out ``plan``."""
        self._seq += 1
        self._plan = plan
        decision = self._decision = Decision(
            seq=self._seq, issued_ns=now_ns, valid_for_ms=self.config.decision_valid_s * 1e3,
            route=plan.route, edge_model=plan.edge_model, edge_imgsz=plan.edge_imgsz,
            jpeg_quality=plan.jpeg_quality, cloud_max_side=plan.cloud_max_side,
            offload_every=plan.offload_every, hedge_delay_ms=plan.hedge_delay_ms,
            probe_every=plan.probe_every, deadline_ms=self.config.deadline_ms,
            policy=self.config.policy, reason=plan.reason, unmet=plan.unmet,
            split=plan.split, split_probe=plan.split_probe)
        return decision

    def next_due_ns(self, now_ns: int) -> int:
        """Return when :meth:`tick` or :meth:`poll` may next act without a new input.

        A caller may sleep until then, or until an input comes, and miss nothing: the plan and
        decision periods and the pending frames' deadlines and timeouts all fall on or after
        it. A time not after ``now_ns`` means at once.
        """
        if self._decision is None or self._plan is None or self._history_pending or \
                self._ended:
            return now_ns
        due = min(self._planned_ns + math.ceil(self.config.plan_period_s * 1e9),
                  self._decision.issued_ns + math.ceil(self.config.decision_period_s * 1e9))
        if self._held is not None:
            due = min(due, self._held[1])
        frames = self._arbiter.next_due_ns(now_ns)
        return due if frames is None else min(due, frames)

    def frame_arrived(self, stamp_ns: int, frame_id: str, now_ns: int) -> Outcome | None:
        """Register an input frame under the current decision; a refused one ends at once."""
        decision = self._in_force(now_ns)
        outcome = self._arbiter.frame_arrived(stamp_ns, frame_id, now_ns, decision)
        if outcome is None:
            self._arrived[(stamp_ns, frame_id)] = now_ns
            while len(self._arrived) > ARRIVALS_KEPT:
                self._arrived.pop(next(iter(self._arrived)))
            return None
        [annotated] = self._annotate([outcome], now_ns)
        self._policy.observe_record(annotated.record)
        return annotated

    def on_frame(self, header: FrameHeader, now_ns: int) -> None:
        """Take a camera frame (the graph's handler); a refused one ends at the next poll."""
        outcome = self.frame_arrived(header.stamp_ns, header.frame_id, now_ns)
        if outcome is not None:
            self._ended.append(outcome)

    def frame_unreadable(self, reason: str, now_ns: int) -> Outcome:
        """Record a frame that could not even be deserialized: it ends as a drop."""
        decision = self._in_force(now_ns)
        [outcome] = self._annotate([self._arbiter.unreadable(reason, decision)], now_ns)
        self._policy.observe_record(outcome.record)
        return outcome

    def on_detections(self, dets: DetectionSet, now_ns: int) -> None:
        """Take the detections a source published for a frame."""
        self._policy.observe_detections(dets)
        self._arbiter.add_result(dets, now_ns)

    def on_health_event(self, event: HealthEvent, now_ns: int = 0) -> None:
        """Take a health level change; the cloud check's tells the policy if the cloud is down."""
        if event.name == topics.CHECK_CLOUD:
            self._policy.observe_health(event.level >= Level.ERROR)

    def on_battery(self, sample: BatterySample, now_ns: int) -> None:
        """Take a BatteryState sample (used when ``energy_reader`` is battery)."""
        if self._battery is not None:
            self._battery.update(sample.voltage_v, sample.current_a, now_ns)

    def on_report(self, report: InferenceReport, now_ns: int = 0) -> None:
        """Take a source's report of what it did with a frame.

        A split's tail (an answer naming its ``split``) timed only its own part: the policy
        learns the route's latency from the frame's arrival here to now (``now_ns``; 0:
        unknown).
        """
        taken = now_ns or None
        arrived = self._arrived.get((report.stamp_ns, report.frame_id)) \
            if report.split and report.status == 'ok' else None
        if arrived is not None and now_ns > arrived:
            timed = dataclasses.replace(report, total_ms=(now_ns - arrived) / 1e6)
            self._policy.observe_report(timed, taken)
        else:
            self._policy.observe_report(report, taken)
        self._energy.report(report)
        self._arbiter.add_report(report)

    def poll(self, now_ns: int, final: bool = False) -> list[Outcome]:
        """Outcomes of the frames that are finished at ``now_ns`` (all of them if final)."""
        ended, self._ended = self._ended, []
        outcomes = self._arbiter.flush(now_ns) if final else self._arbiter.poll(now_ns)
        outcomes = ended + self._annotate(outcomes, now_ns)
        for outcome in outcomes:
            self._policy.observe_record(outcome.record)
        return outcomes

    def _annotate(self, outcomes: list[Outcome], now_ns: int) -> list[Outcome]:
        """Add each frame's energy and the policy's current estimate of the edge's accuracy."""
        if not outcomes:  # most polls end nothing
            return outcomes
        charged = self._energy.charge(outcomes, now_ns)
        decision = self._decision
        view = None if decision is None else \
            self._policy.edge_accuracy(decision.edge_model, decision.edge_imgsz)
        estimate: dict[str, Any] = {} if view is None else {
            'edge_map_estimate': view.m_ap, 'agreement_samples': view.samples}
        # One new record per frame, with every field at once: records are built by the
        # thousand per second in a fleet simulation.
        if charged is None:
            if not estimate:
                return outcomes
            return [Outcome(dataclasses.replace(o.record, **estimate), o.result)
                    for o in outcomes]
        return [Outcome(dataclasses.replace(o.record, energy_j=joules, energy_measured=measured,
                                            **estimate), o.result)
                for o, (joules, measured) in zip(outcomes, charged)]
