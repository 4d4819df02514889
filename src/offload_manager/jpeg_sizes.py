"""What a JPEG of the frame weighs at each quality, and which quality a request went at."""

from __future__ import annotations

import functools
import math

import numpy as np

# JPEG bytes relative to quality 75, measured on 640x480 frames by benchmarks/bench_service.py
# (q50 13.7 %, q75 20.1 %, q95 39.1 % of raw); other qualities interpolate.
JPEG_SIZE = {50: 0.68, 75: 1.0, 95: 1.95}


@functools.lru_cache(maxsize=128)
def jpeg_factor(quality: int) -> float:
    """Bytes at ``quality`` relative to quality 75 (see :data:`JPEG_SIZE`)."""
    qs = sorted(JPEG_SIZE)
    return float(np.interp(quality, qs, [JPEG_SIZE[q] for q in qs]))


def sent_quality(nbytes: int, q75_bytes: float, quality: int, other: int | None) -> int:
    """Return the quality a request of ``nbytes`` went at: ``quality``, or ``other``.

    ``other`` where the request's size is nearer (by ratio) to its expected size than to
    ``quality``'s. Two qualities whose sizes differ by 1.5 times or more are told apart so
    while frames' JPEG sizes vary by less than about 20 % around the mean.

    Args:
        nbytes: The request's bytes.
        q75_bytes: The expected size of the frame's JPEG at quality 75.
        quality: The plan's quality.
        other: The other quality requests may have gone at (None: none).

    Returns:
        The quality taken.
    """
    if other is None or other == quality or nbytes <= 0 or q75_bytes <= 0:
        return quality
    ratio = nbytes / q75_bytes
    off_other = abs(math.log(ratio / jpeg_factor(other)))
    return other if off_other < abs(math.log(ratio / jpeg_factor(quality))) else quality
