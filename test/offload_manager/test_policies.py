"""The predictive policy and the adaptive baselines, fed with reports on a manual clock."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from adaptive_offload.datatypes import FrameRecord, InferenceReport, Route
from offload_manager.observations import Observations, Option
from offload_manager.policies import create_policy
from offload_manager.policy import Plan, PolicySettings
import pytest

DEADLINE = 100.0


class FakeEnergy:
    """6 W computing (4 W beyond idle), 2 W idle, 500 nJ per bit sent: a weak Wi-Fi link."""

    def joules(self, compute_ms: float, bytes_sent: int, bytes_received: int,
               period_ms: float) -> float:
        return 4.0 * compute_ms / 1e3 + 500e-9 * 8 * bytes_sent + 2.0 * period_ms / 1e3


def _settings(**overrides: Any) -> PolicySettings:
    defaults = Plan(route=Route.EDGE, edge_model='yolov8n', edge_imgsz=320, jpeg_quality=75,
                    cloud_max_side=0, offload_every=1, hedge_delay_ms=0.0, reason='')
    values = {'energy': FakeEnergy(), 'edge_options': ('yolov8n@320', 'yolov8n@640'),
              'cloud_model': 'fasterrcnn_resnet50_fpn_v2', 'probe_every': 10}
    values.update(overrides)
    return PolicySettings(DEADLINE, Route.EDGE, defaults, **values)


class Feeder:
    """Sends reports to a policy as the workers would, on a manual clock."""

    def __init__(self, policy: Any) -> None:
        self.policy = policy
        self.t_s = 0.0
        self.stamp = 0

    def plan(self) -> Plan:
        return self.policy.plan(int(self.t_s * 1e9))

    def edge(self, imgsz: int, ms: float, n: int = 30) -> None:
        for _ in range(n):
            self.stamp += 1
            self.policy.observe_report(InferenceReport(
                stamp_ns=self.stamp, source='edge', status='ok', model='yolov8n', imgsz=imgsz,
                inference_ms=ms * 0.9, total_ms=ms))

    def cloud(self, total_ms: float, ok: bool = True, n: int = 30, nbytes: int = 20_000,
              server_ms: float = 20.0) -> None:
        for _ in range(n):
            self.stamp += 1
            self.t_s += 0.1
            self.plan()  # the manager ticks between reports
            self.policy.observe_report(InferenceReport(
                stamp_ns=self.stamp, source='cloud', status='ok' if ok else 'failed',
                reason='' if ok else 'timeout', inference_ms=total_ms - 3.0,
                total_ms=total_ms, bytes_sent=nbytes if ok else 0,
                server_ms=server_ms if ok else 0.0))


def test_predictive_takes_the_least_energy_that_meets_the_deadline_and_accuracy_floor() -> None:
    feed = Feeder(create_policy('predictive', _settings()))
    assert 'no measurements' in feed.plan().reason
    feed.edge(320, 40.0)
    feed.edge(640, 160.0)  # over the deadline: never acceptable alone
    feed.cloud(60.0)  # cheaper than the edge, but 8 % of its round trips miss the deadline
    plan = feed.plan()
    assert (plan.route, plan.edge_imgsz) == (Route.EDGE, 320) and not plan.unmet, plan.reason
    # An accuracy floor above the edge's mAP: hedging keeps the deadline and buys the
    # cloud's accuracy, at the least energy of the options that reach it.
    feed.policy.retune(_settings(accuracy_floor=40.0))
    plan = feed.plan()
    # The option, not the plan's quality: the feeder's answers are all one size, so the plan
    # may send q95 for the uplink fit (offload_manager.size_spread).
    assert feed.policy.current == Option(Route.HEDGED, 'yolov8n', 320, 50), plan.reason
    assert (plan.route, plan.edge_imgsz) == (Route.HEDGED, 320) and not plan.unmet


def test_predictive_leaves_the_cloud_when_it_fails_and_probes_to_come_back() -> None:
    # With 10 % of misses allowed, the cloud (0.08 J a frame) is cheaper than the edge (0.16 J).
    feed = Feeder(create_policy('predictive', _settings(epsilon=0.1)))
    feed.edge(320, 40.0)
    feed.cloud(60.0)
    assert feed.plan().route is Route.CLOUD
    feed.cloud(0.0, ok=False, n=10)  # one second of an outage
    plan = feed.plan()
    # On the edge, every tenth frame probes the cloud; nobody waits for the answer.
    assert plan.route is Route.EDGE and plan.probe_every == 10, plan.reason
    assert 'probing' in plan.reason and not plan.unmet
    feed.cloud(60.0, n=40)  # the probes find the cloud back
    assert feed.plan().route is Route.CLOUD


def test_predictive_leaves_a_slowed_edge_and_its_probes_bring_it_back() -> None:
    feed = Feeder(create_policy('predictive', _settings(weight_accuracy=0.0)))
    feed.edge(320, 15.0)
    feed.edge(640, 160.0)
    feed.cloud(60.0, n=100)  # ten seconds of answers: the availability model is fitted
    assert feed.plan().route is Route.EDGE  # 15 ms of computing is cheaper than the radio
    feed.edge(320, 45.0, n=5)  # CPU contention: the edge takes three times as long
    plan = feed.plan()
    assert plan.route is Route.CLOUD, plan.reason
    # On the cloud route every tenth frame runs on the edge too, so the edge's figures stay
    # current: five fast probes end the contention in the model, and the edge is back.
    assert plan.probe_every == 10 and 'probing' in plan.reason
    feed.edge(320, 15.0, n=4)
    assert feed.plan().route is Route.CLOUD
    feed.edge(320, 15.0, n=1)
    assert feed.plan().route is Route.EDGE


def _on_a_fast_edge() -> Feeder:
    """Predictive on a measured edge (15 ms at 320) with a measured cloud to leave it for."""
    feed = Feeder(create_policy('predictive', _settings(weight_accuracy=0.0)))
    feed.edge(320, 15.0)
    feed.edge(640, 160.0)
    feed.cloud(60.0, n=100)
    return feed


def test_predictive_leaves_an_edge_that_stopped_answering_and_its_probes_bring_it_back(
) -> None:
    feed = _on_a_fast_edge()
    assert feed.plan().route is Route.EDGE
    # The edge node is stopped: no report comes, and frame after frame on the edge route
    # ends without a result. Its latency figures alone still look fine.
    for _ in range(10):
        feed.stamp += 1
        feed.policy.observe_record(FrameRecord(stamp_ns=feed.stamp, route='edge', sources=[],
                                               drop_reason='no_result'))
    plan = feed.plan()
    assert plan.route is not Route.EDGE, plan.reason
    # A frame the cloud served on the cloud route says nothing about the edge.
    feed.policy.observe_record(FrameRecord(stamp_ns=feed.stamp + 1, route='cloud',
                                           sources=['cloud'], result_source='cloud'))
    assert feed.plan().route is not Route.EDGE
    feed.edge(320, 15.0, n=20)  # its probes answer again
    assert feed.plan().route is Route.EDGE


def _superseded(feed: Feeder, n: int, answer_every: int = 0) -> None:
    """Frames 100 ms apart on the edge route that the edge drops as superseded.

    With ``answer_every``, every so many frames the edge still answers one (a busy edge).
    """
    for i in range(1, n + 1):
        feed.t_s += 0.1
        feed.plan()
        if answer_every and i % answer_every == 0:
            feed.edge(320, 15.0, n=1)
            continue
        feed.stamp += 1
        feed.policy.observe_record(FrameRecord(
            stamp_ns=feed.stamp, route='edge', sources=[],
            drop_reason='cloud: not_sampled; edge: superseded'))


def test_predictive_leaves_a_stuck_edge_that_supersedes_every_frame_but_not_a_busy_one(
) -> None:
    feed = _on_a_fast_edge()
    # Busy: it drops two frames of three, but the one it takes it answers.
    _superseded(feed, 30, answer_every=3)
    assert feed.plan().route is Route.EDGE
    # Stuck (a hung worker): it reports each new frame superseded and answers none. Its
    # reports look like load, but nothing has come back for 20 times its answers' time.
    _superseded(feed, 8)
    plan = feed.plan()
    assert plan.route is not Route.EDGE, plan.reason
    feed.edge(320, 15.0, n=20)  # it answers again
    assert feed.plan().route is Route.EDGE


def test_predictive_reacts_to_a_bandwidth_drop_within_a_second() -> None:
    feed = Feeder(create_policy('predictive', _settings(accuracy_floor=40.0)))
    feed.edge(320, 40.0)
    feed.cloud(60.0, nbytes=20_000)  # 20 kB in ~40 ms of transfer: fine
    assert feed.plan().route in (Route.CLOUD, Route.HEDGED)
    start = feed.t_s
    # 5 Mbit/s: 20 kB now takes 32 ms more, and the round trips climb past the deadline.
    for total in (110.0, 140.0, 170.0, 200.0, 230.0, 260.0, 290.0, 320.0, 350.0, 380.0):
        feed.cloud(total, n=1, nbytes=20_000, server_ms=20.0)
        if feed.plan().route is Route.EDGE:
            break
    assert feed.plan().route is Route.EDGE  # the cloud no longer buys anything in time
    assert feed.t_s - start <= 1.0


def _at_ten_fps(feed: Feeder, n: int = 30) -> None:
    """Frame records 100 ms apart: the frame rate the cloud spend is reckoned at."""
    for i in range(n):
        feed.policy.observe_record(FrameRecord(index=i, stamp_ns=i * 100_000_000))


def test_when_no_option_meets_every_bound_they_give_way_in_order_and_say_so() -> None:
    feed = Feeder(create_policy('predictive', _settings(accuracy_floor=40.0,
                                                        energy_budget_j=0.2)))
    feed.edge(320, 40.0)
    feed.edge(640, 160.0)
    feed.cloud(60.0)
    plan = feed.plan()
    # Hedging (0.24 J) is the least energy that reaches the floor; the budget gives way first.
    assert plan.route is Route.HEDGED and plan.unmet == 'energy budget', plan.reason
    assert 'gave way: energy budget' in plan.reason
    # A floor nothing in time reaches: the floor gives way, by as little as the options allow
    # (hedged@320, mAP 45, not the edge's 26), and the deadline holds.
    feed.policy.retune(_settings(accuracy_floor=50.0))
    plan = feed.plan()
    assert (plan.route, plan.edge_imgsz) == (Route.HEDGED, 320)
    assert plan.unmet == 'accuracy floor', plan.reason


def test_a_cloud_spend_cap_keeps_frames_off_the_cloud_at_the_measured_frame_rate() -> None:
    # 1 USD per GPU-second, 20 ms of server time a frame, 10 frames/s: 720 USD/h on the cloud.
    settings = _settings(accuracy_floor=40.0, gpu_price_per_hour=3600.0)
    feed = Feeder(create_policy('predictive', settings))
    feed.edge(320, 40.0)
    feed.cloud(60.0)
    _at_ten_fps(feed)
    assert feed.plan().route is Route.HEDGED
    feed.policy.retune(replace(settings, spend_cap_usd_h=1000.0))
    plan = feed.plan()
    assert plan.route is Route.HEDGED and '720.00 USD/h' in plan.reason
    feed.policy.retune(replace(settings, spend_cap_usd_h=100.0))
    plan = feed.plan()  # the cap holds; the accuracy floor gives way
    assert plan.route is Route.EDGE and plan.unmet == 'accuracy floor', plan.reason


def test_reactive_fails_over_after_n_failures_and_back_after_the_cool_down() -> None:
    feed = Feeder(create_policy('reactive', _settings(failover_after=3, failback_s=10.0)))
    assert feed.plan().route is Route.CLOUD
    feed.cloud(0.0, ok=False, n=2)
    assert feed.plan().route is Route.CLOUD
    feed.cloud(0.0, ok=False, n=1)
    assert feed.plan().route is Route.EDGE
    feed.t_s += 9.0
    assert feed.plan().route is Route.EDGE
    feed.t_s += 1.5
    assert feed.plan().route is Route.CLOUD


def test_weighted_score_caps_mean_latency_and_waits_for_its_period() -> None:
    feed = Feeder(create_policy('weighted-score', _settings(score_period_s=2.0)))
    feed.edge(320, 40.0)
    feed.edge(640, 160.0)
    feed.cloud(60.0)
    first = feed.plan()
    assert first.edge_imgsz == 320 or first.route is not Route.EDGE  # 640 is over L_max
    feed.cloud(0.0, ok=False, n=5)
    assert feed.plan() is feed.policy.plan(int(feed.t_s * 1e9))  # same plan inside the period


def test_mdp_svr_offloads_when_available_and_stays_local_when_not() -> None:
    policy = create_policy('mdp-svr', _settings())
    feed = Feeder(policy)
    for _ in range(10):  # the edge alone misses a quarter of 100 ms deadlines
        feed.edge(320, 90.0, n=3)
        feed.edge(320, 120.0, n=1)
    feed.cloud(50.0, nbytes=5_000)
    assert feed.plan().route in (Route.CLOUD, Route.HEDGED)
    feed.cloud(0.0, ok=False, n=40)
    assert feed.plan().route is not Route.CLOUD


def test_q_learning_learns_the_route_that_meets_the_deadline() -> None:
    policy = create_policy('q-learning', _settings(seed=3))
    feed = Feeder(policy)
    feed.edge(320, 40.0)
    feed.cloud(60.0)
    for i in range(300):
        plan = feed.plan()
        met = plan.route is Route.EDGE  # in this world only the edge is ever in time
        policy.observe_record(FrameRecord(index=i, route=plan.route.value, deadline_met=met,
                                          latency_ms=40.0 if met else 400.0))
        feed.t_s += 0.1
    state = policy.state()
    assert int(policy.q[state].argmax()) == 0  # edge
    routes = [feed.plan().route for _ in range(50)]
    assert routes.count(Route.EDGE) >= 40  # exploration aside


@pytest.mark.parametrize('name', ['predictive', 'weighted-score', 'reactive', 'mdp-svr',
                                  'q-learning'])
def test_adaptive_policies_need_an_energy_model(name: str) -> None:
    from adaptive_offload.errors import ConfigError

    with pytest.raises(ConfigError, match='energy'):
        create_policy(name, _settings(energy=None))


def test_an_unmeasured_edge_option_with_a_zero_profile_figure_has_no_estimate() -> None:
    # No samples and no positive prior give no miss probability: the option is unknown, not
    # an estimate whose p_miss is None for the policy to trip on.
    obs = Observations(FakeEnergy(), edge_profile_ms={'yolov8n@320': 0.0, 'yolov8n@640': 40.0})
    obs.prepare()
    assert obs.estimate(Option(Route.EDGE, 'yolov8n', 320, 75), DEADLINE) is None
    assert obs.estimate(Option(Route.EDGE, 'yolov8n', 640, 75), DEADLINE).p_miss < 0.1


def test_a_rising_server_queue_makes_the_cloud_later_before_its_latencies_move() -> None:
    def cloud_late(queues: list[float]) -> float:
        obs = Observations(FakeEnergy())
        for k, queue_ms in enumerate(queues):
            obs.now_s = k * 0.1
            obs.observe_report(InferenceReport(stamp_ns=k, source='cloud', status='ok',
                                               total_ms=150.0 + (k % 5), server_ms=60.0,
                                               queue_ms=queue_ms, bytes_sent=40_000))
        obs.prepare()
        late = obs.cloud_late(75, 250.0)
        assert late is not None
        return late

    steady = cloud_late([5.0] * 40)
    # The newest answers waited 120 ms more in the shared service's queue than the window's
    # (a fleet arriving): the next ones will, so the cloud may miss the deadline.
    loading = cloud_late([5.0] * 37 + [125.0] * 3)
    assert steady < 0.05 < loading
    assert cloud_late([125.0] * 3 + [5.0] * 37) == pytest.approx(steady)  # drained


def test_weighted_score_probes_the_cloud_and_takes_it_once_it_fits_l_max() -> None:
    feed = Feeder(create_policy('weighted-score', _settings(score_period_s=2.0)))
    feed.edge(320, 40.0)
    feed.edge(640, 160.0)
    plan = feed.plan()  # the cloud never measured: the edge, probing the cloud
    assert (plan.route, plan.edge_imgsz, plan.probe_every) == (Route.EDGE, 320, 10)
    assert 'probing' in plan.reason
    feed.cloud(60.0)  # the probes' answers: 60 ms, under L_max (100 ms), half the energy
    feed.t_s += 2.0
    plan = feed.plan()
    assert plan.route is Route.CLOUD and plan.probe_every == 10, plan.reason
