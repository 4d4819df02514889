"""The one uplink bandwidth estimator: medians of per-request rates, one threshold."""

from __future__ import annotations

from adaptive_offload.datatypes import InferenceReport
from adaptive_offload.uplink import MIN_TRANSFER_MS, transfer_rate_mbps, UplinkEstimator
import pytest


def test_bandwidth_is_robust_to_outliers_and_follows_a_drop() -> None:
    bw = UplinkEstimator(window=15)
    assert bw.mbps is None
    for i in range(15):
        bw.add(125_000, 10.0 if i != 7 else 500.0)  # 100 Mbit/s, one stalled transfer
    assert bw.mbps == pytest.approx(100.0)
    for _ in range(8):  # more than half the window at 5 Mbit/s
        bw.add(125_000, 200.0)
    assert bw.mbps == pytest.approx(5.0)
    assert bw.transfer_ms(125_000) == pytest.approx(200.0)


def test_unmeasurable_requests_are_skipped_with_one_threshold() -> None:
    assert transfer_rate_mbps(125_000, MIN_TRANSFER_MS) == pytest.approx(10_000.0)
    assert transfer_rate_mbps(125_000, MIN_TRANSFER_MS / 2) is None
    assert transfer_rate_mbps(0, 10.0) is None
    bw = UplinkEstimator(window=2)
    assert not bw.add(125_000, 0.05) and bw.mbps is None and not bw.full
    ok = InferenceReport(stamp_ns=1, frame_id='c', source='cloud', status='ok',
                         bytes_sent=125_000, inference_ms=30.0, server_ms=20.0)
    assert bw.add_report(ok) and bw.mbps == pytest.approx(100.0)
    assert not bw.add_report(InferenceReport(stamp_ns=2, frame_id='c', source='edge',
                                             status='ok', bytes_sent=1, inference_ms=9.0))
    assert not bw.add_report(InferenceReport(stamp_ns=3, frame_id='c', source='cloud',
                                             status='failed', bytes_sent=125_000,
                                             inference_ms=50.0))
    assert bw.add(125_000, 20.0) and bw.full and bw.mbps == pytest.approx(75.0)
