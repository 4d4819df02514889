"""Edge inference figures of issue 4, each a ratio measured in one run on this machine.

1. ONNX Runtime vs PyTorch (ultralytics) backend, frames/s at input 320 and 640.
2. Edge worker (FrameWorker: admission, newest-frame hand-off, decode, report) vs the bare
   backend loop on the same frames: throughput ratio (target >= 0.95).
3. Latency under overload: frames arrive faster than inference for ``--minutes`` x 2; P99 of the
   processed frames' latency in the last window vs the first (target <= 1.2).

Run: ``.venv/bin/python benchmarks/bench_edge.py [--frames 100] [--minutes 1.0]``
"""

from __future__ import annotations

import argparse
from pathlib import Path
import tempfile
import threading
import time

from adaptive_offload.conversions import frame_to_message
from adaptive_offload.datatypes import Decision
from adaptive_offload.frame_worker import DecisionHolder, FrameWorker
from adaptive_offload.typestore import make_typestore, message_types
from edge_inference.backends import create_backend
from edge_inference.detector import BackendOptions, DetectorBackend
from edge_inference.export import export_model
from edge_inference.inference import build_edge, EdgeConfig
from edge_inference.ultralytics_backend import prepare_offline
import numpy as np


def fps(backend: DetectorBackend, frames: list[np.ndarray], imgsz: int) -> float:
    """Frames per second of ``backend.infer`` over ``frames`` after one warm-up call."""
    backend.infer(frames[0], imgsz, 0.25, 0.7, None, 100)
    start = time.perf_counter()
    for frame in frames:
        backend.infer(frame, imgsz, 0.25, 0.7, None, 100)
    return len(frames) / (time.perf_counter() - start)


def worker_fps(msgs: list[object], imgsz: int) -> float:
    """Frames per second through a FrameWorker fed back to back (as replay --rate 0 does)."""
    config = EdgeConfig.from_params({'model': 'yolov8n.yaml', 'imgsz': imgsz})
    done = threading.Semaphore(0)
    worker = FrameWorker(build_edge(config), DecisionHolder(config.fallback_decision()),
                         lambda *_: done.release(), time.monotonic_ns)
    worker.start()
    start = time.perf_counter()
    for msg in msgs:
        worker.wait_taken()
        worker.submit(msg)
    for _ in msgs:
        done.acquire()
    elapsed = time.perf_counter() - start
    worker.stop()
    return len(msgs) / elapsed


def overload(msgs: list[object], imgsz: int, seconds: float, period_s: float) -> list[float]:
    """Feed frames every ``period_s`` for ``2 * seconds``; returns P99 latency (ms) per half."""
    config = EdgeConfig.from_params({'model': 'yolov8n.yaml', 'imgsz': imgsz})
    sent: dict[int, float] = {}
    lat: list[tuple[float, float]] = []
    decision = Decision(seq=1, issued_ns=0, valid_for_ms=1e12, edge_imgsz=imgsz)
    holder = DecisionHolder(config.fallback_decision())
    holder.update(decision)

    def emit(_msg: object, dets: object, report: object) -> None:
        if dets is not None:
            now = time.perf_counter()
            lat.append((now, (now - sent[report.stamp_ns]) * 1e3))

    worker = FrameWorker(build_edge(config), holder, emit, lambda: 0)
    worker.start()
    start = time.perf_counter()
    i = 0
    while time.perf_counter() - start < 2 * seconds:
        msg = msgs[i % len(msgs)]
        stamp = i + 1
        msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(stamp, 1_000_000_000)
        sent[stamp] = time.perf_counter()
        worker.submit(msg)
        i += 1
        time.sleep(period_s)
    worker.stop()
    first = [ms for t, ms in lat if t - start < seconds]
    last = [ms for t, ms in lat if t - start >= seconds]
    return [float(np.percentile(first, 99)), float(np.percentile(last, 99)), len(lat), i]


def main() -> None:
    """Run the three measurements and print their ratios."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--frames', type=int, default=100)
    parser.add_argument('--minutes', type=float, default=1.0, help='length of each window')
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 255, (480, 640, 3), np.uint8) for _ in range(args.frames)]
    types = message_types(make_typestore('jazzy'))
    msgs = [frame_to_message(types, f, i + 1, 'cam', 'rgb8') for i, f in enumerate(frames)]
    with tempfile.TemporaryDirectory() as tmp:
        prepare_offline(str(Path(tmp) / 'ultralytics'))
        torch_backend = create_backend('ultralytics', BackendOptions('yolov8n.yaml'))
        print('backend fps (640x480 frames, yolov8n, CPU)')
        for imgsz in (320, 640):
            onnx = export_model('yolov8n.yaml', imgsz, Path(tmp) / f'y{imgsz}.onnx')
            a = fps(torch_backend, frames, imgsz)
            b = fps(create_backend('onnx', BackendOptions(str(onnx))), frames, imgsz)
            print(f'  imgsz {imgsz}: pytorch {a:6.1f}  onnxruntime {b:6.1f}  ratio {b / a:5.2f}')
        bare = fps(torch_backend, frames, 320)
        ours = worker_fps(msgs, 320)
        print(f'edge worker vs bare loop at 320: {ours:6.1f} / {bare:6.1f} fps = '
              f'{ours / bare:5.3f} (target >= 0.95)')
        period = 0.5 / bare  # frames twice as fast as inference
        p99_first, p99_last, done, sent = overload(msgs, 320, args.minutes * 60, period)
        print(f'overload {sent} frames sent, {done} processed: P99 first window '
              f'{p99_first:.1f} ms, last window {p99_last:.1f} ms, ratio '
              f'{p99_last / p99_first:.2f} (target <= 1.2)')


if __name__ == '__main__':
    main()
