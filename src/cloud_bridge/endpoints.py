"""Several service endpoints (replicas, regions) behind one transport, with delayed hedging.

The bridge's ``url`` may list endpoints separated by commas. Each request goes to an endpoint
drawn at random, weighted by the inverse square of its recent median latency, among those not
holding the robot back (an endpoint that refused for load is left alone for the time it said;
one that failed, for a second). Random, so that a fleet spreads over similar replicas instead
of herding on whichever looked fastest; inverse square, so that a replica ten times slower gets
about 1 % of the requests (enough to notice when it recovers). An endpoint is at least as slow
as its oldest request still under way, so one that stalls is avoided before it answers. An
endpoint not measured yet goes first, so every endpoint gets measured.

Hedging: when the request has not been answered by the fastest endpoint's recent 95th
percentile (what an answer should take), it is sent again to another endpoint and the first
answer wins. A token bucket caps the extra requests at ``hedge_share`` of all requests (a tenth
by default): sending every request to every replica cuts the tail too, at twice the load or
more. A refusal (``overloaded``) or a failed connection fails over to another endpoint at once,
while the deadline leaves time.
"""

from __future__ import annotations

from collections import deque
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
import random
import threading
import time
from typing import Callable, Sequence

from adaptive_offload.errors import CloudError, ConfigError
from adaptive_offload.inference_transport import CloudReply, InferenceTransport
import numpy as np

FAILURE_HOLD_S = 1.0
"""How long an endpoint whose request failed (not for load) is passed over."""
# One answer is enough to hedge by: the first request to a replica not measured yet (each robot
# tries every replica once) must not wait out a slow one unhedged.
_MIN_SAMPLES = 1


@dataclass
class Endpoint:
    """One service endpoint and what its recent requests showed.

    Attributes:
        url: Its URL.
        transport: The transport that reaches it.
        latencies_ms: Round trips of its recent answers.
        held_until: Monotonic seconds until which it is passed over.
        requests: Requests sent to it (hedges included).
        under_way: Send time (monotonic seconds) of each request not ended yet, by its id.
    """

    url: str
    transport: InferenceTransport
    latencies_ms: deque[float] = field(default_factory=lambda: deque(maxlen=50))
    held_until: float = 0.0
    requests: int = 0
    under_way: dict[int, float] = field(default_factory=dict)

    def latency_ms(self, now: float) -> float:
        """Median recent round trip, or longer: the age of its oldest request under way."""
        median = float(np.median(self.latencies_ms)) if self.latencies_ms else 0.0
        oldest = min(self.under_way.values(), default=now)
        return max(median, (now - oldest) * 1e3)

    def measured(self) -> bool:
        """Whether it has answered, or has a request under way (then its age says enough)."""
        return bool(self.latencies_ms or self.under_way)

    def p95_ms(self) -> float | None:
        """95th percentile of recent round trips; None with too few answers."""
        if len(self.latencies_ms) < _MIN_SAMPLES:
            return None
        return float(np.percentile(self.latencies_ms, 95))


class HedgedEndpoints:
    """An :class:`InferenceTransport` over several endpoints: picks, fails over and hedges.

    Args:
        endpoints: (url, transport) of each endpoint, at least one.
        hedge_share: Most extra (hedged) requests, as a share of all requests; 0: never hedge.
        clock: Monotonic seconds.
        rng: Draws the endpoint of each request.

    Raises:
        ConfigError: Without endpoints, or for a share outside [0, 1].
    """

    def __init__(self, endpoints: Sequence[tuple[str, InferenceTransport]],
                 hedge_share: float = 0.1,
                 clock: Callable[[], float] = time.monotonic,
                 rng: random.Random | None = None) -> None:
        if not endpoints:
            raise ConfigError('the cloud bridge needs at least one endpoint URL')
        if not 0.0 <= hedge_share <= 1.0:
            raise ConfigError(f'hedge_share must be in [0, 1], got {hedge_share}')
        self.endpoints = [Endpoint(url, transport) for url, transport in endpoints]
        self._share = hedge_share
        self._tokens = 1.0 if hedge_share else 0.0
        self._clock = clock
        self._rng = rng or random.Random()
        self._lock = threading.Lock()
        self.hedged = 0
        self.requests = 0
        self._pool = ThreadPoolExecutor(4 * len(self.endpoints), thread_name_prefix='endpoint')

    def infer(self, image: bytes, timeout_s: float) -> CloudReply:
        """See :class:`InferenceTransport`; the first answer of any endpoint tried wins.

        Raises:
            CloudError: The last failure when no endpoint answered; ``overloaded`` (with the
                shortest retry time) when every endpoint refused or is holding back.
        """
        deadline = self._clock() + timeout_s
        with self._lock:
            self.requests += 1
            self._tokens = min(1.0 + self._share, self._tokens + self._share)
        tried: set[int] = set()
        running: dict[Future[CloudReply], int] = {}
        last: CloudError | None = None
        sent_at = 0.0
        hedge_decided = False  # one hedge decision per request, sent or not (no token, none ready)
        while True:
            now = self._clock()
            if not running:
                index = self._pick(tried, now)
                if index is None or now >= deadline:
                    raise last or self._held_error(now)
                running[self._send(index, image, deadline)] = index
                tried.add(index)
                sent_at = now
            hedge_at = float('inf') if hedge_decided else \
                self._hedge_time(running, tried, sent_at)
            wait_s = max(0.0, min(deadline, hedge_at) - now)
            done, _ = wait(list(running), timeout=wait_s, return_when=FIRST_COMPLETED)
            for future in done:
                running.pop(future)
                try:
                    return future.result()
                except CloudError as err:  # the endpoint is already held back (_call)
                    last = err
            if not done and running and self._clock() >= hedge_at:
                hedge_decided = True
                index = self._pick(tried, self._clock())
                if index is not None and self._take_token():
                    running[self._send(index, image, deadline)] = index
                    tried.add(index)
                    with self._lock:
                        self.hedged += 1
            if not done and self._clock() >= deadline:
                raise CloudError('timeout', f'no endpoint answered in {timeout_s:.3f} s')

    def close(self) -> None:
        """See :class:`InferenceTransport`."""
        self._pool.shutdown(wait=False, cancel_futures=True)
        for endpoint in self.endpoints:
            endpoint.transport.close()

    def _pick(self, tried: set[int], now: float) -> int | None:
        with self._lock:
            ready = [i for i, e in enumerate(self.endpoints)
                     if i not in tried and e.held_until <= now]
            if not ready:
                return None
            unmeasured = [i for i in ready if not self.endpoints[i].measured()]
            if unmeasured:
                return unmeasured[0]
            weights = [max(self.endpoints[i].latency_ms(now), 1e-3) ** -2 for i in ready]
            return self._rng.choices(ready, weights)[0]

    def _send(self, index: int, image: bytes, deadline: float) -> Future[CloudReply]:
        endpoint = self.endpoints[index]
        with self._lock:
            endpoint.requests += 1
            key = endpoint.requests
            endpoint.under_way[key] = self._clock()
        return self._pool.submit(self._call, endpoint, key, image, deadline - self._clock())

    def _call(self, endpoint: Endpoint, key: int, image: bytes,
              timeout_s: float) -> CloudReply:
        """Send to one endpoint and record what came of it, before anyone sees the result.

        Recorded even after the hedge won: a slow endpoint's late answer is what tells the
        next requests that it is slow.
        """
        try:
            reply = endpoint.transport.infer(image, timeout_s)
        except CloudError as err:
            with self._lock:
                endpoint.under_way.pop(key, None)
                if err.reason != 'timeout':  # slow is not gone: its latencies say so
                    hold = err.retry_after_s if err.reason == 'overloaded' else FAILURE_HOLD_S
                    endpoint.held_until = max(endpoint.held_until, self._clock() + hold)
            raise
        except BaseException:
            with self._lock:
                endpoint.under_way.pop(key, None)
            raise
        with self._lock:
            endpoint.under_way.pop(key, None)
            endpoint.latencies_ms.append(reply.request_ms)
        return reply

    def _hedge_time(self, running: dict[Future[CloudReply], int], tried: set[int],
                    sent_at: float) -> float:
        """When to hedge the request under way: the fastest endpoint's P95 after it was sent."""
        if len(running) != 1 or not self._share or len(tried) >= len(self.endpoints):
            return float('inf')
        with self._lock:
            p95s = [p for p in (e.p95_ms() for e in self.endpoints) if p is not None]
        return sent_at + min(p95s) / 1e3 if p95s else float('inf')

    def _take_token(self) -> bool:
        with self._lock:
            if self._tokens < 1.0:
                return False
            self._tokens -= 1.0
            return True

    def _held_error(self, now: float) -> CloudError:
        with self._lock:
            wait_s = min(e.held_until for e in self.endpoints) - now
        return CloudError('overloaded', 'every endpoint refused or failed recently', 0,
                          max(0.0, wait_s))
