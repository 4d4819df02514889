"""Split execution of the shipped YOLO: every split point gives the unsplit model's output.

fp32 crossing tensors give the same output bit for bit; fp16 and int8 on the wire stay within
the tolerances below (measured on this scene: fp16 <= 0.012 px and 1.3e-4 in score; int8
<= 0.85 px over all anchors, <= 0.11 px on confident ones, <= 0.009 in score).
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any, Iterator

from adaptive_offload.errors import ConfigError
from edge_inference.ultralytics_backend import prepare_offline
from edge_inference.yolo_split import decode_crossing, encode_crossing, YoloSplit
import numpy as np
from offload_runtime.sample_bag import SampleSpec, Scene
import pytest
import torch

MODEL = Path(__file__).resolve().parents[2] / 'models' / 'yolov8n-shapes.pt'
IMGSZ = 160
LAYERS = 23  # yolov8n: 22 layers, then Detect
# Tolerances on the raw detection output (batch, 4 box + classes, anchors), boxes in input
# pixels at IMGSZ: (box px over all anchors, box px over anchors scoring > 0.25, score).
TOLERANCES = {'fp16': (0.1, 0.02, 1e-3), 'int8': (3.0, 0.5, 0.03)}


@pytest.fixture(scope='module')
def yolo(yolo_config_dir: str) -> Iterator[SimpleNamespace]:
    """Load the shipped model in eval mode, render a scene frame, and run the unsplit model."""
    prepare_offline(yolo_config_dir)
    from ultralytics import YOLO

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # on a shared 2-core machine, 2 threads run 100x slower
    model = YOLO(str(MODEL))
    net = model.model.eval()
    image, _ = Scene(SampleSpec(width=IMGSZ, height=IMGSZ, seed=3)).render(0.1)
    x = torch.from_numpy(np.ascontiguousarray(image[:, :, ::-1])).permute(2, 0, 1)[None] / 255
    with torch.no_grad():
        reference = net(x)
    yield SimpleNamespace(model=model, net=net, split=YoloSplit(model), x=x, reference=reference)
    torch.set_num_threads(threads)


def leaves(output: Any) -> list[Any]:
    """Flatten a nested output (tensors in tuples, lists, dicts) in a fixed order."""
    if isinstance(output, dict):
        return [leaf for key in sorted(output) for leaf in leaves(output[key])]
    if isinstance(output, (list, tuple)):
        return [leaf for item in output for leaf in leaves(item)]
    return [output]


def identical(a: Any, b: Any) -> bool:
    """Return whether two nested outputs have the same structure and bit-equal tensors."""
    la, lb = leaves(a), leaves(b)
    return len(la) == len(lb) and all(type(x) is type(y) and torch.equal(x, y)
                                      for x, y in zip(la, lb))


def test_split_points_and_what_crosses_each(yolo: SimpleNamespace) -> None:
    split = yolo.split
    assert split.layer_count == LAYERS
    assert [p.index for p in split.points] == list(range(1, LAYERS))
    crossing = {p.index: p.crossing for p in split.points}
    assert all(crossing[k] == (k - 1,) for k in range(1, 6))  # backbone before the first save
    assert crossing[6] == (4, 5) and crossing[11] == (4, 6, 9, 10)
    assert crossing[LAYERS - 1] == (15, 18, 21)  # Detect's three scales
    assert {k for k, c in crossing.items() if len(c) > 1} == set(range(6, LAYERS))
    assert all(p.crossing[-1] == p.index - 1 for p in split.points)
    assert split.point(6) == split.points[5]


@pytest.mark.parametrize('k', range(1, LAYERS))
def test_split_output_is_bitwise_the_unsplit_output(yolo: SimpleNamespace, k: int) -> None:
    with torch.no_grad():
        crossing = yolo.split.head(yolo.x, k)
        assert sorted(crossing) == list(yolo.split.point(k).crossing)
        assert identical(yolo.split.tail(crossing, k), yolo.reference)
        # fp32 on the wire is lossless too.
        wire = decode_crossing(encode_crossing(crossing, 'fp32', 'zstd'))
        assert identical(yolo.split.tail(wire, k), yolo.reference)


@pytest.mark.parametrize('encoding', ['fp16', 'int8'])
def test_lossy_crossing_stays_within_tolerance_at_every_split(
        yolo: SimpleNamespace, encoding: str) -> None:
    reference = yolo.reference[0][0]
    confident = reference[4:].max(0).values > 0.25
    assert 0 < int(confident.sum()) < reference.shape[1] // 10
    box_all, box_confident, score = TOLERANCES[encoding]
    compressors = ('zstd', 'lz4')
    with torch.no_grad():
        for point in yolo.split.points:
            blobs = encode_crossing(yolo.split.head(yolo.x, point.index), encoding,
                                    compressors[point.index % 2])
            out = yolo.split.tail(decode_crossing(blobs), point.index)[0][0]
            error = (out - reference).abs()
            assert float(error[:4].max()) <= box_all, point
            assert float(error[:4, confident].max()) <= box_confident, point
            assert float(error[4:].max()) <= score, point
            # The confident anchors keep their class.
            assert torch.equal(out[4:, confident].argmax(0), reference[4:, confident].argmax(0))


@pytest.mark.parametrize('k', [0, LAYERS, -1, 1.5, True, '3'])
def test_invalid_split_points_are_config_errors(yolo: SimpleNamespace, k: Any) -> None:
    with pytest.raises(ConfigError, match='split point'):
        yolo.split.head(yolo.x, k)
    with pytest.raises(ConfigError, match='split point'):
        yolo.split.point(k)


def test_tail_needs_exactly_the_crossing_tensors(yolo: SimpleNamespace) -> None:
    with torch.no_grad():
        crossing = yolo.split.head(yolo.x, 12)
    missing = {j: t for j, t in crossing.items() if j != 4}
    with pytest.raises(ConfigError, match=r'layers \[4, 9, 11\]'):
        yolo.split.tail(missing, 12)
    with pytest.raises(ConfigError, match='needs the outputs'):
        yolo.split.tail({**crossing, 3: crossing[4]}, 12)


@pytest.mark.parametrize('model', [object(), SimpleNamespace(model=[], save=[]),
                                   SimpleNamespace(model=[1, 2], save=[])])
def test_a_model_without_a_layer_list_is_a_config_error(model: Any) -> None:
    with pytest.raises(ConfigError, match='no ultralytics layer list'):
        YoloSplit(model)


def test_a_plain_torch_module_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match='Linear has no ultralytics layer list'):
        YoloSplit(torch.nn.Linear(2, 2))


class Layer:
    """A layer of a hand-wired model: ``fn`` of its input(s), with ultralytics' ``f`` and ``i``."""

    def __init__(self, i: int, f: Any, fn: Any) -> None:
        self.i, self.f, self.fn = i, f, fn

    def __call__(self, x: Any) -> Any:
        return self.fn(x)


def wired(save: list[int], *layers: tuple[Any, Any]) -> SimpleNamespace:
    """Build a model namespace from (f, fn) pairs."""
    return SimpleNamespace(model=[Layer(i, f, fn) for i, (f, fn) in enumerate(layers)],
                           save=save)


def test_hand_wired_model_matches_ultralytics_own_loop() -> None:
    """Negative, integer and list references, as ultralytics resolves them."""
    from ultralytics.nn.tasks import BaseModel

    model = wired([0, 1, 2],
                  (-1, lambda x: x + 1),                 # 0
                  (-1, lambda x: x * 3),                 # 1
                  (-1, lambda x: x - 2),                 # 2
                  (0, lambda x: x * 5),                  # 3: reads layer 0, not layer 2
                  ([-1, -3, 2], lambda xs: xs[0] * 7 + xs[1] * 11 + xs[2]),  # 4: 3, 1, 2
                  ([-1, 0], torch.cat))                  # 5
    x = torch.arange(4.0)
    expected = BaseModel._predict_once(model, x)
    split = YoloSplit(model)
    crossing = {p.index: p.crossing for p in split.points}
    assert crossing == {1: (0,), 2: (0, 1), 3: (0, 1, 2), 4: (0, 1, 2, 3), 5: (0, 4)}
    for k in crossing:
        assert torch.equal(split.tail(split.head(x, k), k), expected)


@pytest.mark.parametrize(('model', 'match'), [
    (wired([0], (-1, abs), (2, abs), (-1, abs)), 'not an earlier layer'),
    (wired([], (-1, abs), (-1, abs), (0, abs)), 'save does not keep'),
    (wired([], (-1, abs), ('0', abs)), 'expected -1'),
    (SimpleNamespace(model=[Layer(1, -1, abs)], save=[]), 'not flat'),
    (SimpleNamespace(model=[Layer(0, -1, abs)], save=['0']), 'layer indices'),
])
def test_inconsistent_wiring_is_a_config_error(model: Any, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        YoloSplit(model)


def test_a_head_that_would_send_a_non_tensor_is_refused() -> None:
    model = wired([], (-1, lambda x: (x, x)), (-1, lambda xs: xs[0]))
    with pytest.raises(ConfigError, match='layer 0 outputs tuple, not a tensor'):
        YoloSplit(model).head(torch.zeros(2), 1)
