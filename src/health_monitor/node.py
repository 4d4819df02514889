"""health_monitor node: watches topics and publishes /diagnostics and health events."""

from __future__ import annotations

import sys
from typing import Any

from adaptive_offload import graph
from adaptive_offload import ros_interface as ros
from adaptive_offload.graph_codec import Diagnostics
from health_monitor.monitor import HealthConfig, HealthMonitor, PARAMETERS
from rclpy.node import Node

POLL_S = 0.1  # level changes reach /diagnostics within this; the period paces the rest


class HealthMonitorNode(Node):
    """Counts arrivals on the monitored topics; runs the checks on a timer."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__('health_monitor', **kwargs)
        config = HealthConfig.from_params(ros.declare_parameters(self, PARAMETERS))
        self._core = HealthMonitor(config, ros.now_ns(self))
        node_graph = graph.health_monitor(config.monitored_topics, config.monitored_types)
        self._pubs = ros.Publishers(self, node_graph)
        ros.subscribe(self, node_graph, {'*': self._core})
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

    def _on_timer(self) -> None:
        now = ros.now_ns(self)
        due = self._core.poll(now)
        if due is None:
            return
        statuses, events = due
        self._pubs.publish('diagnostics', Diagnostics(statuses, now))
        for event in events:
            self._pubs.publish('events', event)


def main(args: list[str] | None = None) -> int:
    """Entry point of ``ros2 run adaptive_offload health_monitor``."""
    return ros.run_node(HealthMonitorNode, 'health_monitor', args)


if __name__ == '__main__':
    sys.exit(main())
