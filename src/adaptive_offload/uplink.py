"""Uplink bandwidth from the cloud requests, estimated one way for every role.

The bridge, the manager and the health monitor share this estimator and its threshold.

Each request gives one rate, its body's bytes over its transfer time (round trip less the time
the server says it spent). The estimate is the median of the last ``window`` rates, so that a
few slow transfers do not swing it but a lasting drop moves it within half a window.
"""

from __future__ import annotations

from collections import deque
import statistics

from adaptive_offload.datatypes import InferenceReport

# Shorter transfers are not measurable: clock resolution and the server's own rounding of its
# time (microseconds) would make up most of them.
MIN_TRANSFER_MS = 0.1


def transfer_rate_mbps(bytes_sent: int, transfer_ms: float) -> float | None:
    """Return one request's rate in Mbit/s, or None when it is not measurable."""
    if bytes_sent <= 0 or transfer_ms < MIN_TRANSFER_MS:
        return None
    return bytes_sent * 8 / (transfer_ms * 1e3)


class UplinkEstimator:
    """Median uplink rate of the last ``window`` measurable requests.

    Args:
        window: Requests kept.
    """

    def __init__(self, window: int = 15) -> None:
        self._rates: deque[float] = deque(maxlen=window)
        self._median: float | None = None

    def add(self, bytes_sent: int, transfer_ms: float) -> bool:
        """Record one request; False when it was not measurable and was skipped."""
        rate = transfer_rate_mbps(bytes_sent, transfer_ms)
        if rate is None:
            return False
        self._rates.append(rate)
        self._median = statistics.median(self._rates)
        return True

    def add_report(self, report: InferenceReport) -> bool:
        """Record a cloud report's request; only answered ones count (False otherwise)."""
        if report.source != 'cloud' or report.status != 'ok':
            return False
        return self.add(report.bytes_sent, report.inference_ms - report.server_ms)

    @property
    def mbps(self) -> float | None:
        """The estimate, or None before any measurable request."""
        return self._median

    @property
    def full(self) -> bool:
        """Whether the window holds as many requests as it keeps."""
        return len(self._rates) == self._rates.maxlen

    def transfer_ms(self, nbytes: int) -> float | None:
        """Predicted time to send ``nbytes`` at the estimated bandwidth."""
        mbps = self.mbps
        return nbytes * 8 / (mbps * 1e3) if mbps else None
