"""Cloud service and bridge figures of issue 3, as ratios measured in one run.

1. Service throughput with 1 and 4 concurrent clients vs the same model in-process with the
   same torch thread count (target: >= 0.90, i.e. server overhead <= 10 %).
2. Bridge overhead: the part of a loopback round trip that is not model time (JPEG encode,
   gRPC or HTTP, decode of the reply), as a share of the round trip (target <= 10 %); the
   server time is the one each reply reports (``server_us``).
Both runtimes: MLServer (reached over gRPC, the bridge's default) and the builtin REST server.
3. Bytes per frame at JPEG quality 50/75/95 vs the raw rgb8 frame.

Run: ``.venv/bin/python benchmarks/bench_service.py [--requests 30] [--runtime both]``
"""

from __future__ import annotations

import argparse
from pathlib import Path
import socket
import subprocess
import sys
import threading
import time
import urllib.request

from adaptive_offload.conversions import encode_image
from cloud_bridge.transport import make_transport
import numpy as np
from rcnn_service.rcnn_detector import RcnnDetector

ARCH = 'fasterrcnn_mobilenet_v3_large_320_fpn'
ROOT = Path(__file__).resolve().parents[1]


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for sock in socks:
        sock.bind(('127.0.0.1', 0))
    ports = [sock.getsockname()[1] for sock in socks]
    for sock in socks:
        sock.close()
    return ports


def start_service(runtime: str, threads: int) -> tuple[subprocess.Popen[str], str]:
    """``adaptive-offload serve`` in a subprocess on free loopback ports, once ready.

    Returns:
        The process and the URL the bridge uses (gRPC for MLServer, REST for builtin).
    """
    rest, grpc, metrics = _free_ports(3)
    proc = subprocess.Popen([sys.executable, '-m', 'offload_runtime.cli', 'serve',
                             '--runtime', runtime, '--port', str(rest), '--grpc-port',
                             str(grpc), '--metrics-port', str(metrics), '--arch', ARCH,
                             '--threads', str(threads)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, text=True,
                            env={'PYTHONPATH': str(ROOT / 'src'), 'PATH': '/usr/bin:/bin'})
    for _ in range(1200):
        try:
            with urllib.request.urlopen(f'http://127.0.0.1:{rest}/v2/health/ready', timeout=1):
                break
        except OSError:
            time.sleep(0.1)
    else:
        proc.kill()
        raise RuntimeError('service not ready')
    url = f'grpc://127.0.0.1:{grpc}' if runtime == 'mlserver' else f'http://127.0.0.1:{rest}'
    return proc, url


def clients(url: str, jpeg: bytes, count: int, requests: int) -> float:
    """Frames per second of ``count`` clients sending ``requests`` each."""
    def run() -> None:
        transport = make_transport(url, 'rcnn')
        for _ in range(requests):
            transport.infer(jpeg, 60.0)
        transport.close()

    threads = [threading.Thread(target=run) for _ in range(count)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return count * requests / (time.perf_counter() - start)


def main() -> None:
    """Measure and print the three figures for each runtime."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--requests', type=int, default=30)
    parser.add_argument('--threads', type=int, default=2)
    parser.add_argument('--runtime', choices=('mlserver', 'builtin', 'both'), default='both')
    args = parser.parse_args()
    image = np.random.default_rng(0).integers(0, 255, (480, 640, 3), np.uint8)
    jpeg = encode_image(image, 'jpeg', 75)

    detector = RcnnDetector(ARCH, threads=args.threads)
    decoded = image.copy()
    start = time.perf_counter()
    for _ in range(args.requests):
        detector.detect([decoded])
    local = args.requests / (time.perf_counter() - start)
    print(f'{ARCH}, random weights, 640x480 JPEG q75, torch threads {args.threads}, CPU')
    print(f'in-process                      {local:6.2f} fps')

    for runtime in ('mlserver', 'builtin') if args.runtime == 'both' else (args.runtime,):
        proc, url = start_service(runtime, args.threads)
        try:
            clients(url, jpeg, 1, 3)  # warm-up, as the in-process model had at construction
            one = clients(url, jpeg, 1, args.requests)
            four = clients(url, jpeg, 4, args.requests // 2)
            transport = make_transport(url, 'rcnn')
            trips, server = [], []
            for _ in range(args.requests):
                begin = time.perf_counter()
                reply = transport.infer(encode_image(image, 'jpeg', 75), 60.0)
                trips.append(time.perf_counter() - begin)
                server.append((reply.server_ms or 0.0) / 1e3)
            transport.close()
        finally:
            proc.terminate()
            proc.wait(timeout=10)
        trip, model = float(np.mean(trips)), float(np.mean(server))
        name = f'{runtime} ({url.split(":")[0]})'
        print(f'{name:16s} 1 client  {one:6.2f} fps  ratio {one / local:5.2f} (target >= 0.90)')
        print(f'{name:16s} 4 clients {four:6.2f} fps  ratio {four / local:5.2f} '
              '(target >= 0.90)')
        print(f'{name:16s} round trip {trip * 1e3:6.1f} ms, server {model * 1e3:6.1f} ms, '
              f'bridge overhead {(trip - model) / trip * 100:4.1f} % (target <= 10 %)')
    raw = image.nbytes
    sizes = ', '.join(f'q{q} {len(encode_image(image, "jpeg", q)) / 1024:6.1f} KiB '
                      f'({len(encode_image(image, "jpeg", q)) / raw * 100:4.1f} %)'
                      for q in (50, 75, 95))
    print(f'bytes per frame: raw {raw / 1024:.0f} KiB; {sizes}  (noise image: worst case)')


if __name__ == '__main__':
    main()
