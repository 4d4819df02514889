"""Per split point: how long the head and the tail take, and what crosses (``profile``).

What split-computing decisions and ``config/devices.yaml``'s per-block figures are made from.
For every split point of the edge YOLO (:mod:`edge_inference.yolo_split`) or the cloud R-CNN
(:mod:`rcnn_service.rcnn_split`) it measures, on this machine and device, the median time of
the head (frame to crossing tensors) and of the tail (crossing tensors to the raw output), and
the bytes of the crossing tensors per encoding with the time to encode and decode them, beside
the JPEG of the same frame (what offloading the whole frame sends).

Head and tail are timed as they run, not summed from per-layer times: a sum would count each
layer's call overhead, which dominates small layers on a GPU.

With a learned bottleneck (``--bottleneck``) the R-CNN's point it was trained at also gets a
``bottleneck`` encoding: its code's bytes, encoder + quantise + compress and decode times.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
import statistics
import time
from typing import Any, Callable, ContextManager, Iterator, Mapping, Protocol, Sequence

from adaptive_offload.errors import ConfigError
from adaptive_offload.split_option import LEARNED
import cv2
import numpy as np

CODECS = (('fp16', 'zstd'), ('fp16', 'lz4'), ('int8', 'zstd'), ('int8', 'lz4'))
JPEG_QUALITIES = (50, 75, 95)
RCNN_FRAME = (480, 640)  # (height, width): what robots send by default


@dataclass(frozen=True)
class WireCost:
    """One encoding of one split point's crossing tensors.

    Attributes:
        size: Encoded size in bytes, headers included.
        encode_ms: Median time to encode them (device to host copy included).
        decode_ms: Median time to decode them onto the tail's device.
    """

    size: int
    encode_ms: float
    decode_ms: float


@dataclass(frozen=True)
class PointProfile:
    """One split point.

    Attributes:
        index: The split point's index, as the splitter numbers it.
        name: What it cuts after (a layer index for YOLO, a stage name for the R-CNN).
        head_ms: Median time of the head: the frame (as the network takes it) to the crossing
            tensors.
        tail_ms: Median time of the tail: the crossing tensors to the raw output.
        fp32_bytes: Size of the crossing tensors in float32.
        wire: Per encoding (``fp16+zstd``, ...), what the crossing costs on the wire.
    """

    index: int
    name: str
    head_ms: float
    tail_ms: float
    fp32_bytes: int
    wire: Mapping[str, WireCost]


@dataclass(frozen=True)
class ModelProfile:
    """Every split point of one model on one device.

    Attributes:
        model: ``<model>@<input size>``, the key ``config/devices.yaml`` uses.
        family: ``yolo`` or ``rcnn``.
        device: Where it ran, e.g. ``cpu (2 threads)`` or ``cuda (NVIDIA H200)``.
        repeats: Timed runs per figure (medians are reported).
        frame: (height, width) of the frame.
        whole_ms: Median time of the unsplit model.
        jpeg_bytes: The frame as JPEG, by quality.
        points: Every split point, in order.
    """

    model: str
    family: str
    device: str
    repeats: int
    frame: tuple[int, int]
    whole_ms: float
    jpeg_bytes: Mapping[int, int]
    points: tuple[PointProfile, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """Return the profile as plain data (YAML or JSON)."""
        return {
            'model': self.model, 'family': self.family, 'device': self.device,
            'repeats': self.repeats, 'frame': list(self.frame),
            'whole_ms': round(self.whole_ms, 3),
            'jpeg_bytes': {f'q{q}': n for q, n in self.jpeg_bytes.items()},
            'points': [{'index': p.index, 'name': p.name, 'head_ms': round(p.head_ms, 3),
                        'tail_ms': round(p.tail_ms, 3), 'fp32_bytes': p.fp32_bytes,
                        'wire': {k: {'bytes': w.size, 'encode_ms': round(w.encode_ms, 3),
                                     'decode_ms': round(w.decode_ms, 3)}
                                 for k, w in p.wire.items()}}
                       for p in self.points]}


class SplitTarget(Protocol):
    """A model loaded for profiling, with its frame already on its device."""

    name: str
    family: str

    def points(self) -> Sequence[tuple[int, str]]:
        """(index, name) of every split point."""

    def whole(self) -> None:
        """Run the unsplit model on the frame."""

    def head(self, index: int) -> Any:
        """Run the head; returns the crossing (the splitter's own type)."""

    def tail(self, index: int, crossing: Any) -> None:
        """Run the tail from a crossing."""

    def fp32_bytes(self, crossing: Any) -> int:
        """Bytes of the crossing tensors in float32."""

    def encode(self, crossing: Any, encoding: str, compression: str) -> tuple[Any, int]:
        """Encode a crossing; returns the wire form and its size in bytes."""

    def decode(self, wire: Any) -> Any:
        """Decode a wire form onto the tail's device."""


class LearnedWire(Protocol):
    """A learned encoding of one split point's crossing (a bottleneck's code)."""

    name: str
    point: int

    def encode(self, crossing: Any) -> tuple[Any, int]:
        """Encode a crossing of :attr:`point`; returns the wire form and its size in bytes."""

    def decode(self, wire: Any) -> Any:
        """Decode a wire form into a crossing on the tail's device."""


@dataclass(frozen=True)
class ProfileOptions:
    """How to profile.

    Attributes:
        device: ``cpu`` or ``cuda[:N]``.
        imgsz: YOLO: the square network input; R-CNN: the longest side it resizes to (0: the
            architecture's own).
        repeats: Timed runs per figure, after one warm-up run.
        threads: torch intra-op threads; 0 keeps torch's default.
        seed: Seed of the generated scene that is the frame.
        codecs: (encoding, compression) pairs to measure.
        bottleneck: A learned bottleneck file (R-CNN only) to measure at its point as the
            ``bottleneck`` encoding; None: none.
    """

    device: str = 'cpu'
    imgsz: int = 640
    repeats: int = 5
    threads: int = 0
    seed: int = 3
    codecs: tuple[tuple[str, str], ...] = CODECS
    bottleneck: Path | None = None

    def __post_init__(self) -> None:
        if self.repeats < 1:
            raise ConfigError(f'repeats {self.repeats}: at least 1')
        if self.imgsz < 0 or self.threads < 0:
            raise ConfigError('imgsz and threads must not be negative')


def family_of(model: str) -> str:
    """``rcnn`` for an R-CNN architecture name, ``yolo`` for an ultralytics ``.pt`` file.

    Raises:
        ConfigError: For anything else.
    """
    from rcnn_service.rcnn_detector import ARCHITECTURES

    if model in ARCHITECTURES:
        return 'rcnn'
    if model.endswith('.pt'):
        if not Path(model).is_file():
            raise ConfigError(f'model file {model!r} not found')
        return 'yolo'
    raise ConfigError(f'cannot profile {model!r}: give an ultralytics .pt file or one of the '
                      f'R-CNN architectures {", ".join(sorted(ARCHITECTURES))}')


def profile_model(target: SplitTarget, options: ProfileOptions, frame: np.ndarray,
                  sync: Callable[[], None] = lambda: None,
                  clock: Callable[[], float] = time.perf_counter,
                  log: Callable[[str], None] = lambda line: None,
                  learned: Sequence[LearnedWire] = ()) -> ModelProfile:
    """Time every split point of a loaded model.

    Args:
        target: The model, as :data:`LOADERS` loads it.
        options: How many runs, and which encodings.
        frame: The BGR frame the target was given (for the JPEG sizes).
        sync: Waits for the device (``torch.cuda.synchronize`` on a GPU), so the clock reads
            finished work.
        clock: Seconds, monotonic.
        log: Receives one line per split point.
        learned: Learned encodings, each measured at its own point as the codecs are.

    Returns:
        The profile.

    Raises:
        ConfigError: If a learned encoding's point is not one of the target's.
    """
    def median_ms(run: Callable[[], Any]) -> float:
        run()  # warm-up: allocator, cudnn autotuning, lazy modules
        times = []
        for _ in range(options.repeats):
            sync()
            start = clock()
            run()
            sync()
            times.append((clock() - start) * 1000.0)
        return float(statistics.median(times))

    indices = [index for index, _ in target.points()]
    for extra in (e for e in learned if e.point not in indices):
        raise ConfigError(f'{extra.name} is for split point {extra.point}, which '
                          f'{target.name} does not have ({indices})')
    whole = median_ms(target.whole)
    points = []
    for index, name in target.points():
        head_ms = median_ms(lambda: target.head(index))
        crossing = target.head(index)
        tail_ms = median_ms(lambda: target.tail(index, crossing))
        wire = {}
        for encoding, compression in options.codecs:
            encoded, size = target.encode(crossing, encoding, compression)
            wire[f'{encoding}+{compression}'] = WireCost(
                size, median_ms(lambda: target.encode(crossing, encoding, compression)),
                median_ms(lambda: target.decode(encoded)))
        for extra in (e for e in learned if e.point == index):
            encoded, size = extra.encode(crossing)
            wire[extra.name] = WireCost(size, median_ms(lambda: extra.encode(crossing)),
                                        median_ms(lambda: extra.decode(encoded)))
        points.append(PointProfile(index, name, head_ms, tail_ms,
                                   target.fp32_bytes(crossing), wire))
        log(f'{target.name} point {index} ({name}): head {head_ms:.2f} ms, '
            f'tail {tail_ms:.2f} ms')
    return ModelProfile(target.name, target.family, '', options.repeats,
                        (int(frame.shape[0]), int(frame.shape[1])), whole,
                        {q: jpeg_bytes(frame, q) for q in JPEG_QUALITIES}, tuple(points))


def jpeg_bytes(image: np.ndarray, quality: int) -> int:
    """Size of a BGR image as a JPEG of ``quality``."""
    ok, buf = cv2.imencode('.jpg', image, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise ConfigError('JPEG encoding of the frame failed')
    return int(buf.size)


def format_table(profile: ModelProfile) -> str:
    """Format the profile as a text table (payloads in KiB per encoding)."""
    jpeg = ' / '.join(f'{n / 1024:.1f}' for n in profile.jpeg_bytes.values())
    qualities = '/'.join(str(q) for q in profile.jpeg_bytes)
    codecs = list(profile.points[0].wire) if profile.points else []
    extra = [f'{k} at {p.name}: {w.size / 1024:.1f} KiB, encode {w.encode_ms:.2f} ms, decode '
             f'{w.decode_ms:.2f} ms' for p in profile.points for k, w in p.wire.items()
             if k not in codecs]
    lines = [f'{profile.model} on {profile.device}: whole model {profile.whole_ms:.2f} ms; '
             f'frame {profile.frame[1]}x{profile.frame[0]}, JPEG q{qualities} {jpeg} KiB; '
             f'medians of {profile.repeats} runs',
             f'{"point":>5} {"after":<14} {"head ms":>9} {"tail ms":>9} {"fp32 KiB":>9} '
             + ' '.join(f'{c:>10}' for c in codecs) + '  (KiB)']
    for p in profile.points:
        lines.append(f'{p.index:>5} {p.name:<14} {p.head_ms:9.2f} {p.tail_ms:9.2f} '
                     f'{p.fp32_bytes / 1024:9.1f} '
                     + ' '.join(f'{p.wire[c].size / 1024:10.1f}' for c in codecs))
    return '\n'.join(lines + extra)


def run_profile(model: str, checkpoint: str | None, options: ProfileOptions,
                log: Callable[[str], None] = lambda line: None) -> ModelProfile:
    """Load a model, render a frame and profile every split point.

    Args:
        model: An R-CNN architecture name or an ultralytics ``.pt`` file.
        checkpoint: R-CNN weights (None: the shipped ones for the compact model, else random
            weights, which time the same as trained ones).
        options: Device, input size, repeats, encodings.
        log: Receives progress lines.

    Returns:
        The profile, with ``device`` naming where it ran.

    Raises:
        ConfigError: For an unknown model, or a device that is not there; for a bottleneck
            file that is missing, not one, or not trained for these weights, or with YOLO.
    """
    import torch

    if options.threads:
        torch.set_num_threads(options.threads)
    if options.device.startswith('cuda') and not torch.cuda.is_available():
        raise ConfigError(f'device {options.device!r} requested but CUDA is not available')
    family = family_of(model)
    with LOADERS[family](model, checkpoint, options) as (target, frame, learned):
        on_gpu = options.device.startswith('cuda')
        sync = torch.cuda.synchronize if on_gpu else (lambda: None)
        with torch.inference_mode():
            profile = profile_model(target, options, frame, sync=sync, log=log,
                                    learned=learned)
    where = (f'cuda ({torch.cuda.get_device_name(torch.device(options.device))})' if on_gpu
             else f'cpu ({torch.get_num_threads()} threads)')
    return replace(profile, device=where)


Loaded = tuple[SplitTarget, np.ndarray, Sequence[LearnedWire]]
"""A model loaded for profiling: the target, its frame and the learned encodings to measure."""


class BottleneckWire:
    """A learned bottleneck (``rcnn_service.bottleneck``) as a :class:`LearnedWire`.

    Args:
        bottleneck: The bottleneck, checked against the model.
        device: The tail's device (its decoder runs there).
    """

    name = LEARNED

    def __init__(self, bottleneck: Any, device: str) -> None:
        bottleneck.net.to(device)
        self._bottleneck, self._device, self.point = bottleneck, device, int(bottleneck.spec.point)

    def encode(self, crossing: Any) -> tuple[Any, int]:
        """Run the encoder, quantise and compress; returns the payload and its tensor bytes."""
        wire = self._bottleneck.encode(crossing)
        return wire, int(wire.tensor_bytes)  # as RcnnTarget counts the codecs' payloads

    def decode(self, wire: Any) -> Any:
        """Decompress and run the decoder onto the tail's device."""
        return self._bottleneck.decode(wire, self._device)


@contextmanager
def _rcnn(arch: str, checkpoint: str | None, options: ProfileOptions) -> Iterator[Loaded]:
    from offload_runtime.split_targets import RcnnTarget
    from offload_runtime.train_cli import checkpoint_for
    from rcnn_service.bottleneck import load_bottleneck
    from rcnn_service.rcnn_detector import RcnnDetector

    detector = RcnnDetector(arch, checkpoint_for(arch, checkpoint), options.device,
                            threads=options.threads, input_size=options.imgsz)
    learned = [] if options.bottleneck is None else [BottleneckWire(
        load_bottleneck(options.bottleneck, detector.model, arch), options.device)]
    frame = _scene(RCNN_FRAME[1], RCNN_FRAME[0], options.seed)
    size = options.imgsz or detector.model.transform.min_size[0]
    yield RcnnTarget(f'{arch}@{size}', detector.model, frame, options.device), frame, learned


@contextmanager
def _yolo(path: str, checkpoint: str | None, options: ProfileOptions) -> Iterator[Loaded]:
    from edge_inference.ultralytics_backend import prepare_offline
    from offload_runtime.split_targets import YoloTarget

    if checkpoint is not None:
        raise ConfigError('a YOLO model is its own weights file: give no checkpoint')
    if options.bottleneck is not None:
        raise ConfigError('a learned bottleneck is for the cloud R-CNN, not a YOLO model')
    prepare_offline()  # as the edge node does: never download
    from ultralytics import YOLO

    size = options.imgsz or 640
    frame = _scene(size, size, options.seed)
    yield YoloTarget(f'{Path(path).stem}@{size}', YOLO(path), frame, options.device), frame, ()


# How each model family is loaded for profiling: (model, checkpoint, options) to a context
# that holds the loaded target, its frame and the learned encodings to measure.
LOADERS: dict[str, Callable[[str, str | None, ProfileOptions], ContextManager[Loaded]]] = {
    'rcnn': _rcnn, 'yolo': _yolo}


def _scene(width: int, height: int, seed: int) -> np.ndarray:
    from offload_runtime.sample_bag import SampleSpec, Scene

    image, _ = Scene(SampleSpec(width=width, height=height, seed=seed)).render(0.1)
    return image
