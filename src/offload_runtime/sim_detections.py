"""Synthetic detections of a simulated source: what share of the objects its accuracy finds."""

from __future__ import annotations

import random

from adaptive_offload.datatypes import Detection, DetectionSet
from offload_manager.accuracy import calibration


def synthetic_detections(rng: random.Random, stamp: int, source: str, model: str, acc: float,
                         objects: int, imgsz: int = 0) -> DetectionSet:
    """Return what ``source`` finds on the frame of ``stamp`` at accuracy ``acc``.

    Each of the frame's ``objects`` boxes is found with a probability that grows with the
    accuracy, so that edge/cloud agreement behaves as the accuracies say.

    Args:
        rng: The frame's draws for this source (common random numbers across policies).
        stamp: The frame's stamp.
        source: ``edge`` or ``cloud``.
        model: The model that ran.
        acc: Its mAP on the scene of the moment, 0-100.
        objects: Ground-truth boxes per frame.
        imgsz: The edge model's input size (its confidence calibration's).
    """
    recall = min(0.95, acc / 50.0)
    # A model with a measured confidence calibration is as confident as it measured at this
    # accuracy, so the manager reads the scene from confidence as it would live.
    fitted = calibration(model) if source == 'edge' else None
    score = (fitted.confidence_at(imgsz, acc) if fitted else None) or 0.8
    dets = tuple(Detection(x1=40.0 * k, y1=10.0, x2=40.0 * k + 30.0, y2=60.0, score=score,
                           class_name='object') for k in range(objects)
                 if rng.random() < recall)
    return DetectionSet(stamp, 'camera', source, dets, model)
