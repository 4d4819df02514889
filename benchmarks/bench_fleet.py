"""A fleet hour with a replica crash, simulated, checked against the issue's targets in one run.

Issue targets for 100 robots over one simulated hour with a replica crash:

* every frame ends: within its deadline, or as an explicit drop (a result published after the
  deadline is counted apart, as ``late``);
* the fleet misses at most 1 % of its frames' deadlines;
* capacity (replicas ready) is back within the modelled pod start time;
* the simulation runs at least 100 times faster than real time on this machine.

Run: ``.venv/bin/python benchmarks/bench_fleet.py [--robots 100] [--seconds 3600]
[--policy predictive] [--scaler reactive] [--fps 10] [--busy-share 0.7]``; exits 1 when a
target is missed.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
import sys

from fault_injection.scenario import load_scenario
from offload_manager.energy import load_devices
from offload_manager.manager import default_devices_file
from offload_runtime.autoscalers import HpaSettings
from offload_runtime.evaluate import EvalOptions
from offload_runtime.fleet_eval import FleetOptions, run_fleet
from offload_runtime.service_settings import ServiceSettings

CRASH = Path(__file__).resolve().parents[1] / 'config' / 'scenarios' / 'fleet' / \
    'replica_crash.yaml'


def main() -> int:
    """Run the fleet and print its figures against the targets."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--robots', type=int, default=100)
    parser.add_argument('--seconds', type=float, default=3600.0)
    parser.add_argument('--fps', type=float, default=10.0)
    parser.add_argument('--policy', default='predictive')
    parser.add_argument('--scaler', default='reactive')
    parser.add_argument('--replicas', type=int, default=2)
    parser.add_argument('--pod-start-s', type=float, default=60.0)
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--busy-share', type=float, default=HpaSettings().target_busy_share,
                        help="the HPA's per-pod busy-share target (1 never scales on it)")
    args = parser.parse_args()
    scenario = load_scenario(CRASH)
    if args.seconds <= scenario.faults[0].start_s:
        # A shorter run crashes the replica at a third of it.
        scenario = dataclasses.replace(scenario, faults=(dataclasses.replace(
            scenario.faults[0], start_s=args.seconds / 3),))
    opts = EvalOptions(scenarios=[], frames=int(args.seconds * args.fps), fps=args.fps,
                       seed=args.seed, measured=True)
    service = ServiceSettings(replicas=args.replicas, min_replicas=min(2, args.replicas),
                              pod_start_s=args.pod_start_s)
    hpa = HpaSettings(target_busy_share=args.busy_share)
    fleet = FleetOptions(args.robots, service, (args.scaler,), hpa)
    row, _ = run_fleet(opts, fleet, scenario, args.policy, args.scaler,
                       load_devices(default_devices_file()))
    offered = args.robots * opts.frames
    print(f'{args.robots} robots x {args.seconds:.0f} s at {args.fps:g} fps, policy '
          f'{args.policy}, scaler {args.scaler}, crash at {scenario.faults[0].start_s:.0f} s')
    print(f'frames: {offered} offered, {row.frames} ended ({row.late_frames} late, the rest in '
          f'time or dropped); misses {row.miss_pct:.2f} %; cloud share {row.cloud_pct:.1f} %; '
          f'refusals {row.refusals}; answers computed after their budget {row.late_answers}; '
          f'robot energy {row.energy_j:.3f} J a frame')
    print(f'replicas: mean {row.mean_replicas:.1f}, capacity back {row.capacity_s:.0f} s '
          f'after the crash (pod start {args.pod_start_s:.0f} s), MTTR {row.mttr_s:.0f} s, '
          f'GPU {row.gpu_s:.0f} s, utilisation {100 * row.utilisation:.0f} %')
    print(f'speed: {row.sim_s:.0f} simulated s in {row.wall_s:.1f} wall s = {row.speed:.1f}x '
          f'real time ({row.frames / row.wall_s:.0f} frames/s)')
    checks = {
        'every frame ended': row.frames == offered,
        'misses <= 1 %': row.miss_pct <= 1.0,
        'capacity back within the pod start': row.capacity_s <= args.pod_start_s + 1.0,
        'no answer computed after its budget': row.late_answers == 0,
        '>= 100x real time': row.speed >= 100.0,
    }
    for name, ok in checks.items():
        print(f'  {"met   " if ok else "MISSED"} {name}')
    return 0 if all(checks.values()) else 1


if __name__ == '__main__':
    sys.exit(main())
