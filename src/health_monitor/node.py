"""health_monitor node: watches topics, publishes /diagnostics, injects a scenario's faults.

Without ``scenario`` (the default) nothing is injected. With one, its faults go into the
running graph from the first tick with a valid clock; each start and end is published on
/health/faults, the measures are a status on /diagnostics, and a summary is logged at exit.
"""

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
        rehearsal = self._rehearsal = self._core.rehearsal(lambda: ros.now_ns(self))
        node_graph = graph.health_monitor(
            config.monitored_topics, config.monitored_types,
            config.edge_sources if rehearsal is not None else ())
        self._pubs = ros.Publishers(self, node_graph)
        targets: dict[str, object] = {'*': self._core}
        if rehearsal is not None:
            targets.update({p.name: rehearsal for p in node_graph.inputs
                            if p.name.startswith('rehearsal_')})
        ros.subscribe(self, node_graph, targets)
        self.create_timer(min(POLL_S, config.publish_period_s), self._on_timer)
        self._prober = self._core.prober(lambda: ros.now_ns(self))
        if self._prober is not None:
            self._prober.start()
        if self._rehearsal is not None:
            self.get_logger().warning(f'injecting scenario {self._rehearsal.scenario.name!r}')

    def destroy_node(self) -> None:
        """Undo injected faults, log their measures, stop the prober and the history."""
        if self._rehearsal is not None:
            self._rehearsal.close()
            for line in self._rehearsal.summary() or ['no fault started']:
                self.get_logger().info(line)
        if self._prober is not None:
            self._prober.stop()
        self._core.close()
        super().destroy_node()

    def _on_timer(self) -> None:
        now = ros.now_ns(self)
        if self._rehearsal is not None:
            if not self._rehearsal.started and now > 0:  # under sim time: once /clock runs
                self._rehearsal.start()
            for fault in self._rehearsal.tick():
                self._pubs.publish('faults', fault)
        due = self._core.poll(now)
        if due is None:
            return
        statuses, events = due
        self._pubs.publish('diagnostics', Diagnostics(statuses, now))
        for event in events:
            self._pubs.publish('events', event)
            if self._rehearsal is not None:
                self._rehearsal.on_health_event(event)


def main(args: list[str] | None = None) -> int:
    """Entry point of ``ros2 run adaptive_offload health_monitor``."""
    return ros.run_node(HealthMonitorNode, 'health_monitor', args)


if __name__ == '__main__':
    sys.exit(main())
