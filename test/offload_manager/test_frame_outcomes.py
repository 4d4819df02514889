"""Arbiter: exactly one outcome per frame, by the documented rules."""

from __future__ import annotations

from adaptive_offload.datatypes import Decision, Detection, DetectionSet, InferenceReport, Route
from offload_manager.frame_outcomes import Arbiter, HEDGE_GUARD_MS

MS = 1_000_000


def _decision(route: Route, deadline_ms: float = 100.0) -> Decision:
    return Decision(seq=1, route=route, deadline_ms=deadline_ms)


def _dets(stamp: int, source: str) -> DetectionSet:
    return DetectionSet(stamp, 'cam', source, (Detection(0, 0, 1, 1, 0.5, 'box'),), 'm')


def _report(stamp: int, source: str, status: str = 'ok', reason: str = '',
            seq: int = 1) -> InferenceReport:
    return InferenceReport(stamp_ns=stamp, frame_id='cam', source=source, status=status,
                           reason=reason, decision_seq=seq)


def test_edge_route_publishes_the_edge_result_at_once() -> None:
    arb = Arbiter()
    assert arb.frame_arrived(1, 'cam', 0, _decision(Route.EDGE)) is None
    assert arb.poll(10 * MS) == []
    arb.add_result(_dets(1, 'edge'), 30 * MS)
    [out] = arb.poll(31 * MS)
    assert out.result.source == 'edge'
    assert out.record.latency_ms == 31.0 and out.record.deadline_met
    assert out.record.sources == ['edge'] and out.record.route == 'edge'
    assert arb.pending == 0


def test_late_edge_result_is_published_with_deadline_missed() -> None:
    arb = Arbiter()
    arb.frame_arrived(1, 'cam', 0, _decision(Route.EDGE, deadline_ms=50))
    arb.add_result(_dets(1, 'edge'), 80 * MS)
    [out] = arb.poll(80 * MS)
    assert out.result is not None and not out.record.deadline_met
    assert out.record.latency_ms == 80.0


def test_hedged_cloud_in_time_wins_over_earlier_edge() -> None:
    arb = Arbiter()
    arb.frame_arrived(1, 'cam', 0, _decision(Route.HEDGED))
    arb.add_result(_dets(1, 'edge'), 20 * MS)
    assert arb.poll(20 * MS) == []  # waits for the cloud until the deadline
    arb.add_result(_dets(1, 'cloud'), 60 * MS)
    [out] = arb.poll(60 * MS)
    assert out.record.result_source == 'cloud' and out.record.deadline_met
    assert out.record.sources == ['cloud', 'edge']


def test_hedged_falls_back_to_edge_a_guard_before_the_deadline() -> None:
    arb = Arbiter()
    arb.frame_arrived(1, 'cam', 0, _decision(Route.HEDGED, deadline_ms=100))
    arb.add_result(_dets(1, 'edge'), 20 * MS)
    guard = int(HEDGE_GUARD_MS * MS)
    assert arb.poll(100 * MS - guard - 1) == []
    [out] = arb.poll(100 * MS - guard)  # published in time even if the next poll is late
    assert out.record.result_source == 'edge' and out.record.deadline_met
    arb.add_result(_dets(1, 'cloud'), 150 * MS)  # too late: the frame is finished
    assert arb.poll(150 * MS) == [] and arb.orphans == 1


def test_hedged_uses_edge_at_once_when_cloud_failed() -> None:
    arb = Arbiter()
    arb.frame_arrived(1, 'cam', 0, _decision(Route.HEDGED))
    arb.add_report(_report(1, 'cloud', 'failed', 'timeout'))
    arb.add_result(_dets(1, 'edge'), 20 * MS)
    [out] = arb.poll(20 * MS)
    assert out.record.result_source == 'edge'
    assert 'cloud: timeout' in out.record.reason


def test_cloud_only_late_result_is_still_published() -> None:
    arb = Arbiter()
    arb.frame_arrived(1, 'cam', 0, _decision(Route.CLOUD, deadline_ms=100))
    arb.add_report(_report(1, 'edge', 'skipped', 'route=cloud'))
    arb.add_result(_dets(1, 'cloud'), 300 * MS)
    [out] = arb.poll(300 * MS)
    assert out.record.result_source == 'cloud' and not out.record.deadline_met


def test_an_edge_probe_on_the_cloud_route_serves_only_when_the_cloud_does_not() -> None:
    probing = Decision(seq=1, route=Route.CLOUD, deadline_ms=100.0, probe_every=10)
    arb = Arbiter()
    arb.frame_arrived(1, 'cam', 0, probing)
    arb.add_result(_dets(1, 'edge'), 20 * MS)
    assert arb.poll(21 * MS) == []  # the cloud is still in time: its answer is awaited
    arb.add_result(_dets(1, 'cloud'), 60 * MS)
    [won] = arb.poll(60 * MS)
    assert won.record.result_source == 'cloud' and won.record.sources == ['cloud', 'edge']
    arb.frame_arrived(2, 'cam', 100 * MS, probing)
    arb.add_result(_dets(2, 'edge'), 120 * MS)
    arb.add_report(_report(2, 'cloud', 'failed', 'connection: refused'))
    [saved] = arb.poll(130 * MS)
    assert saved.record.result_source == 'edge' and saved.record.deadline_met
    assert 'cloud: connection: refused' in saved.record.reason


def test_a_failed_route_waits_for_the_probe_of_the_other_side() -> None:
    """The cloud failing first must not drop a frame whose edge probe is still running."""
    probing = Decision(seq=1, route=Route.CLOUD, deadline_ms=100.0, probe_every=10)
    arb = Arbiter()
    arb.frame_arrived(1, 'cam', 0, probing)
    arb.add_report(_report(1, 'cloud', 'failed', 'connection: refused'))
    assert arb.poll(5 * MS) == []  # the edge has not said whether this frame is its probe
    arb.add_result(_dets(1, 'edge'), 40 * MS)
    arb.add_report(_report(1, 'edge'))
    [saved] = arb.poll(40 * MS)
    assert saved.record.result_source == 'edge' and saved.record.deadline_met
    # Not a probe frame: the edge says so, and the frame is dropped at once.
    arb.frame_arrived(2, 'cam', 100 * MS, probing)
    arb.add_report(_report(2, 'cloud', 'failed', 'connection: refused'))
    arb.add_report(_report(2, 'edge', 'skipped', 'route=cloud'))
    [dropped] = arb.poll(101 * MS)
    assert dropped.result is None
    assert dropped.record.drop_reason == 'cloud: connection: refused; edge: route=cloud'
    # The same on the edge route: a superseded edge frame is served by its cloud probe.
    edge_probing = Decision(seq=2, route=Route.EDGE, deadline_ms=100.0, probe_every=10)
    arb.frame_arrived(3, 'cam', 200 * MS, edge_probing)
    arb.add_report(_report(3, 'edge', 'dropped', 'superseded'))
    assert arb.poll(201 * MS) == []
    arb.add_result(_dets(3, 'cloud'), 260 * MS)
    [served] = arb.poll(260 * MS)
    assert served.record.result_source == 'cloud' and 'edge: superseded' in served.record.reason


def test_a_skip_under_another_decision_waits_for_the_side_that_decision_chose() -> None:
    """The workers fell back to the edge (no valid decision, seq -1) on a cloud-route frame.

    Whichever report comes first, the edge's answer is published: dropping the frame on the
    cloud's skip lost it whenever that report won the race.
    """
    arb = Arbiter()
    arb.frame_arrived(1, 'cam', 0, _decision(Route.CLOUD))
    arb.add_report(_report(1, 'cloud', 'skipped', 'route=edge', seq=-1))
    assert arb.poll(5 * MS) == []
    arb.add_result(_dets(1, 'edge'), 20 * MS)
    arb.add_report(_report(1, 'edge', seq=-1))
    [out] = arb.poll(20 * MS)
    assert out.record.result_source == 'edge' and out.record.deadline_met
    # A newer decision (seq 2) sent an edge-route frame to the cloud: the same, mirrored.
    arb.frame_arrived(2, 'cam', 100 * MS, _decision(Route.EDGE))
    arb.add_report(_report(2, 'edge', 'skipped', 'route=cloud', seq=2))
    assert arb.poll(105 * MS) == []
    arb.add_result(_dets(2, 'cloud'), 150 * MS)
    [out] = arb.poll(150 * MS)
    assert out.record.result_source == 'cloud'
    # Both sides skipped under the other decision: dropped with both reasons, not left waiting.
    arb.frame_arrived(3, 'cam', 200 * MS, _decision(Route.CLOUD))
    arb.add_report(_report(3, 'cloud', 'skipped', 'route=edge', seq=-1))
    arb.add_report(_report(3, 'edge', 'skipped', 'route=cloud', seq=2))
    [out] = arb.poll(201 * MS)
    assert out.result is None and out.record.drop_reason == 'cloud: route=edge; edge: route=cloud'
    # Under the frame's own decision a skip settles its side at once, as before.
    arb.frame_arrived(4, 'cam', 300 * MS, _decision(Route.CLOUD))
    arb.add_report(_report(4, 'cloud', 'skipped', 'route=edge'))
    [out] = arb.poll(301 * MS)
    assert out.result is None and out.record.drop_reason == 'route=edge'


def test_every_source_failing_drops_the_frame_with_their_reasons() -> None:
    arb = Arbiter()
    arb.frame_arrived(1, 'cam', 0, _decision(Route.HEDGED))
    arb.add_report(_report(1, 'edge', 'failed', 'decode_failed: x'))
    assert arb.poll(1 * MS) == []
    arb.add_report(_report(1, 'cloud', 'failed', 'connection'))
    [out] = arb.poll(2 * MS)
    assert out.result is None
    assert out.record.drop_reason == 'cloud: connection; edge: decode_failed: x'


def test_single_source_failure_reason_is_the_drop_reason() -> None:
    arb = Arbiter()
    arb.frame_arrived(1, 'cam', 0, _decision(Route.EDGE))
    arb.add_report(_report(1, 'edge', 'dropped', 'superseded'))
    [out] = arb.poll(1 * MS)
    assert out.record.drop_reason == 'superseded' and out.record.latency_ms is None


def test_silence_times_out_as_no_result() -> None:
    arb = Arbiter(result_timeout_ms=500)
    arb.frame_arrived(1, 'cam', 0, _decision(Route.EDGE))
    assert arb.poll(499 * MS) == []
    [out] = arb.poll(500 * MS)
    assert out.record.drop_reason == 'no_result'


def test_duplicate_and_out_of_order_stamps_are_dropped_at_arrival() -> None:
    arb = Arbiter()
    assert arb.frame_arrived(10, 'cam', 0, _decision(Route.EDGE)) is None
    dup = arb.frame_arrived(10, 'cam', 1, _decision(Route.EDGE))
    old = arb.frame_arrived(5, 'cam', 2, _decision(Route.EDGE))
    assert dup.record.drop_reason == 'duplicate_stamp' and dup.record.index == 1
    assert old.record.drop_reason == 'out_of_order_stamp' and old.record.index == 2
    # another camera's older stamp is not out of order
    assert arb.frame_arrived(5, 'other', 3, _decision(Route.EDGE)) is None


def test_flush_finishes_everything_in_arrival_order() -> None:
    arb = Arbiter()
    for stamp in (1, 2, 3):
        arb.frame_arrived(stamp, 'cam', 0, _decision(Route.HEDGED))
    arb.add_result(_dets(2, 'edge'), 5 * MS)
    outs = arb.flush(6 * MS)
    assert [o.record.index for o in outs] == [0, 1, 2]
    assert [o.record.drop_reason for o in outs] == ['no_result', '', 'no_result']
    assert arb.pending == 0


def test_several_edge_targets_earliest_result_is_used() -> None:
    arb = Arbiter(edge_sources=('edge', 'pi'))
    arb.frame_arrived(1, 'cam', 0, _decision(Route.EDGE))
    arb.add_result(_dets(1, 'pi'), 10 * MS)
    arb.add_result(_dets(1, 'edge'), 20 * MS)
    [out] = arb.poll(20 * MS)
    assert out.record.result_source == 'pi'


def test_a_refused_duplicate_does_not_decide_the_original_frame() -> None:
    """Publish the original frame even when a refused duplicate's report comes first.

    The worker refuses a repeated stamp; its report shares the original's key and may arrive
    before the original's result (seen under ROS).
    """
    arb = Arbiter()
    arb.frame_arrived(60, 'cam', 0, _decision(Route.EDGE))
    dup = arb.frame_arrived(60, 'cam', 1, _decision(Route.EDGE))
    assert dup.record.drop_reason == 'duplicate_stamp'
    arb.add_report(_report(60, 'edge', 'refused', 'duplicate_stamp'))
    assert arb.poll(2 * MS) == []
    arb.add_result(_dets(60, 'edge'), 30 * MS)
    [out] = arb.poll(30 * MS)
    assert out.record.result_source == 'edge' and out.record.index == 0


def test_next_due_is_the_first_guard_or_timeout_still_ahead() -> None:
    arb = Arbiter(result_timeout_ms=500)
    assert arb.next_due_ns(0) is None  # nothing pending
    arb.frame_arrived(1, 'cam', 0, _decision(Route.HEDGED, deadline_ms=100))
    arb.add_result(_dets(1, 'edge'), 20 * MS)
    guard = int(HEDGE_GUARD_MS * MS)
    due = arb.next_due_ns(20 * MS)
    assert due == 100 * MS - guard and arb.poll(due - 1) == [] and len(arb.poll(due)) == 1
    arb.frame_arrived(2, 'cam', 200 * MS, _decision(Route.CLOUD, deadline_ms=100))
    assert arb.next_due_ns(200 * MS) == 300 * MS - guard
    assert arb.poll(300 * MS - guard) == []  # cloud route: the guard ends nothing
    due = arb.next_due_ns(300 * MS - guard)
    assert due == 700 * MS and arb.poll(due - 1) == []
    [out] = arb.poll(due)
    assert out.record.drop_reason == 'no_result' and arb.next_due_ns(due) is None


def test_a_split_heads_forwarded_frame_waits_for_its_tail_then_ends_by_it() -> None:
    # The robot's head and the Pi's tail are both edge sources: the head passes the frame on.
    arb = Arbiter(edge_sources=('robot', 'pi'))
    arb.frame_arrived(1, 'cam', 0, _decision(Route.EDGE))
    arb.frame_arrived(2, 'cam', 100 * MS, _decision(Route.EDGE))
    arb.add_report(_report(1, 'robot', 'forwarded'))
    arb.add_report(_report(2, 'robot', 'forwarded'))
    assert arb.poll(20 * MS) == []  # neither a failure nor an answer: the tail answers
    arb.add_result(_dets(1, 'pi'), 60 * MS)
    arb.add_report(_report(1, 'pi'))
    [answered] = arb.poll(61 * MS)
    assert answered.result.source == 'pi' and answered.record.deadline_met
    arb.add_report(_report(2, 'pi', 'dropped', 'superseded'))
    [dropped] = arb.poll(130 * MS)
    assert dropped.record.drop_reason == 'superseded'  # the tail's reason, not a timeout


def test_a_head_and_tail_of_one_name_wait_for_the_tail() -> None:
    arb = Arbiter()  # the simulator's robot reports both parts as 'edge'
    arb.frame_arrived(1, 'cam', 0, _decision(Route.EDGE))
    arb.add_report(_report(1, 'edge', 'forwarded'))
    assert arb.poll(10 * MS) == []
    arb.add_report(_report(1, 'edge', 'failed', 'inference_error: x'))
    [out] = arb.poll(11 * MS)
    assert out.record.drop_reason == 'inference_error: x'


def test_a_frame_a_split_head_did_not_run_ends_at_once_with_its_reason() -> None:
    arb = Arbiter(edge_sources=('pi',))  # the robot's head is no edge source: its tail is
    for stamp in (1, 2):
        arb.frame_arrived(stamp, 'cam', stamp * MS, _decision(Route.EDGE))
    arb.add_report(_report(1, 'robot', 'forwarded'))
    arb.add_report(_report(2, 'robot', 'dropped', 'superseded'))
    [out] = arb.poll(5 * MS)  # the Pi never sees frame 2: no need to wait for a timeout
    assert out.record.stamp_ns == 2 and out.record.drop_reason == 'superseded'
    # A probe the head skipped on the cloud route leaves the failed cloud to decide at once.
    cloud = Decision(seq=1, route=Route.CLOUD, deadline_ms=100.0, probe_every=10)
    arb.frame_arrived(3, 'cam', 10 * MS, cloud)
    arb.add_report(_report(3, 'robot', 'skipped', 'route=cloud'))
    arb.add_report(_report(3, 'cloud', 'failed', 'timeout'))
    [out] = arb.poll(20 * MS)
    assert out.record.stamp_ns == 3 and 'cloud: timeout' in out.record.drop_reason


def test_a_head_that_runs_frames_whole_answers_them_and_its_failure_ends_the_tails_part() -> None:
    # A head at split_point 0 runs the robot's own model on a decision naming no split: it
    # answers as an edge source, and it says it is a head before it ever forwarded a frame.
    arb = Arbiter(edge_sources=('robot', 'pi'))
    for stamp in (1, 2):
        arb.frame_arrived(stamp, 'cam', stamp * MS, _decision(Route.EDGE))
    arb.add_result(_dets(1, 'robot'), 20 * MS)
    arb.add_report(InferenceReport(stamp_ns=1, frame_id='cam', source='robot', split_role='head'))
    [answered] = arb.poll(21 * MS)
    assert (answered.result.source, answered.record.deadline_met) == ('robot', True)
    arb.add_report(InferenceReport(stamp_ns=2, frame_id='cam', source='robot', status='failed',
                                   reason='bad_image: x', split_role='head'))
    [failed] = arb.poll(22 * MS)  # the Pi never sees frame 2: no wait for the timeout
    assert failed.record.drop_reason == 'pi: bad_image: x; robot: bad_image: x'
    # An edge source that is no head leaves the other to answer.
    arb = Arbiter(edge_sources=('robot', 'pi'))
    arb.frame_arrived(3, 'cam', 0, _decision(Route.EDGE))
    arb.add_report(_report(3, 'robot', 'failed', 'bad_image: x'))
    assert arb.poll(22 * MS) == []
