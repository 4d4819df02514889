"""``adaptive-offload serve``: what its flags become."""

from __future__ import annotations

from typing import Any

from adaptive_offload.errors import ConfigError
from offload_runtime.cli import build_parser
from offload_runtime.serve_cli import service_config
import pytest


def _config(*flags: str) -> Any:
    args = ['serve', '--runtime', 'builtin', '--checkpoint', '', *flags]
    return service_config(build_parser().parse_args(args))


def test_the_flags_reach_the_service_config() -> None:
    config = _config('--arch', 'fasterrcnn_resnet50_fpn_v2', '--device', 'cuda:1',
                     '--max-batch', '16', '--max-tail-bytes', '1048576', '--input-size', '480',
                     '--max-connections', '64', '--model-name', 'det')
    assert (config.arch, config.device, config.max_batch, config.max_tail_bytes,
            config.input_size, config.max_connections, config.model_name) == (
        'fasterrcnn_resnet50_fpn_v2', 'cuda:1', 16, 1 << 20, 480, 64, 'det')


def test_the_defaults_bound_a_tail_request_to_256_mib() -> None:
    assert _config().max_tail_bytes == 256 << 20


@pytest.mark.parametrize('flags', [('--max-batch', '0'), ('--batch-wait-ms', '-1')])
def test_bad_batching_is_refused(flags: tuple[str, str]) -> None:
    with pytest.raises(ConfigError, match='max-batch'):
        _config(*flags)


def test_the_admission_margin_reaches_the_config_and_a_bad_one_is_refused(
        capsys: pytest.CaptureFixture[str]) -> None:
    assert _config().admission_margin == 4.0
    assert _config('--admission-margin', '2').admission_margin == 2.0
    with pytest.raises(ConfigError, match='admission-margin'):
        _config('--admission-margin', 'inf')
    with pytest.raises(SystemExit):
        build_parser().parse_args(['serve', '--admission-margin', '-1'])
    assert 'admission-margin' in capsys.readouterr().err


def test_a_tail_cap_below_one_byte_is_a_usage_error() -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(['serve', '--max-tail-bytes', '0'])


@pytest.mark.parametrize('flags, expected', [
    ((), False),                                        # cpu: the model uses the cores already
    (('--device', 'cuda'), True),                       # cuda: on by default
    (('--device', 'cuda:1', '--no-model-process'), False),
    (('--model-process',), True),
])
def test_the_model_runs_in_its_own_process_by_default_on_cuda_only(
        flags: tuple[str, ...], expected: bool) -> None:
    assert _config(*flags).model_process is expected


def test_loadtest_takes_the_model_process_flag_too() -> None:
    from offload_runtime.serve_cli import model_process

    args = build_parser().parse_args(['loadtest', '--model-process'])
    assert model_process(args) is True
    assert model_process(build_parser().parse_args(['loadtest'])) is False


def test_the_timeouts_reach_the_config_and_default_to_two_and_fifteen_minutes() -> None:
    assert (_config().batch_timeout_s, _config().load_timeout_s) == (120.0, 900.0)
    assert _config('--batch-timeout-s', '7.5').batch_timeout_s == 7.5
    assert _config('--load-timeout-s', '60').load_timeout_s == 60.0


@pytest.mark.parametrize('flag', ['--batch-timeout-s', '--load-timeout-s'])
@pytest.mark.parametrize('value', ['0', '-3', 'nan', 'inf', 'soon'])
def test_a_bad_timeout_is_a_usage_error(flag: str, value: str,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(['serve', flag, value])
    assert flag in capsys.readouterr().err


def _upstream(tmp_path: Any, *flags: str, runtime: str = 'builtin') -> Any:
    from offload_runtime.serve_cli import make_upstream

    args = build_parser().parse_args(['serve', '--runtime', runtime, '--checkpoint', '',
                                      '--upstream', 'https://cloud.example:8443', *flags])
    return make_upstream(args, service_config(args))


def test_upstream_flags_build_the_clouds_client_with_its_token(tmp_path: Any) -> None:
    token = tmp_path / 'token'
    token.write_text('s3cret\nignored\n')
    upstream = _upstream(tmp_path, '--upstream-token-file', str(token))
    try:
        assert upstream.url == 'https://cloud.example:8443'
        assert upstream._tail._rest._headers['Authorization'] == 'Bearer s3cret'
    finally:
        upstream.close()


@pytest.mark.parametrize(('flags', 'runtime', 'message'), [
    ((), 'mlserver', '--runtime builtin'),
    (('--device', 'cuda'), 'builtin', '--no-model-process'),
    (('--model-process',), 'builtin', '--no-model-process'),
    (('--upstream-token-file', '/nonexistent/token'), 'builtin', 'upstream-token-file'),
    (('--upstream-token-file', '/dev/null'), 'builtin', 'no token'),
])
def test_an_upstream_the_service_cannot_use_is_refused_before_the_model_loads(
        tmp_path: Any, flags: tuple[str, ...], runtime: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        _upstream(tmp_path, *flags, runtime=runtime)


def test_an_upstream_that_is_not_http_is_refused(tmp_path: Any) -> None:
    from offload_runtime.serve_cli import make_upstream

    args = build_parser().parse_args(['serve', '--runtime', 'builtin', '--checkpoint', '',
                                      '--upstream', 'grpc://cloud:8081'])
    with pytest.raises(ConfigError):
        make_upstream(args, service_config(args))


def test_bottleneck_reaches_the_config_and_a_bad_one_stops_before_the_model_loads(
        tmp_path: Any) -> None:
    from pathlib import Path

    shipped = str(Path(__file__).resolve().parents[2] / 'models' / 'rcnn-shapes-bottleneck.pt')
    assert _config('--bottleneck', shipped).bottleneck == shipped
    assert _config().bottleneck == ''
    with pytest.raises(ConfigError, match='not found'):
        _config('--bottleneck', str(tmp_path / 'missing.pt'))
    (tmp_path / 'junk.pt').write_bytes(b'not a checkpoint')
    with pytest.raises(ConfigError, match='cannot read'):
        _config('--bottleneck', str(tmp_path / 'junk.pt'))
    args = build_parser().parse_args(['serve', '--runtime', 'mlserver', '--checkpoint', '',
                                      '--bottleneck', shipped])
    with pytest.raises(ConfigError, match='--runtime builtin'):
        service_config(args)
