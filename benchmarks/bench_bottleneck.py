"""Learned bottleneck vs naive split vs JPEG for the cloud R-CNN: mAP, bytes, times.

On the held-out frames ``adaptive-offload train measure`` scores the cloud model on (test-split
seeds, ``--frames`` per difficulty, COCO mAP by faster-coco-eval at score >= 0.01, the
cloud row of ``models/accuracy.json``), one row per way of getting a frame to the service:

* ``unsplit raw``: the frame itself (what ``models/accuracy.json`` reports; nothing this small
  can cross a link);
* ``JPEG qN``: the frame JPEG-encoded at quality N and decoded on the service, as offloading
  the frame sends it (the JPEG is lossy too, so its mAP is measured, not assumed);
* ``naive int8``: the crossing tensor of the bottleneck's split point, int8 + zstd;
* ``naive P @point``: with ``--points``, the crossing tensors of more split points at each
  precision of ``--precisions``, + zstd: what quantisation costs at each point;
* ``bottleneck wN``: each bottleneck file given: the code crossing as int8 + zstd.

Bytes are the mean per frame of what crosses: the JPEG file, or the encoded tensors with their
tensor_codec headers (the JSON sizes, about 100 bytes, are the same for every split row and
left out). ``enc ms`` is the robot's extra work per frame beyond the head (JPEG encoding, or
the bottleneck's encoder + int8 + zstd; for the ``--points`` rows the head as well), ``dec ms``
the service's before the detector (JPEG decoding, or zstd + dequantisation + the decoder); both
means on this CPU. Prints figures only.

Run: ``.venv/bin/python benchmarks/bench_bottleneck.py [--bottleneck FILE ...] [--frames 60]
[--points all --precisions int8,fp16]``
"""

from __future__ import annotations

import argparse
from pathlib import Path
import time
from typing import Any, Callable

import cv2
import numpy as np
from offload_runtime.model_accuracy import CLOUD_SCORE, score_detections
from offload_runtime.train_data import held_out, LabelledFrame
from rcnn_service.bottleneck import load_bottleneck
from rcnn_service.compact_rcnn import COMPACT_ARCH
from rcnn_service.rcnn_detector import image_tensor, RcnnDetector
from rcnn_service.rcnn_split import decode_payload, encode_payload, RcnnSplit

MODELS = Path(__file__).resolve().parents[1] / 'models'
DETECTOR = MODELS / 'rcnn-shapes.pt'
BOTTLENECK = MODELS / 'rcnn-shapes-bottleneck.pt'
JPEG_QUALITIES = (50, 75, 95)
DIFFICULTIES = ('easy', 'medium', 'hard')


class Row:
    """One way of sending a frame: detections, bytes and times per frame."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.found: list[Any] = []
        self.sizes: list[int] = []
        self.enc_ms: list[float] = []
        self.dec_ms: list[float] = []


def timed(fn: Callable[[], Any], into: list[float]) -> Any:
    """Run ``fn``, append its time (ms) to ``into``, return its result."""
    start = time.perf_counter()
    result = fn()
    into.append((time.perf_counter() - start) * 1e3)
    return result


def as_detections(detector: RcnnDetector, outputs: list[dict[str, Any]]) -> tuple[Any, ...]:
    """Return the first image's detections as ``model_accuracy.cloud_detector`` does."""
    from adaptive_offload.datatypes import Detection

    found = detector.detections(outputs)[0]
    return tuple(Detection(float(b[0]), float(b[1]), float(b[2]), float(b[3]), float(s), label)
                 for b, s, label in zip(found.boxes, found.scores, found.labels))


def run(detector: RcnnDetector, bottlenecks: list[Any], frames: list[LabelledFrame],
        log: Callable[[str], None], points: tuple[tuple[int, str], ...] = ()) -> list[Row]:
    """Measure every row on ``frames``; ``points``: more (point, precision) naive rows."""
    import torch

    model = detector.model
    split = RcnnSplit(model)
    point = bottlenecks[0].spec.point
    raw, naive = Row('unsplit raw'), Row(f'naive int8 @{point}')
    jpegs = {q: Row(f'JPEG q{q}') for q in JPEG_QUALITIES}
    learned = [Row(f'bottleneck w{b.spec.width}/{b.spec.reduction}') for b in bottlenecks]
    more = [Row(f'naive {precision} @{split.point(k).name}') for k, precision in points]
    head_ms: list[float] = []
    for i, frame in enumerate(frames):
        if i % 30 == 0:
            log(f'frame {i}/{len(frames)}')
        with torch.inference_mode():
            x = image_tensor(frame.image)
            raw.found.append(as_detections(detector, model([x])))
            raw.sizes.append(frame.image.nbytes)
            for q, row in jpegs.items():
                ok, buf = timed(lambda: cv2.imencode(
                    '.jpg', frame.image, [cv2.IMWRITE_JPEG_QUALITY, q]), row.enc_ms)
                if not ok:
                    raise RuntimeError('JPEG encoding failed')
                image = timed(lambda: cv2.imdecode(buf, cv2.IMREAD_COLOR), row.dec_ms)
                row.sizes.append(int(buf.size))
                row.found.append(as_detections(detector, model([image_tensor(image)])))
            payload = timed(lambda: split.head([x], point), head_ms)
            wire = timed(lambda: encode_payload(payload, 'int8', 'zstd'), naive.enc_ms)
            naive.sizes.append(wire.tensor_bytes)
            back = timed(lambda: decode_payload(wire), naive.dec_ms)
            naive.found.append(as_detections(detector, split.tail(back)))
            for (k, precision), row in zip(points, more):
                wire = timed(lambda: encode_payload(split.head([x], k), precision, 'zstd'),
                             row.enc_ms)
                row.sizes.append(wire.tensor_bytes)
                back = timed(lambda: decode_payload(wire), row.dec_ms)
                row.found.append(as_detections(detector, split.tail(back)))
            for bottleneck, row in zip(bottlenecks, learned):
                code = timed(lambda: bottleneck.encode(payload), row.enc_ms)
                row.sizes.append(code.tensor_bytes)
                back = timed(lambda: bottleneck.decode(code), row.dec_ms)
                row.found.append(as_detections(detector, split.tail(back)))
    log(f'head to point {point}: {np.mean(head_ms):.1f} ms per frame (every split row)')
    return [raw, *jpegs.values(), naive, *learned, *more]


def table(rows: list[Row], frames: list[LabelledFrame]) -> str:
    """Format the rows as a Markdown table."""
    jpeg = {r.name: float(np.mean(r.sizes)) for r in rows if r.name.startswith('JPEG')}
    lines = ['| input | ' + ' | '.join(f'{d} mAP' for d in DIFFICULTIES)
             + ' | all mAP (mAP50) | KiB/frame | vs JPEG q50/q75/q95 | enc ms | dec ms |',
             '|---|' + '---|' * (len(DIFFICULTIES) + 5)]
    for row in rows:
        scores = score_detections(frames, row.found)
        size = float(np.mean(row.sizes))
        ratios = '/'.join(f'{size / jpeg[f"JPEG q{q}"]:.2f}' for q in JPEG_QUALITIES)
        times = (f'{np.mean(row.enc_ms):.1f} | {np.mean(row.dec_ms):.1f}' if row.enc_ms
                 else '- | -')
        cells = ' | '.join(f'{scores[d]["map"]:.1f}' for d in DIFFICULTIES)
        lines.append(f'| {row.name} | {cells} | {scores["all"]["map"]:.1f} '
                     f'({scores["all"]["map50"]:.1f}) | {size / 1024:.2f} | {ratios} | '
                     f'{times} |')
    return '\n'.join(lines)


def main() -> None:
    """Print the table."""
    import torch

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--bottleneck', type=Path, nargs='+', default=[BOTTLENECK],
                        help='bottleneck files (one split point)')
    parser.add_argument('--detector', type=Path, default=DETECTOR)
    parser.add_argument('--frames', type=int, default=60, help='held-out frames per difficulty')
    parser.add_argument('--seed', type=int, default=0, help='which held-out frames')
    parser.add_argument('--threads', type=int, default=1, help='torch threads')
    parser.add_argument('--points', default='',
                        help='more split points (names, comma-separated, or "all") whose naive '
                             'crossing is measured at each of --precisions')
    parser.add_argument('--precisions', default='int8', help='comma-separated: int8, fp16')
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cv2.setNumThreads(1)
    detector = RcnnDetector(COMPACT_ARCH, str(args.detector), score_threshold=CLOUD_SCORE)
    bottlenecks = [load_bottleneck(p, detector.model, COMPACT_ARCH) for p in args.bottleneck]
    if len({b.spec.point for b in bottlenecks}) != 1:
        parser.error('the bottlenecks must share one split point')
    frames = [f for name in DIFFICULTIES for f in held_out(name, args.frames, args.seed)]
    by_name = {p.name: p.index for p in RcnnSplit(detector.model).points}
    names = list(by_name) if args.points == 'all' else [n for n in args.points.split(',') if n]
    unknown = [n for n in names if n not in by_name]
    if unknown:
        parser.error(f'unknown points {unknown} (points: {", ".join(by_name)})')
    points = tuple((by_name[n], p) for n in names for p in args.precisions.split(',') if p)

    def log(line: str) -> None:
        print(line, flush=True)

    rows = run(detector, bottlenecks, frames, log, points)
    print(f'{args.detector.name} on {len(frames)} held-out frames ({args.frames} per '
          f'difficulty, seed {args.seed}), score >= {CLOUD_SCORE}; widths are code channels / '
          'spatial reduction')
    print(table(rows, frames))


if __name__ == '__main__':
    main()
