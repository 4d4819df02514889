"""edge_inference node: the local detector on the camera stream, as a lifecycle node.

configure: read parameters, create publishers; activate: load and warm up the model, subscribe
to the camera; deactivate: unsubscribe and release the model; cleanup: drop publishers. With
``autostart`` (default) the node configures and activates itself, so plain launches work.
"""

from __future__ import annotations

import sys
from typing import Any

from adaptive_offload import ros_interface as ros
from adaptive_offload.conversions import (detections_to_message, frame_to_message,
                                          label_info_message)
from adaptive_offload.datatypes import DetectionSet, InferenceReport
from adaptive_offload.drawing import annotate_message
from adaptive_offload.errors import AdaptiveOffloadError
from adaptive_offload.frame_worker import DecisionHolder, FrameWorker
from edge_inference.inference import build_edge, EdgeConfig, PARAMETERS
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from sensor_msgs.msg import Image
from std_msgs.msg import String
from vision_msgs.msg import Detection2DArray, LabelInfo


class EdgeInferenceNode(LifecycleNode):
    """Runs the detector on the newest frame; publishes detections, telemetry, label map.

    Outputs use relative names (``edge/detections``, ``edge/telemetry``, ``edge/label_info``,
    optionally ``edge/annotated``), so an instance in namespace ``/pi`` publishes
    ``/pi/edge/...``.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__('edge_inference', **kwargs)
        self._values = ros.declare_parameters(self, PARAMETERS)
        self._types = ros.message_types()
        self._config: EdgeConfig | None = None
        self._worker: FrameWorker | None = None
        self._image_sub = None
        if self._values['autostart']:
            self.trigger_configure()
            self.trigger_activate()

    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Validate parameters, create publishers and the decision subscription."""
        try:
            self._config = EdgeConfig.from_params(self._values)
        except AdaptiveOffloadError as err:
            self.get_logger().error(str(err))
            return TransitionCallbackReturn.FAILURE
        self._decisions = DecisionHolder(self._config.fallback_decision())
        self._decision_sub = ros.subscribe_decisions(self, self._decisions)
        self._det_pub = self.create_lifecycle_publisher(Detection2DArray, 'edge/detections',
                                                        ros.result_qos())
        self._tel_pub = self.create_lifecycle_publisher(String, 'edge/telemetry',
                                                        ros.result_qos())
        self._label_pub = self.create_lifecycle_publisher(LabelInfo, 'edge/label_info',
                                                          ros.latched_qos())
        self._annotated_pub = self.create_lifecycle_publisher(Image, 'edge/annotated',
                                                              ros.result_qos()) \
            if self._config.publish_annotated else None
        return super().on_configure(state)

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Load and warm up the model, then subscribe to the camera."""
        config = self._config
        try:
            core = build_edge(config)
        except AdaptiveOffloadError as err:
            self.get_logger().error(str(err))
            return TransitionCallbackReturn.FAILURE
        result = super().on_activate(state)
        self._label_pub.publish(label_info_message(self._types, core.models.names_of_current(),
                                                   config.conf, ros.now_ns(self)))
        self._worker = FrameWorker(core, self._decisions, self._emit, lambda: ros.now_ns(self))
        self._worker.start('edge-inference')
        msg_type, suffix = ros.image_type(config.compressed)
        self._image_sub = self.create_subscription(
            msg_type, config.image_topic + suffix, self._worker.submit, ros.image_qos())
        self.get_logger().info(f'{config.model_name} ({config.model}) on {config.device}, '
                               f'imgsz {config.imgsz}, input {config.image_topic + suffix}')
        return result

    def _emit(self, msg: object, dets: DetectionSet | None, report: InferenceReport) -> None:
        if dets is not None:
            self._det_pub.publish(detections_to_message(self._types, dets))
            if self._annotated_pub is not None:
                image = annotate_message(msg, dets.detections, 'edge', dets.model)
                if image is not None:
                    self._annotated_pub.publish(frame_to_message(
                        self._types, image, dets.stamp_ns, dets.frame_id, 'bgr8'))
        self._tel_pub.publish(String(data=report.to_json()))

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Stop taking frames and release the model."""
        self._release()
        return super().on_deactivate(state)

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Drop publishers and the decision subscription."""
        for pub in (self._det_pub, self._tel_pub, self._label_pub, self._annotated_pub):
            if pub is not None:
                self.destroy_lifecycle_publisher(pub)
        self.destroy_subscription(self._decision_sub)
        self._config = None
        return super().on_cleanup(state)

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Release everything on the way out."""
        self._release()
        return super().on_shutdown(state)

    def _release(self) -> None:
        if self._image_sub is not None:
            self.destroy_subscription(self._image_sub)
            self._image_sub = None
        if self._worker is not None:
            self._worker.stop()
            self._worker = None  # the worker held the core and so the models

    def destroy_node(self) -> None:
        """Stop the worker before the node goes."""
        self._release()
        super().destroy_node()


def main(args: list[str] | None = None) -> int:
    """Entry point of ``ros2 run adaptive_offload edge_inference``."""
    return ros.run_node(EdgeInferenceNode, 'edge_inference', args)


if __name__ == '__main__':
    sys.exit(main())
