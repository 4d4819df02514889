"""Fault scenarios: validation with clear errors, and the client-side injector."""

from __future__ import annotations

from pathlib import Path

from adaptive_offload.errors import CloudError, ConfigError
from cloud_bridge.transport import CloudReply
from fault_injection.client_faults import FaultInjectingTransport
from fault_injection.rig import FaultRig
from fault_injection.scenario import (Announcer, load_scenario, parse_scenario,
                                      refuse_lan_kinds, refuse_service_kinds)
from helpers import ManualClock
import numpy as np
import pytest

S = 1_000_000_000


def _scenario(*faults: dict) -> object:
    return parse_scenario({'name': 't', 'faults': list(faults)})


def test_a_valid_scenario_file(tmp_path: Path) -> None:
    path = tmp_path / 's.yaml'
    path.write_text('name: spike\nfaults:\n'
                    '  - {kind: latency, start_s: 2, duration_s: 3, delay_ms: 300}\n'
                    '  - {kind: cloud_outage, start_s: 0.5, duration_s: 1}\n')
    scenario = load_scenario(path)
    assert scenario.name == 'spike' and [f.kind for f in scenario.faults] == ['cloud_outage',
                                                                              'latency']
    assert scenario.faults[1].params == {'delay_ms': 300.0, 'jitter_ms': 0.0}
    assert [f.kind for f in scenario.active(2.5)] == ['latency'] and scenario.active(5.0) == []


@pytest.mark.parametrize('faults, message', [
    ([{'kind': 'meteor', 'start_s': 0, 'duration_s': 1}], 'unknown kind'),
    ([{'kind': 'cloud_outage', 'start_s': -1, 'duration_s': 1}], 'start_s >= 0'),
    ([{'kind': 'cloud_outage', 'start_s': 0, 'duration_s': 0}], 'duration_s > 0'),
    ([{'kind': 'latency', 'start_s': 0, 'duration_s': 1}], 'needs delay_ms'),
    ([{'kind': 'loss', 'start_s': 0, 'duration_s': 1, 'probability': 1.5}], 'probabilities'),
    ([{'kind': 'cloud_outage', 'start_s': 0, 'duration_s': 1, 'delay_ms': 3}], 'takes no'),
    ([{'kind': 'bandwidth', 'start_s': 0, 'duration_s': 1, 'mbps': 'fast'}], 'number'),
    ([{'kind': 'cloud_outage', 'start_s': 0, 'duration_s': 5},
      {'kind': 'cloud_outage', 'start_s': 4, 'duration_s': 1}], 'overlap'),
    ([{'kind': 'replica_crash', 'start_s': 0, 'duration_s': 5}], 'takes no duration_s'),
    ([{'kind': 'replica_crash', 'start_s': 0, 'replicas': 1.5}], 'whole number'),
    ([{'kind': 'replica_crash', 'start_s': 0, 'replicas': 0}], 'whole number'),
    ([{'kind': 'zone_outage', 'start_s': 0, 'duration_s': 5, 'share': 0}], 'share'),
    ([{'kind': 'zone_outage', 'start_s': 0, 'duration_s': 5, 'share': 1.5}], 'share'),
])
def test_invalid_scenarios_name_the_problem(faults: list, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        _scenario(*faults)


class Inner:
    """A transport that records each request's timeout."""

    def __init__(self) -> None:
        self.calls: list[float] = []

    def infer(self, image: bytes, timeout_s: float) -> CloudReply:
        self.calls.append(timeout_s)
        return CloudReply(np.zeros((0, 4)), np.zeros(0), (), 10.0, len(image))

    def close(self) -> None:
        pass


def _injector(clock: ManualClock, *faults: dict) -> tuple[FaultInjectingTransport, Inner]:
    inner = Inner()
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        clock.advance(seconds * 1e3)

    injector = FaultInjectingTransport(inner, _scenario(*faults), clock, sleep, seed=1)
    injector.start(0)
    return injector, inner


def test_outage_latency_and_bandwidth_follow_the_timeline() -> None:
    clock = ManualClock(0)
    injector, inner = _injector(
        clock, {'kind': 'cloud_outage', 'start_s': 1, 'duration_s': 1},
        {'kind': 'latency', 'start_s': 3, 'duration_s': 1, 'delay_ms': 200},
        {'kind': 'bandwidth', 'start_s': 5, 'duration_s': 1, 'mbps': 8})
    assert injector.infer(b'x' * 1000, 1.0).request_ms == 10.0  # before any fault
    clock.now = int(1.5 * S)
    with pytest.raises(CloudError, match='connection') as refused:
        injector.infer(b'x', 1.0)
    assert refused.value.bytes_sent == 0  # an unreachable cloud got nothing
    clock.now = 3 * S
    assert injector.infer(b'x', 1.0).request_ms == 210.0
    assert inner.calls[-1] == pytest.approx(0.8)  # the real request gets what is left
    with pytest.raises(CloudError, match='timeout') as late:
        injector.infer(b'x' * 500, 0.1)  # 200 ms of delay cannot fit a 100 ms deadline
    assert late.value.bytes_sent == 500  # sent, never answered in time
    clock.now = 5 * S
    assert injector.infer(b'x' * 100_000, 1.0).request_ms == pytest.approx(110.0)  # 0.8 Mbit


def test_loss_and_corruption_happen_at_their_probability() -> None:
    clock = ManualClock(0)
    injector, _ = _injector(clock, {'kind': 'loss', 'start_s': 0, 'duration_s': 1000,
                                    'probability': 0.3})
    outcomes = []
    for _ in range(400):
        try:
            injector.infer(b'x', 0.001)
            outcomes.append('ok')
        except CloudError as err:
            outcomes.append(err.reason)
    assert set(outcomes) == {'ok', 'timeout'}
    assert 0.22 < outcomes.count('timeout') / 400 < 0.38
    injector, _ = _injector(ManualClock(0), {'kind': 'corruption', 'start_s': 0,
                                             'duration_s': 1})
    with pytest.raises(CloudError, match='bad_reply'):
        injector.infer(b'x', 1.0)


def test_every_shipped_scenario_is_valid() -> None:
    folder = Path(__file__).resolve().parents[2] / 'config' / 'scenarios'
    names = {p.stem: load_scenario(p) for p in sorted(folder.glob('*.yaml'))}
    assert set(names) >= {'steady', 'cloud_outage_10s', 'bandwidth_drop', 'latency_spike',
                          'flapping_cloud'}
    assert names['steady'].faults == () and len(names['flapping_cloud'].faults) == 4
    fleet = {p.stem: load_scenario(p) for p in sorted((folder / 'fleet').glob('*.yaml'))}
    assert set(fleet) == {'replica_crash', 'zone_outage', 'rush'}
    assert fleet['replica_crash'].faults[0].params == {'replicas': 1.0}


def test_service_faults_are_instant_or_timed_and_only_a_fleet_plays_them() -> None:
    scenario = _scenario({'kind': 'replica_crash', 'start_s': 30, 'replicas': 2},
                         {'kind': 'zone_outage', 'start_s': 60, 'duration_s': 20})
    crash, zone = scenario.faults
    assert (crash.start_s, crash.duration_s, crash.params) == (30.0, 0.0, {'replicas': 2.0})
    assert zone.params == {'share': 0.5} and zone.active(70.0) and not zone.active(80.0)
    with pytest.raises(ConfigError, match='only the fleet simulation'):
        refuse_service_kinds(scenario, 'here')
    refuse_service_kinds(_scenario({'kind': 'cloud_outage', 'start_s': 0, 'duration_s': 1}),
                         'here')
    with pytest.raises(ConfigError, match='replica_crash'):
        FaultRig(scenario)


def test_a_lan_fault_slows_the_edge_computers_link_and_only_the_simulator_plays_it() -> None:
    scenario = load_scenario('lan_drop_twice')
    first, second = scenario.faults
    assert first.kind == 'lan_bandwidth' and first.params == {'mbps': 2.0}
    assert first.active(15.0) and not first.active(25.0) and second.active(35.0)
    with pytest.raises(ConfigError, match='only the simulator plays'):
        refuse_lan_kinds(scenario, 'here')
    with pytest.raises(ConfigError, match='lan_bandwidth'):
        FaultRig(scenario)
    with pytest.raises(ConfigError, match='mbps must be > 0'):
        _scenario({'kind': 'lan_bandwidth', 'start_s': 0, 'duration_s': 1, 'mbps': 0})
    lossy = load_scenario('lan_loss_twice_no_cloud')
    assert [(f.kind, f.params) for f in lossy.faults[1:]] == [
        ('lan_loss', {'probability': 0.9})] * 2
    with pytest.raises(ConfigError, match='lan_loss'):
        refuse_lan_kinds(lossy, 'here')
    with pytest.raises(ConfigError, match='lan_loss needs probability'):
        _scenario({'kind': 'lan_loss', 'start_s': 0, 'duration_s': 1})


def test_each_start_and_end_is_announced_once_in_time_order() -> None:
    scenario = parse_scenario({'faults': [
        {'kind': 'edge_stall', 'start_s': 2.0, 'duration_s': 1.0},
        {'kind': 'cloud_outage', 'start_s': 1.0, 'duration_s': 3.0}]})
    announcer = Announcer(scenario)
    assert announcer.due(0.5) == []
    told = announcer.due(3.5)  # a late tick tells everything reached, oldest first
    assert [(e.kind, e.phase, e.t_s) for _, e in told] == [
        ('cloud_outage', 'start', 1.0), ('edge_stall', 'start', 2.0),
        ('edge_stall', 'end', 3.0)]
    assert told[0][1].duration_s == 3.0
    assert [f.kind for f in announcer.in_force()] == ['cloud_outage']
    assert announcer.due(3.5) == []
    assert [(e.kind, e.phase) for _, e in announcer.due(9.0)] == [('cloud_outage', 'end')]
    assert announcer.in_force() == []


def test_a_shipped_scenario_loads_by_name() -> None:
    assert load_scenario('cloud_outage_10s').kinds() == {'cloud_outage'}
    with pytest.raises(ConfigError, match='no_such_scenario'):
        load_scenario('no_such_scenario')


def test_a_scenario_may_say_how_hard_the_scene_is_and_only_faults_are_filtered() -> None:
    scenario = parse_scenario({'name': 'hard', 'scene': 'easy:0-30,hard:30-60',
                               'faults': [{'kind': 'cloud_outage', 'start_s': 1.0,
                                           'duration_s': 2.0}]})
    assert scenario.scene == 'easy:0-30,hard:30-60'
    assert scenario.only(set()).scene == scenario.scene and not scenario.only(set()).faults
    assert parse_scenario({'faults': []}).scene == ''
    with pytest.raises(ConfigError, match='scene: .*brutal'):
        parse_scenario({'scene': 'brutal:0-10', 'faults': []})
    with pytest.raises(ConfigError, match='scene must be'):
        parse_scenario({'scene': 3, 'faults': []})
