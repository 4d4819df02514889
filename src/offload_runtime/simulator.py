"""Discrete-event simulation: the unchanged manager and policy on a simulated clock.

Frames arrive at a fixed rate. The edge worker (newest-frame slot) takes its inference time
from the robot's device profile (on an edge detector's split, its head's: the payload then
crosses the LAN to a one-frame tail worker on the middle device), the cloud bridge
(``max_in_flight`` requests, drop-oldest pending slot, the real :class:`CircuitBreaker`)
takes encode + transfer + round trip + server time from the network and cloud profiles, and
the scenario's faults change those as they do on the wire. The manager
(:class:`OffloadManager` with any registered policy) receives the same reports and detections
it gets from the real workers and produces the same records.

Detections are synthetic: each frame holds ``objects`` ground-truth boxes, and a source finds
each with a probability derived from its accuracy, so edge/cloud agreement behaves as the
accuracies say. A model's accuracy is its measured mAP at the scene's difficulty of the moment
(the scenario's ``scene``) where ``quality`` has that figure, else its prior. Energy per frame
is the manager's own record of it (modelled from the robot profile, as on a robot without an
energy reader).
"""

from __future__ import annotations

from dataclasses import replace
import math
import random
from typing import Any

from adaptive_offload.admission import EveryNth
from adaptive_offload.datatypes import Decision, InferenceReport, Route
from adaptive_offload.scene_difficulty import parse_difficulty
from adaptive_offload.split_option import SPLIT_PREFIX
from cloud_bridge.resilience import CircuitBreaker
from fault_injection.scenario import Scenario
from offload_manager.accuracy import prior
from offload_manager.energy import DeviceProfile
from offload_manager.jpeg_sizes import jpeg_factor
from offload_manager.manager import OffloadManager
from offload_manager.split_figures import split_figures, SplitFigures
from offload_runtime.sim_detections import synthetic_detections
from offload_runtime.sim_events import EventQueue, MS, NewestSlot
from offload_runtime.sim_result import SimResult
from offload_runtime.sim_settings import NetworkProfile, Quality, SimSettings
from offload_runtime.three_tier import middle_device, route_parts


class Simulation:
    """One policy under one scenario.

    Args:
        manager: The manager (policy inside) to drive.
        robot: Robot device profile.
        cloud: Cloud device profile.
        network: Link profile.
        scenario: Faults (times in seconds from the start) and the scene's difficulty.
        settings: What to simulate.
        quality: Measured mAP (0-100) of ``(model, imgsz, difficulty)``, None where not
            measured; ``imgsz`` 0 means the model's only measured size.
        events: The event queue, shared by the robots of a fleet; None: its own.
        name: The robot's name in a fleet (its random draws are its own); empty: alone.
        middle: The middle device of three-tier split options; None: the one the network
            profile or the manager's parameters name.
    """

    def __init__(self, manager: OffloadManager, robot: DeviceProfile, cloud: DeviceProfile,
                 network: NetworkProfile, scenario: Scenario, settings: SimSettings,
                 quality: Quality | None = None, events: EventQueue | None = None,
                 name: str = '', middle: DeviceProfile | None = None) -> None:
        self.m = manager
        self._scene = parse_difficulty(scenario.scene)
        self._quality = quality
        self.robot, self.cloud, self.net, self.scenario = robot, cloud, network, scenario
        self.middle = middle or middle_device(manager.config, network.middle)
        self.s = settings
        self.breaker = CircuitBreaker()
        self.result = SimResult()
        self.events = events if events is not None else EventQueue()
        self._name = name
        self._decision: Decision | None = None
        self._faults_now: dict[str, dict[str, float]] = {}
        self._faults_span = (math.inf, -math.inf)  # [from, until) of _faults_now, in seconds
        self._edge: NewestSlot[tuple[int, Decision]] = NewestSlot()
        self._in_flight = 0
        self._cloud_pending: tuple[int, Decision, int] | None = None  # and its arrival
        self._sent = 0
        self._edge_probes = EveryNth()  # as EdgeInference's
        self._split_probes = EveryNth()  # as SplitHead's
        self._parts: dict[int, dict[str, float]] = {}
        self._splits: dict[str, SplitFigures] = {}
        self._head_ms: dict[int, float] = {}  # split frames in flight: the robot's time
        self._now = 0  # the time of the event under way
        # The middle device's tail of the edge detector's split.
        self._tail: NewestSlot[tuple[int, Decision, float]] = NewestSlot()

    def _at(self, t_ns: int, kind: str, *payload: object) -> None:
        self.events.at(t_ns, self._step, kind, payload)

    def _rng(self, stream: str, stamp: int) -> random.Random:
        """Draws fixed by frame and purpose (common random numbers).

        Every policy meets the same frame times and losses, so differences between policies
        are theirs alone.
        """
        return random.Random(f'{self.s.seed}:{self._name}{stream}:{stamp}')

    def _spread(self, ms: float, stream: str, stamp: int) -> float:
        return ms * math.exp(self._rng(stream, stamp).gauss(0.0, self.net.jitter))

    def _accuracy(self, model: str, imgsz: int, t_ns: int) -> float:
        """Return the model's mAP on the scene of the moment: measured, else its prior."""
        level = self._scene.name_at(t_ns / 1e9).split('[')[0]
        measured = None if self._quality is None else \
            self._quality(model, imgsz, 'easy' if level == 'base' else level)
        return prior(model, imgsz) if measured is None else measured

    def _faults(self, t_ns: int) -> dict[str, dict[str, float]]:
        """Return the faults in force at ``t_ns`` by kind (read-only: shared until one changes)."""
        t_s = t_ns / 1e9
        if not self._faults_span[0] <= t_s < self._faults_span[1]:
            self._faults_now = {f.kind: dict(f.params) for f in self.scenario.active(t_s)}
            edges = [x for f in self.scenario.faults for x in (f.start_s, f.end_s)]
            self._faults_span = (max((e for e in edges if e <= t_s), default=-math.inf),
                                 min((e for e in edges if e > t_s), default=math.inf))
        return self._faults_now

    @property
    def period_ns(self) -> int:
        """Time between camera frames."""
        return int(1e9 / self.s.fps)

    @property
    def end_ns(self) -> int:
        """When the run ends: the last frame's time and five seconds for late answers."""
        return self.s.frames * self.period_ns + 5_000 * MS

    def start(self, offset_ns: int = 0) -> None:
        """Take the first decision and queue the first frame (at ``offset_ns``)."""
        self._decision = self.m.tick(0)
        if self.s.frames:
            self.events.at(offset_ns, self._step, 'frame', (0, offset_ns), first=True)

    def stop(self) -> None:
        """End the run: frames still open end now."""
        self._finish(self.m.poll(self.end_ns, final=True))

    def run(self) -> SimResult:
        """Play every frame and return what happened."""
        self.start()
        self.events.run()
        self.stop()
        return self.result

    def _step(self, t: int, kind: str, payload: tuple) -> None:
        """One event of this robot: the manager's tick, the event, the manager's poll."""
        self._now = t
        issued = self.m.tick(t)
        if issued is not None:
            self._decision = issued
            self.result.routes.append((t / 1e9, issued.route.value))
        getattr(self, f'_on_{kind}')(t, self._decision, *payload)
        self._finish(self.m.poll(t))

    def _finish(self, outcomes: list) -> None:
        for outcome in outcomes:
            rec = outcome.record
            self.result.records.append(rec)
            parts = self._parts.pop(rec.stamp_ns, {})
            # The manager's own figure: modelled from the same robot profile, late work included.
            self.result.energy_j[rec.stamp_ns] = rec.energy_j or 0.0
            self.result.accuracy[rec.stamp_ns] = parts.get(f'acc_{rec.result_source}', 0.0)

    def _on_frame(self, t: int, decision: Decision, index: int, offset: int) -> None:
        if index + 1 < self.s.frames:
            self.events.at(offset + (index + 1) * self.period_ns, self._step, 'frame',
                           (index + 1, offset), first=True)
        stamp = offset + index * self.period_ns + 1
        outcome = self.m.frame_arrived(stamp, 'camera', t)
        if outcome is not None:
            self._finish([outcome])
            return
        self._parts[stamp] = {}
        self._at(t + int(decision.deadline_ms * MS), 'wake')
        if decision.route.uses_edge or self._edge_probes.pick(decision.probe_every):
            start, superseded = self._edge.offer((stamp, decision))
            if superseded is not None:
                self._report(superseded[0], 'edge', 'dropped', reason='superseded')
            if start:
                self._start_edge(t, stamp, decision)
        else:
            self._report(stamp, 'edge', 'skipped', decision_seq=decision.seq)
        every = decision.offload_every if decision.route.uses_cloud else decision.probe_every
        self._sent += 1 if every else 0
        if every and (self._sent - 1) % every == 0:
            if self._in_flight < self.s.max_in_flight:
                self._start_cloud(t, stamp, decision)
            else:
                if self._cloud_pending is not None:
                    self._report(self._cloud_pending[0], 'cloud', 'dropped', reason='superseded')
                self._cloud_pending = (stamp, decision, t)
        else:
            self._report(stamp, 'cloud', 'skipped', decision_seq=decision.seq)

    def _start_edge(self, t: int, stamp: int, decision: Decision) -> None:
        fig = self._edge_split(decision)
        base = fig.robot_ms if fig else \
            self.robot.inference_time_ms(decision.edge_model, decision.edge_imgsz)
        if base is None:
            base = 100.0 * (decision.edge_imgsz / 640) ** 2
        probe = self._probe(decision) if fig is None else None
        if probe is not None:  # the head runs to k, encodes and sends, then on to the end
            base += probe.encode_ms
        faults = self._faults(t)
        slowdown = faults.get('cpu_contention', {}).get('slowdown', 1.0)
        ms = self._spread(base * slowdown, 'edge', stamp)
        start = t
        if 'edge_stall' in faults:  # the worker hangs on this frame until the stall ends
            start = max(int(f.end_s * 1e9) for f in self.scenario.active(t / 1e9)
                        if f.kind == 'edge_stall')
        self._at(start + int(ms * MS), 'edge_done', stamp, decision, ms, probe)
        if probe is not None:
            self._at(start + int(ms * probe.robot_ms / base * MS), 'payload_sent', stamp,
                     replace(decision, split=decision.split_probe, edge_imgsz=probe.spec.imgsz))

    def _probe(self, decision: Decision) -> SplitFigures | None:
        """Return the split a frame of the robot's own model is sent on as a probe, if due."""
        if decision.route is not Route.EDGE or decision.split or not decision.split_probe:
            return None
        fig = self._split(decision.split_probe)
        return fig if fig.edge and self._split_probes.pick(decision.probe_every) else None

    def _on_payload_sent(self, t: int, _current: Decision, stamp: int,
                         decision: Decision) -> None:
        """Send a head's payload (or a probe's) over the LAN to the middle device's tail."""
        fig = self._split(decision.split)
        self.result.bytes_sent += fig.payload_bytes
        # Lost whole, as a message over best-effort DDS is when one fragment is: silently.
        loss = self._faults(t).get('lan_loss', {}).get('probability', 0.0)
        if loss and self._rng('lan_loss', stamp).random() < loss:
            return
        lan = route_parts(fig, self._lan(self._faults(t)), self.net.uplink_mbps, 0.0,
                          lambda nominal, purpose: self._spread(nominal, purpose, stamp))
        self._at(t + int(lan['lan'] * MS), 'tail_arrived', stamp, decision, lan['middle'])

    def _on_edge_done(self, t: int, _current: Decision, stamp: int, decision: Decision,
                      ms: float, probe: SplitFigures | None = None) -> None:
        fig = self._edge_split(decision)
        if fig is not None:  # the head ran: its payload goes over the LAN to the tail
            head_ms = ms * fig.head_ms / fig.robot_ms if fig.robot_ms else ms
            self._report(stamp, 'edge', 'forwarded', model=decision.edge_model,
                         imgsz=decision.edge_imgsz, inference_ms=head_ms,
                         encode_ms=ms - head_ms, total_ms=ms, bytes_sent=fig.payload_bytes,
                         split=decision.split)
            self._on_payload_sent(t, _current, stamp, decision)
        elif probe is not None:
            self._answer(t, stamp, decision, ms - probe.encode_ms,
                         split_probe=decision.split_probe, encode_ms=probe.encode_ms,
                         bytes_sent=probe.payload_bytes)
        else:
            self._answer(t, stamp, decision, ms)
        waiting = self._edge.done()
        if waiting is not None:
            self._start_edge(t, *waiting)

    def _answer(self, t: int, stamp: int, decision: Decision, ms: float, **split: Any) -> None:
        """Publish the edge detector's answer: the robot's, or a split's tail's (middle)."""
        acc = self._accuracy(decision.edge_model, decision.edge_imgsz, stamp)
        self._parts.get(stamp, {})['acc_edge'] = acc
        self.m.on_detections(synthetic_detections(
            self._rng('detect:edge', stamp), stamp, 'edge', decision.edge_model, acc,
            self.s.objects, decision.edge_imgsz), t)
        self._report(stamp, 'edge', 'ok', model=decision.edge_model,
                     imgsz=decision.edge_imgsz, inference_ms=ms,
                     total_ms=ms + split.get('encode_ms', 0.0), **split)

    def _edge_split(self, decision: Decision) -> SplitFigures | None:
        """Return the edge detector's split this decision runs, if it names one."""
        if decision.route is Route.SPLIT or not decision.split:
            return None
        fig = self._split(decision.split)
        return fig if fig.edge else None

    def _on_tail_arrived(self, t: int, _current: Decision, stamp: int, decision: Decision,
                         ms: float) -> None:
        """Take a head's payload on the middle device: its tail worker keeps the newest."""
        start, superseded = self._tail.offer((stamp, decision, ms))
        if superseded is not None:
            self._report(superseded[0], 'edge', 'dropped', reason='superseded',
                         split=superseded[1].split)
        if start:
            self._at(t + int(ms * MS), 'tail_done', stamp, decision, ms)

    def _on_tail_done(self, t: int, _current: Decision, stamp: int, decision: Decision,
                      ms: float) -> None:
        self._answer(t, stamp, decision, ms, split=decision.split)
        waiting = self._tail.done()
        if waiting is not None:
            self._at(t + int(waiting[2] * MS), 'tail_done', *waiting)

    def _start_cloud(self, t: int, stamp: int, decision: Decision) -> None:
        faults = self._faults(t)
        nbytes = int(self.s.q75_bytes * jpeg_factor(decision.jpeg_quality))
        fig = self._split(decision.split) if decision.route is Route.SPLIT else None
        to_cloud = fig is None or fig.to_cloud
        if to_cloud and not self.breaker.allow(t):
            self._report(stamp, 'cloud', 'failed', reason='circuit_open')
            return
        self._in_flight += 1
        mbps = min(self.net.uplink_mbps, faults.get('bandwidth', {}).get('mbps', math.inf))
        delay = faults.get('latency', {}).get('delay_ms', 0.0)
        rtt = self._spread(self.net.rtt_ms, 'rtt', stamp) + delay
        if fig is not None:  # the head runs here, its payload goes out
            parts = self._split_parts(stamp, fig, faults, mbps, delay)
            nbytes, server, total = fig.payload_bytes, parts['cloud'], sum(parts.values())
        else:
            server = self._spread(self.cloud.inference_time_ms(self.s.cloud_model, 640) or 60.0,
                                  'server', stamp)
            total = self.s.encode_ms + self._spread(nbytes * 8 / (mbps * 1e3), 'transfer',
                                                    stamp) + rtt + server
        reason = ''
        if 'cloud_outage' in faults and to_cloud:
            total, reason = rtt, 'connection: refused'
        elif total > decision.deadline_ms or to_cloud and self._rng('loss', stamp).random() < \
                faults.get('loss', {}).get('probability', 0.0):
            total, reason = decision.deadline_ms, 'timeout'
        self._at(t + int(total * MS), 'cloud_done', stamp, decision, total, nbytes, server,
                 reason)

    def _on_cloud_done(self, t: int, _current: Decision, stamp: int, decision: Decision,
                       total: float, nbytes: int, server: float, reason: str,
                       queue: float = 0.0) -> None:
        self._in_flight -= 1
        if decision.route is not Route.SPLIT or self._split(decision.split).to_cloud:
            self._settle(t, reason)
            self.result.cloud_requests += 1
        sent = 0 if reason.startswith('connection') else nbytes  # refused: nothing went out
        self.result.bytes_sent += sent
        parts = self._parts.get(stamp, {})  # the frame may have ended: a probe's answer
        # As the bridge reports: an image request's encode (robot work) apart from its round
        # trip; a split request's names its option and gives the robot's head time.
        split: dict[str, Any] = {'encode_ms': self.s.encode_ms}
        if decision.route is Route.SPLIT:
            split = {'model': SPLIT_PREFIX + decision.split,
                     'inference_ms': self._head_ms.pop(stamp, 0.0)}
        if reason:
            self._report(stamp, 'cloud', 'failed', reason=reason, total_ms=total, bytes_sent=sent,
                         **split)
        else:
            self.result.gpu_seconds += server / 1e3
            acc = self._accuracy(self.s.cloud_model, 0, stamp)
            if decision.route is Route.SPLIT:
                acc = max(0.0, acc - self._split(decision.split).map_loss)
            parts['acc_cloud'] = acc
            self.m.on_detections(synthetic_detections(
                self._rng('detect:cloud', stamp), stamp, 'cloud', self.s.cloud_model, acc,
                self.s.objects), t)
            if decision.route is not Route.SPLIT:  # an image request's is its round trip
                split['inference_ms'] = total - self.s.encode_ms
            self._report(stamp, 'cloud', 'ok', total_ms=total, server_ms=server,
                         bytes_sent=nbytes, queue_ms=queue, **split)
        self._start_pending_cloud(t)

    def _start_pending_cloud(self, t: int) -> None:
        """Send the frame that waited for a free request, with what its deadline has left.

        As the bridge does: the deadline counts from the frame's arrival, so the request's
        timeout (and the service's budget) is shorter by the wait, and a frame that waited past
        its deadline is dropped (``expired``) unsent.
        """
        if self._cloud_pending is None:
            return
        (stamp, decision, arrived), self._cloud_pending = self._cloud_pending, None
        waited_ms = (t - arrived) / MS
        if waited_ms >= decision.deadline_ms:
            self._report(stamp, 'cloud', 'dropped', reason='expired')
            return
        left_ms = decision.deadline_ms - waited_ms
        self._start_cloud(t, stamp, replace(decision, deadline_ms=left_ms))

    def _split_parts(self, stamp: int, fig: SplitFigures, faults: dict[str, dict[str, float]],
                     mbps: float, delay_ms: float) -> dict[str, float]:
        """Draw a split frame's legs (:func:`route_parts`) and keep its robot and tier times."""
        parts = route_parts(fig, self._lan(faults), mbps, delay_ms,
                            lambda ms, purpose: self._spread(ms, purpose, stamp),
                            faults.get('cpu_contention', {}).get('slowdown', 1.0))
        self._head_ms[stamp] = parts['robot']
        if fig.spec.three_tier:
            self.result.tiers[stamp] = parts
        return parts

    def _lan(self, faults: dict[str, dict[str, float]]) -> NetworkProfile:
        """Return the links with the LAN's rate as the faults leave it."""
        mbps = faults.get('lan_bandwidth', {}).get('mbps', math.inf)
        return self.net if mbps >= self.net.lan_mbps else replace(self.net, lan_mbps=mbps)

    def _split(self, name: str) -> SplitFigures:
        """Return a split option's figures on this robot and cloud (read once)."""
        if name not in self._splits:
            self._splits.update(split_figures([name], self.robot, self.cloud, middle=self.middle,
                                              lan_mbps=self.net.lan_mbps,
                                              lan_rtt_ms=self.net.lan_rtt_ms))
        return self._splits[name]

    def _settle(self, t: int, reason: str) -> None:
        """Tell the circuit breaker how a cloud request ended."""
        self.breaker.record(not reason, t)

    def _report(self, stamp: int, source: str, status: str, **fields: Any) -> None:
        self.m.on_report(InferenceReport(stamp_ns=stamp, frame_id='camera', source=source,
                                         status=status, **fields), self._now)

    def _on_wake(self, t: int, _current: Decision) -> None:
        """Nothing but a poll: a frame's deadline passes (the arbiter may publish then)."""
