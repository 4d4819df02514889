"""The shipped detectors on held-out scenes, through the loaders the graph uses."""

from __future__ import annotations

import json
from pathlib import Path

from adaptive_offload.datatypes import Detection
from adaptive_offload.package_files import shipped_model
import numpy as np
from offload_runtime.model_accuracy import (agreement_calibration, cloud_detector,
                                            confidence_calibration, edge_detector, format_table,
                                            recall, RUNTIME_CLOUD_SCORE, RUNTIME_EDGE_CONF,
                                            score_model)
from offload_runtime.train_cli import CLOUD_FILE, EDGE_FILE
from offload_runtime.train_data import held_out, LabelledFrame
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


def _box(x: float, score: float, name: str = 'box') -> Detection:
    return Detection(x, 0.0, x + 10.0, 10.0, score, name)


def _frame(difficulty: str) -> LabelledFrame:
    return LabelledFrame(np.zeros((4, 4, 3), np.uint8), (), difficulty)


def test_calibration_compares_what_the_graph_publishes() -> None:
    frames = [_frame('easy'), _frame('easy'), _frame('hard')]
    # Below the runtime thresholds a detection is not published, so it cannot agree.
    edge = [[_box(0, 0.9)], [_box(0, 0.9), _box(50, RUNTIME_EDGE_CONF / 2)],
            [_box(0, 0.9), _box(50, 0.9)]]
    cloud = [[_box(0, 0.9)], [_box(0, 0.9)],
             [_box(0, 0.9), _box(50, RUNTIME_CLOUD_SCORE / 2)]]
    edge_map = {'easy': {'map': 80.0}, 'hard': {'map': 20.0}}
    points = agreement_calibration(frames, edge, cloud, edge_map)
    assert points == [[pytest.approx(2 / 3, abs=1e-4), 20.0], [1.0, 80.0]]


def test_confidence_calibration_averages_each_frame_then_the_frames() -> None:
    frames = [_frame('easy'), _frame('easy'), _frame('hard'), _frame('hard')]
    edge = [[_box(0, 0.9), _box(20, 0.7)], [_box(0, 0.6)],
            [_box(0, 0.4), _box(20, RUNTIME_EDGE_CONF / 2)], []]  # unpublished; nothing found
    edge_map = {'easy': {'map': 80.0}, 'hard': {'map': 20.0}}
    points = confidence_calibration(frames, edge, edge_map)
    assert points == [[0.4, 20.0], [pytest.approx(0.7), 80.0]]


def test_calibration_needs_one_detection_list_per_frame() -> None:
    with pytest.raises(ValueError):
        agreement_calibration([_frame('easy')], [], [[]], {'easy': {'map': 1.0}})


def test_shipped_calibration_rises_with_the_edge_accuracy() -> None:
    figures = json.loads(shipped_model('accuracy.json').read_text())['models']
    agreement = figures[Path(EDGE_FILE).stem]['agreement']
    assert agreement['against'] in figures
    assert agreement['edge_conf'] == RUNTIME_EDGE_CONF
    assert agreement['cloud_score'] == RUNTIME_CLOUD_SCORE
    for size, points in agreement['points'].items():
        assert len(points) == len(figures[Path(EDGE_FILE).stem]['sizes'][size]) - 1
        f1s, maps = zip(*points)
        assert list(f1s) == sorted(f1s) and list(maps) == sorted(maps), size
    confidence = figures[Path(EDGE_FILE).stem]['confidence']
    assert confidence['edge_conf'] == RUNTIME_EDGE_CONF
    assert set(confidence['points']) == set(agreement['points'])
