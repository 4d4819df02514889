"""How the manager's online estimate of the edge model's accuracy follows the measured one.

The manager estimates the edge model's mAP from a prior corrected by edge/cloud agreement
(:mod:`offload_manager.accuracy`) and writes it on every frame record
(``edge_map_estimate``, with the ``agreement_samples`` taken so far). A replay with ground
truth also knows what the edge actually achieved: its own detections of every frame it ran,
whichever result was published. Over sliding windows of the bag's time (header stamps), this
module sets the two side by side: the measured edge mAP@[.5:.95] (the replay's COCO scorer,
faster-coco-eval), the mean estimate, and how many agreement samples came in.

At each change of scene difficulty (the bag's timeline, or steps found in the measured
windows) it measures the lag: seconds from the change until the per-frame estimate has moved
half-way (and 90 %) from its level over the window before the change to its level over the
window before the next change (or the end). An estimate that does not move with the measured
mAP (the wrong way, or less than ``min_share`` of the measured move) has no lag: it never
followed, and the figures say so; they still give the share of the measured move it made and
how fast it made that move (``own_lag50_s``), so how far and how fast are told apart.
"""

from __future__ import annotations

import bisect
from dataclasses import asdict, dataclass, field
import itertools
import statistics
from typing import Any, Sequence

from adaptive_offload.datatypes import Detection, DetectionSet, FrameRecord
from adaptive_offload.errors import ConfigError
from offload_runtime.ground_truth import MapScorer, Truth


@dataclass(frozen=True)
class TrackFrame:
    """One frame with ground truth, as tracking needs it.

    Attributes:
        t_s: Seconds since the first frame of the bag (header stamps).
        truth: True boxes.
        edge: The edge model's own detections; None when the edge did not answer the frame.
        estimate: The manager's estimate of the edge's mAP (0-100) when the frame ended;
            None when no estimate was kept (or the frame has no record).
        samples: Agreement samples the manager had taken when the frame ended.
    """

    t_s: float
    truth: tuple[Detection, ...]
    edge: tuple[Detection, ...] | None
    estimate: float | None
    samples: int = 0


@dataclass(frozen=True)
class Window:
    """Measured and estimated edge accuracy over ``[start_s, end_s)``.

    Attributes:
        start_s: Window start (seconds since the first frame).
        end_s: Window end.
        frames: Frames with ground truth in it.
        edge_frames: Those the edge answered (the measured mAP is theirs).
        measured: Edge mAP@[.5:.95] (0-100) on those; None without any (or no true box).
        estimate: Mean estimate over the frames; None without any.
        samples: Agreement samples taken in the window.
    """

    start_s: float
    end_s: float
    frames: int
    edge_frames: int
    measured: float | None
    estimate: float | None
    samples: int


@dataclass(frozen=True)
class ChangeLag:
    """How the estimate followed one change of difficulty.

    Attributes:
        t_s: When the change came.
        label: What changed (``easy -> hard``; ``detected`` for a step found in the windows).
        measured_before: Measured mAP over the window before the change.
        measured_after: Measured mAP over the window before the next change (or the end).
        estimate_before: Mean estimate over the window before the change.
        estimate_after: Mean estimate over the window before the next change (or the end).
        follows: Whether the estimate moved the way the measured mAP did, by at least
            ``min_share`` of its move.
        lag50_s: Seconds until the estimate had moved half-way; None when it does not follow.
        lag90_s: The same for 90 %.
        still_moving: Whether the estimate was still moving over its ``after`` window (by more
            than a tenth of its move between halves), so its ``after`` level is not a settled
            one and the lags measure how far it got, not where it would settle.
        note: Why there is no lag, when there is none.
        share: The estimate's move as a share of the measured move (None without both).
        own_lag50_s: Seconds until the estimate had made half of its own move, also when that
            move is too small to follow the measured one: how fast, apart from how far. None
            when it did not move the measured way at all.
        own_lag90_s: The same for 90 %.
    """

    t_s: float
    label: str
    measured_before: float | None
    measured_after: float | None
    estimate_before: float | None
    estimate_after: float | None
    follows: bool
    lag50_s: float | None
    lag90_s: float | None
    still_moving: bool = False
    note: str = ''
    share: float | None = None
    own_lag50_s: float | None = None
    own_lag90_s: float | None = None


@dataclass(frozen=True)
class TrackingSettings:
    """How tracking is measured.

    Attributes:
        window_s: Window length, seconds.
        step_s: Step between window starts, seconds.
        min_change: Smallest measured move (mAP points) that counts as a change (detection,
            and the lag of a change from the timeline).
        min_share: Smallest share of the measured move the estimate must make to follow it.
    """

    window_s: float = 10.0
    step_s: float = 2.0
    min_change: float = 10.0
    min_share: float = 0.2

    def __post_init__(self) -> None:
        """Refuse settings that give no windows.

        Raises:
            ConfigError: For a window or step that is not positive, or a threshold out of
                range.
        """
        if not (self.window_s > 0 and self.step_s > 0):
            raise ConfigError('the tracking window and step must be > 0 s')
        if self.min_change < 0 or not 0 <= self.min_share <= 1:
            raise ConfigError('min_change must be >= 0 and min_share within 0..1')


@dataclass(frozen=True)
class Tracking:
    """The estimate against the measured edge mAP over one run.

    Attributes:
        settings: How it was measured.
        windows: Every window.
        changes: Every change of difficulty, with its lag.
        changes_from: ``timeline`` (the bag's) or ``detected`` (steps in the windows).
        mae: Mean absolute difference estimate - measured over the windows that have both.
        bias: Mean difference estimate - measured over them.
    """

    settings: TrackingSettings
    windows: list[Window] = field(default_factory=list)
    changes: list[ChangeLag] = field(default_factory=list)
    changes_from: str = 'timeline'
    mae: float | None = None
    bias: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """Return the figures as JSON-ready values."""
        return asdict(self)


class _Spans:
    """Measured mAP and mean estimate over intervals of the frames, each computed once."""

    def __init__(self, frames: Sequence[TrackFrame]) -> None:
        self._frames = sorted(frames, key=lambda f: f.t_s)
        self._times = [f.t_s for f in self._frames]
        self._most = list(itertools.accumulate((f.samples for f in self._frames), max))
        self._measured: dict[tuple[float, float], float | None] = {}

    def within(self, start: float, end: float) -> list[TrackFrame]:
        return self._frames[bisect.bisect_left(self._times, start):
                            bisect.bisect_left(self._times, end)]

    def measured(self, start: float, end: float) -> float | None:
        if (start, end) not in self._measured:
            scorer = MapScorer()
            for f in self.within(start, end):
                if f.edge is not None:
                    scorer.add(f.truth, f.edge)
            found = scorer.mean_ap().get('all') if len(scorer) else None
            self._measured[(start, end)] = None if found is None else 100.0 * found
        return self._measured[(start, end)]

    def estimate(self, start: float, end: float) -> float | None:
        values = [f.estimate for f in self.within(start, end) if f.estimate is not None]
        return statistics.fmean(values) if values else None

    def samples_before(self, t_s: float) -> int:
        """Return the most agreement samples any frame before ``t_s`` had seen."""
        i = bisect.bisect_left(self._times, t_s)
        return self._most[i - 1] if i else 0

    def end_s(self) -> float:
        """Return where the frames end: the last one plus a frame period."""
        gaps = [b - a for a, b in zip(self._times, self._times[1:]) if b > a]
        return self._times[-1] + (statistics.median(gaps) if gaps else 0.0) \
            if self._times else 0.0


def _starts(end_s: float, settings: TrackingSettings) -> list[float]:
    """Window starts: every step while a whole window fits before ``end_s``."""
    out: list[float] = []
    k = 0
    while k * settings.step_s + settings.window_s <= end_s + 1e-9:
        out.append(round(k * settings.step_s, 9))
        k += 1
    return out


def windows(frames: Sequence[TrackFrame],
            settings: TrackingSettings = TrackingSettings()) -> list[Window]:
    """Return the sliding windows over ``frames`` (whole windows only, from 0 s)."""
    return _windows(_Spans(frames), settings)


def _windows(spans: _Spans, settings: TrackingSettings) -> list[Window]:
    out = []
    for start in _starts(spans.end_s(), settings):
        end = start + settings.window_s
        inside = spans.within(start, end)
        out.append(Window(start, end, len(inside), sum(f.edge is not None for f in inside),
                          spans.measured(start, end), spans.estimate(start, end),
                          spans.samples_before(end) - spans.samples_before(start)))
    return out


def detect_changes(frames: Sequence[TrackFrame],
                   settings: TrackingSettings = TrackingSettings()) -> list[float]:
    """Return the times where the measured mAP steps by at least ``min_change``.

    At every window boundary, the measured mAP of the window after it is compared with that of
    the window before; the largest steps are kept, no two closer than a window.
    """
    return _detect(_Spans(frames), settings)


def _detect(spans: _Spans, settings: TrackingSettings) -> list[float]:
    w = settings.window_s
    steps = []
    for start in _starts(spans.end_s() - w, settings):
        t = start + w
        before, after = spans.measured(t - w, t), spans.measured(t, t + w)
        if before is not None and after is not None and \
                abs(after - before) >= settings.min_change:
            steps.append((abs(after - before), t))
    kept: list[float] = []
    for _, t in sorted(steps, reverse=True):
        if all(abs(t - k) >= w for k in kept):
            kept.append(t)
    return sorted(kept)


def change_lags(frames: Sequence[TrackFrame], changes: Sequence[tuple[float, str]],
                settings: TrackingSettings = TrackingSettings()) -> list[ChangeLag]:
    """Return how the estimate followed each change (``(seconds, label)``, in time order)."""
    return _change_lags(_Spans(frames), changes, settings)


def _change_lags(spans: _Spans, changes: Sequence[tuple[float, str]],
                 settings: TrackingSettings) -> list[ChangeLag]:
    end = spans.end_s()
    times = [t for t, _ in changes]
    out = []
    for i, (t, label) in enumerate(changes):
        prev = times[i - 1] if i else 0.0
        nxt = times[i + 1] if i + 1 < len(times) else end
        before = (max(prev, t - settings.window_s), t)
        after = (max(t, nxt - settings.window_s), nxt)
        out.append(_lag(spans, t, label, before, after, settings))
    return out


def _lag(spans: _Spans, t: float, label: str, before: tuple[float, float],
         after: tuple[float, float], settings: TrackingSettings) -> ChangeLag:
    m0, m1 = spans.measured(*before), spans.measured(*after)
    e0, e1 = spans.estimate(*before), spans.estimate(*after)
    if m0 is None or m1 is None or e0 is None or e1 is None:
        return ChangeLag(t, label, m0, m1, e0, e1, False, None, None,
                         note='no data on one side')
    moved, measured = e1 - e0, m1 - m0
    share = moved / measured if measured else None
    if abs(measured) < settings.min_change:
        return ChangeLag(t, label, m0, m1, e0, e1, False, None, None, share=share,
                         note=f'measured mAP moved {measured:+.1f}: no change to follow')
    own: tuple[float | None, float | None] = (None, None)
    still = False
    if moved * measured > 0:
        path = [(f.t_s, (f.estimate - e0) / moved) for f in spans.within(t, after[1])
                if f.estimate is not None]
        own = (next((s - t for s, part in path if part >= 0.5), None),
               next((s - t for s, part in path if part >= 0.9), None))
        half = (after[0] + after[1]) / 2
        first, second = spans.estimate(after[0], half), spans.estimate(half, after[1])
        still = first is not None and second is not None and \
            abs(second - first) > 0.1 * abs(moved)
    if moved * measured <= 0 or abs(moved) < settings.min_share * abs(measured):
        return ChangeLag(t, label, m0, m1, e0, e1, False, None, None, still, share=share,
                         own_lag50_s=own[0], own_lag90_s=own[1],
                         note=f'never: estimate moved {moved:+.1f} for a measured '
                              f'{measured:+.1f}')
    return ChangeLag(t, label, m0, m1, e0, e1, True, *own, still, share=share,
                     own_lag50_s=own[0], own_lag90_s=own[1])


def track(frames: Sequence[TrackFrame], changes: Sequence[tuple[float, str]] | None,
          settings: TrackingSettings = TrackingSettings()) -> Tracking:
    """Compare the estimate with the measured edge mAP over ``frames``.

    Args:
        frames: Every frame with ground truth.
        changes: (seconds, label) of the changes of difficulty (those outside the frames are
            left out); None finds them in the measured windows (:func:`detect_changes`).
        settings: Window, step and thresholds.

    Returns:
        The windows, the lag of every change and the error of the estimate.
    """
    spans = _Spans(frames)
    end = spans.end_s()
    found = sorted(c for c in changes if 0 < c[0] < end) if changes is not None else \
        [(t, 'detected') for t in _detect(spans, settings)]
    wins = _windows(spans, settings)
    pairs = [w.estimate - w.measured for w in wins
             if w.estimate is not None and w.measured is not None]
    return Tracking(settings, wins, _change_lags(spans, found, settings),
                    'timeline' if changes is not None else 'detected',
                    statistics.fmean(abs(d) for d in pairs) if pairs else None,
                    statistics.fmean(pairs) if pairs else None)


class TrackingCollector:
    """Gathers, during a replay, what tracking needs of the frames that have ground truth.

    The edge's detections are kept for every frame it answered, also when another result was
    published; frames without ground truth keep nothing.

    Args:
        truth: True boxes by (stamp, frame_id).
        edge_source: The edge's source name (its detections' ``source``).
    """

    def __init__(self, truth: Truth, edge_source: str) -> None:
        self._truth = truth
        self._source = edge_source
        self._edge: dict[tuple[int, str], tuple[Detection, ...]] = {}
        self._records: dict[tuple[int, str], tuple[float | None, int]] = {}

    def add_detections(self, dets: DetectionSet) -> None:
        """Take a source's detections; the edge's are kept where there is truth."""
        key = (dets.stamp_ns, dets.frame_id)
        if dets.source == self._source and key in self._truth:
            self._edge[key] = tuple(dets.detections)

    def add_record(self, record: FrameRecord) -> None:
        """Take a frame's record (its estimate and agreement samples)."""
        key = (record.stamp_ns, record.frame_id)
        if key in self._truth:
            self._records[key] = (record.edge_map_estimate, record.agreement_samples)

    def frames(self) -> list[TrackFrame]:
        """Return every frame with ground truth, timed from the first of them."""
        if not self._truth:
            return []
        origin = min(stamp for stamp, _ in self._truth)
        out = []
        for key, truth in self._truth.items():
            estimate, samples = self._records.get(key, (None, 0))
            out.append(TrackFrame((key[0] - origin) / 1e9, tuple(truth), self._edge.get(key),
                                  estimate, samples))
        return sorted(out, key=lambda f: f.t_s)
