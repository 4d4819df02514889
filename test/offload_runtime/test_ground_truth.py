"""Scoring against ground truth: per-frame matching and COCO mAP of a run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from adaptive_offload import topics
from adaptive_offload.conversions import detections_to_message, frame_to_message
from adaptive_offload.datatypes import Detection, DetectionSet, FrameRecord
from adaptive_offload.typestore import make_typestore, message_types
import numpy as np
from offload_runtime.bagio import OutputBag, qos
from offload_runtime.ground_truth import load_truth, MapScorer, RunScorer, score_frame
from offload_runtime.replay import Replay, ReplayOptions
from offload_runtime.sample_bag import SampleSpec, write_sample_bag
from offload_runtime.summary import format_summary
import pytest
from rosbags.rosbag2 import Reader


def _box(x: float, y: float, size: float = 20.0, score: float = 1.0,
         name: str = 'box') -> Detection:
    return Detection(x, y, x + size, y + size, score, name)


def test_iou_of_disjoint_nested_and_shifted_boxes() -> None:
    assert _box(0, 0).iou(_box(50, 50)) == 0.0
    assert _box(0, 0).iou(_box(0, 0)) == 1.0
    assert _box(0, 0).iou(_box(10, 0)) == pytest.approx(200 / 600)


def test_a_true_box_is_matched_once_by_the_same_class_above_half_overlap() -> None:
    truth = [_box(0, 0), _box(100, 100), _box(200, 200, name='disc')]
    dets = [_box(1, 1, score=0.9), _box(0, 0, score=0.8),   # one true box, two detections
            _box(110, 100, score=0.7),                      # IoU 1/3: not a match
            _box(200, 200, score=0.6, name='box')]          # right place, wrong class
    score = score_frame(truth, dets)
    assert (score.matched, score.truths, score.detections) == (1, 3, 4)
    assert score.recall == pytest.approx(1 / 3) and score.precision == pytest.approx(1 / 4)
    assert score_frame([], []).recall is None and score_frame([], []).precision is None
    assert score_frame(truth, []).recall == 0.0


def test_map_is_one_for_perfect_results_and_drops_with_misses_per_group() -> None:
    scorer = MapScorer()
    truth = [_box(0, 0), _box(100, 100, name='disc')]
    for _ in range(5):
        scorer.add(truth, [_box(0, 0, score=0.9), _box(100, 100, score=0.8, name='disc')],
                   ['cloud'])
    assert scorer.mean_ap() == {'all': pytest.approx(1.0), 'cloud': pytest.approx(1.0)}
    for _ in range(5):  # the edge finds only the box; dropped frames find nothing
        scorer.add(truth, [_box(0, 0, score=0.9)], ['edge'])
    scorer.add(truth, [], ['dropped'])
    maps = scorer.mean_ap()
    assert maps['cloud'] == pytest.approx(1.0) and maps['dropped'] == 0.0
    assert maps['edge'] == pytest.approx(0.5)  # box 1.0, disc 0.0
    assert maps['edge'] < maps['all'] < maps['cloud']
    assert len(scorer) == 11


def test_a_run_without_truth_has_no_map() -> None:
    scorer = MapScorer()
    scorer.add([], [_box(0, 0)])
    assert scorer.mean_ap() == {}


def _bag_with_truth(path: Path, truth: list[Detection], frames: int = 10) -> None:
    """Write 64x48 frames whose ground truth is ``truth`` (FakeBackend finds the centre box)."""
    store = make_typestore('jazzy')
    types = message_types(store)
    bag = OutputBag(path, store)
    try:
        bag.add_topic('/camera/image_raw', 'sensor_msgs/msg/Image', qos('sensor'))
        bag.add_topic(topics.GROUND_TRUTH, 'vision_msgs/msg/Detection2DArray', qos('result'))
        for i in range(frames):
            stamp = (i + 1) * 100_000_000
            image = np.full((48, 64, 3), 100, np.uint8)
            bag.write('/camera/image_raw', frame_to_message(types, image, stamp, 'cam', 'rgb8'),
                      stamp)
            bag.write(topics.GROUND_TRUTH, detections_to_message(
                types, DetectionSet(stamp, 'cam', 'truth', tuple(truth))), stamp)
    finally:
        bag.close()


def test_replay_scores_every_frame_and_reports_map(tmp_path: Path,
                                                   fake_backend_factory: Any) -> None:
    centre = Detection(16.0, 12.0, 48.0, 36.0, 1.0, 'box')  # FakeBackend's box on 64x48
    _bag_with_truth(tmp_path / 'found', [centre])
    options = {'offload_manager': {'policy': 'edge-only'}}
    found = Replay(ReplayOptions(bag=tmp_path / 'found', out=tmp_path / 'out1', rate=0.0,
                                 overrides=options), backend_factory=fake_backend_factory).run()
    assert [(r.recall, r.precision) for r in found.records] == [(1.0, 1.0)] * 10
    assert found.summary['map']['all'] == pytest.approx(1.0)
    assert found.summary['map']['source edge'] == pytest.approx(1.0)
    assert 'mAP@[.5:.95]      1.000 (against ground truth)' in format_summary(found.summary)
    missed = _box(0, 0, size=10, name='disc')  # a second object the edge never finds
    _bag_with_truth(tmp_path / 'half', [centre, missed])
    half = Replay(ReplayOptions(bag=tmp_path / 'half', out=tmp_path / 'out2', rate=0.0,
                                overrides=options), backend_factory=fake_backend_factory).run()
    assert {(r.recall, r.precision) for r in half.records} == {(0.5, 1.0)}
    assert half.summary['map']['all'] == pytest.approx(0.5)
    # The records in the output bag carry the scores too.
    store = make_typestore('jazzy')
    with Reader(tmp_path / 'out2') as reader:
        conns = [c for c in reader.connections if c.topic == topics.FRAMES]
        written = [FrameRecord.from_json(store.deserialize_cdr(raw, c.msgtype).data)
                   for c, _, raw in reader.messages(conns)]
    assert {r.recall for r in written} == {0.5}


def test_a_bag_without_truth_is_not_scored(tmp_path: Path, fake_backend_factory: Any) -> None:
    write_sample_bag(tmp_path / 'in', SampleSpec(frames=3, width=64, height=48))
    store = make_typestore('jazzy')
    assert len(load_truth(tmp_path / 'in', store)) == 3
    _bag_with_truth(tmp_path / 'none', [], frames=0)
    assert load_truth(tmp_path / 'none', store) == {}
    scorer = RunScorer({})
    record = FrameRecord(stamp_ns=1, frame_id='cam')
    assert scorer.score(record, None) is record and scorer.summary() == {}
