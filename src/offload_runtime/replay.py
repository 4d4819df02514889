"""Standalone runtime: the whole graph in one process on a rosbag, without ROS.

The same cores as the rclpy nodes run here, under the same topic names and types: a player
thread publishes the bag's frames at their recorded rate into the edge (and cloud) workers, and
the main thread plays the manager and the health monitor and writes every output topic to an
MCAP bag.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
import queue
import sys
import threading
import time
from typing import Any, Callable, Mapping

from adaptive_offload import topics
from adaptive_offload.conversions import (battery_sample, detections_to_message,
                                          health_to_diagnostics, stamp_to_ns, string_message)
from adaptive_offload.datatypes import FaultEvent, FrameRecord, HealthEvent, InferenceReport
from adaptive_offload.errors import ConfigError
from adaptive_offload.frame_worker import DecisionHolder, FrameWorker
from adaptive_offload.params import node_params
from adaptive_offload.typestore import make_typestore, message_types
from cloud_bridge.bridge import CloudBridge, CloudConfig
from edge_inference.backends import BackendOptions, create_backend, DetectorBackend
from edge_inference.inference import build_edge, EdgeConfig
from fault_injection.fault_measures import FaultMeasure, measure
from fault_injection.rig import FaultRig
from fault_injection.scenario import EDGE_KINDS, Scenario
from health_monitor.monitor import HealthConfig, HealthMonitor
from offload_manager.manager import ADAPTIVE, ManagerConfig, OffloadManager
from offload_runtime.bagio import declare_outputs, InputBag, OutputBag
from offload_runtime.embedded_service import EmbeddedService
from offload_runtime.summary import progress_bar, summarize
from rcnn_service.service import ServiceConfig

BackendFactory = Callable[[str, BackendOptions], DetectorBackend]


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

    ``routes`` holds (seconds since the start, route) of every decision issued.
    """

    records: list[FrameRecord]
    events: list[HealthEvent]
    summary: dict[str, Any]
    out: Path
    wall_s: float
    faults: list[FaultMeasure] = field(default_factory=list)
    reports: list[InferenceReport] = field(default_factory=list)
    routes: list[tuple[float, str]] = field(default_factory=list)


def _config(options: ReplayOptions, node: str) -> dict[str, Any]:
    values = node_params(options.params, node)
    values.update(options.overrides.get(node, {}))
    return values


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
        edge_cfg = EdgeConfig.from_params(_config(options, 'edge_inference'))
        manager_cfg = ManagerConfig.from_params(_config(options, 'offload_manager'))
        health_cfg = HealthConfig.from_params(_config(options, 'health_monitor'))
        cloud_values = _config(options, 'cloud_bridge')
        wants_cloud = manager_cfg.policy in ('cloud-only', *ADAPTIVE) or (
            manager_cfg.policy == 'static' and manager_cfg.static_route != 'edge')
        embedded = wants_cloud and not cloud_values.get('url')
        if embedded:
            # The accuracy prior must describe the model this run serves, not the params' one.
            manager_cfg = replace(manager_cfg, cloud_model=options.service.arch)
        self._service: EmbeddedService | None = None
        self._battery_topic = manager_cfg.battery_topic \
            if manager_cfg.energy_reader == 'battery' else None
        self._rig = FaultRig(options.scenario, options.injector, clock, sleep) \
            if options.scenario is not None else None
        self._origin = clock()
        self._timeline: list[tuple[float, FrameRecord]] = []
        self._routes: list[tuple[float, str]] = []
        self._reports: list[tuple[float, InferenceReport]] = []
        self.health: HealthMonitor | None = None
        self._input = InputBag(options.bag, options.topic)
        try:
            self._store = make_typestore(options.distro)
            self._types = message_types(self._store)
            self.manager = OffloadManager(manager_cfg)
            self.edge = build_edge(edge_cfg, backend_factory)
            self.health = HealthMonitor(health_cfg, clock())
            self._edge_source = edge_cfg.source_name
            self._events: queue.Queue[tuple[str, Any]] = queue.Queue()
            edge_holder = DecisionHolder(edge_cfg.fallback_decision())
            self._workers = [FrameWorker(
                self._rig.wrap_edge(self.edge) if self._rig else self.edge, edge_holder,
                self._emitter(topics.edge_topic(self._edge_source, 'detections'),
                              topics.edge_topic(self._edge_source, 'telemetry')), clock)]
            self._holders = [edge_holder]
            self._cloud: CloudBridge | None = None
            if self._rig and self._rig.runs_service and cloud_values.get('url'):
                raise ConfigError('process and netns faults act on the service this run '
                                  'starts; drop the cloud URL')
            if embedded:
                # The embedded default: the real service on loopback, for this run only.
                if self._rig and self._rig.runs_service:
                    url = self._rig.start_service(replace(options.service, port=0))
                else:
                    self._service = EmbeddedService(options.service)
                    url = self._service.url
                cloud_values = {**cloud_values, 'url': url, 'token': options.service.token,
                                'model': options.service.model_name}
            if cloud_values.get('url'):
                if self._rig:
                    cloud_values = {**cloud_values,
                                    'url': self._rig.service_url(cloud_values['url'])}
                cloud_cfg = CloudConfig.from_params(cloud_values)
                transport = cloud_cfg.make_transport()
                if self._rig:
                    transport = self._rig.wrap_transport(transport)
                self._cloud = cloud_cfg.make_bridge(transport)
                holder = DecisionHolder(edge_cfg.fallback_decision())
                self._workers.append(FrameWorker(
                    self._cloud, holder,
                    self._emitter(topics.CLOUD_DETECTIONS, topics.CLOUD_TELEMETRY), clock,
                    workers=cloud_cfg.max_in_flight, pending=cloud_cfg.max_pending))
                self._holders.append(holder)
            elif options.scenario is not None and options.scenario.kinds() - EDGE_KINDS - \
                    {'manager_death'}:
                raise ConfigError(f'scenario {options.scenario.name!r} injects cloud faults, '
                                  f'but policy {manager_cfg.policy!r} never uses the cloud')
        except BaseException:
            self._close_inputs()
            raise
        self._records: list[FrameRecord] = []
        self._health_events: list[HealthEvent] = []
        self._played = 0
        self._faults_told: set[tuple[str, float, str]] = set()
        self._map = (0, 0)  # (wall ns, bag ns) of the last played frame

    def _emitter(self, det_topic: str, tel_topic: str) -> Callable[..., None]:
        def emit(_msg: Any, dets: Any, report: Any) -> None:
            self._events.put(('result', (det_topic, tel_topic, dets, report)))
        return emit

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
            if self._service is not None:
                self._service.wait_ready(self._opts.service_timeout_s, self._clock, self._sleep)
            out = OutputBag(self._opts.out, self._store)
        except BaseException:
            self._close_inputs()
            raise
        try:
            declare_outputs(out, self._input.connections,
                            [self._edge_source] + (['cloud'] if self._cloud else []))
            self._origin = self._clock()
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
                            faults, [r for _, r in self._reports], self._routes)

    def _close_inputs(self) -> None:
        self._input.close()
        if self.health is not None:
            self.health.close()
        if self._rig is not None:
            self._rig.close()
        if self._service is not None:
            self._service.shutdown()
            self._service = None

    def _play(self, out: OutputBag) -> None:
        """Player thread: publish frames at their recorded times (or back to back)."""
        first_bag = first_wall = None
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
                self._events.put(('copy', raw))
                try:
                    msg = self._store.deserialize_cdr(raw.data, raw.connection.msgtype)
                except Exception as err:  # any malformed CDR must become a drop record
                    self._events.put(('unreadable', f'deserialize_error: {err}'))
                    continue
                now = self._clock()
                self._events.put(('frame', (msg, now, raw.timestamp)))
                for worker in self._workers:
                    worker.submit(msg)
        finally:
            self._events.put(('done', None))

    def _loop(self, out: OutputBag, player: threading.Thread) -> None:
        player_done = False
        last_progress = 0
        while True:
            try:
                kind, payload = self._events.get(timeout=0.005)
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
            if self._opts.progress and now - last_progress > 250_000_000:
                self._progress(now)
                last_progress = now
            if player_done and self.manager.pending == 0 and self._events.empty():
                break
        player.join()
        self._write_outcomes(out, self.manager.poll(self._clock(), final=True))
        self._publish_health(out, self._clock(), final=True)
        if self._opts.progress:
            self._progress(self._clock())
            sys.stderr.write('\n')

    def _handle(self, out: OutputBag, kind: str, payload: Any) -> bool:
        now = self._clock()
        if kind == 'copy':
            out.write_raw(payload.connection.topic, payload.data, payload.timestamp)
            if payload.connection.topic == self._battery_topic:
                self._battery(payload)
        elif kind == 'frame':
            msg, arrival, bag_ns = payload
            self._map = (arrival, bag_ns)
            self.health.message(self._input_topic_for_health(), arrival)
            outcome = self.manager.frame_arrived(stamp_to_ns(msg.header.stamp),
                                                 str(msg.header.frame_id), arrival)
            if outcome is not None:
                self._write_outcomes(out, [outcome])
        elif kind == 'unreadable':
            self._write_outcomes(out, [self.manager.frame_unreadable(payload, now)])
        elif kind == 'result':
            det_topic, tel_topic, dets, report = payload
            stamp = self._bag_time(now)
            if dets is not None:
                self.manager.on_detections(dets, now)
                out.write(det_topic, detections_to_message(self._types, dets), stamp)
                self.health.message(det_topic, now)
            self.manager.on_report(report)
            self.health.report(report)
            self._reports.append(((now - self._origin) / 1e9, report))
            out.write(tel_topic, string_message(self._types, report.to_json()), stamp)
        return kind == 'done'

    def _battery(self, raw: Any) -> None:
        try:
            msg = self._store.deserialize_cdr(raw.data, raw.connection.msgtype)
            sample = battery_sample(msg)
        except Exception:  # noqa: BLE001 - a bad sample is skipped; the bag copy keeps it
            return
        self.manager.on_battery(*sample, self._clock())

    def _input_topic_for_health(self) -> str:
        topic = self._input.topic
        return topic[:-len('/compressed')] if topic.endswith('/compressed') else topic

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
                    out.write(topics.HEALTH_FAULTS, string_message(self._types, event.to_json()),
                              self._bag_time(now))

    def _publish_decision(self, out: OutputBag, now: int) -> None:
        decision = self.manager.tick(now)
        if decision is None:
            return
        for holder in self._holders:
            holder.update(decision)
        self._routes.append(((now - self._origin) / 1e9, decision.route.value))
        out.write(topics.DECISION, string_message(self._types, decision.to_json()),
                  self._bag_time(now))
        self.health.message(topics.DECISION, now)

    def _publish_health(self, out: OutputBag, now: int, final: bool = False) -> None:
        due = self.health.run(now) if final else self.health.poll(now)
        if due is None:
            return
        statuses, events = due
        stamp = self._bag_time(now)
        out.write(topics.DIAGNOSTICS, health_to_diagnostics(self._types, statuses, stamp), stamp)
        for event in events:
            self._health_events.append(event)
            self.manager.on_health_event(event)
            out.write(topics.HEALTH_EVENTS, string_message(self._types, event.to_json()), stamp)

    def _write_outcomes(self, out: OutputBag, outcomes: list[Any]) -> None:
        now = self._clock()
        stamp = self._bag_time(now)
        for outcome in outcomes:
            self._records.append(outcome.record)
            self._timeline.append(((now - self._origin) / 1e9, outcome.record))
            if outcome.result is not None:
                out.write(topics.DETECTIONS, detections_to_message(self._types, outcome.result),
                          stamp)
                self.health.message(topics.DETECTIONS, now)
            out.write(topics.FRAMES, string_message(self._types, outcome.record.to_json()), stamp)

    def _progress(self, now: int) -> None:
        total = self._input.frame_count
        if self._opts.max_frames:
            total = min(total, self._opts.max_frames)
        sys.stderr.write(f'\r{progress_bar(len(self._records), total)}')
        sys.stderr.flush()
