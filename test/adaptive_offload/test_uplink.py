"""The one uplink bandwidth estimator: medians of per-request rates, one threshold."""

from __future__ import annotations

import math
import random
import statistics

from adaptive_offload.datatypes import InferenceReport
from adaptive_offload.errors import ConfigError
from adaptive_offload.uplink import (MIN_TRANSFER_MS, SPREAD_WANTED, transfer_rate_mbps,
                                     UplinkEstimator)
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


def _noisy(rng: random.Random, base_ms: float, mbps: float, nbytes: int) -> float:
    """Return a non-server time: base and transfer, each with 10 % log-normal jitter."""
    return base_ms * math.exp(rng.gauss(0.0, 0.1)) + \
        nbytes * 8 / (mbps * 1e3) * math.exp(rng.gauss(0.0, 0.1))


def test_without_a_change_run_nothing_is_forgotten_or_flagged() -> None:
    bw = UplinkEstimator(window=15)
    for _ in range(15):
        bw.add(125_000, 10.0)
    for _ in range(5):
        bw.add(125_000, 200.0)
    assert bw.changed == 0 and bw.changes == 0 and bw.rising == 0
    assert bw.mbps == pytest.approx(100.0)  # 10 of 15 still at 100 Mbit/s


def test_a_change_point_drops_the_older_rates_and_says_which_way() -> None:
    bw = UplinkEstimator(window=15, change_run=3)
    rng = random.Random(1)
    for _ in range(15):
        bw.add(125_000, 10.0 * math.exp(rng.gauss(0.0, 0.05)))
    for i in range(3):  # 100 -> 5 Mbit/s
        bw.add(125_000, 200.0)
        assert bw.changed == (-1 if i == 2 else 0) and bw.rising == 0
    assert bw.changes == 1 and bw.mbps == pytest.approx(5.0)
    for i in range(3):  # and back
        bw.add(125_000, 10.0)
        assert bw.rising == (i + 1 if i < 2 else 0)
        assert bw.changed == (1 if i == 2 else 0)
    assert bw.changes == 2 and bw.mbps == pytest.approx(100.0)


def test_a_broken_run_is_no_change_point() -> None:
    bw = UplinkEstimator(window=15, change_run=3)
    for _ in range(15):
        bw.add(125_000, 10.0)
    bw.add(125_000, 5.0)
    bw.add(125_000, 5.0)
    assert bw.rising == 2
    bw.add(125_000, 10.0)
    assert bw.rising == 0 and bw.changes == 0
    runs = bw.run_starts
    bw.add(125_000, 5.0)  # a new suspicion, told from the last by its run
    assert bw.rising == 1 and bw.run_starts == runs + 1


def test_noisy_but_stationary_rates_make_no_change_point() -> None:
    bw = UplinkEstimator(window=15, change_run=3, fit_window=60)
    rng = random.Random(7)
    for _ in range(3000):
        bw.add(13_707, _noisy(rng, 30.0, 50.0, 13_707))
    assert bw.changes == 0


def test_bad_settings_are_refused() -> None:
    for kwargs in ({'window': 0}, {'change_run': 15}, {'change_factor': 1.0},
                   {'fit_window': -1}, {'change_run': -1}):
        with pytest.raises(ConfigError):
            UplinkEstimator(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize('mbps', [50.0, 5.0])
def test_the_fixed_part_of_a_request_is_not_counted_as_transfer(mbps: float) -> None:
    # 60 requests of 10-80 kB (JPEGs at q50..q95, split payloads) over a 30 ms base, each part
    # with 10 % jitter. At 50 Mbit/s a 10 kB transfer (1.6 ms) is within the base's jitter
    # (3 ms), so one run's fit can be off by more than 20 %: judged over 20 runs.
    estimates, bases = [], []
    for seed in range(20):
        bw = UplinkEstimator(window=15, change_run=3, fit_window=60)
        plain = UplinkEstimator(window=15)
        rng = random.Random(seed)
        for _ in range(60):
            nbytes = rng.randint(10_000, 80_000)
            ms = _noisy(rng, 30.0, mbps, nbytes)
            bw.add(nbytes, ms)
            plain.add(nbytes, ms)
        assert plain.mbps is not None and plain.mbps < 0.8 * mbps  # the round trip as transfer
        assert bw.mbps is not None
        estimates.append(bw.mbps)
        bases.append(bw.base_ms)
    assert statistics.median(estimates) == pytest.approx(mbps, rel=0.1)
    assert sum(abs(e / mbps - 1) <= 0.2 for e in estimates) >= 14  # ~85 % over 100 runs
    assert statistics.median(bases) == pytest.approx(30.0, rel=0.1)


def test_one_request_size_cannot_tell_base_from_rate() -> None:
    bw = UplinkEstimator(window=15, fit_window=60)
    for _ in range(60):
        bw.add(13_707, 32.2)
    assert bw.base_ms == 0.0 and bw.mbps == pytest.approx(13_707 * 8 / 32.2e3)


def test_a_fitted_base_is_kept_when_sizes_stop_varying() -> None:
    bw = UplinkEstimator(window=15, fit_window=20)
    for i in range(20):
        nbytes = 10_000 + 5_000 * (i % 8)
        bw.add(nbytes, 30.0 + nbytes * 8 / 50e3)
    assert bw.base_ms == pytest.approx(30.0)
    for _ in range(40):  # one size only, the link slower
        bw.add(13_707, 30.0 + 13_707 * 8 / 5e3)
    assert bw.base_ms == pytest.approx(30.0) and bw.mbps == pytest.approx(5.0)


def test_spread_counts_the_rarer_side_of_a_size_gap() -> None:
    assert not UplinkEstimator(window=15).needs_spread  # no fit: nothing to spread for
    bw = UplinkEstimator(window=15, change_run=3, fit_window=60)
    assert bw.spread == 0 and bw.needs_spread
    rng = random.Random(3)
    for _ in range(60):  # q50 JPEGs alone
        bw.add(13_707, _noisy(rng, 30.0, 50.0, 13_707))
    assert bw.spread == 0 and bw.needs_spread
    for i in range(SPREAD_WANTED):  # q95 ones among them
        bw.add(39_300, _noisy(rng, 30.0, 50.0, 39_300))
        assert bw.spread == i + 1 and bw.needs_spread == (i + 1 < SPREAD_WANTED)
    for _ in range(60 - SPREAD_WANTED):  # the q95 ones leave the fit window
        bw.add(13_707, _noisy(rng, 30.0, 50.0, 13_707))
    assert bw.spread == SPREAD_WANTED
    bw.add(13_707, 32.0)
    assert bw.spread == SPREAD_WANTED - 1 and bw.needs_spread


def test_requests_of_another_size_are_no_sign_of_a_change() -> None:
    # On one 50 Mbit/s link a q95 JPEG's rate (bytes over the whole non-server time) is 2.5
    # times a q50 one's: a run of them is compared with requests of its own size, not the q50s.
    bw = UplinkEstimator(window=15, change_run=3, fit_window=60)
    rng = random.Random(5)
    for _ in range(40):
        bw.add(13_707, _noisy(rng, 30.0, 50.0, 13_707))
    for _ in range(3):
        bw.add(39_300, _noisy(rng, 30.0, 50.0, 39_300))
        assert bw.rising == 0
    assert bw.changes == 0
    for _ in range(3):  # a real drop, to 2 Mbit/s, is still one
        bw.add(13_707, 30.0 + 13_707 * 8 / 2e3)
    assert bw.changes == 1 and bw.changed == -1
