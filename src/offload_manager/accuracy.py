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
"""

from __future__ import annotations

from collections import defaultdict
import functools
import json
from typing import Any, Mapping, Sequence

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


def prior(model: str, imgsz: int = 0) -> float:
    """Prior accuracy (mAP, 0-100) of ``model`` at ``imgsz`` (0: the published size).

    Model names may carry a backend suffix (``yolov8n-onnx``); the family prefix is used. A
    shipped model's measured figures win over a COCO family whose name is a shorter prefix.
    """
    measured = measured_priors()
    base = next((name for name in sorted({*PRIORS_MAP, *measured}, key=len, reverse=True)
                 if model.startswith(name)), None)
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


class AccuracyModel:
    """Accuracy per ``model@imgsz``: prior blended with agreement as samples come in.

    Args:
        cloud_model: The cloud model (its prior scales agreement into mAP).
        prior_weight: How many agreement samples the prior is worth.
        smoothing: EWMA factor of the agreement (so it follows scene changes).
    """

    def __init__(self, cloud_model: str, prior_weight: float = 20.0,
                 smoothing: float = 0.05) -> None:
        self.cloud_prior = prior(cloud_model)
        self._k = prior_weight
        self._alpha = smoothing
        self._agreement: dict[str, float] = {}
        self._samples: dict[str, int] = defaultdict(int)

    def observe(self, model: str, imgsz: int, edge: Sequence[Detection],
                cloud: Sequence[Detection]) -> float:
        """Record one frame both ran on; returns its F1."""
        key = f'{model}@{imgsz}'
        f1 = agreement_f1(edge, cloud)
        old = self._agreement.get(key)
        self._agreement[key] = f1 if old is None else old + self._alpha * (f1 - old)
        self._samples[key] += 1
        return f1

    @property
    def samples(self) -> int:
        """Agreement samples taken so far, every edge model together."""
        return sum(self._samples.values())

    def edge(self, model: str, imgsz: int) -> float:
        """Estimated accuracy (mAP, 0-100) of the edge model at ``imgsz``."""
        key = f'{model}@{imgsz}'
        base = prior(model, imgsz)
        n = self._samples.get(key, 0)
        if not n:
            return base
        observed = self._agreement[key] * self.cloud_prior
        weight = n / (n + self._k)
        return (1 - weight) * base + weight * observed
