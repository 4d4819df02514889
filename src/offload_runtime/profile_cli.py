"""``adaptive-offload profile MODEL``: per split point times and payload sizes on this machine."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

EXIT_OK = 0


def add_profile_parser(sub: Any) -> None:
    """Add the ``profile`` subcommand to ``sub`` (an argparse subparsers object)."""
    from offload_runtime.cli_args import above_zero, non_negative_int

    profile = sub.add_parser(
        'profile', help='time the head and tail of every split point of a model, and the '
                        'bytes that cross it per encoding')
    profile.add_argument('model', help='an ultralytics .pt file (edge YOLO) or an R-CNN '
                                       'architecture (cloud), e.g. fasterrcnn_resnet50_fpn_v2')
    profile.add_argument('--checkpoint', default=None,
                         help='R-CNN weights (default: the shipped ones for the compact model, '
                              'else random weights, which time the same)')
    profile.add_argument('--device', default='cpu', help='cpu or cuda[:N]')
    profile.add_argument('--imgsz', type=non_negative_int, default=640,
                         help='YOLO: square input size; R-CNN: longest side (0: the '
                              "architecture's own)")
    profile.add_argument('--repeats', type=above_zero(int), default=5,
                         help='timed runs per figure (medians)')
    profile.add_argument('--threads', type=non_negative_int, default=0,
                         help="torch threads (0: torch's default)")
    profile.add_argument('--seed', type=int, default=3, help='seed of the generated frame')
    profile.add_argument('--bottleneck', type=Path, default=None, metavar='FILE',
                         help='R-CNN: also measure this learned bottleneck (adaptive-offload '
                              'train bottleneck, e.g. models/rcnn-shapes-bottleneck.pt) at '
                              'the point it was trained for, as the "bottleneck" encoding: '
                              'its code bytes, encoder + quantise + compress time, and '
                              'decompress + decoder time; refused unless trained for these '
                              'weights (default: none)')
    profile.add_argument('--out', type=Path, default=None,
                         help='also write the profile here (.yaml or .json)')


def run_profile_cli(args: argparse.Namespace) -> int:
    """Run ``adaptive-offload profile``; returns the exit code."""
    import yaml

    from offload_runtime.split_profile import format_table, ProfileOptions, run_profile

    options = ProfileOptions(device=args.device, imgsz=args.imgsz, repeats=args.repeats,
                             threads=args.threads, seed=args.seed,
                             bottleneck=args.bottleneck)
    profile = run_profile(args.model, args.checkpoint, options)
    print(format_table(profile))
    if args.out is not None:
        data = profile.to_dict()
        text = (json.dumps(data, indent=1) if args.out.suffix == '.json'
                else yaml.safe_dump(data, sort_keys=False))
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
        print(f'profile written to {args.out}')
    return EXIT_OK
