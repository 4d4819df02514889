"""The settings of a simulated fleet's service: bad values are named."""

from __future__ import annotations

from adaptive_offload.errors import ConfigError
from offload_runtime.service_settings import ServiceSettings
import pytest


@pytest.mark.parametrize('settings, message', [
    ({'replicas': 0}, 'min_replicas'),
    ({'replicas': 5, 'max_replicas': 4}, 'max_replicas'),
    ({'first_ms': -1.0}, 'first_ms'),
    ({'pod_start_s': -1.0}, 'pod_start_s'),
])
def test_bad_settings_are_named(settings: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        ServiceSettings(**settings)


def test_a_batch_time_grows_by_its_share_per_extra_image() -> None:
    settings = ServiceSettings(first_ms=100.0, batch_extra=0.5)
    assert [settings.batch_s(b) for b in (1, 2, 5)] == pytest.approx([0.1, 0.15, 0.3])
