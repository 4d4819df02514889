"""Shared fixtures: rosbags message classes, a fake detector, sample bags."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import pytest

from adaptive_offload.conversions import MessageTypes
from adaptive_offload.samplebag import SampleSpec, write_sample_bag
from adaptive_offload.typestore import make_typestore, message_types
from adaptive_offload.types import Detection
from edge_inference.backends import BackendOptions
from edge_inference.core import EdgeConfig, EdgeInference
from edge_inference.models import ModelPool


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
    """An edge core whose default model is ``backend`` (a :class:`FakeBackend` by default)."""
    config = EdgeConfig.from_params({'model': 'x.yaml', **(config_values or {})})
    fake = backend or FakeBackend()
    pool = ModelPool(config.default_model(), [], lambda name, options: fake,
                     BackendOptions(''))
    return EdgeInference(config, pool, clock) if clock else EdgeInference(config, pool)


@pytest.fixture(params=['humble', 'jazzy'])
def store(request: pytest.FixtureRequest) -> object:
    """A rosbags typestore of each supported distribution, with vision_msgs."""
    return make_typestore(request.param)


@pytest.fixture
def types() -> MessageTypes:
    """Jazzy message classes from rosbags."""
    return message_types(make_typestore('jazzy'))


@pytest.fixture
def fake_backend_factory() -> Callable[..., FakeBackend]:
    """A backend factory for Replay that builds :class:`FakeBackend`."""
    return lambda name, options: FakeBackend()


@pytest.fixture(scope='session')
def sample_bag_300(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 300-frame 160x120 rgb8 bag at 30 fps (built once per session)."""
    path = tmp_path_factory.mktemp('bags') / 'sample300'
    write_sample_bag(path, SampleSpec(frames=300, fps=30, width=160, height=120))
    return path


@pytest.fixture(scope='session')
def yolo_config_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    """An ultralytics settings folder private to the test session."""
    return str(tmp_path_factory.mktemp('ultralytics'))
