"""Split options in the manager: parameters, estimates, baselines, refusal outside the sim."""

from __future__ import annotations

from adaptive_offload.datatypes import InferenceReport, Route
from adaptive_offload.errors import ConfigError
from offload_manager.manager import ManagerConfig, OffloadManager
from offload_manager.observations import Observations, Option
from offload_manager.split_observations import SplitObservations
from offload_manager.split_policies import profile_latency_ms, StaticSplitPolicy
import pytest

S = 'fasterrcnn_mobilenet_v3_small_fpn@640'
SPLITS = [f'{S}:body.2:int8+zstd', f'{S}:fpn:int8+lz4']


def _config(policy: str, splits: list[str] | None = None) -> ManagerConfig:
    return ManagerConfig.from_params({'policy': policy, 'device': 'raspberry_pi_5',
                                      'cloud_device': 'h200_server',
                                      'cloud_model': 'fasterrcnn_mobilenet_v3_small_fpn',
                                      'split_options': splits or ['']})


def test_split_options_are_refused_where_nothing_executes_them() -> None:
    config = _config('predictive', SPLITS)
    with pytest.raises(ConfigError, match='nothing here executes split routes'):
        OffloadManager(config)
    assert OffloadManager(config, executes_split=True).config.splits() == tuple(SPLITS)
    OffloadManager(_config('predictive'))  # none configured: nothing to refuse


def test_bad_split_parameters_are_refused() -> None:
    with pytest.raises(ConfigError, match='arch@imgsz:point:encoding'):
        _config('predictive', ['rcnn@640:body.2'])
    with pytest.raises(ConfigError, match='needs split_options'):
        _config('static-split')
    with pytest.raises(ConfigError, match='no payload int8'):
        _config('predictive', [f'{S}:no.such:int8+zstd']).policy_settings()


def test_static_split_keeps_the_best_profiled_option() -> None:
    manager = OffloadManager(_config('static-split', SPLITS), executes_split=True)
    decision = manager.tick(0)
    settings = manager.config.policy_settings()
    best = min(SPLITS, key=lambda name: profile_latency_ms(settings, name))
    assert decision is not None and decision.route is Route.SPLIT and decision.split == best
    assert manager.tick(10**10) is not None and manager.decision.split == best  # never moves


def _fed(obs: Observations, n: int = 30) -> None:
    for i in range(n):
        obs.now_s = i * 0.1
        obs.observe_report(InferenceReport(stamp_ns=i, source='cloud', status='ok',
                                           total_ms=60.0, inference_ms=55.0, server_ms=13.0,
                                           bytes_sent=20_000))
    obs.prepare()


def test_split_estimate_is_the_cloud_series_shifted_by_its_figures() -> None:
    settings = _config('predictive', SPLITS).policy_settings()
    obs = SplitObservations(settings.energy, settings.splits,
                            cloud_model='fasterrcnn_mobilenet_v3_small_fpn')
    _fed(obs)
    cloud = obs.estimate(Option(Route.CLOUD, 'yolov8n', 640, 75), 250.0)
    fig = settings.splits[SPLITS[0]]
    split = obs.estimate(Option(Route.SPLIT, 'yolov8n', 640, 75, SPLITS[0]), 250.0)
    assert cloud is not None and split is not None
    payload = obs.bandwidth.transfer_ms(fig.payload_bytes) or 0.0
    jpeg = obs.bandwidth.transfer_ms(20_000) or 0.0
    assert split.latency_ms == pytest.approx(
        cloud.latency_ms + fig.robot_ms + payload - jpeg + fig.server_ms - 13.0)
    assert split.energy_j > cloud.energy_j  # more bytes and the head: the known result
    assert split.accuracy == cloud.accuracy  # int8 per channel: no mAP measured lost
    # A deadline the shifted series cannot meet is missed.
    tight = obs.estimate(Option(Route.SPLIT, 'yolov8n', 640, 75, SPLITS[0]),
                         cloud.latency_ms + 1.0)
    assert tight is not None and tight.p_miss > 0.5


def test_split_answers_enter_the_cloud_series_as_the_jpeg_they_stand_for() -> None:
    settings = _config('predictive', SPLITS).policy_settings()
    obs = SplitObservations(settings.energy, settings.splits)
    _fed(obs)
    fig = settings.splits[SPLITS[0]]
    payload = obs.bandwidth.transfer_ms(fig.payload_bytes) or 0.0
    jpeg = obs.bandwidth.transfer_ms(20_000) or 0.0
    total = 60.0 + fig.robot_ms + payload - jpeg + fig.server_ms - 13.0
    obs.observe_report(InferenceReport(stamp_ns=99, source='cloud', status='ok',
                                       model=f'split:{SPLITS[0]}', total_ms=total,
                                       inference_ms=fig.robot_ms, server_ms=fig.server_ms,
                                       bytes_sent=fig.payload_bytes))
    obs.prepare()
    assert obs.book.quantile('cloud', 1.0) == pytest.approx(60.0, abs=1.0)
    assert obs.bytes_at(75) == 20_000  # the JPEG sizes are not the payload's


def test_without_split_options_the_options_are_unchanged() -> None:
    manager = OffloadManager(_config('predictive'))
    policy = manager._policy
    assert type(policy.obs) is Observations  # type: ignore[attr-defined]
    assert all(o.route is not Route.SPLIT for o in policy.options())  # type: ignore
    with_splits = OffloadManager(_config('predictive', SPLITS), executes_split=True)._policy
    keys = [o.key for o in with_splits.options()]  # type: ignore[attr-defined]
    assert keys[-2:] == [f'split {s}' for s in SPLITS]
    weighted = OffloadManager(_config('weighted-score', SPLITS), executes_split=True)._policy
    assert all(o.route is not Route.SPLIT for o in weighted.options())  # type: ignore
    score = OffloadManager(_config('split-score', SPLITS), executes_split=True)._policy
    assert isinstance(score.obs, SplitObservations)  # type: ignore[attr-defined]
    assert not isinstance(OffloadManager(_config('split-score', SPLITS),
                                         executes_split=True)._policy, StaticSplitPolicy)


def test_split_score_probes_the_cloud_and_leaves_the_edge_once_it_fits_l_max() -> None:
    from dataclasses import replace

    from offload_manager.policies import create_policy

    # No server power: E_tot is the robot's alone, so the cloud's measured figures decide.
    settings = replace(_config('split-score', SPLITS).policy_settings(), server_power_w=0.0)
    policy = create_policy('split-score', settings)
    plan = policy.plan(0)
    assert plan.route is Route.EDGE and plan.probe_every == settings.probe_every > 0
    obs = policy.obs  # type: ignore[attr-defined]
    _fed(obs)
    plan = policy.plan(int(10 * 1e9))
    assert plan.route in (Route.CLOUD, Route.SPLIT) and 'probing' in plan.reason, plan.reason
