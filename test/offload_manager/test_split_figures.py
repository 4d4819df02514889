"""Split options: names, payload files and the figures a frame costs on each."""

from __future__ import annotations

from pathlib import Path

from adaptive_offload.errors import ConfigError
from offload_manager.energy import DeviceProfile, load_devices
from offload_manager.manager import default_devices_file
from offload_manager.split_figures import (default_payloads_file, load_payloads,
                                           QUANTISATION_MAP_LOSS, split_figures)
import pytest

ARCH = 'fasterrcnn_mobilenet_v3_small_fpn'


def test_shipped_payloads_are_trained_and_no_split_is_smaller_than_q75() -> None:
    points, jpeg = load_payloads(default_payloads_file(ARCH))
    assert set(jpeg) == {50, 75, 95}
    smallest = min(b for enc in points.values() for b, _, _ in enc.values())
    assert jpeg[75] < smallest < jpeg[95]  # the known result: split rarely pays in bytes


def test_figures_combine_robot_cloud_and_payload() -> None:
    devices = load_devices(default_devices_file())
    spec = f'{ARCH}@640:body.2:int8+zstd'
    fig = split_figures([spec], devices['raspberry_pi_5'], devices['h200_server'])[spec]
    points, _ = load_payloads(default_payloads_file(ARCH))
    nbytes, encode, decode = points['body.2']['int8+zstd']
    head, tail = devices['raspberry_pi_5'].split_time_ms(ARCH, 640, 'body.2') or (0, 0)
    assert fig.payload_bytes == nbytes and fig.robot_ms == pytest.approx(head + encode)
    assert fig.server_ms == pytest.approx(decode +
                                          devices['h200_server'].split_ms[f'{ARCH}@640'][
                                              'body.2'][1])
    # The encoding's measured cost: none for int8 after body.3 (benchmarks/bench_bottleneck.py).
    assert fig.map_loss == QUANTISATION_MAP_LOSS['int8'] == 0.0
    fp16 = f'{ARCH}@640:body.2:fp16+lz4'
    assert split_figures([fp16], devices['raspberry_pi_5'],
                         devices['h200_server'])[fp16].map_loss == 0


def test_missing_figures_name_what_is_missing(tmp_path: Path) -> None:
    devices = load_devices(default_devices_file())
    bare = DeviceProfile('bare', 1.0, 2.0)
    spec = f'{ARCH}@640:body.2:int8+zstd'
    with pytest.raises(ConfigError, match='device bare split_ms'):
        split_figures([spec], bare, devices['h200_server'])
    with pytest.raises(ConfigError, match='no payload'):
        split_figures([f'{ARCH}@640:body.2:int8+none'], devices['ci_machine'],
                      devices['h200_server'])
    (tmp_path / 'bad.yaml').write_text('points: [{name: fpn, wire: {int8+zstd: {bytes: -1, '
                                       'encode_ms: 1, decode_ms: 1}}}]')
    with pytest.raises(ConfigError, match='non-negative'):
        split_figures([spec], devices['ci_machine'], devices['h200_server'],
                      {ARCH: tmp_path / 'bad.yaml'})
    with pytest.raises(ConfigError, match='cannot read'):
        split_figures([spec], devices['ci_machine'], devices['h200_server'],
                      {ARCH: tmp_path / 'missing.yaml'})
