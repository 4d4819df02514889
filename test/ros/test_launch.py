"""robot.launch.py end to end under launch_testing (needs ROS 2 and the built package)."""

from __future__ import annotations

from pathlib import Path
import tempfile
import time
from typing import Any
import unittest

import numpy as np
import pytest
from ros_required import require
import yaml

require('rclpy', 'launch', 'launch_ros', 'launch_testing', 'ament_index_python')

from adaptive_offload import ros_interface as ros  # noqa: E402, I100
from adaptive_offload.conversions import frame_to_message, stamp_to_ns  # noqa: E402
from adaptive_offload.datatypes import FrameRecord  # noqa: E402
from ament_index_python.packages import get_package_share_directory  # noqa: E402
import launch  # noqa: E402
from launch.actions import IncludeLaunchDescription  # noqa: E402
from launch.launch_description_sources import PythonLaunchDescriptionSource  # noqa: E402
import launch_testing.actions  # noqa: E402
import launch_testing.asserts  # noqa: E402
from ros_helpers import LaunchProbe  # noqa: E402
from sensor_msgs.msg import Image  # noqa: E402
from std_msgs.msg import String  # noqa: E402
from vision_msgs.msg import Detection2DArray  # noqa: E402

NODES = ('edge_inference', 'cloud_bridge', 'offload_manager', 'health_monitor')


def _params_file() -> str:
    """Return the shipped params.yaml with a random-weight model (no weights are downloaded)."""
    share = Path(get_package_share_directory('adaptive_offload'))
    params = yaml.safe_load((share / 'config' / 'params.yaml').read_text())
    edge = params['/**/edge_inference']['ros__parameters']
    edge.update(model='yolov8n.yaml', imgsz=160,
                ultralytics_config_dir=tempfile.mkdtemp(prefix='yolo-'))
    params['/**/offload_manager']['ros__parameters']['edge_imgsz'] = 160
    # Nothing listens on port 9: a service someone runs on 8081 must not answer the probes.
    params['/**/cloud_bridge']['ros__parameters']['url'] = 'grpc://127.0.0.1:9'
    out = Path(tempfile.mkdtemp(prefix='params-')) / 'params.yaml'
    out.write_text(yaml.safe_dump(params))
    return str(out)


@pytest.mark.launch_test
def generate_test_description() -> tuple[launch.LaunchDescription, dict[str, Any]]:
    """Launch robot.launch.py with the test parameters."""
    share = Path(get_package_share_directory('adaptive_offload'))
    robot = IncludeLaunchDescription(
        PythonLaunchDescriptionSource(str(share / 'launch' / 'robot.launch.py')),
        launch_arguments={'params_file': _params_file()}.items())
    return launch.LaunchDescription([robot, launch_testing.actions.ReadyToTest()]), {}


class TestRobotGraph(LaunchProbe, unittest.TestCase):
    """The launched graph: nodes up, an image in, a fused result and a record out."""

    def test_nodes_come_up(self) -> None:
        self.assertTrue(self.spin_until(
            lambda: set(NODES) <= set(self.node.get_node_names()), timeout=60),
            self.node.get_node_names())

    def test_an_image_becomes_one_fused_result_and_one_record(self) -> None:
        fused: list[Detection2DArray] = []
        records: list[String] = []
        self.node.create_subscription(Detection2DArray, '/detections', fused.append,
                                      ros.qos_profile('result'))
        self.node.create_subscription(String, '/offload/frames', records.append,
                                      ros.qos_profile('result'))
        pub = self.node.create_publisher(Image, '/camera/image_raw',
                                         ros.qos_profile('newest_frame'))
        pixels = np.full((48, 64, 3), 80, np.uint8)
        stamp = 0
        deadline = time.monotonic() + 90  # the edge node loads its model first
        while not fused and time.monotonic() < deadline:
            stamp += 1
            pub.publish(frame_to_message(ros.message_types(), pixels, stamp * 100_000_000,
                                         'cam', 'rgb8'))
            self.spin_until(lambda: bool(fused), timeout=1.0)
        self.assertTrue(fused, 'no /detections within 90 s')
        stamp_ns = stamp_to_ns(fused[0].header.stamp)

        def record_of_fused() -> list[FrameRecord]:
            parsed = [FrameRecord.from_json(m.data) for m in records]
            return [r for r in parsed if r.stamp_ns == stamp_ns]

        self.assertTrue(self.spin_until(lambda: bool(record_of_fused()), timeout=5))
        [record] = record_of_fused()
        self.assertEqual((record.result_source, record.drop_reason), ('edge', ''))
        # frames sent while the model was still loading ended as explicit drops, not silence
        for other in (FrameRecord.from_json(m.data) for m in records):
            self.assertTrue(other.result_source or other.drop_reason, other)


@launch_testing.post_shutdown_test()
class TestShutdown(unittest.TestCase):
    """Every node exits cleanly when the launch stops (SIGINT)."""

    def test_exit_codes(self, proc_info: Any) -> None:
        launch_testing.asserts.assertExitCodes(proc_info)
