"""Circuit breaker, retries within the deadline and link estimates, with an injected clock."""

from __future__ import annotations

from adaptive_offload.conversions import MessageTypes
from adaptive_offload.datatypes import Decision, Route
from cloud_bridge.bridge import CloudBridge
from cloud_bridge.resilience import BreakerState, CircuitBreaker, LinkEstimator
from helpers import ManualClock, ScriptedTransport, small_frame_message as _msg

MS = 1_000_000


def test_breaker_opens_fails_fast_and_probes_once() -> None:
    breaker = CircuitBreaker(threshold=2, cooldown_ms=100)
    assert breaker.allow(0)
    breaker.record(False, 0)
    assert breaker.allow(0) and breaker.state is BreakerState.CLOSED
    breaker.record(False, 10 * MS)
    assert breaker.state is BreakerState.OPEN and not breaker.allow(50 * MS)
    assert breaker.allow(110 * MS) and breaker.state is BreakerState.HALF_OPEN
    assert not breaker.allow(111 * MS)  # one probe at a time
    breaker.record(False, 120 * MS)  # the probe failed: open again for a full cool-down
    assert not breaker.allow(200 * MS) and breaker.allow(220 * MS)
    breaker.record(True, 230 * MS)
    assert breaker.state is BreakerState.CLOSED and breaker.allow(231 * MS)


def test_link_estimates_are_medians_robust_to_one_slow_request() -> None:
    link = LinkEstimator(window=5)
    for rtt in (20.0, 21.0, 500.0, 19.0, 20.0):
        link.add(rtt, 10.0, 125_000)  # 1 Mbit over the transfer time
    assert link.rtt_ms == 20.0 and link.server_ms == 10.0
    assert link.uplink_mbps == 100.0  # 1 Mbit / 10 ms
    assert LinkEstimator().uplink_mbps is None


def test_connection_failures_are_retried_within_the_deadline(types: MessageTypes) -> None:
    clock = ManualClock()
    transport = ScriptedTransport(clock, ['connection', 'ok'])
    bridge = CloudBridge(transport, clock=clock, max_retries=1)
    dets, report = bridge.process(_msg(types, 1), Decision(route=Route.CLOUD, deadline_ms=100))
    assert report.status == 'ok' and len(transport.timeouts) == 2
    assert transport.timeouts[0] > transport.timeouts[1]  # the retry gets only what is left
    assert (report.server_ms, report.queue_ms) == (4.0, 1.5) and report.rtt_ms == 10.0
    assert report.breaker == 'closed'
    # timeouts are not retried: the deadline is already spent
    transport.script = ['timeout']
    _, report = bridge.process(_msg(types, 2), Decision(route=Route.CLOUD, deadline_ms=100))
    assert report.status == 'failed' and report.reason.startswith('timeout')
    assert len(transport.timeouts) == 3


def test_no_retry_when_the_deadline_leaves_less_than_a_round_trip(types: MessageTypes) -> None:
    clock = ManualClock()
    transport = ScriptedTransport(clock, ['ok', 'connection'], cost_ms=40.0)
    bridge = CloudBridge(transport, clock=clock, max_retries=3)
    bridge.process(_msg(types, 1), Decision(route=Route.CLOUD, deadline_ms=500))  # rtt 40 ms
    _, report = bridge.process(_msg(types, 2), Decision(route=Route.CLOUD, deadline_ms=70))
    assert report.status == 'failed' and len(transport.timeouts) == 2  # 30 ms left < 40 ms


def test_open_breaker_fails_frames_without_a_request(types: MessageTypes) -> None:
    clock = ManualClock()
    transport = ScriptedTransport(clock, ['http_503', 'http_503'])
    bridge = CloudBridge(transport, clock=clock, max_retries=0,
                         breaker=CircuitBreaker(threshold=2, cooldown_ms=1000))
    decision = Decision(route=Route.CLOUD, deadline_ms=100)
    reasons = [bridge.process(_msg(types, s), decision)[1].reason.split(':')[0]
               for s in (1, 2, 3)]
    assert reasons == ['http_503', 'http_503', 'circuit_open']
    assert len(transport.timeouts) == 2
    clock.advance(1000)
    transport.script = ['ok']
    _, report = bridge.process(_msg(types, 4), decision)
    assert report.status == 'ok' and report.breaker == 'closed'


def test_an_undecodable_frame_leaves_the_breaker_probe_to_a_real_request(
        types: MessageTypes) -> None:
    clock = ManualClock()
    transport = ScriptedTransport(clock, ['http_503', 'ok'])
    breaker = CircuitBreaker(threshold=1, cooldown_ms=100)
    bridge = CloudBridge(transport, clock=clock, max_retries=0, breaker=breaker)
    decision = Decision(route=Route.CLOUD, deadline_ms=100)
    bridge.process(_msg(types, 1), decision)
    assert breaker.state is BreakerState.OPEN
    clock.advance(100)
    bad = _msg(types, 2)
    bad.encoding = '32FC1'
    _, report = bridge.process(bad, decision)  # fails before any request: no verdict
    assert report.reason.startswith('unsupported_encoding') and len(transport.timeouts) == 1
    assert breaker.state is not BreakerState.CLOSED  # a decode failure proves nothing
    _, report = bridge.process(_msg(types, 3), decision)  # the probe is still available
    assert report.status == 'ok' and breaker.state is BreakerState.CLOSED
