"""Cloud bridge core and V2 REST transport against a V2 server on loopback."""

from __future__ import annotations

import random
import socket
import threading
import time
from typing import Any, Iterator

from adaptive_offload.conversions import frame_to_message, header, MessageTypes
from adaptive_offload.datatypes import Decision, Route
from adaptive_offload.errors import CloudError, ConfigError
from cloud_bridge.bridge import CloudBridge
from cloud_bridge.bridge_config import CloudConfig
from cloud_bridge.resilience import CircuitBreaker
from cloud_bridge.transport import make_transport, V2RestTransport
from cloud_bridge.v2_replies import parse_v2_reply
import cv2
from helpers import ManualClock, v2_stub, V2Handler
import numpy as np
import pytest


@pytest.fixture
def server() -> Iterator[str]:
    with v2_stub() as url:
        yield url


def _msg(types: MessageTypes, stamp: int = 5) -> Any:
    return frame_to_message(types, np.full((240, 320, 3), 100, np.uint8), stamp, 'cam', 'rgb8')


def test_frame_is_sent_as_jpeg_and_boxes_come_back_in_original_pixels(
        server: str, types: MessageTypes) -> None:
    bridge = CloudBridge(V2RestTransport(server, 'rcnn', token='s3cret'))
    decision = Decision(route=Route.CLOUD, cloud_max_side=160, jpeg_quality=50)
    dets, report = bridge.process(_msg(types), decision)
    assert report.status == 'ok' and report.bytes_sent > 0 and report.imgsz == 160
    [seen] = V2Handler.seen
    assert seen['path'] == '/v2/models/rcnn/infer' and seen['shape'] == (120, 160, 3)
    assert seen['auth'] == 'Bearer s3cret'
    [det] = dets.detections
    assert (det.x1, det.y1, det.x2, det.y2) == (80.0, 60.0, 240.0, 180.0)
    assert det.class_name == 'person' and dets.source == 'cloud' and dets.stamp_ns == 5


def test_route_and_sampling_decide_which_frames_go(server: str, types: MessageTypes) -> None:
    bridge = CloudBridge(V2RestTransport(server, 'rcnn'))
    _, report = bridge.process(_msg(types), Decision(route=Route.EDGE))
    assert report.status == 'skipped' and V2Handler.seen == []
    every3 = Decision(route=Route.HEDGED, offload_every=3)
    statuses = [bridge.process(_msg(types, s), every3)[1].status for s in range(6)]
    assert statuses == ['ok', 'skipped', 'skipped', 'ok', 'skipped', 'skipped']


@pytest.mark.parametrize('mode, reason', [('error', 'http_500'), ('malformed', 'bad_reply'),
                                          ('slow', 'timeout')])
def test_server_faults_become_failed_reports(server: str, types: MessageTypes, mode: str,
                                             reason: str) -> None:
    V2Handler.mode = mode
    bridge = CloudBridge(V2RestTransport(server, 'rcnn'))
    start = time.monotonic()
    dets, report = bridge.process(_msg(types), Decision(route=Route.CLOUD, deadline_ms=200))
    assert dets is None and report.status == 'failed' and report.reason.startswith(reason)
    assert time.monotonic() - start < 0.45  # never waits past the deadline (server: 0.5 s)
    # The request reached the server: its bytes were sent, and their radio energy is spent.
    [seen] = V2Handler.seen
    assert seen['shape'] == (240, 320, 3) and report.bytes_sent > 1000


def test_refused_connection_is_a_failed_report(types: MessageTypes) -> None:
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        port = sock.getsockname()[1]  # bound, not listening: connections are refused
        bridge = CloudBridge(V2RestTransport(f'http://127.0.0.1:{port}', 'rcnn'))
        _, report = bridge.process(_msg(types), Decision(route=Route.CLOUD))
    assert report.status == 'failed' and report.reason.startswith('connection')
    assert report.bytes_sent == 0  # nothing left the robot


def test_transport_validation() -> None:
    with pytest.raises(ConfigError, match='http'):
        V2RestTransport('ftp://x', 'm')
    # A bad port was a ValueError, out of the first request on REST, instead.
    for url in ('http://127.0.0.1:abc', 'grpc://127.0.0.1:99999'):
        with pytest.raises(ConfigError, match='bad port'):
            make_transport(url, 'm')
    with pytest.raises(ConfigError, match='scheme'):
        CloudConfig.from_params({'url': 'carrier-pigeon://coop:1'})
    with pytest.raises(ConfigError, match='grpc://host:port'):
        CloudConfig.from_params({'url': 'grpc://no-port'})
    with pytest.raises(ConfigError, match='max_in_flight'):
        CloudConfig.from_params({'max_in_flight': 0})
    assert CloudConfig.from_params().url.startswith('grpc://')  # gRPC is the default
    with pytest.raises(CloudError, match='bad_reply'):
        parse_v2_reply(b'{"outputs": [{"name": "boxes", "data": [1, 2, 3, 4]}, '
                       b'{"name": "scores", "data": [0.5, 0.2]}, '
                       b'{"name": "labels", "data": ["a"]}]}')
    with pytest.raises(CloudError, match='timeout'):
        V2RestTransport('http://127.0.0.1:9', 'm').infer(b'x', 0.0)


class _GatedTransport:
    """Holds every request until released and counts how many are in flight at once."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self._lock = threading.Lock()
        self.in_flight = 0
        self.peak = 0
        self.two_in_flight = threading.Event()

    def infer(self, image: bytes, timeout_s: float) -> Any:
        from cloud_bridge.transport import CloudReply

        with self._lock:
            self.in_flight += 1
            self.peak = max(self.peak, self.in_flight)
            if self.in_flight == 2:
                self.two_in_flight.set()
        self.release.wait(10.0)
        with self._lock:
            self.in_flight -= 1
        return CloudReply(np.zeros((0, 4)), np.zeros(0), (), 5.0, len(image))

    def close(self) -> None:
        pass


def test_requests_overlap_up_to_the_bound_and_backpressure_drops_the_oldest(
        types: MessageTypes) -> None:
    from adaptive_offload.frame_worker import DecisionHolder, FrameWorker

    transport = _GatedTransport()
    reports: dict[int, Any] = {}
    done = threading.Event()

    def emit(_msg: Any, _dets: Any, report: Any) -> None:
        reports[report.stamp_ns] = report
        if len(reports) == 5:
            done.set()

    config = CloudConfig.from_params({'url': 'http://127.0.0.1:9', 'max_in_flight': 2,
                                      'max_pending': 2})
    holder = DecisionHolder(Decision(route=Route.CLOUD, deadline_ms=60_000, valid_for_ms=1e9))
    worker = FrameWorker(config.make_bridge(transport), holder, emit, lambda: 0,
                         workers=config.max_in_flight, pending=config.max_pending)
    worker.start('cloud-test')
    for stamp in (1, 2):
        worker.submit(_msg(types, stamp))
    assert transport.two_in_flight.wait(10.0)
    for stamp in (3, 4, 5):  # two may wait; the third pushes out the oldest waiting (3)
        worker.submit(_msg(types, stamp))
    assert reports[3].status == 'dropped' and reports[3].reason == 'superseded'
    transport.release.set()
    assert done.wait(10.0)
    worker.stop()
    assert transport.peak == 2  # never more in flight than the bound
    assert {s: r.status for s, r in reports.items()} == {
        1: 'ok', 2: 'ok', 3: 'dropped', 4: 'ok', 5: 'ok'}


def test_requests_carry_the_robot_and_a_budget_within_the_time_left(server: str) -> None:
    transport = make_transport(server, 'rcnn', robot_id='robot-7')
    transport.infer(_jpeg(), 2.0)
    [seen] = V2Handler.seen
    assert seen['parameters']['robot_id'] == 'robot-7'
    assert 0 < seen['parameters']['budget_us'] <= 2_000_000


def test_a_load_refusal_is_overloaded_with_the_servers_retry_time(server: str) -> None:
    V2Handler.mode = 'overloaded'
    with pytest.raises(CloudError) as refused:
        make_transport(server, 'rcnn').infer(_jpeg(), 2.0)
    assert refused.value.reason == 'overloaded' and refused.value.retry_after_s == 0.25


class _Refusing:
    """A transport whose service refuses every request for load."""

    def __init__(self, retry_after_s: float) -> None:
        self.retry_after_s = retry_after_s
        self.calls = 0

    def infer(self, image: bytes, timeout_s: float) -> Any:
        self.calls += 1
        raise CloudError('overloaded', 'queue_full', len(image), self.retry_after_s)

    def close(self) -> None:
        pass


def _backoff_s(types: MessageTypes, seed: int) -> float:
    """Seconds a bridge with ``seed`` waits after a refusal before it sends again."""
    clock = ManualClock()
    transport = _Refusing(retry_after_s=1.0)
    bridge = CloudBridge(transport, clock=clock, rng=random.Random(seed))
    decision = Decision(route=Route.CLOUD, deadline_ms=200.0)
    start = clock.now
    _, first = bridge.process(_msg(types), decision)
    assert first.status == 'failed' and first.reason.startswith('overloaded')
    for step in range(1, 200):
        clock.advance(10)
        _, report = bridge.process(_msg(types, 5 + step), decision)
        if transport.calls == 2:
            return (clock.now - start) / 1e9
        assert report.reason == 'backoff' and report.breaker == 'closed'
    raise AssertionError('the bridge never sent again')


def test_a_refused_robot_backs_off_for_a_jittered_retry_time_without_opening_the_breaker(
        types: MessageTypes) -> None:
    waits = [_backoff_s(types, seed) for seed in range(20)]
    assert all(0.5 <= w <= 1.51 for w in waits)
    # a fleet refused at one tick comes back spread over the window, not at one tick
    assert max(waits) - min(waits) > 0.5 and len({round(w, 2) for w in waits}) > 10


def _jpeg() -> bytes:
    return cv2.imencode('.jpg', np.full((120, 160, 3), 90, np.uint8))[1].tobytes()


class _Timing:
    """A transport that answers at once and records the time each request was given."""

    def __init__(self) -> None:
        self.timeouts: list[float] = []

    def infer(self, image: bytes, timeout_s: float) -> Any:
        from cloud_bridge.transport import CloudReply

        self.timeouts.append(timeout_s)
        return CloudReply(np.zeros((0, 4)), np.zeros(0), (), 5.0, len(image))

    def close(self) -> None:
        pass


def test_the_deadline_counts_from_the_frames_arrival_not_from_its_turn(
        types: MessageTypes) -> None:
    transport = _Timing()
    bridge = CloudBridge(transport, clock=ManualClock())
    decision = Decision(route=Route.CLOUD, deadline_ms=200.0)
    _, fresh = bridge.process(_msg(types, 1), decision)
    _, waited = bridge.process(_msg(types, 2), decision, waited_ns=150_000_000)
    assert fresh.status == waited.status == 'ok'
    assert transport.timeouts == [pytest.approx(0.2), pytest.approx(0.05)]


def test_a_frame_that_waited_past_its_deadline_is_dropped_unsent(types: MessageTypes) -> None:
    transport = _Timing()
    bridge = CloudBridge(transport, clock=ManualClock())
    decision = Decision(route=Route.CLOUD, deadline_ms=200.0)
    _, report = bridge.process(_msg(types), decision, waited_ns=250_000_000)
    assert transport.timeouts == []
    assert report.status == 'dropped' and report.reason.startswith('expired: waited 250 ms')
    assert report.breaker == 'closed'  # the service did nothing wrong


class _Ticking:
    """Nanosecond clock: moves ``step_ms`` each time it is read."""

    def __init__(self, step_ms: float) -> None:
        self.now, self._step = 1_000_000_000, int(step_ms * 1e6)

    def __call__(self) -> int:
        self.now += self._step
        return self.now


def _broken(types: MessageTypes, stamp: int = 5) -> Any:
    """Return a compressed frame whose data is no image: its conversion fails."""
    return types.CompressedImage(header=header(types, stamp, 'cam'), format='jpeg',
                                 data=types.byte_array(b'not a jpeg'))


def test_an_image_request_reports_the_robots_encode_time_apart_from_its_round_trip(
        types: MessageTypes) -> None:
    transport = _Timing()
    # Read once at the start and once when the request is ready: 3 ms of robot work.
    bridge = CloudBridge(transport, clock=_Ticking(3.0))
    _, report = bridge.process(_msg(types), Decision(route=Route.CLOUD, deadline_ms=200.0))
    assert report.status == 'ok' and report.encode_ms == pytest.approx(3.0)
    assert report.inference_ms == 5.0  # the transport's request time, not the encode


def test_a_frame_the_breaker_holds_back_is_not_encoded(types: MessageTypes) -> None:
    clock = ManualClock()
    breaker = CircuitBreaker(threshold=1, cooldown_ms=1000.0)
    breaker.allow(clock.now)
    breaker.record(False, clock.now)
    bridge = CloudBridge(_Timing(), clock=clock, breaker=breaker)
    decision = Decision(route=Route.CLOUD, deadline_ms=200.0)
    # Open: the frame is refused before its conversion is tried, so nothing is spent on it.
    _, held = bridge.process(_broken(types), decision)
    assert held.reason == 'circuit_open' and held.encode_ms == 0.0
    # Half-open: the trial frame fails to convert, which says nothing of the service, so the
    # next frame is the trial and goes out.
    clock.advance(1000)
    _, bad = bridge.process(_broken(types, 6), decision)
    assert bad.status == 'failed' and bad.reason != 'circuit_open'
    _, trial = bridge.process(_msg(types, 7), decision)
    assert trial.status == 'ok' and breaker.state.value == 'closed'
