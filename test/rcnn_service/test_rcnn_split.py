"""Split execution of the cloud R-CNN: every split point gives the unsplit model's detections.

fp32 crossing tensors give the same detections bit for bit, for the shipped compact model and
for torchvision's MobileNetV3-Large 320 FPN (random weights). fp16 and int8 on the wire keep the
detections: the same number score >= 0.5, each matched by one of the same label at an IoU and a
score difference within the tolerances below (measured on scene seeds 0..5 at 320x240, every
point: fp16 IoU >= 0.9993 and |score diff| <= 3e-4; int8 IoU >= 0.969 and <= 0.0083).
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Iterator

from adaptive_offload.errors import ConfigError, ConversionError
import numpy as np
from offload_runtime.sample_bag import SampleSpec, Scene
import pytest
from rcnn_service.compact_rcnn import COMPACT_ARCH
from rcnn_service.rcnn_detector import ARCHITECTURES
from rcnn_service.rcnn_split import (decode_payload, encode_payload, EncodedPayload, IMAGE,
                                     RcnnPayload, RcnnSplit)
import torch

CHECKPOINT = Path(__file__).resolve().parents[2] / 'models' / 'rcnn-shapes.pt'
LARGE = 'fasterrcnn_mobilenet_v3_large_320_fpn'
INPUT_SIZE = 320  # longest side the models read: a 320x240 frame is read as is
COMPACT_POINTS = 15  # transform, 13 MobileNetV3-Small stages, FPN
LARGE_POINTS = 19  # transform, 17 MobileNetV3-Large stages, FPN
SCORE = 0.5  # the service's default score threshold
# (least IoU of a matched detection, largest score difference) on the wire.
TOLERANCES = {'fp16': (0.99, 0.005), 'int8': (0.9, 0.05)}


def frame(width: int = 320, height: int = 240, seed: int = 2) -> torch.Tensor:
    """Render a scene frame as the detector feeds it: RGB, CxHxW, float 0..1."""
    image, _ = Scene(SampleSpec(width=width, height=height, seed=seed)).render(0.1)
    return (torch.from_numpy(np.ascontiguousarray(image[:, :, ::-1])).permute(2, 0, 1)
            .float().div_(255.0))


def prepared(model: Any, x: torch.Tensor) -> SimpleNamespace:
    """Put ``model`` in eval mode at :data:`INPUT_SIZE` and run it unsplit on ``x``."""
    model.eval()
    # As RcnnDetector.set_input_size: the longest side becomes INPUT_SIZE whatever the aspect.
    model.transform.min_size, model.transform.max_size = (INPUT_SIZE,), INPUT_SIZE
    with torch.no_grad():
        reference = model([x])
    return SimpleNamespace(model=model, split=RcnnSplit(model), x=x, reference=reference)


@pytest.fixture(scope='module')
def one_thread() -> Iterator[None]:
    """Run torch on one thread (on a shared 2-core machine, more threads run far slower)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope='module')
def compact(one_thread: None) -> SimpleNamespace:
    """Load the shipped compact R-CNN as RcnnDetector loads it."""
    data = torch.load(CHECKPOINT, map_location='cpu', weights_only=True)
    model = ARCHITECTURES[COMPACT_ARCH]()(weights=None, weights_backbone=None,
                                          num_classes=len(data['categories']))
    model.load_state_dict(data['state_dict'])
    return prepared(model, frame())


@pytest.fixture(scope='module')
def large(one_thread: None) -> SimpleNamespace:
    """Build torchvision's MobileNetV3-Large 320 FPN, random weights, keeping all detections."""
    torch.manual_seed(0)
    model = ARCHITECTURES[LARGE]()(weights=None, weights_backbone=None, num_classes=4,
                                   box_score_thresh=0.0)
    return prepared(model, frame())


def identical(a: list[dict[str, torch.Tensor]], b: list[dict[str, torch.Tensor]]) -> bool:
    """Return whether two detection lists hold the same keys and bit-equal tensors."""
    return len(a) == len(b) and all(
        x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x) for x, y in zip(a, b))


def matched(reference: dict[str, torch.Tensor],
            out: dict[str, torch.Tensor]) -> tuple[int, int, float, float]:
    """Compare the detections scoring >= :data:`SCORE`.

    Returns:
        (reference count, output count, least IoU of a reference detection with its best
        same-label output detection, largest score difference of those pairs).
    """
    from torchvision.ops import box_iou

    ref = {k: v[reference['scores'] >= SCORE] for k, v in reference.items()}
    got = {k: v[out['scores'] >= SCORE] for k, v in out.items()}
    if not len(ref['scores']) or not len(got['scores']):
        return len(ref['scores']), len(got['scores']), 0.0, 1.0
    iou = box_iou(ref['boxes'], got['boxes']) * (ref['labels'][:, None] == got['labels'])
    best, index = iou.max(1)
    score = float((ref['scores'] - got['scores'][index]).abs().max())
    return len(ref['scores']), len(got['scores']), float(best.min()), score


def test_split_points_of_the_compact_model(compact: SimpleNamespace) -> None:
    points = compact.split.points
    assert [p.index for p in points] == list(range(COMPACT_POINTS))
    assert [p.name for p in points] == (['transform'] + [f'body.{i}' for i in range(13)]
                                        + ['fpn'])
    crossing = {p.index: p.crossing for p in points}
    assert crossing[0] == (IMAGE,)
    assert all(crossing[k] == (f'body.{k - 1}',) for k in range(1, 5))  # up to stride 8
    assert crossing[5] == ('body.3', 'body.4') and crossing[9] == ('body.3', 'body.8')
    assert crossing[13] == ('body.3', 'body.8', 'body.12')  # the three the FPN reads
    assert crossing[14] == ('fpn.0', 'fpn.1', 'fpn.2', 'fpn.pool')
    assert compact.split.point(14) == points[-1]


def test_split_points_of_the_large_320_model(large: SimpleNamespace) -> None:
    crossing = {p.index: p.crossing for p in large.split.points}
    assert list(crossing) == list(range(LARGE_POINTS))
    assert all(crossing[k] == (f'body.{k - 1}',) for k in range(1, 15))
    assert crossing[17] == ('body.13', 'body.16')
    assert crossing[18] == ('fpn.0', 'fpn.1', 'fpn.pool')


def test_the_scenes_have_confident_detections(compact: SimpleNamespace,
                                              large: SimpleNamespace) -> None:
    # Otherwise the comparisons below would compare empty tensors.
    scores = compact.reference[0]['scores']
    assert int((scores >= SCORE).sum()) == 4
    assert not bool(((scores - SCORE).abs() < 0.1).any())  # no detection near the threshold
    assert len(large.reference[0]['scores']) == 100


@pytest.mark.parametrize(('name', 'k'), [('compact', k) for k in range(COMPACT_POINTS)]
                         + [('large', k) for k in range(LARGE_POINTS)])
def test_split_output_is_bitwise_the_unsplit_output(request: pytest.FixtureRequest,
                                                    name: str, k: int) -> None:
    model = request.getfixturevalue(name)
    with torch.no_grad():
        payload = model.split.head([model.x], k)
        assert list(payload.tensors) == list(model.split.point(k).crossing)
        assert identical(model.split.tail(payload), model.reference)
        # fp32 on the wire is lossless too.
        assert identical(model.split.tail(decode_payload(encode_payload(payload, 'fp32'))),
                         model.reference)


def test_head_middle_tail_is_bitwise_the_unsplit_output_for_every_pair(
        compact: SimpleNamespace) -> None:
    # Three tiers: the robot's head to i, a middle device from i to j, the cloud's tail.
    with torch.no_grad():
        for i in range(COMPACT_POINTS - 1):
            payload = compact.split.head([compact.x], i)
            for j in range(i + 1, COMPACT_POINTS):
                middle = compact.split.middle(payload, j)
                assert middle.point == j
                assert list(middle.tensors) == list(compact.split.point(j).crossing)
                assert identical(compact.split.tail(middle), compact.reference), (i, j)


def test_a_middle_refuses_a_point_not_after_its_payloads(compact: SimpleNamespace) -> None:
    with torch.no_grad():
        payload = compact.split.head([compact.x], 5)
        for k in (5, 2):
            with pytest.raises(ConfigError, match='is not after'):
                compact.split.middle(payload, k)
        with pytest.raises(ConfigError, match='invalid'):
            compact.split.middle(payload, COMPACT_POINTS)
        bad = RcnnPayload(6, payload.tensors, payload.padded_size, payload.image_sizes,
                          payload.original_sizes)
        with pytest.raises(ConfigError, match='needs the tensors'):
            compact.split.middle(bad, 9)


@pytest.mark.parametrize('encoding', ['fp16', 'int8'])
def test_lossy_crossing_keeps_the_detections_at_every_split(
        compact: SimpleNamespace, encoding: str) -> None:
    least_iou, score_error = TOLERANCES[encoding]
    compressors = ('zstd', 'lz4')
    with torch.no_grad():
        for point in compact.split.points:
            wire = encode_payload(compact.split.head([compact.x], point.index), encoding,
                                  compressors[point.index % 2])
            out = compact.split.tail(decode_payload(wire))[0]
            expected, got, iou, score = matched(compact.reference[0], out)
            assert got == expected, point
            assert iou >= least_iou and score <= score_error, (point, iou, score)


def test_a_batch_of_two_sizes_is_split_per_image(compact: SimpleNamespace) -> None:
    images = [compact.x, frame(200, 300, seed=4)]
    with torch.no_grad():
        reference = compact.model(images)
        payload = compact.split.head(images, 6)
        assert payload.original_sizes == ((240, 320), (300, 200))
        assert payload.image_sizes == ((240, 320), (320, 213))
        assert payload.padded_size == (320, 320)  # both padded to a multiple of 32
        assert identical(compact.split.tail(payload), reference)


def test_mask_rcnn_masks_come_through_a_resnet_split(one_thread: None) -> None:
    """ResNet-50 children have names, not indices; Mask R-CNN pastes masks in postprocess."""
    torch.manual_seed(0)
    model = ARCHITECTURES['maskrcnn_resnet50_fpn']()(weights=None, weights_backbone=None,
                                                     num_classes=4, box_detections_per_img=10)
    model.eval()
    model.transform.min_size, model.transform.max_size = (128,), 128  # fast enough for a test
    split = RcnnSplit(model)
    assert [p.name for p in split.points] == ['transform', 'body.conv1', 'body.bn1', 'body.relu',
                                              'body.maxpool', 'body.layer1', 'body.layer2',
                                              'body.layer3', 'body.layer4', 'fpn']
    assert split.point(7).crossing == ('body.layer1', 'body.layer2', 'body.layer3')
    x = torch.rand(3, 96, 128)
    with torch.no_grad():
        reference = model([x])
        out = split.tail(split.head([x], 7))
    assert reference[0]['masks'].shape == (10, 1, 96, 128)
    assert identical(out, reference)


def test_the_metadata_survives_json(compact: SimpleNamespace) -> None:
    with torch.no_grad():
        wire = encode_payload(compact.split.head([compact.x], 9), 'fp32', 'lz4')
        meta = json.loads(json.dumps(wire.meta))
        assert meta == {'point': 9, 'padded_size': [256, 320], 'image_sizes': [[240, 320]],
                        'original_sizes': [[240, 320]]}
        out = compact.split.tail(decode_payload(EncodedPayload(meta, wire.blobs)))
    assert identical(out, compact.reference)
    assert wire.tensor_bytes == sum(len(b) for b in wire.blobs.values())


@pytest.mark.parametrize('k', [-1, COMPACT_POINTS, 1.5, True, '3'])
def test_invalid_split_points_are_config_errors(compact: SimpleNamespace, k: Any) -> None:
    with pytest.raises(ConfigError, match='split point'):
        compact.split.head([compact.x], k)
    with pytest.raises(ConfigError, match=f'split point {k!r} invalid'):
        compact.split.point(k)
    payload = RcnnPayload(k, {}, (256, 320), ((240, 320),), ((240, 320),))
    with pytest.raises(ConfigError, match='within 0..14'):
        compact.split.tail(payload)


def test_tail_needs_exactly_the_crossing_tensors(compact: SimpleNamespace) -> None:
    with torch.no_grad():
        payload = compact.split.head([compact.x], 10)
    tensors = dict(payload.tensors)
    missing = {k: v for k, v in tensors.items() if k != 'body.3'}
    with pytest.raises(ConfigError, match=r"needs the tensors \['body.3', 'body.8', 'body.9'\]"):
        compact.split.tail(RcnnPayload(10, missing, *_sizes(payload)))
    with pytest.raises(ConfigError, match='needs the tensors'):
        compact.split.tail(RcnnPayload(10, {**tensors, 'body.4': tensors['body.3']},
                                       *_sizes(payload)))
    with pytest.raises(ConfigError, match=r'tensor body.9 of shape \(96, 8, 10\)'):
        compact.split.tail(RcnnPayload(10, {**tensors, 'body.9': tensors['body.9'][0]},
                                       *_sizes(payload)))
    with pytest.raises(ConfigError, match='2 image sizes for 1 original'):
        compact.split.tail(RcnnPayload(10, tensors, payload.padded_size,
                                       payload.image_sizes * 2, payload.original_sizes))


def test_tail_refuses_an_image_of_another_size(compact: SimpleNamespace) -> None:
    with torch.no_grad():
        payload = compact.split.head([compact.x], 0)
    with pytest.raises(ConfigError, match=r'image of \(256, 320\) pixels, padded size'):
        compact.split.tail(RcnnPayload(0, payload.tensors, (320, 320), payload.image_sizes,
                                       payload.original_sizes))


def test_a_model_in_training_mode_or_empty_input_is_refused(compact: SimpleNamespace) -> None:
    with pytest.raises(ConfigError, match='non-empty list of CxHxW'):
        compact.split.head([], 3)
    with pytest.raises(ConfigError, match='non-empty list of CxHxW'):
        compact.split.head([compact.x[None]], 3)
    compact.model.train()
    try:
        with pytest.raises(ConfigError, match='training mode'):
            compact.split.head([compact.x], 3)
    finally:
        compact.model.eval()


@pytest.mark.parametrize(('model', 'match'), [
    (torch.nn.Linear(2, 2), 'Linear is not a torchvision R-CNN'),
    (SimpleNamespace(transform=None, backbone=torch.nn.Conv2d(3, 8, 3), rpn=None,
                     roi_heads=None), 'no FPN backbone'),
])
def test_a_model_that_is_not_an_fpn_rcnn_is_a_config_error(model: Any, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        RcnnSplit(model)


def test_a_body_that_returns_no_last_output_is_a_config_error() -> None:
    body = torch.nn.Sequential(torch.nn.ReLU(), torch.nn.ReLU())
    body.return_layers = {'0': '0'}
    model = SimpleNamespace(transform=None, rpn=None, roi_heads=None,
                            backbone=SimpleNamespace(body=body, fpn=torch.nn.Identity()))
    with pytest.raises(ConfigError, match='the last child must be the last output'):
        RcnnSplit(model)


@pytest.mark.parametrize(('meta', 'match'), [
    ({'point': 1}, 'expected point'),
    ({'point': '1', 'padded_size': [32, 32], 'image_sizes': [[32, 32]],
      'original_sizes': [[32, 32]]}, 'not an integer'),
    ({'point': 1, 'padded_size': [32, 32], 'image_sizes': [[32, -1]],
      'original_sizes': [[32, 32]]}, 'not a list of'),
    ({'point': 1, 'padded_size': [32, 32], 'image_sizes': [[32, 32]],
      'original_sizes': []}, '1 image sizes for 0'),
    ({'point': 1, 'padded_size': [32, 32], 'image_sizes': [[64, 32]],
      'original_sizes': [[64, 32]]}, 'exceeds the padded size'),
    ([1, 2], 'expected point'),
])
def test_malformed_metadata_is_a_conversion_error(meta: Any, match: str) -> None:
    with pytest.raises(ConversionError, match=match):
        decode_payload(EncodedPayload(meta, {}))


def test_a_corrupt_tensor_is_a_conversion_error(compact: SimpleNamespace) -> None:
    with torch.no_grad():
        wire = encode_payload(compact.split.head([compact.x], 1), 'int8', 'zstd')
    blob = bytearray(wire.blobs['body.0'])
    blob[-1] ^= 0xFF
    with pytest.raises(ConversionError, match='tensor_corrupt'):
        decode_payload(EncodedPayload(wire.meta, {'body.0': bytes(blob)}))
    with pytest.raises(ConversionError, match='tensor_too_large'):
        decode_payload(wire, max_bytes=1024)


def _sizes(payload: RcnnPayload) -> tuple[Any, ...]:
    return payload.padded_size, payload.image_sizes, payload.original_sizes
