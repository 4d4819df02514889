"""ultralytics YOLO backend, kept off the network."""

from __future__ import annotations

import contextlib
from importlib import resources
import os
from pathlib import Path
import shutil
import sys
from typing import Any

from adaptive_offload.allocator import keep_freed_memory
from adaptive_offload.conversions import boxes_from_arrays
from adaptive_offload.datatypes import Detection
from adaptive_offload.errors import BackendError
from edge_inference.detector import BackendOptions
import numpy as np
import yaml

_CONFIG_SUFFIXES = ('.yaml', '.yml')


def prepare_offline(config_dir: str = '') -> Path:
    """Configure ultralytics so that it never downloads anything; call before importing it.

    Sets ``YOLO_OFFLINE`` and ``YOLO_CONFIG_DIR`` (unless the user set them) and places a local
    TrueType font as ``Arial.ttf`` there, which ultralytics would otherwise fetch to plot.

    Args:
        config_dir: Settings folder; empty uses ``$XDG_CONFIG_HOME/adaptive_offload/ultralytics``.

    Returns:
        The settings folder in use.
    """
    os.environ['YOLO_OFFLINE'] = '1'
    if config_dir:
        os.environ['YOLO_CONFIG_DIR'] = config_dir
    elif 'YOLO_CONFIG_DIR' not in os.environ:
        base = os.environ.get('XDG_CONFIG_HOME') or str(Path.home() / '.config')
        os.environ['YOLO_CONFIG_DIR'] = str(Path(base) / 'adaptive_offload' / 'ultralytics')
    folder = Path(os.environ['YOLO_CONFIG_DIR'])
    folder.mkdir(parents=True, exist_ok=True)
    font = folder / 'Arial.ttf'
    if not font.exists():
        try:
            # One segment per step: Traversable takes a single child on 3.10.
            local = resources.files('matplotlib') / 'mpl-data' / 'fonts' / 'ttf' / 'DejaVuSans.ttf'
            with resources.as_file(local) as path:
                shutil.copyfile(path, font)
        except (ModuleNotFoundError, OSError):
            pass  # plotting is never used by the nodes; only ultralytics' own plots need it
    return folder


def coco_names() -> dict[int, str]:
    """Class names of COCO (80), from the dataset config ultralytics ships."""
    text = (resources.files('ultralytics') / 'cfg' / 'datasets' / 'coco.yaml').read_text()
    return {int(k): str(v) for k, v in yaml.safe_load(text)['names'].items()}


class UltralyticsBackend:
    """YOLO (v5u/v8/11 and later) through the ultralytics package.

    Args:
        options: Model and device.

    Raises:
        BackendError: If the weights file is missing, the device is unavailable or loading fails.
    """

    def __init__(self, options: BackendOptions) -> None:
        prepare_offline(options.config_dir)
        with contextlib.redirect_stdout(sys.stderr):  # its first-run notice is not our output
            from ultralytics import YOLO

        model = options.model
        is_config = model.endswith(_CONFIG_SUFFIXES)
        if not is_config and not Path(model).is_file():
            raise BackendError(f'weights file {model!r} not found (nothing is downloaded: '
                               'give the path of a local .pt file, or a model .yaml)')
        self._device = _check_device(options.device)
        if self._device == 'cpu':
            keep_freed_memory()
        try:
            self._model: Any = YOLO(model, task='detect')
        except Exception as err:  # ultralytics raises many types; report them as one
            raise BackendError(f'cannot load {model!r}: {err}') from err
        self._names = named_classes(self._model)

    @property
    def names(self) -> dict[int, str]:
        """Class index to class name."""
        return self._names

    @property
    def yolo(self) -> Any:
        """The loaded ``ultralytics.YOLO`` (the split roles run its predictor's network)."""
        return self._model

    @property
    def device(self) -> str:
        """The device it runs on."""
        return self._device

    def infer(self, image: np.ndarray, imgsz: int, conf: float, iou: float,
              classes: tuple[int, ...] | None, max_det: int) -> tuple[Detection, ...]:
        """Detect objects in one BGR image (see :class:`DetectorBackend`)."""
        try:
            result = self._model.predict(image, imgsz=imgsz, conf=conf, iou=iou,
                                         classes=list(classes) if classes else None,
                                         max_det=max_det, device=self._device,
                                         verbose=False)[0]
        except Exception as err:  # a failing frame must not kill the node
            raise BackendError(f'inference failed: {err}') from err
        boxes = result.boxes
        height, width = image.shape[:2]
        return boxes_from_arrays(boxes.xyxy.cpu().numpy(), boxes.conf.cpu().numpy(),
                                 boxes.cls.cpu().numpy(), self._names, width, height)


def named_classes(model: Any) -> dict[int, str]:
    """Class names of a YOLO model.

    An untrained 80-class architecture (numbered classes) gets COCO's names, which is what its
    outputs mean once trained on COCO.
    """
    names = {int(k): str(v) for k, v in model.names.items()}
    if len(names) == 80 and all(v == str(k) for k, v in names.items()):
        return coco_names()
    return names


def _check_device(device: str) -> str:
    import torch

    if device.startswith('cuda') and not torch.cuda.is_available():
        raise BackendError(f'device {device!r} requested but CUDA is not available')
    if device == 'mps' and not (hasattr(torch.backends, 'mps') and
                                torch.backends.mps.is_available()):
        raise BackendError("device 'mps' requested but MPS is not available")
    if not (device == 'cpu' or device == 'mps' or device.startswith('cuda')):
        raise BackendError(f'unknown device {device!r} (cpu, cuda, cuda:N or mps)')
    return device
