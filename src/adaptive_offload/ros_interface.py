"""rclpy glue shared by the nodes: message classes, QoS profiles, parameters, clock.

This module and the ``node`` modules are the only ones that import rclpy or message packages.
"""

from __future__ import annotations

import array
import copy
import signal
from typing import Any, Callable, Iterable

from adaptive_offload import topics
from adaptive_offload.conversions import detections_to_message, MessageTypes
from adaptive_offload.datatypes import DetectionSet, InferenceReport
from adaptive_offload.errors import AdaptiveOffloadError
from adaptive_offload.frame_worker import DecisionHolder, Emit
from adaptive_offload.params import ParameterSpec
from builtin_interfaces.msg import Time
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from geometry_msgs.msg import Point, Pose, PoseWithCovariance, Quaternion
from rcl_interfaces.msg import ParameterDescriptor
import rclpy
from rclpy.executors import ExternalShutdownException
import rclpy.node
from rclpy.qos import (DurabilityPolicy, HistoryPolicy, qos_profile_sensor_data, QoSProfile,
                       ReliabilityPolicy)
from sensor_msgs.msg import BatteryState, CompressedImage, Image
from std_msgs.msg import Header, String
from vision_msgs.msg import (BoundingBox2D, Detection2D, Detection2DArray, LabelInfo,
                             ObjectHypothesis, ObjectHypothesisWithPose, Point2D, Pose2D,
                             VisionClass)


def message_types() -> MessageTypes:
    """Return the rclpy message classes for the conversions."""
    return MessageTypes(
        Time=Time, Header=Header, Image=Image, CompressedImage=CompressedImage, String=String,
        Point=Point, Quaternion=Quaternion, Pose=Pose, PoseWithCovariance=PoseWithCovariance,
        Point2D=Point2D, Pose2D=Pose2D, BoundingBox2D=BoundingBox2D,
        ObjectHypothesis=ObjectHypothesis, ObjectHypothesisWithPose=ObjectHypothesisWithPose,
        Detection2D=Detection2D, Detection2DArray=Detection2DArray, KeyValue=KeyValue,
        DiagnosticStatus=DiagnosticStatus, DiagnosticArray=DiagnosticArray,
        VisionClass=VisionClass, LabelInfo=LabelInfo, BatteryState=BatteryState,
        # rclpy checks every element of a plain sequence; an array('B') is taken as is.
        byte_array=lambda data: array.array('B', data),
        float32_array=lambda values: array.array('f', values))


def image_qos() -> QoSProfile:
    """Sensor-data QoS with depth 1: only the newest frame is ever waiting."""
    profile = copy.copy(qos_profile_sensor_data)
    profile.depth = 1
    return profile


def every_frame_qos() -> QoSProfile:
    """Sensor-data QoS with depth 10, for subscribers that account for every frame.

    The manager records each frame and the health monitor counts them: with depth 1 a
    callback held up for one frame period (the first frame, a busy executor) loses a frame
    without a trace, where the inference nodes rightly keep only the newest.
    """
    profile = copy.copy(qos_profile_sensor_data)
    profile.depth = 10
    return profile


def result_qos() -> QoSProfile:
    """Reliable, depth 10: detections, records, telemetry, diagnostics."""
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=10,
                      reliability=ReliabilityPolicy.RELIABLE,
                      durability=DurabilityPolicy.VOLATILE)


def latched_qos() -> QoSProfile:
    """Reliable, transient local, depth 1: the decision, which late joiners must get."""
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1,
                      reliability=ReliabilityPolicy.RELIABLE,
                      durability=DurabilityPolicy.TRANSIENT_LOCAL)


def image_type(compressed: bool) -> tuple[Any, str]:
    """Message class and topic suffix of the camera input."""
    return (CompressedImage, '/compressed') if compressed else (Image, '')


def declare_parameters(node: rclpy.node.Node, specs: Iterable[ParameterSpec]) -> dict[str, Any]:
    """Declare every parameter once, with its description, and return the values."""
    values = {}
    for spec in specs:
        descriptor = ParameterDescriptor(description=spec.description, read_only=spec.read_only)
        values[spec.name] = node.declare_parameter(spec.name, spec.default, descriptor).value
    return values


def now_ns(node: rclpy.node.Node) -> int:
    """Return the node's clock (ROS time, simulated under use_sim_time) in nanoseconds."""
    return node.get_clock().now().nanoseconds


def subscribe_decisions(node: rclpy.node.Node, holder: DecisionHolder) -> Any:
    """Keep ``holder`` up to date with the manager's latched decision topic."""
    def on_decision(msg: String) -> None:
        error = holder.update_json(msg.data)
        if error:
            node.get_logger().warning(error)

    return node.create_subscription(String, topics.DECISION, on_decision, latched_qos())


def result_publisher(node: rclpy.node.Node, det_topic: str, tel_topic: str) -> Emit:
    """Create publishers of a worker's detections and telemetry, as a :class:`FrameWorker` emit."""
    types = message_types()
    det_pub = node.create_publisher(Detection2DArray, det_topic, result_qos())
    tel_pub = node.create_publisher(String, tel_topic, result_qos())

    def emit(_msg: Any, dets: DetectionSet | None, report: InferenceReport) -> None:
        if dets is not None:
            det_pub.publish(detections_to_message(types, dets))
        tel_pub.publish(String(data=report.to_json()))

    return emit


def run_node(factory: Callable[[], rclpy.node.Node], name: str,
             args: list[str] | None = None) -> int:
    """Initialise rclpy, spin the node ``factory`` builds until shutdown, clean up.

    A configuration error (bad parameter, missing weights) is logged as fatal and gives exit
    code 1 instead of a traceback; an interrupt or shutdown gives exit code 0.
    """
    rclpy.init(args=args)
    node = None
    code = 0
    try:
        node = factory()
        rclpy.spin(node)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except AdaptiveOffloadError as err:
        rclpy.logging.get_logger(name).fatal(str(err))
        code = 1
    finally:
        # Ctrl-C under ros2 launch reaches a node twice (from the terminal and from launch);
        # the second must not interrupt the cleanup and turn a clean exit into a traceback.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        if node is not None:
            node.destroy_node()
        rclpy.try_shutdown()
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # try_shutdown restored the old handler
    return code
