"""A learned bottleneck at one split point of the cloud R-CNN: fewer bytes across the link.

A naive split of the compact Faster R-CNN sends one of the backbone's feature maps: at the
cheapest point (after ``body.3``, 24 channels at stride 8) about 75-88 KiB per 640x480 frame in
int8+zstd, several times the frame's JPEG. Split-computing work on R-CNN adds a small learned
autoencoder at the cut: an encoder on the robot squeezes the crossing tensor to a few channels
(optionally at half its resolution), that code crosses as int8 (one scale per channel) + zstd,
and a decoder on the service restores the crossing tensor for the unchanged tail. The detector
stays frozen; the bottleneck is trained by feature distillation
(:mod:`offload_runtime.bottleneck_training`).

Only points where exactly one tensor crosses are supported (after the transform and after the
body's children up to the first one the FPN reads); later points send several.

A bottleneck file is ``torch.save`` of plain data: ``{'format', 'version', 'spec': {...},
'state_dict'}`` (fp16 weights), read back with ``torch.load(..., weights_only=True)``. Its spec
names the detector architecture, the split point and the sha256 digest of the detector weights
it was trained against; :meth:`LearnedBottleneck.check` refuses any other.

Nothing happens at import: torch is imported inside the functions that need it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
import math
from pathlib import Path
from typing import Any, TYPE_CHECKING

from adaptive_offload.errors import ConfigError, ConversionError
from adaptive_offload.split_wire import weights_digest
from adaptive_offload.tensor_codec import decode_tensor, DEFAULT_MAX_BYTES, encode_tensor
from rcnn_service.rcnn_split import (EncodedPayload, payload_meta, RcnnPayload, RcnnSplit,
                                     read_meta)

if TYPE_CHECKING:
    import torch

FORMAT = 'adaptive-offload-rcnn-bottleneck'
FORMAT_VERSION = 1
BLOB = 'bottleneck'
"""Name of the one blob an encoded bottleneck payload carries."""
ENCODING, COMPRESSION = 'int8', 'zstd'


@dataclass(frozen=True)
class BottleneckSpec:
    """What a bottleneck was built and trained for.

    Attributes:
        arch: Detector architecture (a key of ``rcnn_detector.ARCHITECTURES``).
        point: Split point index (one tensor crosses it).
        crossing: Name of the crossing tensor (``body.3``...).
        channels: Channels of the crossing tensor.
        stride: Its stride in pixels of the padded batch (its size is ``ceil(padded / stride)``).
        width: Channels of the code that crosses the link.
        reduction: Spatial reduction of the code against the crossing tensor (1 or 2).
        hidden: Channels of the encoder's and decoder's hidden layers.
        detector: sha256 hex digest of the detector weights
            (:func:`adaptive_offload.split_wire.weights_digest`, as the tail model publishes).
    """

    arch: str
    point: int
    crossing: str
    channels: int
    stride: int
    width: int
    reduction: int
    hidden: int
    detector: str

    def validate(self) -> None:
        """Raise :class:`ConfigError` for a spec no bottleneck can be built from."""
        ints = (self.point, self.channels, self.stride, self.width, self.reduction, self.hidden)
        if any(isinstance(v, bool) or not isinstance(v, int) for v in ints):
            raise ConfigError(f'bottleneck spec {asdict(self)}: sizes must be integers')
        if min(self.channels, self.stride, self.width, self.hidden) < 1 or self.point < 0:
            raise ConfigError('bottleneck channels, stride, width and hidden must be >= 1')
        if self.reduction not in (1, 2):
            raise ConfigError(f'bottleneck reduction {self.reduction}: must be 1 or 2')
        if not all(isinstance(v, str) and v for v in (self.arch, self.crossing, self.detector)):
            raise ConfigError('bottleneck arch, crossing and detector must be non-empty strings')


def build_networks(spec: BottleneckSpec) -> Any:
    """Return ``torch.nn.ModuleDict(encoder=..., decoder=...)`` for ``spec`` (random weights).

    The encoder is conv3x3 (stride ``reduction``) + ReLU + conv1x1 to ``width`` channels; the
    decoder is conv3x3 + ReLU, a nearest upsampling by ``reduction``, conv3x3 + ReLU and a
    linear conv1x1 back to ``channels`` (the crossing tensors of MobileNet stages are linear,
    signed).

    Raises:
        ConfigError: For an invalid spec.
    """
    from torch import nn

    spec.validate()
    c, h, w, r = spec.channels, spec.hidden, spec.width, spec.reduction
    encoder = nn.Sequential(nn.Conv2d(c, h, 3, stride=r, padding=1), nn.ReLU(),
                            nn.Conv2d(h, w, 1))
    decoder = nn.Sequential(nn.Conv2d(w, h, 3, padding=1), nn.ReLU(),
                            nn.Upsample(scale_factor=r, mode='nearest') if r > 1
                            else nn.Identity(),
                            nn.Conv2d(h, h, 3, padding=1), nn.ReLU(), nn.Conv2d(h, c, 1))
    return nn.ModuleDict({'encoder': encoder, 'decoder': decoder})


def single_crossing(split: RcnnSplit, point: int) -> str:
    """Return the one tensor that crosses ``point``.

    Raises:
        ConfigError: If the point is invalid or several tensors cross it.
    """
    crossing = split.point(point).crossing
    if len(crossing) != 1:
        singles = [p.index for p in split.points if len(p.crossing) == 1]
        raise ConfigError(f'split point {point} sends {len(crossing)} tensors '
                          f'({", ".join(crossing)}); a bottleneck needs a point where one '
                          f'crosses: {singles}')
    return crossing[0]


class LearnedBottleneck:
    """An encoder for the robot and a decoder for the service, around one split point.

    Call :meth:`encode` and :meth:`decode` as :meth:`RcnnSplit.head` and
    :meth:`RcnnSplit.tail` are called: eval mode, under ``torch.no_grad()`` or
    ``torch.inference_mode()``.

    Args:
        spec: What it is for.
        net: Its networks (:func:`build_networks`); None builds them with random weights.

    Attributes:
        spec: What it is for.
        net: ``ModuleDict(encoder, decoder)`` (float32, CPU until moved).

    Raises:
        ConfigError: For an invalid spec.
    """

    def __init__(self, spec: BottleneckSpec, net: Any = None) -> None:
        spec.validate()
        self.spec = spec
        self.net = build_networks(spec) if net is None else net

    @classmethod
    def for_model(cls, model: Any, arch: str, point: int, width: int, reduction: int = 2,
                  hidden: int = 48) -> LearnedBottleneck:
        """Build an untrained bottleneck for ``model`` (eval mode) at ``point``.

        Raises:
            ConfigError: If the point is invalid or several tensors cross it, or the sizes
                are invalid.
        """
        import torch

        split = RcnnSplit(model)
        name = single_crossing(split, point)
        with torch.no_grad():
            channels, stride = split.layout()[name]
        return cls(BottleneckSpec(arch, point, name, channels, stride, width, reduction,
                                  hidden, weights_digest(model.state_dict())))

    def check(self, model: Any, arch: str, point: int | None = None) -> None:
        """Refuse to run with a detector or at a point it was not trained for.

        Args:
            model: The detector the split runs.
            arch: Its architecture.
            point: The split point the caller means to use; None: the bottleneck's own.

        Raises:
            ConfigError: If the architecture, the point or the weights differ.
        """
        spec = self.spec
        if arch != spec.arch:
            raise ConfigError(f'bottleneck trained for {spec.arch}, not {arch}')
        if point is not None and point != spec.point:
            raise ConfigError(f'bottleneck trained for split point {spec.point} '
                              f'({spec.crossing}), not {point}')
        digest = weights_digest(model.state_dict())
        if digest != spec.detector:
            raise ConfigError(f'bottleneck trained against other {arch} weights (digest '
                              f'{spec.detector[:12]}, these are {digest[:12]}): retrain it '
                              'for them')

    def compress(self, x: torch.Tensor) -> torch.Tensor:
        """Return the code of crossing tensors ``x`` (N, channels, H, W), before quantisation."""
        if x.ndim != 4 or x.shape[1] != self.spec.channels:
            raise ConfigError(f'{self.spec.crossing} of shape {tuple(x.shape)}: expected '
                              f'(batch, {self.spec.channels}, height, width)')
        code: torch.Tensor = self.net['encoder'](x)
        return code

    def restore(self, code: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """Return the crossing tensors of ``size`` (height, width) that ``code`` stands for."""
        if code.ndim != 4 or code.shape[1] != self.spec.width:
            raise ConfigError(f'code of shape {tuple(code.shape)}: expected '
                              f'(batch, {self.spec.width}, height, width)')
        out: torch.Tensor = self.net['decoder'](code)
        if out.shape[-2] < size[0] or out.shape[-1] < size[1]:
            raise ConfigError(f'a code of {tuple(code.shape[-2:])} cannot restore '
                              f'{self.spec.crossing} of {size}')
        # Stride-2 codes round odd sides up: the restored map is cropped back to the true size.
        return out[..., :size[0], :size[1]]

    def crossing_size(self, padded: tuple[int, int]) -> tuple[int, int]:
        """Return (height, width) of the crossing tensor of a padded batch of ``padded``."""
        return (math.ceil(padded[0] / self.spec.stride), math.ceil(padded[1] / self.spec.stride))

    def encode(self, payload: RcnnPayload) -> EncodedPayload:
        """Encode a head's payload for the wire: the code as int8 + zstd, plus the sizes.

        Args:
            payload: :meth:`RcnnSplit.head`'s result at the bottleneck's point.

        Returns:
            The metadata (as :func:`rcnn_split.encode_payload` writes it) and one blob,
            :data:`BLOB`.

        Raises:
            ConfigError: If the payload is of another point or shape.
        """
        if payload.point != self.spec.point or set(payload.tensors) != {self.spec.crossing}:
            raise ConfigError(f'bottleneck for point {self.spec.point} ({self.spec.crossing}) '
                              f'got a payload of point {payload.point} '
                              f'({", ".join(payload.tensors)})')
        code = self.compress(payload.tensors[self.spec.crossing])
        blob = encode_tensor(code.detach().cpu().float().numpy(), ENCODING, COMPRESSION)
        return EncodedPayload(payload_meta(payload), {BLOB: blob})

    def decode(self, wire: EncodedPayload, device: str | torch.device = 'cpu',
               max_bytes: int = DEFAULT_MAX_BYTES) -> RcnnPayload:
        """Decode :meth:`encode`'s result into a payload for :meth:`RcnnSplit.tail`.

        The decoder runs on the device the networks are on; the restored tensor goes to
        ``device``.

        Raises:
            ConversionError: If the metadata or the blob is malformed, corrupt or too large,
                or the code's shape does not fit the sizes.
            ConfigError: If the payload is of another split point.
        """
        import torch

        if set(wire.blobs) != {BLOB}:
            raise ConversionError('bottleneck_meta', f'expected one blob {BLOB!r}, got '
                                  f'{sorted(wire.blobs)}')
        point, padded, sizes, original = read_meta(wire.meta, 'bottleneck_meta')
        if point != self.spec.point:
            raise ConfigError(f'bottleneck for point {self.spec.point} got a payload of point '
                              f'{point!r}')
        target = self.crossing_size(padded)
        code_size = tuple(math.ceil(s / self.spec.reduction) for s in target)
        code = torch.from_numpy(decode_tensor(wire.blobs[BLOB], max_bytes))
        expected = (len(sizes), self.spec.width, *code_size)
        if tuple(code.shape) != expected:
            raise ConversionError('bottleneck_shape', f'code of shape {tuple(code.shape)}, '
                                  f'expected {expected} for a padded batch of {padded}')
        weight = next(iter(self.net.parameters()))
        restored = self.restore(code.to(weight.device, weight.dtype), target).to(device)
        return RcnnPayload(self.spec.point, {self.spec.crossing: restored}, padded, sizes,
                           original)

    def save(self, path: Path) -> Path:
        """Write the bottleneck (fp16 weights, plain data) to ``path``; return it."""
        import torch

        state = {k: (v.detach().cpu().half() if v.is_floating_point() else v.detach().cpu())
                 for k, v in self.net.state_dict().items()}
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save({'format': FORMAT, 'version': FORMAT_VERSION, 'spec': asdict(self.spec),
                    'state_dict': state}, path)
        return path


def load_bottleneck(path: Path | str, model: Any = None, arch: str = '',
                    point: int | None = None) -> LearnedBottleneck:
    """Read a bottleneck file; with ``model``, refuse it unless it was trained for it.

    Args:
        path: A file :meth:`LearnedBottleneck.save` wrote.
        model: The detector it will run with; None skips the check (inspecting a file).
        arch: The detector's architecture (with ``model``).
        point: The split point the caller means to use; None: the file's own.

    Returns:
        The bottleneck in eval mode, float32, on the CPU.

    Raises:
        ConfigError: If the file is missing, unreadable, not a bottleneck, of another format
            version, or (with ``model``) trained for another architecture, point or weights.
    """
    import torch

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f'bottleneck file {str(path)!r} not found')
    try:
        data = torch.load(path, map_location='cpu', weights_only=True)
    except Exception as err:  # torch raises many types for a file that is not a checkpoint
        raise ConfigError(f'cannot read bottleneck file {str(path)!r}: {err}') from err
    if not isinstance(data, dict) or data.get('format') != FORMAT:
        raise ConfigError(f'{str(path)!r} is not a bottleneck file (no format {FORMAT!r})')
    if data.get('version') != FORMAT_VERSION:
        raise ConfigError(f'{str(path)!r}: bottleneck format version {data.get("version")!r}, '
                          f'this code reads {FORMAT_VERSION}')
    raw, state = data.get('spec'), data.get('state_dict')
    fields = set(BottleneckSpec.__dataclass_fields__)
    if not isinstance(raw, dict) or set(raw) != fields or not isinstance(state, dict):
        raise ConfigError(f'{str(path)!r}: spec must hold {sorted(fields)} and state_dict '
                          'a dict')
    spec = BottleneckSpec(**raw)
    net = build_networks(spec)
    try:
        net.load_state_dict({k: v.float() for k, v in state.items()})
    except (RuntimeError, AttributeError) as err:
        raise ConfigError(f'{str(path)!r}: weights do not fit its spec: {err}') from err
    bottleneck = LearnedBottleneck(spec, net.eval())
    if model is not None:
        bottleneck.check(model, arch, point)
    return bottleneck
