"""Newest-frame hand-off, stamp admission, decision holding and the edge core."""

from __future__ import annotations

import threading
from typing import Any

from adaptive_offload.admission import EveryNth, StampGate
from adaptive_offload.conversions import frame_to_message, MessageTypes, stamp_to_ns
from adaptive_offload.datatypes import Decision, InferenceReport, Route
from adaptive_offload.errors import ConfigError
from adaptive_offload.frame_worker import DecisionHolder, FrameWorker
from adaptive_offload.latest_slot import LatestSlot
from edge_inference.inference import EdgeInference
from helpers import fake_edge, FakeBackend, ManualClock
import numpy as np
import pytest


def _image(types: MessageTypes, stamp: int, encoding: str = 'rgb8') -> object:
    return frame_to_message(types, np.full((48, 64, 3), 90, np.uint8), stamp, 'cam', encoding)


def test_latest_slot_replaces_the_waiting_item() -> None:
    slot: LatestSlot[int] = LatestSlot()
    assert slot.put(1) is None
    assert slot.put(2) == 1
    assert slot.take(0) == 2
    assert slot.take(0) is None
    slot.put(3)
    slot.close()
    assert slot.take(0) == 3 and slot.take(None) is None


def test_bounded_slot_drops_the_oldest_and_serves_oldest_first() -> None:
    slot: LatestSlot[int] = LatestSlot(capacity=2)
    assert slot.put(1) is None and slot.put(2) is None
    assert slot.put(3) == 1  # full: the oldest waiting item goes
    assert slot.take(0) == 2 and slot.take(0) == 3 and slot.take(0) is None
    with pytest.raises(ValueError, match='capacity'):
        LatestSlot(capacity=0)


def test_latest_slot_wait_empty_sees_a_take_from_another_thread() -> None:
    slot: LatestSlot[int] = LatestSlot()
    slot.put(1)
    taker = threading.Thread(target=slot.take)
    taker.start()
    assert slot.wait_empty(5.0)
    taker.join(5.0)


def test_stamp_gate() -> None:
    gate = StampGate(memory=2)
    assert gate.check(10, 'a') == ''
    assert gate.check(10, 'a') == 'duplicate_stamp'
    assert gate.check(9, 'a') == 'out_of_order_stamp'
    assert gate.check(9, 'b') == ''
    assert gate.check(11, 'a') == ''


def test_decision_holder_keeps_newest_valid_and_falls_back() -> None:
    fallback = Decision.safe_default('m')
    holder = DecisionHolder(fallback)
    assert holder.current(0) is fallback
    newer = Decision(seq=5, issued_ns=0, valid_for_ms=100, route=Route.CLOUD)
    assert holder.update(newer)
    assert not holder.update(Decision(seq=4, issued_ns=0, route=Route.HEDGED))
    assert holder.current(50_000_000) is newer
    assert holder.current(200_000_000) is fallback  # expired: manager presumed dead
    assert 'bad decision' in holder.update_json('{"schema": "nope"}')
    assert holder.update_json(Decision(seq=6, issued_ns=0).to_json()) == ''
    assert holder.current(0).seq == 6


def _edge(clock: ManualClock, classes: str = '') -> tuple[EdgeInference, FakeBackend]:
    backend = FakeBackend(advance=lambda: clock.advance(40))
    return fake_edge({'classes': classes, 'imgsz': 320}, backend, clock), backend


def test_edge_core_detects_and_times_with_injected_clock(types: MessageTypes) -> None:
    clock = ManualClock()
    core, backend = _edge(clock)
    dets, report = core.process(_image(types, 7), Decision.safe_default('x', 256))
    assert report.status == 'ok' and report.inference_ms == 40.0 and report.imgsz == 256
    assert dets.stamp_ns == 7 and dets.detections[0].x1 == 16.0
    assert backend.calls == [((48, 64, 3), 256)]


def test_edge_core_skips_cloud_route_and_reports_decode_failures(types: MessageTypes) -> None:
    core, backend = _edge(ManualClock())
    dets, report = core.process(_image(types, 1), Decision(route=Route.CLOUD))
    assert dets is None and report.status == 'skipped' and report.reason == 'route=cloud'
    bad = _image(types, 2)
    bad.encoding = '16UC1'
    dets, report = core.process(bad, Decision())
    assert dets is None and report.status == 'failed'
    assert report.reason.startswith('unsupported_encoding')
    assert backend.calls == []


def test_edge_core_probes_every_nth_frame_of_the_cloud_route(types: MessageTypes) -> None:
    core, backend = _edge(ManualClock())
    probing = Decision(route=Route.CLOUD, probe_every=3)
    statuses = [core.process(_image(types, i), probing)[1].status for i in range(1, 8)]
    assert statuses == ['ok', 'skipped', 'skipped', 'ok', 'skipped', 'skipped', 'ok']
    assert len(backend.calls) == 3
    dets, report = core.process(_image(types, 9), Decision(route=Route.CLOUD))
    assert dets is None and report.status == 'skipped'  # probe_every 0: never


def test_edge_core_class_filter(types: MessageTypes) -> None:
    core, _ = _edge(ManualClock(), classes='disc')
    dets, _ = core.process(_image(types, 1), Decision())
    assert dets.detections == ()
    with pytest.raises(ConfigError, match='unicorn'):
        _edge(ManualClock(), classes='unicorn')


def test_edge_core_notes_an_unknown_model_request(types: MessageTypes) -> None:
    core, _ = _edge(ManualClock())
    _, report = core.process(_image(types, 1), Decision(edge_model='yolo11x'))
    assert report.status == 'ok' and 'yolo11x not configured' in report.reason


def test_frame_worker_reports_every_frame_once(types: MessageTypes) -> None:
    """Frames arriving while one waits supersede it; duplicates are refused; none is lost."""
    clock = ManualClock()
    core, _ = _edge(clock)
    emitted: list[tuple[int, str, str]] = []
    worker = FrameWorker(core, DecisionHolder(Decision.safe_default('x')),
                         lambda msg, dets, rep: emitted.append((rep.stamp_ns, rep.status,
                                                                rep.reason)), clock)
    for stamp in (1, 2, 3):
        worker.submit(_image(types, stamp))
    worker.submit(_image(types, 3))  # duplicate stamp
    worker.submit(_image(types, 0))  # older than the newest seen
    assert worker.process_next(timeout=0)
    assert not worker.process_next(timeout=0)
    assert sorted(emitted) == [(0, 'refused', 'out_of_order_stamp'),
                               (1, 'dropped', 'superseded'), (2, 'dropped', 'superseded'),
                               (3, 'ok', ''), (3, 'refused', 'duplicate_stamp')]


def test_frame_worker_latency_does_not_grow_when_frames_come_faster(types: MessageTypes) -> None:
    """Keep each processed frame's wait at 10 ms however long the stream.

    A frame every 10 ms, the worker free every 40 ms: a FIFO queue would make the wait grow
    without bound.
    """
    clock = ManualClock()
    core = fake_edge(clock=clock)
    arrivals: dict[int, int] = {}
    waits: list[int] = []
    statuses: list[str] = []

    def emit(_msg: object, dets: object, rep: object) -> None:
        statuses.append(rep.status)
        if dets is not None:
            waits.append(clock.now - arrivals[rep.stamp_ns])

    worker = FrameWorker(core, DecisionHolder(Decision.safe_default('x')), emit, clock)
    for stamp in range(1, 201):
        arrivals[stamp] = clock.now
        worker.submit(_image(types, stamp))
        clock.advance(10)
        if stamp % 4 == 0:
            worker.process_next(timeout=0)
    assert len(waits) == 50 and statuses.count('dropped') == 150
    assert max(waits) == 10_000_000


def test_every_nth_picks_the_first_and_then_every_nth_frame() -> None:
    picker = EveryNth()
    assert [picker.pick(3) for _ in range(7)] == [True, False, False, True, False, False, True]
    assert not picker.pick(0) and not picker.pick(-1)  # 0: never, and nothing counted
    assert picker.pick(1)


class _Recording:
    """A processor that records how long each frame waited for it."""

    def __init__(self) -> None:
        self.waited: dict[int, int] = {}

    def process(self, msg: Any, decision: Decision,
                waited_ns: int = 0) -> tuple[None, InferenceReport]:
        stamp = stamp_to_ns(msg.header.stamp)
        self.waited[stamp] = waited_ns
        return None, InferenceReport(stamp_ns=stamp, frame_id='', source='cloud')

    def drop(self, stamp_ns: int, frame_id: str, reason: str,
             decision: Decision) -> InferenceReport:
        return InferenceReport(stamp_ns=stamp_ns, frame_id=frame_id, source='cloud',
                               status='dropped', reason=reason)


def test_the_processor_learns_how_long_each_frame_waited_on_the_steady_clock(
        types: MessageTypes) -> None:
    ros = ManualClock()  # a bag's /clock: it must not time the wait
    steady = ManualClock()
    processor = _Recording()
    worker = FrameWorker(processor, DecisionHolder(Decision.safe_default('x')),
                         lambda *_: None, ros, workers=1, pending=2, monotonic_ns=steady)
    worker.submit(_image(types, 1))
    steady.advance(30)
    worker.submit(_image(types, 2))
    ros.advance(5_000)
    steady.advance(20)
    assert worker.process_next(timeout=0) and worker.process_next(timeout=0)
    assert processor.waited == {1: 50_000_000, 2: 20_000_000}
