"""The adaptive-offload command line: exit codes, one-line errors, summaries."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
import re
import socket
import subprocess
import sys

from adaptive_offload.errors import ConfigError
from adaptive_offload.package_files import shipped_model
from offload_runtime.cli import _cloud_services, _overrides, build_parser, main
from offload_runtime.train_cli import CLOUD_FILE
import pytest
from rcnn_service.compact_rcnn import COMPACT_ARCH


def test_sample_bag_every_encoding(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for encoding in ('rgb8', 'bgr8', 'mono8', 'jpeg', 'png'):
        out = tmp_path / encoding
        assert main(['sample-bag', str(out), '--frames', '3', '--width', '48', '--height',
                     '32', '--encoding', encoding, '--seed', '4']) == 0
        meta = (out / 'metadata.yaml').read_text()
        topic = '/camera/image_raw/compressed' if encoding in ('jpeg', 'png') \
            else '/camera/image_raw'
        assert f'name: {topic}' in meta and 'storage_identifier: mcap' in meta
    assert 'wrote 3 frames' in capsys.readouterr().out


def test_replay_prints_summary_and_json(tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str],
                                        yolo_config_dir: str) -> None:
    assert main(['sample-bag', str(tmp_path / 'in'), '--frames', '5', '--width', '64',
                 '--height', '48']) == 0
    capsys.readouterr()
    params = tmp_path / 'p.yaml'
    params.write_text('/**/edge_inference:\n  ros__parameters:\n'
                      f'    ultralytics_config_dir: {yolo_config_dir}\n')
    code = main(['replay', str(tmp_path / 'in'), '--out', str(tmp_path / 'out'), '--rate', '0',
                 '--model', 'yolov8n.yaml', '--imgsz', '64', '--params', str(params), '--json'])
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary['frames'] == 5 and summary['results'] == 5


def test_a_cloud_that_never_answers_is_told_in_one_line(tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str],
                                                        yolo_config_dir: str) -> None:
    main(['sample-bag', str(tmp_path / 'in'), '--frames', '4', '--width', '64', '--height', '48'])
    params = tmp_path / 'p.yaml'
    params.write_text('/**/edge_inference:\n  ros__parameters:\n'
                      f'    ultralytics_config_dir: {yolo_config_dir}\n')
    with socket.socket() as probe:  # a port nothing listens on once closed
        probe.bind(('127.0.0.1', 0))
        port = probe.getsockname()[1]
    capsys.readouterr()
    assert main(['replay', str(tmp_path / 'in'), '--out', str(tmp_path / 'out'),
                 '--model', 'yolov8n.yaml', '--imgsz', '64', '--params', str(params),
                 '--policy', 'cloud-only', '--cloud', f'grpc://127.0.0.1:{port}']) == 0
    printed = capsys.readouterr()
    # A loaded host may drop a frame from the bridge's pending slot before it is sent.
    sent = re.search(r'cloud answers     0 of (\d) requests', printed.out)
    assert sent is not None and 1 <= int(sent[1]) <= 4
    # (ultralytics may also say it made its settings file)
    [line] = [x for x in printed.err.splitlines() if x.startswith('adaptive-offload')]
    assert f'the cloud answered none of {sent[1]} requests (' in line
    assert '--cloud embedded' in line


@pytest.mark.parametrize('argv, message', [
    (['replay', '{tmp}/nothing', '--out', '{tmp}/o'], 'no such bag'),
    (['replay', '{tmp}', '--out', '{tmp}/o'], 'not a readable rosbag2 bag'),
    (['replay', '{tmp}/in', '--out', '{tmp}/o', '--model', '{tmp}/missing.pt'],
     'not found (nothing is downloaded'),
    (['replay', '{tmp}/in', '--out', '{tmp}/o', '--policy', 'psychic'], 'unknown policy'),
    (['replay', '{tmp}/in', '--out', '{tmp}/o', '--params', '{tmp}/none.yaml'],
     'cannot read parameter file'),
    (['replay', '{tmp}/in', '--out', '{tmp}/o', '--rate', '-1'], 'is negative'),
    (['replay', '{tmp}/in', '--out', '{tmp}/o', '--tracking-step', '0'],
     'tracking window and step must be > 0'),
    (['replay', '{tmp}/in'], 'required: --out'),
    (['sample-bag', '{tmp}/s', '--width', '3'], 'width and height'),
])
def test_errors_exit_2_with_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                     argv: list[str], message: str) -> None:
    main(['sample-bag', str(tmp_path / 'in'), '--frames', '1', '--width', '32',
          '--height', '24'])
    capsys.readouterr()
    assert main([a.format(tmp=tmp_path) for a in argv]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_argument_errors_exit_2_from_the_installed_entry_point(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, '-m', 'offload_runtime.cli', 'replay'],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and 'error' in proc.stderr


def test_cloud_embedded_clears_the_params_url_and_a_url_replaces_it() -> None:
    def cloud(*argv: str) -> dict:
        return _overrides(build_parser().parse_args(['replay', 'in', '--out', 'o', *argv]))[
            'cloud_bridge']
    assert cloud('--cloud', 'embedded') == {'url': ''}
    assert cloud('--cloud', 'http://gpu:8080') == {'url': 'http://gpu:8080'}
    assert cloud() == {}  # the params file's URL, or the embedded service without one


def test_replay_defaults_to_the_shipped_models() -> None:
    def parse(*argv: str) -> argparse.Namespace:
        return build_parser().parse_args(['replay', 'in', '--out', 'o', *argv])

    def checkpoints(*argv: str) -> list[tuple[str, str]]:
        return [(s.arch, s.checkpoint) for s in _cloud_services(parse(*argv))]

    args = parse('--cloud', 'embedded', '--model', 'models/yolov8n-shapes.pt')
    assert checkpoints() == [(COMPACT_ARCH, str(shipped_model(CLOUD_FILE)))]
    overrides = _overrides(args)
    assert overrides['offload_manager']['edge_model'] == 'yolov8n-shapes'
    assert overrides['edge_inference']['model_name'] == 'yolov8n-shapes'
    # Another architecture has no shipped weights; "" asks for random ones.
    assert checkpoints('--cloud-arch', 'fasterrcnn_mobilenet_v3_large_fpn') == [
        ('fasterrcnn_mobilenet_v3_large_fpn', '')]
    assert checkpoints('--cloud-checkpoint', '') == [(COMPACT_ARCH, '')]
    # Several, most preferred first, each with its own checkpoint or the default one.
    assert checkpoints('--cloud-arch', f'maskrcnn_resnet50_fpn=/w/mask.pth,{COMPACT_ARCH}') == [
        ('maskrcnn_resnet50_fpn', '/w/mask.pth'), (COMPACT_ARCH, str(shipped_model(CLOUD_FILE)))]
    with pytest.raises(ConfigError, match='ARCH=CHECKPOINT'):
        _cloud_services(parse('--cloud-arch', f'a,{COMPACT_ARCH}', '--cloud-checkpoint', 'x'))
    for bad in ('a,,b', 'a,a=x'):
        with pytest.raises(SystemExit):
            parse('--cloud-arch', bad)
    assert 'MODEL ?= models/yolov8n-shapes.pt' in Path('Makefile').read_text()


def test_check_params_tells_what_ros2_launch_would_refuse(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(['check-params', 'config/params.yaml']) == 0
    assert capsys.readouterr().out.strip() == 'config/params.yaml: ok'
    bad = tmp_path / 'bad.yaml'
    bad.write_text('offload_manager:\n  ros__parameters:\n    deadline_ms: 300\n'
                   'edge_inference:\n  ros__parameters:\n    imgsz: -5\n'
                   'health_monitor:\n  ros__parameters:\n    monitored_topics: [/a]\n')
    assert main(['check-params', str(bad)]) == 1
    err = capsys.readouterr().err.splitlines()
    assert err == [f'{bad}: edge_inference: Parameter imgsz out of range. Min: 32, Max: 4096, '
                   'value: -5',
                   f"{bad}: offload_manager: Trying to set parameter 'deadline_ms' to '300' of "
                   "type 'INTEGER', expecting type 'DOUBLE'"]
    # Types and ranges pass; what the node itself refuses at start is reported next.
    bad.write_text('health_monitor:\n  ros__parameters:\n    monitored_topics: [/a]\n')
    assert main(['check-params', str(bad)]) == 1
    assert 'health_monitor: monitored_topics' in capsys.readouterr().err
    assert main(['check-params', str(tmp_path / 'missing.yaml')]) == 2


def test_replay_refuses_a_file_ros2_launch_refuses_with_the_same_reason(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(['sample-bag', str(tmp_path / 'in'), '--frames', '2', '--width', '32',
                 '--height', '32']) == 0
    params = tmp_path / 'p.yaml'
    params.write_text('offload_manager:\n  ros__parameters:\n    deadline_ms: 300\n')
    code = main(['replay', str(tmp_path / 'in'), '--out', str(tmp_path / 'out'),
                 '--params', str(params), '--policy', 'edge-only', '--model', 'yolov8n.yaml'])
    assert code == 2
    assert capsys.readouterr().err.strip() == (
        f'adaptive-offload replay: error: {params}: offload_manager: Trying to set parameter '
        "'deadline_ms' to '300' of type 'INTEGER', expecting type 'DOUBLE'")
    assert not (tmp_path / 'out').exists()
