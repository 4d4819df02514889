"""Forecasts of the fleet's request rate for the predictive scaler: AR(2), or a small LSTM.

Both see the same series (requests a second at each scrape) and forecast it ``steps`` scrapes
ahead. The LSTM is the study's option: a one-layer network over the last ``lags`` rates,
refitted on the sliding window every ``refit_every`` new values, forecasting recursively.
"""

from __future__ import annotations

from collections import deque
import math
from typing import Callable, Protocol

from adaptive_offload.errors import ConfigError
from offload_manager.latency_models import ArForecaster


class RateForecaster(Protocol):
    """Learns a series value by value and forecasts it."""

    def add(self, value: float) -> None:
        """Append one observation."""

    def forecast(self, steps: int = 1) -> float | None:
        """Return the value ``steps`` ahead; None without data."""


class LstmForecaster:
    """A one-layer LSTM over the last ``lags`` values, refitted on a sliding window.

    Args:
        window: Values kept for fitting.
        lags: Values the network reads to forecast the next.
        hidden: LSTM units.
        epochs: Full-batch Adam steps per refit.
        refit_every: New values between refits.
        seed: Seeds the network's initial weights (the global torch generator is left alone).

    Raises:
        ConfigError: For a window too small for the lags.
    """

    def __init__(self, window: int = 40, lags: int = 6, hidden: int = 16, epochs: int = 150,
                 refit_every: int = 4, seed: int = 0) -> None:
        if lags < 1 or window < 2 * lags or hidden < 1 or epochs < 1 or refit_every < 1:
            raise ConfigError(f'need lags >= 1, window >= 2 * lags, and hidden, epochs and '
                              f'refit_every >= 1; got window {window}, lags {lags}')
        self._values: deque[float] = deque(maxlen=window)
        self._lags, self._hidden, self._epochs = lags, hidden, epochs
        self._refit_every, self._seed = refit_every, seed
        self._since_fit = 0
        self._model: Callable[[list[float]], float] | None = None

    def add(self, value: float) -> None:
        """Append one observation (non-finite values are skipped)."""
        if math.isfinite(value):
            self._values.append(float(value))
            self._since_fit += 1

    def forecast(self, steps: int = 1) -> float | None:
        """Forecast ``steps`` ahead (persistence until the window can fit the network)."""
        if not self._values:
            return None
        values = list(self._values)
        if len(values) < 2 * self._lags or max(values) == min(values):
            return values[-1]
        if self._model is None or self._since_fit >= self._refit_every:
            self._model = self._fit(values)
            self._since_fit = 0
        history = values[-self._lags:]
        for _ in range(max(1, steps)):
            history.append(min(10.0 * max(values), max(0.0, self._model(history[-self._lags:]))))
        return history[-1]

    def _fit(self, values: list[float]) -> Callable[[list[float]], float]:
        import torch

        scale = max(values) or 1.0
        series = torch.tensor(values, dtype=torch.float32) / scale
        inputs = torch.stack([series[i:i + self._lags]
                              for i in range(len(series) - self._lags)]).unsqueeze(-1)
        targets = series[self._lags:].unsqueeze(-1)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self._seed)
            lstm = torch.nn.LSTM(1, self._hidden, batch_first=True)
            head = torch.nn.Linear(self._hidden, 1)
        params = list(lstm.parameters()) + list(head.parameters())
        optimiser = torch.optim.Adam(params, lr=0.02)
        for _ in range(self._epochs):
            optimiser.zero_grad()
            out, _ = lstm(inputs)
            loss = torch.nn.functional.mse_loss(head(out[:, -1]), targets)
            loss.backward()
            optimiser.step()

        def predict(last: list[float]) -> float:
            with torch.no_grad():
                x = torch.tensor(last, dtype=torch.float32).view(1, -1, 1) / scale
                out, _ = lstm(x)
                return float(head(out[:, -1])) * scale

        return predict


FORECASTERS: dict[str, Callable[[], RateForecaster]] = {
    'ar': lambda: ArForecaster(order=2, window=40),
    'lstm': LstmForecaster,
}
"""Forecaster name -> factory."""
