"""Which frames the cloud gets when a decision sends only some: uniformly, or where it adds most.

``offload_every`` = n asks for one frame in n. ``uniform`` sends every n-th. ``content`` sends
the same share, but picks the frames whose scene the edge sees least well: its newest result
is uncertain (a low top score, boxes it is unsure of, small objects) or has changed from the
one before (objects came, went or moved). Each frame earns 1/n of a request; a frame is sent
when a whole request has been earned and its score ranks among the top 1/n of recent scores,
or when ``burst`` requests have been saved up, so the request rate stays that of
uniform sampling and the cloud is never left unasked for long.

The edge's results arrive after its frames: a frame is judged by the edge's newest result, of
a frame a little earlier. Scenes change more slowly than frames come.
"""

from __future__ import annotations

from collections import deque
from typing import Protocol, Sequence

from adaptive_offload.admission import EveryNth
from adaptive_offload.datatypes import Detection, DetectionSet
from adaptive_offload.errors import ConfigError
import numpy as np

SMALL_AREA = 32 * 32
"""Boxes of at most this many pixels are small (COCO's definition)."""
UNSURE_SCORE = 0.5
"""Boxes scored below this are ones the detector is unsure of (its threshold is lower)."""


class Sampler(Protocol):
    """Picks the frames a one-in-n decision sends; called with a lock held by the bridge."""

    def pick(self, every: int) -> bool:
        """Count one frame; whether it goes to the cloud (never when ``every`` is 0)."""

    def observe_edge(self, dets: DetectionSet) -> None:
        """Take the edge's newest result (ignored by samplers that do not look)."""


class UniformSampler(EveryNth):
    """Every n-th frame, the first one included."""

    def observe_edge(self, dets: DetectionSet) -> None:
        """Ignore the edge: uniform sampling does not look at content."""


class ContentSampler:
    """One frame in n, chosen where the edge's view is uncertain or changing.

    Args:
        window: Recent frame scores the top-1/n threshold is taken from.
        burst: Requests that may be saved up; with that many, the next frame goes whatever
            its score.
    """

    def __init__(self, window: int = 100, burst: float = 6.0) -> None:
        if window < 2 or burst < 1:
            raise ConfigError('content sampling needs window >= 2 and burst >= 1')
        self._scores: deque[float] = deque(maxlen=window)
        self._burst = burst
        self._credit = 1.0  # the first frame goes: the cloud's figures start at once
        self._score = 1.0
        self._previous: tuple[Detection, ...] | None = None

    def observe_edge(self, dets: DetectionSet) -> None:
        """Score the scene by the edge's newest result."""
        self._score = uncertainty(dets.detections) + change(self._previous, dets.detections)
        self._previous = dets.detections

    def pick(self, every: int) -> bool:
        """See :class:`Sampler`."""
        if every <= 0:
            return False
        self._scores.append(self._score)
        self._credit = min(self._burst, self._credit + 1.0 / every)
        if self._credit < 1.0:
            return False
        # Its mid-rank among recent scores: ties (a steady scene scores the same frame after
        # frame) count half, so a run of equal scores is not all in the top 1/n.
        scores = np.fromiter(self._scores, float, len(self._scores))
        rank = (np.sum(scores < self._score) + 0.5 * np.sum(scores == self._score)) / len(scores)
        if rank >= 1.0 - 1.0 / every or self._credit >= self._burst:
            self._credit -= 1.0
            return True
        return False


SAMPLERS: dict[str, type[UniformSampler] | type[ContentSampler]] = {
    'uniform': UniformSampler,
    'content': ContentSampler,
}
"""Samplers by the name the ``sampling`` parameter takes."""


def uncertainty(dets: Sequence[Detection]) -> float:
    """How unsure the edge is of a scene, 0 to 3: a low top score, unsure boxes, small boxes.

    An empty result counts as unsure as one weak box: the edge may have missed everything.
    """
    if not dets:
        return 1.0
    scores = np.array([d.score for d in dets])
    unsure = float(np.mean(scores < UNSURE_SCORE))
    small = float(np.mean([(d.x2 - d.x1) * (d.y2 - d.y1) <= SMALL_AREA for d in dets]))
    return (1.0 - float(scores.max())) + unsure + small


def change(before: Sequence[Detection] | None, now: Sequence[Detection]) -> float:
    """How much the scene changed between two edge results, 0 to 1: unmatched boxes' share."""
    if before is None:
        return 1.0
    if not before and not now:
        return 0.0
    matched = 0
    used: set[int] = set()
    for d in now:
        best = max(((d.iou(b), j) for j, b in enumerate(before)
                    if j not in used and b.class_name == d.class_name), default=(0.0, -1))
        if best[0] >= 0.5:
            used.add(best[1])
            matched += 1
    return 1.0 - 2.0 * matched / (len(before) + len(now))


def make_sampler(name: str, phase: int = 0) -> Sampler:
    """Return a new sampler of the registry name ``name``.

    Args:
        name: A name in :data:`SAMPLERS`.
        phase: Where the uniform sampler starts counting (see :class:`EveryNth`); content
            sampling picks by content, not by count, and ignores it.

    Raises:
        ConfigError: For a name not in :data:`SAMPLERS`.
    """
    if name not in SAMPLERS:
        raise ConfigError(f'sampling {name!r}: one of {", ".join(SAMPLERS)}')
    return UniformSampler(phase) if name == 'uniform' else SAMPLERS[name]()
