"""Skip policy of the ROS-only tests.

Without rclpy these tests skip, except where ``ADAPTIVE_OFFLOAD_REQUIRE_ROS=1`` is set (a ROS
CI): there a missing ROS module fails the run, so a broken ROS environment never passes as
"skipped".
"""

from __future__ import annotations

import importlib
import os

import pytest

ENV = 'ADAPTIVE_OFFLOAD_REQUIRE_ROS'


def require(*modules: str) -> None:
    """Import ``modules`` or skip (fail under ``ADAPTIVE_OFFLOAD_REQUIRE_ROS=1``) the module."""
    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError as err:
            reason = f'{name} not importable ({err}); source a ROS 2 Humble/Jazzy setup'
            if os.environ.get(ENV) == '1':
                pytest.fail(f'{ENV}=1 but {reason}', pytrace=False)
            pytest.skip(reason, allow_module_level=True)
