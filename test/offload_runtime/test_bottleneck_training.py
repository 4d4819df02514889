"""Distilling a bottleneck: the loss goes down, the detector stays frozen, options are checked.

On the compact R-CNN with random weights and tiny crossing tensors, so that each test runs in
a few seconds.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

from adaptive_offload.errors import ConfigError
from offload_runtime.bottleneck_training import (BottleneckTraining, distill,
                                                 downstream_pyramid, fake_quantised,
                                                 train_bottleneck)
import pytest
from rcnn_service.bottleneck import LearnedBottleneck, load_bottleneck
from rcnn_service.compact_rcnn import COMPACT_ARCH, fasterrcnn_mobilenet_v3_small_fpn
from rcnn_service.rcnn_split import RcnnSplit
import torch

POINT = 4


@pytest.fixture(scope='module')
def model() -> Iterator[Any]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    detector = fasterrcnn_mobilenet_v3_small_fpn(num_classes=4).eval()
    detector.transform.min_size, detector.transform.max_size = (64,), 64
    yield detector
    torch.set_num_threads(threads)


def features(model: Any, count: int = 1) -> list[torch.Tensor]:
    """Crossing tensors (1, 24, 8, 8) of ``count`` fixed random 64x64 images."""
    generator = torch.Generator().manual_seed(3)
    split = RcnnSplit(model)
    with torch.no_grad():
        return [split.head([torch.rand(3, 64, 64, generator=generator)], POINT)
                .tensors['body.3'] for _ in range(count)]


@pytest.mark.parametrize('fpn_weight', [0.0, 1.0])
def test_distillation_lowers_the_loss_on_fixed_data(model: Any, fpn_weight: float) -> None:
    torch.manual_seed(1)
    bottleneck = LearnedBottleneck.for_model(model, COMPACT_ARCH, POINT, width=4, hidden=16)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    # One tensor, one crop covering all of it: every step sees the same data.
    losses = distill(model, bottleneck, features(model), steps=25, batch=1, crop=8, lr=5e-3,
                     fpn_weight=fpn_weight)
    assert len(losses) == 25
    assert losses[-1] < 0.8 * losses[0]
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert all(p.requires_grad for p in model.parameters())
    assert not bottleneck.net.training


def test_the_pyramid_is_the_split_fpn_output(model: Any) -> None:
    x = torch.rand(3, 64, 64)
    split = RcnnSplit(model)
    with torch.no_grad():
        crossing = split.head([x], POINT).tensors['body.3']
        expected = split.head([x], len(split.points) - 1).tensors
        levels = downstream_pyramid(model, POINT, crossing)
    assert len(levels) == len(expected)
    assert all(torch.equal(a, b) for a, b in zip(levels, expected.values()))


def test_fake_quantisation_rounds_per_channel_and_passes_gradients() -> None:
    code = torch.tensor([[[[1.0, 0.3]], [[-50.0, 20.0]]]], requires_grad=True)
    out = fake_quantised(code)
    assert torch.allclose(out.detach(), torch.tensor([[[[1.0, 0.3]], [[-50.0, 20.0]]]]),
                          atol=50 / 127 / 2 + 1e-6)
    assert float((out.detach()[0, 0] - torch.tensor([[1.0, 0.3]])).abs().max()) <= 1 / 254
    out.sum().backward()
    assert code.grad is not None and torch.equal(code.grad, torch.ones_like(code))


def test_the_time_budget_stops_training(model: Any) -> None:
    bottleneck = LearnedBottleneck.for_model(model, COMPACT_ARCH, POINT, width=2, hidden=8)
    ticks = iter(range(100))  # one tick per read: step 0 reads 1 (and 2 to log), step 2 reads 4
    lines: list[str] = []
    losses = distill(model, bottleneck, features(model), steps=50, batch=1, crop=8,
                     fpn_weight=0.0, time_budget_s=4.0, clock=lambda: float(next(ticks)),
                     log=lines.append)
    assert len(losses) == 2
    assert lines[-1] == 'time budget reached after 2 steps'


def test_distillation_refuses_mixed_shapes_and_a_training_model(model: Any) -> None:
    bottleneck = LearnedBottleneck.for_model(model, COMPACT_ARCH, POINT, width=2, hidden=8)
    with pytest.raises(ConfigError, match='all of one shape'):
        distill(model, bottleneck, [torch.zeros(1, 24, 8, 8), torch.zeros(1, 24, 4, 8)], 1)
    with pytest.raises(ConfigError, match='all of one shape'):
        distill(model, bottleneck, [], 1)
    model.train()
    try:
        with pytest.raises(ConfigError, match='training mode'):
            distill(model, bottleneck, features(model), 1)
    finally:
        model.eval()


@pytest.mark.parametrize('change, match', [
    ({'width': 0}, '>= 1'), ({'crop': 2}, 'crop >= 4'), ({'reduction': 4}, 'reduction 4'),
    ({'lr': 0.0}, 'lr'), ({'fpn_weight': -1.0}, 'fpn-weight')])
def test_invalid_options_are_config_errors(change: dict[str, Any], match: str,
                                           tmp_path: Path) -> None:
    options = BottleneckTraining(out=tmp_path / 'b.pt', detector=tmp_path / 'd.pt', **change)
    with pytest.raises(ConfigError, match=match):
        train_bottleneck(options, lambda line: None)


def test_train_bottleneck_writes_a_file_bound_to_its_detector(
        model: Any, tmp_path: Path) -> None:
    from rcnn_service.rcnn_detector import RcnnDetector

    checkpoint = tmp_path / 'detector.pt'
    torch.save({'arch': COMPACT_ARCH, 'categories': ['__background__', 'a', 'b', 'c'],
                'state_dict': model.state_dict()}, checkpoint)
    lines: list[str] = []
    out = train_bottleneck(BottleneckTraining(
        out=tmp_path / 'b.pt', detector=checkpoint, frames=2, steps=2, batch=2, crop=8,
        width=2, hidden=8), lines.append)
    served = RcnnDetector(COMPACT_ARCH, str(checkpoint)).model
    bottleneck = load_bottleneck(out, served, COMPACT_ARCH, POINT)
    assert bottleneck.spec.width == 2 and out.stat().st_size < 50_000
    assert lines[0] == 'computing body.3 for 2 training frames'
    assert lines[-1].startswith('final loss ')
    with pytest.raises(ConfigError, match='split point'):
        train_bottleneck(BottleneckTraining(out=tmp_path / 'c.pt', detector=checkpoint,
                                            point=6, frames=1, steps=1), lines.append)


def test_the_train_command_writes_a_bottleneck_the_shipped_detector_accepts(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from offload_runtime.cli import main
    from rcnn_service.rcnn_detector import RcnnDetector

    out = tmp_path / 'bn.pt'
    assert main(['train', 'bottleneck', '--out', str(out), '--frames', '2', '--steps', '2',
                 '--width', '3', '--threads', '1']) == 0
    assert f'wrote {out}' in capsys.readouterr().out
    shipped = Path(__file__).resolve().parents[2] / 'models' / 'rcnn-shapes.pt'
    detector = RcnnDetector(COMPACT_ARCH, str(shipped))
    loaded = load_bottleneck(out, detector.model, COMPACT_ARCH, 4)
    assert loaded.spec.width == 3 and loaded.spec.crossing == 'body.3'


def test_the_shipped_bottleneck_matches_the_shipped_detector() -> None:
    from rcnn_service.rcnn_detector import RcnnDetector

    models = Path(__file__).resolve().parents[2] / 'models'
    detector = RcnnDetector(COMPACT_ARCH, str(models / 'rcnn-shapes.pt'))
    loaded = load_bottleneck(models / 'rcnn-shapes-bottleneck.pt', detector.model, COMPACT_ARCH,
                             4)
    assert (loaded.spec.width, loaded.spec.reduction) == (2, 1)
