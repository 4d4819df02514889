"""Published detections scored against a bag's ground truth: per frame, and as COCO mAP.

Per frame: recall and precision at IoU 0.5, class-aware, each true box matched at most once
(greedy by score, as COCO matches). Over a run: mAP@[.5:.95] by a maintained COCO evaluator
(faster-coco-eval), overall and per group (e.g. per route). A frame without a result still
counts: its true boxes are misses.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from adaptive_offload import topics
from adaptive_offload.conversions import message_to_detections
from adaptive_offload.datatypes import Detection, DetectionSet, FrameRecord
from adaptive_offload.errors import AdaptiveOffloadError, BagError
from rosbags.rosbag2 import Reader

Truth = Mapping[tuple[int, str], Sequence[Detection]]

MATCH_IOU = 0.5


@dataclass(frozen=True)
class FrameScore:
    """How one frame's result compares with its ground truth.

    Attributes:
        matched: Detections that match a true box (IoU >= 0.5, same class).
        truths: True boxes.
        detections: Detections published.
    """

    matched: int
    truths: int
    detections: int

    @property
    def recall(self) -> float | None:
        """Share of true boxes found; None without true boxes."""
        return self.matched / self.truths if self.truths else None

    @property
    def precision(self) -> float | None:
        """Share of detections that are true; None without detections."""
        return self.matched / self.detections if self.detections else None


def score_frame(truth: Sequence[Detection], detections: Sequence[Detection],
                threshold: float = MATCH_IOU) -> FrameScore:
    """Match a frame's detections to its true boxes (greedy by score, class-aware)."""
    free = list(truth)
    matched = 0
    for det in sorted(detections, key=lambda d: -d.score):
        best, best_iou = None, threshold
        for i, true in enumerate(free):
            if true.class_name == det.class_name:
                overlap = det.iou(true)
                if overlap >= best_iou:
                    best, best_iou = i, overlap
        if best is not None:
            free.pop(best)
            matched += 1
    return FrameScore(matched, len(truth), len(detections))


class MapScorer:
    """Collects scored frames and computes COCO mAP@[.5:.95] per group.

    Every frame belongs to the group ``all`` and to the groups it is added with.
    """

    def __init__(self) -> None:
        self._frames: list[tuple[tuple[str, ...], Sequence[Detection], Sequence[Detection]]] = []

    def add(self, truth: Sequence[Detection], detections: Sequence[Detection],
            groups: Iterable[str] = ()) -> FrameScore:
        """Add one frame (``detections`` empty when it was dropped); returns its score."""
        self._frames.append((('all', *groups), tuple(truth), tuple(detections)))
        return score_frame(truth, detections)

    def __len__(self) -> int:
        return len(self._frames)

    def mean_ap(self) -> dict[str, float]:
        """Return mAP@[.5:.95] of each group with at least one true box.

        Raises:
            AdaptiveOffloadError: If the COCO evaluator is not installed.
        """
        return {g: stats[0] for g, stats in self.mean_aps().items()}

    def mean_aps(self) -> dict[str, tuple[float, float]]:
        """Return (mAP@[.5:.95], mAP@.5) of each group with at least one true box.

        Raises:
            AdaptiveOffloadError: If the COCO evaluator is not installed.
        """
        groups = sorted({g for names, _, _ in self._frames for g in names})
        return {g: ap for g in groups
                if (ap := self._group_map([f for f in self._frames if g in f[0]])) is not None}

    @staticmethod
    def _group_map(frames: list[tuple[tuple[str, ...], Sequence[Detection],
                                      Sequence[Detection]]]) -> tuple[float, float] | None:
        try:
            from faster_coco_eval import COCO, COCOeval_faster
        except ImportError as err:
            raise AdaptiveOffloadError('scoring needs faster-coco-eval (requirements.txt)') \
                from err
        classes = sorted({d.class_name for _, truth, _ in frames for d in truth})
        if not classes:
            return None
        ids = {name: i + 1 for i, name in enumerate(classes)}
        images: list[dict[str, Any]] = []
        truths: list[dict[str, Any]] = []
        results: list[dict[str, Any]] = []
        for image_id, (_, truth, dets) in enumerate(frames, start=1):
            images.append({'id': image_id})
            for d in truth:
                truths.append({'id': len(truths) + 1, 'image_id': image_id, 'iscrowd': 0,
                               'category_id': ids[d.class_name], 'bbox': _xywh(d),
                               'area': (d.x2 - d.x1) * (d.y2 - d.y1)})
            results += [{'image_id': image_id, 'category_id': ids[d.class_name],
                         'bbox': _xywh(d), 'score': d.score}
                        for d in dets if d.class_name in ids]
        coco = COCO({'images': images, 'annotations': truths,
                     'categories': [{'id': i, 'name': n} for n, i in ids.items()]})
        evaluator = COCOeval_faster(coco, coco.loadRes(results), 'bbox',
                                    print_function=lambda *args: None)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
        # -1: nothing to score in some class
        return max(0.0, float(evaluator.stats[0])), max(0.0, float(evaluator.stats[1]))


def load_truth(bag: str | Path, store: Any) -> dict[tuple[int, str], tuple[Detection, ...]]:
    """Read a bag's ground truth (:data:`topics.GROUND_TRUTH`), keyed by (stamp, frame_id).

    Args:
        bag: The bag folder.
        store: The rosbags typestore to deserialize with.

    Returns:
        The true boxes of every frame that has them; empty when the bag has none. A message
        that cannot be read scores nothing (its frame is then not scored); it never stops
        the replay, whose output keeps the message as recorded.

    Raises:
        BagError: If the bag cannot be read (it is damaged).
    """
    out = {}
    try:
        with Reader(bag) as reader:
            conns = [c for c in reader.connections if c.topic == topics.GROUND_TRUTH and
                     c.msgtype == 'vision_msgs/msg/Detection2DArray']
            for conn, _, raw in reader.messages(conns):
                try:
                    truth = message_to_detections(store.deserialize_cdr(raw, conn.msgtype),
                                                  'truth')
                except Exception:  # noqa: BLE001 - any malformed CDR: that frame is not scored
                    continue
                out[(truth.stamp_ns, truth.frame_id)] = truth.detections
    except Exception as err:  # noqa: BLE001 - rosbags raises several types for a damaged bag
        raise BagError(f'{bag}: cannot read its ground truth ({err!r})') from err
    return out


class RunScorer:
    """Scores every frame of a run against the ground truth, as its record is written.

    Args:
        truth: True boxes by (stamp, frame_id); frames without truth are not scored.
    """

    def __init__(self, truth: Truth) -> None:
        self._truth = truth
        self._scorer = MapScorer()

    def score(self, record: FrameRecord, result: DetectionSet | None) -> FrameRecord:
        """Return the record with its recall and precision (unchanged without truth)."""
        truth = self._truth.get((record.stamp_ns, record.frame_id))
        if truth is None:
            return record
        groups = (f'route {record.route}', f'source {record.result_source or "none"}')
        score = self._scorer.add(truth, result.detections if result is not None else (),
                                 groups)
        return replace(record, recall=score.recall, precision=score.precision)

    def summary(self) -> dict[str, Any]:
        """Return ``{'map': {group: mAP}}`` when frames were scored, else nothing."""
        return {'map': self._scorer.mean_ap()} if len(self._scorer) else {}


def _xywh(d: Detection) -> list[float]:
    return [d.x1, d.y1, d.x2 - d.x1, d.y2 - d.y1]
