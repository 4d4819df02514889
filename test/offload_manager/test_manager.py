"""Offload manager decisions, policies and parameters set at runtime."""

from __future__ import annotations

from typing import Any

from adaptive_offload.datatypes import (Detection, DetectionSet, FrameRecord, InferenceReport,
                                        Route)
from adaptive_offload.errors import ConfigError
from offload_manager.manager import ManagerConfig, OffloadManager
from offload_manager.policies import create_policy, POLICIES
from offload_manager.policy import Plan
import pytest

S = 1_000_000_000


def test_the_default_policy_is_predictive() -> None:
    assert ManagerConfig.from_params({}).policy == 'predictive'
    assert OffloadManager(ManagerConfig.from_params({})).tick(0).policy == 'predictive'


def test_decisions_are_reissued_on_the_period_with_rising_seq() -> None:
    manager = OffloadManager(ManagerConfig.from_params({'policy': 'edge-only',
                                                        'decision_period_s': 0.5,
                                                        'decision_valid_s': 2.0}))
    first = manager.tick(0)
    assert first.seq == 1 and first.route is Route.EDGE and first.policy == 'edge-only'
    assert first.valid_for_ms == 2000.0 and first.deadline_ms == 250.0
    assert manager.tick(S // 4) is None
    second = manager.tick(S // 2)
    assert second.seq == 2 and second.issued_ns == S // 2


@pytest.mark.parametrize('name, params, route', [
    ('edge-only', {}, Route.EDGE), ('cloud-only', {}, Route.CLOUD),
    ('static', {'static_route': 'hedged'}, Route.HEDGED)])
def test_fixed_policies(name: str, params: dict, route: Route) -> None:
    config = ManagerConfig.from_params({'policy': name, 'jpeg_quality': 60, **params})
    plan = create_policy(name, config.policy_settings()).plan(0)
    assert plan.route is route and plan.jpeg_quality == 60


def test_unknown_policy_and_bad_config_are_refused() -> None:
    with pytest.raises(ConfigError, match='unknown policy'):
        OffloadManager(ManagerConfig.from_params({'policy': 'psychic'}))
    with pytest.raises(ConfigError, match='static_route'):
        ManagerConfig.from_params({'static_route': 'mars'})
    with pytest.raises(ConfigError, match='static_route'):  # a split needs its option
        ManagerConfig.from_params({'static_route': 'split'})
    with pytest.raises(ConfigError, match='decision_valid_s'):
        ManagerConfig.from_params({'decision_period_s': 3.0, 'decision_valid_s': 2.0})
    with pytest.raises(ConfigError, match='unknown parameter'):
        ManagerConfig.from_params({'dead_line': 3})
    with pytest.raises(ConfigError, match="expecting type 'DOUBLE'"):
        ManagerConfig.from_params({'deadline_ms': 'soon'})
    assert set(POLICIES) >= {'edge-only', 'cloud-only', 'static'}


def test_manager_turns_results_into_records() -> None:
    manager = OffloadManager(ManagerConfig.from_params({}))
    manager.tick(0)
    assert manager.frame_arrived(5, 'cam', 0) is None
    manager.on_report(InferenceReport(stamp_ns=5, frame_id='cam', source='edge'))
    manager.on_detections(DetectionSet(5, 'cam', 'edge', (Detection(0, 0, 2, 2, .5, 'b'),)),
                          S // 10)
    [outcome] = manager.poll(S // 10)
    assert outcome.record.latency_ms == 100.0 and outcome.record.detections == 1
    unreadable = manager.frame_unreadable('deserialize_error: x', S)
    assert unreadable.record.index == 1 and unreadable.record.dropped


def test_a_frame_waits_for_its_result_at_least_until_its_deadline() -> None:
    manager = OffloadManager(ManagerConfig.from_params({
        'policy': 'edge-only', 'deadline_ms': 5000.0, 'result_timeout_ms': 2000.0}))
    manager.tick(0)
    manager.frame_arrived(5, 'cam', 0)
    manager.frame_arrived(6, 'cam', 0)
    assert manager.poll(3 * S) == []  # past result_timeout_ms, inside the deadline
    manager.on_report(InferenceReport(stamp_ns=5, frame_id='cam', source='edge'))
    manager.on_detections(DetectionSet(5, 'cam', 'edge', ()), 3 * S)
    [served] = manager.poll(3 * S)
    assert served.record.latency_ms == 3000.0 and served.record.deadline_met
    [lost] = manager.poll(5 * S + 1)  # nothing for 6 by its deadline: now it is a drop
    assert lost.record.stamp_ns == 6 and lost.record.drop_reason


def test_parameters_set_at_runtime_show_in_the_next_decision() -> None:
    manager = OffloadManager(ManagerConfig.from_params({'policy': 'edge-only'}))
    first = manager.tick(0)
    assert first.deadline_ms == 250.0 and first.probe_every == 0
    assert manager.tick(1) is None  # nothing due before the period
    config = manager.reconfigure({'deadline_ms': 400.0, 'epsilon': 0.05, 'probe_every': 3})
    assert config.deadline_ms == 400.0 and manager.config.epsilon == 0.05
    second = manager.tick(2)  # at once, not after the decision period
    assert second is not None and second.seq == 2 and second.deadline_ms == 400.0
    assert second.policy == 'edge-only'


def test_a_policy_set_at_runtime_replaces_the_policy() -> None:
    manager = OffloadManager(ManagerConfig.from_params({'policy': 'edge-only'}))
    assert manager.tick(0).route is Route.EDGE
    manager.reconfigure({'policy': 'cloud-only'})
    decision = manager.tick(1)
    assert decision.route is Route.CLOUD and decision.policy == 'cloud-only'
    manager.reconfigure({'policy': 'static', 'static_route': 'hedged'})
    assert manager.tick(2).route is Route.HEDGED
    manager.reconfigure({'static_route': 'cloud'})
    assert manager.tick(3).route is Route.CLOUD


def test_a_refused_runtime_change_leaves_the_configuration_in_force() -> None:
    manager = OffloadManager(ManagerConfig.from_params({'policy': 'edge-only'}))
    manager.tick(0)
    with pytest.raises(ConfigError, match='only set at start-up'):
        manager.reconfigure({'image_topic': '/other'})
    with pytest.raises(ConfigError, match='static_route'):
        manager.reconfigure({'static_route': 'mars', 'deadline_ms': 100.0})
    with pytest.raises(ConfigError, match='unknown policy|policy'):
        manager.reconfigure({'policy': 'telepathy'})
    assert manager.config.deadline_ms == 250.0 and manager.config.policy == 'edge-only'
    assert manager.tick(1) is None


def test_next_due_is_the_first_period_or_frame_deadline_ahead() -> None:
    manager = OffloadManager(ManagerConfig.from_params({
        'policy': 'edge-only', 'decision_period_s': 0.5, 'decision_valid_s': 2.0,
        'plan_period_s': 0.25, 'result_timeout_ms': 400.0}))
    assert manager.next_due_ns(7) == 7  # nothing issued yet: tick at once
    manager.tick(0)
    assert manager.next_due_ns(0) == S // 4  # the plan period
    assert manager.tick(S // 4 - 1) is None and manager.next_due_ns(S // 4 - 1) == S // 4
    assert manager.tick(S // 4) is None  # re-planned, same plan: nothing to issue
    assert manager.next_due_ns(S // 4) == S // 2  # the plan and the decision periods
    manager.frame_arrived(1, 'cam', S // 4)
    guard = S // 4 + 225_000_000  # its 250 ms deadline less the hedge guard
    assert manager.next_due_ns(S // 4) == guard
    assert manager.poll(guard) == [] and manager.next_due_ns(guard) == S // 2
    manager.tick(S // 2)
    assert manager.next_due_ns(S // 2) == S // 4 + 400_000_000  # its result timeout


def test_records_carry_the_edge_accuracy_estimate_and_it_follows_agreement() -> None:
    from offload_manager.accuracy import prior

    manager = OffloadManager(ManagerConfig.from_params({'edge_model': 'yolov8n',
                                                        'edge_imgsz': 640}))
    manager.tick(0)
    box = Detection(0, 0, 10, 10, .9, 'b')
    records = []
    for i in range(1, 6):
        stamp = i * S // 10
        manager.frame_arrived(stamp, 'cam', stamp)
        manager.on_report(InferenceReport(stamp_ns=stamp, frame_id='cam', source='edge',
                                          model='yolov8n', imgsz=640))
        manager.on_detections(DetectionSet(stamp, 'cam', 'cloud', (box,)), stamp + 1)
        if i > 1:  # the first frame is served before any agreement: the prior alone
            manager.on_detections(DetectionSet(stamp, 'cam', 'edge', ()), stamp + 2)
        records += [o.record for o in manager.poll(stamp + 3)]
    base = prior('yolov8n', 640)
    assert [r.agreement_samples for r in records] == [0, 1, 2, 3, 4]
    # The edge found none of the cloud's boxes (F1 0): the estimate sinks from the prior as
    # the samples outweigh it (prior worth 20 samples).
    assert [r.edge_map_estimate for r in records] == pytest.approx(
        [base * 20 / (20 + n) for n in range(5)])
    assert FrameRecord.from_json(records[-1].to_json()) == records[-1]
    old = FrameRecord.from_json('{"schema":"adaptive_offload/FrameRecord","version":1}')
    assert old.edge_map_estimate is None and old.agreement_samples == 0


def test_a_fixed_policy_keeps_no_accuracy_estimate() -> None:
    manager = OffloadManager(ManagerConfig.from_params({'policy': 'edge-only'}))
    manager.tick(0)
    manager.frame_arrived(5, 'cam', 0)
    manager.on_detections(DetectionSet(5, 'cam', 'edge', ()), 1)
    [outcome] = manager.poll(2)
    assert outcome.record.edge_map_estimate is None


class Scripted:
    """A policy whose route changes when told: edge, then the cloud from ``cloud_from_ns``."""

    def __init__(self, cloud_from_ns: int, back_at_ns: int | None = None) -> None:
        self.cloud_from_ns, self.back_at_ns = cloud_from_ns, back_at_ns

    def plan(self, now_ns: int) -> Plan:
        cloud = now_ns >= self.cloud_from_ns and (self.back_at_ns is None or
                                                  now_ns < self.back_at_ns)
        return Plan(Route.CLOUD if cloud else Route.EDGE, 'yolov8n', 640, 75, 0, 1, 0.0,
                    'scripted')

    def __getattr__(self, name: str) -> Any:
        return lambda *args: None  # observes nothing


def _switch_time(seed: int, jitter_s: float, step_ns: int = S // 100) -> int:
    manager = OffloadManager(ManagerConfig.from_params({'cloud_switch_jitter_s': jitter_s,
                                                        'seed': seed}), Scripted(S))
    for now in range(0, 10 * S, step_ns):
        manager.tick(now)
        if manager.decision is not None and manager.decision.route is Route.CLOUD:
            return now
    raise AssertionError('never switched')


def test_a_switch_onto_the_cloud_is_held_for_a_drawn_share_of_the_jitter() -> None:
    assert _switch_time(0, 0.0) == S  # no jitter: at the plan that asks for it
    times = {_switch_time(seed, 2.0) for seed in range(8)}
    assert len(times) >= 6 and all(S <= t <= 3 * S for t in times)
    assert _switch_time(3, 2.0) == _switch_time(3, 2.0)  # drawn from the seed


def test_a_held_switch_is_dropped_when_the_plan_turns_back_and_leaving_is_not_held() -> None:
    config = ManagerConfig.from_params({'cloud_switch_jitter_s': 50.0, 'seed': 1})
    manager = OffloadManager(config, Scripted(S, back_at_ns=2 * S))
    routes = set()
    for now in range(0, 60 * S, S // 10):
        manager.tick(now)
        routes.add(manager.decision.route)
    assert routes == {Route.EDGE}  # the cloud was wanted for 1 s, held for longer: never used
    manager = OffloadManager(ManagerConfig.from_params({'cloud_switch_jitter_s': 50.0,
                                                        'policy': 'cloud-only'}))
    assert manager.tick(0).route is Route.CLOUD  # the first plan is nothing to switch from
    assert manager.next_due_ns(0) > 0


def test_the_next_due_time_includes_a_held_switch() -> None:
    # Plans and decisions come every 1 s and 10 s: the held switch (under 0.9 s) is due first.
    manager = OffloadManager(ManagerConfig.from_params(
        {'cloud_switch_jitter_s': 0.9, 'seed': 0, 'plan_period_s': 1.0,
         'decision_period_s': 10.0, 'decision_valid_s': 20.0}), Scripted(S))
    manager.tick(0)
    manager.tick(S)  # the switch is asked for and held
    held = manager._held
    assert held is not None and S < held[1] < 2 * S
    assert manager.next_due_ns(S) == held[1]
