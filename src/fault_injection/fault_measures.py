"""Detection and recovery times of each injected fault, from a run's records and reports."""

from __future__ import annotations

from dataclasses import dataclass
import statistics
from typing import Sequence

from adaptive_offload import topics
from adaptive_offload.datatypes import FrameRecord, InferenceReport, Level
from adaptive_offload.health_records import HealthEvent
from fault_injection.scenario import EDGE_KINDS, Scenario


@dataclass(frozen=True)
class FaultMeasure:
    """What one fault did to the run.

    Attributes:
        kind: Fault kind.
        start_s: Fault start (seconds from the start of the run).
        detect_s: From the start to the first symptom: a cloud request failed or answered
            past the deadline (cloud faults); an edge report dropped or twice as slow as
            before the fault, or an edge health warning (edge faults); a health warning about
            the decisions (manager death). None if none.
        diagnosed_s: From the start to the matching check leaving OK on /diagnostics (the
            cloud check turning ERROR, or the bandwidth check warning, for cloud faults); None
            if it did not.
        recover_s: From the start to the first frame after detection served within its
            deadline by another route than the failing one (any route for manager death);
            None if none was.
        late: Frames finished during the fault with a result past their deadline.
        dropped: Frames finished during the fault without a result.
    """

    kind: str
    start_s: float
    detect_s: float | None
    diagnosed_s: float | None
    recover_s: float | None
    late: int
    dropped: int


def _domain(kind: str) -> str:
    if kind in EDGE_KINDS:
        return 'edge'
    return 'manager' if kind == 'manager_death' else 'cloud'


def _matches(event: HealthEvent, domain: str) -> bool:
    """Whether a health event is the diagnosis of a fault in ``domain``."""
    if domain == 'cloud':
        return (event.name == topics.CHECK_CLOUD and event.level == Level.ERROR) or \
            (event.name == topics.CHECK_UPLINK_BANDWIDTH and event.level != Level.OK)
    topic = topics.DECISION if domain == 'manager' else '/edge/'
    return topic in event.name and event.level != Level.OK


def _deadline(records: Sequence[tuple[float, FrameRecord]]) -> float:
    return records[0][1].deadline_ms if records else float('inf')


def measure(scenario: Scenario, records: Sequence[tuple[float, FrameRecord]],
            reports: Sequence[tuple[float, InferenceReport]],
            events: Sequence[tuple[float, HealthEvent]] = ()) -> list[FaultMeasure]:
    """Measure every fault of ``scenario``.

    Args:
        scenario: The faults injected.
        records: (seconds from the run's start when published, record), in time order.
        reports: (seconds from the run's start when received, report), in time order.
        events: (seconds from the run's start, health event), in time order.
    """
    out = []
    for fault in scenario.faults:
        domain = _domain(fault.kind)
        after = [(t, r) for t, r in reports if t >= fault.start_s]
        if domain == 'cloud':  # a failed request, or an answer too late to be used
            detect = next((t for t, r in after if r.source == 'cloud' and (
                r.status == 'failed' or r.total_ms > _deadline(records))), None)
        elif domain == 'edge':  # dropped, or twice as slow as before the fault
            before = [r.total_ms for t, r in reports if t < fault.start_s and
                      r.source != 'cloud' and r.status == 'ok']
            slow = min(_deadline(records), 2 * statistics.median(before)) if before else \
                _deadline(records)
            detect = next((t for t, r in after if r.source != 'cloud' and (
                r.status == 'dropped' or r.total_ms > slow)), None)
        else:
            detect = None
        diagnosed = next((t for t, e in events if t >= fault.start_s and _matches(e, domain)),
                         None)
        if detect is None:  # no request-level symptom, but a check saw it
            detect = diagnosed
        failing = {'cloud': ('', 'cloud'), 'edge': ('', 'edge')}.get(domain, ('',))
        recover = None
        if detect is not None:
            recover = next((t for t, r in records if t >= detect and r.deadline_met and
                            r.result_source not in failing), None)
        during = [r for t, r in records if fault.start_s <= t < fault.end_s]
        out.append(FaultMeasure(
            fault.kind, fault.start_s,
            None if detect is None else detect - fault.start_s,
            None if diagnosed is None else diagnosed - fault.start_s,
            None if recover is None else recover - fault.start_s,
            late=sum(1 for r in during if not r.dropped and not r.deadline_met),
            dropped=sum(1 for r in during if r.dropped)))
    return out
