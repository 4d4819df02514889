"""The four rclpy nodes in process: topics, QoS, parameters, lifecycle (needs ROS 2)."""

from __future__ import annotations

from http.server import ThreadingHTTPServer
import json
from pathlib import Path
import threading
from typing import Any, Iterator

import numpy as np
import pytest
from ros_required import require

require('rclpy', 'rclpy.lifecycle', 'sensor_msgs.msg', 'vision_msgs.msg', 'diagnostic_msgs.msg')

from adaptive_offload import ros_interface as ros  # noqa: E402, I100
from adaptive_offload.conversions import (detections_to_message, frame_to_message,  # noqa: E402
                                          message_to_detections)
from adaptive_offload.datatypes import (Decision, Detection, DetectionSet,  # noqa: E402
                                        FrameRecord, InferenceReport, Route)
from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402
from rclpy.executors import SingleThreadedExecutor  # noqa: E402
from rclpy.node import Node  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402
from ros_helpers import node_args, running, spin_until  # noqa: E402
from sensor_msgs.msg import Image  # noqa: E402
from std_msgs.msg import String  # noqa: E402
from vision_msgs.msg import Detection2DArray, LabelInfo  # noqa: E402

S = 1_000_000_000


@pytest.fixture
def graph(tmp_path: Path) -> Iterator[tuple[SingleThreadedExecutor, Node]]:
    """Start rclpy with the test overrides, an executor and a probe node; shut down after."""
    with running(node_args(tmp_path, '-p', 'publish_annotated:=true')) as started:
        yield started


def collect(probe: Node, msg_type: Any, topic: str, qos: Any) -> list[Any]:
    """Subscribe the probe; returns the list the messages land in."""
    got: list[Any] = []
    probe.create_subscription(msg_type, topic, got.append, qos)
    return got


def image(stamp_ns: int) -> Image:
    """Return a 64x48 rgb8 frame with the given stamp."""
    pixels = np.random.default_rng(stamp_ns % 1000).integers(0, 255, (48, 64, 3), np.uint8)
    return frame_to_message(ros.message_types(), pixels, stamp_ns, 'cam', 'rgb8')


def test_edge_inference_detects_reports_and_follows_its_lifecycle(graph: Any) -> None:
    from edge_inference.inference import PARAMETERS
    from edge_inference.node import EdgeInferenceNode

    executor, probe = graph
    dets = collect(probe, Detection2DArray, '/edge/detections', ros.qos_profile('result'))
    tel = collect(probe, String, '/edge/telemetry', ros.qos_profile('result'))
    labels = collect(probe, LabelInfo, '/edge/label_info', ros.qos_profile('latched'))
    annotated = collect(probe, Image, '/edge/annotated', ros.qos_profile('result'))
    pub = probe.create_publisher(Image, '/camera/image_raw', ros.qos_profile('newest_frame'))
    node = EdgeInferenceNode()
    executor.add_node(node)
    assert spin_until(executor, lambda: pub.get_subscription_count() > 0 and labels)
    assert len(labels[0].class_map) == 80 and labels[0].class_map[0].class_name == 'person'
    for stamp in (1 * S, 2 * S, 3 * S):
        pub.publish(image(stamp))
        assert spin_until(executor, lambda s=stamp: any(
            InferenceReport.from_json(m.data).stamp_ns == s for m in tel))
    reports = [InferenceReport.from_json(m.data) for m in tel]
    assert [r.status for r in reports] == ['ok'] * 3
    assert all(r.model == 'yolov8n' and r.imgsz == 160 for r in reports)
    assert spin_until(executor, lambda: len(dets) == 3)
    assert [message_to_detections(d, 'edge').stamp_ns for d in dets] == [1 * S, 2 * S, 3 * S]
    assert spin_until(executor, lambda: len(annotated) == 3)
    first = annotated[0]
    assert first.encoding == 'bgr8' and (first.width, first.height) == (64, 48)

    names = {p.name for p in PARAMETERS}
    assert names <= set(node._parameters)  # noqa: SLF001 - the declared set is the contract
    assert all(d.description for d in node.describe_parameters(sorted(names)))

    node.trigger_deactivate()
    pub.publish(image(4 * S))
    spin_until(executor, lambda: False, timeout=1.0)
    assert len(tel) == 3  # inactive: no frame taken
    node.trigger_activate()
    assert spin_until(executor, lambda: pub.get_subscription_count() > 0)
    pub.publish(image(5 * S))
    assert spin_until(executor, lambda: len(tel) == 4)


def test_offload_manager_latches_decisions_and_records_every_frame(graph: Any) -> None:
    from offload_manager.node import OffloadManagerNode

    executor, probe = graph
    node = OffloadManagerNode()
    executor.add_node(node)
    spin_until(executor, lambda: False, timeout=0.5)
    # A late joiner still gets the latched decision.
    decisions = collect(probe, String, '/offload/decision', ros.qos_profile('latched'))
    assert spin_until(executor, lambda: bool(decisions), timeout=5)
    decision = Decision.from_json(decisions[0].data)
    # The default policy starts on the edge until something is measured.
    assert decision.route is Route.EDGE and decision.policy == 'predictive'

    frames = collect(probe, String, '/offload/frames', ros.qos_profile('result'))
    fused = collect(probe, Detection2DArray, '/detections', ros.qos_profile('result'))
    annotated = collect(probe, Image, '/offload/annotated', ros.qos_profile('result'))
    cam = probe.create_publisher(Image, '/camera/image_raw', ros.qos_profile('newest_frame'))
    edge = probe.create_publisher(Detection2DArray, '/edge/detections', ros.qos_profile('result'))
    assert spin_until(executor, lambda: cam.get_subscription_count() > 0 and
                      edge.get_subscription_count() > 0)
    cam.publish(image(7 * S))
    spin_until(executor, lambda: False, timeout=0.2)
    dets = DetectionSet(7 * S, 'cam', 'edge', (Detection(4, 4, 20, 20, 0.7, 'person'),))
    edge.publish(detections_to_message(ros.message_types(), dets))
    assert spin_until(executor, lambda: bool(frames) and bool(fused) and bool(annotated))
    record = FrameRecord.from_json(frames[0].data)
    assert record.result_source == 'edge' and record.stamp_ns == 7 * S and record.detections == 1
    assert message_to_detections(fused[0], 'fused').detections == dets.detections
    assert annotated[0].encoding == 'bgr8' and annotated[0].width == 64


def test_health_monitor_publishes_one_status_per_topic_and_warns_on_unmet_goals(
        graph: Any) -> None:
    from adaptive_offload.datatypes import Decision, Route
    from health_monitor.node import HealthMonitorNode

    executor, probe = graph
    diagnostics = collect(probe, DiagnosticArray, '/diagnostics', ros.qos_profile('result'))
    executor.add_node(HealthMonitorNode())
    assert spin_until(executor, lambda: bool(diagnostics), timeout=5)
    names = [s.name for s in diagnostics[-1].status]
    assert names == [f'adaptive_offload: {t} rate' for t in
                     ('/camera/image_raw', '/edge/detections', '/detections',
                      '/offload/decision')] + ['adaptive_offload: cloud',
                                               'adaptive_offload: uplink bandwidth',
                                               'adaptive_offload: offload goals']
    decisions = probe.create_publisher(String, '/offload/decision', ros.qos_profile('latched'))
    decisions.publish(String(data=Decision(seq=1, route=Route.EDGE, policy='predictive',
                                           unmet='accuracy floor').to_json()))

    def goals_warn() -> bool:
        return any(s.name == 'adaptive_offload: offload goals' and s.level == b'\x01' and
                   s.message == 'bounds given way: accuracy floor'
                   for array in diagnostics for s in array.status)
    assert spin_until(executor, goals_warn, timeout=5)


def test_cloud_bridge_node(graph: Any) -> None:
    from cloud_bridge.node import CloudBridgeNode
    from helpers import V2Handler

    V2Handler.mode, V2Handler.seen = 'ok', []
    httpd = ThreadingHTTPServer(('127.0.0.1', 0), V2Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    executor, probe = graph
    try:
        url = f'http://127.0.0.1:{httpd.server_address[1]}'
        node = CloudBridgeNode(parameter_overrides=[Parameter('url', value=url)])
        executor.add_node(node)
        cloud = collect(probe, Detection2DArray, '/cloud/detections', ros.qos_profile('result'))
        tel = collect(probe, String, '/cloud/telemetry', ros.qos_profile('result'))
        decide = probe.create_publisher(String, '/offload/decision', ros.qos_profile('latched'))
        cam = probe.create_publisher(Image, '/camera/image_raw', ros.qos_profile('newest_frame'))
        assert spin_until(executor, lambda: cam.get_subscription_count() > 0)
        cam.publish(image(1 * S))  # no decision yet: the safe default keeps it local
        assert spin_until(executor, lambda: bool(tel))
        assert json.loads(tel[0].data)['status'] == 'skipped' and V2Handler.seen == []
        now = node.get_clock().now().nanoseconds
        decide.publish(String(data=Decision(seq=1, issued_ns=now, route=Route.CLOUD,
                                            valid_for_ms=60_000).to_json()))
        spin_until(executor, lambda: False, timeout=0.5)
        cam.publish(image(2 * S))
        assert spin_until(executor, lambda: bool(cloud))
        assert message_to_detections(cloud[0], 'cloud').stamp_ns == 2 * S
        assert len(V2Handler.seen) == 1
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.mark.parametrize('cut', ['body.3:int8+zstd', 'body.2/body.3:int8+zstd',
                                 'body.3:bottleneck'])
def test_cloud_bridge_node_runs_split_decisions_through_its_head(graph: Any, cut: str) -> None:
    from cloud_bridge.node import CloudBridgeNode
    from offload_runtime.upstream_tail import UpstreamTail
    from rcnn_service.compact_rcnn import COMPACT_ARCH
    from rcnn_service.rcnn_detector import RcnnDetector
    from rcnn_service.service import InferenceService, ServiceConfig

    checkpoint = str(Path(__file__).resolve().parents[2] / 'models' / 'rcnn-shapes.pt')
    bottleneck = checkpoint.replace('rcnn-shapes.pt', 'rcnn-shapes-bottleneck.pt') \
        if 'bottleneck' in cut else ''
    option = f'{COMPACT_ARCH}@320:{cut}'
    service = InferenceService(ServiceConfig(port=0, bottleneck=bottleneck),
                               RcnnDetector(COMPACT_ARCH, checkpoint, input_size=320))
    # Three tiers: the middle device's service forwards from body.2 on to the cloud's tail.
    middle = InferenceService(ServiceConfig(port=0),
                              RcnnDetector(COMPACT_ARCH, checkpoint, input_size=320),
                              upstream=UpstreamTail(service.url, 'rcnn')) if '/' in cut else None
    for started in (service, middle):
        if started is not None:
            threading.Thread(target=started.serve_forever, daemon=True).start()
    executor, probe = graph
    try:
        node = CloudBridgeNode(parameter_overrides=[
            Parameter('url', value=service.url), Parameter('model', value='rcnn'),
            Parameter('split_options', value=[option]),
            Parameter('split_checkpoint', value=checkpoint),
            Parameter('split_middle_url', value=middle.url if middle else ''),
            Parameter('split_bottleneck', value=bottleneck)])
        executor.add_node(node)
        tel = collect(probe, String, '/cloud/telemetry', ros.qos_profile('result'))
        decide = probe.create_publisher(String, '/offload/decision', ros.qos_profile('latched'))
        cam = probe.create_publisher(Image, '/camera/image_raw', ros.qos_profile('newest_frame'))
        assert spin_until(executor, lambda: cam.get_subscription_count() > 0)
        now = node.get_clock().now().nanoseconds
        decide.publish(String(data=Decision(seq=1, issued_ns=now, route=Route.SPLIT,
                                            split=option, deadline_ms=30000.0,
                                            valid_for_ms=60_000).to_json()))
        spin_until(executor, lambda: False, timeout=0.5)
        cam.publish(image(3 * S))
        assert spin_until(executor, lambda: bool(tel), timeout=60)
        report = json.loads(tel[0].data)
        assert report['status'] == 'ok', report['reason']
        assert report['model'] == f'split:{option}' and report['bytes_sent'] > 0
        assert service.tail_counts['ok'] == 1  # the cloud ran the tail, via the middle or not
    finally:
        service.shutdown()
        if middle is not None:
            middle.shutdown()
