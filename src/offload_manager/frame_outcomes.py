"""Per-frame arbitration: exactly one fused result or one explicit drop for every frame."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from adaptive_offload.admission import StampGate
from adaptive_offload.datatypes import Decision, DetectionSet, FrameRecord, InferenceReport, Route

CLOUD = 'cloud'
FORWARDED = 'forwarded'  # a split head's report: its tail, another source, answers the frame
SKIPPED = 'skipped'  # a source the applied decision did not route the frame to
HEAD = 'head'  # InferenceReport.split_role of a split head's reports
NO_RESULT = 'no_result'  # the drop reason of a frame no source answered or reported on
HEDGE_GUARD_MS = 25.0  # longer than the manager node's 20 ms tick


@dataclass(frozen=True)
class Outcome:
    """The end of one frame: its record and, unless dropped, the published detections."""

    record: FrameRecord
    result: DetectionSet | None

    def shown(self) -> DetectionSet:
        """Return the boxes a viewer draws over the frame: the result, or none for a drop."""
        if self.result is not None:
            return self.result
        return DetectionSet(self.record.stamp_ns, self.record.frame_id, '', ())


@dataclass
class _Pending:
    index: int
    stamp_ns: int
    frame_id: str
    arrival_ns: int
    decision: Decision
    expected: set[str]
    probing: set[str] = field(default_factory=set)  # may answer: the probed side
    results: dict[str, tuple[DetectionSet, int]] = field(default_factory=dict)
    failures: dict[str, str] = field(default_factory=dict)
    reported: set[str] = field(default_factory=set)
    forwarded: set[str] = field(default_factory=set)  # split heads that passed it on
    notes: list[str] = field(default_factory=list)

    @property
    def deadline_ns(self) -> int:
        return self.arrival_ns + int(self.decision.deadline_ms * 1e6)

    def answered(self) -> bool:
        settled = set(self.results) | set(self.failures)
        # A split head's frame is answered by its tail: once that (another expected source,
        # or the head's own name where both share one) has a result or a failure.
        tails = not self.forwarded <= settled and not settled & (self.expected - self.forwarded)
        return self.expected <= settled | self.forwarded and not tails and \
            self.probing <= set(self.results) | self.reported


class Arbiter:
    """Joins the results and reports of every source per frame and decides what is published.

    Rules, per frame (keyed by header stamp and frame_id): a cloud result that arrives by the
    deadline wins; an edge result is published at once on the edge route, and on the hedged
    route when the cloud has failed or the deadline is ``HEDGE_GUARD_MS`` away; a result
    arriving late is still published (``deadline_met`` false); when every expected source
    failed, or nothing arrived within ``result_timeout_ms``, the frame is dropped with the
    sources' reasons. On a one-sided route that probes the other side, a frame whose own
    route failed waits for the other side's report: its probe may still serve it. So does a
    frame a source skipped under another decision than the frame's (the workers' newer one,
    or their fallback while no decision is valid).

    Args:
        edge_sources: Names of the edge targets whose results are expected on edge routes.
        result_timeout_ms: How long past arrival a frame may wait for anything at all.
    """

    def __init__(self, edge_sources: tuple[str, ...] = ('edge',),
                 result_timeout_ms: float = 2000.0) -> None:
        self._edge_sources = set(edge_sources)
        self._timeout_ns = int(result_timeout_ms * 1e6)
        self._guard_ns = int(HEDGE_GUARD_MS * 1e6)
        self._gate = StampGate()
        self._pending: dict[tuple[int, str], _Pending] = {}
        self._heads: set[str] = set()  # sources seen forwarding: split heads
        self._count = 0
        self.orphans = 0

    def set_timeout(self, result_timeout_ms: float) -> None:
        """Change how long frames arriving from now on may wait for anything at all."""
        self._timeout_ns = int(result_timeout_ms * 1e6)

    @property
    def pending(self) -> int:
        """Frames still waiting for a result."""
        return len(self._pending)

    def frame_arrived(self, stamp_ns: int, frame_id: str, arrival_ns: int,
                      decision: Decision) -> Outcome | None:
        """Register a frame; returns its drop outcome at once if its stamp is refused."""
        index = self._count
        self._count += 1
        refusal = self._gate.check(stamp_ns, frame_id)
        if refusal:
            record = FrameRecord(index=index, stamp_ns=stamp_ns, frame_id=frame_id,
                                 route=decision.route.value, deadline_ms=decision.deadline_ms,
                                 drop_reason=refusal, decision_seq=decision.seq)
            return Outcome(record, None)
        expected, probing = set(), set()
        if decision.route.uses_edge:
            expected |= self._edge_sources
        if decision.route.uses_cloud:
            expected.add(CLOUD)
        if decision.probe_every and decision.route is not Route.HEDGED:
            probing = {CLOUD} if decision.route is Route.EDGE else set(self._edge_sources)
        self._pending[(stamp_ns, frame_id)] = _Pending(index, stamp_ns, frame_id, arrival_ns,
                                                       decision, expected, probing)
        return None

    def unreadable(self, reason: str, decision: Decision) -> Outcome:
        """Record a frame whose header could not be read (it has no key)."""
        record = FrameRecord(index=self._count, route=decision.route.value,
                             deadline_ms=decision.deadline_ms, drop_reason=reason,
                             decision_seq=decision.seq)
        self._count += 1
        return Outcome(record, None)

    def add_result(self, dets: DetectionSet, now_ns: int) -> None:
        """Attach a source's detections to their frame."""
        entry = self._pending.get((dets.stamp_ns, dets.frame_id))
        if entry is None:
            self.orphans += 1
            return
        entry.results[dets.source] = (dets, now_ns)

    def add_report(self, report: InferenceReport) -> None:
        """Attach a source's report; a non-ok report marks that source as failed.

        A split head's ``forwarded`` report is neither: the frame waits for its tail's answer
        (or failure), which another expected source reports. A frame a split head (a source
        seen forwarding, or reporting as ``split_role`` head) did not forward never reaches
        its tail: a failure or skip settles the edge side with the head's reason at once,
        instead of at the result timeout, and an answer of its own ends the edge side.

        A ``refused`` report is about another frame that repeated this key (the arbiter drops
        that one itself on arrival), so it never touches the pending frame.
        """
        if report.status == 'refused':
            return
        if report.status == FORWARDED or report.split_role == HEAD:
            self._heads.add(report.source)
        entry = self._pending.get((report.stamp_ns, report.frame_id))
        if entry is None:
            if report.status == 'ok':
                self.orphans += 1
            return
        entry.reported.add(report.source)
        if report.status == SKIPPED and report.decision_seq != entry.decision.seq:
            # The workers applied another decision than the one this frame arrived under (a
            # newer one, or the fallback while none is valid): the other side may answer it,
            # and a frame dropped on this skip alone would lose that answer.
            entry.probing |= (self._edge_sources | {CLOUD}) - {report.source}
        if report.status == FORWARDED:  # no answer of its own, and no failure either
            entry.forwarded.add(report.source)
        elif report.status != 'ok':
            reason = report.reason or report.status
            tails = (entry.expected | entry.probing) - {CLOUD, report.source} \
                if report.source in self._heads else set()
            for tail in tails:  # they will never see the frame: they fail as the head did
                entry.failures.setdefault(tail, reason)
                entry.reported.add(tail)
            if not tails or report.source in entry.expected:
                entry.failures[report.source] = reason
        elif report.reason:
            entry.notes.append(f'{report.source}: {report.reason}')

    def poll(self, now_ns: int) -> list[Outcome]:
        """Finish every frame that can be finished at ``now_ns``, in arrival order."""
        done = []
        for key, entry in list(self._pending.items()):
            outcome = self._decide(entry, now_ns)
            if outcome is not None:
                del self._pending[key]
                done.append(outcome)
        done.sort(key=lambda o: o.record.index)
        return done

    def next_due_ns(self, now_ns: int) -> int | None:
        """Return when a pending frame may next end by time alone, after ``now_ns``.

        That is its hedge guard before the deadline or its result timeout; between inputs,
        :meth:`poll` ends nothing before then. None when no pending frame can end by time.
        """
        return min((t for entry in self._pending.values()
                    for t in (entry.deadline_ns - self._guard_ns,
                              entry.arrival_ns + self._timeout_ns) if t > now_ns), default=None)

    def flush(self, now_ns: int) -> list[Outcome]:
        """Finish every pending frame (end of stream): best result so far, or a drop."""
        done = [self._decide(entry, now_ns, final=True) for entry in self._pending.values()]
        self._pending.clear()
        return sorted((o for o in done if o is not None), key=lambda o: o.record.index)

    def _decide(self, entry: _Pending, now_ns: int, final: bool = False) -> Outcome | None:
        route = entry.decision.route
        cloud = entry.results.get(CLOUD)
        edge = None  # the first edge-side result to arrive (a loop: this runs at every poll)
        for source, result in entry.results.items():
            if source != CLOUD and (edge is None or result[1] < edge[1]):
                edge = result
        # The edge result of a hedged frame goes out a guard before the deadline: published
        # at the deadline itself, the poll that notices it would always be a little late.
        past_deadline = now_ns >= entry.deadline_ns - self._guard_ns
        timed_out = now_ns - entry.arrival_ns >= self._timeout_ns
        if cloud is not None and (cloud[1] <= entry.deadline_ns or edge is None):
            return self._finish(entry, now_ns, cloud)
        if edge is not None and (route is Route.EDGE or CLOUD in entry.failures or
                                 past_deadline or final):
            return self._finish(entry, now_ns, edge)
        if cloud is not None and (final or timed_out):
            return self._finish(entry, now_ns, cloud)
        if entry.answered() and not entry.results:
            reasons = '; '.join(f'{k}: {v}' if len(entry.failures) > 1 else v
                                for k, v in sorted(entry.failures.items()))
            return self._finish(entry, now_ns, None, reasons or 'no_source')
        if final or timed_out:
            return self._finish(entry, now_ns, None, NO_RESULT)
        return None

    def _finish(self, entry: _Pending, now_ns: int, chosen: tuple[DetectionSet, int] | None,
                drop_reason: str = '') -> Outcome:
        notes = entry.notes + [f'{k}: {v}' for k, v in sorted(entry.failures.items())
                               if chosen is not None]
        decision = entry.decision
        # Built once with every field: no copy of a half-made record per frame.
        common: dict[str, Any] = {
            'index': entry.index, 'stamp_ns': entry.stamp_ns, 'frame_id': entry.frame_id,
            'route': decision.route.value, 'sources': sorted(entry.results),
            'deadline_ms': decision.deadline_ms, 'decision_seq': decision.seq,
            'reason': '; '.join(notes), 'split': decision.split}
        if chosen is None:
            return Outcome(FrameRecord(**common, drop_reason=drop_reason), None)
        dets = chosen[0]
        latency_ms = (now_ns - entry.arrival_ns) / 1e6
        record = FrameRecord(**common, result_source=dets.source, latency_ms=latency_ms,
                             deadline_met=latency_ms <= decision.deadline_ms,
                             detections=len(dets.detections))
        return Outcome(record, dets)
