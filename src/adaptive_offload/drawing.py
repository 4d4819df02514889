"""Detections drawn for viewers: on a copy of the image (rviz), or as a marker (Foxglove)."""

from __future__ import annotations

import math
from typing import Any, Iterable

from adaptive_offload.conversions import header, image_to_frame, MessageTypes
from adaptive_offload.datatypes import Detection, DetectionSet
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


LINE_LIST = 2  # visualization_msgs/ImageMarker types and actions
ADD = 0
LINE_WIDTH = 2.0


def detections_to_image_marker(types: MessageTypes, dets: DetectionSet) -> Any:
    """Build a ``visualization_msgs/ImageMarker`` outlining every box, in its source's colour.

    One LINE_LIST marker per frame (four segments a box), stamped with the frame's image, so a
    viewer that matches annotations to images by stamp (Foxglove's Image panel) draws the
    boxes over the very frame they were found in. A frame without detections (or a dropped
    one) gets an empty marker, which clears the last frame's boxes.

    Raises:
        ConversionError: If a box coordinate is not finite, or the stamp cannot be held.
    """
    b, g, r = colour_of(dets.source)
    colour = types.ColorRGBA(r=r / 255.0, g=g / 255.0, b=b / 255.0, a=1.0)
    points = []
    for det in dets.detections:
        x1, y1, x2, y2 = (float(v) for v in (det.x1, det.y1, det.x2, det.y2))
        if not all(map(math.isfinite, (x1, y1, x2, y2))):
            raise ConversionError('bad_detection', f'non-finite box in {det}')
        corners = ((x1, y1), (x2, y1), (x2, y2), (x1, y2))
        for i, (x, y) in enumerate(corners):
            nx, ny = corners[(i + 1) % 4]
            points += [types.Point(x=x, y=y, z=0.0), types.Point(x=nx, y=ny, z=0.0)]
    return types.ImageMarker(
        header=header(types, dets.stamp_ns, dets.frame_id), ns='offload', id=0,
        type=LINE_LIST, action=ADD, position=types.Point(x=0.0, y=0.0, z=0.0),
        scale=LINE_WIDTH, outline_color=colour, filled=0,
        fill_color=types.ColorRGBA(r=0.0, g=0.0, b=0.0, a=0.0),
        lifetime=types.Duration(sec=0, nanosec=0), points=points,
        outline_colors=[colour] * (len(points) // 2))
