"""``adaptive-offload train edge|cloud|measure``: the shipped detectors, made and measured."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

EXIT_OK = 0
EDGE_FILE, CLOUD_FILE = 'yolov8n-shapes.pt', 'rcnn-shapes.pt'
BOTTLENECK_FILE = 'rcnn-shapes-bottleneck.pt'


def checkpoint_for(arch: str, given: str | None) -> str:
    """Return the R-CNN checkpoint to serve: the given one, else the shipped one for its arch.

    Args:
        arch: The architecture served.
        given: The checkpoint the user named; None: none named ("" means random weights).
    """
    from adaptive_offload.package_files import shipped_model
    from rcnn_service.compact_rcnn import COMPACT_ARCH

    if given is not None:
        return str(given)
    return str(shipped_model(CLOUD_FILE)) if arch == COMPACT_ARCH else ''


def add_train_parser(sub: Any) -> None:
    """Add the ``train`` subcommand to ``sub`` (an argparse subparsers object)."""
    from adaptive_offload.package_files import shipped_model

    train = sub.add_parser('train', help='train the shipped detectors on generated scenes '
                                         '(CPU), or measure them')
    kinds = train.add_subparsers(dest='kind', required=True, parser_class=type(train))
    edge = kinds.add_parser('edge', help='YOLOv8n (ultralytics) on generated scenes')
    edge.add_argument('--out', type=Path, default=shipped_model(EDGE_FILE))
    edge.add_argument('--frames', type=int, default=500, help='training frames')
    edge.add_argument('--val-frames', type=int, default=60)
    edge.add_argument('--epochs', type=int, default=30)
    edge.add_argument('--imgsz', type=int, default=320)
    edge.add_argument('--batch', type=int, default=16)
    edge.add_argument('--scale', type=float, default=0.9,
                      help='random zoom of the augmentation (gain 1 +- scale)')
    cloud = kinds.add_parser('cloud', help='the compact Faster R-CNN on generated scenes')
    cloud.add_argument('--out', type=Path, default=shipped_model(CLOUD_FILE))
    cloud.add_argument('--steps', type=int, default=800)
    cloud.add_argument('--batch', type=int, default=4)
    cloud.add_argument('--lr', type=float, default=1e-3)
    bneck = kinds.add_parser('bottleneck', help='a learned bottleneck at a split point of the '
                                                'cloud R-CNN (docs/models.md)')
    bneck.add_argument('--out', type=Path, default=shipped_model(BOTTLENECK_FILE))
    bneck.add_argument('--detector', type=Path, default=shipped_model(CLOUD_FILE),
                       help='the R-CNN checkpoint it is trained against (frozen)')
    bneck.add_argument('--point', type=int, default=4, help='split point (one tensor crosses)')
    bneck.add_argument('--width', type=int, default=2, help='channels of the code sent')
    bneck.add_argument('--reduction', type=int, default=1, choices=(1, 2),
                       help='spatial reduction of the code')
    bneck.add_argument('--frames', type=int, default=160, help='training frames')
    bneck.add_argument('--steps', type=int, default=1500)
    bneck.add_argument('--fpn-weight', type=float, default=1.0,
                       help='weight of the feature-pyramid term of the loss')
    for parser in (edge, cloud, bneck):
        parser.add_argument('--time-budget', type=float, default=0.0,
                            help='stop after about this many seconds (0: no limit)')
        parser.add_argument('--seed', type=int, default=0)
        parser.add_argument('--threads', type=int, default=1, help='torch threads')
    measure = kinds.add_parser('measure', help='held-out mAP of the models per input size and '
                                               'difficulty')
    measure.add_argument('--edge', type=Path, default=shipped_model(EDGE_FILE))
    measure.add_argument('--cloud', type=Path, default=shipped_model(CLOUD_FILE))
    measure.add_argument('--edge-sizes', default='320,640',
                         help='comma-separated edge input sizes')
    measure.add_argument('--frames', type=int, default=60, help='held-out frames per difficulty')
    measure.add_argument('--seed', type=int, default=0)
    measure.add_argument('--threads', type=int, default=1, help='torch threads')
    measure.add_argument('--json', type=Path, help='also write the figures to this file '
                                                   '(models/accuracy.json)')


def run_train(args: argparse.Namespace) -> int:
    """Run ``adaptive-offload train``; returns the exit code."""
    import time

    log = (lambda line: print(line, flush=True))
    start = time.monotonic()
    if args.kind == 'measure':
        from offload_runtime.model_accuracy import format_table, measure_models

        sizes = tuple(int(s) for s in args.edge_sizes.split(',') if s)
        figures = measure_models(args.edge, args.cloud, sizes, args.frames, args.seed,
                                 args.threads, log)
        print(format_table(figures))
        if args.json:
            args.json.write_text(json.dumps(figures, indent=2) + '\n')
            print(f'wrote {args.json}')
        return EXIT_OK
    if args.kind == 'bottleneck':
        from offload_runtime.bottleneck_training import BottleneckTraining, train_bottleneck

        out = train_bottleneck(BottleneckTraining(
            out=args.out, detector=args.detector, point=args.point, width=args.width,
            reduction=args.reduction, frames=args.frames, steps=args.steps,
            fpn_weight=args.fpn_weight, time_budget_s=args.time_budget, seed=args.seed,
            threads=args.threads), log)
        print(f'wrote {out} ({out.stat().st_size / 1e3:.0f} kB) in '
              f'{time.monotonic() - start:.0f} s')
        return EXIT_OK
    from offload_runtime.training import CloudTraining, EdgeTraining, train_cloud, train_edge

    if args.kind == 'edge':
        out = train_edge(EdgeTraining(
            out=args.out, frames=args.frames, val_frames=args.val_frames, epochs=args.epochs,
            imgsz=args.imgsz, batch=args.batch, scale=args.scale, time_budget_s=args.time_budget,
            seed=args.seed, threads=args.threads), log)
    else:
        out = train_cloud(CloudTraining(
            out=args.out, steps=args.steps, batch=args.batch, lr=args.lr,
            time_budget_s=args.time_budget, seed=args.seed, threads=args.threads), log)
    print(f'wrote {out} ({out.stat().st_size / 1e6:.1f} MB) in {time.monotonic() - start:.0f} s')
    return EXIT_OK
