"""Replay throughput vs a bare ultralytics predict loop, measured in one run.

Issue target: ``replay --rate 0`` edge-only throughput on a 300-frame 640x480 bag is at least
95 % of a bare ``YOLO.predict`` loop over the same decoded frames. Both use the random-weight
yolov8n architecture on this machine's CPU; the ratio is the figure, not the absolute time.

Run: ``.venv/bin/python benchmarks/bench_replay.py [--frames 300] [--imgsz 640]``
"""

from __future__ import annotations

import argparse
from pathlib import Path
import tempfile
import time

from adaptive_offload.conversions import image_to_frame
from adaptive_offload.typestore import make_typestore
from edge_inference.ultralytics_backend import prepare_offline
from offload_runtime.replay import Replay, ReplayOptions
from offload_runtime.sample_bag import SampleSpec, write_sample_bag
from rosbags.rosbag2 import Reader


def bare_loop(bag: Path, imgsz: int) -> float:
    """Frames per second of ``YOLO.predict`` over the bag's frames, decoded beforehand."""
    store = make_typestore('jazzy')
    with Reader(bag) as reader:
        conns = [c for c in reader.connections if c.topic == '/camera/image_raw']
        frames = [image_to_frame(store.deserialize_cdr(raw, c.msgtype)).image
                  for c, _, raw in reader.messages(conns)]
    from ultralytics import YOLO

    model = YOLO('yolov8n.yaml', task='detect')
    model.predict(frames[0], imgsz=imgsz, verbose=False)  # warm-up, as replay does
    start = time.perf_counter()
    for frame in frames:
        model.predict(frame, imgsz=imgsz, conf=0.25, iou=0.7, device='cpu', verbose=False)
    return len(frames) / (time.perf_counter() - start)


def replay(bag: Path, out: Path, imgsz: int) -> tuple[float, int]:
    """Frames per second of the whole graph (player to records), and its record count."""
    options = ReplayOptions(bag=bag, out=out, rate=0.0, overrides={
        'edge_inference': {'model': 'yolov8n.yaml', 'imgsz': imgsz},
        'offload_manager': {'edge_imgsz': imgsz}})
    runner = Replay(options)  # loads and warms the model up before the clock starts
    start = time.perf_counter()
    result = runner.run()
    return len(result.records) / (time.perf_counter() - start), len(result.records)


def main() -> None:
    """Measure both, baseline first and last, and print the ratio."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--frames', type=int, default=300)
    parser.add_argument('--imgsz', type=int, default=640)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        prepare_offline(str(Path(tmp) / 'ultralytics'))
        bag = Path(tmp) / 'in'
        write_sample_bag(bag, SampleSpec(frames=args.frames, fps=30, width=640, height=480))
        before = bare_loop(bag, args.imgsz)
        ours, records = replay(bag, Path(tmp) / 'out', args.imgsz)
        after = bare_loop(bag, args.imgsz)
    baseline = (before + after) / 2
    print(f'frames {args.frames} 640x480 rgb8, yolov8n imgsz {args.imgsz}, CPU')
    print(f'bare predict loop   {before:7.2f} fps (before)  {after:7.2f} fps (after)')
    print(f'replay --rate 0     {ours:7.2f} fps  ({records} records)')
    ratio = ours / baseline
    print(f'ratio replay / bare {ratio:7.3f}  (target >= 0.95: '
          f'{"met" if ratio >= 0.95 else "NOT met"})')


if __name__ == '__main__':
    main()
