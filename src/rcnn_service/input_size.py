"""The input size a detector answers in within a time budget on this machine, measured.

A service on a CPU (a laptop's demo, a robot without a GPU) reads a 640x480 frame far slower
than a GPU server, and its answers would all come after the robot's deadline. Reading a smaller
image is faster and misses more of the small objects; measuring each size here, largest first,
finds the largest the machine serves within the budget.
"""

from __future__ import annotations

from dataclasses import dataclass
import statistics
import time
from typing import Callable, Mapping, Protocol, Sequence

import numpy as np

CANDIDATES = (640, 480, 320)
RUNS = 3


class Resizable(Protocol):
    """A detector whose input size can be changed (:class:`RcnnDetector`)."""

    def set_input_size(self, size: int) -> None:
        """Resize images so that their longest side is ``size``."""

    def detect(self, images: list[np.ndarray]) -> object:
        """Detect objects in a batch of images."""


@dataclass(frozen=True)
class SizeFit:
    """What was measured and chosen.

    Attributes:
        size: The largest size within the budget; 0 when none is.
        timings_ms: Median time of one frame at each size measured.
        budget_ms: The budget.
    """

    size: int
    timings_ms: Mapping[int, float]
    budget_ms: float

    def describe(self, arch: str, deadline_ms: float) -> str:
        """Return one line saying what was chosen, or that nothing fits, and what to do."""
        measured = ', '.join(f'{size}: {ms:.0f} ms' for size, ms in self.timings_ms.items())
        if self.size:
            return (f'cloud service: {arch} reads frames at {self.size} px, '
                    f'{self.timings_ms[self.size]:.0f} ms a frame on this machine, within '
                    f'{self.budget_ms:.0f} ms of the {deadline_ms:.0f} ms deadline ({measured})')
        return (f'cloud service: no input size of {arch} answers within {self.budget_ms:.0f} ms '
                f'here ({measured}); its answers will miss the {deadline_ms:.0f} ms deadline: '
                'serve it on a GPU (adaptive-offload serve) and pass --cloud URL')


def fit_input_size(detector: Resizable, budget_ms: float, frame: np.ndarray,
                   sizes: Sequence[int] = CANDIDATES, runs: int = RUNS,
                   clock: Callable[[], int] = time.perf_counter_ns) -> SizeFit:
    """Measure ``detector`` on ``frame`` at each size, largest first, until one fits.

    Args:
        detector: The detector; it is left at the last size measured.
        budget_ms: Longest time one frame may take.
        frame: A frame of the camera's size (content matters little to an R-CNN's time).
        sizes: Sizes to try.
        runs: Timed runs per size, after one warm-up run; their median counts.
        clock: Nanosecond clock.

    Returns:
        The largest size within the budget (0 if none) and every time measured.
    """
    timings: dict[int, float] = {}
    for size in sorted(sizes, reverse=True):
        detector.set_input_size(size)
        detector.detect([frame])  # the first run at a new size allocates its buffers
        times = []
        for _ in range(runs):
            start = clock()
            detector.detect([frame])
            times.append((clock() - start) / 1e6)
        timings[size] = statistics.median(times)
        if timings[size] <= budget_ms:
            return SizeFit(size, timings, budget_ms)
    return SizeFit(0, timings, budget_ms)
