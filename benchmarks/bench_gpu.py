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
4. The model alone and beside a busy Python thread: how much a front end sharing the
   interpreter slows it (the service's batches took three times the model's time on an H200).

Random weights time as trained ones do, except the final per-class NMS, which sees fewer boxes
above the score threshold (the RPN and the ROI heads run on their fixed proposal counts).

Run: ``python benchmarks/bench_gpu.py [--device cuda] [--out DIR] [--quick]``; prints figures
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


def part_contention(args: argparse.Namespace, arch: str, runs: int = 5,
                    limit_s: float = 20.0) -> None:
    """Time the model alone and beside a busy Python thread (the service's front end).

    The service's model thread shares the interpreter with its HTTP front end; on a GPU every
    kernel launch needs the interpreter, so a front end that keeps it busy slows the model.
    Each figure prints as soon as it is measured, and a configuration stops after ``limit_s``.
    """
    import threading

    from offload_runtime.train_cli import checkpoint_for
    from rcnn_service.rcnn_detector import RcnnDetector

    print(f'\n## 4. {arch}, one frame, alone and beside a busy Python thread', flush=True)
    detector = RcnnDetector(arch, checkpoint_for(arch, None), args.device, input_size=640)
    image = frames(1)

    def timed() -> str:
        times: list[float] = []
        deadline = time.perf_counter() + limit_s
        while len(times) < runs and time.perf_counter() < deadline:
            start = time.perf_counter()
            detector.detect(image)
            times.append(time.perf_counter() - start)
        return f'{statistics.median(times) * 1000:.1f} ms (of {len(times)} runs)'

    def busy(stop: threading.Event) -> None:
        x = 0
        while not stop.is_set():
            for i in range(1000):
                x += i

    switch = sys.getswitchinterval()
    try:
        for interval in (0.005, 0.0005):
            sys.setswitchinterval(interval)
            print(f'switch interval {interval * 1000:g} ms: alone {timed()}', flush=True)
            stop = threading.Event()
            thread = threading.Thread(target=busy, args=(stop,), daemon=True)
            thread.start()
            try:
                print(f'switch interval {interval * 1000:g} ms: beside a busy thread {timed()}',
                      flush=True)
            finally:
                stop.set()
                thread.join()
    finally:
        sys.setswitchinterval(switch)


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
    parser.add_argument('--parts', default='1,4,3,2', help='which parts to run, in order')
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
        elif part == '3':
            part_service(args, archs[0] if args.quick else args.service_arch,
                         [1, 2] if args.quick else args.robots,
                         3.0 if args.quick else args.seconds)
        else:
            parser.error(f'unknown part {part!r}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
