"""Three-tier split options in the manager: figures, estimates, baselines, parameters."""

from __future__ import annotations

from pathlib import Path

from adaptive_offload.datatypes import InferenceReport, Route
from adaptive_offload.errors import ConfigError
from offload_manager.energy import DeviceProfile, EnergyModel
from offload_manager.manager import ManagerConfig, OffloadManager
from offload_manager.observations import Estimate, Option, REPLY_BYTES
from offload_manager.split_figures import split_figures
from offload_manager.split_observations import SplitObservations
from offload_manager.split_policies import profile_latency_ms, SplitScorePolicy
import pytest

PAYLOADS = """
jpeg_bytes: {q50: 20000, q75: 30000, q95: 90000}
points:
- {name: a, wire: {int8+zstd: {bytes: 100000, encode_ms: 2.0, decode_ms: 1.0}}}
- {name: b, wire: {int8+zstd: {bytes: 10000, encode_ms: 0.5, decode_ms: 0.25}}}
"""
ROBOT = DeviceProfile('robot', 2.0, 6.0, tx_nj_per_bit=50.0,
                      split_ms={'toy@640': {'a': (10.0, 500.0), 'b': (30.0, 480.0)}})
MIDDLE = DeviceProfile('middle', 5.0, 15.0,
                       split_ms={'toy@640': {'a': (1.0, 50.0), 'b': (4.0, 45.0)}})
CLOUD = DeviceProfile('cloud', 75.0, 700.0,
                      split_ms={'toy@640': {'a': (0.1, 5.0), 'b': (0.3, 4.0)}})
THREE, END = 'toy@640:a/b:int8+zstd', 'toy@640:a/end:int8+zstd'


def _figures(tmp_path: Path, specs: list[str]) -> dict:
    (tmp_path / 'toy.yaml').write_text(PAYLOADS)
    return split_figures(specs, ROBOT, CLOUD, {'toy': tmp_path / 'toy.yaml'}, middle=MIDDLE,
                         lan_mbps=80.0, lan_rtt_ms=2.0)


def test_three_tier_figures_by_hand(tmp_path: Path) -> None:
    figs = _figures(tmp_path, [THREE, END, 'toy@640:b:int8+zstd'])
    three = figs[THREE]
    assert three.robot_ms == pytest.approx(10.0 + 2.0)  # head to a, encode of a
    assert three.payload_bytes == 100_000 and three.wan_bytes == 10_000
    assert three.lan_ms == pytest.approx(100_000 * 8 / 80e3 + 2.0)  # 10 ms + round trip
    # decode a, layers a..b (head to b less head to a on the middle device), encode b
    assert three.middle_ms == pytest.approx(1.0 + (4.0 - 1.0) + 0.5)
    assert three.middle_j == pytest.approx(15.0 * 4.5 / 1e3)
    assert three.server_ms == pytest.approx(0.25 + 4.0)  # decode b, cloud's tail after b
    end = figs[END]
    assert (end.to_cloud, end.wan_bytes, end.server_ms) == (False, 0, 0.0)
    assert end.middle_ms == pytest.approx(1.0 + 50.0)  # decode a, the middle's tail after a
    two = figs['toy@640:b:int8+zstd']  # two tiers as before: no LAN, no middle device
    assert (two.lan_ms, two.middle_ms, two.wan_bytes) == (0.0, 0.0, 10_000)


def test_bad_three_tier_options_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="'toy@640:b/a:int8\\+zstd'.*after 'b'"):
        _figures(tmp_path, ['toy@640:b/a:int8+zstd'])
    with pytest.raises(ConfigError, match='need a middle device'):
        split_figures([THREE], ROBOT, CLOUD, {'toy': tmp_path / 'toy.yaml'})
    with pytest.raises(ConfigError, match='three tiers need split_middle_device'):
        ManagerConfig.from_params({'split_options': [
            'fasterrcnn_mobilenet_v3_small_fpn@640:body.2/end:int8+zstd']})
    with pytest.raises(ConfigError, match="'nowhere' is not in the device profiles"):
        ManagerConfig.from_params({
            'policy': 'predictive', 'device': 'raspberry_pi_5', 'cloud_device': 'h200_server',
            'split_middle_device': 'nowhere', 'split_options': [
                'fasterrcnn_mobilenet_v3_small_fpn@640:body.2/end:int8+zstd']}).policy_settings()
    with pytest.raises(ConfigError):
        ManagerConfig.from_params({'split_lan_mbps': 0.0})


def test_estimate_adds_lan_middle_and_the_onward_payload(tmp_path: Path) -> None:
    figs = _figures(tmp_path, [THREE, END])
    obs = SplitObservations(EnergyModel(ROBOT), figs)
    for i in range(30):
        obs.now_s = i * 0.1
        obs.observe_report(InferenceReport(stamp_ns=i, source='cloud', status='ok',
                                           total_ms=60.0, inference_ms=55.0, server_ms=13.0,
                                           bytes_sent=20_000))
    obs.prepare()
    # Frames that stop at the middle device are weighed once the cloud is known: nothing
    # would measure it while they are chosen.
    assert obs.estimate(Option(Route.SPLIT, 'yolov8n', 640, 75, END), 250.0) is None
    obs.observe_report(InferenceReport(stamp_ns=30, source='cloud', status='failed',
                                       total_ms=250.0, bytes_sent=20_000))
    obs.prepare()
    cloud = obs.estimate(Option(Route.CLOUD, 'yolov8n', 640, 75), 250.0)
    three = obs.estimate(Option(Route.SPLIT, 'yolov8n', 640, 75, THREE), 250.0)
    end = obs.estimate(Option(Route.SPLIT, 'yolov8n', 640, 75, END), 250.0)
    assert cloud is not None and three is not None and end is not None
    fig = figs[THREE]
    wan = obs.bandwidth.transfer_ms(10_000) or 0.0
    jpeg = obs.bandwidth.transfer_ms(20_000) or 0.0
    assert three.latency_ms == pytest.approx(
        cloud.latency_ms + 12.0 + fig.lan_ms + 4.5 + wan - jpeg + 4.25 - 13.0)
    # The robot pays its head beyond idle and its radio for payload(a), idle over its period.
    hand = (6.0 - 2.0) * 12.0 / 1e3 + 50.0 * 100_000 * 8e-9 + 2.0 * obs.period_ms / 1e3
    assert three.energy_j == pytest.approx(hand + EnergyModel(ROBOT).joules(0, 0, REPLY_BYTES, 0))
    assert end.latency_ms == pytest.approx(12.0 + fig.lan_ms + 51.0) and end.p_miss == 0.0
    assert end.energy_j == pytest.approx(three.energy_j) and end.cost_usd == 0.0
    late = obs.estimate(Option(Route.SPLIT, 'yolov8n', 640, 75, END), 50.0)
    assert late is not None and late.p_miss == 1.0 and late.accuracy == 0.0
    # A middle device's answer says nothing of the cloud.
    obs.observe_report(InferenceReport(stamp_ns=99, source='cloud', status='failed',
                                       model=f'split:{END}', total_ms=250.0))
    obs.prepare()
    assert obs.estimate(Option(Route.CLOUD, 'yolov8n', 640, 75), 250.0) == cloud


def _shipped(policy: str, splits: list[str]) -> OffloadManager:
    return OffloadManager(ManagerConfig.from_params({
        'policy': policy, 'device': 'raspberry_pi_5', 'cloud_device': 'h200_server',
        'cloud_model': 'fasterrcnn_mobilenet_v3_small_fpn', 'split_options': splits,
        'split_middle_device': 'laptop_cpu', 'split_lan_mbps': 100.0,
        'split_lan_rtt_ms': 2.0}), executes_split=True)


def test_baselines_weigh_three_tier_options() -> None:
    s = 'fasterrcnn_mobilenet_v3_small_fpn@640'
    splits = [f'{s}:body.3:int8+zstd', f'{s}:body.2/body.3:int8+zstd', f'{s}:body.2/end:int8+zstd']
    manager = _shipped('static-split', splits)
    settings = manager.config.policy_settings()
    fig = settings.splits[splits[1]]
    assert profile_latency_ms(settings, splits[1]) == pytest.approx(
        fig.robot_ms + fig.lan_ms + fig.middle_ms + fig.wan_bytes * 8 / 50e3 + 30.0 +
        fig.server_ms)
    assert profile_latency_ms(settings, splits[2]) == pytest.approx(
        settings.splits[splits[2]].before_wan_ms)
    best = min(splits, key=lambda name: profile_latency_ms(settings, name))
    decision = manager.tick(0)
    assert decision is not None and decision.split == best
    # split-score counts the middle device's energy over its part in E_tot.
    policy = SplitScorePolicy(settings, SplitObservations(settings.energy, settings.splits))
    whole = policy.server_j(_estimate(splits[0]), 13.0)
    three = policy.server_j(_estimate(splits[2]), 13.0)
    assert three == pytest.approx(settings.splits[splits[2]].middle_j)
    assert whole == pytest.approx(settings.server_power_w * settings.splits[splits[0]].server_ms
                                  / 1e3)


def _estimate(split: str) -> Estimate:
    return Estimate(Option(Route.SPLIT, 'yolov8n', 640, 75, split), 0.0, 0.0, 0.0, 0.0, 0.0)
