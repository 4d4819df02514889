"""The learned bottleneck at a split point: shapes, wire round trip, files, refusals.

The detector is the compact Faster R-CNN with random weights reading 64x64 frames, so every
test runs in well under a second; what the trained bottleneck costs in mAP and saves in bytes
is benchmarks/bench_bottleneck.py's business.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Iterator

from adaptive_offload.errors import ConfigError, ConversionError
from adaptive_offload.split_wire import weights_digest
import pytest
from rcnn_service.bottleneck import (BLOB, BottleneckSpec, build_networks, FORMAT,
                                     FORMAT_VERSION, LearnedBottleneck, load_bottleneck)
from rcnn_service.compact_rcnn import COMPACT_ARCH, fasterrcnn_mobilenet_v3_small_fpn
from rcnn_service.rcnn_split import EncodedPayload, RcnnSplit
import torch

SIDE = 64  # longest side the test detector reads
POINT = 4  # after body.3: 24 channels at stride 8, the one tensor crossing


def detector(seed: int) -> Any:
    """Return the compact R-CNN with random weights of ``seed``, eval, reading 64 px frames."""
    torch.manual_seed(seed)
    model = fasterrcnn_mobilenet_v3_small_fpn(num_classes=4).eval()
    model.transform.min_size, model.transform.max_size = (SIDE,), SIDE
    return model


@pytest.fixture(scope='module')
def rig() -> Iterator[SimpleNamespace]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(7)
    model = detector(0)
    bottleneck = LearnedBottleneck.for_model(model, COMPACT_ARCH, POINT, width=3)
    images = [torch.rand(3, 48, 64)]
    yield SimpleNamespace(model=model, split=RcnnSplit(model), bottleneck=bottleneck,
                          images=images)
    torch.set_num_threads(threads)


def test_the_spec_describes_the_crossing_tensor(rig: SimpleNamespace) -> None:
    spec = rig.bottleneck.spec
    assert (spec.arch, spec.point, spec.crossing) == (COMPACT_ARCH, POINT, 'body.3')
    assert (spec.channels, spec.stride, spec.width, spec.reduction) == (24, 8, 3, 2)
    assert spec.detector == weights_digest(rig.model.state_dict()) and len(spec.detector) == 64


def test_encode_decode_restores_the_crossing_shape_and_the_tail_runs(
        rig: SimpleNamespace) -> None:
    with torch.no_grad():
        payload = rig.split.head(rig.images, POINT)
        wire = rig.bottleneck.encode(payload)
        wire = EncodedPayload(json.loads(json.dumps(wire.meta)), wire.blobs)
        restored = rig.bottleneck.decode(wire)
        detections = rig.split.tail(restored)
    original = payload.tensors['body.3']
    assert original.shape == (1, 24, 8, 8)
    assert set(wire.blobs) == {BLOB}
    assert restored.tensors['body.3'].shape == original.shape
    assert (restored.padded_size, restored.image_sizes, restored.original_sizes) == (
        payload.padded_size, payload.image_sizes, payload.original_sizes)
    # 3 channels of 4x4 int8 codes and their scales: far less than 24x8x8 floats.
    assert wire.tensor_bytes < original.numel()
    assert len(detections) == 1 and set(detections[0]) >= {'boxes', 'scores', 'labels'}


def test_the_wire_code_is_the_encoder_output_quantised(rig: SimpleNamespace) -> None:
    with torch.no_grad():
        payload = rig.split.head(rig.images, POINT)
        code = rig.bottleneck.compress(payload.tensors['body.3'])
        exact = rig.bottleneck.restore(code, (8, 8))
        restored = rig.bottleneck.decode(rig.bottleneck.encode(payload)).tensors['body.3']
    assert code.shape == (1, 3, 4, 4)
    # int8 rounding of the code moves the restored tensor a little, never wholesale.
    assert float((restored - exact).abs().max()) < 0.05 * float(exact.abs().max()) + 1e-6


def test_odd_sizes_are_cropped_back(rig: SimpleNamespace) -> None:
    spec = BottleneckSpec(COMPACT_ARCH, POINT, 'body.3', 24, 8, 2, 2, 8, 'x')
    bottleneck = LearnedBottleneck(spec)
    with torch.no_grad():
        code = bottleneck.compress(torch.rand(1, 24, 7, 5))
        assert code.shape == (1, 2, 4, 3)
        assert bottleneck.restore(code, (7, 5)).shape == (1, 24, 7, 5)
    assert bottleneck.crossing_size((56, 40)) == (7, 5)


def test_save_load_round_trip_is_equal(rig: SimpleNamespace, tmp_path: Path) -> None:
    path = rig.bottleneck.save(tmp_path / 'b.pt')
    loaded = load_bottleneck(path, rig.model, COMPACT_ARCH, POINT)
    assert loaded.spec == rig.bottleneck.spec
    saved = {k: v.half().float() for k, v in rig.bottleneck.net.state_dict().items()}
    for name, value in loaded.net.state_dict().items():
        assert torch.equal(value, saved[name]), name
    again = load_bottleneck(loaded.save(tmp_path / 'again.pt'))
    assert all(torch.equal(a, b) for a, b in zip(again.net.state_dict().values(),
                                                 loaded.net.state_dict().values()))
    assert not loaded.net.training


def test_other_weights_points_or_architectures_are_refused(rig: SimpleNamespace,
                                                           tmp_path: Path) -> None:
    path = rig.bottleneck.save(tmp_path / 'b.pt')
    with pytest.raises(ConfigError, match='other .* weights'):
        load_bottleneck(path, detector(1), COMPACT_ARCH)
    with pytest.raises(ConfigError, match='split point 4 .*not 3'):
        load_bottleneck(path, rig.model, COMPACT_ARCH, point=3)
    with pytest.raises(ConfigError, match='trained for fasterrcnn_mobilenet_v3_small_fpn'):
        load_bottleneck(path, rig.model, 'fasterrcnn_mobilenet_v3_large_320_fpn')
    with torch.no_grad():
        other = rig.split.head(rig.images, 3)
        with pytest.raises(ConfigError, match='payload of point 3'):
            rig.bottleneck.encode(other)
        wire = rig.bottleneck.encode(rig.split.head(rig.images, POINT))
    with pytest.raises(ConfigError, match='payload of point 3'):
        rig.bottleneck.decode(EncodedPayload({**wire.meta, 'point': 3}, wire.blobs))


@pytest.mark.parametrize('point', [5, 13, 14])
def test_points_where_several_tensors_cross_are_refused(rig: SimpleNamespace,
                                                        point: int) -> None:
    with pytest.raises(ConfigError, match=r'one crosses: \[0, 1, 2, 3, 4\]'):
        LearnedBottleneck.for_model(rig.model, COMPACT_ARCH, point, width=2)


@pytest.mark.parametrize('change, match', [
    ({'reduction': 3}, 'reduction 3'), ({'width': 0}, '>= 1'), ({'width': True}, 'integers'),
    ({'detector': ''}, 'non-empty')])
def test_invalid_specs_are_config_errors(change: dict[str, Any], match: str) -> None:
    fields = {'arch': COMPACT_ARCH, 'point': 4, 'crossing': 'body.3', 'channels': 24,
              'stride': 8, 'width': 2, 'reduction': 2, 'hidden': 8, 'detector': 'x'}
    with pytest.raises(ConfigError, match=match):
        build_networks(BottleneckSpec(**{**fields, **change}))


def _write(path: Path, data: Any) -> Path:
    torch.save(data, path)
    return path


def test_bad_files_give_clear_errors(rig: SimpleNamespace, tmp_path: Path) -> None:
    good = torch.load(rig.bottleneck.save(tmp_path / 'b.pt'), weights_only=True)
    with pytest.raises(ConfigError, match='not found'):
        load_bottleneck(tmp_path / 'missing.pt')
    (tmp_path / 'junk.pt').write_bytes(b'not a torch file')
    with pytest.raises(ConfigError, match='cannot read bottleneck file'):
        load_bottleneck(tmp_path / 'junk.pt')
    with pytest.raises(ConfigError, match='not a bottleneck file'):
        load_bottleneck(_write(tmp_path / 'sd.pt', good['state_dict']))
    with pytest.raises(ConfigError, match='format version 99'):
        load_bottleneck(_write(tmp_path / 'v.pt', {**good, 'version': 99}))
    spec = {k: v for k, v in good['spec'].items() if k != 'hidden'}
    with pytest.raises(ConfigError, match='spec must hold'):
        load_bottleneck(_write(tmp_path / 's.pt', {**good, 'spec': spec}))
    wider = {**good, 'spec': {**good['spec'], 'width': 5}}
    with pytest.raises(ConfigError, match='weights do not fit its spec'):
        load_bottleneck(_write(tmp_path / 'w.pt', wider))
    assert good['format'] == FORMAT and good['version'] == FORMAT_VERSION


def test_bad_wire_payloads_are_conversion_errors(rig: SimpleNamespace) -> None:
    with torch.no_grad():
        wire = rig.bottleneck.encode(rig.split.head(rig.images, POINT))
        blob = bytearray(wire.blobs[BLOB])
        blob[-1] ^= 0xFF
        with pytest.raises(ConversionError, match='tensor_corrupt'):
            rig.bottleneck.decode(EncodedPayload(wire.meta, {BLOB: bytes(blob)}))
        with pytest.raises(ConversionError, match='bottleneck_meta'):
            rig.bottleneck.decode(EncodedPayload({'point': POINT}, wire.blobs))
        with pytest.raises(ConversionError, match='bottleneck_meta'):
            rig.bottleneck.decode(EncodedPayload({**wire.meta, 'image_sizes': [[0, 4]]},
                                                 wire.blobs))
        bigger = {**wire.meta, 'padded_size': [128, 128]}
        with pytest.raises(ConversionError, match='bottleneck_shape'):
            rig.bottleneck.decode(EncodedPayload(bigger, wire.blobs))
