"""Goodput of one service as a fleet grows past its capacity, measured in one run.

Issue targets, at an offered load of at least twice the service's capacity (its peak goodput
over the sweep):

* goodput at least 90 % of the peak: overload does not make the service work for nobody;
* no answer computed after its budget (the service's ``late_answers`` counter: answers that
  finished after it; none is started after it, the queue checks each when its batch forms);
* the P99 of the answered requests within the deadline.

It runs ``adaptive-offload loadtest`` (the builtin service in a child process, the shipped
compact R-CNN, robots that are the real cloud bridge) over a sweep of fleet sizes that reaches
at least three times the capacity, and prints the table and the three figures.

On this project's 2-core CPU machine the compact R-CNN takes about 170 ms an image (batching
hardly helps on a CPU), so the default deadline is 1 s, room for a few batches of queue; on a
GPU, where it takes milliseconds, use the robots' own deadline.

Run: ``.venv/bin/python benchmarks/bench_loadtest.py [--robots 1 2 3 5 8 16] [--fps 2]
[--seconds 15] [--deadline-ms 1000]``; exits 1 when a target is missed.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
import sys
import tempfile

from offload_runtime.cli import main as cli


def main() -> int:
    """Run the sweep and print the figures against the targets."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--robots', type=int, nargs='+', default=[1, 2, 3, 5, 8, 16])
    parser.add_argument('--fps', type=float, default=2.0)
    parser.add_argument('--seconds', type=float, default=15.0)
    parser.add_argument('--deadline-ms', type=float, default=1000.0)
    parser.add_argument('--max-batch', type=int, default=4)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / 'rows.json'
        code = cli(['loadtest', '--robots', *map(str, args.robots), '--fps', str(args.fps),
                    '--seconds', str(args.seconds), '--deadline-ms', str(args.deadline_ms),
                    '--max-batch', str(args.max_batch), '--json', str(out)])
        if code:
            return code
        rows = json.loads(out.read_text())
    peak = max(r['goodput_fps'] for r in rows)
    over = [r for r in rows if r['offered_fps'] >= 2 * peak]
    print(f'\ncapacity (peak goodput): {peak:.1f} answers/s; sweep reaches '
          f'{rows[-1]["offered_fps"] / max(peak, 1e-9):.1f}x it')
    if not over:
        print('no point offered twice the capacity: extend --robots')
        return 1
    ok = True
    for row in over:
        ratio = row['goodput_fps'] / peak
        p99 = row['p99_ms']
        print(f'{row["robots"]:3d} robots, offered {row["offered_fps"] / peak:.1f}x capacity: '
              f'goodput {ratio:.2f} of peak (target >= 0.90), answers finished after their '
              f'budget {row["server_late"]:g} (target 0), P99 {p99:.0f} ms = '
              f'{p99 / args.deadline_ms:.2f} of the deadline (target <= 1)')
        ok &= ratio >= 0.9 and row['server_late'] == 0 and \
            (math.isnan(p99) or p99 <= args.deadline_ms)
    return 0 if ok else 1


if __name__ == '__main__':
    sys.exit(main())
