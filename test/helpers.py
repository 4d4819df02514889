"""Test doubles shared by the tests: a fake detector, a manual clock, a fake edge core."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

from adaptive_offload.datatypes import Detection
from edge_inference.backends import BackendOptions
from edge_inference.inference import EdgeConfig, EdgeInference
from edge_inference.model_pool import ModelPool
import numpy as np


class FakeBackend:
    """A deterministic detector: one box over the image centre, optionally slow.

    Args:
        advance: Called once per inference (tests pass a manual clock's advance to model
            inference time without sleeping).
    """

    names = {0: 'box', 1: 'disc'}

    def __init__(self, advance: Callable[[], None] | None = None) -> None:
        self.calls: list[tuple[tuple[int, ...], int]] = []
        self._advance = advance

    def infer(self, image: np.ndarray, imgsz: int, conf: float, iou: float,
              classes: tuple[int, ...] | None, max_det: int) -> tuple[Detection, ...]:
        self.calls.append((image.shape, imgsz))
        if self._advance is not None:
            self._advance()
        h, w = image.shape[:2]
        det = Detection(w / 4, h / 4, 3 * w / 4, 3 * h / 4, 0.9, 'box')
        return (det,) if classes is None or 0 in classes else ()


class ManualClock:
    """A nanosecond clock that moves only when told."""

    def __init__(self, start_ns: int = 1_000_000_000) -> None:
        self.now = start_ns

    def __call__(self) -> int:
        return self.now

    def advance(self, ms: float) -> None:
        self.now += int(ms * 1e6)


def fake_edge(config_values: dict | None = None, backend: FakeBackend | None = None,
              clock: Callable[[], int] | None = None) -> EdgeInference:
    """Build an edge core whose default model is ``backend`` (default a :class:`FakeBackend`)."""
    config = EdgeConfig.from_params({'model': 'x.yaml', **(config_values or {})})
    fake = backend or FakeBackend()
    pool = ModelPool(config.default_model(), [], lambda name, options: fake,
                     BackendOptions(''))
    return EdgeInference(config, pool, clock) if clock else EdgeInference(config, pool)


def child_env() -> dict[str, str]:
    """Return this environment with the source tree first on PYTHONPATH, for child processes.

    Prepended, not replaced: on a robot the dependencies may come from PYTHONPATH (a ROS
    workspace, a venv's site-packages), and a child without them could not even start.
    """
    src = str(Path(__file__).resolve().parents[1] / 'src')
    rest = os.environ.get('PYTHONPATH', '')
    return dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (src, rest) if p))
