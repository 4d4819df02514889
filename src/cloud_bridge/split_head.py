"""The split route on the robot: the head of the service's R-CNN here, its tail on the service.

A split decision names an option (``Decision.split``, :mod:`adaptive_offload.split_option`):
an architecture, an input size, a point and a wire encoding. :class:`SplitRoute` runs the head
of that option on a frame (``rcnn_service.rcnn_split.RcnnSplit.head``), encodes what crosses
and sends it to the service's tail model (:class:`cloud_bridge.tail_client.V2TailTransport`).

The heads are loaded once, at start, from the weights the service loads: a head of other
weights sends tensors the tail reads as noise and answers with confident nonsense. So before
an option's first request the route reads the tail model's metadata and compares the digest
of its weights, and its split points, with the head's; an option that disagrees is refused,
with both digests in the reason, for as long as the bridge runs.
"""

from __future__ import annotations

import threading
from typing import Any, Callable, Mapping, Sequence

from adaptive_offload.errors import ConfigError
from adaptive_offload.inference_transport import CloudReply
from adaptive_offload.split_option import parse_spec, SplitSpec
from adaptive_offload.split_wire import weights_digest
from cloud_bridge.tail_client import V2TailTransport
import numpy as np
from rcnn_service.rcnn_detector import image_tensor, RcnnDetector
from rcnn_service.rcnn_split import encode_payload, EncodedPayload, RcnnSplit

Loader = Callable[[str, int], RcnnDetector]
"""Builds the detector of an architecture at an input size (``RcnnDetector`` by default)."""


class SplitHead:
    """One option's head: the transform and the layers before the cut, then the encoding.

    Args:
        spec: The option.
        detector: The service's model, loaded here from the same weights.

    Raises:
        ConfigError: If the model does not split, or has no point of the option's name.
    """

    def __init__(self, spec: SplitSpec, detector: RcnnDetector) -> None:
        self.spec = spec
        self._detector = detector
        self._split = RcnnSplit(detector.model)
        names = {p.name: p.index for p in self._split.points}
        if spec.point not in names:
            raise ConfigError(f'split option {spec.key!r}: {spec.arch} has no point '
                              f'{spec.point!r} (points: {", ".join(names)})')
        self.index = names[spec.point]
        self.weights_sha256 = weights_digest(detector.model.state_dict())

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
        options: The options this robot may be told to take (``arch@imgsz:point:encoding``).
        tail: The service's tail model.
        loader: Builds the service's model of an architecture at a size (one per pair).

    Raises:
        ConfigError: For a malformed option or a point the model does not have.
        BackendError: If a model does not load.
    """

    def __init__(self, options: Sequence[str], tail: V2TailTransport, loader: Loader) -> None:
        if not options:
            raise ConfigError('a split route needs at least one split option')
        detectors: dict[tuple[str, int], RcnnDetector] = {}
        self._heads: dict[str, SplitHead] = {}
        for text in options:
            spec = parse_spec(text)
            pair = (spec.arch, spec.imgsz)
            if pair not in detectors:
                detectors[pair] = loader(*pair)
            self._heads[spec.key] = SplitHead(spec, detectors[pair])
        self._tail = tail
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
        """Send a head's payload, once the tail is known to take this option's tensors.

        Raises:
            ConfigError: If the service's tail runs other weights or lacks the point.
            CloudError: As :meth:`V2TailTransport.infer` (or its metadata request).
        """
        with self._lock:
            why = self._checked.get(option)
        if why is None:
            why = disagreement(self._heads[option], self._tail.metadata(timeout_s))
            with self._lock:
                self._checked[option] = why
        if why:
            raise ConfigError(why)
        return self._tail.infer(payload, timeout_s)

    def close(self) -> None:
        """Release the tail's connections."""
        self._tail.close()


def disagreement(head: SplitHead, metadata: Mapping[str, Any]) -> str:
    """Return why the tail of ``metadata`` cannot finish ``head``'s payload; '' if it can."""
    split = metadata.get('split')
    if not isinstance(split, dict):
        return 'split: the service names no split model in its tail metadata'
    key = head.spec.key
    if split.get('arch') != head.spec.arch:
        return f'split {key}: the service runs {split.get("arch")!r}, not {head.spec.arch}'
    if split.get('weights_sha256') != head.weights_sha256:
        return (f'split {key}: the service runs weights {split.get("weights_sha256")!r}, the '
                f'head {head.weights_sha256!r}: give split_checkpoint the file the service '
                'loads')
    points = split.get('points')
    names = {p.get('name'): p.get('index') for p in points if isinstance(p, dict)} \
        if isinstance(points, list) else {}
    if names.get(head.spec.point) != head.index:
        return f'split {key}: the service has no point {head.spec.point!r} at {head.index}'
    return ''
