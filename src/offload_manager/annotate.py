"""Annotated images for rviz: the published boxes, coloured by source, and the route."""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import cv2
import numpy as np

from adaptive_offload.conversions import image_to_frame, stamp_to_ns
from adaptive_offload.errors import ConversionError
from offload_manager.arbiter import Outcome

# BGR colours per source; edge targets other than the root one share the last colour.
COLOURS = {'edge': (80, 200, 60), 'cloud': (40, 140, 255)}
OTHER = (230, 160, 40)


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
        try:
            image = image_to_frame(msg).image
        except ConversionError:
            return None
        source = record.result_source
        colour = COLOURS.get(source, OTHER)
        if outcome.result is not None:
            for det in outcome.result.detections:
                p1, p2 = (int(det.x1), int(det.y1)), (int(det.x2), int(det.y2))
                cv2.rectangle(image, p1, p2, colour, 2)
                cv2.putText(image, f'{det.class_name} {det.score:.2f}',
                            (p1[0], max(12, p1[1] - 4)), cv2.FONT_HERSHEY_SIMPLEX, 0.45, colour,
                            1, cv2.LINE_AA)
        latency = '-' if record.latency_ms is None else f'{record.latency_ms:.0f} ms'
        status = f'drop: {record.drop_reason}' if record.dropped else f'{source} {latency}'
        cv2.putText(image, f'route {record.route} | {status}', (8, 20),
                    cv2.FONT_HERSHEY_SIMPLEX, 0.55, (255, 255, 255), 2, cv2.LINE_AA)
        cv2.putText(image, f'route {record.route} | {status}', (8, 20),
                    cv2.FONT_HERSHEY_SIMPLEX, 0.55, colour, 1, cv2.LINE_AA)
        return image
