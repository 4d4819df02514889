"""Export of ultralytics YOLO models to the formats other backends run."""

from __future__ import annotations

import contextlib
from pathlib import Path
import shutil
import sys

from adaptive_offload.errors import BackendError
from edge_inference.ultralytics_backend import named_classes, prepare_offline

FORMATS = ('onnx',)


def export_model(model: str, imgsz: int, out: Path, fmt: str = 'onnx',
                 config_dir: str = '') -> Path:
    """Export a YOLO model (weights or model .yaml) for a fixed square input size.

    Args:
        model: ``yolov8n.pt`` (a local file) or ``yolov8n.yaml`` (random weights).
        imgsz: Network input size baked into the export.
        out: File to write (e.g. ``models/yolov8n-320.onnx``); its folder is created.
        fmt: Export format, one of :data:`FORMATS`.
        config_dir: ultralytics settings folder (see :func:`prepare_offline`).

    Returns:
        The written file.

    Raises:
        BackendError: If the model cannot be loaded or exported.
    """
    if fmt not in FORMATS:
        raise BackendError(f'format {fmt!r} not supported (supported: {", ".join(FORMATS)})')
    if not model.endswith(('.yaml', '.yml')) and not Path(model).is_file():
        raise BackendError(f'weights file {model!r} not found (nothing is downloaded)')
    prepare_offline(config_dir)
    with contextlib.redirect_stdout(sys.stderr):
        from ultralytics import YOLO

        try:
            yolo = YOLO(model, task='detect')
            # The names travel in the export's metadata. ultralytics leaves Model.model
            # unannotated, so mypy types it str | None (its values before loading); a loaded
            # .pt or .yaml makes it a DetectionModel.
            net = yolo.model
            net.names = named_classes(net)  # type: ignore[union-attr]
            written = yolo.export(format=fmt, imgsz=imgsz, dynamic=False, simplify=False,
                                  verbose=False)
        except Exception as err:  # ultralytics raises many types; report them as one
            raise BackendError(f'export of {model!r} to {fmt} failed: {err}') from err
    out.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(str(written), out)
    return out
