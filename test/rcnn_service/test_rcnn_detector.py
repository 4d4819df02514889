"""RcnnDetector's checkpoints: the shipped format, plain torchvision state_dicts, refusals."""

from __future__ import annotations

from pathlib import Path

from adaptive_offload.errors import BackendError, ConfigError
import pytest
from rcnn_service.compact_rcnn import COMPACT_ARCH, fasterrcnn_mobilenet_v3_small_fpn
from rcnn_service.rcnn_detector import coco_categories, RcnnDetector
import torch

SHAPES = ['__background__', 'box', 'disc', 'triangle']


def _save(path: Path, data: object) -> str:
    torch.save(data, path)
    return str(path)


def _state(classes: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return {k: v.half() if v.is_floating_point() else v
            for k, v in fasterrcnn_mobilenet_v3_small_fpn(num_classes=classes)
            .state_dict().items()}


def test_shipped_format_sets_the_categories(tmp_path: Path) -> None:
    path = _save(tmp_path / 'c.pt', {'arch': COMPACT_ARCH, 'categories': SHAPES,
                                     'state_dict': _state(4)})
    assert RcnnDetector(COMPACT_ARCH, path).categories == SHAPES


def test_plain_state_dict_keeps_coco_categories(tmp_path: Path) -> None:
    path = _save(tmp_path / 'coco.pt', _state(91))
    assert RcnnDetector(COMPACT_ARCH, path).categories == coco_categories()


def test_checkpoint_of_another_architecture_is_refused(tmp_path: Path) -> None:
    path = _save(tmp_path / 'c.pt', {'arch': COMPACT_ARCH, 'categories': SHAPES,
                                     'state_dict': _state(4)})
    with pytest.raises(BackendError, match=f'is for architecture {COMPACT_ARCH!r}'):
        RcnnDetector('fasterrcnn_mobilenet_v3_large_320_fpn', path)


@pytest.mark.parametrize('categories', [SHAPES[:3], 'box,disc', [1, 2, 3, 4]])
def test_categories_that_do_not_match_the_weights_are_refused(
        tmp_path: Path, categories: object) -> None:
    path = _save(tmp_path / 'c.pt', {'arch': COMPACT_ARCH, 'categories': categories,
                                     'state_dict': _state(4)})
    with pytest.raises(BackendError, match='categories'):
        RcnnDetector(COMPACT_ARCH, path)


def test_plain_state_dict_of_other_classes_is_refused(tmp_path: Path) -> None:
    path = _save(tmp_path / 'c.pt', _state(4))
    with pytest.raises(BackendError, match='cannot load checkpoint'):
        RcnnDetector(COMPACT_ARCH, path)


def test_compact_architecture_is_small() -> None:
    model = fasterrcnn_mobilenet_v3_small_fpn(num_classes=4)
    assert sum(p.numel() for p in model.parameters()) < 4_000_000
    with pytest.raises(ValueError, match='no published weights'):
        fasterrcnn_mobilenet_v3_small_fpn(weights='DEFAULT')


def test_the_input_size_sets_the_longest_side_the_model_reads() -> None:
    detector = RcnnDetector(COMPACT_ARCH, threads=1)
    transform = detector._model.transform
    native = (tuple(transform.min_size), transform.max_size)
    image = torch.zeros(3, 480, 640)
    detector.set_input_size(320)
    assert transform(([image]))[0].image_sizes == [(240, 320)]
    detector.set_input_size(800)
    assert transform(([image]))[0].image_sizes == [(600, 800)]
    detector.set_input_size(0)
    assert (tuple(transform.min_size), transform.max_size) == native
    with pytest.raises(ConfigError, match='at least 32'):
        detector.set_input_size(16)
    sized = RcnnDetector(COMPACT_ARCH, threads=1, input_size=320)
    assert sized.input_size == 320 and sized._model.transform.max_size == 320
