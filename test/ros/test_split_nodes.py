"""A split detector under ROS: a head node and a tail node in one process (needs ROS 2).

The head (namespace robot) takes the camera and publishes its crossing tensors on
/robot/edge/split; the tail (namespace pi) takes them and publishes detections on
/pi/edge/detections: with fp32 on the wire, the unsplit backend's, through real DDS.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import pytest
from ros_required import require

require('rclpy', 'rclpy.lifecycle', 'sensor_msgs.msg', 'vision_msgs.msg')

from adaptive_offload import ros_interface as ros  # noqa: E402, I100
from adaptive_offload.conversions import (detections_to_message, frame_to_message,  # noqa: E402
                                          message_to_detections)
from adaptive_offload.datatypes import (Decision, DetectionSet, InferenceReport,  # noqa: E402
                                        Route)
from edge_inference.backends import create_backend  # noqa: E402
from edge_inference.detector import BackendOptions  # noqa: E402
from offload_runtime.sample_bag import SampleSpec, Scene  # noqa: E402
from rclpy.executors import SingleThreadedExecutor  # noqa: E402
from rclpy.node import Node  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402
from ros_helpers import node_args, running, spin_until  # noqa: E402
from sensor_msgs.msg import CompressedImage, Image  # noqa: E402
from std_msgs.msg import String  # noqa: E402
from vision_msgs.msg import Detection2DArray  # noqa: E402

S = 1_000_000_000
MODEL = str(Path(__file__).resolve().parents[2] / 'models' / 'yolov8n-shapes.pt')
K = 22
IMGSZ = 320


@pytest.fixture
def graph(tmp_path: Path) -> Iterator[tuple[SingleThreadedExecutor, Node]]:
    """Start rclpy with the test overrides, an executor and a probe node; shut down after."""
    with running(node_args(tmp_path, '-p', f'imgsz:={IMGSZ}')) as started:
        yield started


def split_node(role: str, namespace: str, **values: Any) -> Any:
    """Return an edge_inference node of a split role, configured and active."""
    from edge_inference.node import EdgeInferenceNode

    params = {'model': MODEL, 'split_role': role, 'split_point': K, 'source_name': namespace,
              'split_encoding': 'fp32+zstd', **values}
    overrides = [Parameter(name, value=value) for name, value in params.items()]
    return EdgeInferenceNode(namespace=namespace, parameter_overrides=overrides)


def collect(probe: Node, msg_type: Any, topic: str, qos: str) -> list[Any]:
    """Subscribe the probe; returns the list the messages land in."""
    got: list[Any] = []
    probe.create_subscription(msg_type, topic, got.append, ros.qos_profile(qos))
    return got


@pytest.mark.parametrize('tail_point', [K, 0])  # the head's k, or 0: follow the head
def test_a_head_node_and_a_tail_node_detect_as_the_unsplit_backend(
        graph: Any, tmp_path: Path, tail_point: int) -> None:
    executor, probe = graph
    dets = collect(probe, Detection2DArray, '/pi/edge/detections', 'result')
    tail_tel = collect(probe, String, '/pi/edge/telemetry', 'result')
    head_tel = collect(probe, String, '/robot/edge/telemetry', 'result')
    split = collect(probe, CompressedImage, '/robot/edge/split', 'newest_frame')
    camera = probe.create_publisher(Image, '/camera/image_raw', ros.qos_profile('newest_frame'))
    for node in (split_node('head', 'robot'),
                 split_node('tail', 'pi', split_topic='/robot/edge/split',
                            split_point=tail_point)):
        executor.add_node(node)
    assert spin_until(executor, lambda: camera.get_subscription_count() > 0 and
                      probe.count_subscribers('/robot/edge/split') >= 2)

    backend = create_backend('ultralytics', BackendOptions(MODEL, 'cpu', str(tmp_path)))
    types = ros.message_types()
    for stamp in (1 * S, 2 * S):
        image, _ = Scene(SampleSpec(width=640, height=480, seed=stamp // S)).render(0.3)
        msg = frame_to_message(types, image, stamp, 'cam', 'bgr8')
        # Best effort, as camera frames travel: resend a frame the graph lost.
        for _ in range(5):
            camera.publish(msg)
            if spin_until(executor, lambda s=stamp: any(
                    message_to_detections(d, 'pi').stamp_ns == s for d in dets), timeout=10):
                break
        got = next(message_to_detections(d, 'pi') for d in dets
                   if message_to_detections(d, 'pi').stamp_ns == stamp)
        want = DetectionSet(stamp, 'cam', 'pi', backend.infer(image, IMGSZ, 0.25, 0.7, None, 100))
        assert want.detections  # the scene has objects the model sees
        assert got == message_to_detections(detections_to_message(types, want), 'pi')

    assert spin_until(executor, lambda: bool(head_tel) and len(tail_tel) >= 2)
    heads = [InferenceReport.from_json(m.data) for m in head_tel]
    tails = [InferenceReport.from_json(m.data) for m in tail_tel]
    option = f'yolov8n-shapes@{IMGSZ}:{K}/end:fp32+zstd'  # the head's parameters: no decision's
    assert all(r.status == 'forwarded' and r.source == 'robot' and r.bytes_sent > 0 and
               r.detections == 0 and r.split == option for r in heads)
    assert {r.stamp_ns for r in tails if r.status == 'ok'} >= {1 * S, 2 * S}
    assert all(r.source == 'pi' and r.imgsz == IMGSZ and r.split == option for r in tails)
    assert split and split[0].format.startswith('adaptive_offload/yolo-split; header_length=')
    assert split[0].header.frame_id == 'cam'


def head_topics(probe: Node) -> tuple[list[Any], list[Any], list[Any], Any]:
    """Subscribe to a head's detections, telemetry and split; return them and a camera."""
    return (collect(probe, Detection2DArray, '/robot/edge/detections', 'result'),
            collect(probe, String, '/robot/edge/telemetry', 'result'),
            collect(probe, CompressedImage, '/robot/edge/split', 'newest_frame'),
            probe.create_publisher(Image, '/camera/image_raw', ros.qos_profile('newest_frame')))


def answered_whole(executor: SingleThreadedExecutor, camera: Any, dets: list[Any],
                   tmp_path: Path) -> tuple[Any, Any]:
    """Send a scene as frame 1 s until the head answers; check it is the unsplit backend's."""
    image, _ = Scene(SampleSpec(width=640, height=480, seed=3)).render(0.3)
    types = ros.message_types()
    msg = frame_to_message(types, image, 1 * S, 'cam', 'bgr8')
    for _ in range(5):  # best effort: resend a frame the graph lost
        camera.publish(msg)
        if spin_until(executor, lambda: bool(dets), timeout=10):
            break
    backend = create_backend('ultralytics', BackendOptions(MODEL, 'cpu', str(tmp_path)))
    want = DetectionSet(1 * S, 'cam', 'robot', backend.infer(image, IMGSZ, 0.25, 0.7, None, 100))
    assert want.detections  # the scene has objects the model sees
    assert message_to_detections(dets[0], 'robot') == \
        message_to_detections(detections_to_message(types, want), 'robot')
    return image, types


def test_a_head_node_at_point_0_answers_the_frames_no_decision_splits(
        graph: Any, tmp_path: Path) -> None:
    executor, probe = graph
    dets, head_tel, split, camera = head_topics(probe)
    executor.add_node(split_node('head', 'robot', split_point=0))
    assert spin_until(executor, lambda: camera.get_subscription_count() > 0)

    answered_whole(executor, camera, dets, tmp_path)
    assert spin_until(executor, lambda: bool(head_tel))
    report = InferenceReport.from_json(head_tel[0].data)
    assert (report.status, report.split, report.split_role) == ('ok', '', 'head')
    assert not split  # no decision named a split: nothing crossed


def test_a_head_node_at_point_0_sends_the_decisions_split_probe_and_answers_too(
        graph: Any, tmp_path: Path) -> None:
    executor, probe = graph
    dets, head_tel, split, camera = head_topics(probe)
    decisions = probe.create_publisher(String, '/offload/decision', ros.qos_profile('latched'))
    option = f'yolov8n-shapes@{IMGSZ}:6/end:int8+zstd'
    now = probe.get_clock().now().nanoseconds  # the nodes' clock: system time here
    decision = Decision(seq=1, issued_ns=now, valid_for_ms=60_000.0, route=Route.EDGE,
                        edge_model='yolov8n-shapes', edge_imgsz=IMGSZ, probe_every=1,
                        deadline_ms=400.0, split_probe=option)
    decisions.publish(String(data=decision.to_json()))
    executor.add_node(split_node('head', 'robot', split_point=0))
    assert spin_until(executor, lambda: camera.get_subscription_count() > 0 and
                      decisions.get_subscription_count() > 0)
    spin_until(executor, lambda: False, timeout=0.5)  # the latched decision arrives

    image, _ = Scene(SampleSpec(width=640, height=480, seed=3)).render(0.3)
    msg = frame_to_message(ros.message_types(), image, 1 * S, 'cam', 'bgr8')
    for _ in range(5):  # best effort: resend a frame the graph lost
        camera.publish(msg)
        if spin_until(executor, lambda: bool(dets) and bool(split), timeout=10):
            break
    assert spin_until(executor, lambda: bool(head_tel))
    report = InferenceReport.from_json(head_tel[0].data)
    assert (report.status, report.split, report.split_probe, report.split_role) == \
        ('ok', '', option, 'head')
    assert report.bytes_sent == len(bytes(split[0].data)) and report.detections == len(
        message_to_detections(dets[0], 'robot').detections)
    assert split[0].header.stamp.sec == 1


def test_a_head_node_no_tail_subscribes_to_answers_its_frames_itself(
        graph: Any, tmp_path: Path) -> None:
    """Sent before a tail subscribes (or after it went), split frames would be lost."""
    executor, probe = graph
    dets = collect(probe, Detection2DArray, '/robot/edge/detections', 'result')
    head_tel = collect(probe, String, '/robot/edge/telemetry', 'result')
    camera = probe.create_publisher(Image, '/camera/image_raw', ros.qos_profile('newest_frame'))
    executor.add_node(split_node('head', 'robot'))
    assert spin_until(executor, lambda: camera.get_subscription_count() > 0)

    image, types = answered_whole(executor, camera, dets, tmp_path)
    assert spin_until(executor, lambda: bool(head_tel))
    report = InferenceReport.from_json(head_tel[0].data)
    option = f'yolov8n-shapes@{IMGSZ}:{K}/end:fp32+zstd'
    assert (report.status, report.split_unsent, report.split_role) == ('ok', option, 'head')
    # A tail (here the probe) subscribes: the next frame crosses.
    split = collect(probe, CompressedImage, '/robot/edge/split', 'newest_frame')
    assert spin_until(executor, lambda: probe.count_subscribers('/robot/edge/split') > 0)
    spin_until(executor, lambda: False, timeout=0.5)  # the head's publisher matches it
    msg = frame_to_message(types, image, 2 * S, 'cam', 'bgr8')
    for _ in range(5):
        camera.publish(msg)
        if spin_until(executor, lambda: bool(split), timeout=10):
            break
    assert split and split[0].header.stamp.sec == 2
    assert spin_until(executor, lambda: any(
        InferenceReport.from_json(m.data).status == 'forwarded' for m in head_tel))
