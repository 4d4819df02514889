"""Whether the manager's online estimate of the edge's mAP follows a change of difficulty.

Issue target: the manager's online accuracy estimate (the prior corrected by edge/cloud
agreement) is compared with the measured mAP over sliding windows; show that it follows a
difficulty change, and how quickly.

One bag is generated whose scenes are easy, then hard, then easy again (by default
``easy:0-30,hard:30-60,easy:60-90`` at 10 fps, 640x480, with ground truth; the timeline is
recorded in the bag's metadata) and replayed at its own rate through the real graph with the
shipped models: YOLOv8n-shapes on the edge at 320, the compact Faster R-CNN in the embedded
service, policy ``predictive`` (on a one-sided route it probes the other side every
``--probe-every`` frames, and those frames, like hedged ones, are agreement samples). The
replay's own summary gives the figures (``accuracy_tracking``,
:mod:`offload_runtime.accuracy_tracking`): per window, the edge's measured mAP@[.5:.95] on the
frames it answered (faster-coco-eval), the mean estimate on the frame records and the agreement
samples taken; per change, the estimate's lag to half-way and to 90 % of its own move; the
mean absolute error of the estimate. The ``mean F1`` column is the edge/cloud agreement of the
frames both answered in the window, read back from the output bag: one of the two signals the
estimate is made of (the other is the confidence of the edge's boxes; docs/models.md).

Run: ``.venv/bin/python benchmarks/bench_accuracy_tracking.py [--fps 10]
[--difficulty easy:0-30,hard:30-60,easy:60-90] [--window 10] [--step 2] [--probe-every 10]
[--policy predictive] [--deadline-ms 1000] [--model M --cloud-arch A --cloud-checkpoint C]``
(the embedded service answers in 240-300 ms on one CPU thread: at 250 ms its probes time out
and no agreement sample comes).

Exit status 1 on a clear failure only: the run has no tracking figures (no ground truth, or no
window with both a measured mAP and an estimate), the manager took no agreement sample, or the
estimate followed none of the changes (it never moved the way the measured mAP did by a fifth
of that move). A slow follow is a finding, printed, not a failure.
"""

from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path
import sys
import tempfile
from typing import Any

from adaptive_offload import topics
from adaptive_offload.conversions import message_to_detections
from adaptive_offload.package_files import shipped_model
from adaptive_offload.scene_difficulty import parse_difficulty
from adaptive_offload.typestore import make_typestore
from offload_manager.accuracy import agreement_f1, measured_figures
from offload_runtime.accuracy_tracking import TrackingSettings
from offload_runtime.replay import Replay, ReplayOptions
from offload_runtime.sample_bag import SampleSpec, START_NS, write_sample_bag
from offload_runtime.summary import tracking_rows
from rcnn_service.compact_rcnn import COMPACT_ARCH
from rcnn_service.service import ServiceConfig
from rosbags.rosbag2 import Reader


def _pts(value: float | None) -> str:
    return '     -' if value is None else f'{value:6.1f}'


def _secs(value: float | None) -> str:
    return 'never' if value is None else f'{value:.1f} s'


def _own(change: dict[str, Any]) -> str:
    if change.get('own_lag50_s') is None:
        return ''
    return (f' ({100 * change["share"]:.0f} % of it; that move half-way after '
            f'{_secs(change["own_lag50_s"])}, 90 % after {_secs(change["own_lag90_s"])})')


def agreements(out: Path) -> list[tuple[float, float]]:
    """Return (seconds into the bag, edge/cloud F1) of every frame both sides answered.

    Read back from the replay's output bag: what the manager's agreement samples saw.
    """
    store = make_typestore('jazzy')
    found: dict[str, dict[tuple[int, str], Any]] = {'edge': {}, 'cloud': {}}
    wanted = {topics.edge_topic('edge', 'detections'): 'edge',
              topics.CLOUD_DETECTIONS: 'cloud'}
    with Reader(out) as reader:
        conns = [c for c in reader.connections if c.topic in wanted]
        for conn, _, raw in reader.messages(conns):
            dets = message_to_detections(store.deserialize_cdr(raw, conn.msgtype),
                                         wanted[conn.topic])
            found[wanted[conn.topic]][(dets.stamp_ns, dets.frame_id)] = dets.detections
    return sorted(((key[0] - START_NS) / 1e9, agreement_f1(edge, found['cloud'][key]))
                  for key, edge in found['edge'].items() if key in found['cloud'])


def print_figures(result: Any, args: argparse.Namespace,
                  f1s: list[tuple[float, float]]) -> dict[str, Any]:
    """Print the windows, the changes and the run's routes; return the tracking figures."""
    tracking = result.summary.get('accuracy_tracking') or {}
    routes = Counter(r.route for r in result.records)
    sources = Counter(r.result_source or 'dropped' for r in result.records)
    print(f'{len(result.records)} frames at {args.fps:g} fps, difficulty {args.difficulty}; '
          f'policy {args.policy}, probe every {args.probe_every}, deadline {args.deadline_ms:g} '
          f'ms; wall {result.wall_s:.0f} s')
    print('routes: ' + ', '.join(f'{k} {v}' for k, v in sorted(routes.items())) +
          '; results: ' + ', '.join(f'{k} {v}' for k, v in sorted(sources.items())))
    samples = max((r.agreement_samples for r in result.records), default=0)
    print(f'agreement samples taken: {samples}')
    figures = measured_figures()
    edge = figures.get(Path(args.model).stem, {}).get(args.imgsz, {})
    cloud_sizes = figures.get(args.cloud_arch, {})
    cloud = cloud_sizes[max(cloud_sizes)] if cloud_sizes else {}
    if edge and cloud:
        print('held-out mAP (docs/models.md): ' + ', '.join(
            f'{d} edge {edge.get(d, 0):.1f} cloud {cloud.get(d, 0):.1f}'
            for d in ('all', 'easy', 'hard')))
    if not tracking:
        return {}
    print(f'\n{"window s":>11s} {"edge fr":>7s} {"measured":>8s} {"estimate":>8s} '
          f'{"samples":>7s} {"mean F1":>7s}')
    for w in tracking['windows']:
        inside = [f for t, f in f1s if w['start_s'] <= t < w['end_s']]
        mean = f'{sum(inside) / len(inside):7.3f}' if inside else '      -'
        print(f'{w["start_s"]:5.0f}-{w["end_s"]:<5.0f} {w["edge_frames"]:7d} '
              f'{_pts(w["measured"]):>8s} {_pts(w["estimate"]):>8s} {w["samples"]:7d} {mean}')
    print(f'\nchanges ({tracking["changes_from"]}):')
    for c in tracking['changes']:
        print(f'  {c["label"]} at {c["t_s"]:g} s: measured {_pts(c["measured_before"])} -> '
              f'{_pts(c["measured_after"])}, estimate {_pts(c["estimate_before"])} -> '
              f'{_pts(c["estimate_after"])}; ' +
              (f'half-way after {_secs(c["lag50_s"])}, 90 % after {_secs(c["lag90_s"])}'
               + (' (still moving)' if c['still_moving'] else '')
               if c['follows'] else c['note'] + _own(c)))
    print()
    for name, value in tracking_rows(tracking)[:1]:
        print(f'{name}: {value}')
    return tracking


def main(argv: list[str] | None = None) -> int:
    """Generate the bag, replay it, print the tracking figures; see the module for the exit."""
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--fps', type=float, default=10.0)
    parser.add_argument('--difficulty', default='easy:0-30,hard:30-60,easy:60-90')
    parser.add_argument('--window', type=float, default=10.0, help='window, seconds')
    parser.add_argument('--step', type=float, default=2.0, help='step between windows, s')
    parser.add_argument('--policy', default='predictive')
    parser.add_argument('--probe-every', type=int, default=10)
    parser.add_argument('--deadline-ms', type=float, default=1000.0,
                        help='manager, edge and bridge deadline (the embedded service runs '
                             'on this CPU: 240-300 ms a frame on one thread)')
    parser.add_argument('--imgsz', type=int, default=320)
    parser.add_argument('--model', default=str(shipped_model('yolov8n-shapes.pt')),
                        help='edge weights (default: the shipped ones)')
    parser.add_argument('--cloud-arch', default=COMPACT_ARCH)
    parser.add_argument('--cloud-checkpoint', default=str(shipped_model('rcnn-shapes.pt')))
    parser.add_argument('--rate', type=float, default=1.0, help='playback rate (0: flat out)')
    args = parser.parse_args(argv)
    spans = parse_difficulty(args.difficulty).spans
    seconds = max((s.end_s for s in spans), default=60.0)
    name = Path(args.model).stem
    with tempfile.TemporaryDirectory() as tmp:
        bag = Path(tmp) / 'bag'
        write_sample_bag(bag, SampleSpec(frames=int(seconds * args.fps), fps=args.fps,
                                         width=640, height=480, difficulty=args.difficulty))
        result = Replay(ReplayOptions(
            bag=bag, out=Path(tmp) / 'out', rate=args.rate,
            overrides={'offload_manager': {'policy': args.policy, 'edge_model': name,
                                           'edge_imgsz': args.imgsz,
                                           'deadline_ms': args.deadline_ms,
                                           'probe_every': args.probe_every},
                       'edge_inference': {'model': args.model, 'model_name': name,
                                          'imgsz': args.imgsz,
                                          'deadline_ms': args.deadline_ms},
                       'cloud_bridge': {'deadline_ms': args.deadline_ms}},
            service=ServiceConfig(arch=args.cloud_arch, checkpoint=args.cloud_checkpoint,
                                  threads=1),
            tracking=TrackingSettings(args.window, args.step))).run()
        f1s = agreements(Path(tmp) / 'out')
    tracking = print_figures(result, args, f1s)
    if not tracking or tracking['mae'] is None:
        print('FAIL: no tracking figures (no ground truth, or no estimate)')
        return 1
    if not any(w['samples'] for w in tracking['windows']):
        print('FAIL: the manager took no agreement sample: nothing corrected the prior')
        return 1
    if tracking['changes'] and not any(c['follows'] for c in tracking['changes']):
        print('FAIL: the estimate followed none of the changes')
        return 1
    return 0


if __name__ == '__main__':
    sys.exit(main())
