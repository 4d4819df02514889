"""Standalone runtime: the whole graph in one process on a rosbag, without ROS.

The same cores as the rclpy nodes run here, wired by the same graph declaration
(:mod:`offload_runtime.replay_graph`): a player thread publishes the bag's frames at their
recorded rate into the edge (and cloud) workers, and the main thread plays the manager and the
health monitor and writes every output topic to an MCAP bag.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
import queue
import sys
import threading
import time
from typing import Any, Callable, Mapping

from adaptive_offload.datatypes import FaultEvent, FrameRecord, HealthEvent, InferenceReport
from adaptive_offload.errors import ConfigError
from adaptive_offload.graph_codec import BatterySample, Diagnostics, encode_output, LabelMap
from adaptive_offload.typestore import make_typestore, message_types
from edge_inference.backends import create_backend
from fault_injection.fault_measures import FaultMeasure, measure
from fault_injection.rig import FaultRig
from fault_injection.scenario import Scenario
from offload_runtime.bagio import declare_outputs, InputBag, OutputBag
from offload_runtime.replay_graph import BackendFactory, ReplayGraph
from offload_runtime.summary import progress_bar, summarize
from rcnn_service.service import ServiceConfig

POLL_S = 0.005  # the main loop's period while a part of it cannot tell when it is next due
MAX_WAIT_S = 0.1  # its longest sleep otherwise, so that a clock that jumps is still followed
PROGRESS_NS = 250_000_000


@dataclass(frozen=True)
class ReplayOptions:
    """What to replay and how.

    Attributes:
        bag: Input bag.
        out: Output bag folder (must not exist).
        rate: Playback rate factor; 0 plays as fast as the graph can take frames.
        max_frames: Stop after this many frames; 0 plays all.
        topic: Image topic; empty picks the bag's only image topic.
        params: Parameter file content (``{node: {param: value}}``).
        params_file: Where ``params`` came from, named when a parameter is refused.
        overrides: Per-node parameter overrides applied over ``params``.
        distro: ROS distribution whose message definitions are written.
        progress: Show a progress line on stderr.
        service: The embedded cloud service started when a cloud policy has no
            ``cloud_bridge`` url (host and port are always loopback and free).
        service_timeout_s: Longest wait for the embedded service to be ready.
        scenario: Faults injected into the run, timed from its start; each is measured (time
            to detect and recover, frames late and dropped).
        injector: Where network faults are injected: ``client``, ``proxy`` or ``netns``.
    """

    bag: Path
    out: Path
    rate: float = 1.0
    max_frames: int = 0
    topic: str = ''
    params: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    params_file: str = ''
    overrides: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    distro: str = 'jazzy'
    progress: bool = False
    service: ServiceConfig = field(default_factory=ServiceConfig)
    service_timeout_s: float = 300.0
    scenario: Scenario | None = None
    injector: str = 'client'


@dataclass
class ReplayResult:
    """What a replay produced (records in frame arrival order).

    ``routes`` holds (seconds since the start, route) of every decision issued. ``frames_s``
    is the part of ``wall_s`` from the player's start to the last record written: the run
    without its start-up (opening the output bag, declaring its topics) and finish (stopping
    the workers, closing the bag).
    """

    records: list[FrameRecord]
    events: list[HealthEvent]
    summary: dict[str, Any]
    out: Path
    wall_s: float
    faults: list[FaultMeasure] = field(default_factory=list)
    reports: list[InferenceReport] = field(default_factory=list)
    routes: list[tuple[float, str]] = field(default_factory=list)
    frames_s: float = 0.0


class Replay:
    """One replay run; construct, then call :meth:`run`.

    Args:
        options: What to replay.
        backend_factory: Builds the edge detector (tests inject a fake).
        clock: Monotonic nanosecond clock.
        sleep: Sleeps seconds (the player's pacing; tests inject a fake).

    Raises:
        AdaptiveOffloadError: For bad options, an unusable bag or a model that does not load.
    """

    def __init__(self, options: ReplayOptions, backend_factory: BackendFactory = create_backend,
                 clock: Callable[[], int] = time.monotonic_ns,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        if options.rate < 0 or options.max_frames < 0:
            raise ConfigError('rate and max-frames must be >= 0')
        self._opts = options
        self._clock = clock
        self._sleep = sleep
        self._rig = FaultRig(options.scenario, options.injector, clock, sleep) \
            if options.scenario is not None else None
        self._origin = clock()
        self._timeline: list[tuple[float, FrameRecord]] = []
        self._routes: list[tuple[float, str]] = []
        self._reports: list[tuple[float, InferenceReport]] = []
        # The C queue: Queue runs a Python Condition under the GIL on every put and get.
        self._events: queue.SimpleQueue[tuple[str, Any]] = queue.SimpleQueue()
        self.graph: ReplayGraph | None = None
        self._input = InputBag(options.bag, options.topic)
        try:
            self._store = make_typestore(options.distro)
            self._types = message_types(self._store)
            self.graph = ReplayGraph(
                options.params, options.overrides, options.params_file, self._input.topic,
                backend_factory, clock, options.service, self._rig, options.scenario,
                lambda node, outputs: self._events.put(('out', (node, outputs))))
        except BaseException:
            self._close_inputs()
            raise
        self.manager = self.graph.manager
        self.edge = self.graph.edge
        self.health = self.graph.health
        self._workers = self.graph.workers
        self._records: list[FrameRecord] = []
        self._health_events: list[HealthEvent] = []
        self._played = 0
        self._span = [0, 0]  # clock at the player's start and at the last record written
        self._faults_told: set[tuple[str, float, str]] = set()
        self._map = (0, 0)  # (wall ns, bag ns) of the last played frame
        self._out: OutputBag | None = None

    def _bag_time(self, now_ns: int) -> int:
        wall, bag = self._map
        return bag + int((now_ns - wall) * (self._opts.rate or 1.0))

    def run(self) -> ReplayResult:
        """Play the bag through the graph and write the output bag.

        Returns:
            Records, health events, the summary and where the output went.
        """
        start = self._clock()
        try:
            if self.graph.service is not None:
                self.graph.service.wait_ready(self._opts.service_timeout_s, self._clock,
                                              self._sleep)
            out = OutputBag(self._opts.out, self._store)
        except BaseException:
            self._close_inputs()
            raise
        try:
            declare_outputs(out, self._input.connections, self.graph.outputs())
            for conn in self._input.connections:  # their deserializers too (see add_topic)
                if conn.topic in (self._input.topic, self.graph.battery_topic) and \
                        conn.msgtype in self._store.fielddefs:
                    self._store.get_msgdef(conn.msgtype)
            self._origin = self._clock()
            self._publish(out, 'edge_inference', 'label_info', LabelMap(
                self.edge.models.names_of_current(), self.edge.config.conf, 0), self._origin)
            if self._rig is not None:
                self._rig.start(self._origin)
            player = threading.Thread(target=self._play, args=(out,), name='player', daemon=True)
            prober = self.health.prober(self._clock)
            if prober is not None:
                prober.start()
            for worker in self._workers:
                worker.start()
            self._publish_decision(out, self._clock())
            player.start()
            self._loop(out, player)
            if prober is not None:
                prober.stop()
        finally:
            for worker in self._workers:
                worker.stop()
            self._close_inputs()
            out.close()
        wall_s = (self._clock() - start) / 1e9
        records = sorted(self._records, key=lambda r: r.index)
        summary = summarize(records, wall_s)
        summary['frames_lost'] = self._played - len(records)
        events = [((e.stamp_ns - self._origin) / 1e9, e) for e in self._health_events]
        faults = measure(self._opts.scenario, self._timeline, self._reports, events) \
            if self._opts.scenario is not None else []
        return ReplayResult(records, self._health_events, summary, self._opts.out, wall_s,
                            faults, [r for _, r in self._reports], self._routes,
                            max(0, self._span[1] - self._span[0]) / 1e9)

    def _close_inputs(self) -> None:
        self._input.close()
        if self.graph is not None:
            self.graph.close()
        if self._rig is not None:
            self._rig.close()

    def _play(self, out: OutputBag) -> None:
        """Player thread: publish frames at their recorded times (or back to back)."""
        first_bag = first_wall = None
        self._span[0] = self._clock()
        try:
            for raw in self._input.messages():
                is_frame = raw.connection.topic == self._input.topic
                if is_frame and self._opts.max_frames and self._played >= self._opts.max_frames:
                    break
                if self._opts.rate > 0:  # every topic at its time: a battery sample is timed
                    if first_bag is None:
                        first_bag, first_wall = raw.timestamp, self._clock()
                    due = first_wall + (raw.timestamp - first_bag) / self._opts.rate
                    ahead_s = (due - self._clock()) / 1e9
                    if ahead_s > 0:
                        self._sleep(ahead_s)
                elif is_frame:
                    for worker in self._workers:
                        worker.wait_taken()
                if not is_frame:
                    self._events.put(('copy', raw))
                    continue
                self._played += 1
                try:
                    msg = self._store.deserialize_cdr(raw.data, raw.connection.msgtype)
                except Exception as err:  # any malformed CDR must become a drop record
                    self._events.put(('copy', raw))
                    self._events.put(('unreadable', f'deserialize_error: {err}'))
                    continue
                now = self._clock()
                # The frame carries its own copy: one event, so one wake-up of the main loop.
                self._events.put(('frame', (raw, msg, now)))
                self.graph.submit_frame(self._input.topic, msg, now)
        finally:
            self._events.put(('done', None))

    def _loop(self, out: OutputBag, player: threading.Thread) -> None:
        player_done = False
        last_progress = 0
        wait_s = POLL_S
        while True:
            try:
                kind, payload = self._events.get(timeout=wait_s)
                player_done |= self._handle(out, kind, payload)
                while not self._events.empty():
                    player_done |= self._handle(out, *self._events.get_nowait())
            except queue.Empty:
                pass
            now = self._clock()
            self._publish_faults(out, now)
            if self._rig is not None:
                self._rig.tick()
            if self._rig is None or self._rig.manager_alive():
                self._publish_decision(out, now)
            self._publish_health(out, now)
            self._write_outcomes(out, self.manager.poll(now))
            if self._opts.progress and now - last_progress > PROGRESS_NS:
                self._progress(now)
                last_progress = now
            if player_done and self.manager.pending == 0 and self._events.empty():
                break
            wait_s = self._wait_s(now, last_progress)
        player.join()
        self._write_outcomes(out, self.manager.poll(self._clock(), final=True))
        self._publish_health(out, self._clock(), final=True)
        if self._opts.progress:
            self._progress(self._clock())
            sys.stderr.write('\n')

    def _wait_s(self, now: int, last_progress: int) -> float:
        """Seconds to wait for an event before the timed parts are next due.

        Polling at a fixed period woke the loop several times a frame for nothing, and each
        wake-up ran the manager and the health checks holding the GIL, which the inference
        thread needs between its operators.
        """
        if self._rig is not None:  # faults start and end, and kill the manager, by no event
            return POLL_S
        health = self.health.next_due_ns(now)
        if health is None:  # a readiness prober feeds its check by no event either
            return POLL_S
        due = min(self.manager.next_due_ns(now), health)
        if self._opts.progress:
            due = min(due, last_progress + PROGRESS_NS + 1)
        return min(max(due - self._clock(), 0) / 1e9, MAX_WAIT_S)

    def _handle(self, out: OutputBag, kind: str, payload: Any) -> bool:
        now = self._clock()
        if kind == 'copy':
            out.write_raw(payload.connection.topic, payload.data, payload.timestamp)
            if payload.connection.topic == self.graph.battery_topic:
                self._battery(payload)
        elif kind == 'frame':
            raw, msg, arrival = payload
            out.write_raw(raw.connection.topic, raw.data, raw.timestamp)
            self._map = (arrival, raw.timestamp)
            self.graph.handle(self._input.topic, None, arrival, message=msg)
        elif kind == 'unreadable':
            self._write_outcomes(out, [self.manager.frame_unreadable(payload, now)])
        elif kind == 'out':
            node, outputs = payload
            for name, record in outputs:
                if name == 'telemetry':
                    self._reports.append(((now - self._origin) / 1e9, record))
                self._publish(out, node, name, record, now)
        return kind == 'done'

    def _publish(self, out: OutputBag, node: str, name: str, record: Any, now: int) -> None:
        """Write a node's output to the bag and give it to the inputs subscribed to it."""
        topic = self.graph.topic_of(node, name)
        out.write(topic, encode_output(self._types, self.graph.port_of(node, name), record),
                  self._bag_time(now))
        self.graph.handle(topic, record, now)

    def _battery(self, raw: Any) -> None:
        try:
            msg = self._store.deserialize_cdr(raw.data, raw.connection.msgtype)
            sample = BatterySample(float(msg.voltage), float(msg.current))
        except Exception:  # noqa: BLE001 - a bad sample is skipped; the bag copy keeps it
            return
        self.graph.handle(self.graph.battery_topic, sample, self._clock())

    def _publish_faults(self, out: OutputBag, now: int) -> None:
        """Write a FaultEvent when a scenario fault starts or ends."""
        if self._opts.scenario is None:
            return
        t_s = (now - self._origin) / 1e9
        for fault in self._opts.scenario.faults:
            for phase, at in (('start', fault.start_s), ('end', fault.end_s)):
                key = (fault.kind, fault.start_s, phase)
                if t_s >= at and key not in self._faults_told:
                    self._faults_told.add(key)
                    event = FaultEvent(t_s=at, kind=fault.kind, phase=phase,
                                       params=dict(fault.params))
                    self._publish(out, 'health_monitor', 'faults', event, now)

    def _publish_decision(self, out: OutputBag, now: int) -> None:
        decision = self.manager.tick(now)
        if decision is None:
            return
        self._routes.append(((now - self._origin) / 1e9, decision.route.value))
        self._publish(out, 'offload_manager', 'decision', decision, now)

    def _publish_health(self, out: OutputBag, now: int, final: bool = False) -> None:
        due = self.health.run(now) if final else self.health.poll(now)
        if due is None:
            return
        statuses, events = due
        self._publish(out, 'health_monitor', 'diagnostics',
                      Diagnostics(statuses, self._bag_time(now)), now)
        for event in events:
            self._health_events.append(event)
            self._publish(out, 'health_monitor', 'events', event, now)

    def _write_outcomes(self, out: OutputBag, outcomes: list[Any]) -> None:
        if not outcomes:
            return
        now = self._clock()
        for outcome in outcomes:
            self._records.append(outcome.record)
            self._timeline.append(((now - self._origin) / 1e9, outcome.record))
            if outcome.result is not None:
                self._publish(out, 'offload_manager', 'detections', outcome.result, now)
            self._publish(out, 'offload_manager', 'frames', outcome.record, now)
        self._span[1] = self._clock()

    def _progress(self, now: int) -> None:
        total = self._input.frame_count
        if self._opts.max_frames:
            total = min(total, self._opts.max_frames)
        sys.stderr.write(f'\r{progress_bar(len(self._records), total)}')
        sys.stderr.flush()
