"""rclpy glue shared by the nodes: the graph's ports, QoS, parameters, clock and main loop.

Subscriptions and publishers come from the graph's declarations, parameters are declared with
descriptors (ranges included) and set at runtime through on-set callbacks.

This module and the ``node`` modules are the only ones that import rclpy or message packages.
"""

from __future__ import annotations

import array
import signal
from typing import Any, Callable, Iterable, Mapping

from adaptive_offload.conversions import MessageTypes
from adaptive_offload.errors import AdaptiveOffloadError, ConfigError, ConversionError
from adaptive_offload.graph import NodeGraph, Port, QOS
from adaptive_offload.graph_codec import decode_input, encode_output
from adaptive_offload.heap import frozen_start_up
from adaptive_offload.params import ParameterSpec
from builtin_interfaces.msg import Duration, Time
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from geometry_msgs.msg import Point, Pose, PoseWithCovariance, Quaternion
from rcl_interfaces.msg import (FloatingPointRange, IntegerRange, ParameterDescriptor,
                                SetParametersResult)
import rclpy
from rclpy.exceptions import ParameterException
from rclpy.executors import ExternalShutdownException
from rclpy.lifecycle import LifecycleNode, TransitionCallbackReturn
import rclpy.node
from rclpy.parameter import Parameter
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from rosidl_runtime_py.utilities import get_message
from sensor_msgs.msg import BatteryState, CompressedImage, Image
from std_msgs.msg import ColorRGBA, Header, String
from vision_msgs.msg import (BoundingBox2D, Detection2D, Detection2DArray, LabelInfo,
                             ObjectHypothesis, ObjectHypothesisWithPose, Point2D, Pose2D,
                             VisionClass)
from visualization_msgs.msg import ImageMarker

Targets = Mapping[str, Any]


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
        ColorRGBA=ColorRGBA, Duration=Duration, ImageMarker=ImageMarker,
        # rclpy checks every element of a plain sequence; an array('B') is taken as is.
        byte_array=lambda data: array.array('B', data),
        float32_array=lambda values: array.array('f', values))


def qos_profile(name: str) -> QoSProfile:
    """Return the rclpy profile of a QoS named in the graph's table."""
    spec = QOS[name]
    return QoSProfile(
        history=HistoryPolicy.KEEP_LAST, depth=spec.depth,
        reliability=ReliabilityPolicy.RELIABLE if spec.reliable
        else ReliabilityPolicy.BEST_EFFORT,
        durability=DurabilityPolicy.TRANSIENT_LOCAL if spec.latched
        else DurabilityPolicy.VOLATILE)


def subscribe(node: rclpy.node.Node, graph: NodeGraph, targets: Targets,
              after: Callable[[int], None] | None = None,
              only: Iterable[str] | None = None,
              taps: Mapping[str, Callable[[Any], None]] | None = None) -> list[Any]:
    """Subscribe to every input of ``graph``: each message goes to its handler as a record.

    Args:
        node: The node.
        graph: Its declaration.
        targets: Input targets by port name, or ``'*'`` for all: the object whose
            ``port.handler`` method takes ``(record, now_ns)``.
        after: Called with the time after every handled input (the manager's flush).
        only: Subscribe to these inputs only (a lifecycle node subscribes in steps).
        taps: Called with the message itself before it is decoded, by port name (the
            manager keeps camera images for its annotated output).

    Returns:
        The subscriptions.
    """
    subs = []
    wanted = None if only is None else set(only)
    for port in graph.inputs:
        if wanted is not None and port.name not in wanted:
            continue
        target = targets.get(port.name, targets.get('*'))
        handler = getattr(target, port.handler)
        subs.append(node.create_subscription(
            get_message(port.msg_type), port.topic,
            _callback(node, port, handler, after, (taps or {}).get(port.name)),
            qos_profile(port.qos), raw=port.kind == 'arrival'))
    return subs


def _callback(node: rclpy.node.Node, port: Port, handler: Callable[[Any, int], Any],
              after: Callable[[int], None] | None,
              tap: Callable[[Any], None] | None) -> Callable[[Any], None]:
    def on_message(msg: Any) -> None:
        if tap is not None:
            tap(msg)
        try:
            record = decode_input(port, msg)
        except ConversionError as err:
            node.get_logger().warning(f'ignored a bad message on {port.topic}: {err}')
            return
        now = now_ns(node)
        handler(record, now)
        if after is not None:
            after(now)
    return on_message


class Publishers:
    """The publishers of a node's outputs; :meth:`publish` takes records by port name.

    Args:
        node: The node (a LifecycleNode gets lifecycle publishers with ``lifecycle``).
        graph: Its declaration.
        lifecycle: Create lifecycle publishers (they publish only while active).
    """

    def __init__(self, node: rclpy.node.Node, graph: NodeGraph, lifecycle: bool = False) -> None:
        self._node = node
        self._types = message_types()
        create = node.create_lifecycle_publisher if lifecycle else node.create_publisher
        self._ports = {p.name: p for p in graph.outputs}
        self._pubs = {p.name: create(get_message(p.msg_type), p.topic, qos_profile(p.qos))
                      for p in graph.outputs}

    def publish(self, name: str, record: Any) -> None:
        """Publish ``record`` on the output called ``name`` (an undeclared one is ignored)."""
        pub = self._pubs.get(name)
        if pub is not None:
            pub.publish(encode_output(self._types, self._ports[name], record))

    def subscribers(self, name: str) -> int:
        """Return how many subscriptions the output called ``name`` has now (0 if none)."""
        pub = self._pubs.get(name)
        return 0 if pub is None else pub.get_subscription_count()

    def destroy(self) -> None:
        """Destroy every publisher."""
        destroy = getattr(self._node, 'destroy_lifecycle_publisher', self._node.destroy_publisher)
        for pub in self._pubs.values():
            destroy(pub)
        self._pubs = {}


def descriptor(spec: ParameterSpec) -> ParameterDescriptor:
    """Return the descriptor of a parameter: description, read-only, and its range."""
    desc = ParameterDescriptor(description=spec.description, read_only=spec.read_only)
    bounds = spec.bounds()
    if bounds is not None and spec.type_name == 'INTEGER':
        desc.integer_range = [IntegerRange(from_value=int(bounds[0]), to_value=int(bounds[1]),
                                           step=1)]
    elif bounds is not None:
        desc.floating_point_range = [FloatingPointRange(
            from_value=float(bounds[0]), to_value=float(bounds[1]), step=0.0)]
    return desc


def declare_parameters(node: rclpy.node.Node, specs: Iterable[ParameterSpec]) -> dict[str, Any]:
    """Declare every parameter once, with its descriptor, and return the values.

    Raises:
        ConfigError: With rclpy's one-line reason, for an override of the wrong type or out of
            its range (a parameter file or ``-p``).
    """
    values = {}
    for spec in specs:
        try:
            values[spec.name] = node.declare_parameter(spec.name, spec.default,
                                                       descriptor(spec)).value
        except ParameterException as err:
            raise ConfigError(f'{node.get_name()}: {err}') from None
    return values


def current_parameters(node: rclpy.node.Node, specs: Iterable[ParameterSpec]) -> dict[str, Any]:
    """Return every declared parameter's value now (what a lifecycle configure re-reads)."""
    return {spec.name: node.get_parameter(spec.name).value for spec in specs}


def on_parameters_set(node: rclpy.node.Node, specs: Iterable[ParameterSpec],
                      apply: Callable[[dict[str, Any]], object],
                      refuse: Callable[[ParameterSpec], str] = lambda spec: '') -> None:
    """Apply ``ros2 param set`` on the running node, or refuse it with a reason.

    rclpy has already checked type, range and read-only against the descriptor. Live
    parameters go to ``apply`` (which raises ConfigError to refuse the whole set; what it
    returns is ignored); a configure-time parameter is accepted unless ``refuse`` gives a
    reason (a lifecycle node refuses them unless unconfigured).
    """
    table = {spec.name: spec for spec in specs}

    def callback(params: list[Parameter]) -> SetParametersResult:
        live = {}
        for param in params:
            spec = table.get(param.name)
            if spec is None:
                continue
            reason = '' if spec.live else refuse(spec)
            if reason:
                return SetParametersResult(successful=False, reason=reason)
            if spec.live:
                live[param.name] = param.value
        if live:
            try:
                apply(live)
            except ConfigError as err:
                return SetParametersResult(successful=False, reason=str(err))
        return SetParametersResult(successful=True)

    node.add_on_set_parameters_callback(callback)


def autostart(node: LifecycleNode, failure: Callable[[], str]) -> None:
    """Configure and activate a lifecycle node, as ``autostart`` asks.

    Args:
        node: The lifecycle node.
        failure: Returns why the last transition failed.

    Raises:
        ConfigError: Naming the transition that failed, so :func:`run_node` exits 1.
    """
    for name, trigger in (('configure', node.trigger_configure),
                          ('activate', node.trigger_activate)):
        if trigger() != TransitionCallbackReturn.SUCCESS:
            raise ConfigError(f'{node.get_fully_qualified_name()}: {name} failed: {failure()}')


def unsubscribe(node: rclpy.node.Node, subs: Iterable[Any]) -> list[Any]:
    """Destroy the subscriptions; return the empty list that replaces them."""
    for sub in subs:
        node.destroy_subscription(sub)
    return []


def now_ns(node: rclpy.node.Node) -> int:
    """Return the node's clock (ROS time, simulated under use_sim_time) in nanoseconds."""
    return node.get_clock().now().nanoseconds


def run_node(factory: Callable[[], rclpy.node.Node], name: str,
             args: list[str] | None = None) -> int:
    """Initialise rclpy, spin the node ``factory`` builds until shutdown, clean up.

    A configuration error (a parameter of the wrong type or out of range, missing weights, a
    lifecycle transition that failed at start) is logged as one fatal line and gives exit code
    1 instead of a traceback; an interrupt or shutdown gives exit code 0.
    """
    rclpy.init(args=args)
    node = None
    code = 0
    try:
        node = factory()
        with frozen_start_up():
            rclpy.spin(node)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except (AdaptiveOffloadError, ParameterException) as err:
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
