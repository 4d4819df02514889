"""The architecture and input size a detector answers in within a time budget here, measured.

A service on a CPU (a laptop's demo, a robot without a GPU) reads a 640x480 frame far slower
than a GPU server, and its answers would all come after the robot's deadline. Reading a smaller
image is faster and misses more of the small objects; measuring each size here, largest first,
finds the largest the machine serves within the budget. Given several architectures, most
preferred first, the first with a size that fits serves.
"""

from __future__ import annotations

from dataclasses import dataclass
import statistics
import time
from typing import Callable, Mapping, Protocol, Sequence, TypeVar

from adaptive_offload.errors import AdaptiveOffloadError
import numpy as np

CANDIDATES = (640, 480, 320)
RUNS = 3


class Resizable(Protocol):
    """A detector whose input size can be changed (:class:`RcnnDetector`)."""

    input_size: int

    def set_input_size(self, size: int) -> None:
        """Resize images so that their longest side is ``size``."""

    def detect(self, images: list[np.ndarray]) -> object:
        """Detect objects in a batch of images."""


D = TypeVar('D', bound=Resizable)


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


@dataclass(frozen=True)
class ArchitectureFit:
    """Which architecture serves, at which size, and what was measured of each one tried.

    Attributes:
        arch: The architecture chosen: the first whose size fits, else the fastest; empty
            when none loaded.
        fit: Its sizes measured (``fit.size`` 0 when none fits).
        tried: Every architecture tried, in order, with its measurements or why it did not
            load.
    """

    arch: str
    fit: SizeFit | None
    tried: tuple[tuple[str, SizeFit | str], ...]

    def describe(self, deadline_ms: float) -> str:
        """Return one line saying what serves and why, naming the architectures passed over."""
        others = '; '.join(
            f'{arch}: {_timings(how) if isinstance(how, SizeFit) else "did not load: " + how}'
            for arch, how in self.tried if arch != self.arch)
        if self.fit is None:
            return f'cloud service: no architecture loaded ({others})'
        if self.fit.size or len(self.tried) == 1:
            line = self.fit.describe(self.arch, deadline_ms)
            return f'{line}; passed over {others}' if others else line
        return (f'cloud service: no architecture answers within {self.fit.budget_ms:.0f} ms '
                f'here ({self.arch}: {_timings(self.fit)}; {others}); serving {self.arch}, '
                f'the fastest, at {min(self.fit.timings_ms)} px: its answers will miss the '
                f'{deadline_ms:.0f} ms deadline: serve it on a GPU (adaptive-offload serve) '
                'and pass --cloud URL')


def _timings(fit: SizeFit) -> str:
    return ', '.join(f'{size}: {ms:.0f} ms' for size, ms in fit.timings_ms.items())


def fit_architecture(loaders: Sequence[tuple[str, Callable[[], D]]], budget_ms: float,
                     frame: np.ndarray, sizes: Sequence[int] = CANDIDATES, runs: int = RUNS,
                     clock: Callable[[], int] = time.perf_counter_ns,
                     ) -> tuple[ArchitectureFit, D | None]:
    """Load and time each architecture in turn, until one has a size within the budget.

    Args:
        loaders: (architecture, load it) pairs, the most preferred (most accurate) first; a
            load may raise :class:`AdaptiveOffloadError` (weights missing or wrong), and that
            architecture is passed over.
        budget_ms: Longest time one frame may take.
        frame: A frame of the camera's size.
        sizes: Sizes to try of each.
        runs: Timed runs per size.
        clock: Nanosecond clock.

    Returns:
        What was chosen and measured, and the chosen detector at its size (the fastest, at its
        smallest size, when none fits; None when none loaded).
    """
    tried: list[tuple[str, SizeFit | str]] = []
    fastest: tuple[float, str, SizeFit, D] | None = None
    for arch, load in loaders:
        try:
            detector = load()
        except AdaptiveOffloadError as err:
            tried.append((arch, str(err)))
            continue
        fit = fit_input_size(detector, budget_ms, frame, sizes, runs, clock)
        tried.append((arch, fit))
        if fit.size:
            return ArchitectureFit(arch, fit, tuple(tried)), detector
        quickest = min(fit.timings_ms.values())
        if fastest is None or quickest < fastest[0]:
            fastest = (quickest, arch, fit, detector)
    if fastest is None:
        return ArchitectureFit('', None, tuple(tried)), None
    _, arch, fit, detector = fastest
    detector.set_input_size(min(fit.timings_ms, key=fit.timings_ms.__getitem__))
    return ArchitectureFit(arch, fit, tuple(tried)), detector
