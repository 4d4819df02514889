"""ament linters over the package (flake8, pep257), as ROS packages run them."""

from __future__ import annotations

from pathlib import Path

from ros_required import require

require('ament_flake8.main', 'ament_pep257.main')

from ament_flake8.main import main_with_errors as flake8_main  # noqa: E402, I100
from ament_pep257.main import main as pep257_main  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
PATHS = [str(ROOT / p) for p in ('src', 'launch', 'test', 'benchmarks', 'setup.py')]


def test_flake8() -> None:
    rc, errors = flake8_main(argv=['--linelength', '99', *PATHS])
    assert rc == 0, f'{len(errors)} flake8 errors:\n' + '\n'.join(errors)


def test_pep257() -> None:
    # The project writes Google-style docstrings (see README); private and magic ones are free.
    assert pep257_main(argv=['--convention', 'google', '--add-ignore', 'D100', 'D104', 'D105',
                             'D107', '--', str(ROOT / 'src'), str(ROOT / 'launch')]) == 0
