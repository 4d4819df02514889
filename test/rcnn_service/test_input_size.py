"""Choosing the input size a detector answers in within a budget: measured, largest first."""

from __future__ import annotations

import numpy as np
from rcnn_service.input_size import fit_input_size

FRAME = np.zeros((48, 64, 3), np.uint8)


class TimedDetector:
    """Takes a given time per frame at each size, on a clock the test owns."""

    def __init__(self, ms_at: dict[int, float]) -> None:
        self.ms_at = ms_at
        self.now_ns = 0
        self.size = 0
        self.calls: list[int] = []

    def set_input_size(self, size: int) -> None:
        self.size = size

    def detect(self, images: list[np.ndarray]) -> object:
        self.calls.append(self.size)
        self.now_ns += int(self.ms_at[self.size] * 1e6)
        return []

    def clock(self) -> int:
        return self.now_ns


def test_the_largest_size_within_the_budget_is_chosen_and_smaller_ones_are_not_timed() -> None:
    detector = TimedDetector({640: 180.0, 480: 120.0, 320: 70.0})
    fit = fit_input_size(detector, 150.0, FRAME, runs=3, clock=detector.clock)
    assert fit.size == 480 and fit.timings_ms == {640: 180.0, 480: 120.0}
    assert detector.calls == [640] * 4 + [480] * 4  # one warm-up, three timed, per size
    line = fit.describe('net', 250.0)
    assert line.startswith('cloud service: net reads frames at 480 px, 120 ms a frame')
    assert '(640: 180 ms, 480: 120 ms)' in line


def test_when_no_size_fits_it_says_so_and_what_to_do() -> None:
    detector = TimedDetector({640: 900.0, 480: 600.0, 320: 400.0})
    fit = fit_input_size(detector, 150.0, FRAME, clock=detector.clock)
    assert fit.size == 0 and list(fit.timings_ms) == [640, 480, 320]
    line = fit.describe('net', 250.0)
    assert 'no input size of net answers within 150 ms' in line
    assert 'will miss the 250 ms deadline' in line and '--cloud URL' in line
