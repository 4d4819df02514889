"""mAP gained per cloud request: content-aware against uniform sampling, measured in one run.

Issue target: content-aware sampling gains at least 1.5x the mAP per cloud request of uniform
sampling at the same request rate.

One generated bag whose scene gets hard and easy again (a difficulty timeline, with ground
truth) is replayed three times through the real graph at its own rate: edge only; hedged with
one frame in ``--every`` sent to the cloud, uniformly; and the same with ``sampling: content``.
Every frame is scored against the ground truth (the replay's own scorer, faster-coco-eval).
The gain of a run is its mAP@[.5:.95] minus edge-only's; per request, divided by its cloud
requests. The figure is the ratio of content's gain per request to uniform's.

Run: ``.venv/bin/python benchmarks/bench_sampling.py [--frames 300] [--every 4]
[--model yolov8n.yaml] [--cloud-arch A] [--cloud-checkpoint C] [--min-ratio 1.5]``; exits 1
when the ratio is below ``--min-ratio`` (0 disables the check). The defaults are the models
the package ships when it has them; random weights make every figure meaningless.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
import sys
import tempfile
from typing import Any

from adaptive_offload.package_files import shipped_model
from offload_runtime.replay import Replay, ReplayOptions
from offload_runtime.sample_bag import SampleSpec, write_sample_bag
from offload_runtime.train_cli import CLOUD_FILE, EDGE_FILE
from rcnn_service.compact_rcnn import COMPACT_ARCH
from rcnn_service.service import ServiceConfig

TARGET = 1.5


@dataclass(frozen=True)
class Run:
    """One replay's figures."""

    name: str
    m_ap: float
    requests: int


def replay(bag: Path, out: Path, name: str, args: argparse.Namespace,
           manager: dict[str, Any], bridge: dict[str, Any]) -> Run:
    """Replay ``bag`` with the given manager and bridge parameters; score it."""
    edge: dict[str, Any] = {'imgsz': args.imgsz, 'deadline_ms': args.deadline_ms}
    if args.model:
        edge['model'] = args.model
        manager = {'edge_model': Path(args.model).stem, **manager}  # its measured priors
    result = Replay(ReplayOptions(
        bag=bag, out=out / name, rate=1.0,
        overrides={'offload_manager': {'deadline_ms': args.deadline_ms,
                                       'edge_imgsz': args.imgsz, **manager},
                   'edge_inference': edge, 'cloud_bridge': bridge},
        service=ServiceConfig(arch=args.cloud_arch, checkpoint=args.cloud_checkpoint,
                              threads=1))).run()
    maps = result.summary.get('map') or {}
    if 'all' not in maps:
        raise SystemExit('the bag has no ground truth to score against')
    requests = sum(1 for r in result.reports if r.source == 'cloud' and r.status == 'ok')
    return Run(name, 100.0 * maps['all'], requests)


def main(argv: list[str] | None = None) -> int:
    """Run the three replays and print their figures and the ratio."""
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--frames', type=int, default=300)
    parser.add_argument('--fps', type=float, default=5.0)
    parser.add_argument('--every', type=int, default=4, help='one frame in N to the cloud')
    parser.add_argument('--difficulty', default='easy:0-15,hard:15-30,easy:30-45,hard:45-60')
    parser.add_argument('--imgsz', type=int, default=320)
    parser.add_argument('--deadline-ms', type=float, default=2000.0)
    parser.add_argument('--model', default=str(shipped_model(EDGE_FILE)),
                        help='edge weights (default: the shipped ones)')
    parser.add_argument('--cloud-arch', default=COMPACT_ARCH)
    parser.add_argument('--cloud-checkpoint', default=None,
                        help="default: the shipped one for the compact architecture; '': random")
    parser.add_argument('--min-ratio', type=float, default=TARGET)
    args = parser.parse_args(argv)
    if args.cloud_checkpoint is None:
        args.cloud_checkpoint = str(shipped_model(CLOUD_FILE)) \
            if args.cloud_arch == COMPACT_ARCH else ''
    with tempfile.TemporaryDirectory() as tmp:
        bag = Path(tmp) / 'bag'
        write_sample_bag(bag, SampleSpec(frames=args.frames, fps=args.fps, width=640,
                                         height=480, difficulty=args.difficulty))
        hedged = {'policy': 'static', 'static_route': 'hedged', 'offload_every': args.every}
        runs = [replay(bag, Path(tmp), 'edge-only', args, {'policy': 'edge-only'}, {}),
                replay(bag, Path(tmp), 'uniform', args, hedged, {'sampling': 'uniform'}),
                replay(bag, Path(tmp), 'content', args, hedged, {'sampling': 'content'})]
    base = runs[0].m_ap
    print(f'{args.frames} frames at {args.fps:g} fps, difficulty {args.difficulty}, '
          f'one in {args.every} frames to the cloud')
    print(f'{"run":10s} {"mAP":>6s} {"requests":>9s} {"gain":>6s} {"gain/request":>13s}')
    per: dict[str, float] = {}
    for run in runs:
        gain = run.m_ap - base
        per[run.name] = gain / run.requests if run.requests else 0.0
        print(f'{run.name:10s} {run.m_ap:6.2f} {run.requests:9d} {gain:6.2f} '
              f'{per[run.name]:13.4f}')
    if per['uniform'] <= 0:
        print('uniform sampling gained nothing: no ratio (are the models trained?)')
        return 1 if args.min_ratio > 0 else 0
    ratio = per['content'] / per['uniform']
    print(f'content / uniform mAP gained per request: {ratio:.2f} (target >= {args.min_ratio})')
    return 0 if args.min_ratio <= 0 or ratio >= args.min_ratio else 1


if __name__ == '__main__':
    sys.exit(main())
