"""robot.launch.py ends, every node with it, when one node exits (needs the built package)."""

from __future__ import annotations

import os
from pathlib import Path
import shutil
import signal
import subprocess
import tempfile
import threading
import time

import pytest
from ros_required import require
import yaml

require('rclpy', 'launch', 'launch_ros', 'ament_index_python')

from ament_index_python.packages import get_package_share_directory  # noqa: E402, I100

NODES = ('edge_inference', 'cloud_bridge', 'offload_manager', 'health_monitor')


def _bad_model_params() -> str:
    """Write the shipped params.yaml with an edge model that does not exist; return its path."""
    share = Path(get_package_share_directory('adaptive_offload'))
    params = yaml.safe_load((share / 'config' / 'params.yaml').read_text())
    params['/**/edge_inference']['ros__parameters']['model'] = '/nonexistent/weights.pt'
    params['/**/cloud_bridge']['ros__parameters']['url'] = 'grpc://127.0.0.1:9'
    out = Path(tempfile.mkdtemp(prefix='params-')) / 'params.yaml'
    out.write_text(yaml.safe_dump(params))
    return str(out)


def _ros2() -> str:
    ros2 = shutil.which('ros2')
    if ros2 is None:
        pytest.fail('ros2 is not on PATH: source the ROS 2 setup', pytrace=False)
    return ros2


def _default_sigint() -> None:
    # A shell's background job starts with SIGINT ignored, and a child inherits that.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_a_node_that_cannot_start_stops_the_launch_and_every_other_node() -> None:
    # bounded: without the shutdown it would run until the timeout
    done = subprocess.run([_ros2(), 'launch', 'adaptive_offload', 'robot.launch.py',
                           f'params_file:={_bad_model_params()}'],
                          capture_output=True, text=True, timeout=120,
                          preexec_fn=_default_sigint)
    log = done.stdout + done.stderr
    assert '/nonexistent/weights.pt' in log
    assert 'process[edge_inference-1] was required: shutting down' in log, log[-3000:]
    for name in NODES[1:]:  # stopped by the launch, not left running
        assert f"sending signal 'SIGINT' to process[{name}-" in log, log[-3000:]
    ended = log.count('process has finished cleanly') + log.count('process has died')
    assert ended == len(NODES), log[-3000:]


def test_required_false_keeps_the_others_running() -> None:
    proc = subprocess.Popen([_ros2(), 'launch', 'adaptive_offload', 'robot.launch.py',
                             f'params_file:={_bad_model_params()}', 'required:=false'],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True, preexec_fn=_default_sigint)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout or ()), daemon=True)
    reader.start()
    others: set[str] = set()
    try:
        for _ in range(600):  # bounded: until the edge node has died and the others are up
            edge_died = any('edge_inference-1]: process has died' in line for line in lines)
            if edge_died:
                listed = subprocess.run([_ros2(), 'node', 'list'], capture_output=True,
                                        text=True, timeout=30).stdout
                others = {n for n in NODES[1:] if f'/{n}' in listed}
                if others == set(NODES[1:]):
                    break
            time.sleep(0.1)
        still_running = proc.poll() is None
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        reader.join(10)
    log = ''.join(lines)
    assert still_running and others == set(NODES[1:]), log[-3000:]
    assert '/nonexistent/weights.pt' in log and 'was required: shutting down' not in log
