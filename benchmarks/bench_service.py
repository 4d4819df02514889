"""Cloud service and bridge figures of issue 3, as ratios measured in one run.

1. Service throughput with 1 and 4 concurrent clients vs the same model in-process with the
   same torch thread count (target: >= 0.90, i.e. server overhead <= 10 %).
2. Bridge overhead: the part of a loopback round trip that is not model time (JPEG encode,
   HTTP, JSON, decode), as a share of the round trip (target <= 10 %).
3. Bytes per frame at JPEG quality 50/75/95 vs the raw rgb8 frame.

Run: ``.venv/bin/python benchmarks/bench_service.py [--requests 30]``
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np

from adaptive_offload.conversions import encode_image
from cloud_bridge.rcnn import RcnnDetector
from cloud_bridge.transport import V2RestTransport

ARCH = 'fasterrcnn_mobilenet_v3_large_320_fpn'
ROOT = Path(__file__).resolve().parents[1]


def start_service(threads: int) -> tuple[subprocess.Popen[str], str]:
    """``adaptive-offload serve`` in a subprocess on a free loopback port, once ready."""
    proc = subprocess.Popen([sys.executable, '-m', 'adaptive_offload.cli', 'serve', '--port',
                             '0', '--arch', ARCH, '--threads', str(threads)],
                            stdout=subprocess.PIPE, text=True,
                            env={'PYTHONPATH': str(ROOT / 'src'), 'PATH': '/usr/bin:/bin'})
    url = re.search(r'http://[0-9.]+:[0-9]+', proc.stdout.readline()).group(0)
    for _ in range(1200):
        try:
            with urllib.request.urlopen(url + '/v2/health/ready', timeout=1):
                return proc, url
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError('service not ready')


def inference_seconds(url: str) -> float:
    """Total model time the service has spent, from its metrics."""
    with urllib.request.urlopen(url + '/metrics', timeout=5) as response:
        text = response.read().decode()
    return float(re.search(r'adaptive_offload_inference_seconds_total ([0-9.]+)', text)
                 .group(1))


def clients(url: str, jpeg: bytes, count: int, requests: int) -> float:
    """Frames per second of ``count`` clients sending ``requests`` each."""
    def run() -> None:
        transport = V2RestTransport(url, 'rcnn')
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
    """Measure and print the three figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--requests', type=int, default=30)
    parser.add_argument('--threads', type=int, default=2)
    args = parser.parse_args()
    image = np.random.default_rng(0).integers(0, 255, (480, 640, 3), np.uint8)
    jpeg = encode_image(image, 'jpeg', 75)

    detector = RcnnDetector(ARCH, threads=args.threads)
    decoded = image.copy()
    start = time.perf_counter()
    for _ in range(args.requests):
        detector.detect([decoded])
    local = args.requests / (time.perf_counter() - start)

    proc, url = start_service(args.threads)
    try:
        one = clients(url, jpeg, 1, args.requests)
        four = clients(url, jpeg, 4, args.requests // 2)
        transport = V2RestTransport(url, 'rcnn')
        model_before, trips = inference_seconds(url), []
        for _ in range(args.requests):
            begin = time.perf_counter()
            transport.infer(encode_image(image, 'jpeg', 75), 60.0)
            trips.append(time.perf_counter() - begin)
        model = (inference_seconds(url) - model_before) / args.requests
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    trip = float(np.mean(trips))
    print(f'{ARCH}, random weights, 640x480 JPEG q75, torch threads {args.threads}, CPU')
    print(f'in-process            {local:6.2f} fps')
    print(f'service, 1 client     {one:6.2f} fps  ratio {one / local:5.2f} (target >= 0.90)')
    print(f'service, 4 clients    {four:6.2f} fps  ratio {four / local:5.2f} (target >= 0.90)')
    print(f'round trip {trip * 1e3:6.1f} ms, model {model * 1e3:6.1f} ms, bridge overhead '
          f'{(trip - model) / trip * 100:4.1f} % (target <= 10 %)')
    raw = image.nbytes
    sizes = ', '.join(f'q{q} {len(encode_image(image, "jpeg", q)) / 1024:6.1f} KiB '
                      f'({len(encode_image(image, "jpeg", q)) / raw * 100:4.1f} %)'
                      for q in (50, 75, 95))
    print(f'bytes per frame: raw {raw / 1024:.0f} KiB; {sizes}  (noise image: worst case)')


if __name__ == '__main__':
    main()
