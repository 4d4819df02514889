"""The tail model's load on MLServer: it waits for its image model, for a bounded time.

The load coroutine is run directly (no MLServer start): the image model is published, or not,
by these cases. Run by ``test_mlserver_tail_load.py`` in a process of their own: MLServer's
gRPC messages and tritonclient's cannot share one (see ``test_mlserver_guard.py``).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, cast

from adaptive_offload.errors import ConfigError
import pytest
from rcnn_service.mlserver_tail import (LOAD_TIMEOUT, publish, RcnnTailRuntime, SharedModel,
                                        tail_model_settings, withdraw)
from rcnn_service.service_config import ServiceConfig


def _runtime(image: str, timeout_s: Any = None) -> RcnnTailRuntime:
    settings = tail_model_settings(ServiceConfig(model_name=image))
    if timeout_s is not None:
        settings.parameters.extra[LOAD_TIMEOUT] = timeout_s
    return RcnnTailRuntime(settings)


def _shared() -> SharedModel:
    # Only its presence is read by the load.
    return SharedModel(ServiceConfig(), cast(Any, None), cast(Any, None), print, print)


def test_the_load_fails_naming_the_image_model_it_waited_for() -> None:
    runtime = _runtime('never-loaded', 0.3)
    start = time.monotonic()
    with pytest.raises(ConfigError, match="image model 'never-loaded' did not load within "
                                          r'0.3 s \(parameters.extra.load_timeout_s\)'):
        asyncio.run(runtime.load())
    assert 0.3 <= time.monotonic() - start < 5.0


def test_the_load_ends_once_the_image_model_is_published() -> None:
    async def load_while_publishing() -> bool:
        load = asyncio.ensure_future(_runtime('late', 10.0).load())
        await asyncio.sleep(0.2)
        assert not load.done()
        publish('late', _shared())
        return await asyncio.wait_for(load, 5.0)

    try:
        assert asyncio.run(load_while_publishing()) is True
    finally:
        withdraw('late')


@pytest.mark.parametrize('timeout_s', [0, -1.0, float('nan'), float('inf'), '60', True])
def test_a_bad_load_timeout_is_refused(timeout_s: Any) -> None:
    with pytest.raises(ConfigError, match='load_timeout_s of the tail model must be a number'):
        asyncio.run(_runtime('absent', timeout_s).load())
