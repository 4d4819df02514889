"""robot.launch.py scenario:=... with a bag played by ``ros2 bag play`` (needs ROS 2, built)."""

from __future__ import annotations

import os
from pathlib import Path
import subprocess
import sys
import tempfile
from typing import Any
import unittest

import pytest
from ros_required import require
import yaml

require('rclpy', 'launch', 'launch_ros', 'launch_testing', 'ament_index_python')

from adaptive_offload import ros_interface as ros  # noqa: E402, I100
from adaptive_offload import topics  # noqa: E402
from adaptive_offload.datatypes import FrameRecord  # noqa: E402
from adaptive_offload.health_records import FaultEvent  # noqa: E402
from ament_index_python.packages import get_package_share_directory  # noqa: E402
import launch  # noqa: E402
from launch.actions import IncludeLaunchDescription  # noqa: E402
from launch.launch_description_sources import PythonLaunchDescriptionSource  # noqa: E402
import launch_testing.actions  # noqa: E402
import launch_testing.asserts  # noqa: E402
from ros_helpers import LaunchProbe  # noqa: E402
from std_msgs.msg import String  # noqa: E402

WORK = Path(tempfile.mkdtemp(prefix='rehearsal-'))


def _params_file() -> str:
    share = Path(get_package_share_directory('adaptive_offload'))
    params = yaml.safe_load((share / 'config' / 'params.yaml').read_text())
    edge = params['/**/edge_inference']['ros__parameters']
    edge.update(model='yolov8n.yaml', imgsz=160, ultralytics_config_dir=str(WORK / 'yolo'))
    params['/**/offload_manager']['ros__parameters'].update(edge_imgsz=160, policy='static',
                                                            static_route='edge')
    (WORK / 'params.yaml').write_text(yaml.safe_dump(params))
    (WORK / 'scenario.yaml').write_text(
        'name: edge and manager\nfaults:\n'
        '  - {kind: edge_stall, start_s: 2.0, duration_s: 1.0}\n'
        '  - {kind: manager_death, start_s: 4.0, duration_s: 1.0}\n')
    return str(WORK / 'params.yaml')


@pytest.mark.launch_test
def generate_test_description() -> tuple[launch.LaunchDescription, dict[str, Any]]:
    """Launch the robot graph rehearsing an edge stall and a manager death, without the cloud."""
    share = Path(get_package_share_directory('adaptive_offload'))
    robot = IncludeLaunchDescription(
        PythonLaunchDescriptionSource(str(share / 'launch' / 'robot.launch.py')),
        # Under sim time the rehearsal starts with the bag's /clock: faults at bag time.
        launch_arguments={'params_file': _params_file(), 'cloud': 'false',
                          'use_sim_time': 'true',
                          'scenario': str(WORK / 'scenario.yaml')}.items())
    return launch.LaunchDescription([robot, launch_testing.actions.ReadyToTest()]), {}


class TestRehearsal(LaunchProbe, unittest.TestCase):
    """A bag played into the rehearsing graph: faults announced, every frame recorded."""

    def test_a_played_bag_goes_through_the_faults(self) -> None:
        faults: list[String] = []
        records: list[String] = []
        self.node.create_subscription(String, topics.HEALTH_FAULTS, faults.append,
                                      ros.qos_profile('result'))
        self.node.create_subscription(String, topics.FRAMES, records.append,
                                      ros.qos_profile('result'))
        self.assertTrue(self.spin_until(
            lambda: {'edge_inference', 'offload_manager', 'health_monitor'} <=
            set(self.node.get_node_names()), timeout=60))
        bag = WORK / 'bag'
        subprocess.run([sys.executable, '-m', 'offload_runtime.cli', 'sample-bag', str(bag),
                        '--frames', '80', '--fps', '10', '--width', '64', '--height', '48'],
                       check=True, timeout=120, env={**os.environ, 'YOLO_OFFLINE': '1'})
        play = subprocess.Popen(['ros2', 'bag', 'play', '--clock', '100', str(bag)])
        try:
            self.assertTrue(self.spin_until(lambda: len(faults) >= 4, timeout=60),
                            [m.data for m in faults])
            self.assertEqual(play.wait(timeout=60), 0)
        finally:
            play.kill()
        self.spin_until(lambda: False, timeout=2.0)
        kinds = [(e.kind, e.phase) for e in (FaultEvent.from_json(m.data) for m in faults)]
        self.assertEqual(kinds, [('edge_stall', 'start'), ('edge_stall', 'end'),
                                 ('manager_death', 'start'), ('manager_death', 'end')])
        parsed = [FrameRecord.from_json(m.data) for m in records]
        self.assertGreater(len(parsed), 40)
        for record in parsed:  # every frame ends with a result or a reason
            self.assertTrue(record.result_source or record.drop_reason, record)


@launch_testing.post_shutdown_test()
class TestShutdown(unittest.TestCase):
    """Every node exits cleanly (and the rehearsal undoes its faults) when the launch stops."""

    def test_exit_codes(self, proc_info: Any) -> None:
        launch_testing.asserts.assertExitCodes(proc_info)
