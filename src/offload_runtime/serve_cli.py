"""``adaptive-offload serve``: the cloud R-CNN service, with MLServer or the builtin server."""

from __future__ import annotations

import argparse
import logging
import math
import sys
from typing import Any

from adaptive_offload.errors import ConfigError
from offload_runtime.cli_args import above_zero, EXIT_OK, non_negative, non_negative_int


def add_serve_parser(sub: Any) -> None:
    """Add the ``serve`` subcommand to ``sub`` (an argparse subparsers object)."""
    from rcnn_service.compact_rcnn import COMPACT_ARCH
    from rcnn_service.fair_queue import MARGIN

    serve = sub.add_parser('serve', help='run the cloud R-CNN service (V2 gRPC and REST)')
    serve.add_argument('--runtime', choices=('mlserver', 'builtin'), default='mlserver',
                       help='mlserver: REST + gRPC + metrics port; builtin: a small REST-only '
                            'server without the MLServer dependency')
    serve.add_argument('--arch', default=COMPACT_ARCH,
                       help='torchvision detection architecture (default: that of the '
                            'shipped model, docs/models.md)')
    serve.add_argument('--checkpoint', default=None,
                       help='state_dict file (default: the shipped one with the default arch, '
                            'random weights with another); "": random weights (for tests)')
    serve.add_argument('--device', default='cpu')
    add_model_process_flag(serve)
    serve.add_argument('--batch-timeout-s', type=batch_timeout, default=120.0,
                       help='with --model-process, the longest a batch may take in the model '
                            'process: one that takes longer is taken for a hung process (a '
                            'stuck kernel, a deadlock), which is killed (SIGKILL) and '
                            'restarted, its batch refused with a retryable 503 (gRPC '
                            'UNAVAILABLE); it counts as a death for the restart policy. Keep it '
                            'well above the slowest real batch (a full batch of a large model '
                            'on a CPU, the first batches on a GPU) (default 120)')
    serve.add_argument('--load-timeout-s', type=batch_timeout, default=900.0,
                       help='with --model-process, the longest a model process may take from '
                            'its start to readiness (load, warm-up, calibration): one that '
                            'takes longer is taken for hung, killed and restarted, which '
                            'counts as a death for the restart policy (default 900)')
    serve.add_argument('--host', default='127.0.0.1')
    serve.add_argument('--port', type=int, default=8080,
                       help='REST port (builtin: 0 picks a free port)')
    serve.add_argument('--grpc-port', type=int, default=8081, help='gRPC port (mlserver)')
    serve.add_argument('--metrics-port', type=int, default=8082,
                       help='Prometheus /metrics port (mlserver; builtin serves it on --port)')
    serve.add_argument('--model-name', default='rcnn')
    serve.add_argument('--token-file', default='',
                       help='file of bearer tokens clients must present, one a line (one per '
                            'robot; a mounted Kubernetes Secret); tokens are also read from '
                            'the environment variable ADAPTIVE_OFFLOAD_TOKENS (comma- or '
                            'space-separated), never from the command line')
    serve.add_argument('--tls-cert', default='',
                       help='PEM certificate (chain) for REST and gRPC: https:// and grpcs:// '
                            '(tls.crt of a mounted kubernetes.io/tls Secret); with --tls-key')
    serve.add_argument('--tls-key', default='', help='its unencrypted PEM private key')
    serve.add_argument('--score-threshold', type=float, default=0.5)
    serve.add_argument('--max-request-bytes', type=int, default=8 << 20)
    serve.add_argument('--max-tail-bytes', type=above_zero(int), default=256 << 20,
                       help='most bytes the tensors of one split-tail request may decode to')
    serve.add_argument('--max-image-side', type=int, default=4096)
    serve.add_argument('--threads', type=int, default=0, help='torch threads; 0: default')
    serve.add_argument('--input-size', type=non_negative_int, default=0,
                       help="longest image side the model reads; 0: the architecture's own")
    serve.add_argument('--max-batch', type=int, default=4,
                       help='largest batch of requests run together (adaptive batching)')
    serve.add_argument('--batch-wait-ms', type=float, default=0.0,
                       help='how long a lone request waits for others (0: never)')
    serve.add_argument('--admission-margin', type=non_negative, default=MARGIN,
                       help='deviations of batch time admission allows beyond the smoothed '
                            'time: fewer admit more requests near the edge of their budget, '
                            'and more of those finish after it (default %(default)g, as TCP)')
    serve.add_argument('--max-queue', type=non_negative_int, default=0,
                       help='most requests waiting for the model; more are refused (503, '
                            'RESOURCE_EXHAUSTED) unless a robot holding more of the queue '
                            'makes room (0: 16 batches)')
    serve.add_argument('--request-timeout-s', type=above_zero(float), default=10.0,
                       help='a request (headers and body) must arrive within this time of its '
                            'first byte (else 408), an idle connection is closed after it, '
                            'and a TLS handshake must end within it (builtin) (default 10)')
    serve.add_argument('--max-connections', type=above_zero(int), default=512,
                       help='REST connections served at once; more get 503 (default 512)')
    serve.add_argument('--bottleneck', default='',
                       help='a learned bottleneck file (adaptive-offload train bottleneck; '
                            'the shipped models/rcnn-shapes-bottleneck.pt fits the shipped '
                            'model): the tail model then also takes its code at its split '
                            'point, from robots whose split option is arch@imgsz:point:'
                            'bottleneck (builtin runtime)')
    serve.add_argument('--upstream', default='',
                       help='three tiers: this service runs on a middle device (an edge '
                            "computer on the robots' LAN) and forwards a request that names "
                            'forward_to, after running its model to that point, to the tail of '
                            'the cloud service at this URL (http(s)://host:port; builtin '
                            'runtime, model in this process); the cloud must load the same '
                            'checkpoint')
    serve.add_argument('--upstream-token-file', default='',
                       help='file whose first line is the bearer token the upstream accepts '
                            'from this device')
    serve.add_argument('--upstream-ca-file', default='',
                       help='PEM CA file that verifies an https upstream')
    serve.add_argument('--shutdown-grace-s', type=non_negative, default=5.0,
                       help='on SIGTERM, how long requests under way may take to finish '
                            '(builtin: the queue is dropped after it; MLServer: REST, its gRPC '
                            'always gets 5 s) (default 5)')


MODEL_PROCESS_HELP = (
    'run the model in a process of its own, so that request handling (parsing, JSON, '
    'admission) never holds the Python interpreter the GPU waits on; a dead model process '
    'fails its batch at once with a retryable 503 and is restarted (the 4th death within '
    '300 s stops the service, exit status 2). Default: on with a cuda device, off on cpu, '
    'where the model already uses every core and a second process only adds copies')


def add_model_process_flag(parser: argparse.ArgumentParser) -> None:
    """Add ``--model-process/--no-model-process`` (default: decided by the device)."""
    parser.add_argument('--model-process', action=argparse.BooleanOptionalAction,
                        default=None, help=MODEL_PROCESS_HELP)


def batch_timeout(text: str) -> float:
    """Argument type of ``--batch-timeout-s`` and ``--load-timeout-s``: seconds, finite, > 0.

    Raises:
        argparse.ArgumentTypeError: For anything else (0 would refuse every batch, and a hung
            model process needs a bound to be noticed at all).
    """
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f'{text!r} is not a number of seconds') from None
    if not 0 < value < math.inf:
        raise argparse.ArgumentTypeError(f'{text} is not a finite number of seconds above 0')
    return value


def model_process(args: argparse.Namespace) -> bool:
    """Return whether the model runs in its own process: as asked, else on a cuda device."""
    chosen: bool | None = args.model_process
    return str(args.device).startswith('cuda') if chosen is None else chosen


def service_config(args: argparse.Namespace) -> Any:
    """Return the :class:`rcnn_service.service.ServiceConfig` that ``serve``'s flags describe.

    Raises:
        ConfigError: For settings the service refuses.
    """
    from offload_runtime.train_cli import checkpoint_for
    from rcnn_service.guard import load_tokens, TOKENS_ENV
    from rcnn_service.service import ServiceConfig
    from rcnn_service.tls import TlsFiles

    if args.max_batch < 1 or args.batch_wait_ms < 0:
        raise ConfigError('--max-batch must be >= 1 and --batch-wait-ms >= 0')
    if not math.isfinite(args.admission_margin):
        raise ConfigError(f'--admission-margin must be a finite number of deviations, got '
                          f'{args.admission_margin}')
    tokens = load_tokens(args.token_file)
    if not tokens and args.host not in ('127.0.0.1', 'localhost', '::1'):
        print(f'adaptive-offload serve: warning: no tokens (--token-file, {TOKENS_ENV}): '
              f'anyone who reaches {args.host} can use the service', file=sys.stderr)
    checkpoint = checkpoint_for(args.arch, args.checkpoint)
    if args.bottleneck:
        from rcnn_service.bottleneck import load_bottleneck

        if args.runtime != 'builtin':
            raise ConfigError('--bottleneck needs --runtime builtin (the MLServer tail takes '
                              'crossing tensors only)')
        load_bottleneck(args.bottleneck)  # an unreadable file stops here, not in the load
    config = ServiceConfig(arch=args.arch, checkpoint=checkpoint, device=args.device,
                           host=args.host, port=args.port, model_name=args.model_name,
                           tokens=tokens, max_request_bytes=args.max_request_bytes,
                           max_image_side=args.max_image_side,
                           score_threshold=args.score_threshold, threads=args.threads,
                           input_size=args.input_size,
                           max_batch=args.max_batch, batch_wait_ms=args.batch_wait_ms,
                           max_queue=args.max_queue, admission_margin=args.admission_margin,
                           shutdown_grace_s=args.shutdown_grace_s,
                           request_timeout_s=args.request_timeout_s,
                           max_connections=args.max_connections,
                           max_tail_bytes=args.max_tail_bytes,
                           model_process=model_process(args),
                           batch_timeout_s=args.batch_timeout_s,
                           load_timeout_s=args.load_timeout_s, bottleneck=args.bottleneck,
                           tls=TlsFiles.from_options(args.tls_cert, args.tls_key))
    return config


def make_upstream(args: argparse.Namespace, config: Any) -> Any:
    """Return the client of ``--upstream``'s tail (an ``UpstreamTail``).

    Raises:
        ConfigError: For another runtime than builtin, a model process, a URL that is not
            http(s), an unreadable token file or a bad CA file.
    """
    from offload_runtime.upstream_tail import UpstreamTail

    if args.runtime != 'builtin':
        raise ConfigError('--upstream needs --runtime builtin (the MLServer runtime forwards '
                          'nothing)')
    if config.model_process:
        raise ConfigError("--upstream runs the model in the service's process: add "
                          '--no-model-process')
    token = ''
    if args.upstream_token_file:
        try:
            lines = open(args.upstream_token_file, encoding='utf-8').read().splitlines()
        except (OSError, UnicodeDecodeError) as err:
            raise ConfigError(f'--upstream-token-file {args.upstream_token_file!r}: '
                              f'{err}') from err
        token = lines[0].strip() if lines else ''
        if not token:
            raise ConfigError(f'--upstream-token-file {args.upstream_token_file!r} has no '
                              'token on its first line')
    return UpstreamTail(args.upstream, config.model_name, token, args.upstream_ca_file)


def run_serve(args: argparse.Namespace) -> int:
    """Run ``serve`` until SIGINT or SIGTERM.

    Raises:
        ConfigError: For settings the service refuses.
    """
    from rcnn_service.service import serve

    config = service_config(args)
    if config.tls is not None:
        config.tls.server_context()  # a bad pair stops here, before the model loads
    upstream = make_upstream(args, config) if args.upstream else None
    announce = (lambda line: print(line, flush=True))
    handler = logging.StreamHandler()  # refusals, load errors: one line each, timestamped
    handler.setFormatter(logging.Formatter('%(asctime)s [%(name)s] %(levelname)s %(message)s'))
    service_log = logging.getLogger('adaptive_offload')
    service_log.addHandler(handler)
    service_log.setLevel(logging.INFO)
    try:
        if args.runtime == 'builtin':
            serve(config, announce, upstream)
        else:
            from rcnn_service.mlserver_runtime import serve_mlserver

            serve_mlserver(config, args.grpc_port, args.metrics_port, announce)
    finally:  # main() may run again in this process (tests): its stderr may be gone then
        service_log.removeHandler(handler)
    return EXIT_OK
