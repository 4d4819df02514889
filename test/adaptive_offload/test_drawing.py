"""Annotated images and image markers: boxes in the source's colour, bad input refused."""

from __future__ import annotations

from adaptive_offload.conversions import frame_to_message, MessageTypes
from adaptive_offload.datatypes import Decision, Detection, DetectionSet, Route
from adaptive_offload.drawing import annotate_message, colour_of, detections_to_image_marker
from adaptive_offload.errors import ConversionError
from adaptive_offload.typestore import message_types
import numpy as np
from offload_manager.annotate import Annotator
from offload_manager.frame_outcomes import Arbiter
import pytest


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


def test_an_image_marker_outlines_each_box_in_its_sources_colour_and_round_trips(
        store: object) -> None:
    t = message_types(store)
    dets = DetectionSet(3_000_000_001, 'cam', 'cloud',
                        (Detection(10, 20, 50, 40, 0.9, 'a'), Detection(0, 0, 5, 5, 0.4, 'b')))
    msg = store.deserialize_cdr(  # type: ignore[attr-defined]
        store.serialize_cdr(  # type: ignore[attr-defined]
            detections_to_image_marker(t, dets), 'visualization_msgs/msg/ImageMarker'),
        'visualization_msgs/msg/ImageMarker')
    assert (msg.header.stamp.sec, msg.header.stamp.nanosec, msg.header.frame_id) == (
        3, 1, 'cam')
    assert msg.type == 2 and len(msg.points) == 16  # LINE_LIST: 4 segments a box
    segments = {((a.x, a.y), (b.x, b.y)) for a, b in zip(msg.points[0::2], msg.points[1::2])}
    assert {((10, 20), (50, 20)), ((50, 20), (50, 40)), ((50, 40), (10, 40)),
            ((10, 40), (10, 20))} <= segments
    b, g, r = colour_of('cloud')
    assert len(msg.outline_colors) == 8  # one colour a segment
    assert (round(msg.outline_color.r * 255), round(msg.outline_color.g * 255),
            round(msg.outline_color.b * 255)) == (r, g, b)


def test_a_dropped_frame_gets_an_empty_marker_and_a_bad_box_is_refused(
        types: MessageTypes) -> None:
    empty = detections_to_image_marker(types, DetectionSet(7, 'cam', '', ()))
    assert len(empty.points) == 0 and empty.header.stamp.nanosec == 7
    bad = DetectionSet(7, 'cam', 'edge', (Detection(0, 0, float('nan'), 5, 0.4, 'b'),))
    with pytest.raises(ConversionError):
        detections_to_image_marker(types, bad)
