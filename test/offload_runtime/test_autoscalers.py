"""Autoscalers: the HPA's rules, a forecast that scales ahead, and a learner that learns."""

from __future__ import annotations

import math
import random

from adaptive_offload.errors import ConfigError
from offload_runtime.autoscalers import (HpaSettings, LearnedScaler, make_scaler,
                                         PredictiveScaler, ReactiveHpa, spare_for)
from offload_runtime.service_model import Request, ServiceModel, ServiceSample
from offload_runtime.service_settings import ServiceSettings
from offload_runtime.sim_events import EventQueue
import pytest

SERVICE = ServiceSettings(replicas=2, min_replicas=1, max_replicas=20, first_ms=50.0)


def _sample(t_s: float, spec: int, ready: int | None = None, wait_s: float = 0.05,
            refusals: float = 0.0, arrivals: float = 10.0, offered: float = 0.0,
            capacity: float = 0.0, busy: float = 0.0) -> ServiceSample:
    """Return a scrape; ``capacity`` 0: no pod exports one, so no offered utilisation."""
    return ServiceSample(t_s, 15.0, arrivals, refusals, wait_s, busy,
                         spec if ready is None else ready, spec, 10.0, offered, capacity)


def _hpa() -> ReactiveHpa:
    return ReactiveHpa(HpaSettings(), SERVICE, random.Random(0))


def test_static_keeps_the_count() -> None:
    scaler = make_scaler('static', HpaSettings(), SERVICE, random.Random(0))
    assert scaler.desired(_sample(15, 3, wait_s=9.0, refusals=50.0)) == 3


def test_the_hpa_follows_the_metric_that_asks_for_most() -> None:
    assert _hpa().desired(_sample(15, 2, wait_s=0.1)) == 4
    assert _hpa().desired(_sample(15, 2, wait_s=0.054)) == 2  # within the 10 % tolerance
    # Refusals a second per pod: 3 / 2 pods = 1.5 against 0.5 -> three times the pods, capped
    # at twice per 30 s.
    assert _hpa().desired(_sample(15, 2, refusals=3.0)) == 4


def test_pods_not_ready_count_as_idle_when_scaling_up() -> None:
    # One of two pods starting: the ready one's 2x wait is 1x over both; nothing to add.
    assert _hpa().desired(_sample(15, 2, ready=1, wait_s=0.1)) == 2
    assert _hpa().desired(_sample(15, 2, ready=1, wait_s=0.15)) == 3


def test_the_hpa_scales_on_offered_utilisation_while_wait_and_refusals_are_on_target() -> None:
    # Two ready pods computing 20 images/s together; the wait is a fifth of its target.
    quiet = {'wait_s': 0.01, 'refusals': 0.0, 'capacity': 20.0}
    assert _hpa().desired(_sample(15, 2, offered=30.0, **quiet)) == 4  # 1.5x: 2.1x the pods,
    # capped at twice per 30 s
    assert _hpa().desired(_sample(15, 2, offered=15.0, **quiet)) == 2  # 0.75: within tolerance
    assert _hpa().desired(_sample(15, 2, offered=12.0, **quiet)) == 2  # below target
    hpa, counts = _hpa(), []
    for k, utilisation in enumerate((0.4, 0.6, 0.8, 1.0, 1.2)):  # rising, no queue yet
        counts.append(hpa.desired(_sample(15 * (k + 1), 2, offered=20.0 * utilisation,
                                          **quiet)))
    # The one-minute mean is on target (70 %) at the fourth scrape and past its tolerance at
    # the fifth, once the first scrape has left the window.
    assert counts == [2, 2, 2, 2, 3]


def test_the_simulated_hpa_adds_a_pod_for_offered_load_before_a_queue_builds() -> None:
    events = EventQueue()
    service = ServiceModel(ServiceSettings(replicas=1, max_replicas=4, first_ms=20.0,
                                           batch_extra=0.5, max_batch=8), events.at,
                           random.Random(0), jitter=0.0)

    class Robot:
        def answered(self, t_ns: int, token: int, server_ms: float, queue_ms: float) -> None:
            pass

        def refused(self, t_ns: int, token: int, reason: str, retry_after_s: float) -> None:
            pass

    robot = Robot()
    for token in range(60 * 75):  # 75 requests a second for a minute: 84 % of 8 in 90 ms
        events.at(token * 1_000_000_000 // 75, lambda t, k=token: service.submit(
            t, Request(robot, k, f'robot{k % 10}'), 0.25))
    events.run(until_ns=60 * 1_000_000_000)
    sample = service.sample(60 * 1_000_000_000)
    assert sample.ready_capacity_per_s == pytest.approx(8 / 0.09)
    assert sample.offered_per_s == pytest.approx(75.0, rel=0.01)
    hpa = HpaSettings()
    assert sample.mean_wait_s < hpa.target_wait_s and sample.refusals_per_s == 0
    assert ReactiveHpa(hpa, service.s, random.Random(0)).desired(sample) == 2


def test_busy_pods_get_company_though_their_offered_utilisation_looks_low() -> None:
    # Requests computed a few at a time: 58 % of what the pods compute at their best batch
    # size is offered, yet they are busy 88 % of the time (a simulated cloud-heavy fleet).
    quiet = {'wait_s': 0.024, 'refusals': 1.3, 'offered': 62.0, 'capacity': 107.0}
    assert _hpa().desired(_sample(15, 4, busy=0.88, **quiet)) == 6  # ceil(4 x 0.88 / 0.7)
    assert _hpa().desired(_sample(15, 4, busy=0.75, **quiet)) == 4  # within tolerance
    # Pods not ready are idle to the HPA: busy ready pods ask for fewer new ones.
    assert _hpa().desired(_sample(15, 4, ready=2, busy=0.88, **quiet)) == 4


def test_scaling_down_waits_out_the_stabilisation_window() -> None:
    hpa = _hpa()
    assert hpa.desired(_sample(15, 4, wait_s=0.05)) == 4
    counts = [hpa.desired(_sample(15 + 15 * k, 4, wait_s=0.0, arrivals=0.0))
              for k in range(1, 30)]
    # The idle minute's mean falls from the first idle scrape, but no scale-down comes until
    # the busy recommendation has left the 300 s window.
    assert counts[:18] == [4] * 18 and counts[-1] == SERVICE.min_replicas


def test_the_forecast_scales_ahead_of_a_rising_rate() -> None:
    predictive = PredictiveScaler(HpaSettings(), SERVICE, random.Random(0))
    reactive = _hpa()
    ahead = []
    for k in range(12):  # the rate climbs 3 requests/s per scrape; the wait is still on target
        sample = _sample(15 * (k + 1), 2, arrivals=3.0 * k)
        ahead.append(predictive.desired(sample) - reactive.desired(sample))
    assert ahead[-1] > 0 and min(ahead) >= 0


def test_spares_cover_the_failures_expected_during_a_pod_start() -> None:
    assert spare_for(0.0) == 0
    assert spare_for(0.005) == 0  # P(any failure) 0.5 %, under the 1 % risk
    assert spare_for(0.5) == 3    # P(more than 2) 1.4 %, P(more than 3) 0.2 %
    assert spare_for(0.5, risk=0.05) == 2


def test_the_learner_finds_the_count_that_serves_the_load() -> None:
    # A service that refuses a third of its load with fewer than 4 replicas.
    scaler = LearnedScaler(HpaSettings(), SERVICE, random.Random(1))
    spec, history = 2, []
    for k in range(4000):
        refusals = 10.0 if spec < 4 else 0.0
        spec = scaler.desired(_sample(15 * k, spec, refusals=refusals, arrivals=30.0))
        history.append(spec)
    late = history[-500:]
    assert sum(s >= 4 for s in late) / len(late) > 0.8
    assert sum(late) / len(late) < 7


def test_the_learner_gives_back_replicas_nobody_uses() -> None:
    scaler = LearnedScaler(HpaSettings(), SERVICE, random.Random(2))
    spec, history = 10, []
    for k in range(2000):
        spec = scaler.desired(_sample(15 * k, spec, refusals=0.0, arrivals=1.0))
        history.append(spec)
    late = history[-500:]
    assert sum(late) / len(late) < SERVICE.min_replicas + 1.5


def test_unknown_scalers_and_bad_settings_are_named() -> None:
    with pytest.raises(ConfigError, match='unknown scaler'):
        make_scaler('oracle', HpaSettings(), SERVICE, random.Random(0))
    with pytest.raises(ConfigError, match='utilisation'):
        HpaSettings(utilisation=1.5)
    with pytest.raises(ConfigError, match='sync_s'):
        HpaSettings(sync_s=0)
    with pytest.raises(ConfigError, match='target_offered_utilisation'):
        HpaSettings(target_offered_utilisation=0.0)
    assert math.isfinite(spare_for(50.0))


def test_the_lstm_option_also_scales_ahead_of_a_rising_rate() -> None:
    predictive = make_scaler('predictive-lstm', HpaSettings(), SERVICE, random.Random(0))
    reactive = _hpa()
    ahead = []
    for k in range(16):
        sample = _sample(15 * (k + 1), 2, arrivals=3.0 * k)
        ahead.append(predictive.desired(sample) - reactive.desired(sample))
    assert ahead[-1] > 0 and min(ahead) >= 0
