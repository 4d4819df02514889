"""The graph, declared once: every node's inputs and outputs, their types, QoS and handlers.

The rclpy nodes create their subscriptions and publishers from these declarations, and the
replay runtime routes records between the roles' cores by the same declarations and writes
the output bag's topics with the same QoS. An input names the method of the role's input
target that takes it (``handler(record, now_ns)``) and how a message becomes that record
(:data:`RECORD_KINDS`); an output names how its record becomes a message.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType
from typing import Iterable, Mapping, Sequence

from adaptive_offload import topics
from adaptive_offload.errors import ConfigError

IMAGE = 'sensor_msgs/msg/Image'
COMPRESSED_IMAGE = 'sensor_msgs/msg/CompressedImage'
DETECTIONS = 'vision_msgs/msg/Detection2DArray'
LABEL_INFO = 'vision_msgs/msg/LabelInfo'
STRING = 'std_msgs/msg/String'
DIAGNOSTICS = 'diagnostic_msgs/msg/DiagnosticArray'
BATTERY = 'sensor_msgs/msg/BatteryState'
IMAGE_MARKER = 'visualization_msgs/msg/ImageMarker'


@dataclass(frozen=True)
class QosSpec:
    """A QoS profile in the terms both rclpy and rosbag2's metadata use.

    Attributes:
        depth: History depth (keep last).
        reliable: Reliable, else best effort.
        latched: Transient local durability, so that late joiners get the last message.
    """

    depth: int
    reliable: bool
    latched: bool = False


# The one QoS table. newest_frame: the inference nodes only ever want the newest frame, so a
# depth of 1 keeps latency from growing with a backlog. every_frame: the manager and the
# health monitor account for every frame, and a callback held up for one frame period must
# not lose one. latched: the decision, which a late joiner must get.
QOS: Mapping[str, QosSpec] = MappingProxyType({
    'newest_frame': QosSpec(1, reliable=False),
    'every_frame': QosSpec(10, reliable=False),
    'sensor': QosSpec(5, reliable=False),
    'result': QosSpec(10, reliable=True),
    'latched': QosSpec(1, reliable=True, latched=True),
})

# How a message becomes the record an input handler takes (see conversions.decode_input):
# image: the message itself (workers decode it in their own thread); frame: its header as a
# FrameHeader; arrival: the port's topic name (only arrivals matter); decision, report,
# health_event, frame_record, fault: the JSON record in a String; detections: a DetectionSet;
# battery: a BatterySample.
RECORD_KINDS = ('image', 'frame', 'arrival', 'decision', 'report', 'health_event',
                'frame_record', 'fault', 'detections', 'battery')
# How an output record becomes a message (see graph_codec.encode_output); split_frame: a split
# detector's crossing tensors (adaptive_offload.split_frame) in a CompressedImage.
OUTPUT_KINDS = ('detections', 'json', 'diagnostics', 'label_info', 'image', 'image_marker',
                'split_frame')
SPLIT_ROLES = ('', 'head', 'tail')
"""Roles of an edge_inference node: the whole detector, or one part of a split one."""


@dataclass(frozen=True)
class Port:
    """One input or output of a node.

    Attributes:
        name: What the node's code calls it (``detections``, ``camera``...).
        topic: Topic name; relative names (``edge/detections``) resolve in the namespace.
        msg_type: ROS message type, ``pkg/msg/Name``.
        qos: Key of :data:`QOS`.
        kind: For an input, the record kind (:data:`RECORD_KINDS`); for an output, the output
            kind (:data:`OUTPUT_KINDS`).
        handler: For an input, the method of the role's input target that takes the record.
        source: The detection source an input's detections and reports come from.
    """

    name: str
    topic: str
    msg_type: str
    qos: str
    kind: str
    handler: str = ''
    source: str = ''

    def resolved(self, namespace: str = '') -> str:
        """Return the absolute topic name in ``namespace`` (as rcl resolves it)."""
        if self.topic.startswith('/'):
            return self.topic
        prefix = '/' + namespace.strip('/') if namespace.strip('/') else ''
        return f'{prefix}/{self.topic}'


@dataclass(frozen=True)
class NodeGraph:
    """A node's declared inputs and outputs.

    Attributes:
        node: Node name.
        inputs: Subscriptions.
        outputs: Publishers.
        namespace: Namespace the relative topic names resolve in.
    """

    node: str
    inputs: tuple[Port, ...]
    outputs: tuple[Port, ...]
    namespace: str = ''

    def output(self, name: str) -> Port:
        """Return the output called ``name``.

        Raises:
            KeyError: If the node declares no such output.
        """
        for port in self.outputs:
            if port.name == name:
                return port
        raise KeyError(f'{self.node} has no output {name!r}')


def _camera(image_topic: str, compressed: bool, qos: str, kind: str, handler: str) -> Port:
    if compressed:
        return Port('camera', f'{image_topic}/compressed', COMPRESSED_IMAGE, qos, kind, handler)
    return Port('camera', image_topic, IMAGE, qos, kind, handler)


def _decision_input() -> Port:
    return Port('decision', topics.DECISION, STRING, 'latched', 'decision', 'on_decision')


def _faults_input() -> Port:
    # Only nodes told to obey injected faults (a rehearsal) subscribe to them.
    return Port('faults', topics.HEALTH_FAULTS, STRING, 'result', 'fault', 'on_fault')


def edge_inference(image_topic: str, compressed: bool, source: str = topics.ROOT_EDGE_SOURCE,
                   annotated: bool = False, obey_faults: bool = False, split_role: str = '',
                   split_topic: str = 'edge/split') -> NodeGraph:
    """Declare an edge_inference node: camera and decisions in, detections and reports out.

    Its outputs are relative (``edge/...``): an instance in namespace ``/pi`` (source ``pi``)
    publishes ``/pi/edge/...``. With ``obey_faults`` it also takes injected edge stalls.

    A split role adds or swaps ports: a ``head`` also publishes each frame's crossing tensors
    on ``split_topic`` (relative: in its namespace), and detections only of the frames it
    runs whole; a ``tail`` takes them from ``split_topic`` instead of the camera, and no
    decisions (its head obeyed them).

    Raises:
        ConfigError: For an unknown ``split_role``.
    """
    if split_role not in SPLIT_ROLES:
        raise ConfigError(f'split_role {split_role!r}: one of {SPLIT_ROLES}')
    telemetry = Port('telemetry', 'edge/telemetry', STRING, 'result', 'json')
    outputs = [Port('detections', 'edge/detections', DETECTIONS, 'result', 'detections'),
               telemetry,
               Port('label_info', 'edge/label_info', LABEL_INFO, 'latched', 'label_info')]
    if annotated:
        outputs.append(Port('annotated', 'edge/annotated', IMAGE, 'result', 'image'))
    namespace = '' if source == topics.ROOT_EDGE_SOURCE else source
    inputs = [_camera(image_topic, compressed, 'newest_frame', 'image', 'on_image'),
              _decision_input()]
    if split_role == 'head':
        outputs = [Port('split', split_topic, COMPRESSED_IMAGE, 'newest_frame', 'split_frame'),
                   *outputs]
    elif split_role == 'tail':
        # The frames of a tail are its head's messages: kind image, decoded by its worker.
        inputs = [Port('split', split_topic, COMPRESSED_IMAGE, 'newest_frame', 'image',
                       'on_image')]
    if obey_faults:
        inputs.append(_faults_input())
    return NodeGraph('edge_inference', tuple(inputs), tuple(outputs), namespace)


def cloud_bridge(image_topic: str, compressed: bool,
                 sampled_sources: Sequence[str] = ()) -> NodeGraph:
    """Declare the cloud_bridge node: camera and decisions in, the service's answers out.

    With content sampling, the results of the ``sampled_sources`` edge targets come in too.
    """
    edge = tuple(Port(f'{source}_detections', topics.edge_topic(source, 'detections'),
                      DETECTIONS, 'result', 'detections', 'on_edge_detections', source)
                 for source in sampled_sources)
    return NodeGraph(
        'cloud_bridge',
        (_camera(image_topic, compressed, 'newest_frame', 'image', 'on_image'),
         _decision_input(), *edge),
        (Port('detections', topics.CLOUD_DETECTIONS, DETECTIONS, 'result', 'detections'),
         Port('telemetry', topics.CLOUD_TELEMETRY, STRING, 'result', 'json')))


def offload_manager(image_topic: str, compressed: bool, edge_sources: Sequence[str],
                    battery_topic: str = '', obey_faults: bool = False) -> NodeGraph:
    """Declare the offload_manager node.

    Args:
        image_topic: Camera topic.
        compressed: Whether the camera is read as CompressedImage.
        edge_sources: ``source_name`` of every edge target.
        battery_topic: BatteryState topic read for measured energy; empty: none.
        obey_faults: Also take injected manager deaths.
    """
    inputs = [_camera(image_topic, compressed, 'every_frame', 'frame', 'on_frame')]
    for source in [*edge_sources, 'cloud']:
        if source == 'cloud':
            det, tel = topics.CLOUD_DETECTIONS, topics.CLOUD_TELEMETRY
        else:
            det, tel = (topics.edge_topic(source, 'detections'),
                        topics.edge_topic(source, 'telemetry'))
        inputs += [Port(f'{source}_detections', det, DETECTIONS, 'result', 'detections',
                        'on_detections', source),
                   Port(f'{source}_telemetry', tel, STRING, 'result', 'report', 'on_report',
                        source)]
    inputs.append(Port('health_events', topics.HEALTH_EVENTS, STRING, 'result',
                       'health_event', 'on_health_event'))
    if battery_topic:
        inputs.append(Port('battery', battery_topic, BATTERY, 'sensor', 'battery',
                           'on_battery'))
    if obey_faults:
        inputs.append(_faults_input())
    return NodeGraph(
        'offload_manager', tuple(inputs),
        (Port('decision', topics.DECISION, STRING, 'latched', 'json'),
         Port('detections', topics.DETECTIONS, DETECTIONS, 'result', 'detections'),
         Port('frames', topics.FRAMES, STRING, 'result', 'json'),
         Port('annotated', topics.ANNOTATED, IMAGE, 'result', 'image'),
         Port('annotations', topics.ANNOTATIONS, IMAGE_MARKER, 'result', 'image_marker')))


def health_monitor(monitored_topics: Sequence[str], monitored_types: Sequence[str],
                   rehearsal_sources: Sequence[str] = ()) -> NodeGraph:
    """Declare the health_monitor node: monitored arrivals, cloud reports, decisions in.

    The decisions say whether the manager meets the user's bounds (the goals check).

    Monitored topics are subscribed for arrivals only (rclpy's ``raw=True``: images are never
    deserialized). A node injecting a scenario (``rehearsal_sources``: the edge sources) also
    takes the frame records and every source's reports, to measure each fault.
    """
    inputs = [Port(f'monitored_{i}', topic, type_name, 'every_frame', 'arrival', 'on_arrival')
              for i, (topic, type_name) in enumerate(zip(monitored_topics, monitored_types))]
    inputs.append(Port('cloud_telemetry', topics.CLOUD_TELEMETRY, STRING, 'result', 'report',
                       'on_report', 'cloud'))
    inputs.append(_decision_input())
    if rehearsal_sources:
        inputs.append(Port('rehearsal_frames', topics.FRAMES, STRING, 'result', 'frame_record',
                           'on_record'))
        inputs += [Port(f'rehearsal_{source}', topics.edge_topic(source, 'telemetry'), STRING,
                        'result', 'report', 'on_report', source)
                   for source in rehearsal_sources]
        inputs.append(Port('rehearsal_cloud', topics.CLOUD_TELEMETRY, STRING, 'result',
                           'report', 'on_report', 'cloud'))
    return NodeGraph(
        'health_monitor', tuple(inputs),
        (Port('diagnostics', topics.DIAGNOSTICS, DIAGNOSTICS, 'result', 'diagnostics'),
         Port('events', topics.HEALTH_EVENTS, STRING, 'result', 'json'),
         Port('faults', topics.HEALTH_FAULTS, STRING, 'result', 'json')))


def subscribers(graphs: Iterable[NodeGraph]) -> dict[str, list[tuple[str, Port]]]:
    """Map each subscribed topic to the (node, input) pairs that take it."""
    out: dict[str, list[tuple[str, Port]]] = {}
    for graph in graphs:
        for port in graph.inputs:
            out.setdefault(port.resolved(graph.namespace), []).append((graph.node, port))
    return out
