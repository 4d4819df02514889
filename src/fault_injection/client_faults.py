"""Fault injection on the client side: the bridge's transport misbehaves as a scenario says."""

from __future__ import annotations

from dataclasses import replace
import random
import time
from typing import Callable

from adaptive_offload.errors import CloudError
from adaptive_offload.inference_transport import CloudReply, InferenceTransport
from fault_injection.scenario import Scenario


class FaultInjectingTransport:
    """Wraps a transport and applies the scenario's faults in force at each request.

    cloud_outage: the connection is refused. latency: ``delay_ms`` +- ``jitter_ms`` before the
    request. bandwidth: the request body's transfer time at ``mbps`` is added. loss: with
    ``probability`` the request is lost and times out. corruption: with ``probability`` the
    reply is unusable. A delay longer than the request's timeout ends as a timeout after it.

    Args:
        inner: The real transport.
        scenario: The faults.
        clock: Monotonic nanosecond clock; scenario times count from :meth:`start`.
        sleep: Sleeps seconds (tests inject one that moves a manual clock).
        seed: Seed of the loss and corruption draws.
    """

    def __init__(self, inner: InferenceTransport, scenario: Scenario,
                 clock: Callable[[], int] = time.monotonic_ns,
                 sleep: Callable[[float], None] = time.sleep, seed: int = 0) -> None:
        self._inner = inner
        self._scenario = scenario
        self._clock = clock
        self._sleep = sleep
        self._rng = random.Random(seed)
        self._origin_ns = clock()

    def start(self, origin_ns: int) -> None:
        """Set the time scenario times count from (the start of the run)."""
        self._origin_ns = origin_ns

    def infer(self, image: bytes, timeout_s: float) -> CloudReply:
        """See :class:`InferenceTransport`; raises the injected failures as CloudError."""
        faults = {f.kind: f.params for f in
                  self._scenario.active((self._clock() - self._origin_ns) / 1e9)}
        if 'cloud_outage' in faults:
            raise CloudError('connection', 'injected cloud outage')
        delay_ms = 0.0
        if 'latency' in faults:
            jitter = faults['latency']['jitter_ms']
            delay_ms += max(0.0, faults['latency']['delay_ms'] +
                            self._rng.uniform(-jitter, jitter))
        if 'bandwidth' in faults:
            delay_ms += len(image) * 8 / (faults['bandwidth']['mbps'] * 1e3)
        lost = 'loss' in faults and self._rng.random() < faults['loss']['probability']
        if lost or delay_ms / 1e3 >= timeout_s:
            self._sleep(max(0.0, timeout_s))
            # The request went out (it was lost or is still on its way): the robot sent it.
            raise CloudError('timeout', 'injected loss' if lost else 'injected delay',
                             len(image))
        self._sleep(delay_ms / 1e3)
        reply = self._inner.infer(image, timeout_s - delay_ms / 1e3)
        if 'corruption' in faults and self._rng.random() < faults['corruption']['probability']:
            raise CloudError('bad_reply', 'injected corruption', reply.bytes_sent)
        return replace(reply, request_ms=reply.request_ms + delay_ms)

    def close(self) -> None:
        """Close the real transport."""
        self._inner.close()
