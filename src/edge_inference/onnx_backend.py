"""Backends for YOLO detection models exported to ONNX: ONNX Runtime and OpenVINO.

Both run without torch or ultralytics at inference time (what a Raspberry Pi wants):
letterbox, one run, decode of the ``(1, 4 + classes, anchors)`` output, class-wise NMS, and
mapping back to the original image's pixels.
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any, Callable

from adaptive_offload.conversions import boxes_from_arrays
from adaptive_offload.datatypes import Detection
from adaptive_offload.errors import BackendError
import cv2
from edge_inference.detector import BackendOptions
import numpy as np

_PROVIDERS = {'cpu': 'CPUExecutionProvider', 'cuda': 'CUDAExecutionProvider'}


def letterbox(image: np.ndarray, size: int) -> tuple[np.ndarray, float, tuple[float, float]]:
    """Resize keeping the aspect ratio and pad to ``size``x``size`` with grey, as YOLO expects.

    Returns:
        The padded image, the scale applied, and the (x, y) padding added on the left and top.
    """
    height, width = image.shape[:2]
    scale = min(size / height, size / width)
    new_w, new_h = round(width * scale), round(height * scale)
    pad_x, pad_y = (size - new_w) / 2, (size - new_h) / 2
    resized = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_LINEAR) \
        if (new_w, new_h) != (width, height) else image
    top, left = round(pad_y - 0.1), round(pad_x - 0.1)
    padded = cv2.copyMakeBorder(resized, top, size - new_h - top, left, size - new_w - left,
                                cv2.BORDER_CONSTANT, value=(114, 114, 114))
    return padded, scale, (left, top)


def _class_names(path: str) -> dict[int, str]:
    import onnx

    meta = {p.key: p.value for p in onnx.load(path, load_external_data=False).metadata_props}
    try:
        return {int(k): str(v) for k, v in ast.literal_eval(meta['names']).items()}
    except (KeyError, ValueError, SyntaxError) as err:
        raise BackendError(f'{path}: no class names in the metadata; export it with '
                           'adaptive-offload export') from err


class OnnxBackend:
    """A YOLO ``.onnx`` file exported by ``adaptive-offload export``, run by ONNX Runtime.

    The network input size is fixed at export; :meth:`infer` uses it whatever ``imgsz`` asks.

    Args:
        options: ``model`` is the ``.onnx`` path; ``device`` cpu or cuda.

    Raises:
        BackendError: If the file is missing, is not a YOLO detection export, or the device's
            execution provider is not available.
    """

    def __init__(self, options: BackendOptions) -> None:
        if not Path(options.model).is_file():
            raise BackendError(f'ONNX model {options.model!r} not found')
        self._run, shape = self._open(options.model, options.device)
        if len(shape) != 4 or not isinstance(shape[2], int) or shape[2] != shape[3]:
            raise BackendError(f'{options.model}: expected a fixed square input, got {shape}')
        self.imgsz = int(shape[2])
        self._names = _class_names(options.model)

    def _open(self, path: str, device: str) -> tuple[Callable[[np.ndarray], np.ndarray],
                                                     list[Any]]:
        """Load the model; returns a function from input blob to output, and the input shape."""
        import onnxruntime as ort

        provider = _PROVIDERS.get(device.split(':')[0])
        if provider is None or provider not in ort.get_available_providers():
            raise BackendError(f'device {device!r}: no ONNX Runtime provider '
                               f'(available: {", ".join(ort.get_available_providers())})')
        try:
            session = ort.InferenceSession(path, providers=[provider])
        except Exception as err:  # onnxruntime raises its own exception types
            raise BackendError(f'cannot load {path!r}: {err}') from err
        name = session.get_inputs()[0].name
        return (lambda blob: session.run(None, {name: blob})[0]), session.get_inputs()[0].shape

    @property
    def names(self) -> dict[int, str]:
        """Class index to class name, from the export's metadata."""
        return self._names

    def infer(self, image: np.ndarray, imgsz: int, conf: float, iou: float,
              classes: tuple[int, ...] | None, max_det: int) -> tuple[Detection, ...]:
        """Detect objects in one BGR image (see :class:`DetectorBackend`)."""
        padded, scale, (left, top) = letterbox(image, self.imgsz)
        blob = np.ascontiguousarray(padded[:, :, ::-1].transpose(2, 0, 1), dtype=np.float32)
        blob = blob[None] / 255.0
        try:
            output = self._run(blob)[0]
        except Exception as err:  # a failing frame must not kill the node
            raise BackendError(f'inference failed: {err}') from err
        scores_all = output[4:].T
        cls = scores_all.argmax(1)
        scores = scores_all[np.arange(len(cls)), cls]
        keep = scores >= conf
        if classes is not None:
            keep &= np.isin(cls, classes)
        boxes, scores, cls = output[:4].T[keep], scores[keep], cls[keep]
        xywh = np.column_stack([boxes[:, 0] - boxes[:, 2] / 2, boxes[:, 1] - boxes[:, 3] / 2,
                                boxes[:, 2], boxes[:, 3]])
        kept = cv2.dnn.NMSBoxesBatched(xywh.tolist(), scores.tolist(), cls.tolist(),
                                       conf, iou) if len(scores) else []
        chosen = np.asarray(kept, dtype=int).reshape(-1)
        chosen = chosen[np.argsort(-scores[chosen], kind='stable')][:max_det]
        xyxy = xywh[chosen].copy()
        xyxy[:, 2:] += xyxy[:, :2]
        xyxy = (xyxy - [left, top, left, top]) / scale
        height, width = image.shape[:2]
        return boxes_from_arrays(xyxy, scores[chosen], cls[chosen], self._names, width, height)


class OpenVinoBackend(OnnxBackend):
    """The same exported ``.onnx`` file run by OpenVINO (fast on Intel CPUs and NPUs).

    Args:
        options: ``model`` is the ``.onnx`` path; ``device`` an OpenVINO device (``cpu``,
            ``gpu``, ``npu``; upper or lower case).
    """

    def _open(self, path: str, device: str) -> tuple[Callable[[np.ndarray], np.ndarray],
                                                     list[Any]]:
        import openvino as ov

        core = ov.Core()
        target = device.upper()
        if target not in core.available_devices:
            raise BackendError(f'device {device!r}: not an OpenVINO device here '
                               f'(available: {", ".join(core.available_devices)})')
        # OpenVINO picks bf16 on CPUs that have it (AVX-512 BF16, AMX): boxes and classes
        # then differ from the exported model's. Full precision keeps the export's answers.
        config = {'INFERENCE_PRECISION_HINT': 'f32'} if target == 'CPU' else {}
        try:
            compiled = core.compile_model(core.read_model(path), target, config)
        except Exception as err:  # OpenVINO raises RuntimeError subclasses of its own
            raise BackendError(f'cannot load {path!r}: {err}') from err
        shape = [d.get_length() if d.is_static else None
                 for d in compiled.input(0).get_partial_shape()]
        output = compiled.output(0)
        return (lambda blob: compiled(blob)[output]), shape
