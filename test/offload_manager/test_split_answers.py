"""The split frames' fates: answered, lost, or forwarded and overdue."""

from __future__ import annotations

from offload_manager.split_answers import (MIN_OVERDUE, PROBE_LOST_S, RECOVERED_RUN,
                                           SplitAnswers, WINDOW)


def test_frames_unanswered_past_the_deadline_count_as_lost_once_there_are_several() -> None:
    answers = SplitAnswers(forget_after_s=30.0)
    assert answers.up(0.0, 250.0) == 1.0  # nothing known
    answers.forwarded(1)
    answers.tick(10.0)  # timed from the first tick that sees it
    answers.forwarded(2)
    answers.ended(2, lost=False, now_s=10.1)
    assert answers.up(10.3, 250.0) == 1.0  # one slow frame: a late answer, maybe
    for stamp in range(3, 3 + MIN_OVERDUE - 1):
        answers.forwarded(stamp)
    answers.tick(10.1)
    assert answers.up(10.3, 250.0) == 1.0
    assert answers.up(10.4, 250.0) == 1 / (1 + MIN_OVERDUE)  # a silent LAN
    answers.answered(1)  # late, but it came: no longer overdue
    assert answers.up(10.4, 250.0) == 1.0


def test_frames_timed_from_their_heads_report_are_overdue_a_deadline_after_it() -> None:
    """Timed from the report, not from the next plan tick (up to a plan period later)."""
    answers = SplitAnswers(forget_after_s=30.0)
    for i in range(MIN_OVERDUE):
        answers.forwarded(i, now_s=10.0 + 0.1 * i)
    last = 10.0 + 0.1 * (MIN_OVERDUE - 1)
    assert answers.up(last + 0.25, 250.0) == 1.0  # the newest is not overdue yet
    assert answers.up(last + 0.26, 250.0) == 0.0  # now all are, with no tick in between
    answers.answered(0)
    assert answers.up(last + 0.26, 250.0) == 1.0  # fewer than MIN_OVERDUE: slow, maybe


def test_split_frames_the_head_could_not_send_count_as_lost() -> None:
    answers = SplitAnswers(forget_after_s=30.0)
    for i in range(3):
        answers.forwarded(i)
        answers.ended(i, lost=False, now_s=1.0 + i / 10)
    answers.unsent(1.3)  # no tail listening: answered by the head, lost to the split
    assert answers.up(1.3, 250.0) == 3 / 4


def test_ended_frames_count_answered_or_lost_within_a_window() -> None:
    answers = SplitAnswers(forget_after_s=30.0)
    for i in range(WINDOW):
        answers.forwarded(i)
        answers.ended(i, lost=i % 4 == 0, now_s=i * 0.1)
    assert answers.up(2.0, 250.0) == 0.75
    answers.forwarded(99)
    assert answers.ended(99, lost=False, now_s=2.1)  # ended before any tick: never pending
    answers.tick(2.2)
    assert answers.up(60.0, 250.0) == 16 / WINDOW
    # A frame no head forwarded was lost on the robot: none of the splits' business.
    assert not answers.ended(100, lost=True, now_s=2.3)
    assert not answers.ended(99, lost=True, now_s=2.3)  # and a frame ends once
    assert answers.up(60.0, 250.0) == 16 / WINDOW


def test_a_history_left_long_enough_is_forgotten() -> None:
    answers = SplitAnswers(forget_after_s=30.0)
    answers.forwarded(1)
    assert answers.ended(1, lost=True, now_s=5.0)
    answers.forwarded(2)
    answers.tick(5.0)
    answers.tick(34.0)
    assert answers.up(34.0, 250.0) == 0.0
    answers.tick(35.5)
    assert answers.up(35.5, 250.0) == 1.0


def test_a_probe_answered_counts_as_answered_and_one_unanswered_as_lost_in_time() -> None:
    answers = SplitAnswers(forget_after_s=30.0)
    answers.probed(1)
    answers.tick(1.0)
    answers.answered(1, now_s=1.1)
    answers.probed(2)
    answers.tick(2.0)
    answers.tick(2.0 + PROBE_LOST_S - 0.1)
    assert answers.up(5.0, 250.0) == 1.0  # late, not yet lost
    answers.tick(2.0 + PROBE_LOST_S)
    assert answers.up(5.0, 250.0) == 0.5
    answers.answered(2, now_s=5.0)  # an answer after the probe was given up changes nothing
    assert answers.up(5.0, 250.0) == 0.5


def test_a_tail_that_answers_a_probe_before_the_heads_report_comes_counts_it() -> None:
    answers = SplitAnswers(forget_after_s=30.0)
    answers.answered(7, now_s=1.0)  # the tail was faster than the robot's own model
    answers.probed(7)
    answers.tick(1.1)
    answers.tick(1.1 + PROBE_LOST_S)
    assert answers.up(4.0, 250.0) == 1.0


def test_probes_answered_in_a_row_after_losses_forget_them_but_split_frames_do_not() -> None:
    answers = SplitAnswers(forget_after_s=30.0)
    for stamp in range(5):  # a LAN drop: split frames lost
        answers.forwarded(stamp)
        answers.ended(stamp, lost=True, now_s=1.0)
    for stamp in range(10, 10 + RECOVERED_RUN - 1):  # the LAN back: probes answered
        answers.probed(stamp)
        answers.answered(stamp, now_s=2.0)
    assert answers.up(2.0, 250.0) == (RECOVERED_RUN - 1) / (RECOVERED_RUN + 4)
    answers.probed(20)
    answers.answered(20, now_s=3.0)
    assert answers.up(3.0, 250.0) == 1.0
    # On the split, answers after a loss are weighed against it as they come.
    answers.forwarded(30)
    answers.ended(30, lost=True, now_s=4.0)
    for stamp in range(31, 31 + RECOVERED_RUN):
        answers.forwarded(stamp)
        answers.ended(stamp, lost=False, now_s=4.1)
    assert answers.up(4.1, 250.0) == (2 * RECOVERED_RUN) / (2 * RECOVERED_RUN + 1)
