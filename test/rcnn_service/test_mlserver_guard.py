"""The MLServer guard's parts, run in a child process of their own.

``rcnn_service.mlserver_guard`` loads MLServer's gRPC messages and the bridge's gRPC client loads
tritonclient's; both define the protobuf package ``inference``, and one process cannot hold
both (a robot's bridge and a GPU host's service never share one). The cases are in
``mlserver_guard_cases.py``.
"""

from __future__ import annotations

import os
from pathlib import Path
import subprocess
import sys

ROOT = Path(__file__).resolve().parents[2]


def test_the_mlserver_guard_cases_pass_in_their_own_process() -> None:
    cases = Path(__file__).with_name('mlserver_guard_cases.py')
    # Not the parent's PYTEST_ADDOPTS: under colcon test it names the parent's JUnit file,
    # which this run would overwrite.
    env = {k: v for k, v in os.environ.items() if k != 'PYTEST_ADDOPTS'}
    env['PYTHONPATH'] = os.pathsep.join(
        [str(ROOT / 'src'), str(ROOT / 'test'), os.environ.get('PYTHONPATH', '')])
    run = subprocess.run([sys.executable, '-m', 'pytest', '-q', '-p', 'no:cacheprovider',
                          str(cases)], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=300, check=False)
    assert run.returncode == 0, run.stdout + run.stderr
    assert ' passed' in run.stdout and 'skipped' not in run.stdout, run.stdout
