"""Accuracy priors of the shipped models: their measured held-out figures."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Iterator

from adaptive_offload.datatypes import Detection
from adaptive_offload.errors import ConfigError
from offload_manager import accuracy
from offload_manager.accuracy import (AccuracyModel, calibration, measured_priors, prior,
                                      PRIORS_MAP, SIZE_EXPONENT)
import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def figures_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Point the priors at a figures file of the test's own; the cache is reset around it."""
    path = tmp_path / 'accuracy.json'
    monkeypatch.setattr(accuracy, 'shipped_model', lambda *parts: path)
    caches = (measured_priors, accuracy.measured_figures, accuracy.calibrations)
    for cache in caches:
        cache.cache_clear()
    yield path
    for cache in caches:
        cache.cache_clear()


def _write(path: Path, sizes: dict[str, float]) -> None:
    path.write_text(json.dumps({'models': {'tiny-shapes': {'sizes': {
        size: {'all': {'map': m_ap, 'map50': m_ap}} for size, m_ap in sizes.items()}}}}))


def test_shipped_models_have_their_measured_priors() -> None:
    measured_priors.cache_clear()
    shipped = json.loads((ROOT / 'models' / 'accuracy.json').read_text())['models']
    assert {'yolov8n-shapes', 'fasterrcnn_mobilenet_v3_small_fpn'} <= set(shipped)
    edge = shipped['yolov8n-shapes']['sizes']
    for size in ('320', '640'):
        assert prior('yolov8n-shapes', int(size)) == edge[size]['all']['map']
        assert prior('yolov8n-shapes-onnx', int(size)) == edge[size]['all']['map']
    cloud = shipped['fasterrcnn_mobilenet_v3_small_fpn']['sizes']['640']['all']['map']
    assert prior('fasterrcnn_mobilenet_v3_small_fpn') == cloud
    # COCO weights keep the published figures.
    assert prior('yolov8n', 640) == PRIORS_MAP['yolov8n'][0]
    assert prior('fasterrcnn_mobilenet_v3_large_fpn') == 32.8


def test_sizes_between_the_measured_ones_take_the_nearest(figures_file: Path) -> None:
    _write(figures_file, {'320': 40.0, '640': 60.0})
    assert prior('tiny-shapes', 320) == 40.0 and prior('tiny-shapes', 640) == 60.0
    assert prior('tiny-shapes') == 60.0 and prior('tiny-shapes', 1280) == 60.0
    assert prior('tiny-shapes', 480) == pytest.approx(60.0 * (480 / 640) ** SIZE_EXPONENT)
    assert prior('tiny-shapes', 160) == pytest.approx(40.0 * 0.5 ** SIZE_EXPONENT)
    assert prior('unknown-net') == accuracy.UNKNOWN_PRIOR


def test_without_the_file_only_coco_priors_hold(figures_file: Path) -> None:
    assert measured_priors() == {}
    assert prior('yolov8n', 640) == 37.3


def test_a_broken_figures_file_is_a_config_error(figures_file: Path) -> None:
    figures_file.write_text('{"models": {"x": {"sizes": {"320": {}}}}}')
    with pytest.raises(ConfigError, match='measured figures'):
        prior('yolov8n')


def _calibrated(path: Path) -> None:
    path.write_text(json.dumps({'models': {
        'tiny-shapes': {'sizes': {'320': {'all': {'map': 50.0, 'map50': 60.0}}},
                        'agreement': {'against': 'big_rcnn', 'points': {
                            '320': [[0.8, 70.0], [0.4, 20.0], [0.6, 50.0]]}},
                        'confidence': {'points': {'320': [[0.5, 20.0], [0.9, 70.0]]}}},
        'big_rcnn': {'sizes': {'640': {'all': {'map': 60.0, 'map50': 70.0}}}}}}))


def _box(x: float, score: float = 0.9) -> Detection:
    return Detection(x, 0.0, x + 10.0, 10.0, score, 'box')


def _agreeing(share: int, score: float = 0.9) -> tuple[list[Detection], list[Detection]]:
    """Edge and cloud detections whose F1 is ``share`` / 10 (the cloud finds 10 boxes)."""
    cloud = [_box(100.0 * i) for i in range(10)]
    edge = [_box(100.0 * i, score) for i in range(share)] + \
        [_box(5000.0 + 100.0 * i, score) for i in range(10 - share)]
    return edge, cloud


def test_calibration_maps_agreement_to_measured_accuracy(figures_file: Path) -> None:
    _calibrated(figures_file)
    fitted = calibration('tiny-shapes-onnx')
    assert fitted is not None and fitted.against == 'big_rcnn'
    assert fitted.from_agreement(320, 0.5) == pytest.approx(35.0)
    assert fitted.from_agreement(320, 0.7) == pytest.approx(60.0)
    assert fitted.from_agreement(320, 0.1) == 20.0
    assert fitted.from_agreement(320, 0.95) == 70.0
    assert fitted.from_agreement(640, 0.5) is None  # another size's agreement means nothing
    assert fitted.from_confidence(320, 0.7) == pytest.approx(45.0)
    assert fitted.from_confidence(640, 0.7) is None
    assert calibration('yolov8n') is None


def test_calibrated_estimate_follows_the_scene(figures_file: Path) -> None:
    _calibrated(figures_file)
    model = AccuracyModel('big_rcnn')
    assert model.edge('tiny-shapes', 320) == 50.0
    t = 0.0
    for _ in range(40):  # easy scene: the edge agrees on 8 of 10, confident
        t += 0.5
        model.observe('tiny-shapes', 320, *_agreeing(8), t)
    easy = model.edge('tiny-shapes', 320)
    for _ in range(40):  # hard scene: 4 of 10
        t += 0.5
        model.observe('tiny-shapes', 320, *_agreeing(4), t)
    hard = model.edge('tiny-shapes', 320)
    # Measured calibration outweighs the prior (50) after 5 samples.
    assert easy == pytest.approx((40 * 70.0 + 5 * 50.0) / 45, abs=0.5)
    assert hard == pytest.approx((80 * 20.0 + 5 * 50.0) / 85, abs=1.0)
    for _ in range(40):  # its detections' confidence falls from 0.9 to 0.5: 70 -> 20 mAP
        t += 0.5
        model.observe_edge('tiny-shapes', 320, _agreeing(4, score=0.5)[0], t)
    assert model.confidence('tiny-shapes', 320) == pytest.approx(0.5, abs=0.01)
    assert model.edge('tiny-shapes', 320) == pytest.approx(20.0, abs=1.5)
    model.observe_edge('tiny-shapes', 320, [], t + 1.0)  # nothing found: no confidence sample
    assert model.confidence('tiny-shapes', 320) == pytest.approx(0.5, abs=0.01)
    # The same agreement against a cloud model nobody calibrated: agreement x its prior.
    other = AccuracyModel('fasterrcnn_resnet50_fpn_v2')
    for i in range(200):
        other.observe('tiny-shapes', 320, *_agreeing(4), float(i))
    # ... and the prior keeps its 20 samples' worth of weight.
    assert other.edge('tiny-shapes', 320) == pytest.approx((200 * 0.4 * 46.7 + 20 * 50.0) / 220)


def test_the_two_signals_are_averaged_and_agreement_needs_its_cloud(
        figures_file: Path) -> None:
    _calibrated(figures_file)
    for cloud, expected in (('big_rcnn', (70.0 + 20.0) / 2), ('other_rcnn', 20.0)):
        model = AccuracyModel(cloud, calibrated_weight=0.0)
        model.observe('tiny-shapes', 320, *_agreeing(8), 0.0)  # agreement 0.8: 70
        model.observe_edge('tiny-shapes', 320, _agreeing(8, score=0.5)[0], 0.0)  # 0.5: 20
        assert model.edge('tiny-shapes', 320) == pytest.approx(expected), cloud


def test_agreement_forgets_at_the_same_pace_however_often_it_is_sampled() -> None:
    sparse, dense = AccuracyModel('big_rcnn'), AccuracyModel('big_rcnn')
    for model, step, count in ((sparse, 1.0, 4), (dense, 0.1, 40)):
        model.observe('yolov8n', 640, *_agreeing(10), 0.0)
        for i in range(1, count + 1):
            model.observe('yolov8n', 640, *_agreeing(0), i * step)
    # 4 s of disagreement after full agreement, one time constant: e^-1 left of it either way.
    assert sparse.agreement('yolov8n', 640) == pytest.approx(math.exp(-1.0), rel=0.02)
    assert dense.agreement('yolov8n', 640) == pytest.approx(math.exp(-1.0), rel=0.02)
    assert sparse.agreement('yolov8n', 320) is None


def test_a_broken_calibration_is_a_config_error(figures_file: Path) -> None:
    figures_file.write_text('{"models": {"x": {"sizes": {}, "agreement": {"points": {}}}}}')
    with pytest.raises(ConfigError, match='accuracy calibration'):
        calibration('x')
