"""The shipped detectors on held-out scenes, through the loaders the graph uses."""

from __future__ import annotations

from pathlib import Path

from adaptive_offload.package_files import shipped_model
from offload_runtime.model_accuracy import (cloud_detector, edge_detector, format_table, recall,
                                            score_model)
from offload_runtime.train_cli import CLOUD_FILE, EDGE_FILE
from offload_runtime.train_data import held_out
import pytest

SHIPPED_LIMIT_BYTES = 25_000_000
EASY_RECALL_FLOOR = 0.8  # at the deployed score threshold (params.yaml conf 0.25), IoU 0.5


@pytest.fixture(autouse=True)
def _offline_yolo(yolo_config_dir: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv('YOLO_CONFIG_DIR', yolo_config_dir)


def test_shipped_files_fit_the_size_limit() -> None:
    files = [f for f in shipped_model().iterdir() if f.is_file()]
    assert {EDGE_FILE, CLOUD_FILE, 'accuracy.json'} <= {f.name for f in files}
    assert sum(f.stat().st_size for f in files) <= SHIPPED_LIMIT_BYTES


def test_shipped_edge_model_finds_the_objects_of_an_easy_scene() -> None:
    detect = edge_detector(shipped_model(EDGE_FILE), 320, conf=0.25)
    assert recall(detect, held_out('easy', 10, seed=1)) >= EASY_RECALL_FLOOR


def test_shipped_cloud_model_beats_the_edge_at_320_on_hard_scenes() -> None:
    frames = held_out('hard', 10, seed=1)
    edge = score_model(edge_detector(shipped_model(EDGE_FILE), 320), frames)
    cloud = score_model(cloud_detector(shipped_model(CLOUD_FILE)), frames)
    assert cloud['hard']['map'] > edge['hard']['map'] + 5.0
    assert cloud['hard']['map50'] > edge['hard']['map50']


def test_table_has_a_row_per_model_and_size(tmp_path: Path) -> None:
    figures = {'held_out': {'difficulties': ['easy', 'hard']}, 'models': {
        'e': {'role': 'edge', 'sizes': {'320': {'easy': {'map': 50.0, 'map50': 80.0}},
                                        '640': {'hard': {'map': 5.25, 'map50': 9.0}}}}}}
    table = format_table(figures).splitlines()
    assert table[0].startswith('| model | role | input | easy mAP (mAP50) | hard')
    assert table[2] == '| e | edge | 320 | 50.0 (80.0) | - | - |'
    assert table[3] == '| e | edge | 640 | - | 5.2 (9.0) | - |'
