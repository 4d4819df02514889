"""The style ament linters enforce in a ROS CI, checked here too: flake8, Google docstrings."""

from __future__ import annotations

from pathlib import Path
import subprocess
import sys

ROOT = Path(__file__).resolve().parents[1]


# ament_flake8's own plugin set: without one of them flake8 would skip its rules silently.
AMENT_PLUGINS = ('flake8-builtins', 'flake8-comprehensions', 'flake8-docstrings',
                 'flake8_import_order', 'flake8-quotes')


def test_flake8_has_the_plugins_ament_runs() -> None:
    result = subprocess.run([sys.executable, '-m', 'flake8', '--version'], capture_output=True,
                            text=True, timeout=60, check=True)
    missing = [p for p in AMENT_PLUGINS if p not in result.stdout]
    assert not missing, f'install requirements-dev.txt: flake8 lacks {missing}'


def test_flake8() -> None:
    result = subprocess.run([sys.executable, '-m', 'flake8', '--config', 'setup.cfg', 'src',
                             'test', 'launch', 'benchmarks', 'setup.py'], cwd=ROOT,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr


def test_docstrings() -> None:
    result = subprocess.run([sys.executable, '-m', 'pydocstyle', '--convention=google',
                             '--add-ignore=D100,D104,D105,D107', 'src', 'launch'], cwd=ROOT,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
