"""offload_manager node: publishes decisions, fuses results, records every frame."""

from __future__ import annotations

import sys
from typing import Any

from adaptive_offload import ros_interface as ros
from adaptive_offload import topics
from adaptive_offload.conversions import (battery_sample, detections_to_message, frame_to_message,
                                          message_to_detections, stamp_to_ns)
from adaptive_offload.datatypes import HealthEvent, InferenceReport
from adaptive_offload.errors import ConversionError
from offload_manager.annotate import Annotator
from offload_manager.frame_outcomes import Outcome
from offload_manager.manager import ManagerConfig, OffloadManager, PARAMETERS
from rclpy.node import Node
from rclpy.qos import qos_profile_sensor_data
from sensor_msgs.msg import BatteryState, Image
from std_msgs.msg import String
from vision_msgs.msg import Detection2DArray

TICK_S = 0.02


class OffloadManagerNode(Node):
    """Runs the policy on a timer and the arbiter on every input, result and report."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__('offload_manager', **kwargs)
        config = ManagerConfig.from_params(ros.declare_parameters(self, PARAMETERS))
        self._core = OffloadManager(config)
        self._types = ros.message_types()
        self._annotator = Annotator() if config.annotate else None
        self._decision_pub = self.create_publisher(String, topics.DECISION, ros.latched_qos())
        self._det_pub = self.create_publisher(Detection2DArray, topics.DETECTIONS,
                                              ros.result_qos())
        self._frame_pub = self.create_publisher(String, topics.FRAMES, ros.result_qos())
        self._annotated_pub = self.create_publisher(Image, topics.ANNOTATED, ros.result_qos())
        msg_type, suffix = ros.image_type(config.compressed)
        self.create_subscription(msg_type, config.image_topic + suffix, self._on_image,
                                 ros.every_frame_qos())
        sources = [(s, topics.edge_topic(s, 'detections'), topics.edge_topic(s, 'telemetry'))
                   for s in config.edge_sources]
        sources.append(('cloud', topics.CLOUD_DETECTIONS, topics.CLOUD_TELEMETRY))
        for source, det_topic, tel_topic in sources:
            self.create_subscription(Detection2DArray, det_topic,
                                     lambda msg, s=source: self._on_detections(msg, s),
                                     ros.result_qos())
            self.create_subscription(String, tel_topic, self._on_report, ros.result_qos())
        self.create_subscription(String, topics.HEALTH_EVENTS, self._on_health,
                                 ros.result_qos())
        if config.energy_reader == 'battery':
            self.create_subscription(
                BatteryState, config.battery_topic,
                lambda msg: self._core.on_battery(*battery_sample(msg), ros.now_ns(self)),
                qos_profile_sensor_data)
        self.create_timer(TICK_S, self._on_tick)
        self.get_logger().info(f'policy {config.policy}, deadline {config.deadline_ms} ms, '
                               f'edge sources {", ".join(config.edge_sources)}')

    def _on_image(self, msg: Any) -> None:
        if self._annotator is not None:
            self._annotator.remember(msg)
        outcome = self._core.frame_arrived(stamp_to_ns(msg.header.stamp),
                                           str(msg.header.frame_id), ros.now_ns(self))
        if outcome is not None:
            self._publish(outcome)

    def _on_detections(self, msg: Detection2DArray, source: str) -> None:
        now = ros.now_ns(self)
        self._core.on_detections(message_to_detections(msg, source), now)
        self._flush(now)

    def _on_report(self, msg: String) -> None:
        try:
            self._core.on_report(InferenceReport.from_json(msg.data))
        except ConversionError as err:
            self.get_logger().warning(f'ignored bad telemetry: {err}')
            return
        self._flush(ros.now_ns(self))

    def _flush(self, now: int) -> None:
        # At once, not on the next tick: a result is not held back up to TICK_S, and under
        # use_sim_time the last frames of a bag still end when its /clock stops with it.
        for outcome in self._core.poll(now):
            self._publish(outcome)

    def _on_health(self, msg: String) -> None:
        try:
            self._core.on_health_event(HealthEvent.from_json(msg.data))
        except ConversionError as err:
            self.get_logger().warning(f'ignored bad health event: {err}')

    def _on_tick(self) -> None:
        now = ros.now_ns(self)
        decision = self._core.tick(now)
        if decision is not None:
            self._decision_pub.publish(String(data=decision.to_json()))
        self._flush(now)

    def _publish(self, outcome: Outcome) -> None:
        if outcome.result is not None:
            self._det_pub.publish(detections_to_message(self._types, outcome.result))
        self._frame_pub.publish(String(data=outcome.record.to_json()))
        image = self._annotator.render(outcome) if self._annotator is not None else None
        if image is not None:
            self._annotated_pub.publish(frame_to_message(
                self._types, image, outcome.record.stamp_ns, outcome.record.frame_id, 'bgr8'))


def main(args: list[str] | None = None) -> int:
    """Entry point of ``ros2 run adaptive_offload offload_manager``."""
    return ros.run_node(OffloadManagerNode, 'offload_manager', args)


if __name__ == '__main__':
    sys.exit(main())
