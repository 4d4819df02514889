"""Files the package ships: found in the source tree or where colcon installed them."""

from __future__ import annotations

from pathlib import Path

PACKAGE = 'adaptive_offload'


def shipped_config(*parts: str) -> Path:
    """Return a file under the package's ``config/``: the source tree's, or share/'s.

    The first that exists wins; if none does, the source tree's path (for the error message).
    """
    return _shipped('config', *parts)


def shipped_model(*parts: str) -> Path:
    """Return a file under the package's ``models/`` (the trained detectors it ships).

    The source tree's or share/'s, as :func:`shipped_config`.
    """
    return _shipped('models', *parts)


def _shipped(folder: str, *parts: str) -> Path:
    here = Path(__file__).resolve()
    candidates = [here.parents[2].joinpath(folder, *parts)]
    if len(here.parents) > 4:  # <prefix>/lib/pythonX.Y/site-packages/adaptive_offload/
        candidates.append(here.parents[4].joinpath('share', PACKAGE, folder, *parts))
    return next((c for c in candidates if c.exists()), candidates[0])
