"""A compact Faster R-CNN for the cloud model the package ships.

torchvision's smallest detector (``fasterrcnn_mobilenet_v3_large_320_fpn``, 19 M parameters)
is too large to ship and sees only stride-32 features, too coarse for the few-pixel objects of
hard scenes. This one keeps torchvision's Faster R-CNN and swaps the parts that carry the size
and the blind spot: a MobileNetV3-Small backbone whose FPN starts at stride 8, anchors from
8 pixels, 128 FPN channels and a 256-wide box head (3.4 M parameters, 7 MB in fp16). It runs
at the camera's resolution (640x480) instead of downscaling it.
"""

from __future__ import annotations

from typing import Any

COMPACT_ARCH = 'fasterrcnn_mobilenet_v3_small_fpn'
FPN_CHANNELS = 128
REPRESENTATION = 256
ANCHOR_SIZES = ((8, 16), (24, 40), (56, 96), (128, 224))
ASPECT_RATIOS = (0.5, 1.0, 2.0)
# Outputs of MobileNetV3-Small's features at strides 8, 16 and 32 (the last of each stage).
RETURN_LAYERS = {'3': '0', '8': '1', '12': '2'}
IN_CHANNELS = [24, 48, 576]


def fasterrcnn_mobilenet_v3_small_fpn(*, weights: Any = None, weights_backbone: Any = None,
                                      num_classes: int = 91, min_size: int = 480,
                                      max_size: int = 640, **kwargs: Any) -> Any:
    """Build the compact Faster R-CNN (random weights; load a checkpoint for trained ones).

    Args:
        weights: Must be None (no published weights exist for it).
        weights_backbone: Must be None (nothing is downloaded).
        num_classes: Classes including the background.
        min_size: Shorter image side the model resizes to.
        max_size: Longest image side the model resizes to.
        **kwargs: Passed to torchvision's ``FasterRCNN`` (``box_score_thresh``...).

    Returns:
        A ``torchvision.models.detection.FasterRCNN``.

    Raises:
        ValueError: If weights are requested.
    """
    from torchvision.models import mobilenet_v3_small
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.models.detection.backbone_utils import BackboneWithFPN
    from torchvision.models.detection.faster_rcnn import (FasterRCNN, FastRCNNPredictor,
                                                          TwoMLPHead)
    from torchvision.ops import MultiScaleRoIAlign

    if weights is not None or weights_backbone is not None:
        raise ValueError(f'{COMPACT_ARCH} has no published weights: load a checkpoint')
    backbone = BackboneWithFPN(mobilenet_v3_small().features, RETURN_LAYERS, IN_CHANNELS,
                               FPN_CHANNELS)
    anchors = AnchorGenerator(ANCHOR_SIZES, (ASPECT_RATIOS,) * len(ANCHOR_SIZES))
    pooler = MultiScaleRoIAlign(['0', '1', '2'], output_size=7, sampling_ratio=2)
    head = TwoMLPHead(FPN_CHANNELS * 7 * 7, REPRESENTATION)
    return FasterRCNN(backbone, rpn_anchor_generator=anchors, box_roi_pool=pooler,
                      box_head=head, box_predictor=FastRCNNPredictor(REPRESENTATION,
                                                                     num_classes),
                      min_size=min_size, max_size=max_size, **kwargs)
