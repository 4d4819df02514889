"""Drawing detections on images for rviz (annotated image topics)."""

from __future__ import annotations

from typing import Any, Iterable

from adaptive_offload.conversions import image_to_frame
from adaptive_offload.datatypes import Detection
from adaptive_offload.errors import ConversionError
import cv2
import numpy as np

# BGR colours per source; edge targets other than the root one share the last colour.
COLOURS = {'edge': (80, 200, 60), 'cloud': (40, 140, 255)}
OTHER = (230, 160, 40)


def colour_of(source: str) -> tuple[int, int, int]:
    """Return the colour that boxes of ``source`` are drawn in."""
    return COLOURS.get(source, OTHER)


def draw(image: np.ndarray, detections: Iterable[Detection], colour: tuple[int, int, int],
         title: str = '') -> np.ndarray:
    """Draw boxes with class and score, and an optional title line, on ``image`` in place."""
    for det in detections:
        p1, p2 = (int(det.x1), int(det.y1)), (int(det.x2), int(det.y2))
        cv2.rectangle(image, p1, p2, colour, 2)
        cv2.putText(image, f'{det.class_name} {det.score:.2f}', (p1[0], max(12, p1[1] - 4)),
                    cv2.FONT_HERSHEY_SIMPLEX, 0.45, colour, 1, cv2.LINE_AA)
    if title:
        for thickness, ink in ((2, (255, 255, 255)), (1, colour)):
            cv2.putText(image, title, (8, 20), cv2.FONT_HERSHEY_SIMPLEX, 0.55, ink, thickness,
                        cv2.LINE_AA)
    return image


def annotate_message(msg: Any, detections: Iterable[Detection], source: str,
                     title: str = '') -> np.ndarray | None:
    """Decode an image message and draw detections on it; None if it does not decode."""
    try:
        image = image_to_frame(msg).image
    except ConversionError:
        return None
    return draw(image, detections, colour_of(source), title)
