"""Split computing figures: what crosses each split point of the edge YOLO, and at what error.

For the shipped ``models/yolov8n-shapes.pt`` at each input size, one generated scene frame
(``offload_runtime.sample_bag.Scene``, rendered square at the input size, so the network sees
exactly the frame that is JPEG-encoded) and, per split point ``k`` (head: layers [0, k)):

* the bytes of the crossing tensors: fp32 raw, and fp16/int8 each with zstd and lz4
  (``adaptive_offload.tensor_codec``, header included);
* the largest error of the raw detection output with fp16 and int8 crossing tensors, relative
  to the unsplit fp32 output: box coordinates in input pixels over all anchors and over the
  confident ones (best class score > 0.25), and class scores (compression is lossless, so the
  error does not depend on it).

The JPEG sizes of the same frame at quality 50/75/95 are what offloading the frame would send.
Prints figures only.

Run: ``.venv/bin/python benchmarks/bench_split.py [--imgsz 320 640] [--threads 1]``
"""

from __future__ import annotations

import argparse
from pathlib import Path
import tempfile
from typing import Any

import cv2
from edge_inference.ultralytics_backend import prepare_offline
from edge_inference.yolo_split import decode_crossing, encode_crossing, YoloSplit
import numpy as np
from offload_runtime.sample_bag import SampleSpec, Scene

MODEL = Path(__file__).resolve().parents[1] / 'models' / 'yolov8n-shapes.pt'
CODECS = (('fp16', 'zstd'), ('fp16', 'lz4'), ('int8', 'zstd'), ('int8', 'lz4'))
JPEG_QUALITIES = (50, 75, 95)
CONFIDENT = 0.25


def frame(imgsz: int, seed: int) -> np.ndarray:
    """Render one BGR scene frame of ``imgsz`` x ``imgsz``."""
    image, _ = Scene(SampleSpec(width=imgsz, height=imgsz, seed=seed)).render(0.1)
    return image


def jpeg_bytes(image: np.ndarray, quality: int) -> int:
    """Size of ``image`` as a JPEG of ``quality``."""
    ok, buf = cv2.imencode('.jpg', image, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise RuntimeError('JPEG encoding failed')
    return int(buf.size)


def errors(split: YoloSplit, crossing: dict[int, Any], k: int, encoding: str,
           reference: Any) -> str:
    """Largest box error (px; all anchors, confident ones) and score error, as a table cell.

    Confident: anchors whose best class scores above ``CONFIDENT`` in the unsplit output.
    """
    out = split.tail(decode_crossing(encode_crossing(crossing, encoding, 'zstd')), k)[0]
    diff = (out - reference).abs()[0]
    confident = reference[0, 4:].max(0).values > CONFIDENT
    box_conf = float(diff[:4, confident].max()) if bool(confident.any()) else 0.0
    return f'{float(diff[:4].max()):7.3f} {box_conf:6.3f} {float(diff[4:].max()):7.1e}'


def table(model: Any, imgsz: int, seed: int) -> None:
    """Print the figures of one input size."""
    import torch

    image = frame(imgsz, seed)
    x = torch.from_numpy(np.ascontiguousarray(image[:, :, ::-1])).permute(2, 0, 1)[None] / 255
    net = model.model.eval()
    split = YoloSplit(model)
    with torch.no_grad():
        reference = net(x)[0]
    jpegs = '  '.join(f'q{q} {jpeg_bytes(image, q) / 1024:.1f}' for q in JPEG_QUALITIES)
    print(f'\nimgsz {imgsz}: frame {image.nbytes / 1024:.1f} KiB raw BGR; JPEG KiB: {jpegs}')
    codecs = ''.join(f'{e}+{c:>4} ' for e, c in CODECS)
    errs = f'{"px all":>7} {"conf":>6} {"score":>7}'
    print(f'{"":33}{"crossing KiB":<50}{"fp16 error":<23}int8 error')
    print(f'{"k":>3} {"crossing layers":<18} {"fp32 raw":>9} {codecs}  {errs}  {errs}')
    for point in split.points:
        with torch.no_grad():
            crossing = split.head(x, point.index)
            raw = sum(t.numel() * t.element_size() for t in crossing.values())
            sizes = [sum(len(b) for b in encode_crossing(crossing, e, c).values())
                     for e, c in CODECS]
            fp16 = errors(split, crossing, point.index, 'fp16', reference)
            int8 = errors(split, crossing, point.index, 'int8', reference)
        cells = ''.join(f'{s / 1024:9.1f} ' for s in sizes)
        print(f'{point.index:>3} {",".join(map(str, point.crossing)):<18} {raw / 1024:9.1f} '
              f'{cells} {fp16}  {int8}')


def main() -> None:
    """Print one table per input size."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--imgsz', type=int, nargs='+', default=[320, 640])
    parser.add_argument('--seed', type=int, default=3, help='scene seed')
    parser.add_argument('--threads', type=int, default=0, help='torch threads (0: its default)')
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        prepare_offline(str(Path(tmp) / 'ultralytics'))
        import torch
        from ultralytics import YOLO

        if args.threads:
            torch.set_num_threads(args.threads)
        model = YOLO(str(MODEL))
        print(f'{MODEL.name}: crossing tensors per split point k (head = layers [0, k)), KiB; '
              'errors of the raw detection output vs unsplit fp32')
        for imgsz in args.imgsz:
            table(model, imgsz, args.seed)


if __name__ == '__main__':
    main()
