"""The rules both runtimes check before any work: tokens, access, framing, image headers."""

from __future__ import annotations

import logging
import struct
import zlib

from adaptive_offload.errors import ConfigError
import cv2
import numpy as np
import pytest
from rcnn_service.guard import (Access, body_length, check_body, check_image_header,
                                grpc_access, image_size, load_tokens, RejectionLog,
                                RequestError, rest_access, Tokens, TOKENS_ENV)


def test_tokens_from_file_and_environment(tmp_path) -> None:
    path = tmp_path / 'tokens'
    path.write_text('# one per robot\nrobot-a\n\n  robot-b  \nrobot-a\n')
    assert load_tokens(path, {TOKENS_ENV: 'env-1, env-2\nenv-3'}) == (
        'env-1', 'env-2', 'env-3', 'robot-a', 'robot-b')
    assert load_tokens(None, {}) == ()
    (tmp_path / 'empty').write_text('# nothing\n\n')
    with pytest.raises(ConfigError, match='holds no token'):
        load_tokens(tmp_path / 'empty', {})
    with pytest.raises(ConfigError, match='cannot read'):
        load_tokens(tmp_path / 'missing', {})
    (tmp_path / 'latin').write_bytes('rob\xf6t\n'.encode('latin-1'))
    with pytest.raises(ConfigError):
        load_tokens(tmp_path / 'latin', {})


def test_every_configured_token_is_accepted_and_nothing_else() -> None:
    tokens = Tokens(['robot-a', 'robot-b'])
    assert tokens.required
    assert tokens.accept('Bearer robot-a') and tokens.accept('bearer robot-b')
    for bad in (None, '', 'Bearer', 'Bearer robot-c', 'Basic robot-a', 'Bearer robot-a2',
                'robot-a', 'Bearer rob\u00f6t'):
        assert not tokens.accept(bad), bad
    assert Tokens().accept(None) and not Tokens().required
    with pytest.raises(ConfigError, match='white space'):
        Tokens(['two words'])


@pytest.mark.parametrize('method, path, access', [
    ('GET', '/v2/health/live', Access.OPEN),
    ('GET', '/v2/health/ready', Access.OPEN),
    ('GET', '/v2/models/rcnn/ready', Access.OPEN),
    ('GET', '/v2/models/rcnn/versions/1/ready', Access.OPEN),
    ('GET', '/metrics', Access.OPEN),
    ('POST', '/v2/health/live', Access.TOKEN),
    ('GET', '/v2/models/rcnn', Access.TOKEN),
    ('GET', '/v2', Access.TOKEN),
    ('GET', '/v2/docs', Access.TOKEN),
    ('POST', '/v2/models/rcnn/infer', Access.TOKEN),
    ('POST', '/v2/repository/models/rcnn/unload', Access.DISABLED),
    ('POST', '/v2/repository/index', Access.DISABLED),
])
def test_rest_access(method: str, path: str, access: Access) -> None:
    assert rest_access(method, path) is access


@pytest.mark.parametrize('method, access', [
    ('/inference.GRPCInferenceService/ServerLive', Access.OPEN),
    ('/inference.GRPCInferenceService/ServerReady', Access.OPEN),
    ('/inference.GRPCInferenceService/ModelReady', Access.OPEN),
    ('/inference.GRPCInferenceService/ModelInfer', Access.TOKEN),
    ('/inference.GRPCInferenceService/ModelStreamInfer', Access.TOKEN),
    ('/inference.GRPCInferenceService/ModelMetadata', Access.TOKEN),
    ('/inference.GRPCInferenceService/ServerMetadata', Access.TOKEN),
    ('/inference.GRPCInferenceService/RepositoryModelUnload', Access.DISABLED),
    ('/inference.model_repository.ModelRepositoryService/RepositoryModelLoad',
     Access.DISABLED),
])
def test_grpc_access(method: str, access: Access) -> None:
    assert grpc_access(method) is access


@pytest.mark.parametrize('te, cl, status', [
    (['chunked'], ['10'], 400),
    (['chunked'], [], 411),
    ([], ['-1'], 400),
    ([], ['abc'], 400),
    ([], ['+5'], 400),
    ([], ['1 2'], 400),
    ([], ['\u0661'], 400),  # an Arabic-Indic digit: str.isdigit() would take it
    ([], ['5', '6'], 400),
    ([], ['9' * 19], 400),
])
def test_bad_framing_is_refused(te: list[str], cl: list[str], status: int) -> None:
    with pytest.raises(RequestError) as err:
        body_length(te, cl)
    assert err.value.status == status


def test_body_length_and_limits() -> None:
    assert body_length([], []) == 0
    assert body_length([], ['12', ' 12 ']) == 12
    check_body(100, ['identity'], 100)
    with pytest.raises(RequestError) as err:
        check_body(101, [], 100)
    assert err.value.status == 413
    for coding in (['gzip'], ['identity, br'], ['deflate']):
        with pytest.raises(RequestError) as err:
            check_body(10, coding, 100)
        assert err.value.status == 415


def _png_header(width: int, height: int) -> bytes:
    ihdr = struct.pack('>IIBBBBB', width, height, 8, 2, 0, 0, 0)
    return (b'\x89PNG\r\n\x1a\n' + struct.pack('>I', 13) + b'IHDR' + ihdr
            + struct.pack('>I', zlib.crc32(b'IHDR' + ihdr)))


@pytest.mark.parametrize('ext', ['.png', '.jpg'])
def test_image_size_from_the_header_matches_the_decoder(ext: str) -> None:
    image = np.zeros((37, 53, 3), np.uint8)
    data = cv2.imencode(ext, image)[1].tobytes()
    assert image_size(data) == (53, 37)
    progressive = cv2.imencode('.jpg', image, [cv2.IMWRITE_JPEG_PROGRESSIVE, 1])[1].tobytes()
    assert image_size(progressive) == (53, 37)


def test_oversize_images_are_refused_from_the_header_alone() -> None:
    assert check_image_header(_png_header(4096, 10), 4096) == (4096, 10)
    with pytest.raises(RequestError, match='30000x30000 exceeds 4096'):
        check_image_header(_png_header(30000, 30000), 4096)
    sof = b'\xff\xd8\xff\xe0\x00\x04ab\xff\xc0\x00\x11\x08' + struct.pack('>HH', 9000, 100)
    with pytest.raises(RequestError, match='100x9000 exceeds'):
        check_image_header(sof + b'\x03' + b'\x00' * 9, 4096)


@pytest.mark.parametrize('data', [
    b'', b'GIF89a', b'BM\x00\x00', b'\x89PNG\r\n\x1a\n\x00', _png_header(0, 10),
    b'\xff\xd8\xff\xda\x00\x02', b'\xff\xd8\xff\xe0\x00\x10abc', b'\xff\xd8\x00\x00\x00\x00',
])
def test_no_jpeg_or_png_header_is_a_400(data: bytes) -> None:
    with pytest.raises(RequestError) as err:
        image_size(data)
    assert err.value.status == 400


def test_rejection_log_is_rate_limited() -> None:
    # A logger of its own, outside logging's registry: under a sourced ROS workspace, launch
    # makes registered loggers stop propagating to the root, where caplog listens.
    logger = logging.Logger('test.rejections', logging.WARNING)
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    logger.addHandler(handler)
    now = [0.0]
    log = RejectionLog(logger, burst=3, window_s=10.0, clock=lambda: now[0])
    for i in range(100):
        log(401, '10.0.0.1', f'attempt {i}')
    now[0] = 10.0
    log(413, '10.0.0.2', 'too big')
    lines = [r.getMessage() for r in records]
    assert len(lines) == 4 and all('\n' not in line for line in lines)
    assert lines[0] == 'rejected 401 from 10.0.0.1: attempt 0'
    assert lines[-1] == 'rejected 413 from 10.0.0.2: too big (97 more refused, not logged)'
