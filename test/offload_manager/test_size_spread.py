"""JPEGs at another size for the uplink fit: when the plan sends them, and how they count."""

from __future__ import annotations

from dataclasses import replace

from adaptive_offload.datatypes import InferenceReport, Route
from adaptive_offload.uplink import SPREAD_WANTED
from offload_manager.observations import Observations
from offload_manager.policy import Plan, PolicySettings
from offload_manager.size_spread import SPREAD_EVERY, spread_quality, spread_sizes
import pytest

Q50, Q95 = 13_700, 39_300  # the frame's JPEG bytes at q50 and q95 (2.87 times)
PLAN = Plan(route=Route.CLOUD, edge_model='yolov8n', edge_imgsz=320, jpeg_quality=50,
            cloud_max_side=0, offload_every=1, hedge_delay_ms=0.0, reason='chosen')


class FakeEnergy:
    """No energy at all: the estimates are not what these tests look at."""

    def joules(self, compute_ms: float, bytes_sent: int, bytes_received: int,
               period_ms: float) -> float:
        return 0.0


def _settings(deadline_ms: float = 250.0) -> PolicySettings:
    return PolicySettings(deadline_ms, Route.EDGE, PLAN, energy=FakeEnergy(), probe_every=10)


def _answer(obs: Observations, nbytes: int, mbps: float = 5.0) -> None:
    """One cloud answer over a 30 ms round trip and 20 ms of server time."""
    ms = 30.0 + nbytes * 8 / (mbps * 1e3) + 20.0
    obs.observe_report(InferenceReport(stamp_ns=1, source='cloud', status='ok',
                                       bytes_sent=nbytes, total_ms=ms, inference_ms=ms,
                                       server_ms=20.0))


def _observations(answers: int = 10) -> Observations:
    obs = Observations(FakeEnergy())
    obs.quality = 50
    for _ in range(answers):
        _answer(obs, Q50)
    obs.prepare()
    return obs


def test_the_other_quality_is_the_one_farthest_in_size() -> None:
    assert spread_quality(50, (50, 75, 95)) == 95
    assert spread_quality(75, (50, 75, 95)) == 95  # 1.95 times
    assert spread_quality(95, (50, 75, 95)) == 50
    assert spread_quality(50, (50, 75)) is None  # 1.47 times: too alike for the fit
    assert spread_quality(50, ()) is None


def test_one_request_in_spread_every_goes_at_the_other_size_while_the_fit_needs_it() -> None:
    obs, settings = _observations(), _settings()
    plan = spread_sizes(PLAN, obs, settings)
    assert plan.jpeg_quality == 95 and 'uplink fit' in plan.reason
    assert replace(plan, jpeg_quality=50, reason='chosen') == PLAN  # nothing else changes
    _answer(obs, Q95)  # its answer: told from the plan's by its size
    assert obs.since_spread == 0
    for i in range(SPREAD_EVERY - 1):
        obs.prepare()
        assert spread_sizes(PLAN, obs, settings) is PLAN
        _answer(obs, Q50)
    for _ in range(SPREAD_WANTED - 1):
        obs.prepare()
        assert spread_sizes(PLAN, obs, settings).jpeg_quality == 95
        _answer(obs, Q95)
        for _ in range(SPREAD_EVERY - 1):
            _answer(obs, Q50)
    obs.prepare()
    assert not obs.bandwidth.needs_spread
    assert spread_sizes(PLAN, obs, settings) is PLAN  # enough spread: the plan's own JPEGs


def test_spread_answers_count_as_the_plans_jpeg_they_stand_in_for() -> None:
    obs = _observations(answers=20)
    plain = _observations(answers=20)
    obs.spread_quality = 95
    for _ in range(10):
        _answer(obs, Q95)
        _answer(plain, Q50)
    obs.prepare()
    plain.prepare()
    assert obs.bytes_at(75) == pytest.approx(plain.bytes_at(75), rel=0.02)
    assert obs.bytes_at(50) == pytest.approx(Q50, rel=0.02)
    # Their latencies stay out of the cloud series: it is the q50 JPEGs' alone.
    assert obs.book.quantile('cloud', 0.99) == pytest.approx(plain.book.quantile('cloud', 0.5))
    assert obs.bandwidth.mbps == pytest.approx(5.0)  # while they measure the link


def test_no_spread_where_it_would_be_late_or_is_not_a_jpeg_or_a_burst() -> None:
    obs = _observations()
    # 5 Mbit/s: a q95 frame takes 63 ms to send, 113 ms in all, beyond a 100 ms deadline.
    assert spread_sizes(PLAN, obs, _settings(deadline_ms=100.0)) is PLAN
    split = replace(PLAN, route=Route.SPLIT, split='S:body.2:int8+zstd')
    assert spread_sizes(split, obs, _settings()) is split
    burst = replace(PLAN, route=Route.EDGE, probe_every=1)  # a confirm or learning burst
    assert spread_sizes(burst, obs, _settings()) is burst
    unprobed = replace(PLAN, route=Route.EDGE)
    assert spread_sizes(unprobed, obs, _settings()) is unprobed
    probing = replace(PLAN, route=Route.EDGE, probe_every=10)
    assert spread_sizes(probing, obs, _settings()).jpeg_quality == 95
