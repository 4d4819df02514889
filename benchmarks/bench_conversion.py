"""Image message to numpy: our conversion vs the minimal numpy view-and-copy, in one run.

Issue target: a 640x480 rgb8 frame converts in <= 1 ms with no per-pixel Python.

Run: ``.venv/bin/python benchmarks/bench_conversion.py [--runs 500]``
"""

from __future__ import annotations

import argparse
import time
from typing import Any, Callable

from adaptive_offload.conversions import frame_to_message, image_to_frame
from adaptive_offload.typestore import make_typestore, message_types
import numpy as np


def timed(fn: Callable[[], Any], runs: int) -> tuple[float, float]:
    """Median and P95 of ``fn`` in milliseconds, after 20 warm-up calls."""
    for _ in range(20):
        fn()
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - start) * 1e3)
    return float(np.median(samples)), float(np.percentile(samples, 95))


def main() -> None:
    """Print ms per frame for each encoding, and the rgb8 ratio to the numpy baseline."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--runs', type=int, default=500)
    args = parser.parse_args()
    store = make_typestore('jazzy')
    types = message_types(store)
    image = np.random.default_rng(0).integers(0, 255, (480, 640, 3), np.uint8)
    print(f'{"encoding":10} {"median ms":>10} {"p95 ms":>8}')
    for encoding in ('rgb8', 'bgr8', 'mono8', 'jpeg', 'png'):
        msg = frame_to_message(types, image, 1, 'cam', encoding)
        msg = store.deserialize_cdr(store.serialize_cdr(msg, msg.__msgtype__), msg.__msgtype__)
        median, p95 = timed(lambda m=msg: image_to_frame(m), args.runs)
        print(f'{encoding:10} {median:10.3f} {p95:8.3f}')
        if encoding == 'rgb8':
            ours = median
            base, _ = timed(lambda m=msg: np.frombuffer(m.data, np.uint8)
                            .reshape(480, 640, 3)[:, :, ::-1].copy(), args.runs)
    print(f'rgb8: ours {ours:.3f} ms vs numpy reshape+flip+copy {base:.3f} ms '
          f'(ratio {ours / base:.2f}); target <= 1 ms: {"met" if ours <= 1.0 else "NOT met"}')


if __name__ == '__main__':
    main()
