"""Several endpoints: spread by latency, fail over on refusals, hedge a slow request."""

from __future__ import annotations

from collections import Counter
import random
import time

from adaptive_offload.errors import CloudError, ConfigError
from adaptive_offload.inference_transport import CloudReply
from cloud_bridge.bridge_config import CloudConfig
from cloud_bridge.endpoints import HedgedEndpoints
import numpy as np
import pytest


class _Replica:
    """A transport that answers after ``sleep_s`` (else says ``latency_ms``) or raises."""

    def __init__(self, name: str, latency_ms: float = 10.0, sleep_s: float = 0.0,
                 error: CloudError | None = None) -> None:
        self.name, self.latency_ms, self.sleep_s, self.error = name, latency_ms, sleep_s, error
        self.calls = 0
        self.closed = False

    def infer(self, image: bytes, timeout_s: float) -> CloudReply:
        self.calls += 1
        start = time.perf_counter()
        latency_ms = self.latency_ms
        if self.sleep_s:  # a real wait: the round trip is what it took
            time.sleep(min(self.sleep_s, timeout_s))
            if self.sleep_s > timeout_s:
                raise CloudError('timeout', 'slow replica')
            latency_ms = (time.perf_counter() - start) * 1e3
        if self.error is not None:
            raise self.error
        return CloudReply(np.zeros((0, 4)), np.zeros(0), (self.name,), latency_ms, len(image))

    def close(self) -> None:
        self.closed = True


def _answers(endpoints: HedgedEndpoints, n: int, timeout_s: float = 5.0) -> Counter[str]:
    return Counter(endpoints.infer(b'jpeg', timeout_s).labels[0] for _ in range(n))


def test_every_endpoint_is_measured_then_a_slow_one_gets_little_of_the_load() -> None:
    fast, slow = _Replica('fast', 10.0), _Replica('slow', 100.0)
    endpoints = HedgedEndpoints([('a', slow), ('b', fast)], hedge_share=0.0,
                                rng=random.Random(1))
    assert list(_answers(endpoints, 2).elements()) == ['slow', 'fast']  # each tried once first
    counts = _answers(endpoints, 1010)
    # weights 1/10^2 and 1/100^2: the slow one gets about 1 in 101, enough to see it recover
    assert 985 <= counts['fast'] <= 1008 and counts['slow'] >= 2
    endpoints.close()
    assert fast.closed and slow.closed


def test_similar_replicas_share_the_load_instead_of_the_fleet_herding_on_one() -> None:
    endpoints = HedgedEndpoints([('a', _Replica('a', 10.0)), ('b', _Replica('b', 12.0))],
                                hedge_share=0.0, rng=random.Random(2))
    counts = _answers(endpoints, 1000)
    assert 520 <= counts['a'] <= 660 and counts['b'] >= 340  # 1/100 against 1/144


def test_a_refusal_fails_over_at_once_and_holds_that_endpoint_back() -> None:
    now = [100.0]
    busy = _Replica('busy', 1.0, error=CloudError('overloaded', 'queue_full', 10, 2.0))
    spare = _Replica('spare', 50.0)
    endpoints = HedgedEndpoints([('a', busy), ('b', spare)], clock=lambda: now[0],
                                rng=random.Random(0))
    assert endpoints.infer(b'jpeg', 1.0).labels == ('spare',)  # busy refused, spare answered
    assert busy.calls == 1 and spare.calls == 1
    _answers(endpoints, 10)
    assert busy.calls == 1  # held back for the 2 s it said
    now[0] += 2.5
    busy.error = None
    assert _answers(endpoints, 20)['busy'] >= 1  # measured again once the hold is over


def test_when_every_endpoint_refuses_the_robot_is_told_to_come_back_at_the_soonest() -> None:
    now = [0.0]
    endpoints = HedgedEndpoints(
        [('a', _Replica('a', error=CloudError('overloaded', 'q', 0, 3.0))),
         ('b', _Replica('b', error=CloudError('overloaded', 'q', 0, 1.5)))],
        clock=lambda: now[0])
    with pytest.raises(CloudError) as refused:
        endpoints.infer(b'jpeg', 1.0)
    assert refused.value.reason == 'overloaded'
    with pytest.raises(CloudError) as held:  # nothing is sent while both hold
        endpoints.infer(b'jpeg', 1.0)
    assert held.value.reason == 'overloaded' and held.value.retry_after_s == pytest.approx(1.5)


def _warm(slow_s: float, share: float) -> tuple[HedgedEndpoints, _Replica, _Replica]:
    """Two replicas measured (fast 10 ms, slow ``slow_s``); the next pick is the slow one."""
    fast = _Replica('fast', 10.0, sleep_s=0.01)
    slow = _Replica('slow', 10.0, sleep_s=0.01)
    endpoints = HedgedEndpoints([('a', slow), ('b', fast)], hedge_share=share,
                                rng=random.Random(0))
    _answers(endpoints, 12)  # both measured at 10 ms: the P95 an answer should take
    slow.sleep_s, slow.latency_ms = slow_s, slow_s * 1e3
    endpoints._rng = _Always(0)  # type: ignore[assignment]
    return endpoints, fast, slow


class _Always(random.Random):
    """Picks the endpoint at ``index`` of those ready, whatever the weights."""

    def __init__(self, index: int) -> None:
        super().__init__(0)
        self.index = index

    def choices(self, population, weights=None, **kwargs):  # type: ignore[no-untyped-def]
        return [population[min(self.index, len(population) - 1)]]


def test_a_request_the_slow_replica_holds_past_the_p95_is_hedged_to_another() -> None:
    endpoints, fast, slow = _warm(slow_s=0.5, share=1.0)
    hedged = endpoints.hedged  # the warm-up hedged the odd answer slower than its P95
    start = time.perf_counter()
    reply = endpoints.infer(b'jpeg', 2.0)
    elapsed = time.perf_counter() - start
    assert reply.labels == ('fast',) and endpoints.hedged == hedged + 1
    assert elapsed < 0.4  # the hedge answered; the slow replica would take 0.5 s
    endpoints.close()


def test_without_hedging_the_slow_replica_is_waited_for() -> None:
    endpoints, _, _ = _warm(slow_s=0.3, share=0.0)
    start = time.perf_counter()
    assert endpoints.infer(b'jpeg', 2.0).labels == ('slow',)
    assert time.perf_counter() - start >= 0.29 and endpoints.hedged == 0
    endpoints.close()


def test_hedges_stay_within_their_share_of_the_requests() -> None:
    endpoints, _, _ = _warm(slow_s=0.05, share=0.1)
    before = endpoints.hedged
    for _ in range(40):
        endpoints.infer(b'jpeg', 2.0)
    # every one of them is slow; the bucket allows a tenth of all requests, warm-up included
    assert 1 <= endpoints.hedged - before
    assert endpoints.hedged <= 0.1 * endpoints.requests + 1
    endpoints.close()


def test_the_bridge_parameter_lists_endpoints_separated_by_commas() -> None:
    one = CloudConfig.from_params({'url': 'http://127.0.0.1:1'})
    assert one.urls() == ['http://127.0.0.1:1']
    both = CloudConfig.from_params({'url': 'http://127.0.0.1:1, grpc://127.0.0.1:2',
                                    'hedge_share': 0.2})
    transport = both.make_transport()
    assert isinstance(transport, HedgedEndpoints)
    assert [e.url for e in transport.endpoints] == ['http://127.0.0.1:1', 'grpc://127.0.0.1:2']
    transport.close()
    with pytest.raises(ConfigError, match='twice'):
        CloudConfig.from_params({'url': 'http://127.0.0.1:1,http://127.0.0.1:1'})
    with pytest.raises(ConfigError, match='scheme'):
        CloudConfig.from_params({'url': 'http://127.0.0.1:1,ftp://x:2'})
    with pytest.raises(ConfigError):
        HedgedEndpoints([])


def test_against_the_real_service_a_request_held_by_a_slow_path_is_answered_by_the_hedge(
        ) -> None:
    from attack_kit import ServedProcess, TOKEN
    from cloud_bridge.transport import make_transport
    import cv2
    from fault_injection.fault_proxy import FaultProxy
    from fault_injection.scenario import Fault, Scenario

    jpeg = cv2.imencode('.jpg', np.full((240, 320, 3), 90, np.uint8))[1].tobytes()
    service = ServedProcess('builtin')
    slow = Scenario('slow', (Fault('latency', 0.0, 1e6, {'delay_ms': 3000.0,
                                                         'jitter_ms': 0.0}),))
    try:
        with FaultProxy(('127.0.0.1', service.rest), slow) as proxy:
            far = f'http://127.0.0.1:{proxy.address[1]}'
            endpoints = HedgedEndpoints(
                [(service.url, make_transport(service.url, 'rcnn', TOKEN)),
                 (far, make_transport(far, 'rcnn', TOKEN))], hedge_share=1.0,
                rng=_Always(0))
            endpoints.infer(jpeg, 10.0)  # the near path measured: what an answer takes
            near_requests = endpoints.endpoints[0].requests
            endpoints._rng = _Always(1)  # type: ignore[assignment]
            endpoints.endpoints[1].latencies_ms.clear()  # the far path looks unmeasured
            start = time.perf_counter()
            reply = endpoints.infer(jpeg, 10.0)  # to the far path first, then hedged
            elapsed = time.perf_counter() - start
            endpoints.close()
    finally:
        service.stop()
    assert elapsed < 2.0 and len(reply.labels) == len(reply.scores)  # the far path: 3 s more
    assert endpoints.hedged >= 1 and endpoints.endpoints[0].requests == near_requests + 1
    assert endpoints.endpoints[1].requests >= 1


def test_a_request_that_may_not_hedge_waits_instead_of_spinning() -> None:
    endpoints, _, _ = _warm(slow_s=0.3, share=0.1)
    endpoints._tokens = 0.0  # the bucket is empty: this request may not hedge
    calls = [0]

    def counting() -> float:
        calls[0] += 1
        return time.monotonic()

    endpoints._clock = counting  # type: ignore[method-assign]
    hedged = endpoints.hedged
    assert endpoints.infer(b'jpeg', 2.0).labels == ('slow',)
    # a loop that polled until the slow answer came would read the clock thousands of times
    assert endpoints.hedged == hedged and calls[0] < 50, calls[0]
    endpoints.close()
