"""health_monitor node: watches topics and publishes /diagnostics and health events."""

from __future__ import annotations

import sys
from typing import Any

from adaptive_offload import ros_interface as ros
from adaptive_offload import topics
from adaptive_offload.conversions import health_to_diagnostics
from adaptive_offload.datatypes import InferenceReport
from adaptive_offload.errors import ConversionError
from diagnostic_msgs.msg import DiagnosticArray
from health_monitor.monitor import HealthConfig, HealthMonitor, PARAMETERS
from rclpy.node import Node
from rosidl_runtime_py.utilities import get_message
from std_msgs.msg import String

POLL_S = 0.1  # level changes reach /diagnostics within this; the period paces the rest


class HealthMonitorNode(Node):
    """Counts arrivals on the monitored topics; runs the checks on a timer."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__('health_monitor', **kwargs)
        config = HealthConfig.from_params(ros.declare_parameters(self, PARAMETERS))
        self._core = HealthMonitor(config, ros.now_ns(self))
        self._types = ros.message_types()
        self._diag_pub = self.create_publisher(DiagnosticArray, topics.DIAGNOSTICS,
                                               ros.result_qos())
        self._event_pub = self.create_publisher(String, topics.HEALTH_EVENTS, ros.result_qos())
        for topic, type_name in zip(config.monitored_topics, config.monitored_types):
            # raw=True: only arrivals matter, so images are never deserialized here.
            self.create_subscription(
                get_message(type_name), topic,
                lambda _msg, t=topic: self._core.message(t, ros.now_ns(self)),
                ros.every_frame_qos(), raw=True)
        self.create_subscription(String, topics.CLOUD_TELEMETRY, self._on_cloud_report,
                                 ros.result_qos())
        self.create_timer(min(POLL_S, config.publish_period_s), self._on_timer)
        self._prober = self._core.prober(lambda: ros.now_ns(self))
        if self._prober is not None:
            self._prober.start()

    def destroy_node(self) -> None:
        """Stop the readiness prober and close the failure history before the node goes."""
        if self._prober is not None:
            self._prober.stop()
        self._core.close()
        super().destroy_node()

    def _on_cloud_report(self, msg: String) -> None:
        try:
            self._core.report(InferenceReport.from_json(msg.data))
        except ConversionError as err:
            self.get_logger().warning(f'ignored bad telemetry: {err}')

    def _on_timer(self) -> None:
        now = ros.now_ns(self)
        due = self._core.poll(now)
        if due is None:
            return
        statuses, events = due
        self._diag_pub.publish(health_to_diagnostics(self._types, statuses, now))
        for event in events:
            self._event_pub.publish(String(data=event.to_json()))


def main(args: list[str] | None = None) -> int:
    """Entry point of ``ros2 run adaptive_offload health_monitor``."""
    return ros.run_node(HealthMonitorNode, 'health_monitor', args)


if __name__ == '__main__':
    sys.exit(main())
