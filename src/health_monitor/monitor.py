"""Health monitor core: runs the checks, reports statuses and level changes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping

from adaptive_offload.datatypes import Decision, InferenceReport
from adaptive_offload.errors import ConfigError
from adaptive_offload.failure_log import FailureLog
from adaptive_offload.health_records import HealthEvent, HealthStatus
from adaptive_offload.params import ParameterSpec, resolve
from fault_injection.live import parse_address, Rehearsal
from fault_injection.scenario import load_scenario
from health_monitor.checks import CloudCheck, GoalsCheck, HealthCheck, TopicRateCheck
from health_monitor.link_checks import (ANOMALY_DETECTORS, BandwidthCheck, http_ready_probe,
                                        ReadinessCheck, ReadinessProber)

PARAMETERS = (
    ParameterSpec('monitored_topics',
                  ['/camera/image_raw', '/edge/detections', '/detections', '/offload/decision'],
                  'Topics whose heartbeat and rate are watched.'),
    ParameterSpec('monitored_types',
                  ['sensor_msgs/msg/Image', 'vision_msgs/msg/Detection2DArray',
                   'vision_msgs/msg/Detection2DArray', 'std_msgs/msg/String'],
                  'Message type of each monitored topic.'),
    ParameterSpec('min_rates_hz', [5.0, 2.0, 2.0, 1.0],
                  'Lowest acceptable rate of each topic; 0: heartbeat only.'),
    ParameterSpec('stale_after_s', 3.0, 'Silence after which a topic is STALE.',
                  minimum=0.1, maximum=3600.0),
    ParameterSpec('rate_window_s', 5.0, 'Window of the rate estimates.', minimum=0.1,
                  maximum=3600.0),
    ParameterSpec('rate_tolerance', 0.1, 'Fraction below the minimum rate still accepted.',
                  minimum=0.0, maximum=1.0),
    ParameterSpec('publish_period_s', 1.0, 'Period of /diagnostics.', minimum=0.01,
                  maximum=60.0),
    ParameterSpec('hardware_id', 'robot', 'hardware_id of the statuses.'),
    ParameterSpec('anomaly_detector', 'robust',
                  'Cloud latency anomaly model: robust (median/MAD) or isolation_forest.'),
    ParameterSpec('probe_url', '',
                  'V2 REST base URL whose /v2/health/ready is probed; empty: no probe.'),
    ParameterSpec('probe_period_s', 1.0, 'Readiness probe period.', minimum=0.05,
                  maximum=3600.0),
    ParameterSpec('bandwidth_floor_mbps', 1.0, 'Uplink below this is ERROR.', minimum=0.0,
                  maximum=100000.0),
    ParameterSpec('history_file', '',
                  'Failure history log (JSON lines) shared with the manager; empty: none.'),
    ParameterSpec('scenario', '',
                  'Fault scenario to inject into the running graph: a file, or a shipped name '
                  '(cloud_outage_10s). Empty (default): nothing is injected.'),
    ParameterSpec('fault_proxy_port', 0,
                  'Port of the TCP fault proxy for network faults; the bridge url points at '
                  'it. 0: no proxy.', minimum=0, maximum=65535),
    ParameterSpec('fault_proxy_upstream', '',
                  'host:port of the real service behind the fault proxy.'),
    ParameterSpec('service_port', 0,
                  'Port the service listens on, on this host, for process faults; 0: none.',
                  minimum=0, maximum=65535),
    ParameterSpec('edge_sources', ['edge'],
                  'source_name of every edge target (their reports measure injected faults).'),
)


@dataclass(frozen=True)
class HealthConfig:
    """Validated health monitor parameters (see :data:`PARAMETERS`)."""

    monitored_topics: list
    monitored_types: list
    min_rates_hz: list
    stale_after_s: float
    rate_window_s: float
    rate_tolerance: float
    publish_period_s: float
    hardware_id: str
    anomaly_detector: str
    probe_url: str
    probe_period_s: float
    bandwidth_floor_mbps: float
    history_file: str
    scenario: str
    fault_proxy_port: int
    fault_proxy_upstream: str
    service_port: int
    edge_sources: list

    @classmethod
    def from_params(cls, values: Mapping[str, Any] | None = None) -> HealthConfig:
        """Build from parameter values over the defaults.

        Raises:
            ConfigError: For unknown names, wrong types or lists of different lengths.
        """
        config = cls(**resolve(PARAMETERS, values))
        if not len(config.monitored_topics) == len(config.monitored_types) == \
                len(config.min_rates_hz):
            raise ConfigError('monitored_topics, monitored_types and min_rates_hz must have '
                              'the same length')
        if config.publish_period_s <= 0 or config.rate_window_s <= 0 or \
                config.probe_period_s <= 0:
            raise ConfigError('publish_period_s, rate_window_s and probe_period_s must be > 0')
        if config.anomaly_detector not in ANOMALY_DETECTORS:
            raise ConfigError(f'anomaly_detector {config.anomaly_detector!r} (known: '
                              f'{", ".join(ANOMALY_DETECTORS)})')
        return config


class HealthMonitor:
    """Runs health checks and tracks their level changes.

    Args:
        config: Parameters.
        start_ns: Monitor start time, from the caller's clock.
    """

    def __init__(self, config: HealthConfig, start_ns: int) -> None:
        self.config = config
        self.topics: dict[str, TopicRateCheck] = {
            topic: TopicRateCheck(topic, rate, config.stale_after_s, start_ns,
                                  config.rate_window_s, config.rate_tolerance,
                                  config.hardware_id)
            for topic, rate in zip(config.monitored_topics, config.min_rates_hz)
        }
        self.cloud = CloudCheck(hardware_id=config.hardware_id,
                                detector=ANOMALY_DETECTORS[config.anomaly_detector]())
        self.bandwidth = BandwidthCheck(floor_mbps=config.bandwidth_floor_mbps,
                                        hardware_id=config.hardware_id)
        self.goals = GoalsCheck(hardware_id=config.hardware_id)
        self._checks: list[HealthCheck] = [*self.topics.values(), self.cloud, self.bandwidth,
                                           self.goals]
        self.readiness: ReadinessCheck | None = None
        if config.probe_url:
            self.readiness = ReadinessCheck(config.probe_url, config.probe_period_s)
            self._checks.append(self.readiness)
        self.history = FailureLog(config.history_file) if config.history_file else None
        self._levels: dict[str, int] = {}
        self._published_ns: int | None = None

    def add_check(self, check: HealthCheck) -> None:
        """Add a check (cloud probe, latency anomaly, ...)."""
        self._checks.append(check)

    def message(self, topic: str, now_ns: int) -> None:
        """Record a message on a monitored topic; other topics are ignored."""
        check = self.topics.get(topic)
        if check is not None:
            check.tick(now_ns)

    def on_arrival(self, topic: str, now_ns: int) -> None:
        """Take an arrival on a monitored topic (the graph's handler)."""
        self.message(topic, now_ns)

    def on_decision(self, decision: Decision, now_ns: int = 0) -> None:
        """Take the manager's decision (the graph's handler)."""
        self.goals.decision(decision)

    def on_report(self, report: InferenceReport, now_ns: int = 0) -> None:
        """Take a cloud report (the graph's handler)."""
        self.report(report)

    def report(self, report: InferenceReport) -> None:
        """Feed a worker's per-frame report to the checks (the cloud check reads the cloud's)."""
        self.cloud.report(report)
        self.bandwidth.report(report)
        if self.history is not None:
            self.history.report(report)

    def run(self, now_ns: int) -> tuple[list[HealthStatus], list[HealthEvent]]:
        """Run every check.

        Returns:
            The statuses, and an event for each check whose level changed since the last run
            (the first run reports every check that is not OK).
        """
        statuses = [check.run(now_ns) for check in self._checks]
        events = []
        for status in statuses:
            previous = self._levels.get(status.name, 0)
            if int(status.level) != previous:
                events.append(HealthEvent(stamp_ns=now_ns, name=status.name,
                                          level=int(status.level), previous=previous,
                                          message=status.message))
            self._levels[status.name] = int(status.level)
        if self.history is not None:
            for event in events:
                self.history.event(event)
        return statuses, events

    def rehearsal(self, clock: Callable[[], int]) -> Rehearsal | None:
        """Make the injector of ``scenario`` (not started), if one is set.

        Raises:
            ConfigError: For an unreadable scenario or one the parameters cannot inject.
        """
        config = self.config
        if not config.scenario:
            return None
        proxy = ('127.0.0.1', config.fault_proxy_port) if config.fault_proxy_port else None
        upstream = parse_address(config.fault_proxy_upstream) \
            if config.fault_proxy_upstream else None
        rehearsal = Rehearsal(load_scenario(config.scenario), clock, proxy, upstream,
                              config.service_port)
        self.add_check(rehearsal)
        return rehearsal

    def next_due_ns(self, now_ns: int) -> int | None:
        """Return when :meth:`poll` may next publish without a new input; None if unknown.

        Call it after :meth:`poll` at ``now_ns``. A caller may sleep until then, or until an
        input comes, and miss no period and no level change: every check tells when time alone
        may next change its level (``next_change_ns``); one that cannot (the readiness check,
        which a prober thread feeds) makes the answer None, and the caller must poll.
        """
        if self._published_ns is None:
            return now_ns
        due = [self._published_ns + int(self.config.publish_period_s * 1e9)]
        for check in self._checks:
            change = getattr(check, 'next_change_ns', None)
            if change is None:
                return None
            at = change(now_ns)
            if at is not None:
                due.append(at)
        return min(due)

    def prober(self, clock: Callable[[], int]) -> ReadinessProber | None:
        """Make a thread probing ``probe_url`` into the readiness check (not started), if any."""
        if self.readiness is None:
            return None
        return ReadinessProber(self.readiness, http_ready_probe(self.config.probe_url),
                               self.config.probe_period_s, clock)

    def close(self) -> None:
        """Close the failure history."""
        if self.history is not None:
            self.history.close()

    def poll(self, now_ns: int) -> tuple[list[HealthStatus], list[HealthEvent]] | None:
        """Run the checks; what to publish now, or None.

        Diagnostics go out every ``publish_period_s`` and at once when a level changes, so a
        failure is on /diagnostics as soon as it is diagnosed, not up to a period later.
        Call it often (every 0.1 s or every event).
        """
        statuses, events = self.run(now_ns)
        period_ns = int(self.config.publish_period_s * 1e9)
        if events or self._published_ns is None or now_ns - self._published_ns >= period_ns:
            self._published_ns = now_ns
            return statuses, events
        return None
