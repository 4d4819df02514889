"""Failing fast when the cloud is down, and what each request tells about the link."""

from __future__ import annotations

from collections import deque
import enum

from adaptive_offload.uplink import UplinkEstimator
import numpy as np


class BreakerState(str, enum.Enum):
    """Circuit breaker states."""

    CLOSED = 'closed'
    OPEN = 'open'
    HALF_OPEN = 'half_open'


class CircuitBreaker:
    """Stops sending after consecutive failures; probes again after a cool-down.

    Closed: requests go. After ``threshold`` consecutive failures: open, and requests fail at
    once (the frame falls back to the edge without waiting out its deadline). After
    ``cooldown_ms``: half-open, one probe request goes; its success closes the breaker, its
    failure opens it again.

    Args:
        threshold: Consecutive failures that open the breaker.
        cooldown_ms: How long it stays open before a probe.
    """

    def __init__(self, threshold: int = 3, cooldown_ms: float = 1000.0) -> None:
        self._threshold = max(1, threshold)
        self._cooldown_ns = int(cooldown_ms * 1e6)
        self._failures = 0
        self._opened_ns = 0
        self._probing = False
        self.state = BreakerState.CLOSED

    def allow(self, now_ns: int) -> bool:
        """Whether a request may go at ``now_ns`` (a half-open breaker lets one through)."""
        if self.state is BreakerState.OPEN and now_ns - self._opened_ns >= self._cooldown_ns:
            self.state = BreakerState.HALF_OPEN
            self._probing = False
        if self.state is BreakerState.HALF_OPEN:
            if self._probing:
                return False
            self._probing = True
            return True
        return self.state is BreakerState.CLOSED

    def release(self) -> None:
        """Forget a request that was allowed but says nothing of the service's health.

        A half-open breaker lets the next request probe instead.
        """
        self._probing = False

    def record(self, ok: bool, now_ns: int) -> None:
        """Record the outcome of a request that was allowed."""
        if ok:
            self._failures = 0
            self.state = BreakerState.CLOSED
            return
        self._failures += 1
        if self.state is BreakerState.HALF_OPEN or self._failures >= self._threshold:
            self.state = BreakerState.OPEN
            self._opened_ns = now_ns


class LinkEstimator:
    """Round trip, server time and uplink bandwidth from recent requests.

    Medians, so that the odd slow request does not swing the estimates.

    Args:
        window: How many recent requests the estimates use.
    """

    def __init__(self, window: int = 20) -> None:
        self._rtt: deque[float] = deque(maxlen=window)
        self._server: deque[float] = deque(maxlen=window)
        self._uplink = UplinkEstimator(window)

    def add(self, rtt_ms: float, server_ms: float | None, bytes_sent: int) -> None:
        """Record one request; ``server_ms`` None when the server did not say."""
        self._rtt.append(rtt_ms)
        if server_ms is not None:
            self._server.append(server_ms)
            self._uplink.add(bytes_sent, rtt_ms - server_ms)

    @property
    def rtt_ms(self) -> float | None:
        """Median round trip."""
        return _median(self._rtt)

    @property
    def server_ms(self) -> float | None:
        """Median server-side time."""
        return _median(self._server)

    @property
    def uplink_mbps(self) -> float | None:
        """Median bytes sent over transfer time (round trip less server time), in Mbit/s."""
        return self._uplink.mbps


def _median(values: deque[float]) -> float | None:
    return float(np.median(values)) if values else None
