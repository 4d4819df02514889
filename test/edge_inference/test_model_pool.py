"""Runtime model switching: no stalled frame, bounded memory, clear notes."""

from __future__ import annotations

import time
from typing import Callable

from adaptive_offload.conversions import frame_to_message, MessageTypes
from adaptive_offload.datatypes import Decision
from adaptive_offload.errors import BackendError, ConfigError
from edge_inference.detector import BackendOptions
from edge_inference.inference import build_edge, EdgeConfig
from edge_inference.model_pool import ModelPool, ModelSpec, parse_models
from helpers import FakeBackend
import numpy as np
import pytest


class Loader:
    """A backend factory and a background-job runner the test drives by hand."""

    def __init__(self) -> None:
        self.jobs: list[Callable[[], None]] = []
        self.built: list[str] = []
        self.warmed: list[str] = []
        self.fail: set[str] = set()

    def factory(self, backend: str, options: BackendOptions) -> FakeBackend:
        if options.model in self.fail:
            raise BackendError(f'cannot load {options.model}')
        self.built.append(options.model)
        fake = FakeBackend()
        fake.path = options.model  # type: ignore[attr-defined]
        return fake

    def run_jobs(self) -> None:
        jobs = list(self.jobs)
        self.jobs.clear()  # the pool holds this list's append
        for job in jobs:
            job()


def _pool(loader: Loader, max_loaded: int = 2) -> ModelPool:
    alternatives = [ModelSpec('s', 'fake', 's.pt'), ModelSpec('m', 'fake', 'm.pt')]
    return ModelPool(ModelSpec('n', 'fake', 'n.pt'), alternatives, loader.factory,
                     BackendOptions(''), max_loaded,
                     warm_up=lambda backend: loader.warmed.append(backend.path),
                     spawn=loader.jobs.append)


def test_switch_happens_in_the_background_while_the_current_model_serves() -> None:
    loader = Loader()
    pool = _pool(loader)
    assert loader.built == ['n.pt'] and loader.warmed == ['n.pt']
    name, backend, note = pool.select('s')
    assert name == 'n' and backend.path == 'n.pt' and note == 'model s loading; used n'
    assert pool.select('s')[2] == 'model s loading; used n'  # requested once only
    assert len(loader.jobs) == 1
    loader.run_jobs()  # the background load (and warm-up) completes
    assert loader.warmed == ['n.pt', 's.pt']
    name, backend, note = pool.select('s')
    assert (name, backend.path, note) == ('s', 's.pt', '')
    assert pool.select('')[0] == 's'  # an empty request keeps the current model


def test_memory_is_bounded_and_the_current_model_is_never_evicted() -> None:
    loader = Loader()
    pool = _pool(loader, max_loaded=2)
    pool.select('s')
    loader.run_jobs()
    pool.select('s')
    assert pool.loaded == ['n', 's']
    pool.select('m')  # n is evicted to make room before m loads; s keeps serving
    assert pool.loaded == ['s']
    loader.run_jobs()
    assert sorted(pool.loaded) == ['m', 's']
    assert pool.select('m')[0] == 'm'
    assert pool.select('n')[2] == 'model n loading; used m'
    assert pool.loaded == ['m']


def test_failed_and_unknown_models_are_reported_not_fatal() -> None:
    loader = Loader()
    loader.fail.add('s.pt')
    pool = _pool(loader)
    pool.select('s')
    loader.run_jobs()
    name, _, note = pool.select('s')
    assert name == 'n' and 'failed to load' in note and 'cannot load s.pt' in note
    assert pool.select('xl')[2] == 'model xl not configured; used n'


def test_pool_configuration_errors() -> None:
    loader = Loader()
    with pytest.raises(ConfigError, match='>= 1'):
        _pool(loader, max_loaded=0)
    with pytest.raises(ConfigError, match='repeats the default'):
        ModelPool(ModelSpec('n', 'f', 'n.pt'), [ModelSpec('n', 'f', 'x.pt')], loader.factory,
                  BackendOptions(''))
    assert parse_models('s=s.pt; o=models/y.onnx;', 'ultralytics') == [
        ModelSpec('s', 'ultralytics', 's.pt'), ModelSpec('o', 'onnx', 'models/y.onnx')]
    for bad in ('nameonly', 'a=x;a=y', '=x'):
        with pytest.raises(ConfigError):
            parse_models(bad, 'ultralytics')


def test_edge_core_applies_the_decided_model_after_it_loaded(types: MessageTypes) -> None:
    loader = Loader()
    config = EdgeConfig.from_params({'model': 'n.pt', 'alt_models': 's=s.pt'})
    edge = build_edge(config, loader.factory)
    msg = frame_to_message(types, np.zeros((32, 32, 3), np.uint8), 1, 'cam', 'bgr8')
    _, report = edge.process(msg, Decision(edge_model='s'))
    assert report.status == 'ok' and report.model == 'n' and 'loading' in report.reason
    for _ in range(200):  # the real background thread: bounded wait for it to finish
        if 's' in edge.models.loaded:
            break
        time.sleep(0.01)
    dets, report = edge.process(msg, Decision(edge_model='s'))
    assert report.model == 's' and dets.model == 's' and report.reason == ''
