"""Standalone runtime: the whole graph in one process on a rosbag, without ROS.

The same cores as the rclpy nodes run here, wired by the same graph declaration
(:mod:`offload_runtime.replay_graph`): a player thread publishes the bag's frames at their
recorded rate into the edge (and cloud) workers, and the main thread plays the manager and the
health monitor and writes every output topic to an MCAP bag. :meth:`Replay.stop` (what
Ctrl-C calls, see :mod:`offload_runtime.interrupts`) ends a run early with the same result and a
finalised bag, and every wait is sliced so that the stop is seen within a tenth of a second.
"""

from __future__ import annotations

import queue
import sys
import threading
import time
from typing import Any, Callable

from adaptive_offload.datatypes import FrameRecord, InferenceReport
from adaptive_offload.errors import ConfigError
from adaptive_offload.graph_codec import BatterySample, Diagnostics, encode_output
from adaptive_offload.health_records import HealthEvent
from adaptive_offload.heap import frozen_start_up
from adaptive_offload.scene_difficulty import DIFFICULTY_KEY, parse_difficulty
from adaptive_offload.typestore import make_typestore, message_types
from edge_inference.backends import create_backend
from fault_injection.fault_measures import measure
from fault_injection.rig import FaultRig
from fault_injection.scenario import Announcer
from offload_runtime.accuracy_tracking import track, TrackingCollector
from offload_runtime.bagio import declare_outputs, InputBag, OutputBag
from offload_runtime.ground_truth import load_truth, RunScorer
from offload_runtime.interrupts import StopFlag
from offload_runtime.replay_graph import BackendFactory, quiet, ReplayGraph
from offload_runtime.replay_options import ReplayOptions, ReplayResult
from offload_runtime.summary import cloud_answers, progress_bar, summarize

__all__ = ['Replay', 'ReplayOptions', 'ReplayResult']  # options and result live beside

# After a stop, how long frames in flight (a cloud request, an edge inference) may take to
# finish; the manager then closes what is left, as at the end of the bag.
DRAIN_S = 2.0
POLL_S = 0.005  # the main loop's period while a part of it cannot tell when it is next due
MAX_WAIT_S = 0.1  # its longest sleep otherwise, so that a clock that jumps is still followed
PROGRESS_NS = 250_000_000


class Replay:
    """One replay run; construct, then call :meth:`run`.

    Args:
        options: What to replay.
        backend_factory: Builds the edge detector (tests inject a fake).
        clock: Monotonic nanosecond clock.
        sleep: Sleeps seconds (the player's pacing; tests inject a fake).
        status: Told, one line each, of the long steps: model load and warm-up, the embedded
            service's start-up, the start of playing.

    Raises:
        AdaptiveOffloadError: For bad options, an unusable bag or a model that does not load.
    """

    def __init__(self, options: ReplayOptions, backend_factory: BackendFactory = create_backend,
                 clock: Callable[[], int] = time.monotonic_ns,
                 sleep: Callable[[float], None] = time.sleep,
                 status: Callable[[str], Any] = quiet) -> None:
        if options.rate < 0 or options.max_frames < 0:
            raise ConfigError('rate and max-frames must be >= 0')
        self._opts = options
        self._clock = clock
        self._sleep = sleep
        self._stop = StopFlag(clock, sleep)
        self._rig = FaultRig(options.scenario, options.injector, clock, sleep) \
            if options.scenario is not None else None
        self._origin = clock()
        self._timeline: list[tuple[float, FrameRecord]] = []
        self._routes: list[tuple[float, str]] = []
        self._reports: list[tuple[float, InferenceReport]] = []
        # The C queue: Queue runs a Python Condition under the GIL on every put and get.
        self._events: queue.SimpleQueue[tuple[str, Any]] = queue.SimpleQueue()
        self._input = InputBag(options.bag, options.topic)
        self._custom = self._input.custom_data  # read while open: closing forgets it
        try:
            self._store = make_typestore(options.distro)
            self._types = message_types(self._store)
            truth = load_truth(options.bag, self._store)
            self._scorer = RunScorer(truth)
            self.graph = ReplayGraph(
                options.params, options.overrides, options.params_file, self._input.topic,
                backend_factory, clock, (options.service, *options.service_alternatives),
                self._rig, options.scenario,
                lambda node, outputs: self._events.put(('out', (node, outputs))), status)
            self._tracking = TrackingCollector(truth, self.graph.edge_source)
        except BaseException:
            self._close_inputs(None)
            raise
        self.manager = self.graph.manager
        self.health = self.graph.health
        self._workers = self.graph.workers
        self._records: list[FrameRecord] = []
        self._health_events: list[HealthEvent] = []
        self._played = 0
        self._announcer = Announcer(options.scenario) if options.scenario is not None else None
        self._status = status
        self._span = [0, 0]  # clock at the player's start and at the last record written
        self._map = (0, 0)  # (wall ns, bag ns) of the last played frame
        self._out: OutputBag | None = None

    def stop(self) -> None:
        """Stop playing: :meth:`run` drains the frames in flight and returns what it has.

        Thread-safe, idempotent, and safe to call from a signal handler.
        """
        self._stop.request()

    def _bag_time(self, now_ns: int) -> int:
        wall, bag = self._map
        return bag + int((now_ns - wall) * (self._opts.rate or 1.0))

    def run(self) -> ReplayResult:
        """Play the bag through the graph and write the output bag.

        Returns:
            Records, health events, the summary and where the output went.
        """
        with frozen_start_up():
            return self._run()

    def _run(self) -> ReplayResult:
        start = self._clock()
        try:
            for what, service in (('cloud', self.graph.service),
                                  ("middle device's", self.graph.middle)):
                if service is not None:
                    service.wait_ready(self._opts.service_timeout_s, self._clock, self._sleep,
                                       self._stop.is_set)
                    self._status(f'{what} service ready at {service.url}')
            out = OutputBag(self._opts.out, self._store, self._clock)
            for key, value in self._custom.items():
                out.set_custom_data(key, value)
        except BaseException:
            self._close_inputs(self.graph)
            raise
        player: threading.Thread | None = None
        try:
            declare_outputs(out, self._input.connections, self.graph.outputs())
            for conn in self._input.connections:  # their deserializers too (see add_topic)
                if conn.topic in (self._input.topic, self.graph.battery_topic) and \
                        conn.msgtype in self._store.fielddefs:
                    self._store.get_msgdef(conn.msgtype)
            self._origin = self._clock()
            # Until the first frame maps the clock onto the bag's timeline, what is written
            # (labels, the first decision) starts at the input's start, not at the clock's
            # epoch: an output bag must play with no gap before its frames.
            self._map = (self._origin, self._input.start_ns)
            self._publish(out, self.graph.detector, 'label_info', self.graph.label_map(),
                          self._origin)
            if self._rig is not None:
                self._rig.start(self._origin)
            frames = min(self._input.frame_count, self._opts.max_frames or self._input.frame_count)
            pace = f'at {self._opts.rate:g}x their recorded rate' if self._opts.rate else \
                'as fast as the graph takes them'
            self._status(f'playing {frames} frames of {self._opts.bag} {pace}')
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
            if player is not None and player.is_alive():  # an exception ended the loop
                self._stop.request()
                player.join(DRAIN_S)  # before its bag is closed under it
            for worker in self._workers:
                worker.stop(DRAIN_S if self._stop.is_set() else 30.0)
            self._close_inputs(self.graph)
            out.close()
        wall_s = (self._clock() - start) / 1e9
        records = sorted(self._records, key=lambda r: r.index)
        summary = summarize(records, wall_s)
        summary['frames_lost'] = self._played - len(records)
        summary['cloud'] = cloud_answers([r for _, r in self._reports])
        summary['edge_split'] = self.graph.edge_split([r for _, r in self._reports])
        summary.update(self._scorer.summary())
        if 'map' in summary:
            summary['accuracy_tracking'] = track(self._tracking.frames(), self._changes(),
                                                 self._opts.tracking).to_dict()
        events = [((e.stamp_ns - self._origin) / 1e9, e) for e in self._health_events]
        faults = measure(self._opts.scenario, self._timeline, self._reports, events) \
            if self._opts.scenario is not None else []
        return ReplayResult(records, self._health_events, summary, self._opts.out, wall_s,
                            faults, [r for _, r in self._reports], self._routes,
                            self._stop.is_set(),
                            max(0, self._span[1] - self._span[0]) / 1e9)

    def _changes(self) -> list[tuple[float, str]] | None:
        """Return the changes of difficulty on the bag's timeline; None to find them."""
        text = self._custom.get(DIFFICULTY_KEY)
        if text is None:
            return None
        try:
            timeline = parse_difficulty(text)
        except ConfigError:  # a timeline this version cannot read: found in the windows
            return None
        return [(t, f'{before} -> {after}') for t, before, after in timeline.changes()]

    def _close_inputs(self, graph: ReplayGraph | None) -> None:
        """Close the input bag, ``graph`` (None when building it failed) and the fault rig."""
        self._input.close()
        if graph is not None:
            graph.close()
        if self._rig is not None:
            self._rig.close()

    def _play(self, out: OutputBag) -> None:
        """Player thread: publish frames at their recorded times (or back to back)."""
        first: tuple[int, int] | None = None  # (bag ns, wall ns) of the first message
        self._span[0] = self._clock()
        try:
            for raw in self._input.messages():
                if self._stop.is_set():
                    break
                is_frame = raw.connection.topic == self._input.topic
                if is_frame and self._opts.max_frames and self._played >= self._opts.max_frames:
                    break
                if self._opts.rate > 0:  # every topic at its time: a battery sample is timed
                    if first is None:
                        first = (raw.timestamp, self._clock())
                    first_bag, first_wall = first
                    due = first_wall + (raw.timestamp - first_bag) / self._opts.rate
                    if not self._stop.sleep_until(int(due)):
                        break
                elif is_frame and not self._stop.wait(self.graph.wait_taken):
                    break
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
            # An injected manager death silences the decisions, as a dead manager would.
            if not self.graph.faults.active('manager_death'):
                self._publish_decision(out, now)
            self._publish_health(out, now)
            self._write_outcomes(out, self.manager.poll(now))
            out.flush_due()
            if self._opts.progress and now - last_progress > PROGRESS_NS:
                self._progress(now)
                last_progress = now
            if player_done and self._events.empty() and (
                    self.manager.pending == 0 or self._stop.expired(now, DRAIN_S)):
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
                elif name == 'detections':  # the edge source's are kept
                    self._tracking.add_detections(record)
                self._publish(out, node, name, record, now)
        return kind == 'done'

    def _publish(self, out: OutputBag, node: str, name: str, record: Any, now: int) -> None:
        """Write a node's output to the bag and give it to the inputs subscribed to it."""
        topic = self.graph.topic_of(node, name)
        message = encode_output(self._types, self.graph.port_of(node, name), record)
        out.write(topic, message, self._bag_time(now))
        self.graph.handle(topic, record, now, published=message)

    def _battery(self, raw: Any) -> None:
        try:
            msg = self._store.deserialize_cdr(raw.data, raw.connection.msgtype)
            sample = BatterySample(float(msg.voltage), float(msg.current))
        except Exception:  # noqa: BLE001 - a bad sample is skipped; the bag copy keeps it
            return
        self.graph.handle(self.graph.battery_topic, sample, self._clock())

    def _publish_faults(self, out: OutputBag, now: int) -> None:
        """Announce on /health/faults each scenario fault that starts or ends now."""
        if self._announcer is None:
            return
        for _, event in self._announcer.due((now - self._origin) / 1e9):
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
            record = self._scorer.score(outcome.record, outcome.result)
            self._tracking.add_record(record)
            self._records.append(record)
            self._timeline.append(((now - self._origin) / 1e9, record))
            if outcome.result is not None:
                self._publish(out, 'offload_manager', 'detections', outcome.result, now)
            self._publish(out, 'offload_manager', 'frames', record, now)
            self._publish(out, 'offload_manager', 'annotations', outcome.shown(), now)
        self._span[1] = self._clock()

    def _progress(self, now: int) -> None:
        total = self._input.frame_count
        if self._opts.max_frames:
            total = min(total, self._opts.max_frames)
        sys.stderr.write(f'\r{progress_bar(len(self._records), total)}')
        sys.stderr.flush()
