"""The tail model's side of a learned bottleneck: a robot's code, checked and restored.

A service started with ``--bottleneck FILE`` (:mod:`rcnn_service.bottleneck`) takes, at the
bottleneck's split point, one input named ``bottleneck`` (:data:`rcnn_service.bottleneck.BLOB`)
instead of the crossing tensor: the code the robot's encoder made, INT8 with a scale per
channel. It is checked on its header (point, datatype, shape for the padded size, decoded
bytes) before anything is decompressed, then decoded and restored to the crossing tensor the
unchanged tail reads. The tail's metadata names the bottleneck (its point, width, reduction and
the digest of its weights), so that a robot checks that its encoder is this decoder's.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

from adaptive_offload.errors import ConfigError, ConversionError
from adaptive_offload.split_request import decode_wire_tensor
from adaptive_offload.split_wire import SplitTensors, weights_digest, WireTensor
from rcnn_service.bottleneck import BLOB, LearnedBottleneck
from rcnn_service.guard import RequestError
from rcnn_service.rcnn_split import RcnnPayload, RcnnSplitPoint


def checked_bottleneck(bottleneck: LearnedBottleneck, arch: str, weights_sha256: str,
                       points: Sequence[RcnnSplitPoint], device: Any) -> LearnedBottleneck:
    """Return ``bottleneck`` on ``device`` once it fits the served model.

    Raises:
        ConfigError: If it was trained for another architecture, other weights, or a point
            where another tensor crosses.
    """
    spec = bottleneck.spec
    point = next((p for p in points if p.index == spec.point), None)
    if spec.arch != arch or spec.detector != weights_sha256 or point is None or \
            point.crossing != (spec.crossing,):
        raise ConfigError(f'bottleneck trained for {spec.arch} weights {spec.detector[:12]} at '
                          f'point {spec.point} ({spec.crossing}); this service runs {arch} '
                          f'weights {weights_sha256[:12]}: retrain it for them')
    bottleneck.net.to(device)
    return bottleneck


def bottleneck_metadata(bottleneck: LearnedBottleneck | None) -> dict[str, Any] | None:
    """Return what the tail metadata says of the bottleneck (None without one)."""
    if bottleneck is None:
        return None
    spec = bottleneck.spec
    return {'point': spec.point, 'crossing': spec.crossing, 'width': spec.width,
            'reduction': spec.reduction, 'input': BLOB,
            'weights_sha256': weights_digest(bottleneck.net.state_dict())}


def restored_payload(bottleneck: LearnedBottleneck | None, wire: SplitTensors,
                     point: RcnnSplitPoint, code: WireTensor, max_bytes: int,
                     device: Any) -> RcnnPayload:
    """Check a bottleneck code on its header, decode it, and restore the crossing tensor.

    The request's sizes are checked by the caller first.

    Raises:
        RequestError: 400 naming what is wrong (no bottleneck here, another point, other
            tensors beside it, another datatype or shape, too many bytes, a corrupt code).
    """
    import torch

    if bottleneck is None:
        raise RequestError(400, f'this service decodes no learned bottleneck (serve '
                                f'--bottleneck FILE): send the crossing tensors '
                                f'{list(point.crossing)}, not {BLOB!r}')
    spec = bottleneck.spec
    if point.index != spec.point or len(wire.tensors) != 1:
        raise RequestError(400, f'a bottleneck code crosses alone at split point {spec.point} '
                                f'({spec.crossing}): got point {point.index} with '
                                f'{len(wire.tensors)} tensors')
    size = bottleneck.crossing_size(wire.padded_size)
    expected = (1, spec.width, *(math.ceil(s / spec.reduction) for s in size))
    if code.datatype != 'INT8' or tuple(code.shape) != expected:
        raise RequestError(400, f'tensor {BLOB}: {code.datatype} of shape {list(code.shape)}; '
                                f'the bottleneck at padded size {wire.padded_size[0]}x'
                                f'{wire.padded_size[1]} needs INT8 of shape {list(expected)}')
    if code.decoded_bytes > max_bytes:
        raise RequestError(400, f'the tensors decode to {code.decoded_bytes} bytes, over the '
                                f'cap of {max_bytes}')
    try:
        array = decode_wire_tensor(code, max_bytes)
    except ConversionError as err:
        raise RequestError(400, f'tensor {BLOB}: {err}') from err
    weight = next(iter(bottleneck.net.parameters()))
    with torch.inference_mode():
        restored = bottleneck.restore(torch.from_numpy(array).to(weight.device, weight.dtype),
                                      size).to(device)
    return RcnnPayload(point.index, {spec.crossing: restored}, wire.padded_size,
                       wire.image_sizes, wire.original_sizes)
