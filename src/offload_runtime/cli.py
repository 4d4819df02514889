"""The ``adaptive-offload`` command: sample bags and replays without ROS.

Exit codes: 0 done, 1 invalid parameters (check-params) or nothing to recover (recover-bag),
2 bad arguments or unusable input (one line on stderr naming the problem), 128 + the signal's
number when SIGINT or SIGTERM stopped it (130 for Ctrl-C, 143 for SIGTERM).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path
import signal
import sys
from typing import Any, Sequence

from adaptive_offload.errors import AdaptiveOffloadError, ConfigError

from offload_runtime.cli_args import (architectures, EXIT_INTERRUPTED, EXIT_INVALID, EXIT_OK,
                                      EXIT_USAGE, non_negative, non_negative_int, Parser)


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser of every subcommand."""
    from offload_runtime.fleet_cli import add_evaluate_arguments
    from offload_runtime.sample_bag import SAMPLE_ENCODINGS
    from offload_runtime.loadtest_cli import add_loadtest_parser
    from offload_runtime.profile_cli import add_profile_parser
    from offload_runtime.serve_cli import add_serve_parser
    from offload_runtime.train_cli import add_train_parser
    from rcnn_service.compact_rcnn import COMPACT_ARCH

    parser = Parser(prog='adaptive-offload', description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest='command', required=True, parser_class=Parser)

    check = sub.add_parser('check-params',
                           help='check a ROS 2 parameter file as the nodes would take it')
    check.add_argument('file', type=Path, help='parameter file (params.yaml)')

    sample = sub.add_parser('sample-bag', help='write a synthetic camera bag (MCAP)')
    sample.add_argument('out', type=Path, help='bag folder to create')
    sample.add_argument('--frames', type=non_negative_int, default=300)
    sample.add_argument('--fps', type=float, default=10.0)
    sample.add_argument('--width', type=int, default=640)
    sample.add_argument('--height', type=int, default=480)
    sample.add_argument('--encoding', choices=SAMPLE_ENCODINGS, default='rgb8')
    sample.add_argument('--objects', type=non_negative_int, default=4)
    sample.add_argument('--difficulty', default='',
                        help='easy, medium or hard for the whole bag, or a timeline such as '
                             'easy:0-30,hard:30-60 (seconds; easy elsewhere); a span may '
                             'override values: hard[blur=0;light=0.2]:30-60')
    sample.add_argument('--seed', type=int, default=0)
    sample.add_argument('--battery-hz', type=float, default=0.0,
                        help='also write sensor_msgs/BatteryState on /battery_state')
    sample.add_argument('--distro', choices=('humble', 'jazzy'), default='jazzy')

    replay = sub.add_parser('replay', help='run the graph on a bag, write an output bag')
    replay.add_argument('bag', type=Path, help='input bag folder')
    replay.add_argument('--out', type=Path, required=True, help='output bag folder to create')
    replay.add_argument('--rate', type=non_negative, default=1.0,
                        help='playback rate factor; 0 = as fast as possible (default 1)')
    replay.add_argument('--max-frames', type=non_negative_int, default=0)
    replay.add_argument('--topic', default='', help='image topic (default: the only one)')
    replay.add_argument('--params', type=Path, help='ROS 2 parameter file (config/params.yaml)')
    replay.add_argument('--policy', help='offload_manager policy')
    replay.add_argument('--model', help='edge weights (.pt) or model config (.yaml)')
    replay.add_argument('--imgsz', type=int, help='edge input size')
    replay.add_argument('--device', help='edge device (cpu, cuda, mps)')
    replay.add_argument('--deadline-ms', type=float, help='per-frame deadline')
    replay.add_argument('--cloud', default='',
                        help="URL of a V2 inference service (default: the params file's); "
                             '"embedded", or no URL at all: cloud policies start the service '
                             'embedded on loopback')
    replay.add_argument('--cloud-arch', type=architectures, default=[(COMPACT_ARCH, None)],
                        help='architecture of the embedded service (default: that of the '
                             'shipped model), or several, ARCH[=CHECKPOINT],..., most '
                             'preferred first: it serves the first that answers within the '
                             'deadline on this machine, else the fastest')
    replay.add_argument('--cloud-checkpoint', default=None,
                        help='checkpoint of a single --cloud-arch (default: the shipped one '
                             'for the shipped architecture, else none); "": random weights')
    replay.add_argument('--scenario', type=Path,
                        help='fault scenario (YAML) injected into the run (config/scenarios/)')
    replay.add_argument('--injector', choices=('client', 'proxy', 'netns'), default='client',
                        help='where network faults are injected: the bridge transport, a TCP '
                             'fault proxy, or tc in a network namespace (root)')
    replay.add_argument('--tracking-window', type=non_negative, default=10.0,
                        help='seconds of each window comparing the estimated edge mAP with '
                             'the measured one (bags with ground truth; default 10)')
    replay.add_argument('--tracking-step', type=non_negative, default=2.0,
                        help='seconds between those windows (default 2)')
    replay.add_argument('--distro', choices=('humble', 'jazzy'), default='jazzy')
    replay.add_argument('--json', action='store_true', help='print the summary as JSON')
    replay.add_argument('--no-progress', action='store_true', help='no progress bar')
    replay.add_argument('--progress', action='store_true',
                        help='the progress bar even when stderr is not a terminal (a log)')

    recover = sub.add_parser('recover-bag',
                             help='rebuild a readable bag from one a killed replay left')
    recover.add_argument('bag', type=Path, help='bag folder (or its .mcap file)')
    recover.add_argument('--out', type=Path,
                         help='bag folder to create (default: BAG-recovered beside it)')

    add_serve_parser(sub)
    add_loadtest_parser(sub)

    evaluate = sub.add_parser('evaluate', help='every policy under every scenario: table, plots')
    evaluate.add_argument('--scenarios', type=Path, default=Path('config/scenarios'),
                          help='a scenario file, or a folder of them (*.yaml)')
    evaluate.add_argument('--policies', default='',
                          help='comma-separated policy names (default: all of them)')
    evaluate.add_argument('--mode', choices=('sim', 'live'), default='sim')
    evaluate.add_argument('--out', type=Path, required=True, help='folder for table and plots')
    evaluate.add_argument('--frames', type=non_negative_int, default=3000,
                          help='frames per run (live: frames of the generated bag)')
    evaluate.add_argument('--fps', type=float, default=10.0)
    evaluate.add_argument('--deadline-ms', type=float, default=250.0)
    evaluate.add_argument('--robot', default='',
                          help='device profile (default: raspberry_pi_5; live: ci_machine)')
    evaluate.add_argument('--devices', default='', help='device profiles file')
    evaluate.add_argument('--uplink-mbps', type=float, default=50.0, help='sim link bandwidth')
    evaluate.add_argument('--rtt-ms', type=float, default=30.0, help='sim link round trip')
    evaluate.add_argument('--seed', type=int, default=0)
    evaluate.add_argument('--cloud', default='gpu_server', help='cloud device profile')
    evaluate.add_argument('--split-options', default='', help='comma-separated '
                          'arch@imgsz:point:encoding split routes (default none)')
    quality = evaluate.add_mutually_exclusive_group()
    quality.add_argument('--measured', dest='measured', action='store_true', default=True,
                         help='sim: the shipped detectors, each frame of the quality measured '
                              'for them at the scene difficulty of the moment (the default)')
    quality.add_argument('--priors', dest='measured', action='store_false',
                         help='sim: COCO models (yolov8n, the Faster R-CNN of the cloud '
                              'profile) with their published priors, which no scene changes')
    evaluate.add_argument('--floors', default='',
                          help='comma-separated accuracy floors (mAP) to sweep predictive over: '
                               'draws the energy-against-accuracy front of every scenario and '
                               'writes matched.md (e.g. 0,30,35,40,45)')
    add_evaluate_arguments(evaluate)

    report = sub.add_parser('report', help='one self-contained HTML page of the output bag of a '
                                           'replay or of an evaluate folder')
    report.add_argument('out', type=Path, help='replay output bag, or evaluate --out folder')
    report.add_argument('--html', type=Path, default=None,
                        help='page to write (default: OUT/report.html)')
    report.add_argument('--frames', type=non_negative_int, default=8, help='frames in the strip')

    export = sub.add_parser('export', help='export a YOLO model for the onnx backend')
    export.add_argument('model', help='weights (.pt) or model config (.yaml)')
    export.add_argument('--out', type=Path, required=True, help='file to write (.onnx)')
    export.add_argument('--imgsz', type=int, default=640, help='fixed input size')
    export.add_argument('--format', default='onnx', choices=('onnx',))
    add_train_parser(sub)
    add_profile_parser(sub)
    return parser


def _overrides(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    edge: dict[str, Any] = {}
    manager: dict[str, Any] = {}
    if args.model:
        edge['model'] = args.model
        # The name decisions ask for must be the one the edge answers to, whatever the file.
        edge['model_name'] = manager['edge_model'] = Path(args.model).stem
    if args.imgsz:
        edge['imgsz'] = manager['edge_imgsz'] = args.imgsz
    if args.device:
        edge['device'] = args.device
    if args.policy:
        manager['policy'] = args.policy
    if args.deadline_ms:
        edge['deadline_ms'] = manager['deadline_ms'] = args.deadline_ms
    # 'embedded' clears a params file's URL: cloud policies then start the service on loopback.
    cloud = {'url': '' if args.cloud == 'embedded' else args.cloud} if args.cloud else {}
    return {'edge_inference': edge, 'offload_manager': manager, 'cloud_bridge': cloud}


def _sample_bag(args: argparse.Namespace) -> int:
    from offload_runtime.sample_bag import SampleSpec, write_sample_bag

    spec = SampleSpec(frames=args.frames, fps=args.fps, width=args.width, height=args.height,
                      encoding=args.encoding, seed=args.seed, objects=args.objects,
                      difficulty=args.difficulty, battery_hz=args.battery_hz)
    count = write_sample_bag(args.out, spec, args.distro)
    print(f'wrote {count} frames ({spec.width}x{spec.height} {spec.encoding} at {spec.fps} fps) '
          f'to {args.out}')
    return EXIT_OK


def _export(args: argparse.Namespace) -> int:
    from edge_inference.export import export_model

    print(f'exporting {args.model} to {args.format} at {args.imgsz} (about a minute on a CPU)',
          flush=True)
    path = export_model(args.model, args.imgsz, args.out, args.format)
    print(f'wrote {path} ({args.format}, input {args.imgsz}x{args.imgsz}); run it with '
          f'backend onnx, model {path}')
    return EXIT_OK


def _replay(args: argparse.Namespace) -> int:
    from adaptive_offload.params import load_params_file
    from offload_runtime.accuracy_tracking import TrackingSettings
    from offload_runtime.interrupts import SignalStop
    from offload_runtime.replay import Replay, ReplayOptions
    from fault_injection.scenario import load_scenario

    services = _cloud_services(args)
    options = ReplayOptions(
        bag=args.bag, out=args.out, rate=args.rate, max_frames=args.max_frames, topic=args.topic,
        params=load_params_file(args.params) if args.params else {},
        params_file=str(args.params or ''),
        overrides=_overrides(args), distro=args.distro,
        service=services[0], service_alternatives=tuple(services[1:]),
        scenario=load_scenario(args.scenario) if args.scenario else None,
        injector=args.injector,
        tracking=TrackingSettings(args.tracking_window, args.tracking_step),
        progress=args.progress or (not args.no_progress and sys.stderr.isatty()))
    with SignalStop('adaptive-offload replay') as stopper:
        try:
            # Status lines of the long steps go with the summary, on stdout; --json keeps
            # stdout for the summary alone.
            replay = Replay(options, status=(lambda line: None) if args.json else
                            (lambda line: print(line, flush=True)))
            stopper.attach(replay)
        except KeyboardInterrupt:  # still loading: nothing written yet
            print('adaptive-offload replay: interrupted before the replay started',
                  file=sys.stderr)
            return stopper.exit_code or EXIT_INTERRUPTED
        result = replay.run()
        _print_result(args, result)
        if not result.interrupted:
            return EXIT_OK
        how = signal.Signals(stopper.signum).name if stopper.signum else 'a stop'
        print(f'adaptive-offload replay: stopped by {how} after {result.summary["frames"]} '
              f'frames; output bag finalised: {result.out}', file=sys.stderr)
        return stopper.exit_code or EXIT_INTERRUPTED


def _cloud_services(args: argparse.Namespace) -> list[Any]:
    """Return the embedded service's configurations, one per --cloud-arch, in order."""
    from offload_runtime.train_cli import checkpoint_for
    from rcnn_service.service import ServiceConfig

    if len(args.cloud_arch) > 1 and args.cloud_checkpoint is not None:
        raise ConfigError('--cloud-checkpoint names the checkpoint of a single --cloud-arch; '
                          'with several, write each as ARCH=CHECKPOINT')
    return [ServiceConfig(arch=arch, checkpoint=checkpoint_for(
        arch, args.cloud_checkpoint if checkpoint is None else checkpoint))
        for arch, checkpoint in args.cloud_arch]


def _print_result(args: argparse.Namespace, result: Any) -> None:
    from offload_runtime.summary import format_summary

    faults = [dataclasses.asdict(f) for f in result.faults]
    report = _write_report(result.out)
    if args.json:
        print(json.dumps({**result.summary, 'faults': faults, 'interrupted': result.interrupted,
                          'report': str(report) if report else None}, indent=2))
    else:
        print(format_summary(result.summary))
        for f in faults:
            detect = '-' if f['detect_s'] is None else f'{f["detect_s"] * 1e3:.0f} ms'
            recover = '-' if f['recover_s'] is None else f'{f["recover_s"] * 1e3:.0f} ms'
            diagnosed = '-' if f['diagnosed_s'] is None else f'{f["diagnosed_s"] * 1e3:.0f} ms'
            print(f'fault {f["kind"]} at {f["start_s"]:.1f} s: detected {detect} '
                  f'(on /diagnostics {diagnosed}), recovered {recover}, {f["late"]} late, '
                  f'{f["dropped"]} dropped')
        print(f'output bag: {result.out}', flush=True)
        if report:
            print(f'report: {report}', flush=True)
    cloud = result.summary.get('cloud')
    if cloud and not cloud['answered']:
        why = ', '.join(f'{k} {v}' for k, v in cloud['failures'].items())
        print(f'adaptive-offload replay: the cloud answered none of {cloud["requests"]} requests '
              f'({why}): check its URL (--cloud, or cloud_bridge url in --params), start one '
              'with adaptive-offload serve, or use --cloud embedded', file=sys.stderr)


def _write_report(bag: Path) -> Path | None:
    from offload_runtime.report import write_report

    try:
        return write_report(bag)
    except AdaptiveOffloadError as err:  # a run stopped before its first frame: no page
        print(f'adaptive-offload: no report: {err}', file=sys.stderr)
        return None


def _report(args: argparse.Namespace) -> int:
    from offload_runtime.report import write_evaluation_report, write_report

    if (args.out / 'table.md').exists():
        print(f'report: {write_evaluation_report(args.out)}')
    else:
        print(f'report: {write_report(args.out, args.html, args.frames)}')
    return EXIT_OK


def _recover_bag(args: argparse.Namespace) -> int:
    from offload_runtime.bag_recovery import recover_bag

    done = recover_bag(args.bag, args.out)
    if not done.messages:
        print(f'adaptive-offload recover-bag: nothing to recover in {args.bag} ({done.end})',
              file=sys.stderr)
        return EXIT_INVALID
    skipped = ''.join(f'; skipped {n} {t} (definition does not parse)'
                      for t, n in done.skipped.items())
    print(f'recovered {done.messages} messages on {len(done.counts)} topics to {done.out} '
          f'(read up to: {done.end}){skipped}')
    return EXIT_OK


def _evaluate(args: argparse.Namespace) -> int:
    from offload_runtime.evaluate import DEFAULT_POLICIES, EvalOptions, evaluate
    from offload_runtime.fleet_cli import is_fleet, network_profile, run_fleet_evaluate

    if args.scenarios.is_dir():
        scenarios = sorted(args.scenarios.glob('*.yaml'))
    else:
        scenarios = [args.scenarios]
    policies = [p for p in args.policies.split(',') if p] or list(DEFAULT_POLICIES)
    try:
        floors = [float(f) for f in args.floors.split(',') if f]
    except ValueError as err:
        raise ConfigError(f'--floors takes comma-separated numbers: {err}') from err
    if any(not 0 <= f <= 100 for f in floors):
        raise ConfigError('--floors are mAP values within 0..100')
    opts = EvalOptions(scenarios=scenarios, policies=policies, mode=args.mode, out=args.out,
                       frames=args.frames, fps=args.fps, deadline_ms=args.deadline_ms,
                       robot=args.robot, devices_file=args.devices, seed=args.seed,
                       network=network_profile(args), floors=floors,
                       measured=args.measured, cloud=args.cloud,
                       split_options=[o for o in args.split_options.split(',') if o])
    if is_fleet(args):
        return run_fleet_evaluate(args, opts)
    evaluate(opts, lambda line: print(line, flush=True))
    print(f'table: {args.out / "table.md"} and table.csv; plots: {args.out}/*.png'
          + ('; fronts: front_*.png, matched.md' if floors else ''))
    from offload_runtime.report import write_evaluation_report

    print(f'report: {write_evaluation_report(args.out)}')
    return EXIT_OK


def _train(args: argparse.Namespace) -> int:
    from offload_runtime.train_cli import run_train

    return run_train(args)


def _check_params(args: argparse.Namespace) -> int:
    from offload_runtime.node_parameters import check_file

    problems = check_file(args.file)
    for line in problems:
        print(line, file=sys.stderr)
    if problems:
        return EXIT_INVALID
    print(f'{args.file}: ok')
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line.

    Args:
        argv: Arguments without the program name; None reads ``sys.argv``.

    Returns:
        The exit code.
    """
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # --help, or a usage error already printed on one line
        return int(exc.code or 0)
    from offload_runtime.loadtest_cli import run_loadtest
    from offload_runtime.profile_cli import run_profile_cli
    from offload_runtime.serve_cli import run_serve

    handlers = {'sample-bag': _sample_bag, 'replay': _replay, 'export': _export,
                'serve': run_serve, 'loadtest': run_loadtest, 'evaluate': _evaluate,
                'check-params': _check_params, 'recover-bag': _recover_bag, 'train': _train,
                'report': _report, 'profile': run_profile_cli}
    try:
        return handlers[args.command](args)
    except AdaptiveOffloadError as err:
        print(f'adaptive-offload {args.command}: error: {err}', file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f'adaptive-offload {args.command}: interrupted', file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == '__main__':
    sys.exit(main())
