"""The type check CI runs: mypy on src/ at the level setup.cfg's [mypy] section states."""

from __future__ import annotations

import importlib.util
from pathlib import Path
import subprocess
import sys

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_mypy_finds_no_errors_in_src() -> None:
    if importlib.util.find_spec('mypy') is None:
        pytest.skip('mypy is not installed (requirements-dev.txt has it)')
    # The default cache (.mypy_cache/, ignored by git) keeps reruns to a few seconds.
    result = subprocess.run([sys.executable, '-m', 'mypy', '--config-file', 'setup.cfg'],
                            cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
