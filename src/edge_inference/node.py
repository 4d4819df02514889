"""edge_inference node: the local detector on the camera stream."""

from __future__ import annotations

import sys

from rclpy.node import Node

from adaptive_offload import ros_interface as ros
from adaptive_offload.worker import DecisionHolder, FrameWorker
from edge_inference.core import PARAMETERS, EdgeConfig, build_edge


class EdgeInferenceNode(Node):
    """Subscribes to the camera, runs the detector on the newest frame, publishes detections.

    Outputs go to the relative names ``edge/detections`` and ``edge/telemetry``, so an instance
    in namespace ``/pi`` publishes ``/pi/edge/...``.
    """

    def __init__(self) -> None:
        super().__init__('edge_inference')
        config = EdgeConfig.from_params(ros.declare_parameters(self, PARAMETERS))
        core = build_edge(config)
        decisions = DecisionHolder(config.fallback_decision())
        ros.subscribe_decisions(self, decisions)
        emit = ros.result_publisher(self, 'edge/detections', 'edge/telemetry')
        self._worker = FrameWorker(core, decisions, emit, lambda: ros.now_ns(self))
        msg_type, suffix = ros.image_type(config.compressed)
        self.create_subscription(msg_type, config.image_topic + suffix, self._worker.submit,
                                 ros.image_qos())
        self._worker.start('edge-inference')
        self.get_logger().info(
            f'{config.model_name} ({config.model}) on {config.device}, imgsz {config.imgsz}, '
            f'input {config.image_topic + suffix}')

    def destroy_node(self) -> None:
        """Stop the worker before the node goes."""
        self._worker.stop()
        super().destroy_node()


def main(args: list[str] | None = None) -> int:
    """Entry point of ``ros2 run adaptive_offload edge_inference``."""
    return ros.run_node(EdgeInferenceNode, 'edge_inference', args)


if __name__ == '__main__':
    sys.exit(main())
