"""The edge YOLO and the cloud R-CNN as :class:`split_profile.SplitTarget` s.

Each holds its model on its device and its frame prepared as the network takes it, so a timed
head starts from the network input, as it does on a robot after the frame is decoded.
"""

from __future__ import annotations

from typing import Any, Sequence

from edge_inference.yolo_split import decode_crossing, encode_crossing, YoloSplit
import numpy as np
from rcnn_service.rcnn_split import (decode_payload, encode_payload, EncodedPayload, RcnnPayload,
                                     RcnnSplit)


def _tensor(frame: np.ndarray, device: str) -> Any:
    import torch

    rgb = np.ascontiguousarray(frame[:, :, ::-1])
    return torch.from_numpy(rgb).permute(2, 0, 1).to(device, torch.float32).div_(255.0)


class YoloTarget:
    """An ultralytics YOLO split at its layer boundaries.

    Args:
        name: ``<model>@<input size>``.
        model: An ultralytics ``YOLO`` (its ``model`` is moved to ``device``).
        frame: BGR frame, already the square network input size.
        device: ``cpu`` or ``cuda[:N]``.
    """

    family = 'yolo'

    def __init__(self, name: str, model: Any, frame: np.ndarray, device: str) -> None:
        self.name = name
        self._net = model.model.to(device).eval()
        self._split = YoloSplit(model)
        self._device = device
        self._x = _tensor(frame, device)[None]

    def points(self) -> Sequence[tuple[int, str]]:
        """Every split point: head = layers [0, k), named ``k`` (``split_point``, options)."""
        return [(p.index, str(p.index)) for p in self._split.points]

    def whole(self) -> None:
        """Run the unsplit network."""
        self._net(self._x)

    def head(self, index: int) -> dict[int, Any]:
        """Run layers [0, index)."""
        return self._split.head(self._x, index)

    def tail(self, index: int, crossing: dict[int, Any]) -> None:
        """Run layers [index, end)."""
        self._split.tail(crossing, index)

    def fp32_bytes(self, crossing: dict[int, Any]) -> int:
        """Bytes of the crossing tensors in float32."""
        return sum(t.numel() * 4 for t in crossing.values())

    def encode(self, crossing: dict[int, Any], encoding: str,
               compression: str) -> tuple[dict[int, bytes], int]:
        """Encode the crossing as the head sends it."""
        blobs = encode_crossing(crossing, encoding, compression)
        return blobs, sum(len(b) for b in blobs.values())

    def decode(self, wire: dict[int, bytes]) -> dict[int, Any]:
        """Decode the crossing as the tail receives it, on its device."""
        return decode_crossing(wire, self._device)


class RcnnTarget:
    """A torchvision Faster / Mask R-CNN split at its backbone stage boundaries.

    Args:
        name: ``<arch>@<input size>``.
        model: The torchvision model, in eval mode on ``device``.
        frame: BGR frame as the robot sends it (the model's transform resizes it).
        device: ``cpu`` or ``cuda[:N]``.
    """

    family = 'rcnn'

    def __init__(self, name: str, model: Any, frame: np.ndarray, device: str) -> None:
        self.name = name
        self._model = model
        self._split = RcnnSplit(model)
        self._device = device
        self._images = [_tensor(frame, device)]

    def points(self) -> Sequence[tuple[int, str]]:
        """Every split point: after the transform, each backbone stage, and the FPN."""
        return [(p.index, p.name) for p in self._split.points]

    def whole(self) -> None:
        """Run the unsplit model."""
        self._model(self._images)

    def head(self, index: int) -> RcnnPayload:
        """Run the transform and the backbone up to the split point."""
        return self._split.head(self._images, index)

    def tail(self, index: int, crossing: RcnnPayload) -> None:
        """Run the rest: backbone, FPN, RPN and ROI heads."""
        self._split.tail(crossing)

    def fp32_bytes(self, crossing: RcnnPayload) -> int:
        """Bytes of the crossing tensors in float32."""
        return sum(t.numel() * 4 for t in crossing.tensors.values())

    def encode(self, crossing: RcnnPayload, encoding: str,
               compression: str) -> tuple[EncodedPayload, int]:
        """Encode the payload as the head sends it."""
        wire = encode_payload(crossing, encoding, compression)
        return wire, wire.tensor_bytes

    def decode(self, wire: EncodedPayload) -> RcnnPayload:
        """Decode the payload as the tail receives it, on its device."""
        return decode_payload(wire, self._device)
