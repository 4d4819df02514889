"""The MLServer guard's parts, run in a child process of their own.

``rcnn_service.mlserver_guard`` loads MLServer's gRPC messages and the bridge's gRPC client loads
tritonclient's; both define the protobuf package ``inference``, and one process cannot hold
both (a robot's bridge and a GPU host's service never share one). The cases are in
``mlserver_guard_cases.py``.
"""

from __future__ import annotations

from pathlib import Path

from helpers import pytest_in_own_process


def test_the_mlserver_guard_cases_pass_in_their_own_process() -> None:
    pytest_in_own_process(Path(__file__).with_name('mlserver_guard_cases.py'))
