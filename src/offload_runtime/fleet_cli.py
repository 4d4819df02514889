"""The fleet and three-tier options of ``evaluate`` (``--robots``, ``--middle``)."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Sequence

from adaptive_offload.errors import ConfigError
from offload_runtime.autoscalers import HpaSettings
from offload_runtime.cli_args import above_zero, EXIT_OK, non_negative
from offload_runtime.evaluate import EvalOptions
from offload_runtime.fleet_eval import AUTOSCALE, evaluate_fleet, FleetOptions
from offload_runtime.service_settings import ServiceSettings
from offload_runtime.sim_settings import NetworkProfile

FLEET_POLICIES = ('predictive', 'reactive', 'static')
"""Policies a fleet evaluation compares unless ``--policies`` says otherwise."""


def add_fleet_arguments(evaluate: argparse.ArgumentParser) -> None:
    """Add the fleet options to the ``evaluate`` parser."""
    fleet = evaluate.add_argument_group(
        'fleet', 'several robots sharing one replicated service (simulated; with --robots or '
                 '--replicas the run is a fleet run and writes fleet.md)')
    fleet.add_argument('--robots', type=above_zero(int), default=None,
                       help='robots, each its own manager and policy (default with --replicas: '
                            '100)')
    fleet.add_argument('--replicas', type=above_zero(int), default=None,
                       help='replicas of the service at the start (default with --robots: 2)')
    fleet.add_argument('--autoscale', action='store_true',
                       help=f'compare the scalers {", ".join(AUTOSCALE)} (default: static only)')
    fleet.add_argument('--scalers', default='',
                       help='comma-separated scalers to compare (overrides --autoscale)')
    fleet.add_argument('--min-replicas', type=above_zero(int), default=2,
                       help='fewest replicas a scaler keeps (as the HPA: one may crash)')
    fleet.add_argument('--max-replicas', type=above_zero(int), default=32)
    fleet.add_argument('--pod-start-s', type=non_negative, default=60.0,
                       help='image pull, model load and warm-up of a pod')
    fleet.add_argument('--batch-ms', type=non_negative, default=0.0,
                       help='one-image batch time of a replica (default: the cloud profile)')
    fleet.add_argument('--batch-extra', type=non_negative, default=0.55,
                       help="each further image's share of --batch-ms")
    fleet.add_argument('--sync-s', type=above_zero(float), default=15.0,
                       help="the autoscaler's period")
    fleet.add_argument('--jobs', type=above_zero(int), default=1,
                       help='runs at once, a process each (each run takes one core)')


def is_fleet(args: argparse.Namespace) -> bool:
    """Whether the arguments ask for a fleet run."""
    return args.robots is not None or args.replicas is not None


def run_fleet_evaluate(args: argparse.Namespace, opts: EvalOptions) -> int:
    """Run ``evaluate`` as fleets and say where the table is.

    Raises:
        ConfigError: For unusable fleet options.
    """
    scalers: Sequence[str] = [s for s in args.scalers.split(',') if s] or \
        (AUTOSCALE if args.autoscale else ('static',))
    if opts.floors:
        raise ConfigError('--floors sweeps one robot: drop it or --robots/--replicas')
    if not args.policies:
        opts = dataclasses.replace(opts, policies=FLEET_POLICIES)
    replicas = args.replicas or 2
    if replicas > args.max_replicas:
        raise ConfigError(f'--replicas ({replicas}) exceeds --max-replicas '
                          f'({args.max_replicas})')
    service = ServiceSettings(replicas=replicas, min_replicas=min(args.min_replicas, replicas),
                              max_replicas=args.max_replicas,
                              pod_start_s=args.pod_start_s, first_ms=args.batch_ms,
                              batch_extra=args.batch_extra)
    fleet = FleetOptions(args.robots or 100, service, scalers, HpaSettings(sync_s=args.sync_s))
    evaluate_fleet(opts, fleet, lambda line: print(line, flush=True), args.jobs)
    out: Path = opts.out
    print(f'fleet table: {out / "fleet.md"} and fleet.csv; plots: {out}/fleet_*.png')
    return EXIT_OK


def add_evaluate_arguments(evaluate: argparse.ArgumentParser) -> None:
    """Add the fleet options and the three-tier ones to the ``evaluate`` parser."""
    add_fleet_arguments(evaluate)
    tiers = evaluate.add_argument_group(
        'three tiers', 'split options arch@imgsz:i/j:encoding: the robot to i, a middle device '
                       'on the LAN i to j, the cloud the rest (j end: nothing to the cloud)')
    tiers.add_argument('--middle', default='',
                       help='device profile of the middle tier (e.g. laptop_cpu)')
    tiers.add_argument('--lan-mbps', type=above_zero(float), default=100.0,
                       help='robot-to-middle LAN rate (sim)')
    tiers.add_argument('--lan-rtt-ms', type=non_negative, default=2.0,
                       help='robot-to-middle LAN round trip (sim)')


def network_profile(args: argparse.Namespace) -> NetworkProfile:
    """Return the simulated links ``evaluate``'s arguments describe."""
    return NetworkProfile(args.uplink_mbps, args.rtt_ms, lan_mbps=args.lan_mbps,
                          lan_rtt_ms=args.lan_rtt_ms, middle=args.middle)
