"""The split head's message: its parameters, how a head writes one, how a tail reads it.

A message is a :class:`adaptive_offload.split_frame.SplitFrame` (a CompressedImage) whose
request parameters, beside V2's ``point`` and sizes (:mod:`adaptive_offload.split_wire`), are
``model``, ``weights_sha256``, ``imgsz``, ``letterbox_scale`` (``y,x``), ``letterbox_pad``
(``top,left``), ``decision_seq`` and ``split`` (the option name); its tensors are named
``layer_<j>`` after the layer that output them.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

from adaptive_offload.datatypes import Frame
from adaptive_offload.errors import ConversionError
from adaptive_offload.split_frame import split_frame, SplitFrame
from adaptive_offload.split_request import decode_wire_tensor
from adaptive_offload.split_wire import encode_wire_tensor, SplitTensors
from edge_inference.split_choice import HeadChoice
from edge_inference.split_model import Letterbox, SplitModel

MODEL, WEIGHTS, IMGSZ, SPLIT = 'model', 'weights_sha256', 'imgsz', 'split'
LETTERBOX_SCALE, LETTERBOX_PAD, DECISION_SEQ = 'letterbox_scale', 'letterbox_pad', 'decision_seq'
MAX_SPLIT_NAME = 256
"""Longest ``split`` parameter (the option's name) a tail accepts."""
MAX_INPUT_SIDE = 4096
"""Longest side of a network input a tail accepts (the ``imgsz`` parameter's maximum)."""
MAX_FRAME_SIDE = 16384
"""Longest side of an original frame a tail accepts."""


def tensor_name(layer: int) -> str:
    """Return the wire name of the crossing tensor that ``layer`` output."""
    return f'layer_{layer}'


def head_message(frame: Frame, model: SplitModel, box: Letterbox, crossing: Mapping[int, Any],
                 choice: HeadChoice, model_name: str, decision_seq: int,
                 option: str) -> SplitFrame:
    """Encode what crosses the split of ``model`` for ``frame`` as a head's message.

    Args:
        frame: The camera frame (its stamp and frame_id head the message).
        model: The detector, prepared at the split point the tensors crossed.
        box: The frame's letterbox into the network input.
        crossing: The crossing tensors by the layer that output them.
        choice: The wire precision and codec, and the input size.
        model_name: The detector's name.
        decision_seq: The decision the head applied.
        option: The split option's name.

    Raises:
        ConversionError: If a tensor cannot be encoded.
    """
    tensors = tuple(encode_wire_tensor(tensor_name(j), t, choice.precision, choice.codec)
                    for j, t in sorted(crossing.items()))
    split = SplitTensors(model.point.index, box.padded, (box.image,), (box.original,), tensors)
    return split_frame(frame.stamp_ns, frame.frame_id, split, {
        MODEL: model_name, WEIGHTS: model.weights_sha256, IMGSZ: choice.imgsz,
        LETTERBOX_SCALE: f'{box.scale[0]!r},{box.scale[1]!r}',
        LETTERBOX_PAD: f'{box.pad[0]},{box.pad[1]}', DECISION_SEQ: decision_seq,
        SPLIT: option})


def read_letterbox(split: SplitTensors, params: Mapping[str, Any], stride: int) -> Letterbox:
    """Read and check the sizes and letterbox of a message.

    Raises:
        ConversionError: ``split_request``, saying which size or parameter does not fit.
    """
    if len(split.image_sizes) != 1 or len(split.original_sizes) != 1:
        raise bad_request('one image per message')
    padded, image, original = split.padded_size, split.image_sizes[0], split.original_sizes[0]
    if max(padded) > MAX_INPUT_SIDE or padded[0] % stride or padded[1] % stride:
        raise bad_request(f'input {padded[0]}x{padded[1]}: sides must be multiples of {stride} up '
                          f'to {MAX_INPUT_SIDE}')
    if max(original) > MAX_FRAME_SIDE:
        raise bad_request(f'frame {original[0]}x{original[1]} over {MAX_FRAME_SIDE} px a side')
    scale = _numbers(params.get(LETTERBOX_SCALE), LETTERBOX_SCALE, float)
    pad = _numbers(params.get(LETTERBOX_PAD), LETTERBOX_PAD, int)
    if not all(math.isfinite(s) and s > 0 for s in scale) or min(pad) < 0 or \
            pad[0] + image[0] > padded[0] or pad[1] + image[1] > padded[1]:
        raise bad_request(f'letterbox scale {scale} and pad {pad} do not place a {image[0]}x'
                          f'{image[1]} image in a {padded[0]}x{padded[1]} input')
    return Letterbox(original, image, padded, (float(scale[0]), float(scale[1])),
                     (int(pad[0]), int(pad[1])))


def crossing_tensors(model: SplitModel, split: SplitTensors, box: Letterbox,
                     bound: int) -> dict[int, Any]:
    """Decode a message's crossing tensors for ``model``, each checked against it.

    Args:
        model: The tail's model, prepared at the message's point.
        split: The message's tensors.
        box: The letterbox the message names (its padded input sets the shapes).
        bound: Most bytes the tensors may decode to, together.

    Raises:
        ConversionError: ``split_request`` for other tensors than the point's or a shape
            that does not fit, ``tensor_too_large`` over ``bound``, ``tensor_*`` for a tensor
            that does not decode.
    """
    names = {tensor_name(j): j for j in model.point.crossing}
    given = {t.name: t for t in split.tensors}
    if set(given) != set(names):
        raise bad_request(f'split point {split.point} takes {sorted(names)}, got '
                          f'{sorted(given)}')
    for name, j in names.items():
        expected = model.expected_shape(j, box.padded)
        if tuple(given[name].shape) != expected:
            raise bad_request(f'tensor {name} of shape {list(given[name].shape)}: an input of '
                              f'{box.padded[0]}x{box.padded[1]} gives {list(expected)}')
    total = sum(t.decoded_bytes for t in split.tensors)
    if total > bound:
        raise ConversionError('tensor_too_large', f'the tensors decode to {total} bytes, '
                                                  f'over split_max_bytes {bound}')
    return {j: model.tensor(decode_wire_tensor(given[name], bound)) for name, j in names.items()}


def _numbers(text: Any, name: str, kind: type) -> tuple[Any, Any]:
    parts = text.split(',') if isinstance(text, str) else []
    try:
        values = tuple(kind(p) for p in parts)
    except ValueError:
        values = ()
    if len(values) != 2:
        raise bad_request(f'parameter {name} must be two numbers separated by a comma, got '
                          f'{str(text)[:40]!r}')
    return values[0], values[1]


def int_param(params: Mapping[str, Any], name: str, low: int, high: int,
              default: int | None = None) -> int:
    """Return the integer parameter ``name`` within ``low..high``.

    Raises:
        ConversionError: ``split_request`` for anything else.
    """
    value = params.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise bad_request(f'parameter {name} must be an integer within {low}..{high}, got '
                          f'{str(value)[:40]!r}')
    return value


def text_param(params: Mapping[str, Any], name: str, longest: int) -> str:
    """Return the text parameter ``name`` (empty if absent), at most ``longest`` characters.

    Raises:
        ConversionError: ``split_request`` for anything else.
    """
    value = params.get(name, '')
    if not isinstance(value, str) or len(value) > longest:
        raise bad_request(f'parameter {name} must be text of at most {longest} characters, got '
                          f'{str(value)[:40]!r}')
    return value


def bad_request(detail: str) -> ConversionError:
    """Return the ``split_request`` error of a message that does not fit, saying why."""
    return ConversionError('split_request', detail)
