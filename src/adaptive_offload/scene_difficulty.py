"""How hard a synthetic scene is to detect in, and a timeline of it over a bag.

A difficulty sets what makes detection hard on the sample scenes: how many objects, how small
(down to a few pixels), how much clutter (unlabelled distractor shapes) and background
texture, blur, light and occlusion. Presets (``easy``, ``medium``, ``hard``) cover the usual
cases; a timeline (``easy:0-30,hard:30-60``, seconds of the bag) lets one bag get harder and
easier.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Mapping

from adaptive_offload.errors import ConfigError

DIFFICULTY_KEY = 'adaptive_offload.difficulty'
"""Key of a bag's metadata (rosbag2 ``custom_data``) holding the timeline it was made with."""


@dataclass(frozen=True)
class Difficulty:
    """What makes a scene hard.

    Attributes:
        objects: Labelled objects in view.
        min_size: Smallest object side, as a share of the image's short side.
        max_size: Largest object side, as a share of the image's short side.
        clutter: Unlabelled distractor shapes (outlines and strokes) drawn under the objects.
        texture: Amplitude (0-255) of the background's texture and sensor noise.
        blur: Gaussian blur sigma in pixels (motion and focus); 0 is sharp.
        light: Brightness factor; 1 is daylight, 0.2 a dark room.
        occlusion: Share of objects partly hidden by an occluder (their box stays whole, as
            COCO annotates occluded objects).
    """

    objects: int = 4
    min_size: float = 0.12
    max_size: float = 0.3
    clutter: int = 0
    texture: float = 12.0
    blur: float = 0.0
    light: float = 1.0
    occlusion: float = 0.0

    def validate(self, where: str = 'difficulty') -> None:
        """Raise :class:`ConfigError` naming the first value out of its range."""
        checks = (('objects', 0 <= self.objects <= 200), ('clutter', 0 <= self.clutter <= 500),
                  ('min_size', 0.0 < self.min_size <= self.max_size),
                  ('max_size', self.min_size <= self.max_size <= 1.0),
                  ('texture', 0.0 <= self.texture <= 255.0), ('blur', 0.0 <= self.blur <= 20.0),
                  ('light', 0.05 <= self.light <= 2.0),
                  ('occlusion', 0.0 <= self.occlusion <= 1.0))
        for name, ok in checks:
            if not ok:
                raise ConfigError(f'{where}: {name}={getattr(self, name)!r} is out of range')


PRESETS: Mapping[str, Difficulty] = {
    'easy': Difficulty(),
    'medium': Difficulty(objects=8, min_size=0.05, max_size=0.2, clutter=10, texture=30.0,
                         blur=1.0, light=0.7, occlusion=0.2),
    'hard': Difficulty(objects=14, min_size=0.015, max_size=0.1, clutter=40, texture=60.0,
                       blur=2.0, light=0.35, occlusion=0.4),
}


@dataclass(frozen=True)
class DifficultySpan:
    """A difficulty in force from ``start_s`` to ``end_s`` of the bag."""

    start_s: float
    end_s: float
    difficulty: Difficulty
    name: str


class DifficultyTimeline:
    """Which difficulty holds at each moment of a bag; outside every span, ``base`` holds.

    Args:
        spans: Non-overlapping spans.
        base: The difficulty outside the spans.
    """

    def __init__(self, spans: tuple[DifficultySpan, ...] = (),
                 base: Difficulty = PRESETS['easy']) -> None:
        ordered = sorted(spans, key=lambda s: s.start_s)
        for before, after in zip(ordered, ordered[1:]):
            if after.start_s < before.end_s:
                raise ConfigError(f'difficulty spans {before.name} and {after.name} overlap')
        self.spans = tuple(ordered)
        self.base = base

    def at(self, t_s: float) -> Difficulty:
        """Return the difficulty at ``t_s`` seconds into the bag."""
        return next((s.difficulty for s in self.spans if s.start_s <= t_s < s.end_s), self.base)

    def name_at(self, t_s: float) -> str:
        """Return the name of the difficulty at ``t_s`` (``base`` outside every span)."""
        return next((s.name for s in self.spans if s.start_s <= t_s < s.end_s), 'base')

    def changes(self) -> list[tuple[float, str, str]]:
        """Return (seconds, name before, name after) of every moment the difficulty changes.

        A span that starts where the same difficulty already held (or ends into it) is no
        change. The base is named after its preset when it is one, else ``base``.
        """
        base = next((n for n, d in PRESETS.items() if d == self.base), 'base')
        out = []
        for t in sorted({t for s in self.spans for t in (s.start_s, s.end_s)}):
            before = next((s for s in self.spans if s.start_s < t <= s.end_s), None)
            after = next((s for s in self.spans if s.start_s <= t < s.end_s), None)
            if (before.difficulty if before else self.base) != \
                    (after.difficulty if after else self.base):
                out.append((t, before.name if before else base, after.name if after else base))
        return out

    def most(self) -> tuple[int, int]:
        """Return the most objects and the most clutter anywhere on the timeline."""
        every = [self.base, *(s.difficulty for s in self.spans)]
        return max(d.objects for d in every), max(d.clutter for d in every)


def parse_difficulty(text: str, base: Difficulty = PRESETS['easy']) -> DifficultyTimeline:
    """Read ``easy:0-30,hard:30-60`` (or one preset name for the whole bag).

    Outside the spans, ``base`` holds.

    A span may override a preset's values: ``hard[blur=0;light=0.2]:30-60``.

    Raises:
        ConfigError: For an unknown preset or field, a bad number, or overlapping spans.
    """
    text = text.strip()
    if not text:
        return DifficultyTimeline(base=base)
    if ':' not in text:
        return DifficultyTimeline(base=_difficulty(text))
    spans = []
    for part in text.split(','):
        head, sep, times = part.strip().rpartition(':')
        start, dash, end = times.partition('-')
        try:
            start_s, end_s = float(start), float(end)
        except ValueError:
            raise ConfigError(f'difficulty {part!r}: expected NAME:START-END (seconds)') from None
        if not sep or not dash or not 0 <= start_s < end_s:
            raise ConfigError(f'difficulty {part!r}: expected NAME:START-END with START < END')
        spans.append(DifficultySpan(start_s, end_s, _difficulty(head), head))
    return DifficultyTimeline(tuple(spans), base)


def _difficulty(text: str) -> Difficulty:
    name, _, rest = text.partition('[')
    if name not in PRESETS:
        raise ConfigError(f'difficulty {name!r}: not one of {", ".join(PRESETS)}')
    preset = PRESETS[name]
    if not rest:
        return preset
    if not rest.endswith(']'):
        raise ConfigError(f'difficulty {text!r}: expected NAME[field=value,...]')
    kinds = {f.name: type(getattr(preset, f.name)) for f in fields(Difficulty)}
    values = {}
    for item in rest[:-1].split(';'):
        key, eq, value = item.partition('=')
        if not eq or key not in kinds:
            raise ConfigError(f'difficulty {text!r}: unknown field {key!r} '
                              f'(known: {", ".join(kinds)})')
        try:
            values[key] = kinds[key](value)
        except ValueError:
            raise ConfigError(f'difficulty {text!r}: {key}={value!r} is not a number') from None
    out = Difficulty(**{**{f.name: getattr(preset, f.name) for f in fields(Difficulty)},
                        **values})
    out.validate(f'difficulty {text!r}')
    return out
