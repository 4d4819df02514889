"""Annotated images: boxes drawn in the source's colour, undecodable input tolerated."""

from __future__ import annotations

from adaptive_offload.conversions import frame_to_message, MessageTypes
from adaptive_offload.datatypes import Decision, Detection, DetectionSet, Route
from adaptive_offload.drawing import annotate_message, colour_of
import numpy as np
from offload_manager.annotate import Annotator
from offload_manager.frame_outcomes import Arbiter


def test_boxes_are_drawn_in_the_source_colour(types: MessageTypes) -> None:
    msg = frame_to_message(types, np.zeros((60, 80, 3), np.uint8), 1, 'cam', 'bgr8')
    image = annotate_message(msg, [Detection(10, 10, 50, 40, 0.9, 'person')], 'cloud')
    assert tuple(image[10, 30]) == colour_of('cloud')  # top edge of the box
    assert tuple(image[25, 30]) == (0, 0, 0)  # inside stays untouched
    msg.encoding = '32FC1'
    assert annotate_message(msg, [], 'edge') is None


def test_annotator_draws_each_outcome_once_on_its_own_image(types: MessageTypes) -> None:
    annotator = Annotator(keep=2)
    arbiter = Arbiter()
    for stamp in (1, 2, 3):
        annotator.remember(frame_to_message(types, np.zeros((40, 40, 3), np.uint8), stamp,
                                            'cam', 'bgr8'))
        arbiter.frame_arrived(stamp, 'cam', 0, Decision(route=Route.EDGE))
        arbiter.add_result(DetectionSet(stamp, 'cam', 'edge',
                                        (Detection(5, 5, 30, 30, 0.5, 'box'),)), 1)
    outcomes = arbiter.poll(2)
    assert annotator.render(outcomes[0]) is None  # stamp 1 was forgotten (keep=2)
    image = annotator.render(outcomes[1])
    assert image is not None and tuple(image[5, 15]) == colour_of('edge')
    assert annotator.render(outcomes[1]) is None  # drawn once
