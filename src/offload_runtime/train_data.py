"""Labelled frames of the sample scenes, for training and measuring the shipped detectors.

Frames come from :class:`offload_runtime.sample_bag.Scene`: each scene is one seed and one
difficulty preset, sampled every ``FRAME_GAP_S`` seconds so its objects have moved between
frames. The same seed gives the same frames; the splits use disjoint seed ranges, so the
held-out frames are scenes no model was trained or selected on.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Mapping

from adaptive_offload.datatypes import Detection
from adaptive_offload.errors import ConfigError
from adaptive_offload.scene_difficulty import PRESETS
import cv2
import numpy as np
from offload_runtime.sample_bag import SampleSpec, Scene

CLASSES = ('box', 'disc', 'triangle')
FRAME_WIDTH, FRAME_HEIGHT = 640, 480  # the sample bag's default frame
FRAMES_PER_SCENE = 5
FRAME_GAP_S = 1.3
# Hard scenes are where a detector has the most to learn (tiny, dark, cluttered objects).
TRAIN_MIX: Mapping[str, float] = {'easy': 0.25, 'medium': 0.35, 'hard': 0.4}
SPLIT_SEEDS: Mapping[str, int] = {'train': 1_000_000, 'val': 2_000_000, 'test': 3_000_000}


@dataclass(frozen=True)
class LabelledFrame:
    """One rendered frame and its true boxes.

    Attributes:
        image: HxWx3 uint8 BGR image.
        truth: True boxes (class names from :data:`CLASSES`).
        difficulty: The preset it was rendered with.
    """

    image: np.ndarray
    truth: tuple[Detection, ...]
    difficulty: str


def scene_frames(seed: int, difficulty: str, count: int = FRAMES_PER_SCENE
                 ) -> Iterator[LabelledFrame]:
    """Yield ``count`` frames of one scene.

    Args:
        seed: The scene's seed.
        difficulty: A preset of :data:`adaptive_offload.scene_difficulty.PRESETS`.
        count: Frames to render.

    Raises:
        ConfigError: For an unknown difficulty.
    """
    if difficulty not in PRESETS:
        raise ConfigError(f'difficulty {difficulty!r}: not one of {", ".join(PRESETS)}')
    spec = SampleSpec(frames=count, width=FRAME_WIDTH, height=FRAME_HEIGHT, seed=seed,
                      objects=PRESETS[difficulty].objects, difficulty=difficulty)
    scene = Scene(spec)
    for _ in range(count):
        image, truth = scene.render(FRAME_GAP_S)
        yield LabelledFrame(image, truth, difficulty)


def split_frames(split: str, count: int, seed: int = 0,
                 mix: Mapping[str, float] = TRAIN_MIX) -> Iterator[LabelledFrame]:
    """Yield ``count`` frames of a split, scenes drawn from ``mix``.

    Args:
        split: ``train``, ``val`` or ``test`` (disjoint seed ranges).
        count: Frames to yield.
        seed: Which run of the split (the same seed gives the same frames).
        mix: Share of scenes per difficulty preset.

    Raises:
        ConfigError: For an unknown split, an empty mix or an unknown difficulty.
    """
    if split not in SPLIT_SEEDS:
        raise ConfigError(f'split {split!r}: not one of {", ".join(SPLIT_SEEDS)}')
    names = [n for n, share in mix.items() if share > 0]
    if not names:
        raise ConfigError('the difficulty mix is empty')
    shares = np.array([mix[n] for n in names], dtype=float)
    rng = np.random.default_rng([SPLIT_SEEDS[split], seed])
    base = SPLIT_SEEDS[split] + seed * 10_000
    made, scene = 0, 0
    while made < count:
        difficulty = names[int(rng.choice(len(names), p=shares / shares.sum()))]
        for frame in scene_frames(base + scene, difficulty,
                                  min(FRAMES_PER_SCENE, count - made)):
            made += 1
            yield frame
        scene += 1


def held_out(difficulty: str, count: int, seed: int = 0) -> list[LabelledFrame]:
    """Return ``count`` test-split frames of one difficulty (for measuring accuracy)."""
    return list(split_frames('test', count, seed, {difficulty: 1.0}))


def write_yolo_dataset(folder: Path, splits: Mapping[str, list[LabelledFrame]]) -> Path:
    """Write frames in the YOLO layout (``images/<split>``, ``labels/<split>``) and its yaml.

    Args:
        folder: Where to write (created).
        splits: Frames per split name (``train``, ``val``).

    Returns:
        The dataset's yaml file.
    """
    for split, frames in splits.items():
        images, labels = folder / 'images' / split, folder / 'labels' / split
        images.mkdir(parents=True, exist_ok=True)
        labels.mkdir(parents=True, exist_ok=True)
        for i, frame in enumerate(frames):
            cv2.imwrite(str(images / f'{i:06d}.png'), frame.image,
                        [cv2.IMWRITE_PNG_COMPRESSION, 1])
            height, width = frame.image.shape[:2]
            lines = [f'{CLASSES.index(d.class_name)} {(d.x1 + d.x2) / 2 / width:.6f} '
                     f'{(d.y1 + d.y2) / 2 / height:.6f} {(d.x2 - d.x1) / width:.6f} '
                     f'{(d.y2 - d.y1) / height:.6f}' for d in frame.truth]
            (labels / f'{i:06d}.txt').write_text(''.join(f'{line}\n' for line in lines))
    names = ''.join(f'  {i}: {name}\n' for i, name in enumerate(CLASSES))
    config = folder / 'data.yaml'
    config.write_text(f'path: {folder}\ntrain: images/train\nval: images/val\n'
                      f'names:\n{names}')
    return config
