"""Windows, lags and errors of the edge accuracy estimate against the measured mAP."""

from __future__ import annotations

from typing import Callable

from adaptive_offload.datatypes import Detection, DetectionSet, FrameRecord
from adaptive_offload.errors import ConfigError
from offload_runtime.accuracy_tracking import (change_lags, detect_changes, track, TrackFrame,
                                               TrackingCollector, TrackingSettings, windows)
import pytest

BOX = Detection(10, 10, 50, 50, 1.0, 'box')
HIT = (Detection(10, 10, 50, 50, 0.9, 'box'),)
FPS = 10


def _frames(seconds: float, edge: Callable[[float], bool | None],
            estimate: Callable[[float], float | None],
            samples: Callable[[float], int] = lambda t: 0) -> list[TrackFrame]:
    """One true box a frame; the edge finds it (True), misses it (False) or did not run (None)."""
    out = []
    for i in range(int(seconds * FPS)):
        t = i / FPS
        found = edge(t)
        out.append(TrackFrame(t, (BOX,), None if found is None else (HIT if found else ()),
                              estimate(t), samples(t)))
    return out


def _edge_good_until(change_s: float) -> Callable[[float], bool]:
    return lambda t: t < change_s


def test_windows_measure_the_edge_average_the_estimate_and_count_samples() -> None:
    frames = _frames(20, lambda t: None if t >= 17.5 else t < 10, lambda t: 50.0,
                     lambda t: min(int(t * FPS) + 1, 100))
    found = windows(frames, TrackingSettings(window_s=10, step_s=5))
    assert [(w.start_s, w.end_s) for w in found] == [(0, 10), (5, 15), (10, 20)]
    assert [w.frames for w in found] == [100, 100, 100]
    assert [w.edge_frames for w in found] == [100, 100, 75]
    # Half the boxes found at precision 1: 51 of COCO's 101 recall points.
    assert [w.measured for w in found] == pytest.approx([100.0, 50.5, 0.0], abs=0.01)
    assert [w.estimate for w in found] == [50.0, 50.0, 50.0]
    assert [w.samples for w in found] == [100, 50, 0]


def test_a_ramp_after_the_change_gives_its_half_and_90_percent_lags() -> None:
    # The estimate leaves 80 at the change (30 s) and reaches 30 ten seconds later.
    frames = _frames(60, _edge_good_until(30),
                     lambda t: 80.0 - 5.0 * min(max(t - 30.0, 0.0), 10.0))
    [lag] = change_lags(frames, [(30.0, 'easy -> hard')])
    assert lag.follows and lag.note == '' and not lag.still_moving
    assert lag.share == pytest.approx(0.5)
    assert (lag.own_lag50_s, lag.own_lag90_s) == (lag.lag50_s, lag.lag90_s)
    assert (lag.estimate_before, lag.estimate_after) == (80.0, 30.0)
    assert (lag.measured_before, lag.measured_after) == pytest.approx((100.0, 0.0))
    assert lag.lag50_s == pytest.approx(5.0, abs=0.11)
    assert lag.lag90_s == pytest.approx(9.0, abs=0.11)


def test_a_step_at_a_known_delay_gives_that_lag_at_each_change() -> None:
    frames = _frames(90, lambda t: not 30 <= t < 60,
                     lambda t: 30.0 if 33 <= t < 64 else 70.0)
    lags = change_lags(frames, [(30.0, 'easy -> hard'), (60.0, 'hard -> easy')])
    assert [(c.lag50_s, c.lag90_s) for c in lags] == [
        pytest.approx((3.0, 3.0)), pytest.approx((4.0, 4.0))]
    assert all(c.follows for c in lags)


def test_an_estimate_that_never_moves_or_moves_the_wrong_way_has_no_lag() -> None:
    still = _frames(60, _edge_good_until(30), lambda t: 45.7)
    [lag] = change_lags(still, [(30.0, 'easy -> hard')])
    assert not lag.follows and lag.lag50_s is None and lag.lag90_s is None
    assert lag.note.startswith('never: estimate moved +0.0')
    wrong = _frames(60, _edge_good_until(30), lambda t: 40.0 if t < 30 else 60.0)
    [lag] = change_lags(wrong, [(30.0, 'easy -> hard')])
    assert not lag.follows and lag.lag50_s is None and lag.own_lag50_s is None
    assert lag.share == pytest.approx(-0.2)
    # Moving the right way by less than min_share of the measured move is not following;
    # how fast it made its small move (2 s late) is still told apart.
    timid = _frames(60, _edge_good_until(30), lambda t: 50.0 if t < 32 else 45.0)
    [lag] = change_lags(timid, [(30.0, 'x')], TrackingSettings(min_share=0.2))
    assert not lag.follows and lag.note == 'never: estimate moved -5.0 for a measured -100.0'
    assert lag.lag50_s is None and lag.share == pytest.approx(0.05)
    assert (lag.own_lag50_s, lag.own_lag90_s) == (pytest.approx(2.0), pytest.approx(2.0))


def test_an_estimate_still_moving_at_the_next_change_is_flagged() -> None:
    frames = _frames(60, _edge_good_until(30), lambda t: 80.0 - 1.5 * max(t - 30.0, 0.0))
    [lag] = change_lags(frames, [(30.0, 'easy -> hard')])
    assert lag.follows and lag.still_moving
    # Half-way to where it got by the end (42.5 over 50-60 s), not to where it would settle.
    assert lag.estimate_after == pytest.approx(42.5, abs=0.1)
    assert lag.lag50_s == pytest.approx(12.5, abs=0.11)


def test_no_measured_change_and_missing_data_give_no_lag() -> None:
    flat = _frames(60, lambda t: True, lambda t: 80.0 if t < 30 else 30.0)
    [lag] = change_lags(flat, [(30.0, 'easy -> hard')])
    assert not lag.follows and lag.note.startswith('measured mAP moved +0.0')
    blind = _frames(60, lambda t: None if t < 30 else False, lambda t: 50.0)
    [lag] = change_lags(blind, [(30.0, 'easy -> hard')])
    assert lag.note == 'no data on one side' and lag.measured_before is None


def test_empty_input_and_empty_windows() -> None:
    assert windows([]) == [] and detect_changes([]) == []
    empty = track([], None)
    assert empty.windows == [] and empty.changes == [] and empty.mae is None
    # A gap in the frames (nothing from 10 to 20 s) leaves a window with nothing in it.
    gap = [f for f in _frames(30, lambda t: True, lambda t: 50.0) if not 10 <= f.t_s < 20]
    found = windows(gap, TrackingSettings(window_s=10, step_s=10))
    assert [(w.frames, w.measured, w.estimate, w.samples) for w in found][1] == \
        (0, None, None, 0)
    no_estimate = track(_frames(20, lambda t: True, lambda t: None), None)
    assert no_estimate.mae is None and no_estimate.windows[0].estimate is None


def test_changes_are_found_in_the_measured_windows_without_a_timeline() -> None:
    frames = _frames(90, lambda t: not 30 <= t < 60, lambda t: 50.0)
    assert detect_changes(frames) == [30.0, 60.0]
    found = track(frames, None, TrackingSettings(window_s=10, step_s=10))
    assert found.changes_from == 'detected'
    assert [(c.t_s, c.label, c.follows) for c in found.changes] == [
        (30.0, 'detected', False), (60.0, 'detected', False)]
    # Windows 100, 100, 100, 0, 0, 0, 100, 100, 100 against a constant 50.
    assert found.mae == pytest.approx(50.0) and found.bias == pytest.approx(-50.0 / 3)
    timeline = track(frames, [(90.0, 'easy -> base'), (30.0, 'easy -> hard')])
    assert timeline.changes_from == 'timeline'
    assert [c.t_s for c in timeline.changes] == [30.0]  # none past the last frame
    assert track(_frames(60, lambda t: True, lambda t: 50.0), None).changes == []


@pytest.mark.parametrize('values', [{'window_s': 0}, {'step_s': -1}, {'min_share': 2}])
def test_settings_that_give_no_windows_are_refused(values: dict) -> None:
    with pytest.raises(ConfigError):
        TrackingSettings(**values)


def test_the_collector_keeps_the_edges_detections_where_there_is_truth() -> None:
    t0 = 5_000_000_000
    truth = {(t0, 'cam'): (BOX,), (t0 + 100_000_000, 'cam'): (BOX,)}
    collector = TrackingCollector(truth, 'edge')
    collector.add_detections(DetectionSet(t0, 'cam', 'edge', HIT))
    collector.add_detections(DetectionSet(t0, 'cam', 'cloud', ()))  # won, but not the edge
    collector.add_detections(DetectionSet(t0 + 1, 'cam', 'edge', HIT))  # no truth: not kept
    collector.add_record(FrameRecord(stamp_ns=t0, frame_id='cam', result_source='cloud',
                                     edge_map_estimate=42.0, agreement_samples=3))
    first, second = collector.frames()
    assert (first.t_s, first.edge, first.estimate, first.samples) == (0.0, HIT, 42.0, 3)
    assert (second.t_s, second.edge, second.estimate) == (0.1, None, None)
    assert len(collector.frames()) == 2
