"""Split computing for ultralytics YOLO: layers [0, k) on one tier, [k, end) on another.

An ultralytics model is a flat layer list: layer ``i`` reads the previous layer's output
(``f == -1``) or the outputs of earlier layers (``f``, an index or a list of them), and the model
keeps exactly the outputs that a later layer reads (``save``). Cutting the list at ``k`` must
therefore carry every output of a layer below ``k`` that a layer at or above ``k`` reads, not only
layer ``k - 1``'s: :class:`YoloSplit` works those sets out, runs the head (image to crossing
tensors) and the tail (crossing tensors to the model's raw output), and gives, unchanged, what
the unsplit forward pass gives (``BaseModel._predict_once``).

Nothing happens at import: torch is imported inside the functions that need it, ultralytics never.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, TYPE_CHECKING

from adaptive_offload.errors import ConfigError
from adaptive_offload.tensor_codec import decode_tensor, DEFAULT_MAX_BYTES, encode_tensor

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class SplitPoint:
    """Where a model can be cut, and what must cross the cut.

    Attributes:
        index: ``k``: the head runs layers ``[0, k)``, the tail ``[k, end)``.
        crossing: Ascending indices of the head's layers whose outputs the tail reads.
    """

    index: int
    crossing: tuple[int, ...]


@dataclass(frozen=True)
class _Wiring:
    """One layer's inputs: ``sources`` resolved to layer indices (``-1`` for the image)."""

    previous: bool  # f == -1: the input is the previous layer's output (or the image)
    as_list: bool  # f is a list: the layer takes a list of tensors
    sources: tuple[int, ...]


class YoloSplit:
    """Runs an ultralytics model in two parts.

    Args:
        model: An ``ultralytics.YOLO``, or its ``model`` (a ``DetectionModel`` or any
            ``BaseModel``): something that holds a layer list (``model``, each layer with ``f``
            and ``i``) and ``save``. Put it in eval mode on its device first; the runners do not
            change modes or disable autograd (call them under ``torch.no_grad()``).

    Attributes:
        points: Every split point, ``k`` = 1 .. layers - 1, in order.

    Raises:
        ConfigError: If ``model`` has no layer list, or its wiring is inconsistent (a layer
            reads a later one, or an output that ``save`` does not keep).
    """

    def __init__(self, model: Any) -> None:
        self._layers, save = _layer_list(model)
        self._wiring = tuple(_wiring(layer, i, save) for i, layer in enumerate(self._layers))
        # Outputs read other than as "the previous output": the ones a run must hold on to.
        self._held = frozenset(s for w in self._wiring if not w.previous for s in w.sources)
        n = len(self._layers)
        self.points = tuple(
            SplitPoint(k, tuple(sorted({s for w in self._wiring[k:] for s in w.sources
                                        if s < k})))
            for k in range(1, n))

    @property
    def layer_count(self) -> int:
        """Number of layers of the model."""
        return len(self._layers)

    def point(self, k: int) -> SplitPoint:
        """Return the split point that runs layers ``[0, k)`` on the head.

        Raises:
            ConfigError: If ``k`` is not within 1 .. layers - 1.
        """
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k < len(self._layers):
            raise ConfigError(f'split point {k!r} invalid: the model has {len(self._layers)} '
                              f'layers, so k must be within 1..{len(self._layers) - 1}')
        return self.points[k - 1]

    def head(self, image: torch.Tensor, k: int) -> dict[int, torch.Tensor]:
        """Run layers ``[0, k)``.

        Args:
            image: The network input, as the unsplit model takes it (NCHW, scaled to 0..1).
            k: Split point.

        Returns:
            The crossing tensors of :meth:`point` ``(k)``, keyed by the layer that output them.

        Raises:
            ConfigError: If ``k`` is invalid, or a crossing output is not a single tensor.
        """
        point = self.point(k)
        outputs = self._run(0, k, image, {}, frozenset(point.crossing))
        crossing = {j: outputs[j] for j in point.crossing}
        for j, value in crossing.items():
            if not _is_tensor(value):
                raise ConfigError(f'split point {k} invalid: layer {j} outputs '
                                  f'{type(value).__name__}, not a tensor')
        return crossing

    def tail(self, crossing: Mapping[int, torch.Tensor], k: int) -> Any:
        """Run layers ``[k, end)`` from the head's crossing tensors.

        Args:
            crossing: :meth:`head`'s result (or its decoded copy), keyed by layer index.
            k: Split point; the same as the head's.

        Returns:
            The last layer's output, as the unsplit model's forward pass returns it.

        Raises:
            ConfigError: If ``k`` is invalid or ``crossing`` does not hold exactly its tensors.
        """
        point = self.point(k)
        if set(crossing) != set(point.crossing):
            raise ConfigError(f'split point {k} needs the outputs of layers '
                              f'{list(point.crossing)}, got {sorted(crossing)}')
        outputs = self._run(k, len(self._layers), crossing.get(k - 1), crossing, frozenset())
        return outputs[len(self._layers) - 1]

    def _run(self, start: int, stop: int, x: Any, known: Mapping[int, Any],
             keep: frozenset[int]) -> dict[int, Any]:
        # x is always the previous layer's output (the image before layer 0); outputs holds what
        # a later layer reads, what the caller keeps, and the last output.
        outputs = dict(known)
        for i in range(start, stop):
            wiring = self._wiring[i]
            if not wiring.previous:
                values = [x if s == i - 1 else outputs[s] for s in wiring.sources]
                x = values if wiring.as_list else values[0]
            x = self._layers[i](x)
            if i in self._held or i in keep or i == stop - 1:
                outputs[i] = x
        return outputs


def encode_crossing(tensors: Mapping[int, torch.Tensor], encoding: str = 'fp16',
                    compression: str = 'zstd') -> dict[int, bytes]:
    """Encode crossing tensors for the wire (see :mod:`adaptive_offload.tensor_codec`).

    Args:
        tensors: :meth:`YoloSplit.head`'s result (float16/32/64 tensors, any device).
        encoding: Key of ``tensor_codec.ENCODINGS`` (``fp32`` is lossless).
        compression: Key of ``tensor_codec.COMPRESSORS``.

    Returns:
        The encoded tensors, by layer index.

    Raises:
        ConversionError: If a tensor cannot be encoded so.
    """
    return {j: encode_tensor(t.detach().cpu().numpy(), encoding, compression)
            for j, t in tensors.items()}


def decode_crossing(blobs: Mapping[int, bytes], device: str | torch.device = 'cpu',
                    max_bytes: int = DEFAULT_MAX_BYTES) -> dict[int, torch.Tensor]:
    """Decode :func:`encode_crossing`'s result into tensors for :meth:`YoloSplit.tail`.

    Args:
        blobs: Encoded tensors by layer index.
        device: Where the tensors go (the tail model's device).
        max_bytes: Largest decoded tensor accepted, in bytes.

    Returns:
        The tensors, by layer index.

    Raises:
        ConversionError: If a blob is corrupt, truncated or larger than ``max_bytes``.
    """
    import torch

    return {j: torch.from_numpy(decode_tensor(blob, max_bytes)).to(device)
            for j, blob in blobs.items()}


def _layer_list(model: Any) -> tuple[list[Any], frozenset[int]]:
    # ultralytics.YOLO -> DetectionModel -> Sequential: follow `.model` until a layer list
    # appears beside a `save` list (YOLO itself has a save() method, not a list).
    candidate = model
    for _ in range(3):
        layers: Any = getattr(candidate, 'model', None)
        save = getattr(candidate, 'save', None)
        if _is_layer_list(layers) and isinstance(save, (list, tuple, set, frozenset)):
            if not all(isinstance(s, int) for s in save):
                raise ConfigError(f'{type(candidate).__name__}.save must hold layer indices')
            return list(layers), frozenset(save)
        if layers is None:
            break
        candidate = layers
    raise ConfigError(f'{type(model).__name__} has no ultralytics layer list (a `model` of '
                      'layers with `f` and `i`, and a `save` list): cannot split it')


def _is_layer_list(layers: Any) -> bool:
    try:
        items = list(layers)
    except TypeError:
        return False
    return bool(items) and all(hasattr(m, 'f') and hasattr(m, 'i') for m in items)


def _wiring(layer: Any, i: int, save: frozenset[int]) -> _Wiring:
    f = layer.f
    if layer.i != i:
        raise ConfigError(f'layer {i} says it is layer {layer.i!r}: the layer list is not flat')
    as_list = isinstance(f, (list, tuple))
    refs = list(f) if as_list else [f]
    if not refs or not all(isinstance(j, int) and not isinstance(j, bool) for j in refs):
        raise ConfigError(f'layer {i} reads {f!r}: expected -1, a layer index or a list of them')
    sources = []
    for j in refs:
        # As ultralytics indexes its list of outputs: -1 is the running input, other negative
        # indices count back from the layer.
        source = i - 1 if j == -1 else (i + j if j < 0 else j)
        if not (-1 if j == -1 else 0) <= source < i:
            raise ConfigError(f'layer {i} reads {j}, which is not an earlier layer')
        if j != -1 and source not in save:
            raise ConfigError(f'layer {i} reads layer {source}, whose output model.save '
                              'does not keep')
        sources.append(source)
    return _Wiring(f == -1, as_list, tuple(sources))


def _is_tensor(value: Any) -> bool:
    import torch

    return isinstance(value, torch.Tensor)
