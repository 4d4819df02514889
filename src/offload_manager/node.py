"""offload_manager node: publishes decisions, fuses results, records every frame."""

from __future__ import annotations

import sys
from typing import Any

from adaptive_offload import graph
from adaptive_offload import ros_interface as ros
from adaptive_offload.datatypes import Frame
from fault_injection.live import ObeyedFaults
from offload_manager.annotate import Annotator
from offload_manager.frame_outcomes import Outcome
from offload_manager.manager import ManagerConfig, OffloadManager, PARAMETERS
from rclpy.node import Node

TICK_S = 0.02


class OffloadManagerNode(Node):
    """Runs the policy on a timer and the arbiter on every input, result and report."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__('offload_manager', **kwargs)
        config = ManagerConfig.from_params(ros.declare_parameters(self, PARAMETERS))
        # cloud_bridge runs split routes' heads; a bridge without them reports each frame failed.
        self._core = OffloadManager(config, executes_split=True)
        self._annotator = Annotator() if config.annotate else None
        battery = config.battery_topic if config.energy_reader == 'battery' else ''
        node_graph = graph.offload_manager(config.image_topic, config.compressed,
                                           config.edge_sources, battery, config.obey_faults)
        self._faults = ObeyedFaults(lambda: ros.now_ns(self))
        self._pubs = ros.Publishers(self, node_graph)
        # Outcomes are published as soon as an input ends them, not on the next tick: a result
        # is not held back up to TICK_S, and under use_sim_time the last frames of a bag still
        # end when its /clock stops with it.
        taps = {'camera': self._annotator.remember} if self._annotator is not None else {}
        ros.subscribe(self, node_graph, {'*': self._core, 'faults': self._faults},
                      after=self._flush, taps=taps)
        ros.on_parameters_set(self, PARAMETERS, self._core.reconfigure)
        self.create_timer(TICK_S, self._on_tick)
        self.get_logger().info(f'policy {config.policy}, deadline {config.deadline_ms} ms, '
                               f'edge sources {", ".join(config.edge_sources)}')

    def _on_tick(self) -> None:
        now = ros.now_ns(self)
        # An injected manager death silences the decisions, as a dead manager would.
        decision = None if self._faults.active('manager_death') else self._core.tick(now)
        if decision is not None:
            self._pubs.publish('decision', decision)
        self._flush(now)

    def _flush(self, now: int) -> None:
        for outcome in self._core.poll(now):
            self._publish(outcome)

    def _publish(self, outcome: Outcome) -> None:
        if outcome.result is not None:
            self._pubs.publish('detections', outcome.result)
        self._pubs.publish('frames', outcome.record)
        self._pubs.publish('annotations', outcome.shown())
        image = self._annotator.render(outcome) if self._annotator is not None else None
        if image is not None:
            record = outcome.record
            self._pubs.publish('annotated', Frame(record.stamp_ns, record.frame_id, image,
                                                  'bgr8'))


def main(args: list[str] | None = None) -> int:
    """Entry point of ``ros2 run adaptive_offload offload_manager``."""
    return ros.run_node(OffloadManagerNode, 'offload_manager', args)


if __name__ == '__main__':
    sys.exit(main())
