"""Accuracy of each model: a published prior, corrected online by edge/cloud agreement.

Priors are COCO val2017 box mAP@[.5:.95] at the input size the publisher measured:
- YOLOv8 n/s/m: 37.3 / 44.9 / 50.2 at 640 (Ultralytics YOLOv8 model table, docs.ultralytics.com
  /models/yolov8).
- torchvision detection weights (pytorch.org/vision/stable/models.html, "Object Detection"):
  Faster R-CNN ResNet-50 FPN v2 46.7, ResNet-50 FPN 37.0, MobileNetV3-Large FPN 32.8,
  MobileNetV3-Large 320 FPN 22.8; Mask R-CNN ResNet-50 FPN 37.9 (box).

Nobody publishes YOLOv8 at other input sizes, so a smaller input is discounted by
``(imgsz / published) ** SIZE_EXPONENT``, an assumption stated here and corrected online: on
frames where both ran, the edge's F1 against the cloud (IoU >= 0.5, same class) times the
cloud model's prior estimates the edge model's accuracy, blended with the prior as agreement
samples accumulate.

The models the package ships (trained on the sample scenes by ``adaptive-offload train``) have
no COCO figure: their priors are the held-out mAP measured on those scenes at each input size,
read from the packaged ``models/accuracy.json`` (``adaptive-offload train measure``).

Agreement times the cloud's prior barely moves when the scene gets harder, since the cloud
misses the same small, crowded objects the edge does (measured: 5-14 % of the edge's swing). For
the shipped edge model the same file holds calibrations measured on easy, medium and hard
frames: its mean F1 against the shipped cloud model, and the mean confidence of its published
detections, each next to its measured mAP. Online, each signal is mapped through its points
(piecewise linear, held at the ends) and the two are averaged; being measured, they outweigh
the prior sooner. Confidence comes with every edge frame, agreement only with the frames both
sides ran. Each signal is a time-based EWMA, so it forgets a scene at about the same pace
however often frames come.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
import functools
import json
import math
from typing import Any, Iterable, Mapping, Sequence

from adaptive_offload.datatypes import Detection
from adaptive_offload.errors import ConfigError
from adaptive_offload.package_files import shipped_model

PRIORS_MAP: dict[str, tuple[float, int]] = {
    'yolov8n': (37.3, 640), 'yolov8s': (44.9, 640), 'yolov8m': (50.2, 640),
    'fasterrcnn_resnet50_fpn_v2': (46.7, 800), 'fasterrcnn_resnet50_fpn': (37.0, 800),
    'fasterrcnn_mobilenet_v3_large_fpn': (32.8, 800),
    'fasterrcnn_mobilenet_v3_large_320_fpn': (22.8, 320),
    'maskrcnn_resnet50_fpn': (37.9, 800),
}
SIZE_EXPONENT = 0.5
UNKNOWN_PRIOR = 30.0  # a model we have no figure for: middling, left to the agreement to fix


Points = tuple[tuple[float, float], ...]


def _through(points: Points, x: float) -> float:
    """Piecewise-linear ``points`` (sorted by x) at ``x``, held at the end points."""
    if x <= points[0][0]:
        return points[0][1]
    for (x_lo, y_lo), (x_hi, y_hi) in zip(points, points[1:]):
        if x <= x_hi:
            share = (x - x_lo) / (x_hi - x_lo) if x_hi > x_lo else 1.0
            return y_lo + share * (y_hi - y_lo)
    return points[-1][1]


@dataclass(frozen=True)
class Calibration:
    """Measured edge accuracy as a function of what the manager observes online.

    Attributes:
        against: The cloud model the agreement was measured against.
        agreement: ``(mean F1 against that cloud model, edge mAP)`` per input size, by F1.
        confidence: ``(mean confidence of a frame's published detections, edge mAP)`` per
            input size, by confidence.
    """

    against: str
    agreement: Mapping[int, Points]
    confidence: Mapping[int, Points]

    def from_agreement(self, imgsz: int, f1: float) -> float | None:
        """Return the edge mAP that agreement ``f1`` means at ``imgsz``; None if not measured.

        Only a measured size counts: agreement at another input size says nothing of these.
        """
        points = self.agreement.get(imgsz)
        return _through(points, f1) if points else None

    def from_confidence(self, imgsz: int, confidence: float) -> float | None:
        """Return the edge mAP that mean ``confidence`` means at ``imgsz``; None if unmeasured."""
        points = self.confidence.get(imgsz)
        return _through(points, confidence) if points else None

    def confidence_at(self, imgsz: int, m_ap: float) -> float | None:
        """Return the mean confidence measured with edge mAP ``m_ap`` at ``imgsz`` (for sims)."""
        points = self.confidence.get(imgsz)
        return _through(tuple(sorted((m, c) for c, m in points)), m_ap) if points else None


def _family(model: str, names: Iterable[str]) -> str | None:
    """Return the longest of ``names`` that ``model`` starts with (``yolov8n-onnx``: yolov8n)."""
    return next((name for name in sorted(names, key=len, reverse=True)
                 if model.startswith(name)), None)


def prior(model: str, imgsz: int = 0) -> float:
    """Prior accuracy (mAP, 0-100) of ``model`` at ``imgsz`` (0: the published size).

    Model names may carry a backend suffix (``yolov8n-onnx``); the family prefix is used. A
    shipped model's measured figures win over a COCO family whose name is a shorter prefix.
    """
    measured = measured_priors()
    base = _family(model, {*PRIORS_MAP, *measured})
    if base is None:
        return UNKNOWN_PRIOR
    if base in measured:
        by_size = measured[base]
        size = (min(by_size, key=lambda s: (abs(s - imgsz), -s)) if imgsz
                else max(by_size))
        m_ap = by_size[size]
    else:
        m_ap, size = PRIORS_MAP[base]
    if imgsz and imgsz < size:
        m_ap *= (imgsz / size) ** SIZE_EXPONENT
    return m_ap


@functools.lru_cache(maxsize=1)
def measured_priors() -> Mapping[str, Mapping[int, float]]:
    """Return the shipped models' held-out mAP (0-100) by input size; empty without the file.

    Raises:
        ConfigError: If the file exists but does not hold the figures.
    """
    figures = measured_figures()
    try:
        return {name: {size: groups['all'] for size, groups in sizes.items()}
                for name, sizes in figures.items()}
    except KeyError as err:
        raise ConfigError(f'{shipped_model("accuracy.json")}: not the measured figures of the '
                          f'shipped models (no {err} group)') from err


@functools.lru_cache(maxsize=1)
def measured_figures() -> Mapping[str, Mapping[int, Mapping[str, float]]]:
    """Return the shipped models' held-out mAP (0-100) by input size and scene difficulty.

    The groups are ``all`` and the difficulty presets (``easy``, ``medium``, ``hard``); empty
    without the file.

    Raises:
        ConfigError: If the file exists but does not hold the figures.
    """
    path = shipped_model('accuracy.json')
    try:
        text = path.read_text()
    except OSError:
        return {}  # an install without the shipped models: COCO priors and the default hold
    try:
        figures: Any = json.loads(text)
        return {name: {int(size): {group: float(value['map']) for group, value in groups.items()}
                       for size, groups in entry['sizes'].items()}
                for name, entry in figures['models'].items()}
    except (ValueError, KeyError, TypeError, AttributeError) as err:
        raise ConfigError(f'{path}: not the measured figures of the shipped models ({err!r})') \
            from err


@functools.lru_cache(maxsize=1)
def calibrations() -> Mapping[str, Calibration]:
    """Return the shipped edge models' calibrations; empty without the file.

    Raises:
        ConfigError: If the file exists but a calibration in it is malformed.
    """
    path = shipped_model('accuracy.json')
    try:
        text = path.read_text()
    except OSError:
        return {}

    def curves(entry: Any) -> dict[int, Points]:
        return {int(size): tuple(sorted((float(x), float(m_ap)) for x, m_ap in points))
                for size, points in entry['points'].items()}

    try:
        models: Any = json.loads(text)['models']
        return {name: Calibration(str(entry['agreement']['against']),
                                  curves(entry['agreement']), curves(entry['confidence']))
                for name, entry in models.items()
                if 'agreement' in entry or 'confidence' in entry}
    except (ValueError, KeyError, TypeError, AttributeError) as err:
        raise ConfigError(f'{path}: not a valid accuracy calibration ({err!r})') from err


def calibration(model: str) -> Calibration | None:
    """Return the calibration of edge ``model`` (names match by prefix), if one was measured."""
    found = calibrations()
    base = _family(model, found)
    return None if base is None else found[base]


def agreement_f1(edge: Sequence[Detection], cloud: Sequence[Detection],
                 iou_threshold: float = 0.5) -> float:
    """F1 of ``edge`` against ``cloud`` as reference (greedy IoU matching, same class).

    Both empty counts as full agreement.
    """
    if not edge and not cloud:
        return 1.0
    pairs = sorted(((e.iou(c), i, j) for i, e in enumerate(edge) for j, c in enumerate(cloud)
                    if e.class_name == c.class_name), reverse=True)
    used_e: set[int] = set()
    used_c: set[int] = set()
    for iou, i, j in pairs:
        if iou < iou_threshold:
            break
        if i not in used_e and j not in used_c:
            used_e.add(i)
            used_c.add(j)
    matched = len(used_e)
    return 2 * matched / (len(edge) + len(cloud))


class _TimedMean:
    """EWMA per key whose factor grows with the time since the key's last sample."""

    def __init__(self, time_constant_s: float, min_smoothing: float) -> None:
        self._tau = time_constant_s
        self._min_alpha = min_smoothing
        self.value: dict[str, float] = {}
        self.samples: dict[str, int] = defaultdict(int)
        self._last_s: dict[str, float] = {}

    def add(self, key: str, x: float, t_s: float) -> None:
        old = self.value.get(key)
        if old is None:
            self.value[key] = x
        else:
            gap_s = max(0.0, t_s - self._last_s[key])
            alpha = max(self._min_alpha, 1.0 - math.exp(-gap_s / self._tau))
            self.value[key] = old + alpha * (x - old)
        self._last_s[key] = t_s
        self.samples[key] += 1


class AccuracyModel:
    """Accuracy per ``model@imgsz``: prior blended with what is observed as samples come in.

    Two signals, each smoothed over time: the edge's agreement with the cloud on frames both
    ran, and the mean confidence of the edge's published detections on every frame. Where the
    edge model has a measured calibration, each maps to an mAP and the estimate is their mean;
    otherwise agreement times the cloud's prior is the only signal.

    Args:
        cloud_model: The cloud model (its prior scales agreement into mAP).
        prior_weight: How many agreement samples the prior is worth.
        calibrated_weight: The same where a measured calibration maps agreement to mAP.
        time_constant_s: How fast the signals forget (EWMA over time).
        min_smoothing: Least EWMA factor of one sample, so that one compared at the same
            instant as the last still counts.
    """

    def __init__(self, cloud_model: str, prior_weight: float = 20.0,
                 calibrated_weight: float = 5.0, time_constant_s: float = 4.0,
                 min_smoothing: float = 0.01) -> None:
        self.cloud_model = cloud_model
        self.cloud_prior = prior(cloud_model)
        self._k = prior_weight
        self._k_calibrated = calibrated_weight
        self._agreement = _TimedMean(time_constant_s, min_smoothing)
        self._confidence = _TimedMean(time_constant_s, min_smoothing)
        # Priors and calibrations come from fixed tables: each is looked up once per model.
        self._priors: dict[tuple[str, int], float] = {}
        self._fitted: dict[str, Calibration | None] = {}
        # Estimates and the sample count hold until the next sample comes.
        self._estimates: dict[tuple[str, int], float] = {}
        self._samples: int | None = None

    def observe(self, model: str, imgsz: int, edge: Sequence[Detection],
                cloud: Sequence[Detection], t_s: float = 0.0) -> float:
        """Record one frame both ran on, compared at ``t_s`` (seconds); returns its F1."""
        f1 = agreement_f1(edge, cloud)
        self._agreement.add(f'{model}@{imgsz}', f1, t_s)
        self._estimates.clear()
        self._samples = None
        return f1

    def observe_edge(self, model: str, imgsz: int, edge: Sequence[Detection],
                     t_s: float = 0.0) -> None:
        """Record the edge's published detections of one frame (a frame without any: none)."""
        if edge:
            self._confidence.add(f'{model}@{imgsz}', sum(d.score for d in edge) / len(edge),
                                 t_s)
            self._estimates.clear()

    def agreement(self, model: str, imgsz: int) -> float | None:
        """Smoothed edge/cloud F1 of the edge model at ``imgsz``; None before any sample."""
        return self._agreement.value.get(f'{model}@{imgsz}')

    def confidence(self, model: str, imgsz: int) -> float | None:
        """Smoothed mean confidence of the edge model at ``imgsz``; None before any sample."""
        return self._confidence.value.get(f'{model}@{imgsz}')

    @property
    def samples(self) -> int:
        """Agreement samples taken so far, every edge model together."""
        if self._samples is None:
            self._samples = sum(self._agreement.samples.values())
        return self._samples

    def edge(self, model: str, imgsz: int) -> float:
        """Estimated accuracy (mAP, 0-100) of the edge model at ``imgsz``."""
        found = self._estimates.get((model, imgsz))
        if found is None:
            found = self._estimates[model, imgsz] = self._estimate(model, imgsz)
        return found

    def _estimate(self, model: str, imgsz: int) -> float:
        """Compute :meth:`edge` from the prior and the samples taken so far."""
        key = f'{model}@{imgsz}'
        base = self._priors.get((model, imgsz))
        if base is None:
            base = self._priors[model, imgsz] = prior(model, imgsz)
        if model not in self._fitted:
            self._fitted[model] = calibration(model)
        fitted = self._fitted[model]
        found: list[float] = []
        n = 0
        agreement = self._agreement.value.get(key)
        confidence = self._confidence.value.get(key)
        if fitted and agreement is not None and self.cloud_model.startswith(fitted.against):
            mapped = fitted.from_agreement(imgsz, agreement)
            if mapped is not None:
                found.append(mapped)
                n += self._agreement.samples[key]
        if fitted and confidence is not None:
            mapped = fitted.from_confidence(imgsz, confidence)
            if mapped is not None:
                found.append(mapped)
                n += self._confidence.samples[key]
        if found:
            observed, k = sum(found) / len(found), self._k_calibrated
        elif agreement is not None:
            observed, k = agreement * self.cloud_prior, self._k
            n = self._agreement.samples[key]
        else:
            return base
        weight = n / (n + k)
        return (1 - weight) * base + weight * observed
