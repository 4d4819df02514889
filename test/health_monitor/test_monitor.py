"""Health checks and the monitor, with an injected clock."""

from __future__ import annotations

import copy
import random

from adaptive_offload.datatypes import Decision, InferenceReport, Level, Route
from adaptive_offload.errors import ConfigError
from health_monitor.checks import CloudCheck, TopicRateCheck
from health_monitor.monitor import HealthConfig, HealthMonitor
import pytest

S = 1_000_000_000


def test_rate_check_levels() -> None:
    check = TopicRateCheck('/cam', min_rate_hz=10, stale_after_s=2, start_ns=0, window_s=1)
    assert check.run(S // 2).level is Level.OK  # grace period: no window yet, not stale
    for i in range(10):
        check.tick(i * S // 10)
    assert check.run(S).level is Level.OK
    for i in range(5):  # 5 Hz in the next second
        check.tick(S + i * S // 5)
    status = check.run(2 * S)
    assert status.level is Level.WARN and 'below' in status.message
    assert dict(status.values)['rate_hz'] == '5.00'
    assert check.run(5 * S).level is Level.STALE


def test_slow_by_design_topic_never_warns() -> None:
    check = TopicRateCheck('/map', min_rate_hz=0, stale_after_s=0, start_ns=0, window_s=1)
    check.tick(0)
    assert check.run(100 * S).level is Level.OK


def test_monitor_reports_level_changes_as_events() -> None:
    config = HealthConfig.from_params({'monitored_topics': ['/a'],
                                       'monitored_types': ['std_msgs/msg/String'],
                                       'min_rates_hz': [1.0], 'stale_after_s': 1.0})
    monitor = HealthMonitor(config, start_ns=0)
    statuses, events = monitor.run(S // 2)
    assert [(s.name, s.level) for s in statuses] == [
        ('adaptive_offload: /a rate', Level.OK), ('adaptive_offload: cloud', Level.OK),
        ('adaptive_offload: uplink bandwidth', Level.OK),
        ('adaptive_offload: offload goals', Level.OK)]
    assert events == []
    _, events = monitor.run(2 * S)
    assert [(e.level, e.previous) for e in events] == [(Level.STALE, Level.OK)]
    _, events = monitor.run(3 * S)
    assert events == []  # no change, no event
    monitor.message('/a', 3 * S)
    monitor.message('/elsewhere', 3 * S)  # not monitored: ignored
    _, events = monitor.run(3 * S + 1)
    assert [(e.level, e.previous) for e in events] == [(Level.OK, Level.STALE)]


def test_diagnostics_go_out_on_the_period_and_at_once_on_a_level_change() -> None:
    config = HealthConfig.from_params({'monitored_topics': ['/a'],
                                       'monitored_types': ['std_msgs/msg/String'],
                                       'min_rates_hz': [1.0], 'stale_after_s': 1.0,
                                       'publish_period_s': 5.0})
    monitor = HealthMonitor(config, start_ns=0)
    assert monitor.poll(0) is not None  # the first poll publishes
    assert monitor.poll(S // 2) is None  # nothing changed, period not over
    due = monitor.poll(2 * S)  # /a went STALE: published at once, 3 s before the period
    assert due is not None and [e.level for e in due[1]] == [Level.STALE]
    assert monitor.poll(3 * S) is None
    assert monitor.poll(7 * S) is not None  # the period


def test_health_config_lists_must_align() -> None:
    with pytest.raises(ConfigError, match='same length'):
        HealthConfig.from_params({'monitored_topics': ['/a', '/b']})


def _cloud(status: str, rtt: float = 50.0, breaker: str = 'closed') -> InferenceReport:
    return InferenceReport(source='cloud', status=status, inference_ms=rtt, breaker=breaker,
                           reason='' if status == 'ok' else 'connection: refused')


def test_cloud_check_errors_on_failures_and_warns_on_latency_anomalies() -> None:
    check = CloudCheck(fail_after=3)
    assert check.run(0).level is Level.OK and check.run(0).message == 'cloud not used'
    for rtt in (50, 52, 48, 51, 49, 50, 53, 47, 50, 51):
        check.report(_cloud('ok', rtt))
    assert check.run(0).level is Level.OK
    check.report(_cloud('ok', 58))  # within the spread: not an anomaly
    assert check.run(0).level is Level.OK
    check.report(_cloud('ok', 400))
    assert check.run(0).level is Level.WARN
    check.report(_cloud('skipped'))  # no request made: ignored
    check.report(_cloud('failed'))
    check.report(_cloud('failed'))
    assert check.run(0).level is not Level.ERROR
    check.report(_cloud('failed'))
    status = check.run(0)
    assert status.level is Level.ERROR and '3 in a row' in status.message
    assert dict(status.values)['consecutive_failures'] == '3'
    check.report(_cloud('failed', breaker='open'))
    check.report(_cloud('ok', 50, breaker='closed'))
    assert check.run(0).level is Level.OK
    check.report(_cloud('failed', breaker='open'))  # an open breaker is an ERROR at once
    assert check.run(0).level is Level.ERROR


def test_silence_counts_from_the_last_message_after_the_window_emptied() -> None:
    check = TopicRateCheck('/a', 0.0, 100.0, 0, window_s=5.0)
    check.tick(50 * S)
    assert dict(check.run(60 * S).values)['silent_s'] == '10.00'
    assert check.run(60 * S).message == '0.00 Hz'
    assert check.run(151 * S).message == 'no message for 101.0 s'


def _levels_until(check: TopicRateCheck, times: list[int]) -> list[Level]:
    probe = copy.deepcopy(check)  # run() drops the stamps that left the window
    return [probe.run(t).level for t in times]


@pytest.mark.parametrize('seed', range(20))
def test_rate_check_tells_when_time_alone_may_next_change_its_level(seed: int) -> None:
    rng = random.Random(seed)
    window_s, min_rate = rng.choice((1.0, 2.5)), rng.choice((0.0, 2.0, 7.0))
    stale_s = rng.choice((0.0, 1.5, 4.0))
    check = TopicRateCheck('/a', min_rate, stale_s, 0, window_s=window_s)
    stamps = sorted(rng.randrange(0, 6 * S) for _ in range(rng.randrange(0, 40)))
    for stamp in stamps:
        check.tick(stamp)
    now = max(stamps[-1] if stamps else 0, rng.randrange(0, 7 * S))
    level = check.run(now).level
    due = check.next_change_ns(now)
    # Every time at which the level could change (stamps leaving, the window filling, silence)
    # and the nanosecond either side.
    window, silent_from = int(window_s * S), stamps[-1] if stamps else 0
    edges = sorted(t + d for t in [s + window for s in stamps] +
                   [window, silent_from + int(stale_s * S)] for d in (-1, 0, 1))
    later = [t for t in edges if now < t and (due is None or t < due)]
    assert all(seen is level for seen in _levels_until(check, later))
    if due is not None:
        assert due > now


def test_rate_check_names_the_stamp_whose_leaving_makes_the_rate_too_low() -> None:
    check = TopicRateCheck('/a', min_rate_hz=4, stale_after_s=0, start_ns=0, window_s=1,
                           tolerance=0.0)
    for i in range(10):
        check.tick(i * S // 10)
    assert check.run(S).level is Level.OK
    # 10 in the window; below 4 Hz once 7 have left: the 7th stamp (0.6 s) leaves after 1.6 s
    assert check.next_change_ns(S) == 6 * S // 10 + S + 1
    assert check.run(6 * S // 10 + S).level is Level.OK
    assert check.run(6 * S // 10 + S + 1).level is Level.WARN
    assert check.next_change_ns(6 * S // 10 + S + 1) is None  # stays low until a message
    early = TopicRateCheck('/a', min_rate_hz=4, stale_after_s=0, start_ns=0, window_s=1)
    early.tick(S // 10)
    assert early.run(S // 2).level is Level.OK  # too few, but the window is not full yet
    assert early.next_change_ns(S // 2) == S
    assert early.run(S).level is Level.WARN


def test_monitor_is_next_due_on_its_period_or_a_check_change_and_cannot_tell_with_probes(
        ) -> None:
    config = HealthConfig.from_params({'monitored_topics': ['/a'],
                                       'monitored_types': ['std_msgs/msg/String'],
                                       'min_rates_hz': [0.0], 'stale_after_s': 3.0,
                                       'publish_period_s': 1.0})
    monitor = HealthMonitor(config, start_ns=0)
    assert monitor.next_due_ns(0) == 0  # never polled: at once
    monitor.poll(0)
    assert monitor.next_due_ns(0) == S
    monitor.poll(S)
    monitor.poll(2 * S)
    assert monitor.next_due_ns(2 * S) == 3 * S  # the period and /a going STALE after 3 s
    assert monitor.poll(3 * S + 1) is not None
    probed = HealthMonitor(HealthConfig.from_params({'probe_url': 'http://cloud'}), 0)
    probed.poll(0)
    assert probed.next_due_ns(0) is None


def test_a_decision_whose_bounds_gave_way_warns_until_one_meets_them() -> None:
    monitor = HealthMonitor(HealthConfig.from_params({}), start_ns=0)
    monitor.on_decision(Decision(seq=1, route=Route.EDGE, policy='predictive',
                                 reason='predictive: edge yolov8n@320 ...; gave way: '
                                        'accuracy floor', unmet='accuracy floor'))
    statuses, events = monitor.run(S)
    [goals] = [s for s in statuses if s.name == 'adaptive_offload: offload goals']
    assert goals.level is Level.WARN and goals.message == 'bounds given way: accuracy floor'
    assert ('reason', 'predictive: edge yolov8n@320 ...; gave way: accuracy floor') in \
        goals.values
    assert [(e.name, e.level) for e in events] == [('adaptive_offload: offload goals',
                                                    Level.WARN)]
    monitor.on_decision(Decision(seq=2, route=Route.HEDGED, policy='predictive'))
    _, events = monitor.run(2 * S)
    assert [(e.name, e.level, e.previous) for e in events] == [
        ('adaptive_offload: offload goals', Level.OK, Level.WARN)]
