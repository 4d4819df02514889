"""Difficulty of the sample scenes: presets, overrides, timelines and what they draw."""

from __future__ import annotations

from adaptive_offload.errors import ConfigError
from adaptive_offload.scene_difficulty import Difficulty, parse_difficulty, PRESETS
import numpy as np
from offload_runtime.sample_bag import SampleSpec, Scene
import pytest


def test_a_timeline_switches_difficulty_and_keeps_the_base_elsewhere() -> None:
    timeline = parse_difficulty('hard:10-20,medium:30-40')
    assert timeline.at(0.0) == PRESETS['easy'] and timeline.at(10.0) == PRESETS['hard']
    assert timeline.at(19.99) == PRESETS['hard'] and timeline.at(20.0) == PRESETS['easy']
    assert timeline.name_at(35.0) == 'medium' and timeline.name_at(25.0) == 'base'
    assert timeline.most() == (PRESETS['hard'].objects, PRESETS['hard'].clutter)
    assert parse_difficulty('hard').at(1e6) == PRESETS['hard']
    custom = parse_difficulty('hard[blur=0;light=0.2;objects=3]:0-5').at(1.0)
    assert (custom.blur, custom.light, custom.objects) == (0.0, 0.2, 3)
    assert custom.clutter == PRESETS['hard'].clutter


@pytest.mark.parametrize(('text', 'message'), [
    ('brutal', 'not one of'), ('hard:5', 'START-END'), ('hard:9-3', 'START < END'),
    ('hard:0-10,easy:5-15', 'overlap'), ('hard[fog=1]:0-5', 'unknown field'),
    ('hard[blur=x]:0-5', 'not a number'), ('hard[light=0]:0-5', 'light'),
    ('hard[min_size=0.5]:0-5', 'min_size'),
])
def test_bad_difficulties_name_the_problem(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_difficulty(text)


def _frames(difficulty: str, count: int = 3) -> list[tuple[np.ndarray, tuple]]:
    scene = Scene(SampleSpec(width=320, height=240, seed=3, difficulty=difficulty))
    return [scene.render(0.1) for _ in range(count)]


def test_hard_scenes_have_more_smaller_objects_darker_and_blurred() -> None:
    [(easy, easy_truth)] = _frames('easy', 1)
    [(hard, hard_truth)] = _frames('hard', 1)
    assert len(easy_truth) == 4 and len(hard_truth) > 10
    side = [min(d.x2 - d.x1, d.y2 - d.y1) for d in hard_truth]
    assert min(side) < 10 and max(side) <= 0.1 * 240 + 1  # down to a few pixels
    assert hard.mean() < easy.mean() * 0.7  # low light
    sharpness = [float(np.abs(np.diff(img.astype(np.int16), axis=1)).mean())
                 for img in (easy, hard)]
    assert sharpness[1] < sharpness[0]  # blurred (and dim) edges
    for image, truth in ((easy, easy_truth), (hard, hard_truth)):
        assert image.shape == (240, 320, 3) and image.dtype == np.uint8
        for d in truth:
            assert 0 <= d.x1 < d.x2 < 320 and 0 <= d.y1 < d.y2 < 240


def test_the_same_world_gets_harder_over_the_timeline() -> None:
    scene = Scene(SampleSpec(width=320, height=240, seed=1, fps=10,
                             difficulty='hard:1-2'))
    counts = [len(scene.render(0.1)[1]) for _ in range(30)]
    assert counts[:10] == [4] * 10 and min(counts[10:20]) > 4 and counts[20:] == [4] * 10
    assert Difficulty().objects == 4  # the default is the easy preset


def test_the_timeline_lists_its_changes_of_difficulty() -> None:
    timeline = parse_difficulty('easy:0-30,hard:30-60,easy:60-90')
    # The last span ends into the base, which is easy too: no change at 90 s.
    assert timeline.changes() == [(30.0, 'easy', 'hard'), (60.0, 'hard', 'easy')]
    assert parse_difficulty('hard:10-20,medium:20-25').changes() == [
        (10.0, 'easy', 'hard'), (20.0, 'hard', 'medium'), (25.0, 'medium', 'easy')]
    assert parse_difficulty('hard').changes() == []
