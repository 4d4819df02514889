"""ONNX Runtime backend: same detections as the PyTorch backend on the same frame."""

from __future__ import annotations

from pathlib import Path

from adaptive_offload.datatypes import Detection
from adaptive_offload.errors import BackendError
from edge_inference.backends import create_backend
from edge_inference.detector import BackendOptions
from edge_inference.onnx_backend import letterbox
from edge_inference.ultralytics_backend import prepare_offline
import numpy as np
from offload_runtime.cli import main
import pytest


@pytest.fixture(scope='module')
def calibrated_pt(tmp_path_factory: pytest.TempPathFactory, yolo_config_dir: str) -> Path:
    """yolov8n with random weights whose batch norms are calibrated on noise.

    Plain random initialisation makes every score about the same (activations vanish), so
    matching detections across backends would compare ties; calibrated statistics give
    distinct, confident boxes that a wrong decode or box mapping would change.
    """
    import torch

    prepare_offline(yolo_config_dir)
    from ultralytics import YOLO

    torch.manual_seed(0)
    yolo = YOLO('yolov8n.yaml')
    for module in yolo.model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.reset_running_stats()
            module.momentum = None
    yolo.model.train()
    with torch.no_grad():
        yolo.model(torch.rand(4, 3, 320, 320))
    yolo.model.eval()
    for seq in yolo.model.model[-1].cv3:
        seq[-1].bias.data.fill_(-1.0)
    path = tmp_path_factory.mktemp('models') / 'calibrated.pt'
    yolo.save(str(path))
    return path


def _matched(ours: tuple[Detection, ...], theirs: tuple[Detection, ...]) -> float:
    hits = sum(any(o.class_name == t.class_name and o.iou(t) >= 0.9 and
                   abs(o.score - t.score) < 1e-3 for t in theirs) for o in ours)
    return hits / len(ours)


def test_onnx_matches_pytorch_on_the_same_frame(calibrated_pt: Path, tmp_path: Path,
                                                yolo_config_dir: str) -> None:
    onnx_path = tmp_path / 'm.onnx'
    assert main(['export', str(calibrated_pt), '--out', str(onnx_path), '--imgsz', '320']) == 0
    torch_backend = create_backend('ultralytics', BackendOptions(str(calibrated_pt), 'cpu',
                                                                 yolo_config_dir))
    onnx_backend = create_backend('onnx', BackendOptions(str(onnx_path)))
    assert onnx_backend.names == torch_backend.names and onnx_backend.names[0] == 'person'
    image = np.random.default_rng(3).integers(0, 255, (320, 320, 3), np.uint8)
    a = torch_backend.infer(image, 320, 0.5, 0.7, None, 100)
    b = onnx_backend.infer(image, 320, 0.5, 0.7, None, 100)
    assert len(a) >= 20 and abs(len(a) - len(b)) <= 2
    assert _matched(a, b) >= 0.95 and _matched(b, a) >= 0.95
    keep = onnx_backend.infer(image, 320, 0.5, 0.7, (0,), 100)
    assert {d.class_name for d in keep} <= {'person'}
    openvino = create_backend('openvino', BackendOptions(str(onnx_path)))
    c = openvino.infer(image, 320, 0.5, 0.7, None, 100)
    assert _matched(a, c) >= 0.95 and _matched(c, a) >= 0.95


def test_onnx_boxes_map_back_to_the_original_frame(calibrated_pt: Path, tmp_path: Path,
                                                   yolo_config_dir: str) -> None:
    onnx_path = tmp_path / 'm.onnx'
    main(['export', str(calibrated_pt), '--out', str(onnx_path), '--imgsz', '320'])
    backend = create_backend('onnx', BackendOptions(str(onnx_path)))
    image = np.random.default_rng(4).integers(0, 255, (90, 400, 3), np.uint8)
    dets = backend.infer(image, 640, 0.3, 0.7, None, 100)  # imgsz is fixed by the export
    assert dets and all(0 <= d.x1 <= d.x2 <= 400 and 0 <= d.y1 <= d.y2 <= 90 for d in dets)
    assert any(d.x2 > 320 for d in dets)


def test_letterbox_geometry() -> None:
    padded, scale, (left, top) = letterbox(np.zeros((100, 200, 3), np.uint8), 320)
    assert padded.shape == (320, 320, 3) and scale == 1.6 and (left, top) == (0, 80)
    assert padded[0, 0, 0] == 114 and padded[160, 160, 0] == 0


def test_onnx_errors(tmp_path: Path) -> None:
    with pytest.raises(BackendError, match='not found'):
        create_backend('onnx', BackendOptions(str(tmp_path / 'none.onnx')))
    bogus = tmp_path / 'bogus.onnx'
    bogus.write_bytes(b'not a model')
    with pytest.raises(BackendError, match='cannot load'):
        create_backend('onnx', BackendOptions(str(bogus)))
    with pytest.raises(BackendError, match='cannot load'):
        create_backend('openvino', BackendOptions(str(bogus)))
    with pytest.raises(BackendError, match='not an OpenVINO device'):
        create_backend('openvino', BackendOptions(str(bogus), device='tpu'))
    with pytest.raises(BackendError, match='no ONNX Runtime provider'):
        create_backend('onnx', BackendOptions(str(bogus), device='tpu'))
