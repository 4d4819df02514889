"""Whether the edge detector's split answers: its frames answered, lost and overdue.

A split frame crosses the LAN to the middle device's tail. A LAN that slows shows in the
answers' latency; one that loses packets (Wi-Fi, a saturated link, best-effort DDS dropping a
fragment) shows nothing at all: the tail never gets the frame, and the frame ends as
``no_result`` only at the result timeout, seconds later. So frames the head forwarded and no
answer followed within the deadline already count as lost here, once :data:`MIN_OVERDUE` of
them are (a lost LAN leaves every frame unanswered; one slow frame is a late answer, which
the latency series already counts), and a lost split frame
counts against the splits alone: the robot's own model, which needs no LAN, keeps its
availability (:class:`offload_manager.observations.Observations`).

While the robot runs its own model, its head may send a frame on as a probe of the split it
left (``Decision.split_probe``): the frame is the robot's to answer, the probe the split's. A
probe answered counts as a split frame answered, one unanswered for :data:`PROBE_LOST_S` (or
when a newer one is answered) as one lost, and :data:`RECOVERED_RUN` probes answered in a row
after a loss mean the LAN is back: the losses before them are forgotten, so the split is
weighed again from its answers at once instead of once a window of them has flushed.

The splits share one history: they share the LAN and the middle device.
"""

from __future__ import annotations

from collections import deque

WINDOW = 20
"""Split frames (answered or lost) the availability counts, as the edge's own window."""
MIN_OVERDUE = 3
"""Overdue frames that count as lost: fewer are a slow answer or two, not a silent LAN."""
MAX_PENDING = 256
"""Forwarded frames awaiting an answer that are kept; older ones are forgotten."""
PROBE_LOST_S = 2.0
"""A probe unanswered this long (the manager's default result timeout) was lost."""
RECOVERED_RUN = 3
"""Probes answered in a row after a loss that mark the LAN back."""


class SplitAnswers:
    """The split frames' fates, and the share of them answered.

    Args:
        forget_after_s: With no split frame ended for this long, the history is forgotten: a
            split left after a bad spell is tried again (as its latency samples are).
    """

    def __init__(self, forget_after_s: float) -> None:
        self._forget_after_s = forget_after_s
        self._outcomes: deque[bool] = deque(maxlen=WINDOW)
        self._newest_s: float | None = None
        self._unseen: list[int] = []  # forwarded since the last tick: timed then
        self._pending: dict[int, float] = {}  # forwarded, unanswered: stamp -> when seen
        self._sent: dict[int, None] = {}  # forwarded, not yet ended (in order)
        self._probes: dict[int, float | None] = {}  # sent, unanswered: stamp -> first tick
        self._run = 0  # probes answered since the newest loss
        # Answers to frames not known as forwarded or probed, by when: a tail may answer a
        # probe before the head's own answer (and its report of the probe) is done.
        self._early: dict[int, float] = {}

    def forwarded(self, stamp_ns: int, now_s: float | None = None) -> None:
        """Count the frame of ``stamp_ns`` as forwarded on a split, awaiting its answer.

        Args:
            stamp_ns: The frame's stamp.
            now_s: When the head's report of it came: it is overdue a deadline later. None:
                timed from the next :meth:`tick`, up to a plan period later.
        """
        if now_s is not None:
            self._pending[stamp_ns] = now_s
        else:
            self._unseen.append(stamp_ns)
        self._sent[stamp_ns] = None
        while len(self._sent) > MAX_PENDING:
            del self._sent[next(iter(self._sent))]

    def probed(self, stamp_ns: int) -> None:
        """Count the frame of ``stamp_ns`` as sent on a split as a probe, awaiting its answer."""
        if stamp_ns in self._early:  # answered already
            self._probe_answered(stamp_ns, self._early.pop(stamp_ns))
            return
        self._probes[stamp_ns] = None
        while len(self._probes) > MAX_PENDING:
            del self._probes[next(iter(self._probes))]

    def answered(self, stamp_ns: int, now_s: float | None = None) -> None:
        """Count the frame of ``stamp_ns`` as answered by a tail (a probe's at ``now_s``)."""
        self._pending.pop(stamp_ns, None)
        if stamp_ns in self._unseen:
            self._unseen.remove(stamp_ns)
        if now_s is None:
            return
        if stamp_ns in self._probes:
            del self._probes[stamp_ns]
            self._probe_answered(stamp_ns, now_s)
        elif stamp_ns not in self._sent:
            self._early[stamp_ns] = now_s
            while len(self._early) > MAX_PENDING:
                del self._early[next(iter(self._early))]

    def unsent(self, now_s: float) -> None:
        """Count a split frame its head could not send (no tail took them) as lost."""
        self._outcome(False, now_s)

    def ended(self, stamp_ns: int, lost: bool, now_s: float) -> bool:
        """Record that the frame of ``stamp_ns`` ended: answered or ``lost``.

        Returns:
            Whether it was a split frame: one a head forwarded. A frame the head never
            forwarded was lost on the robot (a head that never saw it), not on the LAN, and is
            none of the splits' business.
        """
        if stamp_ns not in self._sent:
            return False
        del self._sent[stamp_ns]
        self.answered(stamp_ns)
        self._outcome(not lost, now_s)
        return True

    def _probe_answered(self, stamp_ns: int, now_s: float) -> None:
        """Count a probe answered; those sent before it, unanswered, were lost."""
        for older in [p for p in self._probes if p < stamp_ns]:  # a newer one got through
            del self._probes[older]
            self._outcome(False, now_s)
        self._outcome(True, now_s, probe=True)

    def _outcome(self, answered: bool, now_s: float, probe: bool = False) -> None:
        """Count one split frame's fate; a run of answered probes after a loss forgets it."""
        self._outcomes.append(answered)
        self._newest_s = now_s
        if not answered:
            self._run = 0
            return
        self._run += probe
        if probe and self._run == RECOVERED_RUN and not all(self._outcomes):
            for _ in range(len(self._outcomes) - RECOVERED_RUN):
                self._outcomes.popleft()
            self._pending.clear()

    def tick(self, now_s: float) -> None:
        """Time the frames forwarded since the last tick; forget a history left long ago.

        A frame forwarded with no time of its report is timed from the first tick that sees
        it, never earlier: an overdue frame is one surely overdue.
        """
        for stamp in self._unseen:
            self._pending[stamp] = now_s
        self._unseen.clear()
        lost = []
        for stamp, seen in self._probes.items():
            if seen is None:
                self._probes[stamp] = now_s
            elif now_s - seen >= PROBE_LOST_S:
                lost.append(stamp)
        for stamp in lost:
            del self._probes[stamp]
            self._outcome(False, now_s)
        while len(self._pending) > MAX_PENDING:
            del self._pending[next(iter(self._pending))]
        if self._newest_s is not None and now_s - self._newest_s > self._forget_after_s:
            self._outcomes.clear()
            self._pending.clear()
            self._newest_s = None

    def up(self, now_s: float, deadline_ms: float) -> float:
        """Return the share of split frames answered, frames overdue by ``deadline_ms`` lost.

        Overdue frames count once there are :data:`MIN_OVERDUE` of them. 1.0 with no split
        frame known.
        """
        overdue = sum(1 for t in self._pending.values() if now_s - t > deadline_ms / 1e3)
        if overdue < MIN_OVERDUE:
            overdue = 0
        total = len(self._outcomes) + overdue
        return sum(self._outcomes) / total if total else 1.0
