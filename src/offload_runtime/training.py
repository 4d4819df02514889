"""Training the shipped detectors on the sample scenes, on the CPU, in bounded time.

The edge model is ultralytics YOLOv8n (``yolov8n.yaml``, 3 classes) trained on a YOLO-layout
copy of generated frames; the cloud model is the compact Faster R-CNN of
:mod:`rcnn_service.compact_rcnn`, trained by a plain torch loop on frames rendered as it goes.
Both are seeded: the same options give the same frames and the same start.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
import math
from pathlib import Path
import shutil
import sys
import tempfile
import time
from typing import Any, Callable, Iterator

from adaptive_offload.errors import BackendError, ConfigError
import numpy as np
from offload_runtime.train_data import CLASSES, LabelledFrame, split_frames, write_yolo_dataset

Log = Callable[[str], None]
CLOUD_CATEGORIES = ('__background__', *CLASSES)


@dataclass(frozen=True)
class EdgeTraining:
    """How to train the edge model.

    Attributes:
        out: The ``.pt`` file to write.
        frames: Training frames.
        val_frames: Validation frames (picks the best epoch).
        epochs: Training epochs.
        imgsz: Training input size.
        batch: Images per batch.
        scale: Random zoom of the augmentation (ultralytics ``scale``: gain 1 +- scale), so
            that objects appear at the sizes other input sizes show them.
        time_budget_s: Stop after about this long (0: after ``epochs``).
        seed: Seed of the frames and of the training.
        threads: torch threads.
    """

    out: Path
    frames: int = 500
    val_frames: int = 60
    epochs: int = 30
    imgsz: int = 320
    batch: int = 16
    scale: float = 0.9
    time_budget_s: float = 0.0
    seed: int = 0
    threads: int = 1

    def validate(self) -> None:
        """Raise :class:`ConfigError` for options that cannot train."""
        if not 0 <= self.scale < 1:
            raise ConfigError('scale must be within [0, 1)')
        if min(self.frames, self.val_frames, self.epochs, self.batch, self.threads) < 1:
            raise ConfigError('frames, val-frames, epochs, batch and threads must be >= 1')
        if self.imgsz < 32 or self.imgsz % 32 or self.time_budget_s < 0:
            raise ConfigError('imgsz must be a multiple of 32 and time-budget >= 0')


@dataclass(frozen=True)
class CloudTraining:
    """How to train the cloud model.

    Attributes:
        out: The checkpoint file to write.
        steps: Optimiser steps.
        batch: Images per step (each step renders new frames).
        lr: Peak learning rate (AdamW; linear warm-up, cosine decay).
        time_budget_s: Stop after about this long (0: after ``steps``); the learning rate
            decays over the steps or the budget, whichever ends first.
        seed: Seed of the frames and of the weights.
        threads: torch threads.
    """

    out: Path
    steps: int = 800
    batch: int = 4
    lr: float = 1e-3
    time_budget_s: float = 0.0
    seed: int = 0
    threads: int = 1

    def validate(self) -> None:
        """Raise :class:`ConfigError` for options that cannot train."""
        if min(self.steps, self.batch, self.threads) < 1 or not 0 < self.lr < 1:
            raise ConfigError('steps, batch and threads must be >= 1, lr within (0, 1)')
        if self.time_budget_s < 0:
            raise ConfigError('time-budget must be >= 0')


def train_edge(options: EdgeTraining, log: Log) -> Path:
    """Train YOLOv8n on generated frames and write its fp16 checkpoint.

    Args:
        options: What to train.
        log: Receives progress lines.

    Returns:
        The written file (loadable by ``ultralytics.YOLO``).

    Raises:
        ConfigError: For invalid options.
        BackendError: If training fails.
    """
    from edge_inference.ultralytics_backend import prepare_offline

    options.validate()
    prepare_offline()
    with contextlib.redirect_stdout(sys.stderr):  # its first-run notice is not our output
        import torch
        from ultralytics import YOLO
    torch.set_num_threads(options.threads)
    with tempfile.TemporaryDirectory(prefix='adaptive-offload-train-') as tmp:
        folder = Path(tmp)
        log(f'rendering {options.frames} training and {options.val_frames} validation frames')
        data = write_yolo_dataset(folder / 'data', {
            'train': list(split_frames('train', options.frames, options.seed)),
            'val': list(split_frames('val', options.val_frames, options.seed))})
        model = YOLO('yolov8n.yaml', task='detect')
        budget_h = options.time_budget_s / 3600 if options.time_budget_s else None
        log(f'training yolov8n at {options.imgsz} for {options.epochs} epochs')
        try:
            with contextlib.redirect_stdout(sys.stderr):
                model.train(data=str(data), epochs=options.epochs, imgsz=options.imgsz,
                            batch=options.batch, scale=options.scale, workers=0,
                            device='cpu', seed=options.seed, deterministic=True,
                            plots=False, amp=False, pretrained=False,
                            project=str(folder / 'runs'), name='edge', exist_ok=True,
                            time=budget_h, patience=options.epochs, close_mosaic=3,
                            verbose=False)
        except Exception as err:  # ultralytics raises many types; report them as one
            raise BackendError(f'edge training failed: {err}') from err
        weights = folder / 'runs' / 'edge' / 'weights'
        best = next((w for w in (weights / 'best.pt', weights / 'last.pt') if w.is_file()),
                    None)
        if best is None:
            raise BackendError('edge training wrote no weights')
        options.out.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(best, options.out)  # ultralytics' final checkpoints are already fp16
    return options.out


def train_cloud(options: CloudTraining, log: Log,
                clock: Callable[[], float] = time.monotonic) -> Path:
    """Train the compact Faster R-CNN on generated frames and write its fp16 checkpoint.

    Args:
        options: What to train.
        log: Receives progress lines.
        clock: Monotonic seconds (the time budget).

    Returns:
        The written checkpoint: ``{'arch', 'categories', 'state_dict'}``, fp16 tensors,
        loadable with ``torch.load(..., weights_only=True)``.

    Raises:
        ConfigError: For invalid options.
    """
    import torch
    from rcnn_service.compact_rcnn import COMPACT_ARCH, fasterrcnn_mobilenet_v3_small_fpn

    options.validate()
    torch.set_num_threads(options.threads)
    torch.manual_seed(options.seed)
    model = fasterrcnn_mobilenet_v3_small_fpn(
        num_classes=len(CLOUD_CATEGORIES), rpn_pre_nms_top_n_train=1000,
        rpn_post_nms_top_n_train=500, box_batch_size_per_image=128)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimiser = torch.optim.AdamW(params, lr=options.lr, weight_decay=1e-4)
    warmup = min(50, options.steps // 10 + 1)
    frames = split_frames('train', options.steps * options.batch, options.seed)
    flips = np.random.default_rng(options.seed)
    start = clock()
    log(f'training {COMPACT_ARCH} for {options.steps} steps of {options.batch} frames')
    for step in range(options.steps):
        elapsed = clock() - start
        # The cosine decay ends at the last step or at the budget, whichever comes first, so
        # a run cut short by a slow machine still ends annealed.
        progress = max(step / options.steps,
                       elapsed / options.time_budget_s if options.time_budget_s else 0.0)
        if progress >= 1.0:
            log(f'time budget reached after {step} steps')
            break
        for group in optimiser.param_groups:
            group['lr'] = options.lr * min((step + 1) / warmup,
                                           0.5 * (1 + math.cos(math.pi * progress)))
        images, targets = _batch(frames, options.batch, flips, torch)
        losses = model(images, targets)
        total = sum(losses.values())
        optimiser.zero_grad()
        total.backward()
        torch.nn.utils.clip_grad_norm_(params, 10.0)
        optimiser.step()
        if step % 50 == 0 or step == options.steps - 1:
            log(f'step {step + 1}/{options.steps} loss {float(total.detach()):.3f} '
                f'({clock() - start:.0f} s)')
    state = {k: (v.half() if v.is_floating_point() else v)
             for k, v in model.state_dict().items()}
    options.out.parent.mkdir(parents=True, exist_ok=True)
    torch.save({'arch': COMPACT_ARCH, 'categories': list(CLOUD_CATEGORIES),
                'state_dict': state}, options.out)
    return options.out


def _batch(frames: Iterator[LabelledFrame], size: int, flips: np.random.Generator,
           torch: Any) -> tuple[list[Any], list[dict[str, Any]]]:
    images, targets = [], []
    for _ in range(size):
        frame = next(frames)
        boxes = np.array([[d.x1, d.y1, d.x2, d.y2] for d in frame.truth],
                         dtype=np.float32).reshape(-1, 4)
        image = frame.image[:, :, ::-1]  # BGR to the RGB the service feeds
        if flips.random() < 0.5:
            image = image[:, ::-1]
            width = image.shape[1]
            boxes[:, [0, 2]] = width - boxes[:, [2, 0]]
        images.append(torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)
                      .float().div_(255.0))
        targets.append({'boxes': torch.from_numpy(boxes),
                        'labels': torch.tensor([CLOUD_CATEGORIES.index(d.class_name)
                                                for d in frame.truth], dtype=torch.int64)})
    return images, targets
