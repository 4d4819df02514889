"""The latched label map (vision_msgs/LabelInfo) built from a detector's class names."""

from __future__ import annotations

from adaptive_offload.conversions import label_info_message
from adaptive_offload.typestore import message_types


def test_label_info_round_trips_through_cdr(store: object) -> None:
    types = message_types(store)
    msg = label_info_message(types, {2: 'car', 0: 'person'}, 0.25, 1_500_000_000, 'cam')
    back = store.deserialize_cdr(store.serialize_cdr(msg, msg.__msgtype__), msg.__msgtype__)
    assert [(c.class_id, c.class_name) for c in back.class_map] == [(0, 'person'), (2, 'car')]
    assert abs(back.threshold - 0.25) < 1e-6
    assert (back.header.stamp.sec, back.header.stamp.nanosec) == (1, 500_000_000)
