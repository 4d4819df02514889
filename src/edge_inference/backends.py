"""Detector backends behind one protocol (:mod:`edge_inference.detector`), chosen by name."""

from __future__ import annotations

from typing import Callable

from adaptive_offload.errors import ConfigError
from edge_inference.detector import BackendOptions, DetectorBackend


def _ultralytics(options: BackendOptions) -> DetectorBackend:
    from edge_inference.ultralytics_backend import UltralyticsBackend
    return UltralyticsBackend(options)


def _onnx(options: BackendOptions) -> DetectorBackend:
    from edge_inference.onnx_backend import OnnxBackend
    return OnnxBackend(options)


def _openvino(options: BackendOptions) -> DetectorBackend:
    from edge_inference.onnx_backend import OpenVinoBackend
    return OpenVinoBackend(options)


BACKENDS: dict[str, Callable[[BackendOptions], DetectorBackend]] = {
    'ultralytics': _ultralytics,
    'onnx': _onnx,
    'openvino': _openvino,
}


def create_backend(name: str, options: BackendOptions) -> DetectorBackend:
    """Build a registered backend.

    Raises:
        ConfigError: If no backend has that name.
        BackendError: If the backend cannot load the model.
    """
    if name not in BACKENDS:
        raise ConfigError(f'unknown backend {name!r} (known: {", ".join(sorted(BACKENDS))})')
    return BACKENDS[name](options)
