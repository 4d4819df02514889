"""The service on MLServer (REST + gRPC), reached through the bridge's own V2 clients."""

from __future__ import annotations

import contextlib
from pathlib import Path
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from typing import Any, Iterator
import urllib.request

from adaptive_offload.conversions import frame_to_message, MessageTypes
from adaptive_offload.datatypes import Decision, Route
from adaptive_offload.errors import CloudError
from attack_kit import statuses
from cloud_bridge.bridge import CloudBridge
from cloud_bridge.transport import make_transport, V2GrpcTransport, V2RestTransport
import cv2
from helpers import child_env, free_ports, v2_image_input
import numpy as np
import pytest
from rcnn_service.guard import TOKENS_ENV
from tls_kit import make_pki, Pki

TOKEN = 's3cret'


class Server:
    """``adaptive-offload serve`` (MLServer runtime) in a child process."""

    def __init__(self, ports: list[int] | None = None, tls: Pki | None = None,
                 args: tuple[str, ...] = ()) -> None:
        self.rest, self.grpc, self.metrics = ports or free_ports(3)
        self.tls = tls
        tls_args = ['--tls-cert', tls.cert, '--tls-key', tls.key] if tls else []
        env = {**child_env(), TOKENS_ENV: TOKEN}  # never argv: ps shows it to everyone
        self.proc = subprocess.Popen(
            [sys.executable, '-m', 'offload_runtime.cli', 'serve',
             '--arch', 'fasterrcnn_mobilenet_v3_large_320_fpn', '--threads', '2',
             '--score-threshold', '0.0', '--max-request-bytes', '200000',
             '--port', str(self.rest), '--grpc-port', str(self.grpc),
             '--metrics-port', str(self.metrics), *tls_args, *args],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
        try:
            self._wait_ready()
        except BaseException:  # a server that never became ready must not outlive the test
            self.kill()
            raise

    def _wait_ready(self) -> None:
        self.announced = self.proc.stdout.readline()
        # Keep reading the access log, so a full pipe never blocks the server.
        threading.Thread(target=self.proc.stdout.read, daemon=True).start()
        context = ssl.create_default_context(cafile=self.tls.ca) if self.tls else None
        for _ in range(600):  # bounded: the model warms up before readiness
            if self.proc.poll() is not None:
                raise RuntimeError(f'server exited with {self.proc.returncode}')
            try:
                with urllib.request.urlopen(f'{self.rest_url}/v2/health/ready', timeout=1,
                                            context=context):
                    return
            except OSError:  # refused, reset, or a timeout while the model loads (busy CI)
                time.sleep(0.1)
        raise RuntimeError('server never became ready')

    @property
    def rest_url(self) -> str:
        return f'{"https" if self.tls else "http"}://127.0.0.1:{self.rest}'

    @property
    def grpc_url(self) -> str:
        return f'{"grpcs" if self.tls else "grpc"}://127.0.0.1:{self.grpc}'

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(30)


@pytest.fixture(scope='module')
def server() -> Iterator[Server]:
    srv = Server()
    yield srv
    srv.kill()


def _msg(types: MessageTypes, stamp: int = 5) -> Any:
    image = np.random.default_rng(stamp).integers(0, 255, (240, 320, 3), np.uint8)
    return frame_to_message(types, image, stamp, 'cam', 'rgb8')


def _jpeg() -> bytes:
    image = np.random.default_rng(0).integers(0, 255, (240, 320, 3), np.uint8)
    return cv2.imencode('.jpg', image)[1].tobytes()


def test_announces_all_three_endpoints(server: Server) -> None:
    assert f'gRPC grpc://127.0.0.1:{server.grpc}' in server.announced
    assert f'http://127.0.0.1:{server.rest}' in server.announced
    request = urllib.request.Request(f'{server.rest_url}/v2/models/rcnn',
                                     headers={'Authorization': f'Bearer {TOKEN}'})
    with urllib.request.urlopen(request, timeout=10) as reply:
        assert b'"name":"image"' in reply.read()


@pytest.mark.parametrize('scheme', ['grpc', 'http'])
def test_bridge_gets_detections_over_both_protocols(
        server: Server, types: MessageTypes, scheme: str) -> None:
    url = server.grpc_url if scheme == 'grpc' else server.rest_url
    bridge = CloudBridge(make_transport(url, 'rcnn', TOKEN))
    dets, report = bridge.process(_msg(types), Decision(route=Route.CLOUD, deadline_ms=30_000))
    assert report.status == 'ok', report.reason
    assert report.server_ms > 0 and report.total_ms >= report.server_ms
    assert len(dets.detections) == report.detections > 0  # threshold 0 keeps every box
    assert all(0 <= d.x1 < d.x2 <= 320 and 0 <= d.y1 < d.y2 <= 240 for d in dets.detections)


def test_refusals_are_clear_and_counted(server: Server) -> None:
    grpc = V2GrpcTransport(server.grpc_url, 'rcnn', TOKEN)
    with pytest.raises(CloudError, match='grpc_invalid_argument.*decodable'):
        grpc.infer(b'not an image', 30.0)
    with pytest.raises(CloudError, match='bearer token'):
        V2GrpcTransport(server.grpc_url, 'rcnn', 'wrong').infer(_jpeg(), 30.0)
    with pytest.raises(CloudError, match='http_401'):
        V2RestTransport(server.rest_url, 'rcnn').infer(_jpeg(), 30.0)
    noise = np.random.default_rng(1).integers(0, 255, (600, 600, 3), np.uint8)
    png = cv2.imencode('.png', noise)[1].tobytes()  # > 200 000 bytes
    with pytest.raises(CloudError, match='http_413'):
        V2RestTransport(server.rest_url, 'rcnn', TOKEN).infer(png, 30.0)
    with urllib.request.urlopen(f'http://127.0.0.1:{server.metrics}/metrics',
                                timeout=10) as reply:
        metrics = reply.read().decode()
    assert 'adaptive_offload_rejected_requests_total{status="401"} 2.0' in metrics
    assert 'adaptive_offload_rejected_requests_total{status="413"} 1.0' in metrics
    assert 'adaptive_offload_batch_size_count' in metrics


def test_concurrent_clients_all_get_answers(server: Server) -> None:
    grpc = V2GrpcTransport(server.grpc_url, 'rcnn', TOKEN)  # one channel, shared by threads
    results: list[Any] = []

    def client() -> None:
        for _ in range(3):
            results.append(grpc.infer(_jpeg(), 60.0))

    threads = [threading.Thread(target=client) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert len(results) == 12 and all(len(r.labels) == len(r.scores) for r in results)


def test_deadline_is_never_exceeded(server: Server) -> None:
    grpc = V2GrpcTransport(server.grpc_url, 'rcnn', TOKEN)
    start = time.monotonic()
    with pytest.raises(CloudError) as failed:
        grpc.infer(_jpeg(), 0.005)  # far below the model's time on this CPU
    assert time.monotonic() - start < 1.0
    # refused at once once the service has timed a batch (its budget is too short), else the
    # client gives up at the deadline
    assert failed.value.reason in ('overloaded', 'timeout')


def _metric(server: Server, name: str) -> float:
    with urllib.request.urlopen(f'http://127.0.0.1:{server.metrics}/metrics',
                                timeout=10) as reply:
        lines = reply.read().decode().splitlines()
    return float(next(line.split()[1] for line in lines if line.startswith(name + ' ')))


def test_rest_requests_whose_clients_left_are_not_computed(server: Server) -> None:
    """Before, MLServer computed every queued image for robots that had long given up."""
    computed = _metric(server, 'adaptive_offload_batch_size_sum')
    abandoned = _metric(server, 'adaptive_offload_abandoned_requests_total')
    outcomes: list[str] = []

    def client(timeout_s: float) -> None:
        try:
            V2RestTransport(server.rest_url, 'rcnn', TOKEN).infer(_jpeg(), timeout_s)
            outcomes.append('ok')
        except CloudError as err:
            outcomes.append(err.reason.split(':')[0])

    # 24 robots whose deadline (50 ms) is far below 24 images' compute, and one patient one.
    threads = [threading.Thread(target=client, args=(0.05,)) for _ in range(24)]
    threads.append(threading.Thread(target=client, args=(60.0,)))
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(90)
    assert outcomes.count('ok') >= 1 and len(outcomes) == 25
    computed = _metric(server, 'adaptive_offload_batch_size_sum') - computed
    abandoned = _metric(server, 'adaptive_offload_abandoned_requests_total') - abandoned
    # Only the images a batch had already taken when their client left are computed. The
    # others were dropped when their client left, or refused at once for their budget
    # (once the service has timed a batch, it knows 50 ms cannot be met).
    refused = outcomes.count('overloaded')
    assert computed <= 12 and abandoned + refused >= 1, (computed, abandoned, refused)


def test_slow_idle_and_surplus_rest_clients_are_bounded() -> None:
    """Before, MLServer's REST port let a request's headers trickle in for ever."""
    srv = Server(args=('--request-timeout-s', '2', '--max-connections', '6'))
    slow = [socket.create_connection(('127.0.0.1', srv.rest)) for _ in range(4)]
    idle = [socket.create_connection(('127.0.0.1', srv.rest)) for _ in range(2)]
    try:
        for sock in slow:  # slowloris: a header that never ends, one byte at a time
            sock.sendall(b'POST /v2/models/rcnn/infer HTTP/1.1\r\nHost: x\r\nX-Pad: a')
        time.sleep(0.3)  # let the server take all six before the seventh comes
        with socket.create_connection(('127.0.0.1', srv.rest), timeout=5) as surplus:
            surplus.sendall(b'GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n')
            assert statuses(surplus.recv(4096)) == [503]
        start = time.monotonic()
        for sock in slow + idle:
            sock.settimeout(10)
            got = b''
            with contextlib.suppress(ConnectionResetError):
                while part := sock.recv(4096):  # until the server closes it
                    got += part
            assert statuses(got) == ([408] if sock in slow else []), got
        assert time.monotonic() - start < 8  # 2 s from each one's first byte, not for ever
        reply = V2RestTransport(srv.rest_url, 'rcnn', TOKEN).infer(_jpeg(), 30.0)
        assert len(reply.labels) > 0
        assert _metric(srv, 'adaptive_offload_rejected_requests_total{status="408"}') == 4
    finally:
        for sock in slow + idle:
            sock.close()
        srv.kill()


def test_server_down_then_killed_mid_run_then_back(types: MessageTypes) -> None:
    ports = free_ports(3)
    bridge = CloudBridge(V2GrpcTransport(f'grpc://127.0.0.1:{ports[1]}', 'rcnn', TOKEN),
                         max_retries=0)
    decision = Decision(route=Route.CLOUD, deadline_ms=30_000)
    _, report = bridge.process(_msg(types, 1), decision)
    assert report.status == 'failed' and report.reason.startswith('connection')
    srv = Server(ports)
    try:
        bridge.breaker.record(True, 0)  # the test restarts the server faster than the cool-down
        assert bridge.process(_msg(types, 2), decision)[1].status == 'ok'
        srv.kill()
        _, report = bridge.process(_msg(types, 3), decision)
        assert report.status == 'failed' and report.reason.startswith('connection')
        srv = Server(ports)
        bridge.breaker.record(True, 0)
        # The next request uses the server again: no wait for gRPC's reconnect backoff.
        _, report = bridge.process(_msg(types, 4), decision)
        assert report.status == 'ok', report.reason
    finally:
        srv.kill()


KUBERNETES_GRACE_S = 30
"""The pod's default terminationGracePeriodSeconds: after it, the kubelet sends SIGKILL."""


def test_sigterm_under_load_answers_every_request_under_way_and_exits_cleanly() -> None:
    srv = Server()
    outcomes: list[str] = []

    def client(i: int) -> None:
        transport = V2GrpcTransport(srv.grpc_url, 'rcnn', TOKEN) if i % 2 else \
            V2RestTransport(srv.rest_url, 'rcnn', TOKEN)
        try:
            transport.infer(_jpeg(), 60.0)
            outcomes.append('ok')
        except CloudError as err:
            outcomes.append(err.reason)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(24)]
    for thread in threads:
        thread.start()
    for _ in range(3000):  # bounded: until the first replies show the queue is being served
        if outcomes:
            break
        time.sleep(0.005)
    srv.proc.send_signal(signal.SIGTERM)
    try:
        returncode = srv.proc.wait(timeout=KUBERNETES_GRACE_S)
    finally:
        srv.kill()
    for thread in threads:
        thread.join(60)
    assert returncode == 0 and len(outcomes) == 24
    # Every request got an answer: a result, or a refusal of a new one while stopping; none hung.
    assert outcomes.count('ok') >= 2 and set(outcomes) <= {'ok', 'connection', 'http_503'}


def test_sigterm_stops_the_server_cleanly_before_kubernetes_would_kill_it() -> None:
    srv = Server()
    srv.proc.send_signal(signal.SIGTERM)
    try:
        returncode = srv.proc.wait(timeout=KUBERNETES_GRACE_S)
    finally:
        srv.kill()
    assert returncode == 0  # it stopped by itself, not by the signal's default action


def test_replay_cloud_only_over_grpc(server: Server, tmp_path: Path,
                                     fake_backend_factory: Any) -> None:
    from offload_runtime.replay import Replay, ReplayOptions
    from offload_runtime.sample_bag import SampleSpec, write_sample_bag

    write_sample_bag(tmp_path / 'in', SampleSpec(frames=6, width=160, height=120))
    result = Replay(ReplayOptions(bag=tmp_path / 'in', out=tmp_path / 'out', rate=0.0,
                                  overrides={'offload_manager': {'policy': 'cloud-only',
                                                                 'deadline_ms': 30_000.0},
                                             'cloud_bridge': {'url': server.grpc_url,
                                                              'token': TOKEN}}),
                    backend_factory=fake_backend_factory).run()
    assert [r.result_source for r in result.records] == ['cloud'] * 6


def test_rest_and_grpc_over_tls_with_no_plain_text_port(tmp_path: Path,
                                                        types: MessageTypes) -> None:
    pki = make_pki(tmp_path)
    srv = Server(tls=pki)
    try:
        assert f'REST {srv.rest_url}' in srv.announced
        assert f'gRPC {srv.grpc_url}' in srv.announced
        for url in (srv.grpc_url, srv.rest_url):
            bridge = CloudBridge(make_transport(url, 'rcnn', TOKEN, pki.ca))
            _, report = bridge.process(_msg(types), Decision(route=Route.CLOUD,
                                                             deadline_ms=30_000))
            assert report.status == 'ok', f'{url}: {report.reason}'
        with pytest.raises(CloudError, match='connection'):
            V2GrpcTransport(f'grpc://127.0.0.1:{srv.grpc}', 'rcnn', TOKEN).infer(_jpeg(), 10.0)
        with pytest.raises(CloudError, match='connection'):
            V2GrpcTransport(srv.grpc_url, 'rcnn', TOKEN, pki.other_ca).infer(_jpeg(), 10.0)
        with pytest.raises(CloudError) as caught:
            V2RestTransport(srv.rest_url, 'rcnn', TOKEN, pki.other_ca).infer(_jpeg(), 10.0)
        assert caught.value.reason == 'tls'
        with pytest.raises(CloudError):
            V2RestTransport(f'http://127.0.0.1:{srv.rest}', 'rcnn', TOKEN).infer(_jpeg(), 10.0)
        # Both failed handshakes are refusals the operator sees (asyncio said nothing); the
        # server sees each failure just after its client does.
        tls_refusals = 'adaptive_offload_rejected_requests_total{status="tls"}'
        for _ in range(100):
            if _metric(srv, tls_refusals) == 2:
                break
            time.sleep(0.05)
        assert _metric(srv, tls_refusals) == 2
    finally:
        srv.kill()


@pytest.mark.parametrize('protocol', ['http', 'grpc'])
def test_conformance_with_clients_the_project_did_not_write(server: Server,
                                                            protocol: str) -> None:
    """The builtin runtime answers the same (test_conformance.py)."""
    import tritonclient.grpc as grpcclient
    import tritonclient.http as httpclient
    from tritonclient.utils import InferenceServerException

    module: Any = httpclient if protocol == 'http' else grpcclient
    port = server.rest if protocol == 'http' else server.grpc
    client = module.InferenceServerClient(f'127.0.0.1:{port}')
    auth = {'authorization': f'Bearer {TOKEN}'}
    as_json = {'as_json': True} if protocol == 'grpc' else {}
    try:
        meta = client.get_server_metadata(headers=auth, **as_json)
        assert meta['name'] == 'adaptive-offload' and meta['version']
        model = client.get_model_metadata('rcnn', '1', headers=auth, **as_json)
        assert model['versions'] == ['1']
        assert [o['name'] for o in model['outputs']] == ['boxes', 'scores', 'labels']
        wanted = [module.InferRequestedOutput(name, **({'binary_data': False} if protocol ==
                                                       'http' else {}))
                  for name in ('scores', 'labels')]
        result = client.infer('rcnn', [v2_image_input(module)], model_version='1',
                              request_id='frame-42', outputs=wanted, headers=auth)
        response = result.get_response(**as_json)
        assert response['id'] == 'frame-42'
        assert [o['name'] for o in response['outputs']] == ['scores', 'labels']
        assert result.as_numpy('boxes') is None and len(result.as_numpy('scores')) > 0
        bogus = [module.InferRequestedOutput('bogus')]
        with pytest.raises(InferenceServerException, match="no output named 'bogus'"):
            client.infer('rcnn', [v2_image_input(module)], outputs=bogus, headers=auth)
        with pytest.raises(InferenceServerException):
            client.infer('rcnn', [v2_image_input(module)], model_version='7', headers=auth)
    finally:
        client.close()
