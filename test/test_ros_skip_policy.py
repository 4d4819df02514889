"""Without ROS the ROS-only tests skip, and fail when a ROS CI demands them."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
import subprocess
import sys

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run(require: bool) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ('ADAPTIVE_OFFLOAD_REQUIRE_ROS', 'PYTEST_ADDOPTS')}
    if require:
        env['ADAPTIVE_OFFLOAD_REQUIRE_ROS'] = '1'
    return subprocess.run([sys.executable, '-m', 'pytest', '-q', '-p', 'no:cacheprovider',
                           str(ROOT / 'test' / 'ros')], cwd=ROOT, env=env, text=True,
                          capture_output=True, timeout=300)


@pytest.mark.skipif(importlib.util.find_spec('rclpy') is not None,
                    reason='rclpy is importable: the ROS tests really run here')
def test_ros_tests_skip_without_ros_and_fail_when_required() -> None:
    skipped = _run(require=False)
    # every module skips at import, so pytest may report "no tests collected" (5): not a failure
    assert skipped.returncode in (0, 5), skipped.stdout + skipped.stderr
    modules = len(list((ROOT / 'test' / 'ros').glob('test_*.py')))
    assert f'{modules} skipped' in skipped.stdout and 'passed' not in skipped.stdout
    required = _run(require=True)
    assert required.returncode != 0
    assert 'ADAPTIVE_OFFLOAD_REQUIRE_ROS=1 but rclpy not importable' in required.stdout
