"""A fleet on one simulated service: N unchanged managers sharing replicas and an autoscaler.

Each robot is a :class:`Simulation` (its own manager and policy, edge worker, link, breaker and
random draws) on one shared event queue. Its cloud requests go to a
:class:`ServiceModel`: they reach the service after encode, upload and half the round trip,
carry the budget the bridge sends (the frame's deadline less the network time), and end as the
bridge sees them: an answer, a load refusal (``overloaded``: the bridge holds off for the
Retry-After, jittered 0.5-1.5x, and the breaker does not count it), a reset (a replica
crashed), or the bridge's timeout at the deadline (a request black-holed in a lost zone, or
lost on the link).

A split route's request (:func:`offload_runtime.three_tier.route_parts`) reaches the service
after the robot's head (and, on three tiers, the LAN and the middle device) and the uplink; it
joins the same fair queue as images and carries its tail's time, which its batch adds to the
images' (as the real service runs tails: each alone). ``j = end`` options end on the middle
device and never reach the service.

Faults: the scenario's robot faults (link, edge) hit every robot at once, so
``cpu_contention`` is a rush in which the whole fleet turns to the cloud; ``replica_crash`` and
``zone_outage`` hit the service. Robots' cameras start spread over one frame period, as
independent robots' would.
"""

from __future__ import annotations

from dataclasses import dataclass
import random
import time
from typing import Callable

from adaptive_offload.datatypes import Decision, Route
from cloud_bridge.bridge_config import SAMPLING_PHASES
from fault_injection.scenario import Fault, Scenario
from offload_manager.energy import DeviceProfile
from offload_manager.jpeg_sizes import jpeg_factor
from offload_manager.manager import OffloadManager
from offload_runtime.autoscalers import HpaSettings, make_scaler
from offload_runtime.fleet_figures import (capacity_recovery_s, FleetCounts, FleetRow, mttr_s,
                                           percentiles)
from offload_runtime.service_model import Request, ServiceModel
from offload_runtime.service_settings import ServiceSettings
from offload_runtime.sim_events import EventQueue, MS
from offload_runtime.sim_settings import NetworkProfile, Quality, SimSettings
from offload_runtime.simulator import Simulation

FAILURE_KINDS = ('replica_crash', 'zone_outage', 'cpu_contention', 'edge_stall')
"""Faults whose recovery the fleet table times."""


@dataclass(frozen=True)
class FleetSpec:
    """A fleet run.

    Attributes:
        robots: Robots, each with its own manager.
        service: The shared service.
        hpa: The autoscaler's configuration.
        scaler: Autoscaler name (:data:`offload_runtime.autoscalers.SCALERS`).
        monitor_s: How often replicas ready are sampled for recovery times.
    """

    robots: int
    service: ServiceSettings
    hpa: HpaSettings = HpaSettings()
    scaler: str = 'static'
    monitor_s: float = 1.0


class FleetRobot(Simulation):
    """One robot of the fleet: its cloud is the shared service model."""

    def __init__(self, manager: OffloadManager, robot: DeviceProfile, cloud: DeviceProfile,
                 network: NetworkProfile, scenario: Scenario, settings: SimSettings,
                 quality: Quality | None, events: EventQueue, name: str,
                 service: ServiceModel, counts: FleetCounts) -> None:
        super().__init__(manager, robot, cloud, network, scenario, settings, quality, events,
                         name)
        self.service = service
        self.counts = counts
        self._open: dict[int, tuple[int, Decision, int, int, float]] = {}
        self._tokens = 0
        self._hold_until = 0
        self._backoff = random.Random(f'{settings.seed}:{name}:backoff')
        # As each bridge's sampler: robots started together do not probe the cloud in step.
        self._sent = random.Random(f'{settings.seed}:{name}:phase').randrange(SAMPLING_PHASES)

    def _start_cloud(self, t: int, stamp: int, decision: Decision) -> None:
        fig = self._split(decision.split) if decision.route is Route.SPLIT else None
        if fig is not None and not fig.to_cloud:
            super()._start_cloud(t, stamp, decision)  # ends on the middle device
            return
        if t < self._hold_until or not self.breaker.allow(t):
            reason = 'backoff' if t < self._hold_until else 'circuit_open'
            self._report(stamp, 'cloud', 'failed', reason=reason)
            return
        faults = self._faults(t)
        self._in_flight += 1
        mbps = min(self.net.uplink_mbps, faults.get('bandwidth', {}).get('mbps', float('inf')))
        delay = faults.get('latency', {}).get('delay_ms', 0.0)
        rtt = self._spread(self.net.rtt_ms, 'rtt', stamp) + delay
        tail_s = 0.0
        if fig is None:
            nbytes = int(self.s.q75_bytes * jpeg_factor(decision.jpeg_quality))
            transfer = self._spread(nbytes * 8 / (mbps * 1e3), 'transfer', stamp)
            network_ms = self.s.encode_ms + transfer + rtt
            arrive_ms = self.s.encode_ms + transfer + rtt / 2
        else:  # the head (and the middle device's part) first; the service runs the tail
            parts = self._split_parts(stamp, fig, faults, mbps, delay)
            nbytes, tail_s = fig.payload_bytes, parts['cloud'] / 1e3
            network_ms = sum(parts.values()) - parts['cloud']
            arrive_ms = network_ms - rtt / 2
        self._tokens += 1
        token = self._tokens
        self._open[token] = (stamp, decision, t, nbytes, rtt / 2)
        self._at(t + int(decision.deadline_ms * MS), 'cloud_timeout', token)
        if 'cloud_outage' in faults:
            self._at(t + int(rtt * MS), 'cloud_reply', token, 'connection: refused', 0.0)
            return
        if self._rng('loss', stamp).random() < faults.get('loss', {}).get('probability', 0.0):
            return  # lost on the link: the timeout ends it
        budget_s = (decision.deadline_ms - network_ms) / 1e3
        self.events.at(t + int(arrive_ms * MS), self._submit, token, budget_s, tail_s)

    def _submit(self, t: int, token: int, budget_s: float, tail_s: float) -> None:
        self.service.submit(t, Request(self, token, self._name, tail_s), budget_s)

    def answered(self, t_ns: int, token: int, server_ms: float, queue_ms: float) -> None:
        """Take the service's answer; it reaches the robot half a round trip later."""
        entry = self._open.get(token)
        if entry is not None:
            self._at(t_ns + int(entry[4] * MS), 'cloud_reply', token, '', server_ms, 0.0,
                     queue_ms)

    def refused(self, t_ns: int, token: int, reason: str, retry_after_s: float) -> None:
        """Take a refusal or reset; it reaches the robot half a round trip later."""
        entry = self._open.get(token)
        if entry is not None:
            text = 'overloaded' if reason == 'overloaded' else f'{reason}: reset'
            self._at(t_ns + int(entry[4] * MS), 'cloud_reply', token, text, 0.0, retry_after_s)

    def _on_cloud_reply(self, t: int, current: Decision, token: int, reason: str,
                        server_ms: float, retry_after_s: float = 0.0,
                        queue_ms: float = 0.0) -> None:
        entry = self._open.pop(token, None)
        if entry is None:
            return  # the bridge had already given up at the deadline
        stamp, decision, sent_at, nbytes, _ = entry
        if reason == 'overloaded':
            hold_s = retry_after_s * self._backoff.uniform(0.5, 1.5)
            self._hold_until = max(self._hold_until, t + int(hold_s * 1e9))
        self._on_cloud_done(t, current, stamp, decision, (t - sent_at) / MS, nbytes,
                            server_ms, reason, queue_ms)

    def _on_cloud_timeout(self, t: int, current: Decision, token: int) -> None:
        entry = self._open.pop(token, None)
        if entry is not None:
            stamp, decision, _, nbytes, _ = entry
            self._on_cloud_done(t, current, stamp, decision, decision.deadline_ms, nbytes, 0.0,
                                'timeout')

    def _settle(self, t: int, reason: str) -> None:
        if reason == 'overloaded':
            self.breaker.release()  # busy, not broken: as the bridge
        else:
            super()._settle(t, reason)

    def _finish(self, outcomes: list) -> None:
        for outcome in outcomes:
            self._parts.pop(outcome.record.stamp_ns, None)
            self.counts.add(outcome.record)


class FleetSim:
    """N robots, one service, one autoscaler, one scenario.

    Args:
        spec: The fleet.
        managers: Builds robot ``i``'s manager (its policy inside).
        robot: Robot device profile (every robot has the same).
        cloud: Cloud device profile (price).
        network: Each robot's link.
        scenario: Faults, robot and service ones.
        settings: Frames per robot, camera rate, seed.
        quality: Measured mAP per model, size and scene difficulty.
        clock: Wall clock, for the speed figure.
    """

    def __init__(self, spec: FleetSpec, managers: Callable[[int], OffloadManager],
                 robot: DeviceProfile, cloud: DeviceProfile, network: NetworkProfile,
                 scenario: Scenario, settings: SimSettings, quality: Quality | None = None,
                 clock: Callable[[], float] = time.perf_counter) -> None:
        self.spec, self.scenario, self.settings, self._clock = spec, scenario, settings, clock
        self.cloud = cloud
        self.events = EventQueue()
        self.counts = FleetCounts()
        fleet = [managers(i) for i in range(spec.robots)]
        deadline_ms = fleet[0].config.deadline_ms if fleet else 0.0
        typical_budget_s = (deadline_ms - network.rtt_ms - 20.0) / 1e3
        self.service = ServiceModel(spec.service, self.events.at,
                                    random.Random(f'{settings.seed}:service'), network.jitter,
                                    typical_budget_s)
        self.scaler = make_scaler(spec.scaler, spec.hpa, spec.service,
                                  random.Random(f'{settings.seed}:scaler'))
        self.robots = [FleetRobot(manager, robot, cloud, network, scenario, settings,
                                  quality, self.events, f'robot{i}', self.service, self.counts)
                       for i, manager in enumerate(fleet)]
        self.ready: list[tuple[float, int]] = []
        self.replicas: list[tuple[float, int]] = []

    @property
    def end_ns(self) -> int:
        """When the run ends."""
        return self.robots[0].end_ns if self.robots else 0

    def run(self) -> FleetRow:
        """Play the fleet and return its table row."""
        started = self._clock()
        period = self.robots[0].period_ns if self.robots else 0
        for i, robot in enumerate(self.robots):
            robot.start(period * i // len(self.robots))
        self.events.at(0, self._monitor)
        self.events.at(int(self.spec.hpa.sync_s * 1e9), self._sync)
        for fault in self.scenario.faults:
            if fault.kind in ('replica_crash', 'zone_outage'):
                self.events.at(int(fault.start_s * 1e9), self._service_fault, fault)
        self.events.run()
        for robot in self.robots:
            robot.stop()
        self.service.close(self.end_ns)
        return self._row(self._clock() - started)

    def _monitor(self, t: int) -> None:
        self.ready.append((t / 1e9, self.service.ready()))
        self.replicas.append((t / 1e9, len(self.service.live())))
        nxt = t + int(self.spec.monitor_s * 1e9)
        if nxt < self.end_ns:
            self.events.at(nxt, self._monitor)

    def _sync(self, t: int) -> None:
        self.service.scale_to(t, self.scaler.desired(self.service.sample(t)))
        nxt = t + int(self.spec.hpa.sync_s * 1e9)
        if nxt < self.end_ns:
            self.events.at(nxt, self._sync)

    def _service_fault(self, t: int, fault: Fault) -> None:
        if fault.kind == 'replica_crash':
            self.service.crash(t, int(fault.params.get('replicas', 1)))
        else:
            self.service.zone_down(t, float(fault.params.get('share', 0.5)), fault.duration_s)

    def _row(self, wall_s: float) -> FleetRow:
        c = self.counts
        p50, p99 = percentiles(c.latencies)
        end_s = self.end_ns / 1e9
        failures = [f for f in self.scenario.faults if f.kind in FAILURE_KINDS]
        mttr = max((mttr_s(c, f.start_s, end_s) for f in failures), default=0.0)
        capacity = max((capacity_recovery_s(self.ready, f.start_s) for f in failures),
                       default=0.0)
        ready_s = sum(n for _, n in self.ready) * self.spec.monitor_s
        n = max(1, c.frames)
        policy = self.robots[0].m.config.policy if self.robots else ''
        return FleetRow(
            scenario=self.scenario.name, policy=policy, scaler=self.spec.scaler,
            robots=len(self.robots), frames=c.frames, miss_pct=100.0 * c.misses / n,
            late_frames=c.late, p50_ms=p50, p99_ms=p99, energy_j=c.energy_j / n,
            cloud_pct=100.0 * c.cloud / n, refusals=self.service.refusals_total,
            late_answers=self.service.late_answers, gpu_s=self.service.gpu_s,
            cost=self.service.gpu_s * self.cloud.price_per_gpu_hour / 3600,
            utilisation=self.service.busy_total_s / max(1e-9, ready_s),
            mean_replicas=sum(k for _, k in self.replicas) / max(1, len(self.replicas)),
            mttr_s=mttr, capacity_s=capacity, sim_s=end_s, wall_s=wall_s)
