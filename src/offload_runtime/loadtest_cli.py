"""``adaptive-offload loadtest``: a fleet of robot clients against one service, point by point."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
import socket
import subprocess
import sys
import tempfile
import time
from typing import Any
import urllib.request

from adaptive_offload.errors import ConfigError
from offload_runtime.cli_args import above_zero, EXIT_OK, non_negative_int
from offload_runtime.serve_cli import add_model_process_flag, model_process


def add_loadtest_parser(sub: Any) -> None:
    """Add the ``loadtest`` subcommand to ``sub`` (an argparse subparsers object)."""
    from rcnn_service.compact_rcnn import COMPACT_ARCH

    load = sub.add_parser('loadtest', help='N robot clients (the real bridge) against one '
                                           'service on loopback, for a bounded time')
    load.add_argument('--robots', type=above_zero(int), nargs='+', default=[1, 2, 4, 8],
                      help='fleet sizes, one point each (default 1 2 4 8)')
    load.add_argument('--fps', type=above_zero(float), default=5.0,
                      help='frames per second each robot sends (default 5)')
    load.add_argument('--deadline-ms', type=above_zero(float), default=250.0)
    load.add_argument('--seconds', type=above_zero(float), default=10.0,
                      help='how long each point sends frames (default 10)')
    load.add_argument('--frame-size', type=above_zero(int), nargs=2, default=[240, 320],
                      metavar=('HEIGHT', 'WIDTH'))
    load.add_argument('--url', default='',
                      help='a running service (its /metrics is read on the same host and '
                           'port for REST); default: start the builtin service here')
    load.add_argument('--metrics-url', default='', help="the service's /metrics, if elsewhere")
    load.add_argument('--token-file', default='', help='first line: the token robots send')
    load.add_argument('--arch', default=COMPACT_ARCH, help='architecture of a started service')
    load.add_argument('--checkpoint', default=None,
                      help='its state_dict (default: the shipped one with the default arch)')
    load.add_argument('--input-size', type=non_negative_int, default=0)
    load.add_argument('--max-batch', type=above_zero(int), default=4)
    load.add_argument('--threads', type=non_negative_int, default=1,
                      help="the started service's torch threads (default 1: the robots' "
                           'clients need the other cores)')
    load.add_argument('--device', default='cpu', help="a started service's device")
    add_model_process_flag(load)
    load.add_argument('--json', type=Path, default=None, help='also write the rows here')


def run_loadtest(args: argparse.Namespace) -> int:
    """Run every fleet size in turn and print one table row per point.

    Raises:
        ConfigError: If the service does not start or a setting is refused.
    """
    from offload_runtime.loadtest import format_table, LoadSpec, run_point

    token = _token(args.token_file)
    service = None if args.url else StartedService(
        args.arch, args.checkpoint, args.threads, args.max_batch, args.input_size,
        device=args.device, own_process=model_process(args))
    try:
        url = args.url or (service.url if service else '')
        metrics = args.metrics_url or (f'{url}/metrics' if url.startswith('http') else '')
        results = []
        for robots in args.robots:
            height, width = args.frame_size
            spec = LoadSpec(robots, args.fps, args.deadline_ms, args.seconds, (height, width))
            print(f'loadtest: {robots} robots x {args.fps:g} fps for {args.seconds:g} s',
                  file=sys.stderr, flush=True)
            results.append(run_point(url, spec, token=token, metrics_url=metrics))
    finally:
        if service is not None:
            service.stop()
    print(format_table(results))
    for result in results:
        if result.errors:
            reasons = ', '.join(f'{r} x{n}' for r, n in result.errors.most_common(3))
            print(f'errors with {result.spec.robots} robots: {reasons}')
    if args.json is not None:
        args.json.write_text(json.dumps([r.row() for r in results], indent=1) + '\n')
    return EXIT_OK


def _token(token_file: str) -> str:
    if not token_file:
        return ''
    try:
        lines = Path(token_file).read_text(encoding='utf-8').splitlines()
    except OSError as err:
        raise ConfigError(f'--token-file {token_file}: {err}') from err
    return lines[0].strip() if lines else ''


class StartedService:
    """``adaptive-offload serve --runtime builtin`` in a child process on a free port.

    Args:
        arch: R-CNN architecture.
        checkpoint: Its state_dict; None: the shipped one with the default architecture.
        threads: torch threads.
        max_batch: Largest batch.
        input_size: Longest image side the model reads (0: the architecture's own).
        ready_timeout_s: Longest wait for the model to be ready.
        device: Its device.
        own_process: Run its model in a process of its own (``serve --model-process``).

    Raises:
        ConfigError: If it exits or is not ready in time (with the end of its log).
    """

    def __init__(self, arch: str, checkpoint: str | None = None, threads: int = 1,
                 max_batch: int = 4, input_size: int = 0,
                 ready_timeout_s: float = 300.0, device: str = 'cpu',
                 own_process: bool = False) -> None:
        from offload_runtime.train_cli import checkpoint_for

        with socket.socket() as probe:
            probe.bind(('127.0.0.1', 0))
            port = probe.getsockname()[1]
        self.url = f'http://127.0.0.1:{port}'
        argv = [sys.executable, '-m', 'offload_runtime.cli', 'serve', '--runtime', 'builtin',
                '--port', str(port), '--arch', arch,
                '--checkpoint', checkpoint_for(arch, checkpoint),
                '--threads', str(threads), '--max-batch', str(max_batch),
                '--input-size', str(input_size), '--device', device,
                '--model-process' if own_process else '--no-model-process']
        print(f'loadtest: starting the service ({arch}) on {self.url}', file=sys.stderr,
              flush=True)
        # A file, not a pipe: nobody reads the log while the test runs, and a full pipe would
        # stall the service.
        self._log = tempfile.TemporaryFile()
        self._proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=self._log)
        deadline = time.monotonic() + ready_timeout_s
        while True:
            if self._proc.poll() is not None:
                self._log.seek(0)
                tail = self._log.read()[-500:]
                raise ConfigError(f'the service exited with {self._proc.returncode}: '
                                  f'{tail.decode(errors="replace").strip()}')
            try:
                with urllib.request.urlopen(f'{self.url}/v2/health/ready', timeout=1):
                    return
            except OSError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise ConfigError(f'the service was not ready in {ready_timeout_s:.0f} s')
                time.sleep(0.2)

    def stop(self) -> None:
        """Stop the service (SIGTERM, then SIGKILL after 10 s)."""
        if self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._log.close()
