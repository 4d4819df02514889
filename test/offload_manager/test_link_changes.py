"""The predictive policy follows uplink changes, off the cloud and back, within about 1 s.

Synthetic reports on an injected clock: 10 fps, each cloud reply observed once it is due.
"""

from __future__ import annotations

import math
import random
from typing import Callable

from adaptive_offload.datatypes import InferenceReport, Route
from offload_manager.policies import create_policy
from offload_manager.policy import Plan, PolicySettings
import pytest

DEADLINE = 150.0
RTT_MS, SERVER_MS, EDGE_MS, NBYTES = 30.0, 20.0, 40.0, 100_000


class Energy:
    """6 W computing (4 W beyond idle), 2 W idle, 100 nJ per bit sent: the cloud is cheap."""

    def joules(self, compute_ms: float, bytes_sent: int, bytes_received: int,
               period_ms: float) -> float:
        return 4.0 * compute_ms / 1e3 + 100e-9 * 8 * bytes_sent + 2.0 * period_ms / 1e3


def _policy() -> object:
    defaults = Plan(route=Route.EDGE, edge_model='yolov8n', edge_imgsz=320, jpeg_quality=75,
                    cloud_max_side=0, offload_every=1, hedge_delay_ms=0.0, reason='')
    return create_policy('predictive', PolicySettings(
        DEADLINE, Route.EDGE, defaults, energy=Energy(), edge_options=('yolov8n@320',),
        qualities=(75,), probe_every=10))


def run(mbps_at: Callable[[float], float], seconds: float,
        seed: int = 0) -> tuple[object, list[tuple[float, Route]]]:
    """Play ``seconds`` of frames at 10 fps; return the policy and each frame's route.

    Cloud requests (every frame on the cloud, each ``probe_every``-th, or every frame while
    confirming, on the edge) answer after 30 ms of round trip, their transfer at the link's
    rate of the moment and 20 ms of server time, each with 10 % jitter.
    """
    policy = _policy()
    rng = random.Random(seed)
    pending: list[tuple[float, InferenceReport]] = []
    routes: list[tuple[float, Route]] = []
    sent = 0
    for frame in range(int(seconds * 10)):
        now = frame / 10
        for due, report in sorted(pending, key=lambda p: p[0]):
            if due <= now:
                policy.observe_report(report)
        pending = [p for p in pending if p[0] > now]
        plan = policy.plan(int(now * 1e9))
        routes.append((now, plan.route))
        stamp = frame + 1
        if plan.route is not Route.CLOUD:
            policy.observe_report(InferenceReport(
                stamp_ns=stamp, source='edge', status='ok', model='yolov8n', imgsz=320,
                inference_ms=EDGE_MS, total_ms=EDGE_MS))
        every = 1 if plan.route.uses_cloud else plan.probe_every
        sent += 1 if every else 0
        if every and (sent - 1) % every == 0:
            non_server = RTT_MS * math.exp(rng.gauss(0, 0.1)) + \
                NBYTES * 8 / (mbps_at(now) * 1e3) * math.exp(rng.gauss(0, 0.1))
            total = non_server + SERVER_MS
            pending.append((now + total / 1e3, InferenceReport(
                stamp_ns=stamp, source='cloud', status='ok', inference_ms=total,
                total_ms=total, bytes_sent=NBYTES, server_ms=SERVER_MS)))
    return policy, routes


def _first(routes: list[tuple[float, Route]], after: float,
           test: Callable[[Route], bool]) -> float:
    return next(t for t, r in routes if t >= after and test(r)) - after


@pytest.mark.parametrize('seed', range(3))
def test_off_the_cloud_within_a_second_of_a_drop_and_back_within_a_second(seed: int) -> None:
    # 50 Mbit/s: 16 ms of transfer, the cloud in time and cheaper than the edge; 5 Mbit/s:
    # 160 ms, the cloud past the 150 ms deadline.
    def link(t: float) -> float:
        return 5.0 if 40.0 <= t < 50.0 else 50.0

    # The cloud is trusted once some 30 probes have answered: on it from about 32 s.
    policy, routes = run(link, 60.0, seed)
    assert [r for t, r in routes if 35.0 <= t < 40.0] == [Route.CLOUD] * 50
    assert _first(routes, 40.0, lambda r: r is not Route.CLOUD) <= 1.0
    assert [r for t, r in routes if 42.0 <= t < 50.0] == [Route.EDGE] * 80
    # Back within 0.5 s of the first probe to see the link: that probe comes within one
    # probe period (1 s at 10 fps), the confirm probes within a few frames of it.
    assert _first(routes, 50.0, lambda r: r is Route.CLOUD) <= 1.0 + 0.5
    assert policy.obs.bandwidth.changes == 2  # type: ignore[attr-defined]


def test_confirm_probes_are_bounded_and_stationary_links_make_no_change_point() -> None:
    policy, routes = run(lambda t: 50.0, 60.0)
    assert policy.obs.bandwidth.changes == 0  # type: ignore[attr-defined]
    assert all(r is Route.CLOUD for t, r in routes if t >= 35.0)
    # A link that looks faster only now and then: each suspicion probes for at most 1 s.
    policy = _policy()
    for i in range(40):  # 5 Mbit/s seen by 40 probes, one a second
        policy.observe_report(InferenceReport(
            stamp_ns=i + 1, source='cloud', status='ok', inference_ms=230.0, total_ms=230.0,
            bytes_sent=NBYTES, server_ms=SERVER_MS))
        policy.observe_report(InferenceReport(
            stamp_ns=i + 1, source='edge', status='ok', model='yolov8n', imgsz=320,
            inference_ms=EDGE_MS, total_ms=EDGE_MS))
    assert policy.plan(0).route is Route.EDGE
    policy.observe_report(InferenceReport(  # one fast answer: a faster link suspected
        stamp_ns=99, source='cloud', status='ok', inference_ms=66.0, total_ms=66.0,
        bytes_sent=NBYTES, server_ms=SERVER_MS))
    probing = [policy.plan(int(t * 1e8)).probe_every for t in range(0, 30)]
    assert probing[:10] == [1] * 10 and set(probing[10:]) == {10}
