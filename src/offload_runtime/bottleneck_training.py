"""Training a learned bottleneck for the cloud R-CNN's split (``rcnn_service.bottleneck``).

The detector stays frozen. Its crossing tensor at the split point is computed once for
generated training frames (the ``train`` split of :mod:`offload_runtime.train_data`, never the
held-out seeds); the bottleneck then learns, on random crops of those tensors, to restore them
through an int8 code: the loss is the MSE of the restored tensor to the original plus, weighted,
the MSE of the feature pyramid the frozen rest of the backbone and the FPN build from each,
every term divided by its target's variance so that none dominates by scale. The code is
quantised in training as on the wire (int8, one scale per channel and image, straight-through
gradient). Seeded: the same options give the same frames, crops and start.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
import math
from pathlib import Path
import time
from typing import Any, Callable, Sequence

from adaptive_offload.errors import ConfigError
from adaptive_offload.tensor_codec import INT8_LEVELS
from offload_runtime.train_data import split_frames
from rcnn_service.compact_rcnn import COMPACT_ARCH

Log = Callable[[str], None]
BOTTLENECK_FILE = 'rcnn-shapes-bottleneck.pt'
DEFAULT_POINT = 4  # after body.3: the last point where one tensor (24 x H/8 x W/8) crosses


@dataclass(frozen=True)
class BottleneckTraining:
    """How to train a bottleneck.

    Attributes:
        out: The bottleneck file to write.
        detector: The detector checkpoint it is trained against (frozen).
        arch: The detector's architecture.
        point: Split point (one tensor must cross it).
        width: Channels of the code that crosses.
        reduction: Spatial reduction of the code (1 or 2).
        hidden: Hidden channels of the encoder and decoder.
        frames: Training frames whose crossing tensors are cropped.
        steps: Optimiser steps.
        batch: Crops per step.
        crop: Side of a crop, in cells of the crossing tensor (a multiple of 4 keeps the
            downstream strides aligned).
        lr: Peak learning rate (AdamW, cosine decay).
        fpn_weight: Weight of the feature-pyramid term (0: crossing tensor only).
        time_budget_s: Stop after about this long (0: after ``steps``).
        seed: Seed of the frames, the crops and the weights.
        threads: torch threads.
    """

    out: Path
    detector: Path
    arch: str = COMPACT_ARCH
    point: int = DEFAULT_POINT
    width: int = 2
    reduction: int = 1
    hidden: int = 48
    frames: int = 160
    steps: int = 1500
    batch: int = 8
    crop: int = 32
    lr: float = 2e-3
    fpn_weight: float = 1.0
    time_budget_s: float = 0.0
    seed: int = 0
    threads: int = 1

    def validate(self) -> None:
        """Raise :class:`ConfigError` for options that cannot train."""
        if min(self.width, self.hidden, self.frames, self.steps, self.batch,
               self.threads) < 1 or self.crop < 4:
            raise ConfigError('width, hidden, frames, steps, batch and threads must be >= 1, '
                              'crop >= 4')
        if self.reduction not in (1, 2):
            raise ConfigError(f'reduction {self.reduction}: must be 1 or 2')
        if not 0 < self.lr < 1 or self.fpn_weight < 0 or self.time_budget_s < 0:
            raise ConfigError('lr must be within (0, 1), fpn-weight and time-budget >= 0')


def fake_quantised(code: Any) -> Any:
    """Return ``code`` (N, C, H, W) rounded as int8 per image and channel; identity gradient."""
    peak = code.detach().abs().amax(dim=(2, 3), keepdim=True)
    scale = (peak / INT8_LEVELS).clamp_min(1e-12)
    return code + ((code / scale).round() * scale - code).detach()


def downstream_pyramid(model: Any, point: int, x: Any) -> list[Any]:
    """Return the FPN levels the frozen model builds from the one tensor crossing ``point``.

    Valid for single-tensor points: no output the FPN reads comes before them.
    """
    body = model.backbone.body
    returns = {str(k): str(v) for k, v in body.return_layers.items()}
    children = list(body.named_children())
    ordered: OrderedDict[str, Any] = OrderedDict()
    if point and children[point - 1][0] in returns:
        ordered[returns[children[point - 1][0]]] = x
    for name, module in children[point:]:
        x = module(x)
        if name in returns:
            ordered[returns[name]] = x
    return list(model.backbone.fpn(ordered).values())


def distill(model: Any, bottleneck: Any, features: Sequence[Any], steps: int, batch: int = 8,
            crop: int = 32, lr: float = 2e-3, fpn_weight: float = 1.0, seed: int = 0,
            time_budget_s: float = 0.0, clock: Callable[[], float] = time.monotonic,
            log: Log | None = None) -> list[float]:
    """Train ``bottleneck`` on crossing tensors ``features``; return the loss of every step.

    Args:
        model: The frozen detector, in eval mode (its weights are not changed).
        bottleneck: A :class:`rcnn_service.bottleneck.LearnedBottleneck` for it.
        features: Crossing tensors (1, C, H, W) of equal size, one per training frame.
        steps: Optimiser steps.
        batch: Crops per step, drawn with replacement.
        crop: Side of a crop in cells (at most the tensors' sides).
        lr: Peak learning rate (AdamW, cosine decay to 0).
        fpn_weight: Weight of the feature-pyramid term.
        seed: Seed of the crops.
        time_budget_s: Stop after about this long (0: no limit).
        clock: Monotonic seconds.
        log: Receives progress lines.

    Returns:
        The training loss of each step taken.

    Raises:
        ConfigError: If there are no features, they differ in size, or the model is training.
    """
    import numpy as np
    import torch

    if not features or len({tuple(f.shape) for f in features}) != 1:
        raise ConfigError('distillation needs crossing tensors, all of one shape')
    if model.training:
        raise ConfigError('the detector is in training mode: call model.eval() first')
    point = bottleneck.spec.point
    height, width = features[0].shape[-2:]
    side_h, side_w = min(crop, int(height)), min(crop, int(width))
    rng = np.random.default_rng(seed)
    frozen = [(p, p.requires_grad) for p in model.parameters()]
    for p, _ in frozen:
        p.requires_grad_(False)
    net = bottleneck.net.train()
    optimiser = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-5)
    losses: list[float] = []
    start = clock()
    try:
        for step in range(steps):
            progress = max(step / steps, (clock() - start) / time_budget_s if time_budget_s
                           else 0.0)
            if progress >= 1.0:
                if log:
                    log(f'time budget reached after {step} steps')
                break
            for group in optimiser.param_groups:
                group['lr'] = lr * 0.5 * (1 + math.cos(math.pi * progress))
            crops = []
            for index in rng.integers(len(features), size=batch):
                top = int(rng.integers(int(height) - side_h + 1))
                left = int(rng.integers(int(width) - side_w + 1))
                crops.append(features[int(index)][..., top:top + side_h, left:left + side_w])
            x = torch.cat(crops)
            restored = bottleneck.restore(fake_quantised(bottleneck.compress(x)),
                                          (side_h, side_w))
            loss = _normalised_mse(restored, x)
            if fpn_weight:
                with torch.no_grad():
                    reference = downstream_pyramid(model, point, x)
                levels = downstream_pyramid(model, point, restored)
                loss = loss + fpn_weight * sum(
                    _normalised_mse(a, b) for a, b in zip(levels, reference)) / len(levels)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            losses.append(float(loss.detach()))
            if log and (step % 100 == 0 or step == steps - 1):
                recent = losses[-100:]
                log(f'step {step + 1}/{steps} loss {sum(recent) / len(recent):.4f} '
                    f'({clock() - start:.0f} s)')
    finally:
        for p, needed in frozen:
            p.requires_grad_(needed)
        net.eval()
    return losses


def train_bottleneck(options: BottleneckTraining, log: Log,
                     clock: Callable[[], float] = time.monotonic) -> Path:
    """Train a bottleneck for the detector checkpoint and write it.

    Args:
        options: What to train.
        log: Receives progress lines.
        clock: Monotonic seconds (the time budget).

    Returns:
        The written file (:func:`rcnn_service.bottleneck.load_bottleneck` reads it).

    Raises:
        ConfigError: For invalid options or a point where several tensors cross.
        BackendError: If the detector checkpoint does not load.
    """
    import torch
    from rcnn_service.bottleneck import LearnedBottleneck, single_crossing
    from rcnn_service.rcnn_detector import image_tensor, RcnnDetector
    from rcnn_service.rcnn_split import RcnnSplit

    options.validate()
    torch.set_num_threads(options.threads)
    torch.manual_seed(options.seed)
    model = RcnnDetector(options.arch, str(options.detector)).model
    split = RcnnSplit(model)
    name = single_crossing(split, options.point)
    log(f'computing {name} for {options.frames} training frames')
    with torch.no_grad():
        features = [split.head([image_tensor(frame.image)], options.point).tensors[name]
                    for frame in split_frames('train', options.frames, options.seed)]
    bottleneck = LearnedBottleneck.for_model(model, options.arch, options.point, options.width,
                                             options.reduction, options.hidden)
    log(f'distilling a {options.width}-channel bottleneck (reduction {options.reduction}) at '
        f'point {options.point} for {options.steps} steps of {options.batch} crops')
    losses = distill(model, bottleneck, features, options.steps, options.batch, options.crop,
                     options.lr, options.fpn_weight, options.seed, options.time_budget_s,
                     clock, log)
    tail = losses[-100:]
    log(f'final loss {sum(tail) / len(tail):.4f} after {len(losses)} steps')
    return bottleneck.save(options.out)


def _normalised_mse(output: Any, target: Any) -> Any:
    # Divided by the target's variance: the pyramid's levels and the crossing tensor differ in
    # scale, and each should count alike.
    return ((output - target) ** 2).mean() / (target.detach().var() + 1e-6)
