"""Synthetic camera bags: moving, labelled objects, with their ground truth."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from adaptive_offload.conversions import (battery_message, COMPRESSED_FORMATS,
                                          detections_to_message, frame_to_message)
from adaptive_offload.datatypes import Detection, DetectionSet
from adaptive_offload.errors import ConfigError
from adaptive_offload.typestore import make_typestore, message_types
import cv2
import numpy as np
from offload_runtime.bagio import OutputBag, qos

IMAGE_TOPIC = '/camera/image_raw'
TRUTH_TOPIC = '/camera/ground_truth'
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
        objects: Number of moving objects.
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


class Scene:
    """Objects bouncing in a frame; :meth:`render` draws the next frame and its boxes."""

    def __init__(self, spec: SampleSpec) -> None:
        rng = np.random.default_rng(spec.seed)
        self._spec = spec
        short = min(spec.width, spec.height)
        n = spec.objects
        self._size = rng.uniform(0.12, 0.3, n) * short
        self._pos = np.column_stack([rng.uniform(0, spec.width, n),
                                     rng.uniform(0, spec.height, n)])
        self._vel = rng.uniform(-0.4, 0.4, (n, 2)) * short
        self._color = rng.integers(40, 255, (n, 3))
        self._shape = [_SHAPES[i % len(_SHAPES)] for i in range(n)]
        yy, xx = np.mgrid[0:spec.height, 0:spec.width]
        self._background = np.dstack([(xx * 60 // spec.width), (yy * 60 // spec.height),
                                      np.full_like(xx, 30)]).astype(np.uint8)
        self._noise = rng

    def render(self, dt: float) -> tuple[np.ndarray, tuple[Detection, ...]]:
        """Advance by ``dt`` seconds and draw; returns the BGR image and the true boxes."""
        spec = self._spec
        self._pos += self._vel * dt
        for axis, limit in ((0, spec.width), (1, spec.height)):
            low, high = self._pos[:, axis] < 0, self._pos[:, axis] > limit
            self._vel[low | high, axis] *= -1
            self._pos[:, axis] = self._pos[:, axis].clip(0, limit)
        image = self._background.copy()
        truth = []
        for (cx, cy), size, color, shape in zip(self._pos, self._size, self._color, self._shape):
            half = size / 2
            x1, y1 = int(max(0, cx - half)), int(max(0, cy - half))
            x2, y2 = int(min(spec.width - 1, cx + half)), int(min(spec.height - 1, cy + half))
            if x2 - x1 < 2 or y2 - y1 < 2:
                continue
            bgr = tuple(int(c) for c in color)
            if shape == 'box':
                cv2.rectangle(image, (x1, y1), (x2, y2), bgr, -1)
            elif shape == 'disc':
                centre = ((x1 + x2) / 2, (y1 + y2) / 2)
                cv2.ellipse(image, (centre, (x2 - x1, y2 - y1), 0), bgr, -1)
            else:
                pts = np.array([[(x1 + x2) // 2, y1], [x1, y2], [x2, y2]], dtype=np.int32)
                cv2.fillPoly(image, [pts], bgr)
            truth.append(Detection(float(x1), float(y1), float(x2), float(y2), 1.0, shape))
        noise = self._noise.integers(0, 12, image.shape, dtype=np.uint8)
        return cv2.add(image, noise), tuple(truth)


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
