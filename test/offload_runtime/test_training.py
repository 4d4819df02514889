"""Training the shipped detectors: generated frames, and the train command on a tiny budget."""

from __future__ import annotations

import os
from pathlib import Path

from adaptive_offload.errors import ConfigError
from edge_inference.backends import create_backend
from edge_inference.detector import BackendOptions
import numpy as np
from offload_runtime.cli import main
from offload_runtime.train_data import CLASSES, held_out, split_frames, write_yolo_dataset
from offload_runtime.training import CLOUD_CATEGORIES
import pytest
from rcnn_service.compact_rcnn import COMPACT_ARCH
from rcnn_service.rcnn_detector import RcnnDetector
import torch


def test_frames_are_deterministic_and_the_splits_differ() -> None:
    first, again = list(split_frames('train', 7, seed=3)), list(split_frames('train', 7, seed=3))
    assert len(first) == 7
    assert all(np.array_equal(a.image, b.image) and a.truth == b.truth
               for a, b in zip(first, again))
    test = list(split_frames('test', 7, seed=3))
    assert not any(np.array_equal(a.image, b.image) for a, b in zip(first, test))
    assert {d.class_name for f in first for d in f.truth} <= set(CLASSES)
    hard = held_out('hard', 3)
    assert {f.difficulty for f in hard} == {'hard'} and all(f.truth for f in hard)


def test_unknown_split_or_difficulty_is_refused() -> None:
    with pytest.raises(ConfigError, match='split'):
        list(split_frames('holdout', 1))
    with pytest.raises(ConfigError, match='difficulty'):
        list(split_frames('train', 1, mix={'brutal': 1.0}))


def test_yolo_dataset_labels_are_normalised_boxes(tmp_path: Path) -> None:
    frames = list(split_frames('val', 2))
    config = write_yolo_dataset(tmp_path, {'train': frames, 'val': frames[:1]})
    assert 'names:\n  0: box\n  1: disc\n  2: triangle\n' in config.read_text()
    rows = [line.split() for line in (tmp_path / 'labels' / 'train' / '000000.txt')
            .read_text().splitlines()]
    assert len(rows) == len(frames[0].truth)
    assert all(0 <= int(r[0]) < 3 and all(0 <= float(v) <= 1 for v in r[1:]) for r in rows)
    assert len(list((tmp_path / 'images' / 'val').glob('*.png'))) == 1


def test_train_on_a_tiny_budget_writes_models_the_real_loaders_take(
        tmp_path: Path, yolo_config_dir: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv('YOLO_CONFIG_DIR', yolo_config_dir)
    edge, cloud = tmp_path / 'edge.pt', tmp_path / 'cloud.pt'
    assert main(['train', 'edge', '--out', str(edge), '--frames', '8', '--val-frames', '2',
                 '--epochs', '1', '--batch', '4', '--imgsz', '96']) == 0
    assert main(['train', 'cloud', '--out', str(cloud), '--steps', '2', '--batch', '1']) == 0
    backend = create_backend('ultralytics', BackendOptions(str(edge), 'cpu', yolo_config_dir))
    assert backend.names == dict(enumerate(CLASSES))
    frame = next(split_frames('test', 1))
    assert isinstance(backend.infer(frame.image, 96, 0.25, 0.7, None, 10), tuple)
    saved = torch.load(cloud, weights_only=True)
    assert saved['arch'] == COMPACT_ARCH and saved['categories'] == list(CLOUD_CATEGORIES)
    assert all(v.dtype == torch.float16 for v in saved['state_dict'].values()
               if v.is_floating_point())
    detector = RcnnDetector(COMPACT_ARCH, str(cloud), score_threshold=0.0)
    assert detector.categories == list(CLOUD_CATEGORIES)
    found = detector.detect([frame.image])[0]
    assert set(found.labels) <= set(CLASSES)
    assert 'YOLO_CONFIG_DIR' in os.environ


def test_bad_training_options_exit_with_a_usage_error(tmp_path: Path) -> None:
    assert main(['train', 'edge', '--out', str(tmp_path / 'e.pt'), '--imgsz', '100']) == 2
    assert main(['train', 'cloud', '--out', str(tmp_path / 'c.pt'), '--steps', '0']) == 2
    assert main(['train', 'edge', '--out', str(tmp_path / 'e.pt'), '--scale', '1.5']) == 2
