"""An ultralytics detector in two parts, run exactly as its unsplit backend runs it.

:class:`SplitModel` loads the weights through :class:`UltralyticsBackend` (offline, the device
checked), lets ultralytics' predictor prepare the network once (fused, in the memory format it
picks for this CPU or GPU), and runs that network's layers ``[0, k)`` (:meth:`SplitModel.head`)
or ``[k, end)`` (:meth:`SplitModel.tail`) with :class:`edge_inference.yolo_split.YoloSplit`.
Its letterbox, NMS and box scaling are the predictor's, so a frame run as head then tail on one
machine, its tensors sent in fp32, gives the unsplit backend's detections bit for bit.

Nothing happens at import: torch and ultralytics are imported by the methods that need them.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
import importlib
import math
from typing import Any, Callable, cast, Mapping

from adaptive_offload.conversions import boxes_from_arrays
from adaptive_offload.datatypes import Detection
from adaptive_offload.errors import BackendError, ConfigError
from adaptive_offload.split_wire import Size, weights_digest
from edge_inference.detector import BackendOptions
from edge_inference.yolo_split import SplitPoint, YoloSplit
import numpy as np

_MIN_STRIDE = 32  # what ultralytics' predictor rounds input sizes and padding to, at least


@dataclass(frozen=True)
class Letterbox:
    """How a frame became the network's input (ultralytics' LetterBox, minimal padding).

    Attributes:
        original: (height, width) of the frame.
        image: (height, width) of the frame resized, before padding.
        padded: (height, width) of the network input.
        scale: (y, x) gain from the frame to the resized image.
        pad: (top, left) padding in pixels.
    """

    original: Size
    image: Size
    padded: Size
    scale: tuple[float, float]
    pad: tuple[int, int]


class SplitModel:
    """One ultralytics detector, to run as a split detector's head or tail at one point.

    Args:
        backend: The loaded backend (:meth:`load` builds it); its network must not have run.
        k: Split point: the head runs layers ``[0, k)``.

    Attributes:
        names: Class index to class name.
        weights_sha256: :func:`adaptive_offload.split_wire.weights_digest` of the weights as
            loaded (before fusing: the same on every machine and ultralytics version).
        point: The split point and the layers whose outputs cross it.
        stride: The network's largest stride; input sides are multiples of it.
        layout: Per crossing layer, (channels, stride) of its output.

    Raises:
        ConfigError: If ``k`` is not one of the model's split points (the message names them).
        BackendError: If ultralytics prepares no network to split.
    """

    def __init__(self, backend: Any, k: int) -> None:
        import torch

        self.names: dict[int, str] = dict(backend.names)
        self.weights_sha256 = weights_digest(backend.yolo.model.state_dict())
        # The predictor builds its network on the first frame; the parts run that network.
        backend.infer(np.zeros((64, 64, 3), np.uint8), 64, 0.25, 0.7, None, 1)
        net = getattr(getattr(backend.yolo, 'predictor', None), 'model', None)
        if net is None:
            raise BackendError('ultralytics prepared no predictor network to split')
        self._net = net
        self._split = YoloSplit(net)
        self.point: SplitPoint = self._split.point(k)
        self.stride = max(int(torch.as_tensor(net.stride).max()), _MIN_STRIDE)
        self._device = torch.device(backend.device)
        self._dtype = torch.float16 if getattr(net, 'fp16', False) else torch.float32
        self.layout = self._layout()

    @classmethod
    def load(cls, options: BackendOptions, k: int) -> SplitModel:
        """Load the weights of ``options`` offline and prepare split point ``k``.

        Raises:
            ConfigError: If ``k`` is not one of the model's split points.
            BackendError: If the weights cannot be loaded or the device is unavailable.
        """
        from edge_inference.ultralytics_backend import UltralyticsBackend

        try:
            return cls(UltralyticsBackend(options), k)
        except ConfigError as err:
            raise ConfigError(f'{options.model}: {err}') from None

    def at(self, k: int) -> SplitModel:
        """Return this detector prepared at split point ``k``, its network and weights shared.

        Raises:
            ConfigError: If ``k`` is not one of the model's split points.
        """
        if k == self.point.index:
            return self
        other = copy.copy(self)
        other.point = self._split.point(k)
        other.layout = other._layout()
        return other

    def warm_up(self, imgsz: int) -> None:
        """Run the network whole once on a blank 640x480 frame at ``imgsz``.

        Its first frame at a size would otherwise carry the allocations into the reported time,
        and a manager timing the split would see that frame late. The layers are shared by
        every split point, so this warms them all.

        Raises:
            BackendError: If the network fails.
        """
        x, _ = self.letterbox(np.zeros((480, 640, 3), np.uint8), imgsz)
        self.tail(self.head(x))

    def _layout(self) -> dict[int, tuple[int, int]]:
        import torch

        side = 2 * self.stride
        probe = torch.zeros((1, 3, side, side), dtype=self._dtype, device=self._device)
        with torch.inference_mode():
            outputs = self._split.head(probe, self.point.index)
        return {j: (int(t.shape[1]), side // int(t.shape[2])) for j, t in outputs.items()}

    def expected_shape(self, layer: int, padded: Size) -> tuple[int, ...]:
        """Return the shape of ``layer``'s crossing tensor for an input of ``padded`` size."""
        channels, stride = self.layout[layer]
        return (1, channels, math.ceil(padded[0] / stride), math.ceil(padded[1] / stride))

    def letterbox(self, image: np.ndarray, imgsz: int) -> tuple[Any, Letterbox]:
        """Resize and pad a BGR frame into the network's input, as the predictor does.

        Args:
            image: HxWx3 uint8 BGR frame.
            imgsz: Longest side of the network input (rounded up to the stride).

        Returns:
            The input tensor (1x3xHxW, RGB, 0..1, on the model's device) and its letterbox.
        """
        import torch
        from ultralytics.data.augment import LetterBox
        from ultralytics.utils.checks import check_imgsz

        size = check_imgsz(imgsz, stride=self.stride, min_dim=2)
        padded = cast(np.ndarray, LetterBox(size, auto=True, stride=self.stride)(image=image))
        height, width = image.shape[:2]
        # LetterBox's own geometry, which it does not return: its resize, then centred padding.
        gain = min(size[0] / height, size[1] / width)
        new_h, new_w = max(round(height * gain), 1), max(round(width * gain), 1)
        ph, pw = padded.shape[:2]
        box = Letterbox((height, width), (new_h, new_w), (ph, pw),
                        (new_h / height, new_w / width),
                        (round((ph - new_h) / 2 - 0.1), round((pw - new_w) / 2 - 0.1)))
        # The predictor's preprocess, step for step: the same tensor, bit for bit.
        tensor = torch.from_numpy(np.ascontiguousarray(padded)).unsqueeze(0).to(self._device)
        tensor = tensor.permute(0, 3, 1, 2).contiguous().flip(1)
        return tensor.to(self._dtype).div_(255), box

    def head(self, x: Any) -> dict[int, Any]:
        """Run layers ``[0, k)`` on the network input; the crossing tensors by layer.

        Raises:
            BackendError: If the network fails.
        """
        return self._guard('head', lambda: self._finished(self._split.head(x, self.point.index)))

    def tail(self, crossing: Mapping[int, Any]) -> Any:
        """Run layers ``[k, end)`` on the crossing tensors; the network's raw output.

        Raises:
            BackendError: If the network fails (on tensors of the wrong shape, say).
        """
        return self._guard('tail',
                           lambda: self._finished(self._split.tail(crossing, self.point.index)))

    def tensor(self, array: np.ndarray) -> Any:
        """Return a decoded crossing array as a tensor on the model's device, in its dtype."""
        import torch

        return torch.from_numpy(array).to(self._device, self._dtype)

    def detections(self, raw: Any, box: Letterbox, conf: float, iou: float,
                   classes: tuple[int, ...] | None, max_det: int) -> tuple[Detection, ...]:
        """NMS and boxes in the frame's pixels, as the unsplit backend gives them.

        Raises:
            BackendError: If NMS fails.
        """
        from ultralytics.utils import ops

        def run() -> Any:
            end2end = bool(getattr(self._net, 'end2end', False))
            pred = _nms()(raw, conf, iou, list(classes) if classes else None, False,
                          max_det=max_det, nc=0, **({'end2end': True} if end2end else {}))[0]
            pred[:, :4] = ops.scale_boxes(box.padded, pred[:, :4], box.original,
                                          ratio_pad=(box.scale, (box.pad[1], box.pad[0])))
            return pred.cpu().numpy()

        pred = self._guard('NMS', run)
        return boxes_from_arrays(pred[:, :4], pred[:, 4], pred[:, 5], self.names,
                                 box.original[1], box.original[0])

    def _finished(self, out: Any) -> Any:
        """Return ``out`` once the device has computed it.

        CUDA runs the layers asynchronously: without waiting here their time would show up in
        whatever first reads the tensors (the head's encoding, the tail's NMS), not in the
        layers' own time that the manager's split estimates learn from.
        """
        import torch

        if self._device.type == 'cuda':
            torch.cuda.synchronize(self._device)
        return out

    @staticmethod
    def _guard(what: str, run: Callable[[], Any]) -> Any:
        import torch

        try:
            with torch.inference_mode():
                return run()
        except (RuntimeError, ValueError, IndexError, TypeError) as err:
            raise BackendError(f'{what} failed: {str(err)[:300]}') from err


def _nms() -> Callable[..., Any]:
    try:
        module = importlib.import_module('ultralytics.utils.nms')
    except ImportError:  # older ultralytics kept it in ops
        module = importlib.import_module('ultralytics.utils.ops')
    return module.non_max_suppression
