"""What the adaptive policies know: latency, link, availability and accuracy, from reports.

One :class:`Observations` is fed by every worker report, published detections and frame
record, and answers the questions a policy asks of an option (route, edge model and size,
JPEG quality): how likely it misses the deadline, what it costs the robot in energy, how
accurate it is, what the cloud charges.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

from adaptive_offload.datatypes import DetectionSet, FrameRecord, InferenceReport, Route
from adaptive_offload.uplink import UplinkEstimator
from offload_manager.accuracy import AccuracyModel
from offload_manager.availability import AvailabilityPredictor
from offload_manager.frame_outcomes import NO_RESULT
from offload_manager.jpeg_sizes import jpeg_factor, sent_quality
from offload_manager.latency_models import ArForecaster, LatencyBook, tail_probability

REPLY_BYTES = 2048  # a detection reply: a few hundred bytes of JSON or protobuf per box
EDGE_WINDOW = 20  # edge answers and unanswered edge frames the edge's availability counts
# An edge that has not answered for SILENT_FACTOR times its slowest recent answer (plus
# SILENT_MARGIN_S) is stuck, not busy: a busy edge still finishes the frame it has begun.
SILENT_FACTOR = 2.0
SILENT_MARGIN_S = 0.25
QUEUE_RECENT = 3  # newest server-reported queue waits averaged for the service's load now
LINK_CHANGE_RUN = 3  # newest uplink rates, all far beyond the older ones, that mark a new link
LINK_FIT_WINDOW = 60  # requests the fixed part of a request's time is fitted over


class EnergyModelLike(Protocol):
    """What the policies need of an energy model (``offload_manager.energy.EnergyModel``)."""

    def joules(self, compute_ms: float, bytes_sent: int, bytes_received: int,
               period_ms: float) -> float:
        """Energy of one frame: its work, and idle power over ``period_ms``, J."""


@dataclass(frozen=True)
class Option:
    """One way to process the next frames."""

    route: Route
    edge_model: str
    edge_imgsz: int
    jpeg_quality: int
    split: str = ''  # on the split route: the split option's name

    @property
    def key(self) -> str:
        """Short label, e.g. ``hedged yolov8n@320 q75`` or ``split <arch@imgsz:point:enc>``."""
        if self.split:
            return f'{self.route.value} {self.split}'
        return f'{self.route.value} {self.edge_model}@{self.edge_imgsz} q{self.jpeg_quality}'


class Estimate(NamedTuple):
    """What an option is expected to give, per frame (a tuple: plans build many of them)."""

    option: Option
    p_miss: float
    energy_j: float
    accuracy: float
    cost_usd: float
    latency_ms: float


class Observations:
    """Everything measured so far, and the per-option estimates derived from it.

    Args:
        energy: Energy model of the robot.
        cloud_model: Name of the cloud model (accuracy prior).
        gpu_price_per_hour: Cloud price, USD per GPU-hour.
        edge_profile_ms: Inference times from the device profile (``model@imgsz`` -> ms), used
            until the option has been measured.
        window: Samples kept per latency series.
        max_age_s: Oldest latency sample that still counts (the newest 20 always do), so
            figures fed only by occasional probes do not keep a fault in mind for minutes.
        shift_run: Newest samples all beyond the older ones' tail that mark a regime change
            (see :class:`offload_manager.latency_models.SlidingQuantiles`).

    The uplink estimate detects change points (:data:`LINK_CHANGE_RUN` rates) and fits the
    fixed part of a request's time (``adaptive_offload.uplink``). At a change point the
    cloud latency series keeps only its newest :data:`LINK_CHANGE_RUN` samples (those of the
    new link), so its quantiles follow the link at once instead of when a window flushes.
    """

    def __init__(self, energy: EnergyModelLike, cloud_model: str = 'fasterrcnn_resnet50_fpn_v2',
                 gpu_price_per_hour: float = 0.0,
                 edge_profile_ms: dict[str, float] | None = None, window: int = 200,
                 max_age_s: float = 30.0, shift_run: int = 5) -> None:
        self.energy = energy
        self.book = LatencyBook(window, max_age_s, shift_run)
        self.bandwidth = UplinkEstimator(change_run=LINK_CHANGE_RUN,
                                         fit_window=LINK_FIT_WINDOW)
        self.trend = ArForecaster()
        self.availability = AvailabilityPredictor()
        self.accuracy = AccuracyModel(cloud_model)
        self._price_s = gpu_price_per_hour / 3600.0
        self._profile = dict(edge_profile_ms or {})
        self._bytes: deque[float] = deque(maxlen=50)  # at quality 75
        self._sent: deque[int] = deque(maxlen=50)  # as sent: what the latency samples carried
        self._queued: deque[float] = deque(maxlen=QUEUE_RECENT)  # newest server queue waits
        self._encode: deque[float] = deque(maxlen=50)  # robot ms to encode a cloud request
        self._edge_dets: dict[int, DetectionSet] = {}
        self._cloud_dets: dict[int, DetectionSet] = {}
        self._edge_meta: dict[int, tuple[str, int]] = {}  # stamp -> (model, imgsz)
        self._stamps: deque[int] = deque(maxlen=50)  # of frame records: the camera's rate
        # Whether the edge answers: True for each edge result, False for each frame routed to
        # the edge that ended with no answer nor report. A stopped edge node sends no report
        # at all, so its latency figures alone would keep promising answers that never come.
        self._edge_answers: deque[bool] = deque(maxlen=EDGE_WINDOW)
        self._edge_up = 1.0
        self._edge_waiting_s: float | None = None  # first unanswered drop since an answer
        self._edge_recent_ms: deque[float] = deque(maxlen=5)
        self.now_s = 0.0
        self.prepare()
        self.quality = 75  # of the plan's cloud requests, probes included
        # Of the requests last sent at another size for the uplink fit (size_spread), and how
        # many requests that sent bytes ended since the last of them.
        self.spread_quality: int | None = None
        self.since_spread = 0

    def observe_report(self, report: InferenceReport, now_ns: int | None = None) -> None:
        """Learn from a worker report (its samples are timed at the last plan, :attr:`now_s`).

        Args:
            report: The report.
            now_ns: When it came; None if unknown.
        """
        if report.source == 'cloud':
            if report.encode_ms > 0:  # spent whether or not the request then succeeded
                self._encode.append(report.encode_ms)
            if report.status == 'ok':
                quality = self._sent_at(report)
                if quality == self.quality:  # one at the spread size measures the link alone
                    self.book.add('cloud', report.total_ms, self.now_s)
                    self.trend.add(report.total_ms)
                    self._sent.append(report.bytes_sent)
                self.book.add('cloud:server', report.server_ms, self.now_s)
                self.book.add('cloud:queue', report.queue_ms, self.now_s)
                self._queued.append(report.queue_ms)
                self.bandwidth.add_report(report)
                self.link_measured()
                self._bytes.append(report.bytes_sent / jpeg_factor(quality))
                self.availability.observe(self.now_s, True)
            elif report.status == 'failed':
                self._sent_at(report)
                self.availability.observe(self.now_s, False)
        elif report.status == 'ok' and report.model:
            self._edge_answers.append(True)
            self._edge_waiting_s = None
            self._edge_recent_ms.append(report.total_ms)
            # A split's answer is timed by the manager from the frame's arrival: its own route.
            series = f'edge:{report.split}' if report.split else \
                f'edge:{report.model}@{report.imgsz}'
            self.book.add(series, report.total_ms, self.now_s)
            self._edge_meta[report.stamp_ns] = (report.model, report.imgsz)
            _bound(self._edge_meta)
            self._confide(report.stamp_ns)
            self._pair(report.stamp_ns)

    def _sent_at(self, report: InferenceReport) -> int:
        """Return the quality a cloud request went at: the plan's or the spread one.

        Counts it in :attr:`since_spread`, unless it sent nothing (refused): that cost nothing.
        One at the spread size is left out of the cloud latency series and trend: its larger
        (or smaller) transfer is no news of the plan's JPEGs, and taking it off would need
        the rate that it is sent to measure.
        """
        q75 = sum(self._bytes) / len(self._bytes) if self._bytes else 0.0
        quality = sent_quality(report.bytes_sent, q75, self.quality, self.spread_quality)
        if quality != self.quality:
            self.since_spread = 0
        elif report.bytes_sent > 0:
            self.since_spread += 1
        return quality

    def link_measured(self) -> None:
        """After a request was added to the uplink estimate: follow a change point at once.

        The trend forecaster forgets the old link too: fitted across the step it would
        forecast the step as a trend.
        """
        if self.bandwidth.changed:
            self.book.keep_newest('cloud', LINK_CHANGE_RUN)
            self.trend.keep_newest(LINK_CHANGE_RUN)

    def observe_detections(self, dets: DetectionSet) -> None:
        """Pair edge and cloud results of the same frame into accuracy samples."""
        table = self._cloud_dets if dets.source == 'cloud' else self._edge_dets
        table[dets.stamp_ns] = dets
        _bound(table)
        if dets.source != 'cloud':
            self._confide(dets.stamp_ns)
        self._pair(dets.stamp_ns)

    def _confide(self, stamp_ns: int) -> None:
        """Once an edge frame has its detections and its model, take their confidence."""
        if stamp_ns in self._edge_dets and stamp_ns in self._edge_meta:
            model, imgsz = self._edge_meta[stamp_ns]
            self.accuracy.observe_edge(model, imgsz, self._edge_dets[stamp_ns].detections,
                                       self.now_s)

    def _pair(self, stamp_ns: int) -> None:
        """Once a frame has edge and cloud detections and the edge's model, score agreement."""
        if stamp_ns in self._edge_dets and stamp_ns in self._cloud_dets and \
                stamp_ns in self._edge_meta:
            model, imgsz = self._edge_meta.pop(stamp_ns)
            self.accuracy.observe(model, imgsz, self._edge_dets.pop(stamp_ns).detections,
                                  self._cloud_dets.pop(stamp_ns).detections, self.now_s)

    def observe_record(self, record: FrameRecord) -> None:
        """Frame outcomes: their stamps give the frame rate and show an edge that stopped."""
        self._stamps.append(record.stamp_ns)
        # A frame nobody answered or reported on counts against the edge. One the edge dropped
        # under load (superseded, busy) counts only while the edge is silent: a busy edge's
        # load shows in its latency, but a stuck one supersedes every frame and answers none.
        if record.route != Route.EDGE.value or record.result_source:
            return
        if record.drop_reason == NO_RESULT:
            self._edge_answers.append(False)
        elif self._edge_waiting_s is None:
            self._edge_waiting_s = self.now_s
        elif self.edge_silent():
            self._edge_answers.append(False)

    def edge_silent(self) -> bool:
        """Whether the edge has dropped frames, and answered none, for far longer than it takes.

        The quiet counts from the first such drop, not from the edge's last answer: an edge
        that no frame is routed to is not silent.
        """
        if self._edge_waiting_s is None or not self._edge_recent_ms:
            return False
        quiet_s = SILENT_FACTOR * max(self._edge_recent_ms) / 1e3 + SILENT_MARGIN_S
        return self.now_s - self._edge_waiting_s > quiet_s

    def frame_rate(self) -> float:
        """Frames per second over the newest frame records; 0 before two have come."""
        if len(self._stamps) < 2:
            return 0.0
        span_ns = max(self._stamps) - min(self._stamps)
        return (len(self._stamps) - 1) * 1e9 / span_ns if span_ns > 0 else 0.0

    def health(self, cloud_error: bool) -> None:
        """Return the health monitor's view of the cloud."""
        self.availability.health(cloud_error)

    def prepare(self) -> None:
        """Compute what every option's estimate shares, once per plan (keeps plans cheap)."""
        self.book.expire(self.now_s)
        self._avail = self.availability.predict(self.now_s)
        answers = self._edge_answers
        self._edge_up = sum(answers) / len(answers) if answers else 1.0
        self._server = self.book.quantile('cloud:server', 0.5) or 0.0
        self._shifts: dict[int, float] = {}
        self._edge_cache: dict[tuple[str, int, float], tuple[float, float, float] | None] = {}
        self._cloud_cache: dict[tuple[int, float], tuple[float, float, int] | None] = {}
        self._bytes_mean = sum(self._bytes) / len(self._bytes) if self._bytes else 0.0
        self._sent_mean = sum(self._sent) / len(self._sent) if self._sent else 0.0
        self._encode_ms = sum(self._encode) / len(self._encode) if self._encode else 0.0
        self._cloud_median = self.book.quantile('cloud', 0.5)
        # The answers of the window waited a median of `queued` in the shared service's queue;
        # the newest wait `recent`. A fleet loading the service shows here before the window's
        # latencies move, and apart from the network.
        queued = self.book.quantile('cloud:queue', 0.5)
        recent = sum(self._queued) / len(self._queued) if self._queued else 0.0
        self._queue_rise = max(0.0, recent - queued) if queued is not None else 0.0
        self._cost = self._server / 1e3 * self._price_s
        # Every option's frame draws idle power over the camera period, as a reader measures.
        rate = self.frame_rate()
        self.period_ms = 1e3 / rate if rate > 0 else 0.0

    def _edge(self, model: str, imgsz: int) -> tuple[float, Any] | None:
        """(mean ms, series or None) of an edge option: measured, else the profile figure."""
        series = self.book.get(f'edge:{model}@{imgsz}')
        mean = series.mean() if series is not None else None
        if mean is not None:
            return mean, series
        known = self._profile.get(f'{model}@{imgsz}')
        if known is None and '-' in model:  # as DeviceProfile.inference_time_ms: the arch's
            known = self._profile.get(f'{model.split("-", 1)[0]}@{imgsz}')
        return (known, None) if known is not None else None

    def _shift(self, quality: int) -> float:
        """How much later cloud answers come at ``quality`` than measured: bytes and trend."""
        if quality not in self._shifts:
            shift = 0.0
            nbytes = self.bytes_at(quality)
            at_quality = self.bandwidth.transfer_ms(nbytes) if nbytes else None
            measured = self.bandwidth.transfer_ms(int(self._sent_mean))
            if at_quality is not None and measured is not None:
                shift += at_quality - measured
            shift += self._worsening()
            self._shifts[quality] = shift
        return self._shifts[quality]

    def _worsening(self) -> float:
        """How much later than the series the next answers come: the trend or the queue."""
        median = self._cloud_median or 0.0
        ahead = self.trend.forecast(steps=5)
        # Worsening (the latency trend, or the service's queue): shift ahead of it, as far as
        # whichever sees it further (both see one cause; adding them would count it twice).
        return max(0.0, self._queue_rise, ahead - median if ahead is not None else 0.0)

    def cloud_late(self, quality: int, deadline_ms: float) -> float | None:
        """P(a cloud answer at ``quality`` is later than the deadline); None if unmeasured."""
        series = self.book.get('cloud')
        if series is None or not len(series):
            return None
        return tail_probability(series, deadline_ms - self._shift(quality))

    def bytes_at(self, quality: int) -> int:
        """Return the expected request size at ``quality`` as of :meth:`prepare` (0 at first)."""
        return int(self._bytes_mean * jpeg_factor(quality))

    def _edge_stats(self, model: str, imgsz: int,
                    deadline_ms: float) -> tuple[float, float, float] | None:
        """(mean ms, P(miss), accuracy) of an edge option, cached for this plan."""
        key = (model, imgsz, deadline_ms)
        if key not in self._edge_cache:
            edge = self._edge(model, imgsz)
            if edge is None:
                self._edge_cache[key] = None
            else:
                mean, series = edge
                p_late = tail_probability(series, deadline_ms, prior_ms=mean)
                # None only without samples and with a profile figure <= 0: no estimate then.
                self._edge_cache[key] = None if p_late is None else (
                    mean, 1.0 - self._edge_up * (1.0 - p_late), self.accuracy.edge(model, imgsz))
        return self._edge_cache[key]

    def _cloud_stats(self, quality: int, deadline_ms: float) -> tuple[float, float, int] | None:
        """(median ms, P(late or failed), request bytes) at ``quality``, cached for this plan."""
        key = (quality, deadline_ms)
        if key not in self._cloud_cache:
            late = self.cloud_late(quality, deadline_ms)
            self._cloud_cache[key] = None if late is None else (
                (self._cloud_median or 0.0) + self._shift(quality),
                1.0 - self._avail * (1.0 - late), self.bytes_at(quality))
        return self._cloud_cache[key]

    def estimate(self, option: Option, deadline_ms: float) -> Estimate | None:
        """Estimate miss probability, energy, accuracy and cost of ``option``; None if unknown.

        Call :meth:`prepare` first (once per plan). Hedged frames miss only when both the
        cloud (late or failed) and the edge miss; the two are taken as independent.
        """
        route = option.route
        edge_ms, p_edge, edge_acc = 0.0, 1.0, 0.0
        if route is not Route.CLOUD:
            edge = self._edge_stats(option.edge_model, option.edge_imgsz, deadline_ms)
            if edge is None:
                return None
            edge_ms, p_edge, edge_acc = edge
        if route is Route.EDGE:
            energy = self.energy.joules(edge_ms, 0, 0, self.period_ms)
            return Estimate(option, p_edge, energy, edge_acc, 0.0, edge_ms)
        cloud = self._cloud_stats(option.jpeg_quality, deadline_ms)
        if cloud is None:
            return None
        cloud_ms, p_cloud, nbytes = cloud
        # The robot encodes what goes out; on the hedged route it runs its edge model too.
        energy = self.energy.joules(edge_ms + self._encode_ms, nbytes, REPLY_BYTES,
                                    self.period_ms)
        cloud_ok = 1.0 - p_cloud
        cost = self._cost
        if route is Route.CLOUD:
            return Estimate(option, p_cloud, energy, cloud_ok * self.accuracy.cloud_prior, cost,
                            cloud_ms)
        accuracy = cloud_ok * self.accuracy.cloud_prior + (1 - cloud_ok) * edge_acc
        latency = min(edge_ms, cloud_ms) if cloud_ok > 0.5 else edge_ms
        return Estimate(option, p_edge * p_cloud, energy, accuracy, cost, latency)


def _bound(table: dict[Any, Any], size: int = 64) -> None:
    """Forget the oldest entries: partners that never came."""
    while len(table) > size:
        table.pop(next(iter(table)))
