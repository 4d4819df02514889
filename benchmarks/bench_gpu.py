"""The cloud service's figures on a GPU, measured in one run.

1. Batch times: each R-CNN architecture as the service runs it (``RcnnDetector.detect``: upload,
   model, scores and labels back to the host) on a batch of b 640x480 generated scene frames,
   b = 1..32. Prints the median per batch, images a second, and the fit the fleet simulation
   takes (``evaluate --batch-ms T1 --batch-extra X``: a batch of b takes T1 x (1 + X (b - 1))).
2. Split profiles: ``adaptive-offload profile`` of the cloud architectures on the GPU (head and
   tail time per backbone split point, payload bytes per encoding), written as YAML.
3. The real service: ``adaptive-offload serve --runtime builtin --device cuda`` with batching,
   loaded by ``adaptive-offload loadtest`` (robots that are the real cloud bridge on loopback)
   from one robot to past its capacity: offered load, goodput, P50/P99, refusals.
4. The model alone and beside busy Python threads (``--threads``), in this process and in its
   own (``--modes inprocess,process``): how much a front end sharing the interpreter slows it
   (on an H200 one frame went from 22 ms to 4.9 s in-process).
5. A batch of 16 frames crossing to the model process: shared memory against pickling.
6. The model process killed under a batch: time to fail the batch, time to be ready again.

Random weights time as trained ones do, except the final per-class NMS, which sees fewer boxes
above the score threshold (the RPN and the ROI heads run on their fixed proposal counts).

Run: ``python benchmarks/bench_gpu.py [--device cuda] [--out DIR] [--quick]``, e.g.
``--parts 4,5,6 --modes inprocess,process --threads 2``; prints figures
only. ``--quick`` runs a few small sizes (a check of the script on a CPU).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
import socket
import statistics
import subprocess
import sys
import time
from typing import Any
import urllib.request

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
ARCHS = ('fasterrcnn_mobilenet_v3_small_fpn', 'fasterrcnn_mobilenet_v3_large_320_fpn',
         'fasterrcnn_mobilenet_v3_large_fpn', 'maskrcnn_resnet50_fpn',
         'fasterrcnn_resnet50_fpn_v2')
BATCHES = (1, 2, 4, 8, 16, 32)


def frames(n: int) -> list[np.ndarray]:
    """Render n different 640x480 generated scene frames."""
    from offload_runtime.sample_bag import SampleSpec, Scene

    scene = Scene(SampleSpec(width=640, height=480, seed=5))
    return [scene.render(0.1)[0] for _ in range(n)]


def batch_times(arch: str, device: str, batches: tuple[int, ...],
                repeats: int) -> dict[int, float]:
    """Median seconds of one batch of each size, as the service's detector runs it."""
    import torch

    from offload_runtime.train_cli import checkpoint_for
    from rcnn_service.rcnn_detector import RcnnDetector

    detector = RcnnDetector(arch, checkpoint_for(arch, None), device, input_size=640)
    images = frames(max(batches))
    out = {}
    for b in batches:
        detector.detect(images[:b])
        times = []
        for _ in range(repeats):
            if device.startswith('cuda'):
                torch.cuda.synchronize()
            start = time.perf_counter()
            detector.detect(images[:b])  # returns host arrays: synchronised
            times.append(time.perf_counter() - start)
        out[b] = statistics.median(times)
    del detector
    if device.startswith('cuda'):
        torch.cuda.empty_cache()
    return out


def fit_extra(times: dict[int, float]) -> float:
    """Least-squares X of t(b) = t(1) (1 + X (b - 1)) over the measured sizes."""
    t1 = times[1]
    pairs = [(b - 1, t / t1 - 1) for b, t in times.items() if b > 1]
    den = sum(x * x for x, _ in pairs)
    return sum(x * y for x, y in pairs) / den if den else 0.0


def part_batches(args: argparse.Namespace, archs: tuple[str, ...],
                 batches: tuple[int, ...]) -> dict[str, dict[int, float]]:
    """Print and return the batch-time table."""
    print('\n## 1. Batch times at 640x480 (median ms per batch; images/s)', flush=True)
    print(f'{"architecture":<40}' + ''.join(f'{"b=" + str(b):>16}' for b in batches)
          + f'{"fit X":>8}')
    results = {}
    for arch in archs:
        try:
            times = batch_times(arch, args.device, batches, args.repeats)
        except Exception as err:  # report the architecture and go on with the others
            print(f'{arch:<40} failed: {err}', flush=True)
            continue
        results[arch] = times
        cells = ''.join(f'{t * 1000:8.1f} {b / t:6.0f}/s' for b, t in times.items())
        print(f'{arch:<40}{cells}{fit_extra(times):8.3f}', flush=True)
    return results


def part_profiles(args: argparse.Namespace, archs: tuple[str, ...]) -> None:
    """Profile the split points of each architecture on the device; YAML files in --out."""
    import yaml

    from offload_runtime.split_profile import format_table, ProfileOptions, run_profile

    print('\n## 2. Split profiles on the device', flush=True)
    for arch in archs:
        try:
            profile = run_profile(arch, None, ProfileOptions(device=args.device, imgsz=640,
                                                             repeats=args.repeats))
        except Exception as err:  # report the architecture and go on with the others
            print(f'{arch}: failed: {err}', flush=True)
            continue
        print(format_table(profile), flush=True)
        (args.out / f'profile-{arch}.yaml').write_text(
            yaml.safe_dump(profile.to_dict(), sort_keys=False))


def _model(mode: str, arch: str, device: str) -> Any:
    """Load the model as the service runs it: in this process, or in its own."""
    from offload_runtime.train_cli import checkpoint_for
    from rcnn_service.image_model import LocalModel
    from rcnn_service.model_process import ModelProcess
    from rcnn_service.rcnn_detector import RcnnDetector
    from rcnn_service.service_config import ServiceConfig

    config = ServiceConfig(arch=arch, checkpoint=checkpoint_for(arch, None), device=device,
                           input_size=640, max_image_side=1000, max_batch=16)
    if mode == 'inprocess':
        return LocalModel(RcnnDetector(config.arch, config.checkpoint, device, input_size=640))
    model = ModelProcess(config)
    if not model.wait_settled(600) or not model.ready:
        raise RuntimeError(model.load_error or model.gave_up or 'the model did not start')
    return model


def part_contention(args: argparse.Namespace, arch: str, runs: int = 5,
                    limit_s: float = 20.0) -> None:
    """Time the model alone and beside busy Python threads (the service's front end), per mode.

    The service's model thread shares the interpreter with its HTTP front end; on a GPU every
    kernel launch needs the interpreter, so a front end that keeps it busy slows the model,
    unless the model runs in its own process (``--modes process``). Each figure prints as soon
    as it is measured, and a configuration stops after ``limit_s``.
    """
    import threading

    print(f'\n## 4. {arch}, one frame, alone and beside {args.threads} busy Python '
          f'thread(s)', flush=True)
    image = frames(1)

    def busy(stop: threading.Event) -> None:
        x = 0
        while not stop.is_set():
            for i in range(1000):
                x += i

    for mode in args.modes.split(','):
        model = _model(mode, arch, args.device)

        def timed() -> float:
            times: list[float] = []
            deadline = time.perf_counter() + limit_s
            while len(times) < runs and time.perf_counter() < deadline:
                start = time.perf_counter()
                model.run(image)
                times.append(time.perf_counter() - start)
            return statistics.median(times) * 1000

        try:
            model.run(image)
            alone = timed()
            stop = threading.Event()
            threads = [threading.Thread(target=busy, args=(stop,), daemon=True)
                       for _ in range(args.threads)]
            for thread in threads:
                thread.start()
            try:
                beside = timed()
            finally:
                stop.set()
                for thread in threads:
                    thread.join()
            print(f'{mode:<10} alone {alone:8.1f} ms, beside {args.threads} busy thread(s) '
                  f'{beside:8.1f} ms: x{beside / alone:.2f}', flush=True)
        finally:
            model.close()


def part_ipc(args: argparse.Namespace, batch: int = 16, repeats: int = 20) -> None:
    """Time a batch of 640x480 frames crossing to another process: shared memory or pickled."""
    import multiprocessing
    import threading

    from rcnn_service.shared_frames import AttachedFrames, SharedFrames, slot_bytes

    print(f'\n## 5. {batch} frames of 640x480 to the model process (median of {repeats})',
          flush=True)
    images = frames(batch)
    sender, receiver = multiprocessing.Pipe()
    pool = SharedFrames(batch, slot_bytes(1000))
    attached = AttachedFrames(pool.names)
    got: list[Any] = []

    def receive(shared: bool) -> None:
        message = receiver.recv()  # the model reads the frames alike either way: not timed
        got.append([attached.get(h).shape for h in message] if shared else
                   [f.shape for f in message])

    def measure(shared: bool) -> float:
        times = []
        for _ in range(repeats):
            thread = threading.Thread(target=receive, args=(shared,))
            thread.start()
            start = time.perf_counter()
            sender.send(pool.put(images) if shared else images)
            thread.join()
            times.append(time.perf_counter() - start)
        return statistics.median(times) * 1000

    try:
        pickled, shared = measure(False), measure(True)
        print(f'pickled through the pipe {pickled:7.2f} ms, shared memory {shared:7.2f} ms: '
              f'x{pickled / shared:.1f}', flush=True)
    finally:
        pool.close()


def part_restart(args: argparse.Namespace, arch: str) -> None:
    """Kill the model process under a batch: time to fail it, time to be ready again."""
    import os
    import signal
    import threading

    print(f'\n## 6. {arch}: the model process killed under a batch', flush=True)
    model = _model('process', arch, args.device)
    image = frames(1)
    try:
        os.kill(model.pid, signal.SIGSTOP)  # the batch waits in the child: surely in flight
        failed: list[float] = []

        def run() -> None:
            try:
                model.run(image)
            except Exception:  # the refusal: what is timed
                failed.append(time.perf_counter())

        thread = threading.Thread(target=run)
        batches = model._batch
        thread.start()
        while model._batch == batches:
            time.sleep(0.01)
        killed = time.perf_counter()
        os.kill(model.pid, signal.SIGKILL)
        thread.join()
        while not model.ready:
            time.sleep(0.01)
        ready = time.perf_counter()
        print(f'batch failed {(failed[0] - killed) * 1000:.1f} ms after the kill; ready again '
              f'after {ready - killed:.1f} s (1 s back-off, then the start)', flush=True)
    finally:
        model.close()


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for sock in socks:
        sock.bind(('127.0.0.1', 0))
    ports = [sock.getsockname()[1] for sock in socks]
    for sock in socks:
        sock.close()
    return ports


def part_service(args: argparse.Namespace, arch: str, robots: list[int], seconds: float) -> None:
    """Load the real service on the device with a fleet of real bridges on loopback."""
    print(f'\n## 3. The service ({arch}, builtin runtime, {args.device}, max batch '
          f'{args.max_batch}) under a growing fleet at {args.fps:g} fps, deadline '
          f'{args.deadline_ms:g} ms', flush=True)
    rest, = _free_ports(1)
    cmd = [sys.executable, '-m', 'offload_runtime.cli']
    log = (args.out / 'serve.log').open('w')
    proc = subprocess.Popen(cmd + ['serve', '--runtime', 'builtin', '--device', args.device,
                                   '--arch', arch, '--port', str(rest), '--input-size', '640',
                                   '--max-batch',
                                   str(args.max_batch), '--threads', '4'],
                            stdout=log, stderr=subprocess.STDOUT)
    try:
        for _ in range(600):
            try:
                with urllib.request.urlopen(f'http://127.0.0.1:{rest}/v2/health/ready',
                                            timeout=1):
                    break
            except OSError:
                if proc.poll() is not None:
                    print(f'the service exited ({proc.returncode}); see serve.log', flush=True)
                    return
                time.sleep(0.2)
        rows = args.out / 'loadtest.json'
        subprocess.run(cmd + ['loadtest', '--url', f'http://127.0.0.1:{rest}', '--robots',
                              *map(str, robots), '--fps', str(args.fps), '--deadline-ms',
                              str(args.deadline_ms), '--seconds', str(seconds),
                              '--frame-size', '480', '640', '--json', str(rows)],
                       check=False, timeout=60 + len(robots) * (seconds + 30))
        if rows.exists():
            data = json.loads(rows.read_text())
            peak = max((r['goodput_fps'] for r in data), default=0.0)
            print(f'peak goodput {peak:.1f} answers/s', flush=True)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def main() -> int:
    """Run the three parts; each reports its own failure and the others still run."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--device', default='cuda')
    parser.add_argument('--out', type=Path, default=Path('gpu-figures'))
    parser.add_argument('--repeats', type=int, default=10)
    parser.add_argument('--fps', type=float, default=10.0)
    parser.add_argument('--deadline-ms', type=float, default=250.0)
    parser.add_argument('--max-batch', type=int, default=16)
    parser.add_argument('--service-arch', default='fasterrcnn_resnet50_fpn_v2')
    parser.add_argument('--robots', type=int, nargs='+', default=[1, 8, 24, 48, 96])
    parser.add_argument('--seconds', type=float, default=8.0)
    parser.add_argument('--parts', default='1,4,5,6,3,2', help='which parts to run, in order')
    parser.add_argument('--modes', default='inprocess,process',
                        help='part 4: where the model runs (inprocess, process)')
    parser.add_argument('--threads', type=int, default=1,
                        help='part 4: busy Python threads beside the service')
    parser.add_argument('--quick', action='store_true', help='small sizes: check the script')
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    import torch

    where = (torch.cuda.get_device_name(0) if args.device.startswith('cuda')
             else f'cpu, {torch.get_num_threads()} threads')
    print(f'torch {torch.__version__}, {where}', flush=True)
    archs = ARCHS[:1] if args.quick else ARCHS
    for part in args.parts.split(','):
        if part == '1':
            results = part_batches(args, archs, (1, 2) if args.quick else BATCHES)
            (args.out / 'batch_times.json').write_text(json.dumps(
                {a: {str(b): t for b, t in times.items()} for a, times in results.items()}))
        elif part == '2':
            part_profiles(args, archs[:1] if args.quick else
                          ('fasterrcnn_mobilenet_v3_large_fpn', 'fasterrcnn_resnet50_fpn_v2'))
        elif part == '4':
            part_contention(args, archs[0] if args.quick else args.service_arch)
        elif part == '5':
            part_ipc(args)
        elif part == '6':
            part_restart(args, archs[0] if args.quick else args.service_arch)
        elif part == '3':
            part_service(args, archs[0] if args.quick else args.service_arch,
                         [1, 2] if args.quick else args.robots,
                         3.0 if args.quick else args.seconds)
        else:
            parser.error(f'unknown part {part!r}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
