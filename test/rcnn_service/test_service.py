"""The cloud R-CNN service on loopback, reached through the bridge's own V2 client."""

from __future__ import annotations

import base64
import json
from pathlib import Path
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import Any, Iterator
import urllib.error
import urllib.request

from adaptive_offload.datatypes import Decision, Route
from adaptive_offload.errors import CloudError, ConfigError
from cloud_bridge.bridge import CloudBridge
from cloud_bridge.transport import V2RestTransport
import cv2
from helpers import child_env
import numpy as np
from offload_runtime.cli import main
import pytest
from rcnn_service.fair_queue import MARGIN
from rcnn_service.http_server import ensure_ports_free
from rcnn_service.rcnn_detector import coco_categories, RcnnDetector
from rcnn_service.service import InferenceService, ServiceConfig

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope='module')
def detector() -> RcnnDetector:
    """Build the smallest architecture, random weights, every detection kept."""
    return RcnnDetector('fasterrcnn_mobilenet_v3_large_320_fpn', score_threshold=0.0,
                        threads=2)


def _start(config: ServiceConfig, detector: RcnnDetector | None) -> InferenceService:
    service = InferenceService(config, detector)
    threading.Thread(target=service.serve_forever, daemon=True).start()
    return service


@pytest.fixture
def service(detector: RcnnDetector) -> Iterator[InferenceService]:
    svc = _start(ServiceConfig(port=0, tokens=('t0k',), max_request_bytes=200_000,
                               max_image_side=1000), detector)
    yield svc
    svc.shutdown()


def _jpeg(width: int = 320, height: int = 240) -> bytes:
    image = np.random.default_rng(0).integers(0, 255, (height, width, 3), np.uint8)
    return cv2.imencode('.jpg', image)[1].tobytes()


def _post(url: str, body: dict[str, Any] | bytes, token: str = 't0k') -> tuple[int, dict]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    request = urllib.request.Request(f'{url}/v2/models/rcnn/infer', data=data, headers={
        'Authorization': f'Bearer {token}', 'Content-Type': 'application/json'})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def test_bridge_client_gets_boxes_in_the_image(service: InferenceService) -> None:
    reply = V2RestTransport(service.url, 'rcnn', token='t0k').infer(_jpeg(), timeout_s=30)
    assert len(reply.boxes) == len(reply.scores) == len(reply.labels) > 0
    assert (reply.boxes[:, [0, 2]] <= 320).all() and (reply.boxes[:, [1, 3]] <= 240).all()
    assert set(reply.labels) <= set(coco_categories())
    with urllib.request.urlopen(f'{service.url}/metrics', timeout=5) as response:
        assert 'adaptive_offload_requests_total{outcome="ok"} 1' in response.read().decode()


def test_readiness_and_metadata(service: InferenceService) -> None:
    """Probes are open; metadata needs the token (see rcnn_service.guard)."""
    for path in ('/v2/health/live', '/v2/health/ready', '/v2/models/rcnn/ready', '/metrics'):
        with urllib.request.urlopen(service.url + path, timeout=5) as response:
            assert response.status == 200
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(service.url + '/v2/models/rcnn', timeout=5)
    assert err.value.code == 401
    request = urllib.request.Request(service.url + '/v2/models/rcnn',
                                     headers={'Authorization': 'Bearer t0k'})
    with urllib.request.urlopen(request, timeout=5) as response:
        meta = json.loads(response.read())
    assert meta['inputs'][0] == {'name': 'image', 'datatype': 'BYTES', 'shape': [1]}


def test_not_ready_until_the_model_is_warm() -> None:
    svc = _start(ServiceConfig(port=0), detector=None)  # loads in the background
    try:
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(svc.url + '/v2/health/ready', timeout=5)
        assert err.value.code == 503
        with pytest.raises(CloudError, match='http_503'):
            V2RestTransport(svc.url, 'rcnn').infer(_jpeg(), timeout_s=5)
    finally:
        svc.shutdown()


@pytest.mark.parametrize('body, status, message', [
    ({'inputs': [{'name': 'img', 'datatype': 'BYTES', 'data': ['x']}]}, 400, 'expected input'),
    ({'inputs': [{'name': 'image', 'datatype': 'FP32', 'data': [1.0]}]}, 400, 'expected input'),
    ({'inputs': [{'name': 'image', 'datatype': 'BYTES', 'data': ['@@@']}]}, 400, 'base64'),
    ({'inputs': [{'name': 'image', 'datatype': 'BYTES',
                  'data': [base64.b64encode(b'not an image').decode()]}]}, 400, 'decodable'),
    ({'inputs': [{'name': 'image', 'datatype': 'BYTES',
                  'data': [base64.b64encode(_jpeg(1200, 100)).decode()]}]}, 400, 'exceeds'),
    ({'inputs': []}, 400, 'exactly one input'),
    (b'{"not json', 400, 'not a V2'),
])
def test_bad_requests_get_clear_400s(service: InferenceService, body: Any, status: int,
                                     message: str) -> None:
    code, reply = _post(service.url, body)
    assert code == status and message in reply['error']
    assert service.counts['rejected_400'] >= 1


def test_oversize_and_unauthorised_requests_are_refused(service: InferenceService) -> None:
    big = {'inputs': [{'name': 'image', 'datatype': 'BYTES', 'data': ['A' * 300_000]}]}
    assert _post(service.url, big)[0] == 413
    code, reply = _post(service.url, {'inputs': []}, token='wrong')
    assert code == 401 and 'token' in reply['error']
    assert service.counts['rejected_401'] == 1 and service.counts['rejected_413'] == 1


def test_cloud_only_bridge_against_the_service(service: InferenceService,
                                               types: Any) -> None:
    from adaptive_offload.conversions import frame_to_message

    bridge = CloudBridge(V2RestTransport(service.url, 'rcnn', token='t0k'))
    msg = frame_to_message(types, np.full((480, 640, 3), 90, np.uint8), 3, 'cam', 'rgb8')
    dets, report = bridge.process(msg, Decision(route=Route.CLOUD, cloud_max_side=320,
                                                deadline_ms=30_000))
    assert report.status == 'ok' and report.imgsz == 320
    assert all(d.x2 <= 640 and d.y2 <= 480 for d in dets.detections)


@pytest.mark.parametrize('in_flight', [False, True])
def test_serve_command_stops_on_sigterm_within_10_s(in_flight: bool) -> None:
    """Idle, it exits at once; a request under way at SIGTERM is answered first."""
    import socket

    env = child_env()
    # A grace long enough for one inference on a loaded CI machine.
    proc = subprocess.Popen([sys.executable, '-m', 'offload_runtime.cli', 'serve', '--runtime',
                             'builtin', '--port', '0', '--shutdown-grace-s', '30',
                             '--arch', 'fasterrcnn_mobilenet_v3_large_320_fpn'],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        line = proc.stdout.readline()
        assert 'serving fasterrcnn_mobilenet_v3_large_320_fpn' in line
        base = re.search(r'http://[0-9.]+:[0-9]+', line).group(0)
        for _ in range(600):  # bounded: the model loads in the background
            try:
                with urllib.request.urlopen(base + '/v2/health/ready', timeout=1):
                    break
            except OSError:  # refused, or a timeout while the model loads (busy CI)
                time.sleep(0.1)
        body = json.dumps({'inputs': [{'name': 'image', 'datatype': 'BYTES', 'shape': [1],
                                       'data': [base64.b64encode(_jpeg()).decode()]}]}).encode()
        client = socket.create_connection(('127.0.0.1', int(base.rsplit(':', 1)[1])), 30)
        if in_flight:  # 100 Continue: the server has taken the request
            client.sendall(b'POST /v2/models/rcnn/infer HTTP/1.1\r\nHost: x\r\n'
                           b'Content-Length: %d\r\nExpect: 100-continue\r\n\r\n' % len(body))
            assert client.recv(100).startswith(b'HTTP/1.1 100 Continue')
        start = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        if in_flight:
            time.sleep(0.2)
            client.sendall(body)
            reply = client.makefile('rb').read()  # to the close
            assert reply.startswith(b'HTTP/1.1 200 ') and b'connection: close' in reply.lower()
        client.close()
        assert proc.wait(timeout=40) == 0
        assert time.monotonic() - start < (40 if in_flight else 10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_serve_with_no_model_given_finds_the_sample_scenes_objects() -> None:
    """Before, a bare ``serve`` ran an architecture with random weights: boxes on nothing."""
    from adaptive_offload.datatypes import Detection
    from offload_runtime.train_data import held_out
    from rcnn_service.compact_rcnn import COMPACT_ARCH

    proc = subprocess.Popen([sys.executable, '-m', 'offload_runtime.cli', 'serve', '--runtime',
                             'builtin', '--port', '0', '--threads', '1'],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            env=child_env())
    try:
        line = proc.stdout.readline()
        assert f'serving {COMPACT_ARCH}' in line
        url = re.search(r'http://[0-9.]+:[0-9]+', line).group(0)
        frame = held_out('easy', 1)[0]
        jpeg = cv2.imencode('.jpg', frame.image)[1].tobytes()
        reply = None
        for _ in range(600):  # bounded: the model loads in the background (503 until then)
            try:
                reply = V2RestTransport(url, 'rcnn').infer(jpeg, 30.0)
                break
            except CloudError:
                time.sleep(0.1)
        assert reply is not None
        found = [Detection(*box, score, label) for box, score, label
                 in zip(reply.boxes, reply.scores, reply.labels) if score >= 0.5]
        matched = sum(any(t.iou(d) >= 0.5 and t.class_name == d.class_name for d in found)
                      for t in frame.truth)
        assert frame.truth and matched >= len(frame.truth) - 1, (frame.truth, found)
    finally:
        proc.kill()
        proc.wait()


def test_replay_cloud_only_through_the_service(service: InferenceService, tmp_path: Path,
                                               fake_backend_factory: Any) -> None:
    from offload_runtime.replay import Replay, ReplayOptions
    from offload_runtime.sample_bag import SampleSpec, write_sample_bag

    write_sample_bag(tmp_path / 'in', SampleSpec(frames=6, width=160, height=120))
    result = Replay(ReplayOptions(bag=tmp_path / 'in', out=tmp_path / 'out', rate=0.0,
                                  overrides={'offload_manager': {'policy': 'cloud-only',
                                                                 'deadline_ms': 30_000.0},
                                             'cloud_bridge': {'url': service.url,
                                                              'token': 't0k'}}),
                    backend_factory=fake_backend_factory).run()
    assert [r.result_source for r in result.records] == ['cloud'] * 6
    assert service.counts['ok'] == 6


@pytest.mark.parametrize('params_url', ['', 'grpc://127.0.0.1:9'])
def test_replay_starts_the_embedded_service_when_no_url_is_given(
        tmp_path: Path, fake_backend_factory: Any, params_url: str) -> None:
    """Embed with no URL, or when an empty override (``--cloud embedded``) clears the params'.

    Port 9 has nothing listening, so a cloud result proves the embedded service ran.
    """
    from offload_runtime.replay import Replay, ReplayOptions
    from offload_runtime.sample_bag import SampleSpec, write_sample_bag

    write_sample_bag(tmp_path / 'in', SampleSpec(frames=4, width=160, height=120))
    params = {'/**/cloud_bridge': {'ros__parameters': {'url': params_url}}} if params_url else {}
    replay = Replay(ReplayOptions(
        bag=tmp_path / 'in', out=tmp_path / 'out', rate=0.0, params=params,
        overrides={'offload_manager': {'policy': 'cloud-only', 'deadline_ms': 30_000.0,
                                       'cloud_model': 'maskrcnn_resnet50_fpn'},
                   'cloud_bridge': {'url': ''} if params_url else {}},
        service=ServiceConfig(arch='fasterrcnn_mobilenet_v3_large_320_fpn')),
        backend_factory=fake_backend_factory)
    assert replay.manager.config.cloud_model == 'fasterrcnn_mobilenet_v3_large_320_fpn'
    result = replay.run()
    assert [r.result_source for r in result.records] == ['cloud'] * 4


def test_service_killed_mid_run_then_back(detector: RcnnDetector, types: Any) -> None:
    """Frames fail fast once the service is gone, and the bridge recovers when it returns."""
    from adaptive_offload.conversions import frame_to_message
    from cloud_bridge.resilience import CircuitBreaker

    svc = _start(ServiceConfig(port=0), detector)
    port = int(svc.url.rsplit(':', 1)[1])
    bridge = CloudBridge(V2RestTransport(svc.url, 'rcnn'), max_retries=1,
                         breaker=CircuitBreaker(threshold=2, cooldown_ms=300))
    decision = Decision(route=Route.CLOUD, deadline_ms=10_000)

    def send(stamp: int) -> str:
        msg = frame_to_message(types, np.zeros((96, 128, 3), np.uint8), stamp, 'cam', 'bgr8')
        report = bridge.process(msg, decision)[1]
        return report.status if report.status == 'ok' else report.reason.split(':')[0]

    assert send(1) == 'ok'
    svc.shutdown()
    start = time.monotonic()
    assert [send(s) for s in (2, 3, 4)] == ['connection', 'connection', 'circuit_open']
    assert time.monotonic() - start < 2.0  # refused connections fail fast, no deadline wait
    svc = _start(ServiceConfig(port=port), detector)
    try:
        time.sleep(0.35)  # the breaker's cool-down (wall clock: the bridge's default clock)
        assert send(5) == 'ok' and bridge.breaker.state.value == 'closed'
    finally:
        svc.shutdown()


def test_a_server_that_drops_connections_is_a_failed_report(types: Any) -> None:
    import socket

    from adaptive_offload.conversions import frame_to_message

    listener = socket.socket()
    listener.bind(('127.0.0.1', 0))
    listener.listen()

    def drop_all() -> None:
        for _ in range(4):  # bounded: the bridge makes at most 1 + max_retries attempts
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            conn.recv(1024)
            conn.close()

    threading.Thread(target=drop_all, daemon=True).start()
    try:
        bridge = CloudBridge(V2RestTransport(f'http://127.0.0.1:{listener.getsockname()[1]}',
                                             'rcnn'), max_retries=1)
        msg = frame_to_message(types, np.zeros((32, 32, 3), np.uint8), 1, 'cam', 'bgr8')
        _, report = bridge.process(msg, Decision(route=Route.CLOUD, deadline_ms=5_000))
        assert report.status == 'failed' and report.reason.startswith('connection')
    finally:
        listener.close()


def test_hedged_replay_keeps_every_frame_when_the_service_dies(
        detector: RcnnDetector, tmp_path: Path, fake_backend_factory: Any) -> None:
    from offload_runtime.replay import Replay, ReplayOptions
    from offload_runtime.sample_bag import SampleSpec, write_sample_bag

    svc = _start(ServiceConfig(port=0), detector)

    def kill_after_three() -> None:
        for _ in range(3000):  # bounded wait for three served frames
            if svc.counts['ok'] >= 3:
                svc.shutdown()
                return
            time.sleep(0.005)

    threading.Thread(target=kill_after_three, daemon=True).start()
    write_sample_bag(tmp_path / 'in', SampleSpec(frames=20, width=128, height=96))
    result = Replay(ReplayOptions(
        bag=tmp_path / 'in', out=tmp_path / 'out', rate=0.0,
        overrides={'offload_manager': {'policy': 'static', 'static_route': 'hedged',
                                       'deadline_ms': 10_000.0},
                   'cloud_bridge': {'url': svc.url}}),
        backend_factory=fake_backend_factory).run()
    sources = [r.result_source for r in result.records]
    assert len(sources) == 20 and not any(r.dropped for r in result.records)
    served = sources.index('edge')
    # The service counts a reply before writing it, and its shutdown cuts replies under way:
    # the third counted one may never arrive. Two requests are in flight, so one more may
    # still finish on the dying service.
    assert served >= 2 and set(sources[:served]) == {'cloud'}
    assert set(sources[served + 2:]) == {'edge'}
    notes = ' '.join(r.reason for r in result.records[served:])
    assert 'cloud: connection' in notes and 'cloud: circuit_open' in notes


def test_replay_with_an_outage_scenario_measures_detection_and_recovery(
        detector: RcnnDetector, tmp_path: Path, fake_backend_factory: Any) -> None:
    from offload_runtime.replay import Replay, ReplayOptions
    from offload_runtime.sample_bag import SampleSpec, write_sample_bag
    from adaptive_offload.health_records import FaultEvent
    from adaptive_offload.typestore import make_typestore
    from fault_injection.scenario import parse_scenario
    from rosbags.rosbag2 import Reader

    svc = _start(ServiceConfig(port=0), detector)
    try:
        write_sample_bag(tmp_path / 'in', SampleSpec(frames=40, fps=10, width=128, height=96))
        # Longer than the /diagnostics period (1 s), so a tick falls inside it however slowly
        # a loaded host sends the three failing requests.
        scenario = parse_scenario({'faults': [{'kind': 'cloud_outage', 'start_s': 0.5,
                                               'duration_s': 1.5}]})
        result = Replay(ReplayOptions(
            bag=tmp_path / 'in', out=tmp_path / 'out', rate=1.0, scenario=scenario,
            overrides={'offload_manager': {'policy': 'static', 'static_route': 'hedged',
                                           'deadline_ms': 1000.0},
                       'cloud_bridge': {'url': svc.url}}),
            backend_factory=fake_backend_factory).run()
    finally:
        svc.shutdown()
    assert result.summary['frames_lost'] == 0 and len(result.records) == 40
    [fault] = result.faults
    # Requests in flight at the start were sent before it and succeed; the first one sent
    # into the outage fails at once. So it is seen within one request time (of a busy CI too).
    request_s = max(r.total_ms for r in result.reports
                    if r.source == 'cloud' and r.status == 'ok') / 1e3
    assert fault.detect_s is not None and 0 <= fault.detect_s < request_s + 0.1
    assert fault.recover_s is not None and fault.recover_s >= fault.detect_s
    assert fault.recover_s - fault.detect_s < 1.0  # the first edge-served frame, in time
    # the cloud check turns ERROR at the next /diagnostics (period 1 s) after 3 failures
    assert fault.diagnosed_s is not None and fault.detect_s <= fault.diagnosed_s < 1.5
    assert fault.dropped == 0
    sources = [r.result_source for r in result.records]
    assert sources[0] == 'cloud' and 'edge' in sources and sources[-1] == 'cloud'
    store = make_typestore('jazzy')
    with Reader(tmp_path / 'out') as reader:
        conns = [c for c in reader.connections if c.topic == '/health/faults']
        events = [FaultEvent.from_json(store.deserialize_cdr(raw, c.msgtype).data)
                  for c, _, raw in reader.messages(conns)]
    assert [(e.kind, e.phase, e.t_s) for e in events] == [('cloud_outage', 'start', 0.5),
                                                          ('cloud_outage', 'end', 2.0)]


def test_a_port_in_use_is_refused_in_one_line_before_anything_starts(
        capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as taken:
        taken.bind(('127.0.0.1', 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ConfigError, match=f'port {port} .* choose another with --grpc-port'):
            ensure_ports_free('127.0.0.1', {'--port': 0, '--grpc-port': port})
        assert main(['serve', '--runtime', 'builtin', '--port', str(port)]) == 2
        err = capsys.readouterr().err.strip()
        assert err.count('\n') == 0 and f'port {port} on 127.0.0.1 is not free' in err
        # MLServer in a process of its own: its protobuf symbols clash with the bridge's
        # generated ones once both are imported.
        proc = subprocess.run([sys.executable, '-m', 'offload_runtime.cli', 'serve',
                               '--runtime', 'mlserver', '--port', str(port)],
                              capture_output=True, text=True, timeout=120, env=child_env())
        assert proc.returncode == 2, proc.stderr
        [line] = [x for x in proc.stderr.splitlines() if x.startswith('adaptive-offload')]
        assert f'port {port} on 127.0.0.1 is not free' in line
    ensure_ports_free('127.0.0.1', {'--port': port})  # closed again: free


def test_the_configured_admission_margin_is_the_one_admission_plans_with(
        detector: RcnnDetector) -> None:
    for margin in (MARGIN, 1.5):
        service = InferenceService(ServiceConfig(port=0, admission_margin=margin), detector)
        try:
            assert service._batcher is not None and service._batcher.times.margin == margin
        finally:
            service.shutdown()
