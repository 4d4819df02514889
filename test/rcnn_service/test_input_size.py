"""Choosing the architecture and input size that answer within a budget: measured, in order."""

from __future__ import annotations

from adaptive_offload.errors import BackendError
import numpy as np
from rcnn_service.input_size import fit_architecture, fit_input_size

FRAME = np.zeros((48, 64, 3), np.uint8)


class TimedDetector:
    """Takes a given time per frame at each size, on a clock the test owns."""

    def __init__(self, ms_at: dict[int, float], shared: list[int] | None = None) -> None:
        self.ms_at = ms_at
        self.now = shared if shared is not None else [0]  # detectors may share one clock
        self.input_size = 0
        self.calls: list[int] = []

    def set_input_size(self, size: int) -> None:
        self.input_size = size

    def detect(self, images: list[np.ndarray]) -> object:
        self.calls.append(self.input_size)
        self.now[0] += int(self.ms_at[self.input_size] * 1e6)
        return []

    def clock(self) -> int:
        return self.now[0]


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


def test_the_first_architecture_with_a_size_in_the_budget_serves_and_the_others_are_named(
) -> None:
    now = [0]
    big = TimedDetector({640: 900.0, 480: 600.0, 320: 400.0}, now)
    small = TimedDetector({640: 180.0, 480: 120.0, 320: 70.0}, now)
    never = TimedDetector({640: 1.0}, now)

    def broken() -> TimedDetector:
        raise BackendError('no weights at /w/x.pth')

    chosen, detector = fit_architecture(
        [('broken', broken), ('big', lambda: big), ('small', lambda: small),
         ('never', lambda: never)], 150.0, FRAME, clock=big.clock)
    assert detector is small and small.input_size == 480
    assert chosen.arch == 'small' and chosen.fit is not None and chosen.fit.size == 480
    assert never.calls == []  # not loaded, nor timed, once one fits
    line = chosen.describe(250.0)
    assert line.startswith('cloud service: small reads frames at 480 px')
    assert 'passed over broken: did not load: no weights at /w/x.pth; big: 640: 900 ms' in line


def test_when_no_architecture_fits_the_fastest_serves_at_its_fastest_size_and_it_says_so(
) -> None:
    now = [0]
    slow = TimedDetector({640: 900.0, 480: 600.0, 320: 400.0}, now)
    slower = TimedDetector({640: 2000.0, 480: 1500.0, 320: 1000.0}, now)
    chosen, detector = fit_architecture([('slower', lambda: slower), ('slow', lambda: slow)],
                                        150.0, FRAME, clock=slow.clock)
    assert detector is slow and slow.input_size == 320 and chosen.arch == 'slow'
    line = chosen.describe(250.0)
    assert 'no architecture answers within 150 ms here' in line
    assert 'serving slow, the fastest, at 320 px' in line and '--cloud URL' in line


def test_when_none_loads_there_is_no_detector_and_every_reason_is_kept() -> None:
    def broken() -> TimedDetector:
        raise BackendError('bad checkpoint')

    chosen, detector = fit_architecture([('a', broken), ('b', broken)], 150.0, FRAME)
    assert detector is None and chosen.arch == '' and chosen.fit is None
    assert chosen.tried == (('a', 'bad checkpoint'), ('b', 'bad checkpoint'))
