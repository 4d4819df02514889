"""torchvision Faster / Mask R-CNN detectors for the cloud service."""

from __future__ import annotations

from dataclasses import dataclass
import functools
from pathlib import Path
import threading
from typing import Any, Callable, TypeVar

from adaptive_offload.errors import BackendError, ConfigError
import numpy as np
from rcnn_service.compact_rcnn import COMPACT_ARCH

R = TypeVar('R')


def _builder(name: str) -> Callable[..., Any]:
    from torchvision.models import detection

    return getattr(detection, name)


def _compact() -> Callable[..., Any]:
    from rcnn_service.compact_rcnn import fasterrcnn_mobilenet_v3_small_fpn

    return fasterrcnn_mobilenet_v3_small_fpn


ARCHITECTURES: dict[str, Callable[[], Callable[..., Any]]] = {
    **{name: functools.partial(_builder, name) for name in (
        'fasterrcnn_resnet50_fpn_v2', 'fasterrcnn_mobilenet_v3_large_fpn',
        'fasterrcnn_mobilenet_v3_large_320_fpn', 'maskrcnn_resnet50_fpn')},
    COMPACT_ARCH: _compact,
}


@dataclass(frozen=True)
class Detections:
    """One image's detections in its pixels.

    Attributes:
        boxes: Nx4 float32, x1 y1 x2 y2.
        scores: N float32.
        labels: N class names.
        masks: For Mask R-CNN, N binary HxW masks (uint8); else None.
    """

    boxes: np.ndarray
    scores: np.ndarray
    labels: tuple[str, ...]
    masks: np.ndarray | None = None


def coco_categories() -> list[str]:
    """Return the 91 COCO category slots of torchvision's detectors (index 0 background)."""
    from torchvision.models.detection import FasterRCNN_ResNet50_FPN_Weights

    return list(FasterRCNN_ResNet50_FPN_Weights.DEFAULT.meta['categories'])


def calibration_frame() -> np.ndarray:
    """Return a blank 640x480 frame, the size robots send by default, to time batches with."""
    return np.zeros((480, 640, 3), np.uint8)


class RcnnDetector:
    """A torchvision R-CNN loaded once, warmed up, thread-safe.

    Args:
        arch: One of :data:`ARCHITECTURES`.
        checkpoint: Path of a checkpoint, read with ``torch.load(..., weights_only=True)``
            (never unpickles objects): a torchvision state_dict of COCO's 91 classes, or
            ``{'arch', 'categories', 'state_dict'}`` as ``adaptive-offload train cloud``
            writes (labels are then its categories); empty builds random weights (tests,
            benchmarks).
        device: ``cpu`` or ``cuda[:N]``.
        score_threshold: Detections below it are dropped.
        threads: torch intra-op threads; 0 keeps torch's default.
        input_size: Longest side, in pixels, the model resizes an image to (a 640x480 frame
            at 480 is read at 480x360); 0 keeps the architecture's own resizing.

    Raises:
        ConfigError: For an unknown architecture.
        BackendError: If the checkpoint does not load, is for another architecture or does
            not match its categories, or the device is unavailable.
    """

    def __init__(self, arch: str, checkpoint: str = '', device: str = 'cpu',
                 score_threshold: float = 0.5, threads: int = 0, input_size: int = 0) -> None:
        import torch

        if arch not in ARCHITECTURES:
            raise ConfigError(f'unknown architecture {arch!r} '
                              f'(known: {", ".join(sorted(ARCHITECTURES))})')
        if device.startswith('cuda') and not torch.cuda.is_available():
            raise BackendError(f'device {device!r} requested but CUDA is not available')
        if threads:
            torch.set_num_threads(threads)
        self._torch = torch
        self._device = torch.device(device)
        state, categories = (_read_checkpoint(torch, checkpoint, arch) if checkpoint
                             else (None, coco_categories()))
        self.categories = categories
        model = ARCHITECTURES[arch]()(weights=None, weights_backbone=None,
                                      num_classes=len(self.categories),
                                      box_score_thresh=score_threshold)
        if state is not None:
            try:
                model.load_state_dict(state)
            except Exception as err:  # torch raises many types for a bad checkpoint
                raise BackendError(f'cannot load checkpoint {checkpoint!r} as {arch}: '
                                   f'{err}') from err
        self._model = model.to(self._device).eval()
        self.arch = arch
        self.score_threshold = score_threshold
        self._lock = threading.Lock()
        transform = self._model.transform
        self._native = (tuple(transform.min_size), int(transform.max_size))
        self.input_size = 0
        self.set_input_size(input_size)
        self.detect([np.zeros((320, 320, 3), np.uint8)])  # warm-up before readiness

    @property
    def model(self) -> Any:
        """The torchvision model, in eval mode on its device (to split or profile it)."""
        return self._model

    def set_input_size(self, size: int) -> None:
        """Resize images so that their longest side is ``size`` (0: the architecture's own).

        Raises:
            ConfigError: For a size below 32 pixels (other than 0).
        """
        if size and size < 32:
            raise ConfigError(f'input size {size}: at least 32 pixels, or 0 for the '
                              "architecture's own")
        transform = self._model.transform
        with self._lock:
            # torchvision scales the short side to min_size unless the long side would pass
            # max_size; both at ``size`` make the long side ``size`` whatever the aspect.
            transform.min_size, transform.max_size = ((size,), size) if size else self._native
            self.input_size = size

    @property
    def device(self) -> Any:
        """The ``torch.device`` the model runs on."""
        return self._device

    def detect(self, images: list[np.ndarray]) -> list[Detections]:
        """Detect objects in BGR images (one batch).

        Args:
            images: HxWx3 uint8 BGR images, sizes may differ.

        Returns:
            One :class:`Detections` per image.
        """
        torch = self._torch
        tensors = [image_tensor(img, self._device) for img in images]
        with self._lock, torch.inference_mode():
            outputs = self._model(tensors)
        return self.detections(outputs)

    def run_tail(self, split: Any, payload: Any) -> list[Detections]:
        """Run the tail of a split model on a head's payload, as :meth:`detect` runs a batch.

        Args:
            split: A ``rcnn_service.rcnn_split.RcnnSplit`` of :attr:`model`.
            payload: Its ``RcnnPayload``, tensors on :attr:`device`.

        Returns:
            One :class:`Detections` per image of the payload, exactly as :meth:`detect` gives
            them for the images the head read.
        """
        return self.detections(self.run_locked(lambda: split.tail(payload)))

    def run_locked(self, work: Callable[[], R]) -> R:
        """Run ``work`` on the model as :meth:`detect` does: alone, without autograd."""
        with self._lock, self._torch.inference_mode():
            return work()

    def detections(self, outputs: list[dict[str, Any]]) -> list[Detections]:
        """Turn the model's outputs into :class:`Detections`: thresholded, labels named.

        Args:
            outputs: Per image, the torchvision model's ``boxes``, ``scores``, ``labels`` (and
                ``masks``) in the image's pixels.
        """
        results = []
        for out in outputs:
            keep = out['scores'] >= self.score_threshold
            labels = out['labels'][keep].cpu().numpy()
            masks = None
            if 'masks' in out:
                masks = (out['masks'][keep, 0] > 0.5).cpu().numpy().astype(np.uint8)
            results.append(Detections(
                boxes=out['boxes'][keep].cpu().numpy().astype(np.float32),
                scores=out['scores'][keep].cpu().numpy().astype(np.float32),
                labels=tuple(self.categories[i] if 0 <= i < len(self.categories) else str(i)
                             for i in labels.tolist()),
                masks=masks))
        return results


def image_tensor(image: np.ndarray, device: Any = 'cpu') -> Any:
    """Return a BGR uint8 image as the model reads it: an RGB CxHxW float tensor in 0..1.

    A robot running the head of a split detector feeds it this, so that its tail's answer is
    the one :meth:`RcnnDetector.detect` gives for the same image.

    Args:
        image: HxWx3 uint8 BGR.
        device: Where the tensor goes.
    """
    import torch

    return (torch.from_numpy(np.ascontiguousarray(image[:, :, ::-1])).permute(2, 0, 1)
            .to(device, torch.float32).div_(255.0))


def _read_checkpoint(torch: Any, checkpoint: str, arch: str) -> tuple[dict[str, Any], list[str]]:
    """Return a checkpoint's state_dict and its categories (COCO's for a plain state_dict)."""
    if not Path(checkpoint).is_file():
        raise BackendError(f'checkpoint {checkpoint!r} not found')
    try:
        data = torch.load(checkpoint, map_location='cpu', weights_only=True)
    except Exception as err:  # torch raises many types for a bad checkpoint
        raise BackendError(f'cannot load checkpoint {checkpoint!r}: {err}') from err
    if not isinstance(data, dict):
        raise BackendError(f'checkpoint {checkpoint!r} holds no state_dict')
    if 'state_dict' not in data:
        return data, coco_categories()
    saved, categories, state = data.get('arch'), data.get('categories'), data['state_dict']
    if saved != arch:
        raise BackendError(f'checkpoint {checkpoint!r} is for architecture {saved!r}, not '
                           f'{arch!r} (pass --arch {saved})')
    if (not isinstance(categories, list) or len(categories) < 2 or
            not all(isinstance(c, str) for c in categories) or not isinstance(state, dict)):
        raise BackendError(f'checkpoint {checkpoint!r}: categories must be a list of names, '
                           'background first, and state_dict a dict')
    scores = state.get('roi_heads.box_predictor.cls_score.weight')
    if scores is not None and scores.shape[0] != len(categories):
        raise BackendError(f'checkpoint {checkpoint!r} names {len(categories)} categories but '
                           f'its weights score {scores.shape[0]} classes')
    return state, categories
