"""The replay's graph: split routes run through the cloud bridge's heads and the service's tail.

An edge split (a head and its tail) runs in test_replay_edge_split.py.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

from adaptive_offload import topics
from adaptive_offload.errors import ConfigError
from adaptive_offload.typestore import make_typestore
from offload_runtime.replay import Replay, ReplayOptions
from offload_runtime.sample_bag import SampleSpec, write_sample_bag
import pytest
from rcnn_service.compact_rcnn import COMPACT_ARCH
from rcnn_service.service import ServiceConfig
from rosbags.rosbag2 import Reader

CHECKPOINT = str(Path(__file__).resolve().parents[2] / 'models' / 'rcnn-shapes.pt')
SPLIT = f'{COMPACT_ARCH}@640:body.3:int8+zstd'
MANAGER = {'policy': 'static-split', 'device': 'ci_machine', 'cloud_device': 'ci_machine',
           'cloud_model': COMPACT_ARCH, 'split_options': [SPLIT], 'deadline_ms': 20000.0}


def _replay(tmp_path: Path, factory: Callable[..., Any], frames: int,
            cloud: dict[str, Any] | None = None) -> Any:
    return Replay(ReplayOptions(
        bag=tmp_path / 'in', out=tmp_path / 'out', rate=0.0, max_frames=frames,
        overrides={'offload_manager': MANAGER, 'cloud_bridge': cloud or {}},
        service=ServiceConfig(arch=COMPACT_ARCH, checkpoint=CHECKPOINT, threads=1)),
        backend_factory=factory).run()


def _cloud_reports(out: Path) -> list[dict[str, Any]]:
    """Return the cloud bridge's reports a replay wrote to ``out``."""
    store = make_typestore('jazzy')
    with Reader(out) as reader:
        conns = [c for c in reader.connections if c.topic == topics.CLOUD_TELEMETRY]
        return [json.loads(store.deserialize_cdr(raw, c.msgtype).data)
                for c, _, raw in reader.messages(conns)]


def test_a_static_split_replay_sends_every_frame_through_the_head_and_the_tail(
        tmp_path: Path, fake_backend_factory: Callable[..., Any]) -> None:
    write_sample_bag(tmp_path / 'in', SampleSpec(frames=6, fps=5, width=320, height=240))
    result = _replay(tmp_path, fake_backend_factory, 6)
    assert [r.route for r in result.records] == ['split'] * 6
    # The embedded service's own weights built the heads, so its tail answers them.
    assert result.summary['cloud']['answered'] == result.summary['cloud']['requests'] > 0
    reports = _cloud_reports(tmp_path / 'out')
    answered = [r for r in reports if r['status'] == 'ok']
    assert answered and {r['model'] for r in answered} == {f'split:{SPLIT}'}
    assert all(0 < r['inference_ms'] < r['total_ms'] for r in answered)  # the head's time


def test_split_options_the_bridge_runs_no_head_for_are_refused(
        tmp_path: Path, fake_backend_factory: Callable[..., Any]) -> None:
    write_sample_bag(tmp_path / 'in', SampleSpec(frames=2, fps=5, width=64, height=48))
    other = f'{COMPACT_ARCH}@640:body.2:int8+zstd'
    with pytest.raises(ConfigError, match=r"split_options \['.*body.3:int8\+zstd'\]: "
                                          'cloud_bridge runs no head'):
        _replay(tmp_path, fake_backend_factory, 2,
                cloud={'split_options': [other], 'split_checkpoint': CHECKPOINT})


def test_a_split_tail_alone_is_refused_it_has_no_head_in_the_replay(
        tmp_path: Path, fake_backend_factory: Callable[..., Any]) -> None:
    # A head runs, with its tail (test_replay_edge_split.py); a tail alone gets no frames.
    write_sample_bag(tmp_path / 'in', SampleSpec(frames=2, fps=5, width=64, height=48))
    tail = {'split_role': 'tail', 'split_point': 4, 'split_topic': '/robot/edge/split'}
    with pytest.raises(ConfigError, match='edge_inference: split_role tail runs behind a head '
                                          ".* split_topic '/robot/edge/split'.*split_role head"):
        Replay(ReplayOptions(bag=tmp_path / 'in', out=tmp_path / 'out', rate=0.0, overrides={
            'offload_manager': {'policy': 'edge-only'}, 'edge_inference': tail}),
            backend_factory=fake_backend_factory).run()
    assert not (tmp_path / 'out').exists()


@pytest.mark.parametrize('cut', ['body.2/body.3', 'body.2/end'])
def test_a_three_tier_replay_runs_the_middle_devices_service_on_loopback(
        tmp_path: Path, fake_backend_factory: Callable[..., Any], cut: str) -> None:
    # The robot's head to body.2, the middle device's service (forwarding to the embedded
    # cloud's tail unless the option ends there), the same answers as two tiers give.
    write_sample_bag(tmp_path / 'in', SampleSpec(frames=4, fps=5, width=320, height=240))
    option = f'{COMPACT_ARCH}@640:{cut}:int8+zstd'
    manager = {**MANAGER, 'split_options': [option], 'split_middle_device': 'ci_machine'}
    said: list[str] = []
    result = Replay(ReplayOptions(
        bag=tmp_path / 'in', out=tmp_path / 'out', rate=0.0, max_frames=4,
        overrides={'offload_manager': manager},
        service=ServiceConfig(arch=COMPACT_ARCH, checkpoint=CHECKPOINT, threads=1)),
        backend_factory=fake_backend_factory, status=said.append).run()
    assert any(line.startswith("middle device's service ready at http://127.0.0.1:")
               for line in said)
    assert [r.route for r in result.records] == ['split'] * 4
    assert result.summary['cloud']['answered'] == result.summary['cloud']['requests'] == 4
    reports = _cloud_reports(tmp_path / 'out')
    assert {r['model'] for r in reports if r['status'] == 'ok'} == {f'split:{option}'}


def test_a_learned_bottleneck_replay_decodes_the_shipped_bottleneck_in_the_service(
        tmp_path: Path, fake_backend_factory: Callable[..., Any]) -> None:
    # The embedded service takes the shipped bottleneck when an option needs one.
    write_sample_bag(tmp_path / 'in', SampleSpec(frames=4, fps=5, width=320, height=240))
    option = f'{COMPACT_ARCH}@640:body.3:bottleneck'
    result = Replay(ReplayOptions(
        bag=tmp_path / 'in', out=tmp_path / 'out', rate=0.0, max_frames=4,
        overrides={'offload_manager': {**MANAGER, 'split_options': [option]}},
        service=ServiceConfig(arch=COMPACT_ARCH, checkpoint=CHECKPOINT, threads=1)),
        backend_factory=fake_backend_factory).run()
    assert [r.route for r in result.records] == ['split'] * 4
    assert result.summary['cloud']['answered'] == result.summary['cloud']['requests'] == 4
    reports = _cloud_reports(tmp_path / 'out')
    answered = [r for r in reports if r['status'] == 'ok']
    assert {r['model'] for r in answered} == {f'split:{option}'}
    assert all(r['bytes_sent'] < 12 << 10 for r in answered)  # the code, not the 87 KiB map
