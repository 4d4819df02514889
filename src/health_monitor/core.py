"""Health monitor core: runs the checks, reports statuses and level changes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from adaptive_offload.errors import ConfigError
from adaptive_offload.params import ParameterSpec, resolve
from adaptive_offload.types import HealthEvent, HealthStatus, InferenceReport
from health_monitor.checks import CloudCheck, HealthCheck, TopicRateCheck

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
    ParameterSpec('stale_after_s', 3.0, 'Silence after which a topic is STALE.'),
    ParameterSpec('rate_window_s', 5.0, 'Window of the rate estimates.'),
    ParameterSpec('rate_tolerance', 0.1, 'Fraction below the minimum rate still accepted.'),
    ParameterSpec('publish_period_s', 1.0, 'Period of /diagnostics.'),
    ParameterSpec('hardware_id', 'robot', 'hardware_id of the statuses.'),
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
        if config.publish_period_s <= 0 or config.rate_window_s <= 0:
            raise ConfigError('publish_period_s and rate_window_s must be > 0')
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
        self.cloud = CloudCheck(hardware_id=config.hardware_id)
        self._checks: list[HealthCheck] = [*self.topics.values(), self.cloud]
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

    def report(self, report: InferenceReport) -> None:
        """Feed a worker's per-frame report to the checks (the cloud check reads the cloud's)."""
        self.cloud.report(report)

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
        return statuses, events

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
