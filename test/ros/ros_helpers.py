"""Helpers of the ROS-only tests; import them after ``ros_required.require``."""

from __future__ import annotations

import contextlib
from pathlib import Path
import time
from typing import Any, Callable, Iterator

import rclpy
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node


def node_args(tmp_path: Path, *extra: str) -> list[str]:
    """Return rclpy arguments for fast nodes: a random-weight model at 160 px, offline."""
    return ['--ros-args', '-p', 'model:=yolov8n.yaml', '-p', 'imgsz:=160',
            '-p', 'edge_imgsz:=160', '-p', f'ultralytics_config_dir:={tmp_path}',
            '-p', 'publish_period_s:=0.2', *extra]


@contextlib.contextmanager
def running(args: list[str]) -> Iterator[tuple[SingleThreadedExecutor, Node]]:
    """Start rclpy, an executor and a probe node; destroy every node and shut down after."""
    rclpy.init(args=args)
    executor = SingleThreadedExecutor()
    probe = Node('probe')
    executor.add_node(probe)
    try:
        yield executor, probe
    finally:
        for node in executor.get_nodes():
            executor.remove_node(node)
            node.destroy_node()
        executor.shutdown()
        rclpy.try_shutdown()


def spin_until(executor: SingleThreadedExecutor, done: Callable[[], bool],
               timeout: float = 30.0) -> bool:
    """Spin until ``done()`` or the timeout; True if done."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not done():
        executor.spin_once(timeout_sec=0.05)
    return done()


class LaunchProbe:
    """A probe node for launch_testing test cases (mix in before ``unittest.TestCase``)."""

    node: Any

    @classmethod
    def setUpClass(cls) -> None:  # noqa: N802 - unittest's name
        rclpy.init()
        cls.node = rclpy.create_node('launch_probe')

    @classmethod
    def tearDownClass(cls) -> None:  # noqa: N802 - unittest's name
        cls.node.destroy_node()
        rclpy.try_shutdown()

    def spin_until(self, done: Callable[[], Any], timeout: float) -> bool:
        """Spin the probe until ``done()`` or the timeout; True if done."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not done():
            rclpy.spin_once(self.node, timeout_sec=0.1)
        return bool(done())
