"""The tail model's bounded load, run in a child process of its own.

``rcnn_service.mlserver_tail`` loads MLServer's gRPC messages, and tritonclient's (loaded by
other tests of this process) define the same protobuf package ``inference``: one process cannot
hold both. The cases are in ``mlserver_tail_load_cases.py``.
"""

from __future__ import annotations

import os
from pathlib import Path
import subprocess
import sys

ROOT = Path(__file__).resolve().parents[2]


def test_the_tail_load_cases_pass_in_their_own_process() -> None:
    cases = Path(__file__).with_name('mlserver_tail_load_cases.py')
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
