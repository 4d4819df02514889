"""Observations that also estimate split options (the cloud model cut between robot and cloud).

A split option is a cloud request with another robot cost, byte count and server time: its
latency distribution is the measured cloud series shifted by the robot's head and encode time,
the payload's transfer less the measured JPEG's, and the tail's server time less the whole
model's. P(miss), energy, accuracy and cost follow from that as for the cloud route. The
whole-frame options are estimated by :class:`Observations` unchanged.

A three-tier option adds the profiled LAN transfer and middle device's time to the shift, and
crosses the uplink with the payload the middle device sends on; one that ends on the middle
device (``j = end``) has no cloud part: its latency is the profiles' alone, and whether it
meets the deadline follows from that. Such an option is weighed only once the cloud is known
(its availability learnt, or failing): nothing measures the cloud while frames stop at the
middle device, so choosing one first would leave the cloud unknown for good.

A split request's report names its option as ``model = "split:<option>"`` and gives the
robot's head and encode time as ``inference_ms`` (``offload_manager.frame_energy`` charges
it as compute).

The edge detector's split (``<model>@<imgsz>:<k>/end:<encoding>``, figures ``edge``) is an edge
route: the robot's head to ``k``, the LAN, the middle device's tail. Its latency is measured
from its answers (the manager times them from the frame's arrival), probes included, and the
profiles' until then; its accuracy is the edge model's, and it needs no cloud. While the robot
runs its own model, its head's probes of the split (``Decision.split_probe``) keep measuring it:
a LAN that comes back shows in a few probes' answers (``SplitAnswers``), not
:data:`SPLIT_RETRY_S` later. A LAN that answers probes in time may still be too slow for every
frame: a split answered that seldom whose LAN part takes more than :data:`LAN_BUSY_MAX` of the
camera period even in the fastest of its :data:`RECENT` newest answers would queue frames
behind each other, and is taken as missing (a split in use measures that queueing itself).
"""

from __future__ import annotations

from dataclasses import replace
import math
from typing import Mapping

from adaptive_offload.datatypes import FrameRecord, InferenceReport, Route
from adaptive_offload.split_option import SPLIT_PREFIX
from offload_manager.frame_outcomes import FORWARDED, NO_RESULT
from offload_manager.latency_models import SlidingQuantiles, tail_probability
from offload_manager.observations import (EnergyModelLike, Estimate, Observations, Option,
                                          REPLY_BYTES)
from offload_manager.policy import Plan
from offload_manager.split_answers import SplitAnswers
from offload_manager.split_figures import SplitFigures


SPLIT_RETRY_S = 30.0
"""An edge detector's split left this long ago is estimated from its profile again. Only its
own answers measure it (its probes run while the cloud route probes the edge), so after a slow
spell of the LAN its late samples would otherwise hold it off for good; a LAN still slow costs
the frames of one retry, about half a second's."""
LAN_BUSY_MAX = 1.0
"""Largest share of the camera period an edge detector's split not in use may keep the LAN
busy: at 1, a LAN that cannot carry one frame a period."""
RECENT = 3
"""Newest answers of a split that tell the LAN's state now (a probe a second, off it)."""


class SplitObservations(Observations):
    """:class:`Observations` with split options.

    Args:
        energy: Energy model of the robot.
        splits: Figures of the split options, by name.
        **kwargs: As :class:`Observations`.
    """

    def __init__(self, energy: EnergyModelLike, splits: Mapping[str, SplitFigures],
                 **kwargs: object) -> None:
        self.splits = dict(splits)
        self._lan_slowdown = 1.0
        self.split_answers = SplitAnswers(SPLIT_RETRY_S)
        super().__init__(energy, **kwargs)  # type: ignore[arg-type]

    def prepare(self) -> None:
        """See :meth:`Observations.prepare`; also what the edge detector's splits share.

        They share the LAN and the middle device: the newest measured one's latency over its
        profile's scales the others' profiles (a slow LAN shows on all of them at once). One
        left :data:`SPLIT_RETRY_S` ago forgets its samples, to be tried again by its profile.
        """
        super().prepare()
        self.split_answers.tick(self.now_s)
        self._lan_slowdown, newest = 1.0, -math.inf
        for name, fig in self.splits.items():
            series = self.book.get(f'edge:{name}') if fig.edge else None
            taken = series.newest_s if series is not None else None
            if series is None or taken is None:
                continue
            if self.now_s - taken > SPLIT_RETRY_S:
                series.keep_newest(0)
            elif taken > newest and fig.before_wan_ms > 0:
                newest = taken
                self._lan_slowdown = max(1.0, _recent(series) / fig.before_wan_ms)

    def observe_report(self, report: InferenceReport, now_ns: int | None = None) -> None:
        """Learn from a worker report; a split request's as the JPEG request it stands for.

        A head's ``forwarded`` frame on the edge detector's split awaits its tail's answer
        (:class:`offload_manager.split_answers.SplitAnswers`); a split frame it answered
        itself, no tail taking them (``split_unsent``), counts as lost to the split.
        """
        if report.source == 'cloud' and report.model.startswith(SPLIT_PREFIX):
            self._observe_split(report)
            return
        taken_s = None if now_ns is None else now_ns / 1e9
        if self._edge_split(report.split):
            if report.status == FORWARDED:
                self.split_answers.forwarded(report.stamp_ns, taken_s)
            elif report.status == 'ok':
                self.split_answers.answered(report.stamp_ns, self.now_s)
        elif report.status == 'ok' and self._edge_split(report.split_probe):
            self.split_answers.probed(report.stamp_ns)
        elif report.status == 'ok' and self._edge_split(report.split_unsent):
            self.split_answers.unsent(self.now_s if taken_s is None else taken_s)
        super().observe_report(report, now_ns)
        if report.status == 'ok' and self._edge_split(report.split):
            self._lan_back(report.split)

    def _lan_back(self, name: str) -> None:
        """After a split's answer: if the LAN was busy and is no longer, forget the busy spell.

        Its :data:`RECENT` newest answers, each, say the LAN carries a frame a period, its older
        ones on average that it did not: those are stale, for every split (they share the LAN),
        and would hold the splits off until enough fast answers had outweighed them.
        """
        fig, series = self.splits[name], self.book.get(f'edge:{name}')
        if series is None or len(series) <= RECENT or self._lan_busy(fig, _recent(series)):
            return
        older = series.newest(len(series))[:-RECENT]
        if not self._lan_busy(fig, sum(older) / len(older)):
            return
        for other, figures in self.splits.items():
            if figures.edge:
                self.book.keep_newest(f'edge:{other}', RECENT if other == name else 0)

    def _dense(self, series: SlidingQuantiles | None) -> bool:
        """Whether a split's newest answers came at about the frame rate (it is in use).

        Their latency then already holds the queueing of a LAN that carries every frame; a
        probe's, one a second, does not.
        """
        return series is not None and len(series) >= RECENT and self.period_ms > 0 and \
            series.span_s(RECENT) <= 2 * (RECENT - 1) * self.period_ms / 1e3

    def _lan_busy(self, fig: SplitFigures, latency_ms: float) -> bool:
        """Whether a split answering in ``latency_ms`` keeps the LAN too busy for every frame."""
        return bool(self.period_ms) and \
            latency_ms - fig.robot_ms - fig.middle_ms > LAN_BUSY_MAX * self.period_ms

    def observe_record(self, record: FrameRecord) -> None:
        """See :meth:`Observations.observe_record`.

        A frame a head forwarded on the edge detector's split ends as one of the splits'
        answers or losses, not the robot's own model's.
        """
        if record.route == Route.EDGE.value and self._edge_split(record.split) and \
                self.split_answers.ended(record.stamp_ns, not record.result_source and
                                         record.drop_reason == NO_RESULT, self.now_s):
            self._stamps.append(record.stamp_ns)
            return
        super().observe_record(record)

    def _edge_split(self, name: str) -> bool:
        fig = self.splits.get(name) if name else None
        return fig is not None and fig.edge

    def estimate(self, option: Option, deadline_ms: float) -> Estimate | None:
        """See :meth:`Observations.estimate`; split options as the module says."""
        if option.route is Route.SPLIT:
            return self._split_estimate(option, deadline_ms)
        if option.split:
            return self._edge_split_estimate(option, deadline_ms)
        return super().estimate(option, deadline_ms)

    def _edge_split_estimate(self, option: Option, deadline_ms: float) -> Estimate | None:
        """Estimate the edge detector split between robot and middle device (an edge route).

        Its latency is measured (the frames it answered, arrival to answer), else the
        profiles' (head, encode, LAN, the middle device's decode and tail) scaled by what the
        other splits measured; it misses when late or when the splits do not answer (frames
        lost, or forwarded and unanswered past the deadline: a lossy LAN is silent; or, not
        in use, when its LAN part takes over :data:`LAN_BUSY_MAX` of the camera period in
        each of its newest answers). Its
        accuracy is the edge model's own (a split's boxes are the unsplit model's,
        :data:`EDGE_SPLIT_MAP_LOSS`); the robot pays its head, encode and radio, and its idle
        power; nothing is billed.
        """
        fig = self.splits.get(option.split)
        if fig is None:
            return None
        series = self.book.get(f'edge:{option.split}')
        measured = series.mean() if series is not None else None
        prior = fig.before_wan_ms * self._lan_slowdown
        latency = prior if measured is None else measured
        p_late = tail_probability(series, deadline_ms, prior_ms=prior)
        if p_late is None:
            return None
        if self._lan_busy(fig, prior if series is None or not len(series) else
                          min(series.newest(RECENT))) and not self._dense(series):
            p_late = 1.0  # in time alone, but every frame would queue behind the last
        p_miss = 1.0 - self.split_answers.up(self.now_s, deadline_ms) * (1.0 - p_late)
        energy = self.energy.joules(fig.robot_ms, fig.payload_bytes, REPLY_BYTES,
                                    self.period_ms)
        accuracy = max(0.0, self.accuracy.edge(option.edge_model, option.edge_imgsz) -
                       fig.map_loss)
        return Estimate(option, p_miss, energy, accuracy, 0.0, latency)

    def _observe_split(self, report: InferenceReport) -> None:
        """Learn from a split request's report, as the JPEG request it stands in for.

        The cloud series holds whole-frame requests: a split answer enters it with its own
        robot time, payload transfer and tail time replaced by the measured JPEG's transfer and
        server time, so one series serves every option. Its payload still measures the link.
        """
        fig = self.splits.get(report.model[len(SPLIT_PREFIX):])
        if fig is not None and not fig.to_cloud:  # the middle device answered: no cloud news
            return
        if report.status == 'failed':
            self.availability.observe(self.now_s, False)
        if report.status != 'ok' or fig is None:
            return
        self.availability.observe(self.now_s, True)
        before = fig.before_wan_ms if fig.spec.three_tier else fig.robot_ms
        self.bandwidth.add(fig.wan_bytes, report.total_ms - before - report.server_ms)
        payload = self.bandwidth.transfer_ms(fig.wan_bytes)
        jpeg = self.bandwidth.transfer_ms(self._reference_bytes(fig))
        server = self.book.quantile('cloud:server', 0.5)
        sample = report.total_ms - before - \
            (payload - jpeg if payload is not None and jpeg is not None else 0.0) - \
            (report.server_ms - server if server is not None else 0.0)
        self.book.add('cloud', sample, self.now_s)
        self.book.add('cloud:queue', report.queue_ms, self.now_s)
        self._queued.append(report.queue_ms)
        self.trend.add(sample)
        self.link_measured()

    def _reference_bytes(self, fig: SplitFigures) -> int:
        """Return the JPEG bytes the cloud series stands for: as sent, else the file's q75."""
        if self._sent:
            return int(sum(self._sent) / len(self._sent))
        return int(fig.jpeg_bytes.get(75, 0))

    def _split_estimate(self, option: Option, deadline_ms: float) -> Estimate | None:
        """Estimate a split option: the cloud series shifted by its robot, bytes and tail times."""
        fig = self.splits.get(option.split)
        if fig is not None and not fig.to_cloud:
            if not (self.availability.fitted or self.availability.recent_failures()):
                return None
            latency = fig.before_wan_ms
            p_miss = 0.0 if latency <= deadline_ms else 1.0
        else:
            found = self._cloud_part(fig, deadline_ms)
            if fig is None or found is None:
                return None
            p_miss, latency = found
        energy = self.energy.joules(fig.robot_ms, fig.payload_bytes, REPLY_BYTES,
                                    self.period_ms)
        accuracy = (1.0 - p_miss) * max(0.0, self.accuracy.cloud_prior - fig.map_loss)
        return Estimate(option, p_miss, energy, accuracy, fig.server_ms / 1e3 * self._price_s,
                        latency)

    def _cloud_part(self, fig: SplitFigures | None,
                    deadline_ms: float) -> tuple[float, float] | None:
        """Return P(miss) and latency of an option whose tail runs in the cloud, if known."""
        series = self.book.get('cloud')
        if fig is None or series is None or not len(series):
            return None
        payload = self.bandwidth.transfer_ms(fig.wan_bytes)
        jpeg = self.bandwidth.transfer_ms(self._reference_bytes(fig))
        if payload is None or jpeg is None:  # bytes are what a split changes: no guessing
            return None
        # Without whole-frame answers the series already holds split answers' server times.
        server = fig.server_ms - self._server if self._server else 0.0
        shift = fig.before_wan_ms + (payload - jpeg) + server + self._worsening()
        late = tail_probability(series, deadline_ms - shift)
        if late is None:
            return None
        return 1.0 - self._avail * (1.0 - late), (self._cloud_median or 0.0) + shift


def _recent(series: SlidingQuantiles) -> float:
    """Return the largest of a series' :data:`RECENT` newest samples (0 without any).

    The LAN is taken as slow as the slowest of them: an answer from before a drop must not
    make a split look in time while the newest say otherwise.
    """
    return max(series.newest(RECENT), default=0.0)


def split_probe_plan(plan: Plan, estimates: list[Estimate], chosen: Estimate) -> Plan:
    """Return an edge ``plan`` on the robot's own model that probes the split it would take.

    That is the edge detector's split of least energy, if it costs less than the ``chosen``
    option: one left in a LAN drop is measured by its probes, and taken again as soon as they
    show the LAN back. A plan that probes nothing, or is on a split, is returned unchanged.
    """
    if plan.route is not Route.EDGE or plan.split or not plan.probe_every:
        return plan
    splits = [e for e in estimates if e.option.route is Route.EDGE and e.option.split]
    if not splits:
        return plan
    cheapest = min(splits, key=lambda e: e.energy_j)
    if cheapest.energy_j >= chosen.energy_j:
        return plan
    return replace(plan, split_probe=cheapest.option.split)


def edge_probe_plan(plan: Plan, estimates: list[Estimate], epsilon: float) -> Plan:
    """Return a cloud ``plan`` whose edge probes run the edge option it would come back to.

    That is the edge-route option in time (P(miss) within ``epsilon``) of least energy, else
    the least late. Only an edge detector's split needs it: a split's latency is learnt from
    its own answers, and without probes the ones of a slow spell (a LAN drop) would hold it off
    for good; a whole edge model is probed as the plan names it.
    """
    edge = [e for e in estimates if e.option.route is Route.EDGE]
    if not edge:
        return plan
    back = min(edge, key=lambda e: (e.p_miss > epsilon, e.p_miss if e.p_miss > epsilon
                                    else e.energy_j)).option
    if not back.split:
        return plan
    return replace(plan, split=back.split, edge_model=back.edge_model,
                   edge_imgsz=back.edge_imgsz)
