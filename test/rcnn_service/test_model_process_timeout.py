"""A model process that hangs under a batch: refused within the batch timeout, then replaced.

The child is a stand-in (:mod:`model_children`) that hangs, alive, in its first batch; real
waits are bounded by a 1 s batch timeout. Bad timeouts are refused before any child starts.
"""

from __future__ import annotations

import logging
from pathlib import Path
import time
from typing import Any, Iterator

from adaptive_offload.errors import ConfigError
from helpers import (captured_log, child_processes, process_gone, resource_tracker_pids,
                     wait_until)
from model_children import HANG_ONCE_ENV, hanging_model_child, slow_loading_model_child
import numpy as np
import pytest
from rcnn_service.guard import ModelUnavailable
from rcnn_service.model_process import ModelProcess, RestartPolicy
from rcnn_service.service_config import ServiceConfig

TIMEOUT_S = 1.0
CONFIG = ServiceConfig(model_process=True, max_batch=2, max_image_side=64,
                       batch_timeout_s=TIMEOUT_S)
START_S = 60.0  # bound on a stand-in child's start (spawn, numpy import) on 2 busy cores
SLACK_S = 5.0  # the refusal's delay past the timeout, on 2 busy cores


@pytest.fixture
def model_log(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    """Capture the model process's warnings and errors (see :func:`helpers.captured_log`)."""
    with captured_log(caplog, 'adaptive_offload.service.model', logging.WARNING) as captured:
        yield captured


def test_a_hung_child_fails_its_batch_within_the_timeout_and_a_new_one_answers(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        model_log: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv(HANG_ONCE_ENV, str(tmp_path / 'hung'))
    before = set(child_processes())
    policy = RestartPolicy(first_s=0.05, max_s=0.1)
    frame = np.zeros((8, 8, 3), np.uint8)
    causes: list[str] = []
    model = ModelProcess(CONFIG, policy, on_death=causes.append, child=hanging_model_child)
    try:
        assert model.wait_settled(START_S) and model.ready
        hung = model.pid
        assert hung is not None
        start = time.monotonic()
        with pytest.raises(ModelUnavailable) as refused:
            model.run([frame])
        took = time.monotonic() - start
        assert not model.ready  # at once: the new child is still to be spawned
        assert TIMEOUT_S <= took < TIMEOUT_S + SLACK_S
        err = refused.value
        assert (err.status, err.reason) == (503, 'model_restarting')
        assert err.retry_after_s >= 1.0
        assert 'did not finish this batch within the batch timeout of 1 s' in str(err)
        assert model.timeouts == 1
        assert process_gone(hung, 10.0)  # SIGKILL: it ignores SIGTERM, as the real child does
        assert wait_until(lambda: model.ready and model.pid not in (None, hung), START_S)
        assert policy.deaths and len(policy.deaths) == 1  # counted as a death
        assert causes == ['batch_timeout']
        answer = model.run([frame, frame])
        assert [len(d.scores) for d in answer] == [0, 0]
        assert model.timeouts == 1 and model.starts == 2
    finally:
        model.close()
    assert model.pid is None
    assert set(child_processes()) - before - resource_tracker_pids() == set()
    errors = [r.getMessage() for r in model_log.records if r.levelno == logging.ERROR]
    assert any(f'model process {hung} did not finish a batch within 1 s' in m for m in errors)
    assert any('killed: its batch ran over the batch timeout of 1 s' in r.getMessage()
               for r in model_log.records if r.levelno == logging.WARNING)


@pytest.mark.parametrize('timeout_s', [0.0, -1.0, float('nan'), float('inf'), True])
def test_a_bad_batch_timeout_is_refused_before_a_child_starts(timeout_s: Any) -> None:
    before = set(child_processes())
    with pytest.raises(ConfigError, match='batch timeout must be a number of seconds above 0'):
        ModelProcess(ServiceConfig(model_process=True, max_batch=1, max_image_side=64,
                                   batch_timeout_s=timeout_s))
    assert set(child_processes()) - before - resource_tracker_pids() == set()


def test_a_child_that_never_loads_is_killed_at_the_load_timeout_and_replaced(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        model_log: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv(HANG_ONCE_ENV, str(tmp_path / 'hung'))
    before = set(child_processes())
    policy = RestartPolicy(first_s=0.05, max_s=0.1)
    config = ServiceConfig(model_process=True, max_batch=2, max_image_side=64,
                           load_timeout_s=TIMEOUT_S)
    causes: list[str] = []
    model = ModelProcess(config, policy, on_death=causes.append, child=slow_loading_model_child)
    try:
        # Without the bound the first child would hold readiness false for ever.
        assert model.wait_settled(START_S) and model.ready
        assert model.starts == 2 and len(policy.deaths) == 1 and causes == ['load_timeout']
        answer = model.run([np.zeros((8, 8, 3), np.uint8)])
        assert [len(d.scores) for d in answer] == [0]
    finally:
        model.close()
    assert set(child_processes()) - before - resource_tracker_pids() == set()
    assert any('did not load its model within 1 s' in r.getMessage()
               for r in model_log.records if r.levelno == logging.ERROR)
    assert any('killed: its load ran over the load timeout of 1 s' in r.getMessage()
               for r in model_log.records if r.levelno == logging.WARNING)


def test_a_bad_load_timeout_is_refused_before_a_child_starts() -> None:
    with pytest.raises(ConfigError, match='load timeout must be a number of seconds above 0'):
        ModelProcess(ServiceConfig(model_process=True, max_batch=1, max_image_side=64,
                                   load_timeout_s=0.0))
