"""Robot energy of each frame, put on its record: measured where a reader works, else modelled.

The manager keeps what each frame cost from the workers' reports (edge inference, split
head or JPEG encode time, bytes sent and received; an edge detector's split head reports
``forwarded`` with its layers, encode and bytes, and its tail's answer, computed on another
device, costs the robot only the reply; a frame the head answered itself and sent on as a
split probe costs its model, the probe's encode and its bytes). When the frame ends, the
modelled energy comes from the robot's device profile: that work, plus idle power over the
time since the newest frame that ended before it (its camera period), so over a run the
records add up to what a reader would measure; with a working reader (RAPL, NVML, battery)
the energy measured since the previous outcomes is shared among the frames that ended, and
the record says ``energy_measured``.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from adaptive_offload.datatypes import InferenceReport
from adaptive_offload.split_option import SPLIT_PREFIX
from offload_manager.energy import EnergyModel, MeasuredEnergy
from offload_manager.frame_outcomes import FORWARDED
from offload_manager.observations import REPLY_BYTES


class FrameEnergy:
    """Per-frame energy bookkeeping.

    Work that finishes after its frame ended (the answer of a probe nobody waited for, a
    cloud reply that lost to the edge) was spent all the same: its energy is charged to the
    next frame to end, so the energy per frame over a run is the robot's true total.

    Args:
        model: Energy model of the robot; None leaves records without energy.
        meter: Measured energy, when a reader works on this hardware.
        memory: Frames whose costs are kept while they wait for their outcome, and ended
            frames remembered for answers that come late.
    """

    def __init__(self, model: EnergyModel | None, meter: MeasuredEnergy | None = None,
                 memory: int = 512) -> None:
        self._model, self._meter, self._memory = model, meter, memory
        self._costs: dict[tuple[int, str], dict[str, float]] = {}
        self._ended: dict[tuple[int, str], None] = {}
        self._carry_j = 0.0
        self._last_stamp: int | None = None  # newest stamp of an ended frame

    def report(self, report: InferenceReport) -> None:
        """Remember what the report says the frame cost (a failed request sent its bytes)."""
        model = self._model
        if model is None or report.status not in ('ok', 'failed', FORWARDED):
            return
        cost: dict[str, float] = {}
        if report.status == FORWARDED:  # the robot's split head: its layers, encode and radio
            cost['head_ms'] = report.inference_ms + report.encode_ms
            if report.bytes_sent:
                cost['bytes'] = report.bytes_sent
        elif report.source == 'cloud':
            if report.bytes_sent:
                cost['bytes'] = report.bytes_sent
            if report.status == 'ok':
                cost['replied'] = 1.0
            if report.model.startswith(SPLIT_PREFIX):  # the robot ran the model's head
                cost['head_ms'] = report.inference_ms
            elif report.encode_ms > 0:  # the robot encoded the frame
                cost['encode_ms'] = report.encode_ms
        elif report.status == 'ok' and report.split:  # a tail elsewhere: the robot receives
            cost['replied'] = 1.0
        elif report.status == 'ok':
            cost['edge_ms'] = report.inference_ms
            if report.split_probe:  # the head also sent the frame on as a probe
                cost['encode_ms'] = report.encode_ms
                cost['bytes'] = report.bytes_sent
        if not cost:
            return
        key = (report.stamp_ns, report.frame_id)
        if key in self._ended:  # its frame's period is charged already: only the work
            self._carry_j += _joules(model, cost, 0)
            return
        self._costs.setdefault(key, {}).update(cost)
        _bound(self._costs, self._memory)

    def annotate(self, outcomes: list[Any], now_ns: int) -> list[Any]:
        """Return the outcomes with ``energy_j`` and ``energy_measured`` on their records."""
        charged = self.charge(outcomes, now_ns)
        if charged is None:
            return outcomes
        return [replace(outcome, record=replace(outcome.record, energy_j=joules,
                                                energy_measured=is_measured))
                for outcome, (joules, is_measured) in zip(outcomes, charged)]

    def charge(self, outcomes: list[Any], now_ns: int) -> list[tuple[float, bool]] | None:
        """Return each ended frame's ``(energy_j, energy_measured)``, charging late work too.

        Args:
            outcomes: The frames that ended now, each with its record.
            now_ns: The current time.

        Returns:
            One pair per outcome, in order; None without an energy model or outcomes (the
            records then keep what they have).
        """
        model = self._model
        if model is None or not outcomes:
            return None
        measured = self._meter.frames_ended(len(outcomes), now_ns) if self._meter else None
        out = []
        for outcome in outcomes:
            rec = outcome.record
            key = (rec.stamp_ns, rec.frame_id)
            costs = self._costs.pop(key, {})
            self._ended[key] = None
            _bound(self._ended, self._memory)
            period_ns = self._period_ns(rec.stamp_ns)
            if measured is not None:  # the meter saw the late work too
                joules, is_measured, self._carry_j = measured.joules, True, 0.0
            else:
                joules = _joules(model, costs, period_ns) + self._carry_j
                is_measured, self._carry_j = False, 0.0
            out.append((joules, is_measured))
        return out

    def _period_ns(self, stamp_ns: int) -> int:
        """Return the time since the newest stamp that ended before, and take this one.

        The first frame has none; one that ends after a later-stamped frame has none either
        (its time is in that frame's), so the periods add up to the camera's time span.
        """
        last = self._last_stamp
        if last is None or stamp_ns > last:
            self._last_stamp = stamp_ns
        return 0 if last is None else max(0, stamp_ns - last)


def _joules(model: EnergyModel, costs: dict[str, float], period_ns: int) -> float:
    compute = sum(costs.get(work, 0.0) for work in ('edge_ms', 'head_ms', 'encode_ms'))
    return model.joules(compute, int(costs.get('bytes', 0)),
                        REPLY_BYTES if 'replied' in costs else 0, period_ns / 1e6)


def _bound(table: dict[Any, Any], size: int) -> None:
    while len(table) > size:
        table.pop(next(iter(table)))
