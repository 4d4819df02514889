"""Held-out accuracy of the shipped detectors, per input size and scene difficulty.

Each model runs through the loading path the graph uses (the ultralytics edge backend, the
service's :class:`rcnn_service.rcnn_detector.RcnnDetector`) on test-split frames (seeds no
model saw) and is scored by COCO mAP (faster-coco-eval, via
:class:`offload_runtime.ground_truth.MapScorer`) at a near-zero score threshold, as COCO tables
are measured. The figures, in percent, are what ``models/accuracy.json`` holds and what the
manager's accuracy priors read for these models.

Beside them, the calibrations: on the same frames and at the thresholds the running graph
publishes with, the edge's mean F1 against the cloud, and the mean confidence of the edge's
detections, each next to the edge's measured mAP, per difficulty. They are how the manager
turns what it observes online into an accuracy estimate for the shipped models; without them,
agreement times the cloud's prior moves far less than the edge's accuracy does
(docs/models.md).
"""

from __future__ import annotations

import importlib.metadata
from pathlib import Path
from typing import Any, Callable, Sequence

from adaptive_offload.datatypes import Detection
from adaptive_offload.scene_difficulty import PRESETS
from offload_manager.accuracy import agreement_f1
from offload_runtime.ground_truth import MapScorer, score_frame
from offload_runtime.train_data import held_out, LabelledFrame

Detect = Callable[[LabelledFrame], Sequence[Detection]]
EDGE_CONF = 0.001
CLOUD_SCORE = 0.01
MAX_DET = 100
CLOUD_SIZE = 640  # the compact R-CNN's input: the camera's 640x480, not downscaled
# What the running graph publishes with (edge ``conf`` and the service's ``score_threshold``
# defaults): agreement is calibrated on the detections the manager actually compares.
RUNTIME_EDGE_CONF = 0.25
RUNTIME_CLOUD_SCORE = 0.5


def edge_detector(weights: Path, imgsz: int, conf: float = EDGE_CONF) -> Detect:
    """Return the edge model at ``imgsz`` as a frame -> detections function.

    Raises:
        BackendError: If the weights do not load.
    """
    from edge_inference.backends import create_backend
    from edge_inference.detector import BackendOptions

    backend = create_backend('ultralytics', BackendOptions(str(weights), 'cpu'))
    return lambda frame: backend.infer(frame.image, imgsz, conf, 0.7, None, MAX_DET)


def cloud_detector(checkpoint: Path, score: float = CLOUD_SCORE) -> Detect:
    """Return the shipped cloud model as a frame -> detections function.

    Raises:
        BackendError: If the checkpoint does not load.
    """
    from rcnn_service.compact_rcnn import COMPACT_ARCH
    from rcnn_service.rcnn_detector import RcnnDetector

    detector = RcnnDetector(COMPACT_ARCH, str(checkpoint), score_threshold=score)

    def detect(frame: LabelledFrame) -> tuple[Detection, ...]:
        found = detector.detect([frame.image])[0]
        return tuple(Detection(float(b[0]), float(b[1]), float(b[2]), float(b[3]), float(s),
                               label)
                     for b, s, label in zip(found.boxes, found.scores, found.labels))

    return detect


def score_model(detect: Detect, frames: Sequence[LabelledFrame]) -> dict[str, dict[str, float]]:
    """Return ``{difficulty or 'all': {'map', 'map50'}}`` in percent over ``frames``."""
    return score_detections(frames, [detect(frame) for frame in frames])


def score_detections(frames: Sequence[LabelledFrame], found: Sequence[Sequence[Detection]]
                     ) -> dict[str, dict[str, float]]:
    """Return ``{difficulty or 'all': {'map', 'map50'}}`` in percent of ``found`` per frame."""
    scorer = MapScorer()
    for frame, dets in zip(frames, found, strict=True):
        scorer.add(frame.truth, dets, (frame.difficulty,))
    return {group: {'map': round(100 * m, 1), 'map50': round(100 * m50, 1)}
            for group, (m, m50) in scorer.mean_aps().items()}


def agreement_calibration(frames: Sequence[LabelledFrame], edge: Sequence[Sequence[Detection]],
                          cloud: Sequence[Sequence[Detection]],
                          edge_map: dict[str, dict[str, float]]) -> list[list[float]]:
    """Return ``[[mean edge/cloud F1, edge mAP], ...]`` per difficulty, sorted by F1.

    Args:
        frames: The held-out frames.
        edge: The edge's detections of each frame (any confidence; filtered here).
        cloud: The cloud's detections of each frame (any score; filtered here).
        edge_map: The edge's scores of these frames (:func:`score_detections`).

    Returns:
        One point per difficulty: the mean per-frame F1 of the edge's detections at
        :data:`RUNTIME_EDGE_CONF` against the cloud's at :data:`RUNTIME_CLOUD_SCORE`, and the
        edge's mAP on those frames.
    """
    f1s: dict[str, list[float]] = {}
    for frame, mine, theirs in zip(frames, edge, cloud, strict=True):
        f1s.setdefault(frame.difficulty, []).append(agreement_f1(
            [d for d in mine if d.score >= RUNTIME_EDGE_CONF],
            [d for d in theirs if d.score >= RUNTIME_CLOUD_SCORE]))
    return sorted([round(sum(values) / len(values), 4), edge_map[name]['map']]
                  for name, values in f1s.items())


def recall(detect: Detect, frames: Sequence[LabelledFrame]) -> float:
    """Share of the true boxes found (IoU >= 0.5, same class) over ``frames``."""
    scores = [score_frame(f.truth, detect(f)) for f in frames]
    truths = sum(s.truths for s in scores)
    return sum(s.matched for s in scores) / truths if truths else 1.0


def confidence_calibration(frames: Sequence[LabelledFrame], edge: Sequence[Sequence[Detection]],
                           edge_map: dict[str, dict[str, float]]) -> list[list[float]]:
    """Return ``[[mean confidence, edge mAP], ...]`` per difficulty, sorted by confidence.

    Args:
        frames: The held-out frames.
        edge: The edge's detections of each frame (any confidence; filtered here).
        edge_map: The edge's scores of these frames (:func:`score_detections`).

    Returns:
        One point per difficulty: the mean, over frames with a detection at
        :data:`RUNTIME_EDGE_CONF` or above, of those detections' mean confidence (what the
        manager averages online), and the edge's mAP on the frames.
    """
    means: dict[str, list[float]] = {}
    for frame, found in zip(frames, edge, strict=True):
        scores = [d.score for d in found if d.score >= RUNTIME_EDGE_CONF]
        if scores:
            means.setdefault(frame.difficulty, []).append(sum(scores) / len(scores))
    return sorted([round(sum(values) / len(values), 4), edge_map[name]['map']]
                  for name, values in means.items())


def measure_models(edge: Path, cloud: Path, edge_sizes: Sequence[int], frames: int,
                   seed: int, threads: int, log: Callable[[str], None]) -> dict[str, Any]:
    """Measure both shipped models on ``frames`` held-out frames of each difficulty.

    Args:
        edge: The edge model's weights.
        cloud: The cloud model's checkpoint.
        edge_sizes: Edge input sizes to measure.
        frames: Held-out frames per difficulty.
        seed: Which held-out frames.
        threads: torch threads.
        log: Receives progress lines.

    Returns:
        The figures as ``models/accuracy.json`` holds them.
    """
    import torch
    from rcnn_service.compact_rcnn import COMPACT_ARCH

    torch.set_num_threads(threads)
    test = [f for name in PRESETS for f in held_out(name, frames, seed)]
    log(f'measuring {cloud.name} at {CLOUD_SIZE} on {len(test)} held-out frames')
    detect_cloud = cloud_detector(cloud)
    cloud_found = [detect_cloud(frame) for frame in test]
    sizes: dict[str, Any] = {}
    points: dict[str, Any] = {}
    confidence: dict[str, Any] = {}
    for imgsz in edge_sizes:
        log(f'measuring {edge.name} at {imgsz} on {len(test)} held-out frames')
        detect_edge = edge_detector(edge, imgsz)
        edge_found = [detect_edge(frame) for frame in test]
        sizes[str(imgsz)] = score_detections(test, edge_found)
        points[str(imgsz)] = agreement_calibration(test, edge_found, cloud_found,
                                                   sizes[str(imgsz)])
        confidence[str(imgsz)] = confidence_calibration(test, edge_found, sizes[str(imgsz)])
    models: dict[str, Any] = {edge.stem: {
        'role': 'edge', 'file': edge.name, 'arch': 'yolov8n', 'sizes': sizes,
        'agreement': {'against': COMPACT_ARCH, 'edge_conf': RUNTIME_EDGE_CONF,
                      'cloud_score': RUNTIME_CLOUD_SCORE, 'points': points},
        'confidence': {'edge_conf': RUNTIME_EDGE_CONF, 'points': confidence}}}
    models[COMPACT_ARCH] = {'role': 'cloud', 'file': cloud.name, 'arch': COMPACT_ARCH,
                            'sizes': {str(CLOUD_SIZE): score_detections(test, cloud_found)}}
    return {'metric': 'COCO mAP@[.5:.95] and mAP@.5, percent (faster-coco-eval '
                      f'{importlib.metadata.version("faster-coco-eval")})',
            'held_out': {'frames_per_difficulty': frames, 'seed': seed,
                         'difficulties': list(PRESETS)},
            'models': models}


def format_table(figures: dict[str, Any]) -> str:
    """Return the figures as a Markdown table (one row per model and input size)."""
    names = [*figures['held_out']['difficulties'], 'all']
    lines = ['| model | role | input | ' + ' | '.join(f'{n} mAP (mAP50)' for n in names) + ' |',
             '|---|---|---|' + '---|' * len(names)]
    for model, entry in figures['models'].items():
        for size, groups in entry['sizes'].items():
            cells = [f'{groups[n]["map"]:.1f} ({groups[n]["map50"]:.1f})' if n in groups
                     else '-' for n in names]
            lines.append(f'| {model} | {entry["role"]} | {size} | ' + ' | '.join(cells) + ' |')
    return '\n'.join(lines)
