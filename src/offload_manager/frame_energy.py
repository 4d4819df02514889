"""Robot energy of each frame, put on its record: measured where a reader works, else modelled.

The manager keeps what each frame cost from the workers' reports (edge inference time, bytes
sent, the cloud's round trip). When the frame ends, the modelled energy comes from the robot's
device profile; with a working reader (RAPL, NVML) the energy measured since the previous
outcomes is shared among the frames that ended, and the record says ``energy_measured``.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from adaptive_offload.types import InferenceReport
from offload_manager.energy import EnergyModel, MeasuredEnergy
from offload_manager.observations import REPLY_BYTES


class FrameEnergy:
    """Per-frame energy bookkeeping.

    Args:
        model: Energy model of the robot; None leaves records without energy.
        meter: Measured energy, when a reader works on this hardware.
        memory: Frames whose costs are kept while they wait for their outcome.
    """

    def __init__(self, model: EnergyModel | None, meter: MeasuredEnergy | None = None,
                 memory: int = 512) -> None:
        self._model, self._meter, self._memory = model, meter, memory
        self._costs: dict[tuple[int, str], dict[str, float]] = {}

    def report(self, report: InferenceReport) -> None:
        """Remember what the report says the frame cost."""
        if self._model is None or report.status != 'ok':
            return
        costs = self._costs.setdefault((report.stamp_ns, report.frame_id), {})
        if report.source == 'cloud':
            costs['bytes'] = report.bytes_sent
            costs['cloud_ms'] = report.total_ms
        else:
            costs['edge_ms'] = report.inference_ms
        while len(self._costs) > self._memory:
            self._costs.pop(next(iter(self._costs)))

    def annotate(self, outcomes: list[Any]) -> list[Any]:
        """The outcomes with ``energy_j`` and ``energy_measured`` on their records."""
        if self._model is None or not outcomes:
            return outcomes
        measured = self._meter.frames_ended(len(outcomes)) if self._meter else None
        out = []
        for outcome in outcomes:
            rec = outcome.record
            costs = self._costs.pop((rec.stamp_ns, rec.frame_id), {})
            if measured is not None:
                joules, is_measured = measured.joules, True
            else:
                waits = 'cloud_ms' in costs and rec.route != 'edge'  # a probe does not wait
                joules = self._model.joules(
                    costs.get('edge_ms', 0.0), int(costs.get('bytes', 0)),
                    REPLY_BYTES if 'bytes' in costs else 0,
                    max(0.0, costs.get('cloud_ms', 0.0) - costs.get('edge_ms', 0.0))
                    if waits else 0.0)
                is_measured = False
            out.append(replace(outcome, record=replace(rec, energy_j=joules,
                                                       energy_measured=is_measured)))
        return out
