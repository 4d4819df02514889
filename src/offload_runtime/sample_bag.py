"""Synthetic camera bags: moving, labelled objects, with their ground truth."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from adaptive_offload import topics
from adaptive_offload.conversions import (battery_message, COMPRESSED_FORMATS,
                                          detections_to_message, frame_to_message)
from adaptive_offload.datatypes import Detection, DetectionSet
from adaptive_offload.errors import ConfigError
from adaptive_offload.scene_difficulty import (DIFFICULTY_KEY, DifficultyTimeline,
                                               parse_difficulty, PRESETS)
from adaptive_offload.typestore import make_typestore, message_types
import cv2
import numpy as np
from offload_runtime.bagio import OutputBag, qos

IMAGE_TOPIC = '/camera/image_raw'
TRUTH_TOPIC = topics.GROUND_TRUTH
BATTERY_TOPIC = '/battery_state'
SAMPLE_ENCODINGS = ('rgb8', 'bgr8', 'mono8', 'jpeg', 'png')
START_NS = 1_700_000_000 * 1_000_000_000
_SHAPES = ('box', 'disc', 'triangle')


@dataclass(frozen=True)
class SampleSpec:
    """What to generate.

    Attributes:
        frames: Number of frames.
        fps: Frame rate.
        width: Image width.
        height: Image height.
        encoding: One of :data:`SAMPLE_ENCODINGS`; jpeg/png go to ``<topic>/compressed``.
        seed: Random seed; the same seed gives the same bag.
        objects: Number of moving objects (outside difficulty spans).
        difficulty: Difficulty timeline (``easy:0-30,hard:30-60``, seconds) or one preset
            (``easy``, ``medium``, ``hard``); empty: easy, with ``objects`` objects.
        frame_id: Header frame_id.
        battery_hz: Rate of ``sensor_msgs/BatteryState`` on :data:`BATTERY_TOPIC` (a 12 V
            battery discharging at about 1.5 A); 0 writes none.
    """

    frames: int = 300
    fps: float = 10.0
    width: int = 640
    height: int = 480
    encoding: str = 'rgb8'
    seed: int = 0
    objects: int = 4
    difficulty: str = ''
    frame_id: str = 'camera_optical_frame'
    battery_hz: float = 0.0

    def validate(self) -> None:
        """Raise :class:`ConfigError` for values that cannot make a bag."""
        if self.frames < 1 or self.fps <= 0 or self.objects < 0 or self.battery_hz < 0:
            raise ConfigError('need frames >= 1, fps > 0, objects >= 0 and battery_hz >= 0')
        if not (16 <= self.width <= 8192 and 16 <= self.height <= 8192):
            raise ConfigError('width and height must be within 16..8192')
        if self.encoding not in SAMPLE_ENCODINGS:
            raise ConfigError(f'encoding {self.encoding!r} not one of {SAMPLE_ENCODINGS}')
        self.timeline()

    def timeline(self) -> DifficultyTimeline:
        """Return the difficulty over the bag.

        Raises:
            ConfigError: If ``difficulty`` cannot be read.
        """
        base = replace(PRESETS['easy'], objects=self.objects)
        return parse_difficulty(self.difficulty, base)


class Scene:
    """Objects moving in a frame; :meth:`render` draws the next frame and its true boxes.

    Every object and distractor exists from the start; the difficulty in force says how many
    are in view, how large, and how the image is degraded, so a harder span of the timeline
    shows the same world, harder to see.
    """

    def __init__(self, spec: SampleSpec) -> None:
        rng = np.random.default_rng(spec.seed)
        self._spec = spec
        self._timeline = spec.timeline()
        self._short = min(spec.width, spec.height)
        n, m = self._timeline.most()
        self._scale = rng.uniform(0, 1, n)  # where in the difficulty's size range
        self._pos = np.column_stack([rng.uniform(0, spec.width, n),
                                     rng.uniform(0, spec.height, n)])
        self._vel = rng.uniform(-0.4, 0.4, (n, 2)) * self._short
        self._color = rng.integers(40, 255, (n, 3))
        self._shape = [_SHAPES[i % len(_SHAPES)] for i in range(n)]
        self._hidden = rng.uniform(0, 1, n)  # occluded while below the difficulty's share
        self._side = rng.integers(0, 4, n)  # which side the occluder covers
        self._clutter = [(int(rng.integers(0, 3)), rng.uniform(0, spec.width),
                          rng.uniform(0, spec.height), rng.uniform(0.03, 0.2) * self._short,
                          tuple(int(c) for c in rng.integers(40, 255, 3))) for _ in range(m)]
        yy, xx = np.mgrid[0:spec.height, 0:spec.width]
        self._background = np.dstack([(xx * 60 // spec.width), (yy * 60 // spec.height),
                                      np.full_like(xx, 30)]).astype(np.float32)
        coarse = rng.uniform(-1, 1, (max(2, spec.height // 16), max(2, spec.width // 16), 3))
        self._texture = cv2.resize(coarse.astype(np.float32), (spec.width, spec.height))
        self._noise = rng
        self._t = 0.0

    def render(self, dt: float) -> tuple[np.ndarray, tuple[Detection, ...]]:
        """Advance by ``dt`` seconds and draw; returns the BGR image and the true boxes."""
        spec = self._spec
        hard = self._timeline.at(round(self._t, 6))  # 10 x 0.1 s is 1 s, not 0.999...
        self._t += dt
        self._pos += self._vel * dt
        for axis, limit in ((0, spec.width), (1, spec.height)):
            low, high = self._pos[:, axis] < 0, self._pos[:, axis] > limit
            self._vel[low | high, axis] *= -1
            self._pos[:, axis] = self._pos[:, axis].clip(0, limit)
        canvas = self._background + hard.texture * self._texture
        image: np.ndarray = canvas.clip(0, 255).astype(np.uint8)
        for kind, cx, cy, size, bgr in self._clutter[:hard.clutter]:
            _distractor(image, kind, int(cx), int(cy), int(size), bgr)
        truth = []
        sizes = (hard.min_size + self._scale * (hard.max_size - hard.min_size)) * self._short
        for i in range(hard.objects):
            (cx, cy), half = self._pos[i], sizes[i] / 2
            x1, y1 = int(max(0, cx - half)), int(max(0, cy - half))
            x2, y2 = int(min(spec.width - 1, cx + half)), int(min(spec.height - 1, cy + half))
            if x2 - x1 < 2 or y2 - y1 < 2:
                continue
            _object(image, self._shape[i], x1, y1, x2, y2, tuple(int(c) for c in self._color[i]))
            if self._hidden[i] < hard.occlusion:
                _occlude(image, int(self._side[i]), x1, y1, x2, y2)
            truth.append(Detection(float(x1), float(y1), float(x2), float(y2), 1.0,
                                   self._shape[i]))
        if hard.blur > 0:
            image = cv2.GaussianBlur(image, (0, 0), hard.blur)
        if hard.light != 1.0:
            image = cv2.convertScaleAbs(image, alpha=hard.light)
        # Sensor noise does not dim with the light: a dark scene has less signal, same noise.
        noise = self._noise.integers(0, 12, image.shape, dtype=np.uint8)
        return cv2.add(image, noise), tuple(truth)


def _object(image: np.ndarray, shape: str, x1: int, y1: int, x2: int, y2: int,
            bgr: tuple[int, ...]) -> None:
    if shape == 'box':
        cv2.rectangle(image, (x1, y1), (x2, y2), bgr, -1)
    elif shape == 'disc':
        centre = ((x1 + x2) / 2, (y1 + y2) / 2)
        cv2.ellipse(image, (centre, (x2 - x1, y2 - y1), 0), bgr, -1)
    else:
        pts = np.array([[(x1 + x2) // 2, y1], [x1, y2], [x2, y2]], dtype=np.int32)
        cv2.fillPoly(image, [pts], bgr)


def _distractor(image: np.ndarray, kind: int, cx: int, cy: int, size: int,
                bgr: tuple[int, ...]) -> None:
    # Outlines and strokes: edges and colours like the objects', but never filled shapes.
    half = max(2, size // 2)
    if kind == 0:
        cv2.rectangle(image, (cx - half, cy - half), (cx + half, cy + half), bgr, 1)
    elif kind == 1:
        cv2.circle(image, (cx, cy), half, bgr, 2)
    else:
        cv2.line(image, (cx - half, cy + half // 3), (cx + half, cy - half // 3), bgr, 3)


def _occlude(image: np.ndarray, side: int, x1: int, y1: int, x2: int, y2: int) -> None:
    # A grey post over 40 % of the object, from one side.
    w, h = int((x2 - x1) * 0.4), int((y2 - y1) * 0.4)
    box = ((x1, y1, x1 + w, y2), (x2 - w, y1, x2, y2), (x1, y1, x2, y1 + h),
           (x1, y2 - h, x2, y2))[side]
    cv2.rectangle(image, box[:2], box[2:], (90, 90, 90), -1)


class Battery:
    """A 12 V battery discharging at about 1.5 A, its voltage sagging slowly.

    Args:
        seed: Seed of the current's noise.
    """

    def __init__(self, seed: int) -> None:
        self._rng = np.random.default_rng(seed + 1)

    def sample(self, stamp_ns: int) -> tuple[float, float]:
        """Return (voltage, current) at ``stamp_ns``; discharge is negative, as in ROS."""
        elapsed_s = (stamp_ns - START_NS) / 1e9
        return 12.0 - 1e-3 * elapsed_s, -1.5 + 0.05 * float(self._rng.standard_normal())


def write_sample_bag(path: str | Path, spec: SampleSpec, distro: str = 'jazzy') -> int:
    """Write a bag of ``spec.frames`` frames and their ground truth.

    A difficulty timeline is recorded in the bag's metadata (:data:`DIFFICULTY_KEY`), timed
    from the first frame, so that a replay knows when the scenes changed.

    Args:
        path: Bag folder to create.
        spec: What to generate.
        distro: ROS distribution whose message definitions are recorded.

    Returns:
        The number of frames written.

    Raises:
        ConfigError: If the spec is invalid.
        BagError: If the bag cannot be created.
    """
    spec.validate()
    store = make_typestore(distro)
    types = message_types(store)
    compressed = spec.encoding in COMPRESSED_FORMATS
    topic = f'{IMAGE_TOPIC}/compressed' if compressed else IMAGE_TOPIC
    msgtype = 'sensor_msgs/msg/CompressedImage' if compressed else 'sensor_msgs/msg/Image'
    bag = OutputBag(path, store)
    try:
        if spec.difficulty:  # what a replay's accuracy tracking takes its changes from
            bag.set_custom_data(DIFFICULTY_KEY, spec.difficulty)
        bag.add_topic(topic, msgtype, qos('sensor'))
        bag.add_topic(TRUTH_TOPIC, 'vision_msgs/msg/Detection2DArray', qos('result'))
        if spec.battery_hz:
            bag.add_topic(BATTERY_TOPIC, 'sensor_msgs/msg/BatteryState', qos('sensor'))
        battery = Battery(spec.seed)
        battery_period_ns = int(1e9 / spec.battery_hz) if spec.battery_hz else 0
        next_battery = START_NS
        scene = Scene(spec)
        period_ns = int(1e9 / spec.fps)
        for i in range(spec.frames):
            stamp = START_NS + i * period_ns
            while battery_period_ns and next_battery <= stamp:  # in time order with the frames
                bag.write(BATTERY_TOPIC, battery_message(types, next_battery,
                                                         *battery.sample(next_battery)),
                          next_battery)
                next_battery += battery_period_ns
            image, truth = scene.render(1.0 / spec.fps)
            bag.write(topic, frame_to_message(types, image, stamp, spec.frame_id, spec.encoding),
                      stamp)
            bag.write(TRUTH_TOPIC, detections_to_message(
                types, DetectionSet(stamp, spec.frame_id, 'ground_truth', truth)), stamp)
    finally:
        bag.close()
    return spec.frames
