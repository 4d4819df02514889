"""The style ament linters enforce in a ROS CI, checked here too: flake8, Google docstrings."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_flake8() -> None:
    result = subprocess.run([sys.executable, '-m', 'flake8', '--max-line-length', '99', 'src',
                             'test', 'launch', 'benchmarks', 'setup.py'], cwd=ROOT,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr


def test_docstrings() -> None:
    result = subprocess.run([sys.executable, '-m', 'pydocstyle', '--convention=google',
                             '--add-ignore=D100,D104,D105,D107', 'src', 'launch'], cwd=ROOT,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
