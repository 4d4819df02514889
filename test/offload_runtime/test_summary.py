"""Run summaries: drop reasons, sources, quantiles and energy."""

from __future__ import annotations

from adaptive_offload.datatypes import FrameRecord, InferenceReport
from offload_runtime.summary import cloud_answers, format_summary, summarize


def _record(index: int, latency_ms: float | None = None, drop_reason: str = '',
            source: str = '', energy_j: float | None = None,
            route: str = 'edge') -> FrameRecord:
    return FrameRecord(index=index, stamp_ns=index, frame_id='cam', route=route,
                       sources=[source] if source else [], result_source=source,
                       latency_ms=latency_ms, deadline_ms=250.0,
                       deadline_met=latency_ms is not None and latency_ms <= 250.0,
                       drop_reason=drop_reason, energy_j=energy_j)


def test_drops_count_under_the_source_that_lost_the_frame() -> None:
    records = [_record(0, drop_reason='cloud: not_sampled; edge: superseded'),
               _record(1, drop_reason='edge: superseded'),
               _record(2, drop_reason='cloud: timeout; edge: not_sampled'),
               _record(3, drop_reason='decode: truncated JPEG'),
               _record(4, drop_reason='cloud: not_sampled')]
    assert summarize(records, 1.0)['drops'] == {'cloud': 2, 'decode': 1, 'edge': 2}


def test_quantiles_sources_and_energy() -> None:
    records = [_record(i, latency_ms=float(i + 1), source='edge' if i % 2 else 'cloud',
                       energy_j=0.5) for i in range(100)] + [_record(100, drop_reason='edge: x')]
    summary = summarize(records, 10.0)
    assert summary['results'] == 100 and summary['frames'] == 101
    assert summary['sources'] == {'cloud': 50, 'edge': 50}
    assert summary['p50'] == 50.5 and abs(summary['p99'] - 99.01) < 1e-9
    assert summary['fps'] == 10.0 and summary['energy_j'] == 0.5
    assert summary['energy_measured'] is False
    text = format_summary(summary)
    assert 'cloud 50, edge 50' in text and '101' in text


def test_routes_count_every_frame_by_the_route_decided_whatever_answered() -> None:
    records = [_record(0, 30.0, source='edge'), _record(1, 180.0, source='cloud', route='hedged'),
               _record(2, drop_reason='cloud: overloaded', route='hedged'),
               _record(3, 200.0, source='cloud', route='cloud')]
    summary = summarize(records, 1.0)
    assert summary['routes'] == {'cloud': 1, 'edge': 1, 'hedged': 2}
    assert 'by route      cloud 1, edge 1, hedged 2' in format_summary(summary).splitlines()


def test_the_table_shows_the_tracking_error_and_each_changes_lag() -> None:
    from offload_runtime.accuracy_tracking import ChangeLag, Tracking, TrackingSettings, Window

    tracking = Tracking(TrackingSettings(), [Window(0, 10, 100, 100, 80.0, 50.0, 10)], [
        ChangeLag(30.0, 'easy -> hard', 80.0, 27.0, 48.0, 30.0, True, 4.5, None, True),
        ChangeLag(60.0, 'hard -> easy', 27.0, 80.0, 30.0, 36.0, False, None, None,
                  note='never: estimate moved +6.0 for a measured +53.0', share=6 / 53,
                  own_lag50_s=5.0, own_lag90_s=12.0)], 'timeline',
        mae=30.0, bias=-30.0)
    summary = {**summarize([_record(0, 5.0, source='edge')], 1.0),
               'accuracy_tracking': tracking.to_dict()}
    plain = {k: v for k, v in summary.items() if k != 'accuracy_tracking'}
    # The tracking is a block of its own after the table, which keeps its alignment.
    assert format_summary(summary).startswith(format_summary(plain) + '\n')
    no_windows = {**plain, 'accuracy_tracking': {**tracking.to_dict(), 'windows': []}}
    assert format_summary(no_windows) == format_summary(plain)
    lines = format_summary(summary).splitlines()
    assert lines[-3].split('  ', 1)[1].strip() == (
        'MAE 30.0, bias -30.0 against measured (1 windows of 10 s, step 2 s)')
    assert lines[-2].endswith('measured 80.0 -> 27.0, estimate 48.0 -> 30.0: half-way 4.5 s, '
                              '90 % never (still moving)')
    assert 'hard -> easy at 60 s' in lines[-1] and lines[-1].endswith(
        ': never: estimate moved +6.0 for a measured +53.0 (11 %; that move half-way 5.0 s, '
        '90 % 12.0 s)')


def test_cloud_answers_count_what_was_sent_whoever_won_the_frame() -> None:
    def report(status: str, ms: float = 0.0, source: str = 'cloud',
               reason: str = '') -> InferenceReport:
        return InferenceReport(stamp_ns=0, source=source, status=status, total_ms=ms,
                               reason=reason)

    reports = [report('ok', 180.0), report('ok', 220.0), report('ok', 200.0),
               report('failed', reason='timeout: 250 ms'), report('dropped', reason='busy'),
               report('skipped'), report('ok', 30.0, source='edge')]
    cloud = cloud_answers(reports)
    assert cloud == {'requests': 5, 'answered': 3, 'p50_ms': 200.0,
                     'failures': {'busy': 1, 'timeout': 1}}
    assert cloud_answers([report('skipped'), report('ok', source='edge')]) is None
    records = [_record(0, latency_ms=30.0, source='edge')]
    text = format_summary({**summarize(records, 1.0), 'cloud': cloud})
    assert 'cloud answers  3 of 5 requests (P50 200.0 ms)' in text
    assert '  timeout' in text
