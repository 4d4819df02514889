"""Annotated images for rviz: the published boxes, coloured by source, and the route."""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

from adaptive_offload.conversions import stamp_to_ns
from adaptive_offload.drawing import annotate_message
import numpy as np
from offload_manager.frame_outcomes import Outcome


class Annotator:
    """Keeps the last few input images and draws each frame's outcome on its image.

    Args:
        keep: How many unannotated images to hold (older ones are forgotten).
    """

    def __init__(self, keep: int = 30) -> None:
        self._images: OrderedDict[tuple[int, str], Any] = OrderedDict()
        self._keep = keep

    def remember(self, msg: Any) -> None:
        """Hold an input image message until its outcome is known."""
        self._images[(stamp_to_ns(msg.header.stamp), str(msg.header.frame_id))] = msg
        while len(self._images) > self._keep:
            self._images.popitem(last=False)

    def render(self, outcome: Outcome) -> np.ndarray | None:
        """Draw an outcome on its image; None if the image is gone or undecodable."""
        record = outcome.record
        msg = self._images.pop((record.stamp_ns, record.frame_id), None)
        if msg is None:
            return None
        latency = '-' if record.latency_ms is None else f'{record.latency_ms:.0f} ms'
        status = f'drop: {record.drop_reason}' if record.dropped \
            else f'{record.result_source} {latency}'
        detections = outcome.result.detections if outcome.result is not None else ()
        return annotate_message(msg, detections, record.result_source,
                                f'route {record.route} | {status}')
