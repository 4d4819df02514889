"""TLS on the builtin runtime, from the bridge's REST client; the files checked at start."""

from __future__ import annotations

import logging
from pathlib import Path
import select
import socket
import subprocess
import sys
import threading
import time
from typing import Any, Iterator

from adaptive_offload.conversions import frame_to_message, MessageTypes
from adaptive_offload.datatypes import Decision, Route
from adaptive_offload.errors import CloudError, ConfigError
from cloud_bridge.bridge import CloudBridge
from cloud_bridge.bridge_config import CloudConfig
from cloud_bridge.transport import make_transport, V2RestTransport
import cv2
from helpers import captured_log, child_env
import numpy as np
import pytest
from rcnn_service.rcnn_detector import RcnnDetector
from rcnn_service.service import InferenceService, LOG, ServiceConfig
from rcnn_service.tls import TlsFiles
from tls_kit import make_pki, Pki

TOKEN = 't0k'
SERVICE_LOG = LOG.name


@pytest.fixture(scope='module')
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp('pki'))


@pytest.fixture(scope='module')
def service(pki: Pki) -> Iterator[InferenceService]:
    detector = RcnnDetector('fasterrcnn_mobilenet_v3_large_320_fpn', score_threshold=0.0,
                            threads=2)
    svc = InferenceService(ServiceConfig(port=0, tokens=(TOKEN,), request_timeout_s=5.0,
                                         tls=TlsFiles(pki.cert, pki.key)), detector)
    threading.Thread(target=svc.serve_forever, daemon=True).start()
    yield svc
    svc.shutdown()


def _jpeg() -> bytes:
    image = np.random.default_rng(0).integers(0, 255, (240, 320, 3), np.uint8)
    return cv2.imencode('.jpg', image)[1].tobytes()


def _msg(types: MessageTypes) -> Any:
    image = np.random.default_rng(3).integers(0, 255, (240, 320, 3), np.uint8)
    return frame_to_message(types, image, 7, 'cam', 'rgb8')


def test_the_bridge_gets_detections_over_https_verified_by_its_ca(
        service: InferenceService, pki: Pki, types: MessageTypes) -> None:
    assert service.url.startswith('https://127.0.0.1:')
    bridge = CloudBridge(make_transport(service.url, 'rcnn', TOKEN, pki.ca))
    dets, report = bridge.process(_msg(types), Decision(route=Route.CLOUD, deadline_ms=30_000))
    assert report.status == 'ok', report.reason
    assert len(dets.detections) == report.detections > 0


def test_a_certificate_the_ca_did_not_sign_fails_as_tls_not_as_the_link(
        service: InferenceService, pki: Pki) -> None:
    transport = V2RestTransport(service.url, 'rcnn', TOKEN, pki.other_ca)
    with pytest.raises(CloudError, match='CERTIFICATE_VERIFY_FAILED') as caught:
        transport.infer(_jpeg(), 10.0)
    assert caught.value.reason == 'tls'


def test_plain_http_on_the_tls_port_is_refused_and_tls_clients_go_on(
        service: InferenceService, pki: Pki, service_log: pytest.LogCaptureFixture) -> None:
    caplog = service_log
    before = service.counts['rejected_tls']
    plain = V2RestTransport(service.url.replace('https://', 'http://'), 'rcnn', TOKEN)
    with pytest.raises(CloudError):
        plain.infer(_jpeg(), 10.0)
    reply = V2RestTransport(service.url, 'rcnn', TOKEN, pki.ca).infer(_jpeg(), 30.0)
    assert len(reply.labels) == len(reply.scores) > 0
    # One line for the operator, who used to see nothing at all.
    assert _logged(caplog, 'TLS handshake failed: HTTP_REQUEST (plain HTTP on the TLS port')
    # An earlier test's refused handshake may be counted late, never this one twice.
    assert caplog.text.count('HTTP_REQUEST') == 1 and service.counts['rejected_tls'] > before


def test_a_client_without_the_ca_is_reported_as_not_trusting_the_certificate(
        service: InferenceService, pki: Pki, service_log: pytest.LogCaptureFixture) -> None:
    with pytest.raises(CloudError) as caught:
        V2RestTransport(service.url, 'rcnn', TOKEN, pki.other_ca).infer(_jpeg(), 10.0)
    assert caught.value.reason == 'tls'
    assert _logged(service_log,
                   "the client does not trust this certificate's CA: check its CA file")


@pytest.fixture
def service_log(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    """Capture the service's log lines (see :func:`helpers.captured_log`)."""
    with captured_log(caplog, SERVICE_LOG, logging.INFO) as captured:
        yield captured


def _logged(caplog: pytest.LogCaptureFixture, text: str) -> bool:
    """Whether ``text`` is logged within 5 s (the server sees the failure after the client)."""
    for _ in range(100):
        if text in caplog.text:
            return True
        time.sleep(0.05)
    return False


def test_a_client_that_never_handshakes_holds_up_nobody_and_is_dropped(
        service: InferenceService, pki: Pki) -> None:
    host, port = service.url.removeprefix('https://').split(':')
    with socket.create_connection((host, int(port)), timeout=10.0) as silent:
        reply = V2RestTransport(service.url, 'rcnn', TOKEN, pki.ca).infer(_jpeg(), 30.0)
        assert len(reply.labels) > 0
        # Served while the silent one still waits for its handshake (5 s here): a handshake
        # in the accepting thread would have held this request until then.
        assert select.select([silent], [], [], 0)[0] == []
        assert silent.recv(1) == b''  # then dropped: end of stream, before the 10 s timeout


def test_tls_needs_both_files_and_they_must_be_a_pair(pki: Pki, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match='both'):
        TlsFiles.from_options(pki.cert, '')
    assert TlsFiles.from_options('', '') is None
    with pytest.raises(ConfigError, match='do not load'):
        TlsFiles(pki.cert, pki.other_key).server_context()
    with pytest.raises(ConfigError, match='not found'):
        TlsFiles(str(tmp_path / 'none.pem'), pki.key).server_context()


def test_serve_with_a_key_that_is_not_the_certificates_exits_at_once_in_one_line(
        pki: Pki) -> None:
    done = subprocess.run(
        [sys.executable, '-m', 'offload_runtime.cli', 'serve', '--runtime', 'builtin',
         '--port', '0', '--tls-cert', pki.cert, '--tls-key', pki.other_key],
        capture_output=True, text=True, env=child_env(), timeout=120)
    assert done.returncode == 2
    assert done.stderr.count('\n') == 1 and 'do not load' in done.stderr


def test_the_bridge_refuses_a_ca_file_it_cannot_use(pki: Pki, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match='not found'):
        make_transport('https://127.0.0.1:1', 'rcnn', ca_file=str(tmp_path / 'none.pem'))
    with pytest.raises(ConfigError, match='https'):
        make_transport('http://127.0.0.1:1', 'rcnn', ca_file=pki.ca)
    with pytest.raises(ConfigError, match='grpcs'):
        make_transport('grpc://127.0.0.1:1', 'rcnn', ca_file=pki.ca)
    with pytest.raises(ConfigError, match='does not load'):
        make_transport('grpcs://127.0.0.1:1', 'rcnn', ca_file=pki.key)


def test_the_bridge_reads_its_token_from_a_file(tmp_path: Path) -> None:
    secret = tmp_path / 'token'
    secret.write_text('robot-7-token\nignored\n')
    config = CloudConfig.from_params({'url': 'http://127.0.0.1:1', 'token_file': str(secret)})
    assert config.bearer_token() == 'robot-7-token'
    with pytest.raises(ConfigError, match='not both'):
        CloudConfig.from_params({'url': 'http://127.0.0.1:1', 'token': 'x',
                                 'token_file': str(secret)})
    secret.write_text('\n')
    with pytest.raises(ConfigError, match='no token'):
        CloudConfig.from_params({'url': 'http://127.0.0.1:1', 'token_file': str(secret)})
