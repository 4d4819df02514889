"""A split edge detector in the replay: the robot's head and the Pi's tail, from the robot's file.

The replay runs a head (``split_role: head``) on the camera frames and its tail on the head's
messages, through the graph's ports; the manager hears the tail as its edge source. With fp32
on the wire the detections are the unsplit replay's bit for bit, with int8 within the split
roles' tolerance (test/edge_inference/test_split_roles.py).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator

from adaptive_offload.conversions import message_to_detections
from adaptive_offload.datatypes import Detection, InferenceReport
from adaptive_offload.errors import ConfigError
from adaptive_offload.params import load_params_file
from adaptive_offload.typestore import make_typestore
from offload_runtime.replay import Replay, ReplayOptions, ReplayResult
from offload_runtime.replay_split import TAIL
from offload_runtime.sample_bag import SampleSpec, write_sample_bag
import pytest
from rosbags.rosbag2 import Reader
import yaml

MODEL = str(Path(__file__).resolve().parents[2] / 'models' / 'yolov8n-shapes.pt')
FRAMES = 4
HEAD = {'split_role': 'head', 'split_point': 4, 'split_encoding': 'int8+zstd',
        'source_name': 'robot'}
MANAGER = {'policy': 'edge-only', 'edge_sources': ['pi'], 'edge_model': 'yolov8n-shapes',
           'edge_imgsz': 320, 'deadline_ms': 20000.0}
INT8_TOLERANCE = (0.5, 0.02)  # box px, score (the split roles' int8 bound)


@pytest.fixture(scope='module')
def bag(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Write a short 640x480 bag of the shipped model's scenes; one torch thread meanwhile."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # head and tail share a 2-core machine with the player
    path = tmp_path_factory.mktemp('edge_split') / 'in'
    write_sample_bag(path, SampleSpec(frames=FRAMES, fps=5, width=640, height=480))
    yield path
    torch.set_num_threads(threads)


def edge_values(config_dir: str, **values: Any) -> dict[str, Any]:
    """Return edge_inference parameters: the shipped model at 320 px, then ``values``."""
    return {'model': MODEL, 'imgsz': 320, 'ultralytics_config_dir': config_dir, **values}


def replay(bag: Path, out: Path, edge: dict[str, Any], tail: dict[str, Any] | None = None,
           manager: dict[str, Any] | None = None, **options: Any) -> ReplayResult:
    """Replay ``bag`` as fast as the graph takes it, edge only."""
    overrides = {'edge_inference': edge, 'offload_manager': manager or MANAGER,
                 **({TAIL: tail} if tail is not None else {})}
    return Replay(ReplayOptions(bag=bag, out=out, rate=0.0, overrides=overrides,
                                **options)).run()


def read(out: Path, topic: str) -> list[Any]:
    """Return the messages of one topic of an output bag."""
    store = make_typestore('jazzy')
    with Reader(out) as reader:
        conns = [c for c in reader.connections if c.topic == topic]
        if not conns:  # messages() of no connections reads them all
            return []
        return [store.deserialize_cdr(raw, c.msgtype) for c, _, raw in reader.messages(conns)]


def detections(out: Path, source: str) -> dict[int, tuple[Detection, ...]]:
    """Return an edge source's detections in an output bag, by frame stamp."""
    topic = '/edge/detections' if source == 'edge' else f'/{source}/edge/detections'
    sets = [message_to_detections(m, source) for m in read(out, topic)]
    return {s.stamp_ns: s.detections for s in sets}


def reports(out: Path, topic: str) -> list[InferenceReport]:
    """Return the reports on a telemetry topic of an output bag."""
    return [InferenceReport.from_json(m.data) for m in read(out, topic)]


@pytest.fixture(scope='module')
def unsplit(bag: Path, yolo_config_dir: str) -> dict[int, tuple[Detection, ...]]:
    """Replay the bag with the whole detector; its detections by frame stamp."""
    out = bag.parent / 'unsplit'
    result = replay(bag, out, edge_values(yolo_config_dir),
                    manager={**MANAGER, 'edge_sources': ['edge']})
    assert result.summary['sources'] == {'edge': FRAMES}
    found = detections(out, 'edge')
    assert len(found) == FRAMES and all(found.values())  # the scenes have objects it sees
    return found


def test_the_robots_params_file_runs_head_and_tail_and_the_tail_answers_every_frame(
        bag: Path, yolo_config_dir: str, unsplit: dict[int, tuple[Detection, ...]],
        tmp_path: Path) -> None:
    params = tmp_path / 'robot.yaml'
    params.write_text(yaml.safe_dump({
        '/**/edge_inference': {'ros__parameters': edge_values(yolo_config_dir, **HEAD)},
        '/**/offload_manager': {'ros__parameters': MANAGER}}))
    out = tmp_path / 'out'
    result = Replay(ReplayOptions(bag=bag, out=out, rate=0.0, params_file=str(params),
                                  params=load_params_file(params))).run()

    assert [(r.route, r.result_source) for r in result.records] == [('edge', 'pi')] * FRAMES
    assert result.summary['drops'] == {} and result.summary['frames_lost'] == 0
    stamps = set(unsplit)
    heads = reports(out, '/robot/edge/telemetry')
    tails = reports(out, '/pi/edge/telemetry')
    option = 'yolov8n-shapes@320:4/end:int8+zstd'  # the head's parameters: no decision's
    assert {r.stamp_ns for r in heads if r.status == 'forwarded' and r.bytes_sent > 0 and
            r.split == option} == stamps
    assert {r.stamp_ns for r in tails if r.status == 'ok' and r.split == option} == stamps
    assert all(r.inference_ms > 0 and r.detections == 0 for r in heads)  # the head's time
    assert all(r.inference_ms > 0 and r.imgsz == 320 for r in tails)  # the tail's time
    split = read(out, '/robot/edge/split')
    assert len(split) == FRAMES and split[0].format.startswith('adaptive_offload/yolo-split')
    assert read(out, '/pi/edge/label_info') and not read(out, '/edge/detections')
    summary = result.summary['edge_split']
    assert (summary['point'], summary['encoding']) == (4, 'int8+zstd')
    assert (summary['head']['ok'], summary['tail']['ok']) == (FRAMES, FRAMES)
    assert summary['head']['splits'] == {option: FRAMES}
    assert summary['head']['p50_ms'] > 0 and summary['tail']['p50_ms'] > 0
    assert json.loads(json.dumps(summary)) == summary  # what --json prints

    box_px, score = INT8_TOLERANCE
    for stamp, got in detections(out, 'pi').items():
        want = unsplit[stamp]
        assert [d.class_name for d in got] == [d.class_name for d in want]
        for g, w in zip(got, want):
            assert max(abs(g.x1 - w.x1), abs(g.y1 - w.y1), abs(g.x2 - w.x2),
                       abs(g.y2 - w.y2)) <= box_px
            assert abs(g.score - w.score) <= score


def test_with_fp32_on_the_wire_the_split_replay_detects_as_the_unsplit_one(
        bag: Path, yolo_config_dir: str, unsplit: dict[int, tuple[Detection, ...]],
        tmp_path: Path) -> None:
    edge = edge_values(yolo_config_dir, **{**HEAD, 'split_encoding': 'fp32+zstd'})
    result = replay(bag, tmp_path / 'out', edge)
    assert result.summary['sources'] == {'pi': FRAMES}
    assert detections(tmp_path / 'out', 'pi') == unsplit


def test_a_head_at_point_0_answers_whole_when_the_manager_names_no_split(
        bag: Path, yolo_config_dir: str, unsplit: dict[int, tuple[Detection, ...]],
        tmp_path: Path) -> None:
    out = tmp_path / 'out'
    result = replay(bag, out, edge_values(yolo_config_dir, **{**HEAD, 'split_point': 0}),
                    manager={**MANAGER, 'edge_sources': ['robot', 'pi']})
    assert [(r.route, r.result_source, r.split) for r in result.records] == \
        [('edge', 'robot', '')] * FRAMES
    assert detections(out, 'robot') == unsplit  # the robot's own model, bit for bit
    assert {(r.status, r.split_role) for r in reports(out, '/robot/edge/telemetry')} == \
        {('ok', 'head')}
    assert reports(out, '/pi/edge/telemetry') == []  # the Pi's tail never saw a frame


def test_a_tail_at_another_k_fails_every_frame_with_the_reason_and_the_run_completes(
        bag: Path, yolo_config_dir: str, tmp_path: Path) -> None:
    result = replay(bag, tmp_path / 'out', edge_values(yolo_config_dir, **HEAD),
                    tail={'split_point': 6})
    assert not result.interrupted and len(result.records) == FRAMES
    reason = ('split_refused: the head splits at k=4, this tail at k=6: set the same split_point '
              '(or 0 on the tail to follow the head)')
    assert [r.drop_reason for r in result.records] == [reason] * FRAMES
    assert result.summary['drops'] == {'split_refused': FRAMES}
    assert result.summary['edge_split']['tail']['failures'] == {reason: FRAMES}
    assert result.summary['edge_split']['head']['ok'] == FRAMES
    tails = [r for r in result.reports if r.source == 'pi']
    assert [r.status for r in tails] == ['failed'] * FRAMES


@pytest.mark.parametrize('edge, tail, manager, match', [
    ({'split_point': 0}, None, None, "edge_sources \\['pi'\\] lack 'robot', the split head's"),
    ({'split_encoding': 'int9+zstd'}, None, None, "split_encoding 'int9\\+zstd'"),
    ({}, None, {'edge_sources': ['robot', 'pi', 'laptop']}, 'offload_manager: edge_sources'),
    ({}, {'split_topic': '/other/edge/split'}, None, f"{TAIL}: split_topic '/other"),
    ({}, {'source_name': 'robot'}, None, f"{TAIL}: source_name 'robot' is the head's"),
    ({}, {'source_name': 'laptop'}, None, "edge_sources \\['pi'\\] lack 'laptop'"),
    ({}, {'split_max_bytes': 10}, None, f'{TAIL}: Parameter split_max_bytes out of range'),
])
def test_bad_split_settings_are_refused_at_start_naming_the_parameter(
        bag: Path, tmp_path: Path, edge: dict[str, Any], tail: dict[str, Any] | None,
        manager: dict[str, Any] | None, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        replay(bag, tmp_path / 'out', edge_values('', **{**HEAD, **edge}), tail,
               {**MANAGER, **(manager or {})})
    assert not (tmp_path / 'out').exists()


def test_a_split_point_the_model_lacks_is_refused_naming_it(
        bag: Path, yolo_config_dir: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match='edge_inference: split_point 99: .*split point 99 '
                                          'invalid'):
        replay(bag, tmp_path / 'out', edge_values(yolo_config_dir, **{**HEAD,
                                                                      'split_point': 99}))


CHOSEN = 'yolov8n-shapes@320:2/end:fp16+lz4'
STATIC = {**MANAGER, 'policy': 'static-split', 'split_options': [CHOSEN],
          'split_middle_device': 'laptop_cpu', 'device': 'ci_machine'}
NO_CLOUD = {'url': 'http://127.0.0.1:9'}  # static-split on the edge route never calls it


@pytest.mark.parametrize('point, edge_sources', [(4, ['pi']), (0, ['robot', 'pi'])])
def test_the_head_runs_the_split_the_manager_chose_not_its_parameters(
        bag: Path, yolo_config_dir: str, tmp_path: Path, point: int,
        edge_sources: list[str]) -> None:
    out = tmp_path / 'out'
    overrides = {'edge_inference': edge_values(yolo_config_dir,
                                               **{**HEAD, 'split_point': point}),
                 'offload_manager': {**STATIC, 'edge_sources': edge_sources},
                 'cloud_bridge': NO_CLOUD}
    result = Replay(ReplayOptions(bag=bag, out=out, rate=0.0, overrides=overrides)).run()
    assert [(r.route, r.result_source, r.split) for r in result.records] == \
        [('edge', 'pi', CHOSEN)] * FRAMES
    assert all(r.deadline_met for r in result.records)
    # k=2 and fp16+lz4 from the decision, not the head's split_point and int8+zstd.
    heads = reports(out, '/robot/edge/telemetry')
    assert {(r.status, r.split) for r in heads} == {('forwarded', CHOSEN)}
    assert {r.split for r in reports(out, '/pi/edge/telemetry')} == {CHOSEN}
    assert result.summary['edge_split']['head']['splits'] == {CHOSEN: FRAMES}


def test_the_edge_models_splits_need_a_split_head(
        bag: Path, yolo_config_dir: str, tmp_path: Path) -> None:
    overrides = {'edge_inference': edge_values(yolo_config_dir),
                 'offload_manager': {**STATIC, 'edge_sources': ['edge']},
                 'cloud_bridge': NO_CLOUD}
    with pytest.raises(ConfigError, match='split the edge model yolov8n-shapes: edge_inference '
                                          'runs them with split_role head'):
        Replay(ReplayOptions(bag=bag, out=tmp_path / 'out', rate=0.0,
                             overrides=overrides)).run()
