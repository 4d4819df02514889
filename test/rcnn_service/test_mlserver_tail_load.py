"""The tail model's bounded load, run in a child process of its own.

``rcnn_service.mlserver_tail`` loads MLServer's gRPC messages, and tritonclient's (loaded by
other tests of this process) define the same protobuf package ``inference``: one process cannot
hold both. The cases are in ``mlserver_tail_load_cases.py``.
"""

from __future__ import annotations

from pathlib import Path

from helpers import pytest_in_own_process


def test_the_tail_load_cases_pass_in_their_own_process() -> None:
    pytest_in_own_process(Path(__file__).with_name('mlserver_tail_load_cases.py'))
