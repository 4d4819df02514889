"""What the adaptive policies know: latency, link, availability and accuracy, from reports.

One :class:`Observations` is fed by every worker report, published detections and frame
record, and answers the questions a policy asks of an option (route, edge model and size,
JPEG quality): how likely it misses the deadline, what it costs the robot in energy, how
accurate it is, what the cloud charges.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from adaptive_offload.types import DetectionSet, FrameRecord, InferenceReport, Route
from offload_manager.accuracy import AccuracyModel
from offload_manager.availability import AvailabilityPredictor
from offload_manager.models import ArForecaster, BandwidthEstimator, LatencyBook

# JPEG bytes relative to quality 75, measured on 640x480 frames by benchmarks/bench_service.py
# (q50 13.7 %, q75 20.1 %, q95 39.1 % of raw); other qualities interpolate.
JPEG_SIZE = {50: 0.68, 75: 1.0, 95: 1.95}
REPLY_BYTES = 2048  # a detection reply: a few hundred bytes of JSON or protobuf per box


class EnergyModelLike(Protocol):
    """What the policies need of an energy model (``offload_manager.energy.EnergyModel``)."""

    def frame(self, edge_ms: float, bytes_sent: int, bytes_received: int,
              wait_ms: float) -> Any:
        """Energy of one frame; the result has ``joules``."""


@dataclass(frozen=True)
class Option:
    """One way to process the next frames."""

    route: Route
    edge_model: str
    edge_imgsz: int
    jpeg_quality: int

    @property
    def key(self) -> str:
        """Short label, e.g. ``hedged yolov8n@320 q75``."""
        return f'{self.route.value} {self.edge_model}@{self.edge_imgsz} q{self.jpeg_quality}'


@dataclass(frozen=True)
class Estimate:
    """What an option is expected to give, per frame."""

    option: Option
    p_miss: float
    energy_j: float
    accuracy: float
    cost_usd: float
    latency_ms: float


def jpeg_factor(quality: int) -> float:
    """Bytes at ``quality`` relative to quality 75 (see :data:`JPEG_SIZE`)."""
    qs = sorted(JPEG_SIZE)
    return float(np.interp(quality, qs, [JPEG_SIZE[q] for q in qs]))


class Observations:
    """Everything measured so far, and the per-option estimates derived from it.

    Args:
        energy: Energy model of the robot.
        cloud_model: Name of the cloud model (accuracy prior).
        gpu_price_per_hour: Cloud price, USD per GPU-hour.
        edge_profile_ms: Inference times from the device profile (``model@imgsz`` -> ms), used
            until the option has been measured.
        window: Samples kept per latency series.
    """

    def __init__(self, energy: EnergyModelLike, cloud_model: str = 'fasterrcnn_resnet50_fpn_v2',
                 gpu_price_per_hour: float = 0.0,
                 edge_profile_ms: dict[str, float] | None = None, window: int = 200) -> None:
        self.energy = energy
        self.book = LatencyBook(window)
        self.bandwidth = BandwidthEstimator()
        self.trend = ArForecaster()
        self.availability = AvailabilityPredictor()
        self.accuracy = AccuracyModel(cloud_model)
        self._price_s = gpu_price_per_hour / 3600.0
        self._profile = dict(edge_profile_ms or {})
        self._bytes: deque[float] = deque(maxlen=50)  # at quality 75
        self._edge_dets: dict[int, DetectionSet] = {}
        self._cloud_dets: dict[int, DetectionSet] = {}
        self._edge_meta: dict[int, tuple[str, int]] = {}  # stamp -> (model, imgsz)
        self.now_s = 0.0
        self.last_cloud_s: float | None = None
        self.quality = 75

    def observe_report(self, report: InferenceReport) -> None:
        """Learn from a worker report."""
        if report.source == 'cloud':
            if report.status == 'ok':
                self.book.add('cloud', report.total_ms)
                self.book.add('cloud:server', report.server_ms)
                self.trend.add(report.total_ms)
                transfer = report.inference_ms - report.server_ms
                self.bandwidth.add(report.bytes_sent, transfer)
                self._bytes.append(report.bytes_sent / jpeg_factor(self.quality))
                self.availability.observe(self.now_s, True)
                self.last_cloud_s = self.now_s
            elif report.status == 'failed':
                self.availability.observe(self.now_s, False)
                self.last_cloud_s = self.now_s
        elif report.status == 'ok' and report.model:
            self.book.add(f'edge:{report.model}@{report.imgsz}', report.total_ms)
            self._edge_meta[report.stamp_ns] = (report.model, report.imgsz)
            _bound(self._edge_meta)
            self._pair(report.stamp_ns)

    def observe_detections(self, dets: DetectionSet) -> None:
        """Pair edge and cloud results of the same frame into accuracy agreement samples."""
        table = self._cloud_dets if dets.source == 'cloud' else self._edge_dets
        table[dets.stamp_ns] = dets
        _bound(table)
        self._pair(dets.stamp_ns)

    def _pair(self, stamp_ns: int) -> None:
        """Once a frame has edge and cloud detections and the edge's model, score agreement."""
        if stamp_ns in self._edge_dets and stamp_ns in self._cloud_dets and \
                stamp_ns in self._edge_meta:
            model, imgsz = self._edge_meta.pop(stamp_ns)
            self.accuracy.observe(model, imgsz, self._edge_dets.pop(stamp_ns).detections,
                                  self._cloud_dets.pop(stamp_ns).detections)

    def observe_record(self, record: FrameRecord) -> None:
        """Frame outcomes (policies that learn from rewards read them themselves)."""

    def health(self, cloud_error: bool) -> None:
        """The health monitor's view of the cloud."""
        self.availability.health(cloud_error)

    def edge_samples(self, model: str, imgsz: int) -> list[float]:
        """Measured edge latencies of ``model@imgsz``, or the profile figure, or nothing."""
        series = self.book.get(f'edge:{model}@{imgsz}')
        if series is not None and len(series):
            return series.samples()
        known = self._profile.get(f'{model}@{imgsz}')
        return [known] if known is not None else []

    def cloud_samples(self, quality: int) -> list[float]:
        """Cloud latencies adjusted to ``quality``'s bytes and to the forecast trend."""
        series = self.book.get('cloud')
        if series is None or not len(series):
            return []
        samples = np.asarray(series.samples())
        nbytes = self.bytes_at(quality)
        if nbytes and self._bytes and self.bandwidth.mbps:
            now_bytes = float(np.mean(self._bytes)) * jpeg_factor(self.quality)
            samples = samples + (self.bandwidth.transfer_ms(nbytes) -
                                 self.bandwidth.transfer_ms(int(now_bytes)))
        ahead = self.trend.forecast(steps=5)
        median = float(np.median(samples))
        if ahead is not None and ahead > median:  # worsening: shift ahead of it
            samples = samples + (ahead - median)
        return list(samples)

    def bytes_at(self, quality: int) -> int:
        """Expected request size at ``quality``; 0 before any request."""
        return int(np.mean(self._bytes) * jpeg_factor(quality)) if self._bytes else 0

    def estimate(self, option: Option, deadline_ms: float) -> Estimate | None:
        """Expected miss probability, energy, accuracy and cost of ``option``; None if unknown.

        Hedged frames miss only when both the cloud (late or failed) and the edge miss; the two
        are taken as independent.
        """
        edge = self.edge_samples(option.edge_model, option.edge_imgsz)
        uses_edge = option.route in (Route.EDGE, Route.HEDGED)
        uses_cloud = option.route in (Route.CLOUD, Route.HEDGED)
        if uses_edge and not edge:
            return None
        cloud = self.cloud_samples(option.jpeg_quality) if uses_cloud else []
        if uses_cloud and not cloud:
            return None
        p_edge = _exceed(edge, deadline_ms) if uses_edge else 1.0
        available = self.availability.predict(self.now_s)
        p_cloud = 1.0 - available * (1.0 - _exceed(cloud, deadline_ms)) if uses_cloud else 1.0
        edge_ms = float(np.mean(edge)) if uses_edge else 0.0
        cloud_ms = float(np.median(cloud)) if uses_cloud else 0.0
        nbytes = self.bytes_at(option.jpeg_quality) if uses_cloud else 0
        wait = max(0.0, cloud_ms - edge_ms) if uses_cloud else 0.0
        energy = self.energy.frame(edge_ms, nbytes, REPLY_BYTES if uses_cloud else 0,
                                   wait).joules
        edge_acc = self.accuracy.edge(option.edge_model, option.edge_imgsz)
        cloud_ok = 1.0 - p_cloud
        if option.route is Route.EDGE:
            accuracy = edge_acc
        elif option.route is Route.CLOUD:
            accuracy = cloud_ok * self.accuracy.cloud_prior
        else:
            accuracy = cloud_ok * self.accuracy.cloud_prior + (1 - cloud_ok) * edge_acc
        server = self.book.quantile('cloud:server', 0.5) or 0.0
        cost = server / 1e3 * self._price_s if uses_cloud else 0.0
        latency = cloud_ms if option.route is Route.CLOUD else (
            min(edge_ms, cloud_ms) if option.route is Route.HEDGED and cloud_ok > 0.5
            else edge_ms)
        p_miss = p_edge * p_cloud if option.route is Route.HEDGED else (
            p_edge if option.route is Route.EDGE else p_cloud)
        return Estimate(option, p_miss, energy, accuracy, cost, latency)


def _bound(table: dict[Any, Any], size: int = 64) -> None:
    """Forget the oldest entries: partners that never came."""
    while len(table) > size:
        table.pop(next(iter(table)))


def _exceed(samples: list[float], threshold: float) -> float:
    """P(X > threshold) from samples, with add-one smoothing so few samples are not certain."""
    over = sum(1 for s in samples if s > threshold)
    return (over + 0.5) / (len(samples) + 1.0) if len(samples) < 20 else over / len(samples)
