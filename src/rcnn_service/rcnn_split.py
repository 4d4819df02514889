"""Split computing for torchvision Faster R-CNN: a head on the robot, the tail on the service.

A torchvision ``GeneralizedRCNN`` (Faster or Mask R-CNN) with an FPN backbone
(``BackboneWithFPN``) runs ``transform`` (normalise, resize, pad into a batch), the backbone's
``body`` (an ``IntermediateLayerGetter``: the trunk's children in order, some of whose outputs
it returns), its ``fpn`` (those outputs to the feature pyramid), then ``rpn``, ``roi_heads`` and
``transform.postprocess``. :class:`RcnnSplit` cuts that pipeline at its stage boundaries: after
the transform (point 0), after each child of the body (points 1..n: the running tensor and every
earlier output the FPN reads cross), and after the FPN (point n + 1: the feature pyramid).

What crosses is an :class:`RcnnPayload`: the crossing tensors by name, plus the sizes the tail
cannot recompute (padded batch size for the anchors, resized and original image sizes for the
box scaling). :func:`encode_payload` puts it on the wire with
:mod:`adaptive_offload.tensor_codec`; :func:`decode_payload` checks and reverses that.
Head then tail gives, unchanged, what the unsplit model's forward pass gives in eval mode.

Nothing happens at import: torch is imported inside the functions that need it.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Mapping, Sequence, TYPE_CHECKING

from adaptive_offload.errors import ConfigError, ConversionError
from adaptive_offload.tensor_codec import decode_tensor, DEFAULT_MAX_BYTES, encode_tensor

if TYPE_CHECKING:
    import torch

IMAGE = 'image'
"""Name of the crossing tensor of point 0: the transformed, padded batch (N, 3, H, W)."""

# Names the FPN's extra block appends to the pyramid, by class (torchvision's own blocks).
_EXTRA_OUTPUTS = {'LastLevelMaxPool': ('pool',), 'LastLevelP6P7': ('p6', 'p7'),
                  'NoneType': ()}

Size = tuple[int, int]


@dataclass(frozen=True)
class RcnnSplitPoint:
    """Where the model can be cut, and what crosses the cut.

    Attributes:
        index: 0: after the transform; 1..n: after the body's n-th child; n + 1: after the FPN.
        name: ``transform``, ``body.<child>`` or ``fpn``.
        crossing: Names of the tensors that cross, in the order the tail reads them:
            ``image``, ``body.<child>`` (that child's output) or ``fpn.<level>``.
    """

    index: int
    name: str
    crossing: tuple[str, ...]


@dataclass(frozen=True)
class RcnnPayload:
    """What the head sends the tail for one batch.

    Attributes:
        point: Index of the split point.
        tensors: The crossing tensors by name (those of the point's ``crossing``).
        padded_size: (height, width) of the padded batch the transform made: the RPN lays its
            anchors over it.
        image_sizes: Per image, (height, width) after resizing, before padding.
        original_sizes: Per image, (height, width) as given: the boxes come back in it.
    """

    point: int
    tensors: Mapping[str, torch.Tensor]
    padded_size: Size
    image_sizes: tuple[Size, ...]
    original_sizes: tuple[Size, ...]


@dataclass(frozen=True)
class EncodedPayload:
    """An :class:`RcnnPayload` on the wire.

    Attributes:
        meta: JSON-compatible: ``point``, ``padded_size``, ``image_sizes``, ``original_sizes``.
        blobs: Each crossing tensor as :func:`adaptive_offload.tensor_codec.encode_tensor`
            bytes, by name.
    """

    meta: dict[str, Any]
    blobs: dict[str, bytes]

    @property
    def tensor_bytes(self) -> int:
        """Total size of the encoded tensors, headers included."""
        return sum(len(b) for b in self.blobs.values())


class RcnnSplit:
    """Runs a torchvision Faster / Mask R-CNN with an FPN backbone in two parts.

    Args:
        model: A ``GeneralizedRCNN`` whose ``backbone`` has a ``body`` (an
            ``IntermediateLayerGetter``) and an ``fpn``. Put it in eval mode on its device
            first; the runners do not change modes or disable autograd (call them under
            ``torch.no_grad()`` or ``torch.inference_mode()``).

    Attributes:
        points: Every split point, index 0 .. children + 1, in order.

    Raises:
        ConfigError: If ``model`` is not such an R-CNN, or its body returns outputs it does
            not compute.
    """

    def __init__(self, model: Any) -> None:
        for part in ('transform', 'backbone', 'rpn', 'roi_heads'):
            if not hasattr(model, part):
                raise ConfigError(f'{type(model).__name__} is not a torchvision R-CNN (no '
                                  f'{part}): cannot split it')
        backbone = model.backbone
        body: Any = getattr(backbone, 'body', None)
        fpn: Any = getattr(backbone, 'fpn', None)
        returns = getattr(body, 'return_layers', None)
        if fpn is None or not isinstance(returns, dict) or not hasattr(body, 'named_children'):
            raise ConfigError(f'{type(model).__name__} has no FPN backbone (backbone.body '
                              'with return_layers, backbone.fpn): cannot split it')
        self._model = model
        self._children: list[tuple[str, Any]] = list(body.named_children())
        names = [name for name, _ in self._children]
        self._returns = {str(k): str(v) for k, v in returns.items()}
        if not names or names[-1] not in self._returns or not set(self._returns) <= set(names):
            raise ConfigError(f'backbone.body returns {sorted(self._returns)} but runs '
                              f'{names}: the last child must be the last output')
        extra = type(getattr(fpn, 'extra_blocks', None)).__name__
        if extra not in _EXTRA_OUTPUTS:
            raise ConfigError(f'FPN extra block {extra}: its output names are unknown')
        pyramid = [self._returns[n] for n in names if n in self._returns]
        self._pyramid = tuple(pyramid) + _EXTRA_OUTPUTS[extra]
        self.points = (
            (RcnnSplitPoint(0, 'transform', (IMAGE,)),)
            + tuple(RcnnSplitPoint(p, f'body.{names[p - 1]}',
                                   tuple(f'body.{n}' for n in names[:p]
                                         if n in self._returns or n == names[p - 1]))
                    for p in range(1, len(names) + 1))
            + (RcnnSplitPoint(len(names) + 1, 'fpn',
                              tuple(f'fpn.{n}' for n in self._pyramid)),))

    def point(self, k: int) -> RcnnSplitPoint:
        """Return split point ``k``.

        Raises:
            ConfigError: If ``k`` is not within 0 .. children + 1.
        """
        last = len(self.points) - 1
        if isinstance(k, bool) or not isinstance(k, int) or not 0 <= k <= last:
            raise ConfigError(f'split point {k!r} invalid: the backbone body has '
                              f'{last - 1} children, so k must be within 0..{last}')
        return self.points[k]

    def head(self, images: Sequence[torch.Tensor], k: int) -> RcnnPayload:
        """Run the transform and the body up to split point ``k``.

        Args:
            images: CxHxW float tensors scaled to 0..1, as the unsplit model takes them.
            k: Split point.

        Returns:
            The payload for :meth:`tail`.

        Raises:
            ConfigError: If ``k`` is invalid, the model is in training mode, or ``images`` is
                empty or not a list of 3-D tensors.
        """
        self.point(k)
        self._check_eval()
        if not images or any(getattr(im, 'ndim', None) != 3 for im in images):
            raise ConfigError('images must be a non-empty list of CxHxW tensors')
        original = tuple((int(im.shape[-2]), int(im.shape[-1])) for im in images)
        batch, _ = self._model.transform(list(images))
        sizes = tuple((int(h), int(w)) for h, w in batch.image_sizes)
        padded = (int(batch.tensors.shape[-2]), int(batch.tensors.shape[-1]))
        return RcnnPayload(k, self._forward({IMAGE: batch.tensors}, 0, k), padded, sizes,
                           original)

    def middle(self, payload: RcnnPayload, k: int) -> RcnnPayload:
        """Run from a payload's point (:meth:`head`'s) to a later point ``k``, for :meth:`tail`.

        Raises:
            ConfigError: If ``k`` is invalid or not after the payload's point, the model is in
                training mode, or the payload does not hold exactly its point's tensors.
        """
        start, stop = self.point(payload.point), self.point(k)
        if stop.index <= start.index:
            raise ConfigError(f'split point {stop.index} ({stop.name}) is not after the '
                              f"payload's point {start.index} ({start.name})")
        self._check_eval()
        tensors = self._forward(_checked(payload, start), start.index, stop.index)
        return RcnnPayload(k, tensors, payload.padded_size, payload.image_sizes,
                           payload.original_sizes)

    def tail(self, payload: RcnnPayload) -> list[dict[str, torch.Tensor]]:
        """Run the rest of the model from the head's payload.

        Args:
            payload: :meth:`head`'s result (or its decoded copy).

        Returns:
            Per image, the unsplit model's detections (``boxes``, ``scores``, ``labels``, and
            ``masks`` for Mask R-CNN) in the original image's pixels.

        Raises:
            ConfigError: If the point is invalid, the model is in training mode, or the payload
                does not hold exactly the point's tensors, batched as its sizes say.
        """
        import torch
        from torchvision.models.detection.image_list import ImageList

        point = self.point(payload.point)
        self._check_eval()
        tensors = self._forward(_checked(payload, point), point.index, len(self.points) - 1)
        features = OrderedDict((name[len('fpn.'):], tensors[name])
                               for name in self.points[-1].crossing)
        first = next(iter(features.values()))
        # The RPN reads only the padded batch's shape: a zero-stride stand-in allocates nothing.
        stand_in = torch.zeros((), dtype=first.dtype, device=first.device).expand(
            len(payload.image_sizes), 3, *payload.padded_size)
        images = ImageList(stand_in, [tuple(s) for s in payload.image_sizes])
        proposals, _ = self._model.rpn(images, features)
        detections, _ = self._model.roi_heads(features, proposals, images.image_sizes)
        result: list[dict[str, torch.Tensor]] = self._model.transform.postprocess(
            detections, images.image_sizes, [tuple(s) for s in payload.original_sizes])
        return result

    def layout(self, side: int = 256) -> dict[str, tuple[int, int]]:
        """Return the channels and the stride of every tensor that can cross, by name.

        Runs the body and the FPN once on a blank ``side`` x ``side`` batch. For a padded batch
        whose sides are multiples of 32 (torchvision pads so), a tensor of stride ``s`` is
        ``ceil(side / s)`` pixels on each side. Call it as :meth:`head` is called (eval mode,
        no autograd).

        Args:
            side: Side of the blank batch: a multiple of the largest stride.

        Raises:
            ConfigError: If the model is in training mode.
        """
        import torch

        self._check_eval()
        weight = next(iter(self._model.parameters()))
        x = torch.zeros((1, 3, side, side), dtype=weight.dtype, device=weight.device)
        shapes = {IMAGE: tuple(x.shape)}
        body: dict[str, torch.Tensor] = {}
        for name, module in self._children:
            x = module(x)
            shapes[f'body.{name}'] = tuple(x.shape)
            if name in self._returns:
                body[f'body.{name}'] = x
        shapes.update((name, tuple(t.shape)) for name, t in self._fpn(body).items())
        return {name: (int(s[1]), side // int(s[-1])) for name, s in shapes.items()}

    def _forward(self, tensors: Mapping[str, torch.Tensor], start: int,
                 stop: int) -> dict[str, torch.Tensor]:
        """Run from point ``start``'s crossing tensors to point ``stop``'s."""
        n = len(self._children)
        if stop == start or start > n:
            return dict(tensors)
        x = tensors[self.points[start].crossing[-1]]
        body = {} if start == 0 else dict(tensors)
        for i, (name, module) in enumerate(self._children[start:min(stop, n)], start):
            x = module(x)
            if name in self._returns or i == stop - 1:
                body[f'body.{name}'] = x
        if stop > n:
            return self._fpn(body)
        return {name: body[name] for name in self.points[stop].crossing}

    def _fpn(self, body: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        # The FPN reads the body's outputs in the body's order, under their return names.
        ordered = OrderedDict((self._returns[name], body[f'body.{name}'])
                              for name, _ in self._children if name in self._returns)
        pyramid = self._model.backbone.fpn(ordered)
        if tuple(pyramid) != self._pyramid:
            raise ConfigError(f'the FPN returned levels {list(pyramid)}, expected '
                              f'{list(self._pyramid)}')
        return {f'fpn.{name}': value for name, value in pyramid.items()}

    def _check_eval(self) -> None:
        if self._model.training:
            raise ConfigError('the model is in training mode: call model.eval() before '
                              'splitting it')


def encode_payload(payload: RcnnPayload, encoding: str = 'fp16',
                   compression: str = 'zstd') -> EncodedPayload:
    """Encode a payload for the wire (see :mod:`adaptive_offload.tensor_codec`).

    Args:
        payload: :meth:`RcnnSplit.head`'s result (float16/32/64 tensors, any device).
        encoding: Key of ``tensor_codec.ENCODINGS`` (``fp32`` is lossless).
        compression: Key of ``tensor_codec.COMPRESSORS``.

    Returns:
        The metadata and the encoded tensors.

    Raises:
        ConversionError: If a tensor cannot be encoded so.
    """
    blobs = {name: encode_tensor(t.detach().cpu().numpy(), encoding, compression)
             for name, t in payload.tensors.items()}
    return EncodedPayload(payload_meta(payload), blobs)


def payload_meta(payload: RcnnPayload) -> dict[str, Any]:
    """Return a payload's metadata as the wire carries it (JSON-compatible)."""
    return {'point': payload.point, 'padded_size': list(payload.padded_size),
            'image_sizes': [list(s) for s in payload.image_sizes],
            'original_sizes': [list(s) for s in payload.original_sizes]}


def read_meta(meta: Any, what: str = 'split_meta') -> tuple[int, Size, tuple[Size, ...],
                                                            tuple[Size, ...]]:
    """Validate :func:`payload_meta`'s result as parsed from JSON.

    Args:
        meta: The metadata.
        what: The field the errors name.

    Returns:
        The point, the padded size, the image sizes and the original sizes.

    Raises:
        ConversionError: If it is malformed or its sizes disagree.
    """
    if not isinstance(meta, dict) or set(meta) != {'point', 'padded_size', 'image_sizes',
                                                   'original_sizes'}:
        raise ConversionError(what, 'expected point, padded_size, image_sizes and '
                              'original_sizes')
    point = meta['point']
    if isinstance(point, bool) or not isinstance(point, int):
        raise ConversionError(what, f'point {point!r} is not an integer')
    sizes, original = _sizes(meta['image_sizes'], what), _sizes(meta['original_sizes'], what)
    padded = _sizes([meta['padded_size']], what)[0]
    if not sizes or len(sizes) != len(original):
        raise ConversionError(what, f'{len(sizes)} image sizes for {len(original)} '
                              'original sizes (at least one of each)')
    if any(h > padded[0] or w > padded[1] for h, w in sizes):
        raise ConversionError(what, f'an image size exceeds the padded size {padded}')
    return point, padded, sizes, original


def decode_payload(wire: EncodedPayload, device: str | torch.device = 'cpu',
                   max_bytes: int = DEFAULT_MAX_BYTES) -> RcnnPayload:
    """Decode :func:`encode_payload`'s result into a payload for :meth:`RcnnSplit.tail`.

    Args:
        wire: The metadata (as parsed from JSON) and the encoded tensors.
        device: Where the tensors go (the tail model's device).
        max_bytes: Largest decoded tensor accepted, in bytes.

    Returns:
        The payload.

    Raises:
        ConversionError: If the metadata is malformed, or a blob is corrupt, truncated or
            larger than ``max_bytes``.
    """
    import torch

    point, padded, sizes, original = read_meta(wire.meta)
    tensors = {name: torch.from_numpy(decode_tensor(blob, max_bytes)).to(device)
               for name, blob in wire.blobs.items()}
    return RcnnPayload(point, tensors, padded, sizes, original)


def _sizes(value: Any, what: str) -> tuple[Size, ...]:
    if not isinstance(value, (list, tuple)) or not all(
            isinstance(s, (list, tuple)) and len(s) == 2
            and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in s)
            for s in value):
        raise ConversionError(what, f'{value!r} is not a list of (height, width)')
    return tuple((s[0], s[1]) for s in value)


def _checked(payload: RcnnPayload, point: RcnnSplitPoint) -> dict[str, torch.Tensor]:
    """Return the payload's tensors once they match the point and the sizes."""
    tensors = dict(payload.tensors)
    if set(tensors) != set(point.crossing):
        raise ConfigError(f'split point {point.index} needs the tensors {list(point.crossing)}, '
                          f'got {sorted(tensors)}')
    batch = len(payload.image_sizes)
    if not batch or len(payload.original_sizes) != batch:
        raise ConfigError(f'{batch} image sizes for {len(payload.original_sizes)} original '
                          'sizes (at least one of each)')
    for name, tensor in tensors.items():
        if tensor.ndim != 4 or tensor.shape[0] != batch:
            raise ConfigError(f'tensor {name} of shape {tuple(tensor.shape)}: expected '
                              f'(batch {batch}, channels, height, width)')
    image = tensors.get(IMAGE)
    if image is not None and tuple(image.shape[-2:]) != tuple(payload.padded_size):
        raise ConfigError(f'image of {tuple(image.shape[-2:])} pixels, padded size '
                          f'{tuple(payload.padded_size)}')
    return tensors
