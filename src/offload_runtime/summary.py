"""Summaries of a run's frame records, as the replay prints them."""

from __future__ import annotations

from typing import Any, Sequence

from adaptive_offload.datatypes import FrameRecord, InferenceReport
import numpy as np


def _drop_key(reason: str) -> str:
    # 'cloud: not_sampled; edge: superseded' was lost by the edge: the cloud was never asked.
    parts = reason.split('; ')
    cause = next((p for p in parts if not p.endswith(': not_sampled')), parts[0])
    return cause.split(':', 1)[0]


def summarize(records: Sequence[FrameRecord], wall_s: float) -> dict[str, Any]:
    """Summarise a run: counts, drops by reason and latency quantiles.

    Args:
        records: One record per input frame.
        wall_s: Duration of the run.

    Returns:
        ``frames``, ``results``, ``deadline_met``, ``drops`` (reason -> count, by the first
        source that did not just skip the frame, or the reason cut at its colon), ``sources``
        (source -> results), ``routes`` (route decided -> frames), ``p50``/``p95``/``p99``
        (ms, None without results), ``fps`` (results per second), ``energy_j`` (mean robot
        energy per frame, None without) and ``energy_measured`` (whether any was measured).
    """
    latencies = np.array([r.latency_ms for r in records if r.latency_ms is not None])
    drops: dict[str, int] = {}
    sources: dict[str, int] = {}
    routes: dict[str, int] = {}
    for r in records:
        routes[r.route] = routes.get(r.route, 0) + 1
        if r.dropped:
            key = _drop_key(r.drop_reason)
            drops[key] = drops.get(key, 0) + 1
        else:
            sources[r.result_source] = sources.get(r.result_source, 0) + 1
    out: dict[str, Any] = {
        'frames': len(records), 'results': int(latencies.size),
        'deadline_met': int(sum(r.deadline_met for r in records)),
        'drops': dict(sorted(drops.items())), 'sources': dict(sorted(sources.items())),
        'routes': dict(sorted(routes.items())),
        'fps': latencies.size / wall_s if wall_s > 0 else 0.0,
    }
    for q in (50, 95, 99):
        out[f'p{q}'] = float(np.percentile(latencies, q)) if latencies.size else None
    energy = [r.energy_j for r in records if r.energy_j is not None]
    out['energy_j'] = float(np.mean(energy)) if energy else None
    out['energy_measured'] = any(r.energy_measured for r in records)
    return out


def cloud_answers(reports: Sequence[InferenceReport]) -> dict[str, Any] | None:
    """Summarise the cloud's answers, whether or not they were the frames' results.

    A cloud answer that came after the edge's is not a frame's result, so the sources of the
    results alone can hide a cloud that works: this counts what was sent to it.

    Args:
        reports: Every worker report of the run.

    Returns:
        ``requests`` (frames sent: answered, failed or dropped), ``answered``, ``failures``
        (reason cut at its colon -> count) and ``p50_ms`` (of the answers, None without), or
        None when nothing was sent to the cloud.
    """
    sent = [r for r in reports if r.source == 'cloud' and r.status in ('ok', 'failed', 'dropped')]
    if not sent:
        return None
    answered = [r.total_ms for r in sent if r.status == 'ok']
    failures: dict[str, int] = {}
    for r in sent:
        if r.status != 'ok':
            key = _drop_key(r.reason or r.status)
            failures[key] = failures.get(key, 0) + 1
    return {'requests': len(sent), 'answered': len(answered),
            'failures': dict(sorted(failures.items())),
            'p50_ms': float(np.median(answered)) if answered else None}


def format_summary(summary: dict[str, Any]) -> str:
    """Return the summary as an aligned text table."""
    text = _aligned(summary_rows(summary))
    tracking = summary.get('accuracy_tracking') or {}
    if tracking.get('windows'):  # its own block: its labels would widen the table
        text += '\n' + _aligned(tracking_rows(tracking))
    return text


def summary_rows(summary: dict[str, Any]) -> list[tuple[str, str]]:
    """Return the summary's (label, value) rows, without the accuracy tracking."""
    def ms(value: float | None) -> str:
        return '-' if value is None else f'{value:.1f} ms'

    frames = summary['frames']
    met = summary['deadline_met']
    rows = [
        ('frames in', str(frames)),
        ('results', f'{summary["results"]} ({summary["fps"]:.1f}/s)'),
        ('by route', ', '.join(f'{k} {v}' for k, v in summary.get('routes', {}).items()) or '-'),
        ('by source', ', '.join(f'{k} {v}' for k, v in summary['sources'].items()) or '-'),
        ('deadline met', f'{met} ({100.0 * met / frames:.1f} %)' if frames else '0'),
        ('dropped', str(sum(summary['drops'].values()))),
    ]
    if 'frames_lost' in summary:
        rows.append(('lost (no record)', str(summary['frames_lost'])))
    rows += [(f'  {reason}', str(count)) for reason, count in summary['drops'].items()]
    rows += [('latency P50', ms(summary['p50'])), ('latency P95', ms(summary['p95'])),
             ('latency P99', ms(summary['p99']))]
    cloud = summary.get('cloud')
    if cloud:
        rows.append(('cloud answers', f'{cloud["answered"]} of {cloud["requests"]} requests '
                                      f'(P50 {ms(cloud["p50_ms"])})'))
        rows += [(f'  {reason}', str(count)) for reason, count in cloud['failures'].items()]
    if summary.get('energy_j') is not None:
        how = 'measured' if summary.get('energy_measured') else 'modelled'
        rows.append(('robot energy', f'{summary["energy_j"]:.3f} J/frame ({how})'))
    maps = summary.get('map') or {}
    if 'all' in maps:
        rows.append(('mAP@[.5:.95]', f'{maps["all"]:.3f} (against ground truth)'))
        rows += [(f'  {group}', f'{value:.3f}') for group, value in maps.items() if group != 'all']
    return rows


def _aligned(rows: list[tuple[str, str]]) -> str:
    width = max(len(k) for k, _ in rows)
    return '\n'.join(f'{k.ljust(width)}  {v}' for k, v in rows)


def tracking_rows(tracking: dict[str, Any]) -> list[tuple[str, str]]:
    """Return the rows of the edge accuracy tracking (``Tracking.to_dict()``) for the table."""
    def pts(value: float | None) -> str:
        return '-' if value is None else f'{value:.1f}'

    def secs(value: float | None) -> str:
        return 'never' if value is None else f'{value:.1f} s'

    settings = tracking['settings']
    bias = tracking['bias']
    rows = [('edge mAP estimate',
             f'MAE {pts(tracking["mae"])}, bias {"-" if bias is None else f"{bias:+.1f}"} '
             f'against measured ({len(tracking["windows"])} windows of '
             f'{settings["window_s"]:g} s, step {settings["step_s"]:g} s)')]
    for c in tracking['changes']:
        levels = (f'measured {pts(c["measured_before"])} -> {pts(c["measured_after"])}, '
                  f'estimate {pts(c["estimate_before"])} -> {pts(c["estimate_after"])}')
        if c['follows']:
            how = f'half-way {secs(c["lag50_s"])}, 90 % {secs(c["lag90_s"])}'
            if c['still_moving']:
                how += ' (still moving)'
        else:
            how = c['note']
            if c.get('own_lag50_s') is not None:
                how += (f' ({100 * c["share"]:.0f} %; that move half-way '
                        f'{secs(c["own_lag50_s"])}, 90 % {secs(c["own_lag90_s"])})')
        rows.append((f'  {c["label"]} at {c["t_s"]:g} s', f'{levels}: {how}'))
    if not tracking['changes']:
        rows.append(('  changes', f'none ({tracking["changes_from"]})'))
    return rows


def progress_bar(done: int, total: int, width: int = 30) -> str:
    """Return a one-line progress bar of ``done`` out of ``total`` frames."""
    filled = min(width, int(width * done / total)) if total else width
    return f'replay [{"#" * filled}{"." * (width - filled)}] {done}/{total} frames'
