"""The edge detector's split (robot head, edge computer tail) as the manager estimates it."""

from __future__ import annotations

from dataclasses import replace

from adaptive_offload.datatypes import DetectionSet, FrameRecord, InferenceReport, Route
from offload_manager.energy import EnergyModel
from offload_manager.frame_outcomes import NO_RESULT, Outcome
from offload_manager.manager import ManagerConfig, OffloadManager
from offload_manager.observations import Estimate, Option, REPLY_BYTES
from offload_manager.policy import Plan
from offload_manager.split_answers import MIN_OVERDUE
from offload_manager.split_observations import (edge_probe_plan, split_probe_plan, SPLIT_RETRY_S,
                                                SplitObservations)
import pytest

Y = 'yolov8n-shapes@320'
SMALL, OTHER = f'{Y}:4/end:int8+zstd', f'{Y}:2/end:int8+zstd'


def _config(policy: str = 'predictive', **extra: object) -> ManagerConfig:
    return ManagerConfig.from_params({
        'policy': policy, 'device': 'raspberry_pi_5', 'cloud_device': 'h200_server',
        'split_options': [SMALL, OTHER], 'split_middle_device': 'laptop_cpu',
        'split_lan_mbps': 100.0, 'split_lan_rtt_ms': 2.0, **extra})


def _observations() -> SplitObservations:
    settings = _config().policy_settings()
    obs = SplitObservations(settings.energy, settings.splits)
    obs.prepare()
    return obs


def _answer(obs: SplitObservations, split: str, ms: float, t_s: float) -> None:
    obs.now_s = t_s
    obs.observe_report(InferenceReport(stamp_ns=int(t_s * 1e9), source='pi', status='ok',
                                       model='yolov8n-shapes', imgsz=320, total_ms=ms,
                                       split=split))


def _option(split: str) -> Option:
    return Option(Route.EDGE, 'yolov8n-shapes', 320, 50, split)


def test_an_edge_split_is_estimated_from_its_profiles_until_measured() -> None:
    obs = _observations()
    fig = obs.splits[SMALL]
    assert fig.edge and not fig.to_cloud
    est = obs.estimate(_option(SMALL), 250.0)
    assert est is not None and est.latency_ms == pytest.approx(fig.before_wan_ms)
    assert est.p_miss < 1e-3 and est.cost_usd == 0.0
    # The robot pays its head, encode and radio; the edge model's accuracy, no cloud prior.
    assert est.energy_j == pytest.approx(obs.energy.joules(fig.robot_ms, fig.payload_bytes,
                                                           REPLY_BYTES, obs.period_ms))
    assert est.accuracy == pytest.approx(obs.accuracy.edge('yolov8n-shapes', 320))
    late = obs.estimate(_option(SMALL), fig.before_wan_ms / 4)
    assert late is not None and late.p_miss > 0.9


def test_measured_answers_replace_the_profile_and_slow_the_other_splits_too() -> None:
    obs = _observations()
    for i in range(30):  # a LAN at 2 Mbit/s: the route takes 300 ms
        _answer(obs, SMALL, 300.0, i * 0.1)
    obs.prepare()
    small = obs.estimate(_option(SMALL), 250.0)
    assert small is not None and small.latency_ms == pytest.approx(300.0)
    assert small.p_miss == 1.0
    # Never measured, the other split shares the LAN and the middle device: as slow.
    other = obs.estimate(_option(OTHER), 250.0)
    assert other is not None and other.p_miss > 0.5
    assert other.latency_ms == pytest.approx(
        obs.splits[OTHER].before_wan_ms * 300.0 / obs.splits[SMALL].before_wan_ms)


def test_a_split_left_long_enough_is_tried_again_from_its_profile() -> None:
    obs = _observations()
    for i in range(30):
        _answer(obs, SMALL, 300.0, i * 0.1)
    obs.now_s = 2.9 + SPLIT_RETRY_S - 1
    obs.prepare()
    held = obs.estimate(_option(SMALL), 250.0)
    assert held is not None and held.p_miss == 1.0
    obs.now_s = 2.9 + SPLIT_RETRY_S + 1
    obs.prepare()
    retried = obs.estimate(_option(SMALL), 250.0)
    assert retried is not None and retried.p_miss < 1e-3
    assert retried.latency_ms == pytest.approx(obs.splits[SMALL].before_wan_ms)


def test_predictive_offers_edge_splits_as_edge_routes_and_decides_on_one() -> None:
    manager = OffloadManager(_config(), executes_split=True)
    policy = manager._policy
    options = {o.split: o for o in policy.options() if o.split}
    assert set(options) == {SMALL, OTHER}
    assert all(o.route is Route.EDGE and o.edge_imgsz == 320 for o in options.values())
    decision = manager.tick(0)
    assert decision is not None and decision.route is Route.EDGE and decision.split == SMALL


def test_the_manager_times_a_tails_answer_from_the_frames_arrival() -> None:
    manager = OffloadManager(_config('edge-only'), executes_split=True)
    seen: list[InferenceReport] = []
    taken: list[int | None] = []

    def observe(report: InferenceReport, now_ns: int | None = None) -> None:
        seen.append(report)
        taken.append(now_ns)

    manager._policy.observe_report = observe  # type: ignore[method-assign]
    manager.tick(0)
    assert manager.frame_arrived(7, 'cam', 1_000_000_000) is None
    tail = InferenceReport(stamp_ns=7, frame_id='cam', source='pi', status='ok',
                           model='yolov8n-shapes', imgsz=320, total_ms=14.0, split=SMALL)
    manager.on_report(tail, 1_031_000_000)
    assert seen[-1].total_ms == pytest.approx(31.0)  # head, LAN and tail, not the tail alone
    assert taken[-1] == 1_031_000_000  # when the report came
    manager.on_report(InferenceReport(stamp_ns=7, frame_id='cam', source='robot',
                                      status='forwarded', inference_ms=3.0, split=SMALL),
                      1_004_000_000)
    assert seen[-1].total_ms == 0.0  # a head's report is not an answer: left as it came


def _two_frames() -> tuple[OffloadManager, EnergyModel]:
    """Return a manager (the robot's energy model beside it) with frames 1 and 2 arrived."""
    manager = OffloadManager(_config('edge-only'), executes_split=True)
    manager.tick(0)
    for stamp in (1, 2):
        manager.frame_arrived(stamp, 'cam', stamp * 100_000_000)
    return manager, _config().policy_settings().energy


def test_an_edge_split_costs_the_robot_its_head_and_radio_not_the_tails_compute() -> None:
    manager, energy = _two_frames()
    manager.on_report(InferenceReport(stamp_ns=1, frame_id='cam', source='robot',
                                      status='forwarded', inference_ms=3.0, encode_ms=1.0,
                                      bytes_sent=65_000, split=SMALL))
    manager.on_report(InferenceReport(stamp_ns=1, frame_id='cam', source='pi', status='ok',
                                      inference_ms=14.0, split=SMALL))
    outcomes = manager.poll(10**9, final=True)
    first = next(o for o in outcomes if o.record.stamp_ns == 1)
    assert first.record.energy_j == pytest.approx(energy.joules(4.0, 65_000, REPLY_BYTES, 0))


def test_a_frame_the_robot_answered_and_probed_costs_its_model_and_the_probes_send() -> None:
    manager, energy = _two_frames()
    manager.on_report(InferenceReport(stamp_ns=1, frame_id='cam', source='robot',
                                      inference_ms=25.0, encode_ms=2.0, bytes_sent=53_000,
                                      split_probe=SMALL, split_role='head'))
    manager.on_report(InferenceReport(stamp_ns=2, frame_id='cam', source='robot',
                                      inference_ms=25.0, split_role='head'))
    outcomes = {o.record.stamp_ns: o.record for o in manager.poll(10**9, final=True)}
    assert outcomes[1].energy_j == pytest.approx(energy.joules(27.0, 53_000, 0, 0))
    assert outcomes[2].energy_j == pytest.approx(energy.joules(25.0, 0, 0, 0))


def test_on_the_cloud_route_edge_probes_run_the_split_it_would_come_back_to() -> None:
    cloud = Plan(Route.CLOUD, 'yolov8n-shapes', 640, 50, 0, 1, 0.0, '', probe_every=10)
    whole = Estimate(Option(Route.EDGE, 'yolov8n-shapes', 640, 50), 0.0, 0.70, 47.0, 0.0, 100.0)
    split = Estimate(_option(SMALL), 0.0, 0.31, 79.0, 0.0, 25.0)
    slow = Estimate(_option(OTHER), 1.0, 0.30, 79.0, 0.0, 300.0)  # cheaper but late
    probed = edge_probe_plan(cloud, [whole, split, slow], 0.01)
    assert probed.route is Route.CLOUD and probed.split == SMALL and probed.edge_imgsz == 320
    # The whole model in time and cheapest: probed as the plan already names it.
    cheap_whole = Estimate(Option(Route.EDGE, 'yolov8n-shapes', 640, 50), 0.0, 0.2, 47.0, 0.0,
                           100.0)
    assert edge_probe_plan(cloud, [cheap_whole, split], 0.01) == cloud


def _run_lan(manager: OffloadManager, silent: tuple[float, float], seconds: float,
             no_tail: bool = False, ended: list[Outcome] | None = None) -> list[tuple[float, str]]:
    """Feed the manager 10 fps frames; the LAN loses every split frame within ``silent``.

    With ``no_tail``, no tail subscribes within ``silent`` instead: the head answers its split
    frames itself (``split_unsent``) and sends no probe. The frames' outcomes go to ``ended``.

    Returns:
        (seconds, split) of each decision issued.
    """
    ms = 1_000_000
    issued = [(0.0, manager.tick(0).split)]  # type: ignore[union-attr]
    for i in range(int(seconds * 10)):
        now = i * 100 * ms
        manager.frame_arrived(now, 'cam', now)
        split = manager.decision.split  # type: ignore[union-attr]
        gone = silent[0] <= now / 1e9 < silent[1]
        if split and no_tail and gone:
            manager.on_detections(DetectionSet(now, 'cam', 'robot', ()), now + 90 * ms)
            manager.on_report(InferenceReport(stamp_ns=now, frame_id='cam', source='robot',
                                              model='yolov8n-shapes', imgsz=320, total_ms=90.0,
                                              split_role='head', split_unsent=split),
                              now + 90 * ms)
        elif split:
            manager.on_report(InferenceReport(stamp_ns=now, frame_id='cam', source='robot',
                                              status='forwarded', split=split,
                                              split_role='head'), now + 5 * ms)
            if not silent[0] <= now / 1e9 < silent[1]:
                manager.on_detections(DetectionSet(now, 'cam', 'pi', ()), now + 40 * ms)
                manager.on_report(InferenceReport(stamp_ns=now, frame_id='cam', source='pi',
                                                  model='yolov8n-shapes', imgsz=320,
                                                  total_ms=30.0, split=split,
                                                  split_role='tail'), now + 40 * ms)
        else:  # the robot's own model, a probe of the split every probe_every-th frame
            decision = manager.decision
            assert decision is not None
            probe = decision.split_probe if decision.probe_every and \
                i % decision.probe_every == 0 and not (no_tail and gone) else ''
            if probe and not silent[0] <= now / 1e9 < silent[1]:  # the tail beats the robot
                manager.on_report(InferenceReport(stamp_ns=now, frame_id='cam', source='pi',
                                                  model='yolov8n-shapes', imgsz=320,
                                                  total_ms=30.0, split=probe,
                                                  split_role='tail'), now + 40 * ms)
            manager.on_detections(DetectionSet(now, 'cam', 'robot', ()), now + 90 * ms)
            manager.on_report(InferenceReport(stamp_ns=now, frame_id='cam', source='robot',
                                              model='yolov8n-shapes', imgsz=320, total_ms=90.0,
                                              split_role='head', split_probe=probe),
                              now + 90 * ms)
        for t in (now + 50 * ms, now + 99 * ms):
            (ended if ended is not None else []).extend(manager.poll(t))
            decision = manager.tick(t)
            if decision is not None and decision.split != issued[-1][1]:
                issued.append((t / 1e9, decision.split))
    return issued


def test_a_lan_that_loses_the_split_frames_moves_the_manager_to_its_own_model_in_time() -> None:
    # Frames lost on the LAN never reach the tail, so nothing answers and nothing fails:
    # forwarded and unanswered past the deadline, they count against the splits alone.
    manager = OffloadManager(_config(edge_sources=['robot', 'pi']), executes_split=True)
    issued = _run_lan(manager, (5.0, 15.0), 50.0)
    assert issued[0] == (0.0, SMALL)
    moved = next(t for t, split in issued if t >= 5.0)
    # The deadline, the frames until enough are overdue, a plan period, a frame.
    assert issued[1][1] == '' and moved < 5.0 + 0.25 + (MIN_OVERDUE - 1) * 0.1 + 0.25 + 0.1
    back = [t for t, split in issued[2:] if split]
    assert back and 15.0 < back[0] < 15.0 + SPLIT_RETRY_S + 5.0  # tried again, and kept
    assert issued[-1][1] and all(split for _, split in issued if _ > back[0])


def test_a_tail_that_stops_listening_moves_the_manager_to_its_own_model_losing_nothing() -> None:
    # The head sees no subscription and answers the split frames itself: none is lost, and
    # each counts against the split at once, not a deadline later.
    manager = OffloadManager(_config(edge_sources=['robot', 'pi']), executes_split=True)
    ended: list[Outcome] = []
    issued = _run_lan(manager, (5.0, 15.0), 40.0, no_tail=True, ended=ended)
    assert issued[0] == (0.0, SMALL) and issued[1][1] == ''
    assert issued[1][0] < 5.0 + (MIN_OVERDUE - 1) * 0.1 + 0.25 + 0.1  # no deadline to wait
    ended += manager.poll(10**12, final=True)
    assert len(ended) == 400 and all(o.record.deadline_met for o in ended)
    back = [t for t, split in issued[2:] if split]
    assert back and 15.0 < back[0] < 15.0 + 4.0  # its probes, sent again once it listens


@pytest.mark.parametrize('probe_every, within_s', [(10, 4.0), (0, SPLIT_RETRY_S + 5.0)])
def test_probes_of_the_split_bring_the_manager_back_soon_after_the_lan_is(
        probe_every: int, within_s: float) -> None:
    manager = OffloadManager(_config(edge_sources=['robot', 'pi'], probe_every=probe_every),
                             executes_split=True)
    issued = _run_lan(manager, (5.0, 15.0), 50.0)
    assert issued[1][1] == ''
    back = [t for t, split in issued[2:] if split]
    # With probes, three answered in a row after the losses (a probe a second); without, the
    # split's retry after its history has aged.
    assert back and 15.0 < back[0] < 15.0 + within_s
    if probe_every:
        assert back[0] < 15.0 + SPLIT_RETRY_S - 10.0
    assert issued[-1][1] and all(split for _, split in issued if _ > back[0])


def test_a_probe_plan_names_the_cheapest_split_only_if_it_beats_the_choice() -> None:
    own = Plan(Route.EDGE, 'yolov8n-shapes', 320, 50, 0, 1, 0.0, '', probe_every=10)
    whole = Estimate(Option(Route.EDGE, 'yolov8n-shapes', 320, 50), 0.0, 0.38, 47.0, 0.0, 25.0)
    cheap = Estimate(_option(SMALL), 1.0, 0.31, 47.0, 0.0, 300.0)  # late now: left
    dear = Estimate(_option(OTHER), 1.0, 0.33, 47.0, 0.0, 300.0)
    assert split_probe_plan(own, [whole, dear, cheap], whole).split_probe == SMALL
    assert split_probe_plan(own, [whole, cheap], whole._replace(energy_j=0.30)) == own
    # Not when it probes nothing, nor on a split, nor off the edge route.
    assert split_probe_plan(replace(own, probe_every=0), [whole, cheap], whole).split_probe == ''
    assert split_probe_plan(replace(own, split=OTHER), [whole, cheap], whole).split_probe == ''
    cloud = replace(own, route=Route.CLOUD)
    assert split_probe_plan(cloud, [whole, cheap], whole) == cloud


def test_probes_answered_in_time_over_a_lan_too_slow_for_every_frame_keep_the_split_off() -> None:
    obs = _observations()
    fig = obs.splits[SMALL]
    busy = fig.robot_ms + fig.middle_ms + 150.0  # in time, but the LAN takes 1.5 periods a frame
    for i in range(3):
        _answer(obs, SMALL, busy, 1.0 + i)
    obs.prepare()
    obs.period_ms = 100.0  # 10 fps
    held = obs.estimate(_option(SMALL), 400.0)
    assert held is not None and held.p_miss == 1.0
    other = obs.estimate(_option(OTHER), 400.0)  # its sibling shares the LAN
    assert other is not None and other.p_miss == 1.0
    # Three answers in a row that fit a period: the busy spell is forgotten, for both.
    for i in range(3):
        _answer(obs, SMALL, fig.before_wan_ms, 4.0 + i)
    obs.prepare()
    obs.period_ms = 100.0
    back = obs.estimate(_option(SMALL), 400.0)
    assert back is not None and back.p_miss < 0.01
    assert back.latency_ms == pytest.approx(fig.before_wan_ms)
    other = obs.estimate(_option(OTHER), 400.0)
    assert other is not None and other.p_miss < 0.01


def test_a_split_in_use_is_judged_by_its_latency_not_by_how_busy_its_lan_is() -> None:
    # A LAN kept about full (5 Mbit/s, 53 KB a frame): answers at the frame rate already hold
    # its queueing, and all are in time.
    obs = _observations()
    fig = obs.splits[SMALL]
    for i in range(20):
        _answer(obs, SMALL, fig.robot_ms + fig.middle_ms + 105.0, 1.0 + i * 0.1)
    obs.prepare()
    obs.period_ms = 100.0
    used = obs.estimate(_option(SMALL), 400.0)
    assert used is not None and used.p_miss < 0.01


def test_a_frame_the_head_never_forwarded_counts_against_the_robot_not_the_split() -> None:
    obs = OffloadManager(_config(), executes_split=True)._policy.obs  # type: ignore[attr-defined]
    lost = FrameRecord(index=0, stamp_ns=1, frame_id='cam', route='edge', split=SMALL,
                       drop_reason=NO_RESULT)
    obs.observe_record(lost)  # the head never saw it: no forwarded report
    obs.prepare()
    whole = obs.estimate(Option(Route.EDGE, 'yolov8n-shapes', 320, 50), 250.0)
    split = obs.estimate(_option(SMALL), 250.0)
    assert whole is not None and split is not None
    assert whole.p_miss == 1.0 and split.p_miss < 0.01
    obs.observe_report(InferenceReport(stamp_ns=2, frame_id='cam', source='robot',
                                       status='forwarded', split=SMALL))
    obs.observe_record(replace(lost, stamp_ns=2))  # forwarded, then lost on the LAN
    obs.prepare()
    split = obs.estimate(_option(SMALL), 250.0)
    assert split is not None and split.p_miss == 1.0
