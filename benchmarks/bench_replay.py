"""Replay throughput vs a bare ultralytics predict loop, measured in one run.

Issue target: ``replay --rate 0`` edge-only throughput on a 640x480 bag is at least 95 % of a
bare ``YOLO.predict`` loop over the same decoded frames, at imgsz 320 and 640. Both use the
random-weight yolov8n architecture on this machine's CPU; the ratio is the figure, not the
absolute time.

What is timed, on both sides frames in to detections out:

* bare: ``YOLO.predict`` over the bag's frames, which are read, deserialized and converted to
  BGR before the clock starts; one warm-up call comes before it too.
* replay: ``ReplayResult.frames_s`` of a ``Replay.run()`` with the ``edge-only`` policy (no
  cloud service is started), from the player's start to the last record written: reading and
  deserializing every message, converting each image, detecting, the manager and the health
  monitor, and writing the input copy and every output to the MCAP bag. The model is loaded and
  warmed up by ``Replay()`` before, as the bare loop's is. The one-off rest of ``run()``
  (opening the output bag and declaring its topics; stopping the workers, closing the bag) is
  printed separately, as is the ratio over the whole of ``run()``.

The runs alternate (bare, replay, bare, ..., replay, bare) so that the machine's drift hits both
sides; each replay is compared with the mean of the bare runs either side of it, and the median
of those ratios is reported. The edge backend keeps freed memory mapped on the CPU
(``adaptive_offload.allocator``), which is process-wide: it is set before any timed run, so both
sides run under it; one bare loop before it is printed for information (``untuned``).

Run: ``.venv/bin/python benchmarks/bench_replay.py [--frames 300] [--imgsz 320 640]
[--repeat 2] [--min-ratio 0.95]``; exits 1 when a ratio is below ``--min-ratio``.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
import gc
from pathlib import Path
import statistics
import sys
import tempfile
import time
from typing import Any

from adaptive_offload.allocator import keep_freed_memory
from adaptive_offload.conversions import image_to_frame
from adaptive_offload.typestore import make_typestore
from edge_inference.ultralytics_backend import prepare_offline
import numpy as np
from offload_runtime.replay import Replay, ReplayOptions
from offload_runtime.sample_bag import SampleSpec, write_sample_bag
from rosbags.rosbag2 import Reader

TARGET = 0.95
MODEL = 'yolov8n.yaml'


@dataclass(frozen=True)
class SizeResult:
    """One imgsz's measurements (frames per second)."""

    imgsz: int
    bare: list[float]
    replay: list[float]
    whole: list[float]
    one_off_s: list[float]

    @property
    def ratio(self) -> float:
        """Median ratio of a replay to the bare runs either side of it."""
        return statistics.median(self._ratios(self.replay))

    @property
    def whole_ratio(self) -> float:
        """The same over the whole of ``run()``, its start-up and finish included."""
        return statistics.median(self._ratios(self.whole))

    def _ratios(self, runs: list[float]) -> list[float]:
        return [fps / ((self.bare[i] + self.bare[i + 1]) / 2) for i, fps in enumerate(runs)]


def decoded_frames(bag: Path) -> list[np.ndarray]:
    """Return the bag's camera frames as the BGR arrays the detector takes."""
    store = make_typestore('jazzy')
    with Reader(bag) as reader:
        conns = [c for c in reader.connections if c.topic == '/camera/image_raw']
        return [image_to_frame(store.deserialize_cdr(raw, c.msgtype)).image
                for c, _, raw in reader.messages(conns)]


def bare_loop(model: Any, frames: list[np.ndarray], imgsz: int) -> float:
    """Frames per second of ``YOLO.predict`` over decoded frames, after one warm-up call."""
    gc.collect()  # the garbage of whatever ran before is not this run's (10 ms a frame once)
    model.predict(frames[0], imgsz=imgsz, verbose=False)
    start = time.perf_counter()
    for frame in frames:
        model.predict(frame, imgsz=imgsz, conf=0.25, iou=0.7, device='cpu', verbose=False)
    return len(frames) / (time.perf_counter() - start)


def replay(bag: Path, out: Path, imgsz: int) -> tuple[float, float, float]:
    """Frames per second of the graph (player to records), of the whole run, and its one-off."""
    options = ReplayOptions(bag=bag, out=out, rate=0.0, overrides={
        'edge_inference': {'model': MODEL, 'imgsz': imgsz},
        'offload_manager': {'edge_imgsz': imgsz, 'policy': 'edge-only'}})
    runner = Replay(options)  # loads and warms the model up
    gc.collect()
    start = time.perf_counter()
    result = runner.run()
    wall_s = time.perf_counter() - start
    if result.summary['results'] != len(result.records) or result.summary['frames_lost']:
        # Dropped frames would flatter the replay's rate: every frame must be detected.
        raise SystemExit(f'replay dropped or lost frames: {result.summary}')
    frames = len(result.records)
    return frames / result.frames_s, frames / wall_s, wall_s - result.frames_s


def measure(model: Any, frames: list[np.ndarray], bag: Path, tmp: Path, imgsz: int,
            repeat: int) -> SizeResult:
    """Alternate bare and replay runs at one imgsz."""
    bare = [bare_loop(model, frames, imgsz)]
    runs = []
    for i in range(repeat):
        runs.append(replay(bag, tmp / f'out-{imgsz}-{i}', imgsz))
        bare.append(bare_loop(model, frames, imgsz))
    return SizeResult(imgsz, bare, [r[0] for r in runs], [r[1] for r in runs],
                      [r[2] for r in runs])


def main() -> int:
    """Measure every imgsz, print one line each, and judge them against ``--min-ratio``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--frames', type=int, default=300)
    parser.add_argument('--imgsz', type=int, nargs='+', default=[320, 640])
    parser.add_argument('--repeat', type=int, default=2, help='replay runs per imgsz')
    parser.add_argument('--min-ratio', type=float, default=0.0,
                        help=f'exit 1 below this ratio (the issue target is {TARGET})')
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        prepare_offline(str(tmp / 'ultralytics'))
        from ultralytics import YOLO

        write_sample_bag(tmp / 'in', SampleSpec(frames=args.frames, fps=30, width=640,
                                                height=480))
        frames = decoded_frames(tmp / 'in')
        model = YOLO(MODEL, task='detect')
        untuned = [bare_loop(model, frames, imgsz) for imgsz in args.imgsz]
        keep_freed_memory()
        print(f'frames {args.frames} 640x480 rgb8, {MODEL} (random weights), CPU, '
              f'edge-only, {args.repeat} replay runs per size between bare runs')
        results = [measure(model, frames, tmp / 'in', tmp, imgsz, args.repeat)
                   for imgsz in args.imgsz]
    failed = False
    for res, plain in zip(results, untuned):
        low = res.ratio < args.min_ratio
        failed |= low
        print(f'imgsz {res.imgsz:4d}: bare {_fps(res.bare)}, replay {_fps(res.replay)}, '
              f'ratio {res.ratio:.3f}{"  BELOW " + str(args.min_ratio) if low else ""}  '
              f'(whole run() {_fps(res.whole)}, ratio {res.whole_ratio:.3f}; one-off '
              f'{statistics.mean(res.one_off_s) * 1e3:.0f} ms; untuned bare {plain:.2f} fps)')
    return 1 if failed else 0


def _fps(runs: list[float]) -> str:
    return f'{statistics.mean(runs):.2f} fps [{" ".join(f"{v:.1f}" for v in runs)}]'


if __name__ == '__main__':
    sys.exit(main())
