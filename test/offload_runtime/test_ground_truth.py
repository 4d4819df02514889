"""Scoring against ground truth: per-frame matching and COCO mAP of a run."""

from __future__ import annotations

from adaptive_offload.datatypes import Detection
from offload_runtime.ground_truth import iou, MapScorer, score_frame
import pytest


def _box(x: float, y: float, size: float = 20.0, score: float = 1.0,
         name: str = 'box') -> Detection:
    return Detection(x, y, x + size, y + size, score, name)


def test_iou_of_disjoint_nested_and_shifted_boxes() -> None:
    assert iou(_box(0, 0), _box(50, 50)) == 0.0
    assert iou(_box(0, 0), _box(0, 0)) == 1.0
    assert iou(_box(0, 0), _box(10, 0)) == pytest.approx(200 / 600)


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
