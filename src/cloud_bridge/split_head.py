"""The split route on the robot: the head of the service's R-CNN here, its tail on the service.

A split decision names an option (``Decision.split``, :mod:`adaptive_offload.split_option`):
an architecture, an input size, a point and a wire encoding. :class:`SplitRoute` runs the head
of that option on a frame (``rcnn_service.rcnn_split.RcnnSplit.head``), encodes what crosses
and sends it to the service's tail model (:class:`cloud_bridge.tail_client.V2TailTransport`).

A three-tier option (``arch@imgsz:i/j:encoding``) runs the same head, to ``i``, and sends its
payload to the middle device's tail model (an edge computer on the robot's LAN serving the same
model) instead: with ``j`` a point, the request names it and the encoding
(``split_wire.FORWARD_TO``), and the middle device runs ``i`` to ``j`` and forwards the rest to
the cloud's tail, answering with the cloud's detections; with ``j`` ``end`` it is a plain tail
request and the middle device runs the whole rest.

The heads are loaded once, at start, from the weights the service loads: a head of other
weights sends tensors the tail reads as noise and answers with confident nonsense. So before
an option's first request the route reads the metadata of the tail it sends to (the middle
device's, on three tiers) and compares the digest of its weights, and its split points, with
the head's; an option that disagrees, or that needs a middle device that forwards to no cloud,
is refused, with the reason, for as long as the bridge runs.
"""

from __future__ import annotations

import threading
from typing import Any, Callable, Mapping, Protocol, Sequence

from adaptive_offload.errors import ConfigError
from adaptive_offload.inference_transport import CloudReply
from adaptive_offload.split_option import check_order, parse_spec, SplitSpec
from adaptive_offload.split_wire import FORWARD_ENCODING, FORWARD_TO, weights_digest
import numpy as np
from rcnn_service.bottleneck import LearnedBottleneck
from rcnn_service.rcnn_detector import image_tensor, RcnnDetector
from rcnn_service.rcnn_split import encode_payload, EncodedPayload, RcnnSplit

Loader = Callable[[str, int], RcnnDetector]
"""Builds the detector of an architecture at an input size (``RcnnDetector`` by default)."""


class Tail(Protocol):
    """Where a head's payload goes: a tail model (``cloud_bridge.tail_client.V2TailTransport``)."""

    def metadata(self, timeout_s: float) -> Mapping[str, Any]:
        """Return the tail model's V2 metadata, whose ``split`` names the weights and points."""

    def infer(self, payload: EncodedPayload, timeout_s: float,
              parameters: Mapping[str, Any] | None = None) -> CloudReply:
        """Send one head payload, with more request parameters, and return its detections."""

    def close(self) -> None:
        """Release connections."""


class SplitHead:
    """One option's head: the transform and the layers before the cut, then the encoding.

    Args:
        spec: The option.
        detector: The service's model, loaded here from the same weights.
        bottleneck: The learned bottleneck whose encoder a ``bottleneck`` option runs after
            the head (the file the service decodes with).

    Raises:
        ConfigError: If the model does not split, has no point of the option's name, (three
            tiers) its second cut is not a point after the first, or a ``bottleneck`` option
            has no bottleneck trained for this model at this point.
    """

    def __init__(self, spec: SplitSpec, detector: RcnnDetector,
                 bottleneck: LearnedBottleneck | None = None) -> None:
        self.spec = spec
        self._detector = detector
        self._split = RcnnSplit(detector.model)
        names = {p.name: p.index for p in self._split.points}
        if spec.point not in names:
            raise ConfigError(f'split option {spec.key!r}: {spec.arch} has no point '
                              f'{spec.point!r} (points: {", ".join(names)})')
        if spec.three_tier:
            check_order(spec, [p.name for p in self._split.points])
        self.index = names[spec.point]
        self.middle_index = names.get(spec.middle_to)  # None unless j is a point
        self.weights_sha256 = weights_digest(detector.model.state_dict())
        self._bottleneck = bottleneck if spec.learned else None
        self.bottleneck_sha256 = ''
        if self._bottleneck is not None:
            self._bottleneck.check(detector.model, spec.arch, self.index)
            self._bottleneck.net.to(detector.device)
            self.bottleneck_sha256 = weights_digest(self._bottleneck.net.state_dict())
        elif spec.learned:
            raise ConfigError(f'split option {spec.key!r} needs split_bottleneck: the learned '
                              'bottleneck file the service decodes with (serve --bottleneck)')

    def run(self, image: np.ndarray) -> EncodedPayload:
        """Run the head on one BGR uint8 frame and encode what crosses the cut.

        Raises:
            ConversionError: If a tensor cannot be encoded (e.g. beyond fp16's range).
        """
        import torch

        def head() -> EncodedPayload:
            with torch.inference_mode():
                payload = self._split.head([image_tensor(image, self._detector.device)],
                                           self.index)
                if self._bottleneck is not None:
                    return self._bottleneck.encode(payload)
            return encode_payload(payload, self.spec.precision, self.spec.codec)

        return self._detector.run_locked(head)


def load_detector(checkpoint: str, device: str = 'cpu') -> Loader:
    """Return a loader of the service's model from ``checkpoint`` on ``device``."""
    def load(arch: str, imgsz: int) -> RcnnDetector:
        return RcnnDetector(arch, checkpoint, device, input_size=imgsz)
    return load


class SplitRoute:
    """Runs the heads of the listed options and sends their payloads to the tail. Thread-safe.

    Args:
        options: The options this robot may be told to take (``arch@imgsz:point:encoding``,
            or ``arch@imgsz:i/j:encoding`` through the middle device).
        tail: The service's tail model.
        loader: Builds the service's model of an architecture at a size (one per pair).
        middle: The middle device's tail model, for three-tier options (closed with the route).
        bottleneck: The learned bottleneck of ``bottleneck`` options.

    Raises:
        ConfigError: For a malformed option, a point the model does not have, three-tier cuts
            out of order, a three-tier option without a middle device, or a ``bottleneck``
            option without a bottleneck of its model and point.
        BackendError: If a model does not load.
    """

    def __init__(self, options: Sequence[str], tail: Tail, loader: Loader,
                 middle: Tail | None = None,
                 bottleneck: LearnedBottleneck | None = None) -> None:
        if not options:
            raise ConfigError('a split route needs at least one split option')
        for text in options:
            if middle is None and parse_spec(text).three_tier:
                raise ConfigError(f'split option {text!r} has three tiers: it needs the middle '
                                  "device's tail (split_middle_url)")
        detectors: dict[tuple[str, int], RcnnDetector] = {}
        self._heads: dict[str, SplitHead] = {}
        for text in options:
            spec = parse_spec(text)
            pair = (spec.arch, spec.imgsz)
            if pair not in detectors:
                detectors[pair] = loader(*pair)
            self._heads[spec.key] = SplitHead(spec, detectors[pair], bottleneck)
        self._tail = tail
        self._middle = middle
        self._lock = threading.Lock()
        self._checked: dict[str, str] = {}  # option: '' when it agrees, else why not

    @property
    def options(self) -> tuple[str, ...]:
        """The options whose heads are loaded."""
        return tuple(self._heads)

    def head(self, option: str, image: np.ndarray) -> EncodedPayload:
        """Run ``option``'s head on a BGR uint8 frame.

        Raises:
            ConfigError: If the option is not one of :attr:`options`.
            ConversionError: If its payload cannot be encoded.
        """
        split = self._heads.get(option)
        if split is None:
            raise ConfigError(f"split option {option!r} is not in this bridge's split_options "
                              f'({", ".join(self._heads)})')
        return split.run(image)

    def send(self, option: str, payload: EncodedPayload, timeout_s: float) -> CloudReply:
        """Send a head's payload, once its tail is known to take this option's tensors.

        A three-tier option's payload goes to the middle device: with its second cut and
        encoding as ``forward_to`` and ``forward_encoding`` when the cloud runs the rest.

        Raises:
            ConfigError: If the tail (the middle device's, on three tiers) runs other weights or
                lacks a point, or the middle device forwards to no cloud.
            CloudError: As :meth:`V2TailTransport.infer` (or its metadata request).
        """
        head = self._heads[option]
        spec = head.spec
        tail = self._middle if spec.three_tier and self._middle is not None else self._tail
        with self._lock:
            why = self._checked.get(option)
        if why is None:
            why = disagreement(head, tail.metadata(timeout_s))
            with self._lock:
                self._checked[option] = why
        if why:
            raise ConfigError(why)
        if spec.three_tier and spec.to_cloud:
            return tail.infer(payload, timeout_s, {FORWARD_TO: spec.middle_to,
                                                   FORWARD_ENCODING: spec.encoding})
        return tail.infer(payload, timeout_s)

    def close(self) -> None:
        """Release the tails' connections."""
        self._tail.close()
        if self._middle is not None:
            self._middle.close()


def disagreement(head: SplitHead, metadata: Mapping[str, Any]) -> str:
    """Return why the tail of ``metadata`` cannot finish ``head``'s payload; '' if it can.

    On a three-tier option ``metadata`` is the middle device's: it must also have the second
    cut and, when the cloud runs the rest, forward to it (``split.forwards``).
    """
    spec = head.spec
    who = 'the middle device' if spec.three_tier else 'the service'
    split = metadata.get('split')
    if not isinstance(split, dict):
        return f'split: {who} names no split model in its tail metadata'
    key = spec.key
    if split.get('arch') != spec.arch:
        return f'split {key}: {who} runs {split.get("arch")!r}, not {spec.arch}'
    if split.get('weights_sha256') != head.weights_sha256:
        return (f'split {key}: {who} runs weights {split.get("weights_sha256")!r}, the head '
                f'{head.weights_sha256!r}: give split_checkpoint the file {who} loads')
    points = split.get('points')
    names = {p.get('name'): p.get('index') for p in points if isinstance(p, dict)} \
        if isinstance(points, list) else {}
    cuts = [(spec.point, head.index)]
    if head.middle_index is not None:
        cuts.append((spec.middle_to, head.middle_index))
    for point, index in cuts:
        if names.get(point) != index:
            return f'split {key}: {who} has no point {point!r} at {index}'
    learned = split.get('bottleneck')
    if spec.learned and (not isinstance(learned, dict) or
                         learned.get('weights_sha256') != head.bottleneck_sha256):
        theirs = learned.get('weights_sha256') if isinstance(learned, dict) else None
        return (f'split {key}: {who} decodes bottleneck {theirs!r}, the robot encodes '
                f'{head.bottleneck_sha256!r}: give split_bottleneck the file the service '
                'loads with --bottleneck')
    if spec.three_tier and spec.to_cloud and split.get('forwards') is not True:
        return (f'split {key}: the middle device forwards to no cloud: start its service with '
                "--upstream (the cloud's URL), or take an option to end")
    return ''
