"""The tail model: the rest of the service's R-CNN, run on the tensors a robot's head sent.

Served next to the image model as ``<model>-tail`` (:func:`adaptive_offload.split_wire.
tail_model_name`), with the same token, body limit and admission: a tail request is queued for
the same model, in the same fair queue, as an image (:data:`ModelInput`), and its reply is the
image model's. Its metadata lists the split points, what crosses each (channels, stride), the
architecture and a digest of the weights, so that a robot can check that its head matches.

Every check that can be made on the request's header is made before anything is decoded: the
split point, the tensor names, datatypes and shapes (from the point and the padded size), the
sizes against each other and the limits, the bytes the tensors decode to. Then each tensor is
decoded within that bound, and refused if corrupt or not finite.
"""

from __future__ import annotations

from dataclasses import dataclass
import logging
import math
from typing import Any

from adaptive_offload.errors import ConfigError, ConversionError
from adaptive_offload.split_request import decode_wire_tensor, parse_request, SplitRequest
from adaptive_offload.split_wire import (DATATYPES, FORWARD_ENCODING, FORWARD_TO, Size,
                                         SplitTensors, weights_digest)
from adaptive_offload.tensor_compression import COMPRESSORS
import numpy as np
from rcnn_service.bottleneck import BLOB, LearnedBottleneck
from rcnn_service.bottleneck_tail import (bottleneck_metadata, checked_bottleneck,
                                          restored_payload)
from rcnn_service.guard import RequestError
from rcnn_service.protocol import (model_metadata, request_context, RequestContext,
                                   requested_outputs)
from rcnn_service.rcnn_detector import Detections, RcnnDetector
from rcnn_service.rcnn_split import RcnnPayload, RcnnSplit, RcnnSplitPoint

LOG = logging.getLogger('adaptive_offload.service')
_MAX_ERROR = 300


@dataclass(frozen=True)
class TailSpec:
    """What a tail request is checked against: plain data, so that it crosses processes.

    Attributes:
        arch: The model's architecture.
        points: The model's split points.
        layout: Channels and stride of every tensor that can cross, by name.
        size_divisible: What the model pads a batch's sides to a multiple of.
        weights_sha256: :func:`adaptive_offload.split_wire.weights_digest` of the model.
        min_size: Shorter side the model resizes an image to.
        max_size: Longest side the model resizes an image to.
    """

    arch: str
    points: tuple[RcnnSplitPoint, ...]
    layout: dict[str, tuple[int, int]]
    size_divisible: int
    weights_sha256: str
    min_size: int
    max_size: int


class TailChecks:
    """Reads and checks tail requests against a :class:`TailSpec`; needs no model.

    The model's own process knows the spec; the process that serves requests checks them
    with it, so a bad request is refused before it reaches the model.

    Args:
        spec: What requests are checked against.
        device: Where decoded tensors go.
    """

    def __init__(self, spec: TailSpec, device: Any = 'cpu') -> None:
        self.spec = spec
        self.device = device
        self.bottleneck: LearnedBottleneck | None = None

    def use_bottleneck(self, bottleneck: LearnedBottleneck) -> None:
        """Take ``bottleneck``'s code at its point (:mod:`rcnn_service.bottleneck_tail`).

        Raises:
            ConfigError: If it was trained for another architecture, weights or point.
        """
        self.bottleneck = checked_bottleneck(bottleneck, self.spec.arch, self.weights_sha256,
                                             self.spec.points, self.device)

    @property
    def layout(self) -> dict[str, tuple[int, int]]:
        """Channels and stride of every tensor that can cross, by name."""
        return self.spec.layout

    @property
    def size_divisible(self) -> int:
        """What the model pads a batch's sides to a multiple of."""
        return self.spec.size_divisible

    @property
    def weights_sha256(self) -> str:
        """The digest of the model's weights."""
        return self.spec.weights_sha256

    def metadata(self, name: str, max_bytes: int, forwards: bool = False) -> dict[str, Any]:
        """Return the tail model's V2 metadata, with its split points under ``split``.

        Args:
            name: The tail model's name.
            max_bytes: Most bytes a request's tensors may decode to.
            forwards: Whether this service forwards three-tier requests to a cloud's tail
                (``split.forwards``; see :mod:`rcnn_service.middle_part`).
        """
        spec = self.spec
        names = dict.fromkeys(n for p in spec.points for n in p.crossing)
        points = [{'index': p.index, 'name': p.name,
                   'crossing': [{'name': n, 'channels': self.layout[n][0],
                                 'stride': self.layout[n][1]} for n in p.crossing]}
                  for p in spec.points]
        meta = model_metadata(name)
        meta['inputs'] = [{'name': n, 'datatype': 'FP32', 'shape': [1, self.layout[n][0], -1, -1]}
                          for n in names]
        meta['split'] = {
            'arch': spec.arch, 'weights_sha256': self.weights_sha256,
            'min_size': spec.min_size, 'max_size': spec.max_size,
            'size_divisible': self.size_divisible, 'images_per_request': 1,
            'datatypes': list(DATATYPES), 'compressions': sorted(COMPRESSORS),
            'max_tensor_bytes': max_bytes, 'points': points, 'forwards': forwards,
            'bottleneck': bottleneck_metadata(self.bottleneck)}
        return meta

    def read(self, body: bytes, header_length: int | None, max_bytes: int,
             max_side: int) -> TailRequest:
        """Read a tail request body, checked and decoded, ready to queue.

        Args:
            body: The body: JSON header, then the tensors' bytes.
            header_length: The ``Inference-Header-Content-Length`` header; None when absent.
            max_bytes: Most bytes its tensors may decode to, together.
            max_side: Longest side of an original image.

        Raises:
            RequestError: 400 naming what is wrong.
        """
        try:
            request = parse_request(body, header_length)
        except ConversionError as err:
            raise RequestError(400, str(err)) from err
        context = request_context(request.parameters)
        outputs = None if request.outputs is None else \
            requested_outputs(request.outputs, masks=True)
        forward = self.forward(request.parameters, request.split.point)
        job = TailJob(self.payload(request, max_bytes, max_side))
        return TailRequest(job, context, outputs, request.request_id, forward)

    def forward(self, parameters: dict[str, Any], point: int) -> Forward | None:
        """Read a three-tier request's ``forward_to`` and ``forward_encoding``; None: absent.

        Raises:
            RequestError: 400 if only one is given, the point is not a later point of this
                model, or the encoding is not ``fp16|int8+<compression>``.
        """
        to, encoding = parameters.get(FORWARD_TO), parameters.get(FORWARD_ENCODING)
        if to is None and encoding is None:
            return None
        later = [p for p in self.spec.points if p.index > point]
        names = {p.name: p.index for p in later}
        if to not in names:
            raise RequestError(400, f'{FORWARD_TO} must name a split point after point {point} '
                                    f'({", ".join(names) or "there is none"}), got '
                                    f'{str(to)[:80]!r}')
        precision, _, codec = str(encoding).partition('+')
        if not isinstance(encoding, str) or precision not in ('fp16', 'int8') or \
                codec not in COMPRESSORS:
            raise RequestError(400, f'{FORWARD_ENCODING} must be fp16 or int8, +'
                                    f'{"/".join(sorted(COMPRESSORS))}, got '
                                    f'{str(encoding)[:80]!r}')
        return Forward(names[str(to)], precision, codec)

    def payload(self, request: SplitRequest, max_bytes: int, max_side: int) -> RcnnPayload:
        """Check a request against the split point and the limits, then decode its tensors.

        Args:
            request: The parsed request.
            max_bytes: Most bytes its tensors may decode to, together.
            max_side: Longest side of an original image.

        Raises:
            RequestError: 400 naming what is wrong.
        """
        import torch

        wire = request.split
        last = len(self.spec.points) - 1
        if not 0 <= wire.point <= last:
            raise RequestError(400, f'unknown split point {wire.point}: this model splits at '
                                    f'0..{last} (its metadata lists them)')
        point = self.spec.points[wire.point]
        given = {t.name: t for t in wire.tensors}
        if BLOB in given:
            self._check_sizes(wire, max_side)
            return restored_payload(self.bottleneck, wire, point, given[BLOB], max_bytes,
                                    self.device)
        missing = [n for n in point.crossing if n not in given]
        extra = [n for n in given if n not in point.crossing]
        if missing or extra:
            raise RequestError(400, f'split point {point.index} ({point.name}) takes the '
                                    f'tensors {list(point.crossing)}: missing {missing}, '
                                    f'not taken {extra}')
        self._check_sizes(wire, max_side)
        for name in point.crossing:
            tensor = given[name]
            if tensor.datatype not in DATATYPES:
                raise RequestError(400, f'tensor {name}: datatype {tensor.datatype!r}, not one '
                                        f'of {", ".join(DATATYPES)}')
            expected = self._shape(name, wire.padded_size)
            if tuple(tensor.shape) != expected:
                raise RequestError(400, f'tensor {name} of shape {list(tensor.shape)}: split '
                                        f'point {point.index} at padded size '
                                        f'{_size(wire.padded_size)} needs {list(expected)}')
        total = sum(t.decoded_bytes for t in wire.tensors)
        if total > max_bytes:
            raise RequestError(400, f'the tensors decode to {total} bytes, over the cap of '
                                    f'{max_bytes}')
        tensors = {}
        for name in point.crossing:
            try:
                array = decode_wire_tensor(given[name], max_bytes)
            except ConversionError as err:
                raise RequestError(400, f'tensor {name}: {err}') from err
            tensors[name] = torch.from_numpy(array).to(self.device)
        return RcnnPayload(point.index, tensors, wire.padded_size, wire.image_sizes,
                           wire.original_sizes)

    def _shape(self, name: str, padded: Size) -> tuple[int, ...]:
        channels, stride = self.layout[name]
        return (1, channels, math.ceil(padded[0] / stride), math.ceil(padded[1] / stride))

    def _check_sizes(self, wire: SplitTensors, max_side: int) -> None:
        """Refuse sizes that disagree with each other, the model's padding or the limits."""
        if len(wire.image_sizes) != 1 or len(wire.original_sizes) != 1:
            raise RequestError(400, f'one image per request: got {len(wire.image_sizes)} image '
                                    f'sizes and {len(wire.original_sizes)} original sizes')
        (ph, pw), (ih, iw), (oh, ow) = wire.padded_size, wire.image_sizes[0], \
            wire.original_sizes[0]
        div = self.size_divisible
        largest = math.ceil(max(max_side, self.spec.max_size) / div) * div
        if max(oh, ow) > max_side or max(ph, pw) > largest:
            raise RequestError(400, f'original size {_size((oh, ow))} or padded size '
                                    f'{_size((ph, pw))} over the limits ({max_side} px, '
                                    f'{largest} px)')
        if ph % div or pw % div or not (0 <= ph - ih < div and 0 <= pw - iw < div):
            raise RequestError(400, f'image size {_size((ih, iw))} does not pad to padded size '
                                    f'{_size((ph, pw))}: the model pads to the next multiple '
                                    f'of {div}')
        # Resizing floors both sides of one scaled size, so the aspects differ by under a pixel.
        if abs(ih * ow - iw * oh) > max(oh, ow):
            raise RequestError(400, f'image size {_size((ih, iw))} is not original size '
                                    f'{_size((oh, ow))} resized: their aspects differ')


class SplitTail(TailChecks):
    """The tail of a detector's model, and what a request must send it.

    Args:
        detector: A loaded detector; its model, lock and thresholds are shared.

    Attributes:
        split: The model's split points.

    Raises:
        ConfigError: If the detector's model cannot be split.
    """

    def __init__(self, detector: RcnnDetector) -> None:
        model = detector.model
        self.detector = detector
        self.split = RcnnSplit(model)
        transform = model.transform
        super().__init__(TailSpec(
            detector.arch, tuple(self.split.points), detector.run_locked(self.split.layout),
            int(getattr(model.transform, 'size_divisible', 32)),
            weights_digest(model.state_dict()), int(transform.min_size[-1]),
            int(transform.max_size)), detector.device)

    @classmethod
    def of(cls, detector: Any) -> SplitTail | None:
        """Return the tail of ``detector``'s model; None if it has no model that splits."""
        if not hasattr(detector, 'model'):  # a stand-in (tests) that holds no torch model
            return None
        try:
            return cls(detector)
        except (ConfigError, RuntimeError) as err:  # the image model serves all the same
            LOG.warning('no tail model: %s', err)
            return None

    def run(self, payload: RcnnPayload) -> Detections:
        """Run the tail on one image's payload (under the detector's lock).

        Raises:
            RequestError: 400 if the model rejects the tensors (the checks before passed them,
                so a shape torch refuses is still the client's), 503 if it ran out of memory.
        """
        import torch

        try:
            return self.detector.run_tail(self.split, payload)[0]
        except ConfigError as err:
            raise RequestError(400, f'the tail refused the tensors: {err}') from err
        except torch.cuda.OutOfMemoryError as err:
            raise RequestError(503, 'the model ran out of memory; retry later') from err
        except (RuntimeError, ValueError, IndexError) as err:
            raise RequestError(400, f'the model cannot run on these tensors: '
                                    f'{str(err)[:_MAX_ERROR]}') from err


@dataclass(frozen=True)
class TailJob:
    """One tail request, queued for the model as an image is.

    Attributes:
        payload: Its checked, decoded payload (tensors on the checking tail's device).
    """

    payload: RcnnPayload


@dataclass(frozen=True)
class Forward:
    """Where a middle device hands a three-tier request over to the cloud's tail.

    Attributes:
        point: Index of the split point the middle part runs to.
        precision: ``fp16`` or ``int8``: how what crosses there is sent.
        compression: Its compression.
    """

    point: int
    precision: str
    compression: str


@dataclass(frozen=True)
class TailRequest:
    """A tail request, read.

    Attributes:
        job: What to queue for the model.
        context: Its robot and budget.
        outputs: The outputs it asked for; None: all.
        request_id: Its ``id``, echoed.
        forward: Three tiers: where to hand it over to the cloud's tail; None: run it all.
    """

    job: TailJob
    context: RequestContext
    outputs: tuple[str, ...] | None
    request_id: str
    forward: Forward | None = None


ModelInput = np.ndarray | TailJob
"""What the service queues for its model: a decoded BGR image, or a tail request."""


def _size(size: Size) -> str:
    return f'{size[0]}x{size[1]}'
