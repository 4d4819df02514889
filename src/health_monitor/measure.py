"""Detection and recovery times of each injected fault, from a run's records and reports."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from adaptive_offload.types import FrameRecord, HealthEvent, InferenceReport, Level
from health_monitor.checks import CloudCheck
from health_monitor.scenario import Scenario


@dataclass(frozen=True)
class FaultMeasure:
    """What one fault did to the run.

    Attributes:
        kind: Fault kind.
        start_s: Fault start (seconds from the start of the run).
        detect_s: From the start to the first failed cloud request; None if none failed.
        diagnosed_s: From the start to the cloud check turning ERROR on /diagnostics; None if
            it did not.
        recover_s: From the start to the first frame after detection served within its
            deadline by another route than the cloud; None if none was.
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
        detect = next((t for t, r in reports if t >= fault.start_s and r.source == 'cloud'
                       and r.status == 'failed'), None)
        diagnosed = next((t for t, e in events if t >= fault.start_s and
                          e.name == CloudCheck.name and e.level == Level.ERROR), None)
        recover = None
        if detect is not None:
            recover = next((t for t, r in records if t >= detect and r.deadline_met and
                            r.result_source not in ('', 'cloud')), None)
        during = [r for t, r in records if fault.start_s <= t < fault.end_s]
        out.append(FaultMeasure(
            fault.kind, fault.start_s,
            None if detect is None else detect - fault.start_s,
            None if diagnosed is None else diagnosed - fault.start_s,
            None if recover is None else recover - fault.start_s,
            late=sum(1 for r in during if not r.dropped and not r.deadline_met),
            dropped=sum(1 for r in during if r.dropped)))
    return out
