"""Hedging over two endpoints when one is slowed ten times, measured in one run.

Issue target: with one replica slowed 10x, delayed hedging gives at least 2x lower P99 than the
same bridge without hedging, with at most 10 % extra requests. (A published multi-cloud system
sends every request to every replica, 100 % extra, to cut its object-detection P99 2.0x.)

One real service (the builtin runtime, the shipped compact R-CNN, in a child process) is
reached two ways: directly, and through the project's TCP fault proxy holding every request
for ten times the model's time, as a far or overloaded replica would. Robots are the real cloud
bridge with ``url`` naming both endpoints; the same fleet runs with ``hedge_share`` 0 and 0.1.

Run: ``.venv/bin/python benchmarks/bench_hedging.py [--robots 2] [--fps 2] [--seconds 30]``;
exits 1 when a target is missed.
"""

from __future__ import annotations

import argparse
import sys

from fault_injection.fault_proxy import FaultProxy
from fault_injection.scenario import Fault, Scenario
from offload_runtime.loadtest import LoadSpec, run_point
from offload_runtime.loadtest_cli import StartedService
from rcnn_service.compact_rcnn import COMPACT_ARCH


def main() -> int:
    """Run both fleets and print P99 and extra requests against the targets."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--robots', type=int, default=2)
    parser.add_argument('--fps', type=float, default=2.0)
    parser.add_argument('--seconds', type=float, default=30.0)
    parser.add_argument('--slow-ms', type=float, default=1500.0,
                        help="what the slow endpoint adds: ten times the model's time here")
    parser.add_argument('--deadline-ms', type=float, default=3000.0,
                        help='long enough that the slow endpoint answers rather than times out')
    args = parser.parse_args()
    service = StartedService(COMPACT_ARCH, input_size=320)
    host, port = service.url.rsplit(':', 1)
    slow = Scenario('slow replica', (Fault('latency', 0.0, 1e6,
                                           {'delay_ms': args.slow_ms, 'jitter_ms': 0.0}),))
    try:
        with FaultProxy((host.split('//')[1], int(port)), slow) as proxy:
            urls = f'{service.url},http://127.0.0.1:{proxy.address[1]}'
            spec = LoadSpec(args.robots, args.fps, args.deadline_ms, args.seconds)
            rows = {share: run_point(urls, spec, bridge_params={'hedge_share': share})
                    for share in (0.0, 0.1)}
    finally:
        service.stop()
    for share, result in rows.items():
        sent = sum(result.counts.values()) - result.counts['busy']
        print(f'hedge_share {share:.1f}: P50 {result.percentile_ms(50):.0f} ms, P99 '
              f'{result.percentile_ms(99):.0f} ms, answered {len(result.latencies_ms)} of '
              f'{sent} frames sent, {result.requests} requests ({result.hedged} hedges, '
              f'{100 * result.hedged / max(1, sent):.1f} % extra)')
    without, hedged = rows[0.0], rows[0.1]
    gain = without.percentile_ms(99) / hedged.percentile_ms(99)
    sent = sum(hedged.counts.values()) - hedged.counts['busy']
    extra = hedged.hedged / max(1, sent)
    print(f'P99 without hedging / with: {gain:.2f} (target >= 2); extra requests '
          f'{100 * extra:.1f} % (target <= 10 %)')
    return 0 if gain >= 2.0 and extra <= 0.10 else 1


if __name__ == '__main__':
    sys.exit(main())
