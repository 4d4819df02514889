"""Open Inference Protocol conformance of the builtin runtime, checked by tritonclient.

Its HTTP client makes calls the bridge never makes: server and model metadata, versions,
request ids, requested outputs. ``test_mlserver_runtime.py`` makes the same calls of MLServer,
over HTTP and gRPC.
"""
from __future__ import annotations

import threading
from typing import Iterator

from helpers import v2_image_input
import pytest
from rcnn_service.rcnn_detector import RcnnDetector
from rcnn_service.service import InferenceService, ServiceConfig
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

AUTH = {'Authorization': 'Bearer t0k'}


@pytest.fixture(scope='module')
def client() -> Iterator[httpclient.InferenceServerClient]:
    detector = RcnnDetector('fasterrcnn_mobilenet_v3_large_320_fpn', score_threshold=0.0,
                            threads=2)
    service = InferenceService(ServiceConfig(port=0, tokens=('t0k',)), detector)
    threading.Thread(target=service.serve_forever, daemon=True).start()
    http = httpclient.InferenceServerClient(service.url.removeprefix('http://'))
    yield http
    http.close()
    service.shutdown()


def test_server_and_model_metadata(client: httpclient.InferenceServerClient) -> None:
    server = client.get_server_metadata(headers=AUTH)
    assert server['name'] == 'adaptive-offload' and server['version']
    assert server['extensions'] == []  # no binary tensors, no Triton extensions
    model = client.get_model_metadata('rcnn', headers=AUTH)
    assert model == client.get_model_metadata('rcnn', '1', headers=AUTH)
    assert model['versions'] == ['1'] and model['platform'] == 'pytorch'
    assert [o['name'] for o in model['outputs']] == ['boxes', 'scores', 'labels']
    assert client.is_model_ready('rcnn', '1')
    with pytest.raises(InferenceServerException, match='no route'):
        client.get_model_metadata('rcnn', '2', headers=AUTH)


def test_the_request_id_is_echoed_and_only_requested_outputs_come_back(
        client: httpclient.InferenceServerClient) -> None:
    wanted = [httpclient.InferRequestedOutput(name, binary_data=False)
              for name in ('scores', 'labels')]
    result = client.infer('rcnn', [v2_image_input(httpclient)], model_version='1',
                          request_id='frame-42', outputs=wanted, headers=AUTH)
    response = result.get_response()
    assert response['id'] == 'frame-42' and response['model_version'] == '1'
    assert [o['name'] for o in response['outputs']] == ['scores', 'labels']
    assert result.as_numpy('boxes') is None and len(result.as_numpy('scores')) > 0
    full = client.infer('rcnn', [v2_image_input(httpclient)], headers=AUTH).get_response()
    assert 'id' not in full and [o['name'] for o in full['outputs']] == \
        ['boxes', 'scores', 'labels']


def test_an_unknown_output_or_version_is_refused_by_name(
        client: httpclient.InferenceServerClient) -> None:
    with pytest.raises(InferenceServerException, match="no output named 'bogus'") as caught:
        client.infer('rcnn', [v2_image_input(httpclient)], headers=AUTH,
                     outputs=[httpclient.InferRequestedOutput('bogus', binary_data=False)])
    assert caught.value.status() == '400'
    with pytest.raises(InferenceServerException, match='no model route'):
        client.infer('rcnn', [v2_image_input(httpclient)], model_version='7', headers=AUTH)
    with pytest.raises(InferenceServerException, match='no masks output'):
        client.infer('rcnn', [v2_image_input(httpclient)], headers=AUTH,
                     outputs=[httpclient.InferRequestedOutput('masks', binary_data=False)])
