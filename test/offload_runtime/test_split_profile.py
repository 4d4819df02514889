"""``adaptive-offload profile``: per split point times and payload sizes."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any, Sequence

from adaptive_offload.errors import ConfigError
import numpy as np
from offload_runtime.cli import main
from offload_runtime.split_profile import (family_of, format_table, profile_model,
                                           ProfileOptions, run_profile, WireCost)
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
YOLO_MODEL = ROOT / 'models' / 'yolov8n-shapes.pt'
COMPACT = 'fasterrcnn_mobilenet_v3_small_fpn'
BOTTLENECK = ROOT / 'models' / 'rcnn-shapes-bottleneck.pt'
ONE_CODEC = (('int8', 'zstd'),)


class FakeTarget:
    """Two split points whose runs advance a fake clock by known amounts."""

    name = 'fake@64'
    family = 'yolo'

    def __init__(self, clock: list[float]) -> None:
        self.clock = clock
        self.heads = itertools.cycle([0.010, 0.030, 0.020])  # median 20 ms
        self.calls: list[str] = []

    def _spend(self, seconds: float, what: str) -> None:
        self.clock[0] += seconds
        self.calls.append(what)

    def points(self) -> Sequence[tuple[int, str]]:
        return [(1, 'a'), (2, 'b')]

    def whole(self) -> None:
        self._spend(0.050, 'whole')

    def head(self, index: int) -> dict[str, int]:
        self._spend(next(self.heads), f'head {index}')
        return {'n': 1000 * index}

    def tail(self, index: int, crossing: Any) -> None:
        self._spend(0.004 * index, f'tail {index}')

    def fp32_bytes(self, crossing: dict[str, int]) -> int:
        return 4 * crossing['n']

    def encode(self, crossing: dict[str, int], encoding: str,
               compression: str) -> tuple[bytes, int]:
        self._spend(0.001, 'encode')
        size = crossing['n'] // (4 if encoding == 'int8' else 2)
        return bytes(size), size

    def decode(self, wire: bytes) -> None:
        self._spend(0.002, 'decode')


def test_medians_come_from_the_injected_clock_after_one_warm_up() -> None:
    clock = [0.0]
    target = FakeTarget(clock)
    frame = np.random.default_rng(0).integers(0, 255, (48, 64, 3), dtype=np.uint8)
    profile = profile_model(target, ProfileOptions(repeats=3, codecs=ONE_CODEC), frame,
                            clock=lambda: clock[0])
    assert profile.whole_ms == pytest.approx(50.0)
    assert [p.name for p in profile.points] == ['a', 'b']
    a, b = profile.points
    assert a.head_ms == pytest.approx(20.0) and b.head_ms == pytest.approx(20.0)
    assert a.tail_ms == pytest.approx(4.0) and b.tail_ms == pytest.approx(8.0)
    assert a.fp32_bytes == 4000 and b.wire['int8+zstd'].size == 500
    assert a.wire['int8+zstd'].encode_ms == pytest.approx(1.0)
    assert a.wire['int8+zstd'].decode_ms == pytest.approx(2.0)
    assert target.calls.count('whole') == 4  # one warm-up, three timed
    assert profile.frame == (48, 64) and set(profile.jpeg_bytes) == {50, 75, 95}
    assert profile.jpeg_bytes[50] < profile.jpeg_bytes[95]


def test_the_table_and_the_data_carry_every_point() -> None:
    clock = [0.0]
    profile = profile_model(FakeTarget(clock), ProfileOptions(repeats=1, codecs=ONE_CODEC),
                            np.zeros((8, 8, 3), np.uint8), clock=lambda: clock[0])
    table = format_table(profile).splitlines()
    assert len(table) == 2 + 2 and 'int8+zstd' in table[1]
    data = profile.to_dict()
    assert [p['name'] for p in data['points']] == ['a', 'b']
    assert data['points'][1]['wire']['int8+zstd']['bytes'] == 500
    assert yaml.safe_load(yaml.safe_dump(data)) == data


@pytest.mark.parametrize('model, match', [
    ('resnet_unknown', 'cannot profile'), ('missing.pt', 'not found')])
def test_an_unknown_model_is_a_config_error(model: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        family_of(model)


def test_options_are_validated() -> None:
    with pytest.raises(ConfigError, match='repeats'):
        ProfileOptions(repeats=0)
    with pytest.raises(ConfigError, match='negative'):
        ProfileOptions(imgsz=-1)


def test_the_compact_rcnn_profile_has_every_backbone_split_and_its_payload() -> None:
    from rcnn_service.rcnn_split import RcnnSplit
    from offload_runtime.split_targets import RcnnTarget
    from rcnn_service.rcnn_detector import RcnnDetector
    import torch

    options = ProfileOptions(imgsz=128, repeats=1, threads=1, codecs=ONE_CODEC)
    profile = run_profile(COMPACT, None, options)
    detector = RcnnDetector(COMPACT, str(ROOT / 'models' / 'rcnn-shapes.pt'), input_size=128)
    split = RcnnSplit(detector.model)
    assert [(p.index, p.name) for p in profile.points] == [
        (p.index, p.name) for p in split.points]
    assert profile.model == f'{COMPACT}@128' and profile.device.startswith('cpu')
    assert profile.frame == (480, 640)
    # The head's payload of a frame of the same size crosses the same shapes.
    target = RcnnTarget('x', detector.model, np.zeros((480, 640, 3), np.uint8), 'cpu')
    with torch.inference_mode():
        for point in profile.points:
            payload = target.head(point.index)
            assert point.fp32_bytes == sum(t.numel() * 4 for t in payload.tensors.values())
            assert 0 < point.wire['int8+zstd'].size < point.fp32_bytes
    assert profile.points[0].fp32_bytes == 3 * 96 * 128 * 4  # 640x480 resized to 128x96
    assert all(p.head_ms > 0 and p.tail_ms > 0 for p in profile.points)


def test_the_yolo_profile_covers_every_layer_split(yolo_config_dir: str) -> None:
    options = ProfileOptions(imgsz=64, repeats=1, threads=1, codecs=ONE_CODEC)
    profile = run_profile(str(YOLO_MODEL), None, options)
    assert profile.model == 'yolov8n-shapes@64' and profile.family == 'yolo'
    assert [p.index for p in profile.points] == list(range(1, 23))
    # named by k, as split options (model@imgsz:k/end:encoding) and split_point name them
    assert [p.name for p in profile.points] == [str(k) for k in range(1, 23)]
    first = profile.points[0]  # layer 0: 16 channels at stride 2
    assert first.fp32_bytes == 16 * 32 * 32 * 4
    assert profile.frame == (64, 64)


def test_the_command_writes_the_profile(tmp_path: Path, yolo_config_dir: str,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / 'yolo.yaml'
    assert main(['profile', str(YOLO_MODEL), '--imgsz', '64', '--repeats', '1',
                 '--threads', '1', '--out', str(out)]) == 0
    data = yaml.safe_load(out.read_text())
    assert data['model'] == 'yolov8n-shapes@64' and len(data['points']) == 22
    assert set(data['points'][0]['wire']) == {'fp16+zstd', 'fp16+lz4', 'int8+zstd', 'int8+lz4'}
    assert 'yolov8n-shapes@64 on cpu' in capsys.readouterr().out


def test_the_command_refuses_a_checkpoint_for_yolo_and_an_unknown_model(
        capsys: pytest.CaptureFixture[str]) -> None:
    assert main(['profile', 'nothing']) == 2
    assert 'cannot profile' in capsys.readouterr().err
    assert main(['profile', str(YOLO_MODEL), '--checkpoint', 'x.pt']) == 2
    assert 'give no checkpoint' in capsys.readouterr().err


class FakeLearned:
    """A learned encoding of point 2 that spends known times."""

    name = 'bottleneck'

    def __init__(self, target: FakeTarget, point: int = 2) -> None:
        self.target, self.point = target, point

    def encode(self, crossing: dict[str, int]) -> tuple[bytes, int]:
        self.target._spend(0.003, 'learned encode')
        return bytes(crossing['n'] // 100), crossing['n'] // 100

    def decode(self, wire: bytes) -> None:
        self.target._spend(0.005, 'learned decode')


def test_a_learned_encoding_is_measured_at_its_point_only() -> None:
    clock = [0.0]
    target = FakeTarget(clock)
    profile = profile_model(target, ProfileOptions(repeats=3, codecs=ONE_CODEC),
                            np.zeros((8, 8, 3), np.uint8), clock=lambda: clock[0],
                            learned=[FakeLearned(target)])
    a, b = profile.points
    assert set(a.wire) == {'int8+zstd'} and set(b.wire) == {'int8+zstd', 'bottleneck'}
    assert b.wire['bottleneck'] == WireCost(20, pytest.approx(3.0), pytest.approx(5.0))
    assert 'bottleneck at b: 0.0 KiB, encode 3.00 ms, decode 5.00 ms' in format_table(profile)
    assert profile.to_dict()['points'][1]['wire']['bottleneck']['bytes'] == 20
    with pytest.raises(ConfigError, match='split point 7'):
        profile_model(target, ProfileOptions(repeats=1, codecs=ONE_CODEC),
                      np.zeros((8, 8, 3), np.uint8), learned=[FakeLearned(target, 7)])


def test_the_command_measures_the_shipped_bottleneck_as_the_service_receives_it(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import torch
    from offload_runtime.split_targets import RcnnTarget
    from rcnn_service.bottleneck import load_bottleneck
    from rcnn_service.rcnn_detector import RcnnDetector

    out = tmp_path / 'rcnn.yaml'
    assert main(['profile', COMPACT, '--imgsz', '128', '--repeats', '1', '--threads', '1',
                 '--bottleneck', str(BOTTLENECK), '--out', str(out)]) == 0
    assert 'bottleneck at body.3' in capsys.readouterr().out
    points = yaml.safe_load(out.read_text())['points']
    learned = {p['name']: p['wire']['bottleneck'] for p in points if 'bottleneck' in p['wire']}
    assert list(learned) == ['body.3']
    entry = learned['body.3']
    assert entry['encode_ms'] > 0 and entry['decode_ms'] > 0
    naive = next(p for p in points if p['name'] == 'body.3')['wire']['int8+zstd']['bytes']
    assert 0 < entry['bytes'] < naive / 5
    # The bytes are those of the code a robot sends for the same frame.
    detector = RcnnDetector(COMPACT, str(ROOT / 'models' / 'rcnn-shapes.pt'), input_size=128)
    bottleneck = load_bottleneck(BOTTLENECK, detector.model, COMPACT)
    frame = _profiled_frame()
    target = RcnnTarget('x', detector.model, frame, 'cpu')
    with torch.inference_mode():
        wire = bottleneck.encode(target.head(bottleneck.spec.point))
    assert entry['bytes'] == wire.tensor_bytes


def _profiled_frame() -> np.ndarray:
    from offload_runtime.split_profile import RCNN_FRAME
    from offload_runtime.sample_bag import SampleSpec, Scene

    spec = SampleSpec(width=RCNN_FRAME[1], height=RCNN_FRAME[0], seed=ProfileOptions().seed)
    return Scene(spec).render(0.1)[0]


def test_the_command_refuses_a_missing_foreign_or_misplaced_bottleneck(
        tmp_path: Path, yolo_config_dir: str, capsys: pytest.CaptureFixture[str]) -> None:
    from rcnn_service.bottleneck import BottleneckSpec, LearnedBottleneck

    base = ['profile', COMPACT, '--imgsz', '64', '--repeats', '1', '--threads', '1']
    assert main(base + ['--bottleneck', str(tmp_path / 'missing.pt')]) == 2
    assert "bottleneck file '" in capsys.readouterr().err
    (tmp_path / 'junk.pt').write_bytes(b'not a checkpoint')
    assert main(base + ['--bottleneck', str(tmp_path / 'junk.pt')]) == 2
    assert 'cannot read bottleneck file' in capsys.readouterr().err
    other = LearnedBottleneck(BottleneckSpec(COMPACT, 4, 'body.3', 24, 8, 2, 1, 48, 'f' * 64))
    other.save(tmp_path / 'other.pt')
    assert main(base + ['--bottleneck', str(tmp_path / 'other.pt')]) == 2
    assert 'trained against other' in capsys.readouterr().err
    assert main(['profile', str(YOLO_MODEL), '--imgsz', '64', '--repeats', '1',
                 '--bottleneck', str(BOTTLENECK)]) == 2
    assert 'for the cloud R-CNN' in capsys.readouterr().err
