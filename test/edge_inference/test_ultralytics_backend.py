"""The ultralytics backend, offline, on the random-weight yolov8n architecture."""

from __future__ import annotations

import os
from pathlib import Path
import socket
from typing import Any

from adaptive_offload.errors import BackendError, ConfigError
from edge_inference.backends import create_backend
from edge_inference.detector import BackendOptions, class_indices
import numpy as np
import pytest


@pytest.fixture(scope='module')
def yolo(yolo_config_dir: str) -> Any:
    return create_backend('ultralytics', BackendOptions('yolov8n.yaml', 'cpu', yolo_config_dir))


def test_untrained_coco_architecture_gets_coco_names(yolo: Any) -> None:
    assert len(yolo.names) == 80 and yolo.names[0] == 'person' and yolo.names[2] == 'car'


def test_detections_are_in_the_original_pixel_frame(yolo: Any) -> None:
    """Keep boxes inside the original (non-square, not network-sized) image.

    Random weights give low-confidence boxes; with conf 0 they exist, and must not be in the
    letterboxed input's frame.
    """
    image = np.random.default_rng(1).integers(0, 255, (90, 250, 3), np.uint8)
    dets = yolo.infer(image, 160, 0.0, 0.7, None, 50)
    assert 0 < len(dets) <= 50
    for det in dets:
        assert 0 <= det.x1 <= det.x2 <= 250 and 0 <= det.y1 <= det.y2 <= 90
        assert 0.0 <= det.score <= 1.0 and det.class_name in yolo.names.values()
    assert any(det.x2 > 160 for det in dets)  # boxes reach beyond the network's 160 px


def test_class_filter_keeps_only_those_classes(yolo: Any) -> None:
    image = np.random.default_rng(2).integers(0, 255, (96, 128, 3), np.uint8)
    keep = class_indices(yolo.names, 'person, car')
    assert keep == (0, 2)
    dets = yolo.infer(image, 128, 0.0, 0.7, keep, 100)
    assert dets and {d.class_name for d in dets} <= {'person', 'car'}


def test_missing_weights_fail_without_touching_the_network(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, yolo_config_dir: str) -> None:
    def no_network(*args: object, **kwargs: object) -> None:
        raise AssertionError('network access attempted')

    monkeypatch.setattr(socket.socket, 'connect', no_network)
    with pytest.raises(BackendError, match='not found'):
        create_backend('ultralytics',
                       BackendOptions(str(tmp_path / 'yolov8n.pt'), 'cpu', yolo_config_dir))
    assert os.environ['YOLO_OFFLINE'] == '1'
    assert (Path(yolo_config_dir) / 'Arial.ttf').stat().st_size > 10_000


def test_unavailable_device_and_backend_are_clear_errors(yolo_config_dir: str) -> None:
    import torch

    if not torch.cuda.is_available():
        with pytest.raises(BackendError, match='CUDA is not available'):
            create_backend('ultralytics',
                           BackendOptions('yolov8n.yaml', 'cuda:0', yolo_config_dir))
    with pytest.raises(BackendError, match='unknown device'):
        create_backend('ultralytics', BackendOptions('yolov8n.yaml', 'tpu', yolo_config_dir))
    with pytest.raises(ConfigError, match='unknown backend'):
        create_backend('tensorrt-maybe', BackendOptions('yolov8n.yaml'))
