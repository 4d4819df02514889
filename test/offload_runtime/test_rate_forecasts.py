"""Rate forecasts: the LSTM option learns a trend and a season, deterministically."""

from __future__ import annotations

import math

from adaptive_offload.errors import ConfigError
from offload_runtime.rate_forecasts import FORECASTERS, LstmForecaster
import pytest


def test_persistence_until_the_window_can_fit() -> None:
    lstm = LstmForecaster(lags=4)
    assert lstm.forecast() is None
    for value in (5.0, 6.0, 7.0):
        lstm.add(value)
    assert lstm.forecast(3) == 7.0


@pytest.mark.parametrize('name', sorted(FORECASTERS))
def test_a_seasonal_rate_is_forecast_better_than_by_persistence(name: str) -> None:
    series = [20 + 10 * math.sin(2 * math.pi * k / 12) for k in range(60)]
    forecaster = FORECASTERS[name]()
    errors, naive = [], []
    for k, value in enumerate(series[:-3]):
        forecaster.add(value)
        if k >= 36:
            errors.append(abs((forecaster.forecast(3) or 0.0) - series[k + 3]))
            naive.append(abs(value - series[k + 3]))
    assert sum(errors) < 0.5 * sum(naive)


def test_the_same_seed_fits_the_same_network() -> None:
    forecasts = []
    for _ in range(2):
        lstm = LstmForecaster(seed=3)
        for k in range(30):
            lstm.add(float(k % 7))
        forecasts.append(lstm.forecast(2))
    assert forecasts[0] == forecasts[1]


def test_bad_shapes_are_named() -> None:
    with pytest.raises(ConfigError, match='window'):
        LstmForecaster(window=5, lags=4)
