"""Split options: names, payload files and the figures a frame costs on each."""

from __future__ import annotations

from pathlib import Path

from adaptive_offload.errors import ConfigError
from offload_manager.energy import DeviceProfile, load_devices
from offload_manager.manager import default_devices_file
from offload_manager.split_figures import (default_payloads_file, LEARNED_MAP_LOSS,
                                           load_payloads, QUANTISATION_MAP_LOSS, split_figures)
import pytest

ARCH = 'fasterrcnn_mobilenet_v3_small_fpn'


def test_shipped_payloads_are_trained_and_no_naive_split_is_smaller_than_q75() -> None:
    points, jpeg = load_payloads(default_payloads_file(ARCH))
    assert set(jpeg) == {50, 75, 95}
    smallest = min(b for enc in points.values() for name, (b, _, _) in enc.items()
                   if name != 'bottleneck')
    assert jpeg[75] < smallest < jpeg[95]  # the known result: a naive split rarely pays


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
    with pytest.raises(ConfigError, match='no payload figures .*missing.yaml'):
        split_figures([spec], devices['ci_machine'], devices['h200_server'],
                      {ARCH: tmp_path / 'missing.yaml'})
    (tmp_path / 'bad.yaml').write_bytes(b'points: [\xff')
    with pytest.raises(ConfigError, match='cannot read split payload figures'):
        split_figures([spec], devices['ci_machine'], devices['h200_server'],
                      {ARCH: tmp_path / 'bad.yaml'})


def _payloads_with(tmp_path: Path, wire_at: dict[str, dict[str, object]]) -> Path:
    """Write a payload file of the shipped model's points with ``wire_at`` entries added."""
    import yaml

    data = yaml.safe_load(default_payloads_file(ARCH).read_text())
    for point in data['points']:
        point['wire'] = {k: v for k, v in point['wire'].items() if k != 'bottleneck'}
        point['wire'].update(wire_at.get(point['name'], {}))
    path = tmp_path / f'{ARCH}.yaml'
    path.write_text(yaml.safe_dump(data))
    return path


def test_a_learned_option_takes_the_bottleneck_entry_and_its_measured_map_loss(
        tmp_path: Path) -> None:
    devices = load_devices(default_devices_file())
    robot, cloud = devices['raspberry_pi_5'], devices['h200_server']
    path = _payloads_with(tmp_path, {'body.3': {
        'bottleneck': {'bytes': 7100, 'encode_ms': 3.25, 'decode_ms': 1.5}}})
    learned, naive = f'{ARCH}@640:body.3:bottleneck', f'{ARCH}@640:body.3:int8+zstd'
    figs = split_figures([learned, naive], robot, cloud, {ARCH: path})
    fig = figs[learned]
    head, tail = robot.split_time_ms(ARCH, 640, 'body.3') or (0, 0)
    assert fig.payload_bytes == fig.wan_bytes == 7100
    assert fig.robot_ms == pytest.approx(head + 3.25) and fig.encode_ms == 3.25
    assert fig.server_ms == pytest.approx(1.5 + (cloud.split_time_ms(ARCH, 640, 'body.3')
                                                 or (0, 0))[1])
    # docs/models.md: 48.5 all-difficulty mAP against 53.2 unsplit and for the q50 JPEG.
    assert fig.map_loss == LEARNED_MAP_LOSS == pytest.approx(53.2 - 48.5)
    assert figs[naive].map_loss == 0.0 and figs[naive].payload_bytes > 10 * 7100
    assert fig.spec.learned and fig.to_cloud and fig.onward_bytes is None


def test_the_shipped_payloads_measure_the_shipped_bottleneck_below_a_q50_jpeg() -> None:
    points, jpeg = load_payloads(default_payloads_file(ARCH))
    nbytes, encode, decode = points['body.3']['bottleneck']
    assert 0 < nbytes < jpeg[50] < points['body.3']['int8+zstd'][0]
    assert encode > 0 and decode > 0
    assert [p for p, enc in points.items() if 'bottleneck' in enc] == ['body.3']


def test_a_learned_option_without_a_measured_bottleneck_is_refused(tmp_path: Path) -> None:
    devices = load_devices(default_devices_file())
    robot, cloud = devices['raspberry_pi_5'], devices['h200_server']
    path = _payloads_with(tmp_path, {'body.3': {
        'bottleneck': {'bytes': 7100, 'encode_ms': 3.0, 'decode_ms': 1.0}}})
    with pytest.raises(ConfigError, match=r"body\.2:bottleneck'.*no bottleneck entry for point "
                                          r"'body\.2'.*--bottleneck"):
        split_figures([f'{ARCH}@640:body.2:bottleneck'], robot, cloud, {ARCH: path})
    with pytest.raises(ConfigError, match='no bottleneck entry'):
        split_figures([f'{ARCH}@640:body.3:bottleneck'], robot, cloud,
                      {ARCH: _payloads_with(tmp_path, {})})
    with pytest.raises(ConfigError, match='two tiers'):
        split_figures([f'{ARCH}@640:body.2/body.3:bottleneck'], robot, cloud, {ARCH: path},
                      middle=devices['laptop_cpu'])


def test_the_edge_detector_splits_to_the_middle_device_from_its_own_size_s_file() -> None:
    devices = load_devices(default_devices_file())
    robot, middle = devices['raspberry_pi_5'], devices['laptop_cpu']
    names = ['yolov8n-shapes@320:4/end:int8+zstd', 'yolov8n-shapes@640:4/end:int8+zstd']
    figs = split_figures(names, robot, devices['h200_server'], middle=middle)
    small, large = (figs[n] for n in names)
    assert small.edge and large.edge and not small.to_cloud
    assert default_payloads_file('yolov8n-shapes', 320).name == 'yolov8n-shapes@320.yaml'
    points, _ = load_payloads(default_payloads_file('yolov8n-shapes', 320))
    assert list(points)[:3] == ['1', '2', '3']  # k, as split_point names it
    assert small.payload_bytes == points['4']['int8+zstd'][0] < large.payload_bytes
    # yolov8n-shapes takes yolov8n's times; head and tail add up to about the whole model.
    head, tail = robot.split_time_ms('yolov8n-shapes', 320, '4') or (0.0, 0.0)
    assert (head, tail) == robot.split_time_ms('yolov8n', 320, '4')
    assert 0.5 < (head + tail) / (robot.inference_time_ms('yolov8n', 320) or 1) < 1.5
    assert small.robot_ms == pytest.approx(head + points['4']['int8+zstd'][1])
    assert small.middle_ms == pytest.approx(points['4']['int8+zstd'][2] + middle.split_time_ms(
        'yolov8n', 320, '4')[1])  # type: ignore[index]
    assert small.map_loss == 0.0 and small.server_ms == 0.0


@pytest.mark.parametrize('name, error', [
    ('yolov8n-shapes@320:4:int8+zstd', 'between the robot and an edge computer only'),
    ('yolov8n-shapes@320:2/4:int8+zstd', 'between the robot and an edge computer only'),
    ('yolov8n-shapes@480:4/end:int8+zstd', 'no payload figures for yolov8n-shapes@480 .*'
                                           'profile MODEL --imgsz 480'),
    ('yolov8n-shapes@320:99/end:int8+zstd', 'not a split point'),
])
def test_edge_detector_options_that_cannot_run_are_refused(name: str, error: str) -> None:
    devices = load_devices(default_devices_file())
    with pytest.raises(ConfigError, match=error):
        split_figures([name], devices['raspberry_pi_5'], devices['h200_server'],
                      middle=devices['laptop_cpu'])


def test_a_payload_file_measured_at_another_size_is_refused(tmp_path: Path) -> None:
    devices = load_devices(default_devices_file())
    text = default_payloads_file('yolov8n-shapes', 640).read_text(encoding='utf-8')
    (tmp_path / 'yolo.yaml').write_text(text, encoding='utf-8')
    with pytest.raises(ConfigError, match='measured yolov8n-shapes@640, not '
                                          'yolov8n-shapes@320'):
        split_figures(['yolov8n-shapes@320:4/end:int8+zstd'], devices['raspberry_pi_5'],
                      devices['h200_server'], {'yolov8n-shapes': tmp_path / 'yolo.yaml'},
                      middle=devices['laptop_cpu'])
    (tmp_path / 'odd.yaml').write_text(text.replace('family: yolo', 'family: ssd'),
                                       encoding='utf-8')
    with pytest.raises(ConfigError, match="family 'ssd'"):
        split_figures(['yolov8n-shapes@640:4/end:int8+zstd'], devices['raspberry_pi_5'],
                      devices['h200_server'], {'yolov8n-shapes': tmp_path / 'odd.yaml'},
                      middle=devices['laptop_cpu'])
