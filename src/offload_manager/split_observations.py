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
"""

from __future__ import annotations

from typing import Mapping

from adaptive_offload.datatypes import InferenceReport, Route
from adaptive_offload.split_option import SPLIT_PREFIX
from offload_manager.latency_models import tail_probability
from offload_manager.observations import (EnergyModelLike, Estimate, Observations, Option,
                                          REPLY_BYTES)
from offload_manager.split_figures import SplitFigures


class SplitObservations(Observations):
    """:class:`Observations` with split options.

    Args:
        energy: Energy model of the robot.
        splits: Figures of the split options, by name.
        **kwargs: As :class:`Observations`.
    """

    def __init__(self, energy: EnergyModelLike, splits: Mapping[str, SplitFigures],
                 **kwargs: object) -> None:
        super().__init__(energy, **kwargs)  # type: ignore[arg-type]
        self.splits = dict(splits)

    def observe_report(self, report: InferenceReport) -> None:
        """Learn from a worker report; a split request's as the JPEG request it stands for."""
        if report.source == 'cloud' and report.model.startswith(SPLIT_PREFIX):
            self._observe_split(report)
        else:
            super().observe_report(report)

    def estimate(self, option: Option, deadline_ms: float) -> Estimate | None:
        """See :meth:`Observations.estimate`; split options as the module says."""
        if option.route is Route.SPLIT:
            return self._split_estimate(option, deadline_ms)
        return super().estimate(option, deadline_ms)

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
