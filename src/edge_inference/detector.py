"""What a detector backend is: how one is built and what a loaded one answers.

Kept apart from the registry (:mod:`edge_inference.backends`), which imports the backends,
so that the backends can import these without a cycle.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from adaptive_offload.datatypes import Detection
from adaptive_offload.errors import ConfigError
import numpy as np


@dataclass(frozen=True)
class BackendOptions:
    """How to build a backend.

    Attributes:
        model: Weights path (``yolov8n.pt``, a user file) or model config (``yolov8n.yaml``:
            the architecture with random weights, for tests and benchmarks).
        device: ``cpu``, ``cuda``, ``cuda:N`` or ``mps``.
        config_dir: Folder for the backend's own settings; empty picks a per-user folder.
    """

    model: str
    device: str = 'cpu'
    config_dir: str = ''


class DetectorBackend(Protocol):
    """A loaded detector."""

    @property
    def names(self) -> dict[int, str]:
        """Class index to class name."""

    def infer(self, image: np.ndarray, imgsz: int, conf: float, iou: float,
              classes: tuple[int, ...] | None, max_det: int) -> tuple[Detection, ...]:
        """Detect objects in one BGR image.

        Args:
            image: HxWx3 uint8 BGR image.
            imgsz: Network input size (longest side, letterboxed).
            conf: Minimum confidence.
            iou: NMS IoU threshold.
            classes: Class indices to keep; None keeps all.
            max_det: Most detections returned.

        Returns:
            Detections in pixels of ``image``.
        """


def class_indices(names: dict[int, str], wanted: str) -> tuple[int, ...] | None:
    """Map a comma-separated list of class names (or indices) to indices; empty keeps all.

    Raises:
        ConfigError: For a class the model does not know.
    """
    items = [w.strip() for w in wanted.split(',') if w.strip()]
    if not items:
        return None
    by_name = {v: k for k, v in names.items()}
    out = []
    for item in items:
        if item in by_name:
            out.append(by_name[item])
        elif item.isdigit() and int(item) in names:
            out.append(int(item))
        else:
            raise ConfigError(f"class {item!r} is not one of the model's classes")
    return tuple(out)
