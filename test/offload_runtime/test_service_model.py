"""The simulated shared service: the real fair queue on replicas that start, crash and get lost."""

from __future__ import annotations

import random

from adaptive_offload.errors import ConfigError
from offload_runtime.service_model import LOST, READY, Request, ServiceModel, STARTING
from offload_runtime.service_settings import ServiceSettings
from offload_runtime.sim_events import EventQueue
import pytest

S = 1_000_000_000


class Robot:
    """Records how each of its requests ended."""

    def __init__(self) -> None:
        self.ends: dict[int, tuple[int, str, float]] = {}

    def answered(self, t_ns: int, token: int, server_ms: float, queue_ms: float) -> None:
        self.ends[token] = (t_ns, 'answer', queue_ms)

    def refused(self, t_ns: int, token: int, reason: str, retry_after_s: float) -> None:
        self.ends[token] = (t_ns, reason, retry_after_s)


def _service(**settings: object) -> tuple[ServiceModel, EventQueue]:
    events = EventQueue()
    base = {'replicas': 1, 'first_ms': 100.0, 'batch_extra': 0.5, 'max_batch': 4,
            'max_queue': 8, 'pod_start_s': 60.0, 'scale_up_delay_s': 5.0, 'zones': 2}
    base.update(settings)
    model = ServiceModel(ServiceSettings(**base), events.at, random.Random(0), jitter=0.0,
                         budget_s=1.0)
    return model, events


def _send(model: ServiceModel, events: EventQueue, robot: Robot, t_ns: int, token: int,
          budget_s: float = 5.0, name: str = 'a') -> None:
    events.at(t_ns, lambda t: model.submit(t, Request(robot, token, name), budget_s))


def test_requests_batch_while_the_replica_is_busy() -> None:
    model, events = _service()
    robot = Robot()
    for token in range(4):
        _send(model, events, robot, 0, token, name=f'robot{token}')
    events.run()
    # The first runs alone on the idle replica; the other three wait and run as one batch.
    assert robot.ends[0] == (100_000_000, 'answer', 0.0)
    assert {robot.ends[k][0] for k in (1, 2, 3)} == {100_000_000 + 200_000_000}
    assert robot.ends[1][2] == pytest.approx(100.0)
    sample = model.sample(S)
    assert (sample.arrivals_per_s, sample.refusals_per_s) == (4.0, 0.0)
    assert sample.offered_per_s == 4.0
    assert sample.mean_wait_s == pytest.approx(0.075)  # (0 + 3 x 0.1) / 4
    assert sample.utilisation == pytest.approx(0.3)


def test_a_batch_runs_its_images_as_one_and_each_tail_request_alone() -> None:
    model, events = _service()
    robot = Robot()
    _send(model, events, robot, 0, 0)  # runs alone: the others queue behind it
    for token, tail_s in ((1, 0.0), (2, 0.0), (3, 0.03), (4, 0.05)):
        events.at(10_000_000, lambda t, k=token, s=tail_s: model.submit(
            t, Request(robot, k, f'robot{k}', s), 5.0))
    events.run()
    # Two images as one batch (150 ms), then the two tails (30 and 50 ms): 230 ms in all.
    assert {k: robot.ends[k][1] for k in range(1, 5)} == dict.fromkeys(range(1, 5), 'answer')
    for token in range(1, 5):
        assert robot.ends[token][0] == pytest.approx(330_000_000, abs=1_000)
    assert model.busy_total_s == pytest.approx(0.1 + 0.23)
    # A batch of tails alone is their time: no image batch in it.
    events.at(S, lambda t: model.submit(t, Request(robot, 5, 'robot5', 0.04), 5.0))
    events.run()
    assert robot.ends[5][0] == pytest.approx(S + 40_000_000, abs=1_000)


def test_a_request_that_cannot_finish_in_its_budget_is_refused_at_once() -> None:
    model, events = _service()
    robot = Robot()
    _send(model, events, robot, 0, 0)  # measures the model: 100 ms a batch
    _send(model, events, robot, 150_000_000, 1, budget_s=0.05)
    events.run()
    t, reason, retry_after_s = robot.ends[1]
    assert (t, reason) == (150_000_000, 'overloaded') and retry_after_s >= 0
    assert model.refusals_total == 1 and model.late_answers == 0


def test_a_crashed_replica_resets_what_it_held_and_restarts_after_a_pod_start() -> None:
    model, events = _service(replicas=2)
    robot = Robot()
    for token in range(4):
        _send(model, events, robot, 0, token, name=f'robot{token}')
    events.at(50_000_000, lambda t: model.crash(t, 1))
    events.run(until_ns=51_000_000)
    assert model.ready() == 1
    reset = [k for k, end in robot.ends.items() if end[1] == 'connection']
    assert reset and all(robot.ends[k][0] == 50_000_000 for k in reset)
    events.run(until_ns=59 * S)
    assert model.ready() == 1
    events.run()
    assert model.ready() == 2 and len(robot.ends) == 4


def test_a_lost_zone_black_holes_until_detected_and_is_replaced_after_eviction() -> None:
    model, events = _service(replicas=2, detect_s=10.0, evict_s=300.0)
    robot = Robot()
    events.at(S, lambda t: model.zone_down(t, 0.5, 600.0))
    events.run(until_ns=S)
    lost = [r for r in model.replicas if r.state == LOST]
    assert len(lost) == 1 and model.ready() == 1
    for token in range(40):  # before detection some go to the lost zone and never end
        _send(model, events, robot, 2 * S + token * 200_000_000, token, name=f'r{token}')
    events.run(until_ns=11 * S)
    assert len(robot.ends) < 40
    ended = len(robot.ends)
    for token in range(100, 110):  # after it, all go to the healthy replica
        _send(model, events, robot, 12 * S + (token - 100) * 300_000_000, token)
    events.run(until_ns=20 * S)
    assert len(robot.ends) == ended + 10
    events.run(until_ns=301 * S)
    starting = [r for r in model.replicas if r.state == STARTING]
    assert len(starting) == 1 and starting[0].zone != lost[0].zone
    assert starting[0].ready_at_s == pytest.approx(301 + 5 + 60)
    events.run()
    assert model.ready() == 2


def test_the_offered_load_is_what_ready_replicas_admit_or_refuse_over_their_capacity() -> None:
    model, events = _service(replicas=2, detect_s=10.0)
    robot = Robot()
    events.at(0, lambda t: model.zone_down(t, 0.5, 600.0))
    for token in range(20):  # some vanish into the lost zone: no pod counts those
        _send(model, events, robot, S + token * 100_000_000, token, name=f'r{token}')
    _send(model, events, robot, 3 * S, 99, budget_s=0.001)  # refused at once: offered
    events.run(until_ns=5 * S)
    sample = model.sample(5 * S)
    seen = len(robot.ends)
    assert 0 < seen < 21 and any(end[1] == 'overloaded' for end in robot.ends.values())
    assert sample.offered_per_s * 5 == pytest.approx(seen)
    assert sample.arrivals_per_s * 5 == pytest.approx(21)
    # One ready replica: four images in 250 ms (16/s) beat one in 100 ms.
    assert sample.ready_capacity_per_s == pytest.approx(16.0)
    [ready] = [r for r in model.replicas if r.state == READY]
    ready.times.observe(4, 0.5, 5.0, fresh=True)  # measured twice slower: half the capacity
    assert model.sample(5 * S).ready_capacity_per_s == pytest.approx(8.0)
    model.crash(5 * S, 1)  # restarting: ready again only after a pod start
    assert model.sample(6 * S).ready_capacity_per_s == 0.0


def test_a_zone_back_before_eviction_returns_its_replicas() -> None:
    model, events = _service(replicas=4)
    events.at(0, lambda t: model.zone_down(t, 0.5, 30.0))
    events.run(until_ns=S)
    assert model.ready() == 2
    events.run()
    assert model.ready() == 4 and all(r.state == READY for r in model.replicas)


def test_scaling_up_waits_for_pods_and_scaling_down_drains_first() -> None:
    model, events = _service(replicas=1, max_replicas=4)
    robot = Robot()
    model.scale_to(0, 3)
    assert len(model.live()) == 3 and model.ready() == 1
    events.run(until_ns=64 * S)
    assert model.ready() == 1
    events.run(until_ns=65 * S)
    assert model.ready() == 3
    for token in range(6):
        _send(model, events, robot, 66 * S, token, name=f'robot{token}')
    events.at(66 * S + 1, lambda t: model.scale_to(t, 1))
    events.run()
    assert len(robot.ends) == 6 and all(end[1] == 'answer' for end in robot.ends.values())
    assert model.ready() == 1
    model.scale_to(70 * S, 9)
    assert len(model.live()) == 4  # max_replicas
    model.close(70 * S)
    assert model.gpu_s > 70 + 2 * (66 - 0)


def test_with_no_replica_routed_a_request_is_reset() -> None:
    model, events = _service(replicas=1, detect_s=0.0)
    robot = Robot()
    events.at(0, lambda t: model.zone_down(t, 1.0, 600.0))
    _send(model, events, robot, S, 0)
    events.run(until_ns=2 * S)
    assert robot.ends[0] == (S, 'connection', 0.0)


def test_the_model_needs_a_batch_time() -> None:
    with pytest.raises(ConfigError, match='batch time'):
        ServiceModel(ServiceSettings(), EventQueue().at, random.Random(0))
