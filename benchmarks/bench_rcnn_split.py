"""Split computing figures for the cloud R-CNN: what crosses each split point, at what cost.

For the shipped ``models/rcnn-shapes.pt`` (the compact Faster R-CNN) at its native input size,
one generated scene frame (``offload_runtime.sample_bag.Scene``, 640x480 by default, so the
network reads exactly the frame that is JPEG-encoded) and, per split point (head: the image
transform and the backbone body up to the point; tail: the rest, RPN, ROI heads, postprocess):

* the crossing tensors' shapes (channels x height x width; batch 1);
* their bytes: fp32 raw, and fp16/int8 each with zstd and lz4 (``adaptive_offload.tensor_codec``,
  headers included; the metadata, under 100 bytes of JSON, is not counted);
* head and tail time on this CPU, best of ``--repeat`` runs;
* the detections scoring >= 0.5 with fp16 and int8 crossing tensors against the unsplit fp32
  model: their count, the least IoU of one with its best same-label match and the largest
  score difference (compression is lossless, so these do not depend on it).

The JPEG sizes of the same frame at quality 50/75/95 are what offloading the frame would send.
Prints figures only.

Run: ``.venv/bin/python benchmarks/bench_rcnn_split.py [--width 640 --height 480] [--threads 1]``
"""

from __future__ import annotations

import argparse
from pathlib import Path
import time
from typing import Any, Callable

import cv2
import numpy as np
from offload_runtime.sample_bag import SampleSpec, Scene
from rcnn_service.rcnn_detector import ARCHITECTURES
from rcnn_service.rcnn_split import decode_payload, encode_payload, RcnnPayload, RcnnSplit

MODEL = Path(__file__).resolve().parents[1] / 'models' / 'rcnn-shapes.pt'
CODECS = (('fp16', 'zstd'), ('fp16', 'lz4'), ('int8', 'zstd'), ('int8', 'lz4'))
JPEG_QUALITIES = (50, 75, 95)
SCORE = 0.5


def jpeg_bytes(image: np.ndarray, quality: int) -> int:
    """Size of ``image`` as a JPEG of ``quality``."""
    ok, buf = cv2.imencode('.jpg', image, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise RuntimeError('JPEG encoding failed')
    return int(buf.size)


def best_time(fn: Callable[[], Any], repeat: int) -> tuple[float, Any]:
    """Run ``fn`` ``repeat`` times; return the shortest time (ms) and the last result."""
    times, result = [], None
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn()
        times.append((time.perf_counter() - start) * 1e3)
    return min(times), result


def shapes(payload: RcnnPayload) -> str:
    """Join the crossing tensors' shapes, batch left out, with ``+``."""
    return '+'.join('x'.join(map(str, t.shape[1:])) for t in payload.tensors.values())


def agreement(reference: dict[str, Any], out: dict[str, Any]) -> str:
    """Confident detections of ``out`` vs ``reference``: count, least IoU, largest score diff."""
    from torchvision.ops import box_iou

    ref = {k: v[reference['scores'] >= SCORE] for k, v in reference.items()}
    got = {k: v[out['scores'] >= SCORE] for k, v in out.items()}
    if not len(ref['scores']) or not len(got['scores']):
        return f'{len(got["scores"]):>2} {"-":>6} {"-":>6}'
    iou = box_iou(ref['boxes'], got['boxes']) * (ref['labels'][:, None] == got['labels'])
    best, index = iou.max(1)
    score = float((ref['scores'] - got['scores'][index]).abs().max())
    return f'{len(got["scores"]):>2} {float(best.min()):6.4f} {score:6.4f}'


def load(threads: int) -> Any:
    """Load the shipped model as RcnnDetector does, in eval mode."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    data = torch.load(MODEL, map_location='cpu', weights_only=True)
    model = ARCHITECTURES[data['arch']]()(weights=None, weights_backbone=None,
                                          num_classes=len(data['categories']))
    model.load_state_dict(data['state_dict'])
    return model.eval()


def table(model: Any, image: np.ndarray, repeat: int) -> None:
    """Print the figures of one frame."""
    import torch

    x = (torch.from_numpy(np.ascontiguousarray(image[:, :, ::-1])).permute(2, 0, 1)
         .float().div_(255.0))
    split = RcnnSplit(model)
    with torch.no_grad():
        unsplit_ms, reference = best_time(lambda: model([x])[0], repeat)
        jpegs = '  '.join(f'q{q} {jpeg_bytes(image, q) / 1024:.1f}' for q in JPEG_QUALITIES)
        print(f'frame {image.shape[1]}x{image.shape[0]}: {image.nbytes / 1024:.1f} KiB raw BGR; '
              f'JPEG KiB: {jpegs}; unsplit {unsplit_ms:.0f} ms, '
              f'{int((reference["scores"] >= SCORE).sum())} detections >= {SCORE}')
        codecs = ''.join(f'{e}+{c:>4} ' for e, c in CODECS)
        agree = f'{"n":>2} {"IoU":>6} {"score":>6}'
        print(f'{"":57}{"crossing KiB":<50}{"ms":<16}{"fp16":<17}int8')
        print(f'{"k":>2} {"point":<9} {"shapes (C x H x W)":<44} {"fp32 raw":>9} {codecs} '
              f'{"head":>7} {"tail":>7}  {agree}  {agree}')
        for point in split.points:
            head_ms, payload = best_time(lambda: split.head([x], point.index), repeat)
            tail_ms, _ = best_time(lambda: split.tail(payload), repeat)
            raw = sum(t.numel() * t.element_size() for t in payload.tensors.values())
            sizes = [encode_payload(payload, e, c).tensor_bytes for e, c in CODECS]
            lossy = [agreement(reference,
                               split.tail(decode_payload(encode_payload(payload, e)))[0])
                     for e in ('fp16', 'int8')]
            cells = ''.join(f'{s / 1024:9.1f} ' for s in sizes)
            print(f'{point.index:>2} {point.name:<9} {shapes(payload):<44} {raw / 1024:9.1f} '
                  f'{cells} {head_ms:7.0f} {tail_ms:7.0f}  {lossy[0]}  {lossy[1]}')


def main() -> None:
    """Print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--width', type=int, default=640)
    parser.add_argument('--height', type=int, default=480)
    parser.add_argument('--seed', type=int, default=3, help='scene seed')
    parser.add_argument('--repeat', type=int, default=5, help='runs to time, best kept')
    parser.add_argument('--threads', type=int, default=1, help='torch threads (0: its default)')
    args = parser.parse_args()
    model = load(args.threads)
    image, _ = Scene(SampleSpec(width=args.width, height=args.height, seed=args.seed)).render(0.1)
    print(f'{MODEL.name}: crossing tensors per split point (head = transform + body up to the '
          f'point), KiB; detections >= {SCORE} with lossy tensors vs unsplit fp32')
    table(model, image, args.repeat)


if __name__ == '__main__':
    main()
