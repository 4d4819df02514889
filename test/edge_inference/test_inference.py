"""The edge core: parameters set at runtime reach the next frame."""

from __future__ import annotations

from adaptive_offload.conversions import frame_to_message, MessageTypes
from adaptive_offload.datatypes import Decision
from adaptive_offload.errors import ConfigError
from edge_inference.inference import build_edge, EdgeConfig
from helpers import FakeBackend
import numpy as np
import pytest


class RecordingBackend(FakeBackend):
    """Also keeps the thresholds of every inference."""

    def __init__(self) -> None:
        super().__init__()
        self.thresholds: list[tuple[float, float, int]] = []

    def infer(self, image, imgsz, conf, iou, classes, max_det):  # type: ignore[no-untyped-def]
        self.thresholds.append((conf, iou, max_det))
        return super().infer(image, imgsz, conf, iou, classes, max_det)


def test_live_parameters_reach_the_next_frame(types: MessageTypes) -> None:
    backend = RecordingBackend()
    edge = build_edge(EdgeConfig.from_params({'model': 'n.pt', 'imgsz': 320}),
                      lambda name, options: backend)
    msg = frame_to_message(types, np.zeros((32, 32, 3), np.uint8), 1, 'cam', 'bgr8')
    no_size = Decision(edge_model='n', edge_imgsz=0)
    edge.process(msg, no_size)
    config = edge.reconfigure({'conf': 0.6, 'iou': 0.5, 'max_det': 7, 'imgsz': 160})
    assert config.imgsz == 160 and config.fallback_decision().edge_imgsz == 160
    edge.process(msg, no_size)
    assert backend.thresholds[-2:] == [(0.25, 0.7, 100), (0.6, 0.5, 7)]
    assert [size for _, size in backend.calls[-2:]] == [320, 160]


def test_what_needs_a_reload_is_not_applied_at_runtime(types: MessageTypes) -> None:
    backend = RecordingBackend()
    edge = build_edge(EdgeConfig.from_params({'model': 'n.pt'}), lambda name, options: backend)
    with pytest.raises(ConfigError, match='read on configure'):
        edge.reconfigure({'model': 'other.pt', 'conf': 0.5})
    with pytest.raises(ConfigError, match='out of range'):
        edge.reconfigure({'conf': 1.5})
    assert edge.config.model == 'n.pt' and edge.config.conf == 0.25
