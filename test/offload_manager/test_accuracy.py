"""Accuracy priors of the shipped models: their measured held-out figures."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

from adaptive_offload.errors import ConfigError
from offload_manager import accuracy
from offload_manager.accuracy import measured_priors, prior, PRIORS_MAP, SIZE_EXPONENT
import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def figures_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Point the priors at a figures file of the test's own; the cache is reset around it."""
    path = tmp_path / 'accuracy.json'
    monkeypatch.setattr(accuracy, 'shipped_model', lambda *parts: path)
    measured_priors.cache_clear()
    accuracy.measured_figures.cache_clear()
    yield path
    measured_priors.cache_clear()
    accuracy.measured_figures.cache_clear()


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
