"""Shared fixtures: rosbags message classes, a fake detector, sample bags; fuzz budgets."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

from adaptive_offload.conversions import MessageTypes
from adaptive_offload.typestore import make_typestore, message_types
from fuzzing import CI_EXAMPLES
from helpers import FakeBackend
from hypothesis import HealthCheck, settings
from offload_runtime.sample_bag import SampleSpec, write_sample_bag
import pytest

# The fuzz tests' budgets (see test/fuzzing.py). ci: few examples, the same ones on every run,
# no example database, so CI is bounded and reproducible; fuzz: a longer random local run.
settings.register_profile('ci', max_examples=CI_EXAMPLES, deadline=None, derandomize=True,
                          database=None, print_blob=True,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile('fuzz', max_examples=50 * CI_EXAMPLES, deadline=None,
                          print_blob=True, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get('ADAPTIVE_OFFLOAD_FUZZ', 'ci'))


@pytest.fixture(params=['humble', 'jazzy'])
def store(request: pytest.FixtureRequest) -> object:
    """Return a rosbags typestore of each supported distribution, with vision_msgs."""
    return make_typestore(request.param)


@pytest.fixture
def types() -> MessageTypes:
    """Jazzy message classes from rosbags."""
    return message_types(make_typestore('jazzy'))


@pytest.fixture
def fake_backend_factory() -> Callable[..., FakeBackend]:
    """Return a backend factory for Replay that builds :class:`FakeBackend`."""
    return lambda name, options: FakeBackend()


@pytest.fixture(scope='session')
def sample_bag_300(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Write a 300-frame 160x120 rgb8 bag at 30 fps (built once per session)."""
    path = tmp_path_factory.mktemp('bags') / 'sample300'
    write_sample_bag(path, SampleSpec(frames=300, fps=30, width=160, height=120))
    return path


@pytest.fixture(scope='session')
def yolo_config_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Make an ultralytics settings folder private to the test session."""
    return str(tmp_path_factory.mktemp('ultralytics'))
