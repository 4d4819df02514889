"""Test doubles shared by the tests: fake detector, clock, edge core and cloud transport."""

from __future__ import annotations

import base64
import contextlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
import json
import os
from pathlib import Path
import socket
import threading
import time
from typing import Any, Callable, Iterator

from adaptive_offload.conversions import frame_to_message, MessageTypes
from adaptive_offload.datatypes import Detection
from adaptive_offload.errors import CloudError
from adaptive_offload.inference_transport import CloudReply
import cv2
from edge_inference.detector import BackendOptions
from edge_inference.inference import EdgeConfig, EdgeInference
from edge_inference.model_pool import ModelPool
import numpy as np


class FakeBackend:
    """A deterministic detector: one box over the image centre, optionally slow.

    Args:
        advance: Called once per inference (tests pass a manual clock's advance to model
            inference time without sleeping).
    """

    names = {0: 'box', 1: 'disc'}

    def __init__(self, advance: Callable[[], None] | None = None) -> None:
        self.calls: list[tuple[tuple[int, ...], int]] = []
        self._advance = advance

    def infer(self, image: np.ndarray, imgsz: int, conf: float, iou: float,
              classes: tuple[int, ...] | None, max_det: int) -> tuple[Detection, ...]:
        self.calls.append((image.shape, imgsz))
        if self._advance is not None:
            self._advance()
        h, w = image.shape[:2]
        det = Detection(w / 4, h / 4, 3 * w / 4, 3 * h / 4, 0.9, 'box')
        return (det,) if classes is None or 0 in classes else ()


class ManualClock:
    """A nanosecond clock that moves only when told."""

    def __init__(self, start_ns: int = 1_000_000_000) -> None:
        self.now = start_ns

    def __call__(self) -> int:
        return self.now

    def advance(self, ms: float) -> None:
        self.now += int(ms * 1e6)


def fake_edge(config_values: dict | None = None, backend: FakeBackend | None = None,
              clock: Callable[[], int] | None = None) -> EdgeInference:
    """Build an edge core whose default model is ``backend`` (default a :class:`FakeBackend`)."""
    config = EdgeConfig.from_params({'model': 'x.yaml', **(config_values or {})})
    fake = backend or FakeBackend()
    pool = ModelPool(config.default_model(), [], lambda name, options: fake,
                     BackendOptions(''))
    return EdgeInference(config, pool, clock) if clock else EdgeInference(config, pool)


def child_env() -> dict[str, str]:
    """Return this environment with the source tree first on PYTHONPATH, for child processes.

    Prepended, not replaced: on a robot the dependencies may come from PYTHONPATH (a ROS
    workspace, a venv's site-packages), and a child without them could not even start.
    """
    src = str(Path(__file__).resolve().parents[1] / 'src')
    rest = os.environ.get('PYTHONPATH', '')
    return dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (src, rest) if p))


class V2Handler(BaseHTTPRequestHandler):
    """A V2 server's REST handler: /v2/models/rcnn/infer gives one box around the image centre.

    ``mode`` (ok, slow, error, malformed, overloaded) says how it answers; ``seen`` keeps every
    request.
    """

    mode = 'ok'
    seen: list[dict[str, Any]] = []

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        body = json.loads(self.rfile.read(int(self.headers['Content-Length'])))
        image = cv2.imdecode(np.frombuffer(base64.b64decode(body['inputs'][0]['data'][0]),
                                           np.uint8), cv2.IMREAD_COLOR)
        type(self).seen.append({'path': self.path, 'shape': image.shape,
                                'auth': self.headers.get('Authorization'),
                                'parameters': body.get('parameters')})
        h, w = image.shape[:2]
        reply = {'model_name': 'rcnn', 'outputs': [
            {'name': 'boxes', 'shape': [1, 4], 'datatype': 'FP32',
             'data': [w / 4, h / 4, 3 * w / 4, 3 * h / 4]},
            {'name': 'scores', 'shape': [1], 'datatype': 'FP32', 'data': [0.8]},
            {'name': 'labels', 'shape': [1], 'datatype': 'BYTES', 'data': ['person']}]}
        if self.mode == 'slow':
            time.sleep(0.5)
        status, payload = 200, json.dumps(reply).encode()
        if self.mode == 'error':
            status, payload = 500, b'{"error": "model crashed"}'
        elif self.mode == 'malformed':
            payload = b'{"outputs": [{"name": "boxes", "data": [1, 2]}]}'
        elif self.mode == 'overloaded':  # as the builtin runtime refuses for load
            status, payload = 503, json.dumps({
                'error': 'overloaded (queue_full): 32 requests queued; retry after 250 ms',
                'parameters': {'reason': 'queue_full', 'retry_after_us': 250000}}).encode()
        self.send_response(status)
        if self.mode == 'overloaded':
            self.send_header('Retry-After', '1')
        self.send_header('Content-Type', 'application/json')
        self.send_header('Content-Length', str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args: object) -> None:
        pass


@contextlib.contextmanager
def v2_stub() -> Iterator[str]:
    """Serve :class:`V2Handler` (mode ``ok``, nothing seen) on loopback; yield its URL."""
    V2Handler.mode = 'ok'
    V2Handler.seen = []
    httpd = ThreadingHTTPServer(('127.0.0.1', 0), V2Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f'http://127.0.0.1:{httpd.server_address[1]}'
    finally:
        httpd.shutdown()
        httpd.server_close()


def free_ports(n: int) -> list[int]:
    """Return ``n`` free loopback TCP ports (all bound at once, so they differ)."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for sock in socks:
            sock.bind(('127.0.0.1', 0))
        return [sock.getsockname()[1] for sock in socks]
    finally:
        for sock in socks:
            sock.close()


def v2_image_input(client_module: Any) -> Any:
    """Return a JPEG as the input ``image`` of ``tritonclient.http`` or ``tritonclient.grpc``.

    Over HTTP it goes base64 in JSON (no raw bytes there, and the service declares no binary
    tensor extension); over gRPC as raw bytes.
    """
    image = np.random.default_rng(0).integers(0, 255, (240, 320, 3), np.uint8)
    jpeg = base64.b64encode(cv2.imencode('.jpg', image)[1].tobytes())
    tensor = client_module.InferInput('image', [1], 'BYTES')
    if client_module.__name__ == 'tritonclient.http':
        tensor.set_data_from_numpy(np.array([jpeg], dtype=object), binary_data=False)
    else:
        tensor.set_data_from_numpy(np.array([base64.b64decode(jpeg)], dtype=object))
    return tensor


class ScriptedTransport:
    """Replies or fails as scripted; each call advances the clock by ``cost_ms``."""

    def __init__(self, clock: ManualClock, script: list[str], cost_ms: float = 10.0) -> None:
        self.clock, self.script, self.cost_ms = clock, script, cost_ms
        self.timeouts: list[float] = []

    def infer(self, image: bytes, timeout_s: float) -> CloudReply:
        self.timeouts.append(timeout_s)
        self.clock.advance(self.cost_ms)
        step = self.script.pop(0)
        if step != 'ok':
            raise CloudError(step, 'scripted')
        return CloudReply(np.array([[1.0, 1.0, 5.0, 5.0]]), np.array([0.9]), ('person',),
                          self.cost_ms, len(image), server_ms=4.0, queue_ms=1.5)

    def close(self) -> None:
        pass


def small_frame_message(types: MessageTypes, stamp: int) -> Any:
    """Return a black 32x32 bgr8 Image message stamped ``stamp``."""
    return frame_to_message(types, np.zeros((32, 32, 3), np.uint8), stamp, 'cam', 'bgr8')


SHAPES_RCNN = str(Path(__file__).resolve().parents[1] / 'models' / 'rcnn-shapes.pt')
"""The shipped compact R-CNN's checkpoint."""


def shapes_frame() -> np.ndarray:
    """Render a 320x240 BGR scene the shipped compact R-CNN finds four objects in."""
    from offload_runtime.sample_bag import SampleSpec, Scene

    image, _ = Scene(SampleSpec(width=320, height=240, seed=2)).render(0.1)
    return np.ascontiguousarray(image)


def image_answer(url: str, frame: np.ndarray, token: str, timeout_s: float) -> CloudReply:
    """Return the service's image model's answer for ``frame`` (PNG: decoded exactly)."""
    from cloud_bridge.transport import V2RestTransport

    transport = V2RestTransport(url, 'rcnn', token=token)
    try:
        return transport.infer(cv2.imencode('.png', frame)[1].tobytes(), timeout_s=timeout_s)
    finally:
        transport.close()


def head_payload(head: Any, frame: np.ndarray, k: int) -> Any:
    """Run an ``RcnnSplit``'s head on ``frame`` to point ``k``: the payload a tail takes."""
    import torch
    from rcnn_service.rcnn_detector import image_tensor

    with torch.inference_mode():
        return head.head([image_tensor(frame)], k)


@contextlib.contextmanager
def compact_service(input_size: int = 320, **settings: Any) -> Iterator[Any]:
    """Serve the shipped compact R-CNN on a free loopback port (``ServiceConfig`` settings)."""
    from rcnn_service.compact_rcnn import COMPACT_ARCH
    from rcnn_service.rcnn_detector import RcnnDetector
    from rcnn_service.service import InferenceService, ServiceConfig

    detector = RcnnDetector(COMPACT_ARCH, SHAPES_RCNN, input_size=input_size)
    service = InferenceService(ServiceConfig(port=0, **settings), detector)
    threading.Thread(target=service.serve_forever, daemon=True).start()
    try:
        yield service
    finally:
        service.shutdown()


def child_processes(pid: int | None = None) -> list[int]:
    """Return the ids of the live child processes of ``pid`` (this process by default).

    Read from /proc (Linux), so it needs no psutil; zombies (exited, not yet reaped) are not
    counted as alive.
    """
    parent = os.getpid() if pid is None else pid
    found = []
    for entry in Path('/proc').iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / 'stat').read_text()
        except OSError:
            continue  # gone meanwhile
        # The command name may hold spaces and parentheses: the fields follow the last ')'.
        fields = stat[stat.rindex(')') + 2:].split()
        if int(fields[1]) == parent and fields[0] != 'Z':
            found.append(int(entry.name))
    return found


def process_gone(pid: int, timeout_s: float = 10.0) -> bool:
    """Wait up to ``timeout_s`` for a process to exit (a zombie counts as gone)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            state = Path(f'/proc/{pid}/stat').read_text()
        except OSError:
            return True
        if state[state.rindex(')') + 2:].split()[0] == 'Z':
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)


@contextlib.contextmanager
def captured_log(caplog: Any, name: str, level: int) -> Iterator[Any]:
    """Capture logger ``name``'s lines in ``caplog``, whether or not they reach the root logger.

    With a ROS workspace sourced, launch_testing's pytest plugin imports launch's logging,
    whose loggers made after it do not propagate: caplog, on the root, would see nothing.
    """
    import logging

    logger = logging.getLogger(name)
    chain = [logger]
    while chain[-1].parent is not None and chain[-1].parent is not logging.root:
        chain.append(chain[-1].parent)
    direct = not all(each.propagate for each in chain)
    if direct:
        logger.addHandler(caplog.handler)
    caplog.set_level(level, logger=name)
    try:
        yield caplog
    finally:
        if direct:
            logger.removeHandler(caplog.handler)


def wait_until(condition: Callable[[], bool], timeout_s: float) -> bool:
    """Poll ``condition`` every 50 ms until it holds (True) or ``timeout_s`` passes (False)."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def resource_tracker_pids() -> set[int]:
    """Return the multiprocessing resource tracker's pid, if it runs: a child that stays."""
    from multiprocessing import resource_tracker

    pid = getattr(resource_tracker._resource_tracker, '_pid', None)
    return set() if pid is None else {pid}


def pytest_in_own_process(cases: Path) -> None:
    """Run the test module ``cases`` in a pytest process of its own; fail unless all passed.

    For cases that cannot share a process with others (MLServer's and tritonclient's gRPC
    messages clash in one protobuf pool).
    """
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[1]
    # Not the parent's PYTEST_ADDOPTS: under colcon test it names the parent's JUnit file,
    # which this run would overwrite.
    env = {k: v for k, v in os.environ.items() if k != 'PYTEST_ADDOPTS'}
    env['PYTHONPATH'] = os.pathsep.join(
        [str(repo / 'src'), str(repo / 'test'), os.environ.get('PYTHONPATH', '')])
    run = subprocess.run([sys.executable, '-m', 'pytest', '-q', '-p', 'no:cacheprovider',
                          str(cases)], cwd=repo, env=env, capture_output=True, text=True,
                         timeout=300, check=False)
    if run.returncode != 0:
        raise AssertionError(run.stdout + run.stderr)
    if ' passed' not in run.stdout or 'skipped' in run.stdout:
        raise AssertionError(f'not every case ran and passed:\n{run.stdout}')


def dying_model_child(*args: object) -> None:
    """Die at once (exit status 3): a model process's main in a crash loop."""
    os._exit(3)
