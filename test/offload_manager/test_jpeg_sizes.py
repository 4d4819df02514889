"""JPEG sizes by quality, and which quality a request of some size went at."""

from __future__ import annotations

from offload_manager.jpeg_sizes import jpeg_factor, sent_quality
import pytest


def test_sizes_interpolate_between_the_measured_qualities() -> None:
    assert jpeg_factor(75) == 1.0
    assert jpeg_factor(50) == pytest.approx(0.68)
    assert jpeg_factor(85) == pytest.approx((1.0 + 1.95) / 2)


def test_a_request_is_taken_at_the_quality_its_size_is_nearer() -> None:
    q75 = 20_000.0
    assert sent_quality(int(0.68 * q75 * 1.2), q75, 50, 95) == 50  # a busier frame
    assert sent_quality(int(1.95 * q75 * 0.8), q75, 50, 95) == 95  # a plainer one
    assert sent_quality(int(1.95 * q75), q75, 50, None) == 50  # nothing else was sent
    assert sent_quality(0, q75, 50, 95) == 50  # nothing went out
    assert sent_quality(30_000, 0.0, 95, 50) == 95  # no size known yet
