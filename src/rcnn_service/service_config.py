"""How the service runs: :class:`ServiceConfig`, the one object both processes read.

It lives apart from :mod:`rcnn_service.service` so that the model's own process
(:mod:`rcnn_service.model_child`) can build the model from it without importing the HTTP
server, the batcher or MLServer.
"""

from __future__ import annotations

from dataclasses import dataclass

from rcnn_service.fair_queue import MARGIN
from rcnn_service.tls import TlsFiles


@dataclass(frozen=True)
class ServiceConfig:
    """How the service runs.

    Attributes:
        arch: R-CNN architecture (see ``rcnn_service.rcnn_detector.ARCHITECTURES``).
        checkpoint: state_dict path; empty: random weights.
        device: ``cpu`` or ``cuda[:N]``.
        host: Bind address (loopback by default; 0.0.0.0 in a container).
        port: HTTP port; 0 picks a free one.
        model_name: Name in the V2 paths.
        tokens: Bearer tokens accepted from clients (one per robot); none: no token needed.
            Read them with :func:`rcnn_service.guard.load_tokens`, never from argv.
        max_request_bytes: Larger request bodies are refused (413).
        max_image_side: Images with a longer side are refused (400).
        score_threshold: Detections below it are not returned.
        threads: torch intra-op threads; 0 keeps torch's default.
        input_size: Longest image side the model reads (0: the architecture's own); smaller
            is faster and misses more small objects.
        max_batch: Largest batch of requests run together (adaptive batching).
        batch_wait_ms: How long a lone request waits for others (0: never).
        max_queue: Most requests waiting for the model at once (0: 16 batches); more are
            refused (503), unless a robot holding more of the queue makes room.
        admission_margin: Deviations of batch time that admission allows beyond the smoothed
            time (:class:`rcnn_service.fair_queue.BatchTimes`): fewer admit more requests near
            the edge of their budget, and more of those finish after it.
        request_timeout_s: A request must arrive within this time of its first byte (else
            408), an idle connection is closed after it, and a TLS handshake must complete
            within it (builtin runtime).
        max_connections: Connections served at once; more get 503 (builtin runtime).
        shutdown_grace_s: On SIGTERM, how long requests under way may take to finish
            (builtin runtime; MLServer has its own).
        tls: Certificate and key for REST and gRPC (https, grpcs); None serves plain text.
        max_tail_bytes: Most bytes the tensors of one tail request may decode to (builtin
            runtime); a request over it is refused (400) before anything is decoded.
        model_process: Run the model in a process of its own
            (:mod:`rcnn_service.model_process`), so that request handling never holds the
            interpreter the model's kernel launches need; a dead one is restarted.
        batch_timeout_s: With ``model_process``, the longest a batch may take in the model's
            process; one that takes longer is taken for a hung process (a stuck kernel, a
            deadlock), which is killed and restarted, its batch refused (503, retryable).
            Well above the slowest legitimate batch: a full batch of a large model on a CPU,
            or the first batches of a shape on a GPU (kernel selection, allocator growth).
        load_timeout_s: With ``model_process``, the longest a child may take from its start to
            its model's readiness (import, load, warm-up, calibration); one that takes longer
            is taken for hung, killed and restarted, which the restart policy counts as a
            death: readiness alone would stay false for ever, and nothing would restart it.
        bottleneck: A learned bottleneck file (``rcnn_service.bottleneck``) whose codes the tail
            model takes at its point (builtin runtime); empty: none.
    """

    arch: str = 'fasterrcnn_mobilenet_v3_large_fpn'
    checkpoint: str = ''
    device: str = 'cpu'
    host: str = '127.0.0.1'
    port: int = 8080
    model_name: str = 'rcnn'
    tokens: tuple[str, ...] = ()
    max_request_bytes: int = 8 << 20
    max_image_side: int = 4096
    score_threshold: float = 0.5
    threads: int = 0
    input_size: int = 0
    max_batch: int = 4
    batch_wait_ms: float = 0.0
    max_queue: int = 0
    admission_margin: float = MARGIN
    request_timeout_s: float = 10.0
    max_connections: int = 512
    shutdown_grace_s: float = 5.0
    tls: TlsFiles | None = None
    max_tail_bytes: int = 256 << 20
    model_process: bool = False
    batch_timeout_s: float = 120.0
    load_timeout_s: float = 900.0
    bottleneck: str = ''
