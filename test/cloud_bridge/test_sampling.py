"""Which frames go to the cloud: every n-th, or where the edge is unsure or the scene changes."""

from __future__ import annotations

from adaptive_offload.conversions import MessageTypes
from adaptive_offload.datatypes import Decision, Detection, DetectionSet, Route
from adaptive_offload.errors import ConfigError
from cloud_bridge.bridge import CloudBridge
from cloud_bridge.bridge_config import CloudConfig
from cloud_bridge.sampling import change, ContentSampler, make_sampler, uncertainty, UniformSampler
from helpers import ManualClock, ScriptedTransport, small_frame_message as _msg
import pytest

SURE = (Detection(100, 100, 200, 200, 0.95, 'box'), Detection(300, 100, 400, 220, 0.9, 'disc'))
UNSURE = (Detection(100, 100, 200, 200, 0.35, 'box'), Detection(10, 10, 30, 28, 0.3, 'disc'))


def _dets(stamp: int, boxes: tuple[Detection, ...]) -> DetectionSet:
    return DetectionSet(stamp, 'cam', 'edge', boxes, 'yolov8n')


def test_uniform_sends_every_nth_frame_and_ignores_content() -> None:
    sampler = UniformSampler()
    picks = []
    for i in range(12):
        sampler.observe_edge(_dets(i, UNSURE if i % 2 else SURE))
        picks.append(sampler.pick(4))
    assert [i for i, p in enumerate(picks) if p] == [0, 4, 8]


def test_scores_rank_unsure_small_and_changing_scenes_above_steady_sure_ones() -> None:
    assert uncertainty(UNSURE) > uncertainty(SURE)
    assert uncertainty(()) >= 1.0  # nothing seen: perhaps everything missed
    moved = tuple(Detection(d.x1 + 150, d.y1, d.x2 + 150, d.y2, d.score, d.class_name)
                  for d in SURE)
    assert change(SURE, SURE) == 0.0 and change(SURE, moved) == 1.0
    assert change(SURE, SURE[:1]) == pytest.approx(1 - 2 / 3)  # one of two objects left


def test_content_sends_as_often_as_uniform_but_where_the_edge_is_unsure() -> None:
    # Scenes get hard for 10 frames in every 40; one frame in 4 may go to the cloud.
    content, uniform = ContentSampler(), UniformSampler()
    sent: dict[str, list[bool]] = {'content': [], 'uniform': []}
    hard = []
    for i in range(400):
        boxes = UNSURE if i % 40 >= 30 else SURE
        hard.append(boxes is UNSURE)
        for name, sampler in (('content', content), ('uniform', uniform)):
            sampler.observe_edge(_dets(i, boxes))
            sent[name].append(sampler.pick(4))
    n_content, n_uniform = sum(sent['content']), sum(sent['uniform'])
    assert abs(n_content - n_uniform) <= 3  # the same request rate
    on_hard = {name: sum(s and h for s, h in zip(picks, hard)) / sum(picks)
               for name, picks in sent.items()}
    assert on_hard['uniform'] == pytest.approx(0.2)  # frames 32 and 36 of every 40
    assert on_hard['content'] >= 2 * on_hard['uniform'], on_hard


def test_content_never_leaves_the_cloud_unasked_for_long() -> None:
    sampler = ContentSampler(burst=3.0)
    picks = []
    for i in range(100):
        sampler.observe_edge(_dets(i, SURE))  # nothing ever stands out
        picks.append(sampler.pick(5))
    gaps = [b - a for a, b in zip(*[iter([i for i, p in enumerate(picks) if p])] * 2)]
    assert 18 <= sum(picks) <= 21 and max(gaps) <= 15  # one in 5; at most 3 x 5 apart


def test_unknown_sampling_and_bad_settings_are_refused() -> None:
    with pytest.raises(ConfigError, match='uniform, content'):
        make_sampler('random')
    with pytest.raises(ConfigError, match='burst'):
        ContentSampler(burst=0.5)
    assert not ContentSampler().pick(0)


def test_the_bridge_samples_by_the_edge_results_it_is_given(types: MessageTypes) -> None:
    clock = ManualClock()
    transport = ScriptedTransport(clock, ['ok'] * 100)
    bridge = CloudBridge(transport, clock=clock, sampler=ContentSampler())
    decision = Decision(route=Route.CLOUD, offload_every=4, deadline_ms=1000.0)
    sent = []
    for i in range(80):
        hard = i % 20 >= 15  # five frames in every twenty the edge is unsure of
        bridge.on_edge_detections(_dets(i, UNSURE if hard else SURE))
        _, report = bridge.process(_msg(types, i + 1), decision)
        if report.status == 'ok':
            sent.append(hard)
    assert 18 <= len(sent) <= 22  # one frame in four, as uniform sampling would send
    assert sum(sent) / len(sent) >= 0.5  # while a quarter of the frames are hard


def test_a_phase_shifts_which_frames_uniform_sampling_sends() -> None:
    sampler = make_sampler('uniform', phase=2)
    assert [i for i in range(12) if sampler.pick(4)] == [2, 6, 10]
    with pytest.raises(ConfigError, match='phase'):
        UniformSampler(phase=-1)


def test_bridges_built_from_parameters_do_not_sample_in_step() -> None:
    config = CloudConfig.from_params({})
    firsts = set()
    for _ in range(20):
        sampler = config.make_bridge(ScriptedTransport(ManualClock(), []))._sampling
        firsts.add(next(i for i in range(1000) if sampler.pick(10)))
    assert len(firsts) > 1 and max(firsts) < 10
