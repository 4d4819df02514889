"""One self-contained HTML page of a run, for a person to open in a browser.

:func:`write_report` reads a replay's output bag and writes the summary table, the latency CDF
per result source, the route timeline with the injected faults shaded, the robot energy per
frame, the levels of every ``/diagnostics`` check over time, and a strip of frames with the
edge's and the cloud's boxes drawn in their colours. :func:`write_evaluation_report` does the
same for an ``evaluate`` folder: its tables and every plot. Everything is inlined (plots and
frames as data URIs, no script, no external file), so the page can be mailed or attached to a
ticket as it is.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
import html
import io
from pathlib import Path
from typing import Any, Sequence

from adaptive_offload import topics
from adaptive_offload.conversions import image_to_frame, message_to_detections, stamp_to_ns
from adaptive_offload.datatypes import Detection, FrameRecord, InferenceReport
from adaptive_offload.drawing import colour_of, draw
from adaptive_offload.errors import BagError, ConversionError
from adaptive_offload.health_records import FaultEvent, HealthEvent
from adaptive_offload.typestore import make_typestore
import cv2
from fault_injection.fault_measures import measure
from fault_injection.scenario import Fault, Scenario
import numpy as np
from offload_runtime.summary import cloud_answers, summarize, summary_rows

IMAGE_TYPES = ('sensor_msgs/msg/Image', 'sensor_msgs/msg/CompressedImage')
DETECTIONS_TYPE = 'vision_msgs/msg/Detection2DArray'
STRING_TYPE = 'std_msgs/msg/String'
LEVELS = ('OK', 'WARN', 'ERROR', 'STALE')
LEVEL_COLOURS = ('#3a9a3a', '#e0a000', '#d03030', '#8a8a8a')
STRIP_WIDTH = 320  # pixels of each frame in the strip


@dataclass
class RunData:
    """What the page shows of one output bag (times in seconds from the bag's start)."""

    name: str
    duration_s: float
    records: list[tuple[float, FrameRecord]] = field(default_factory=list)
    reports: list[tuple[float, InferenceReport]] = field(default_factory=list)
    events: list[tuple[float, HealthEvent]] = field(default_factory=list)
    faults: list[tuple[float, float, str]] = field(default_factory=list)
    diagnostics: dict[str, list[tuple[float, int]]] = field(default_factory=dict)
    boxes: dict[int, dict[str, tuple[Detection, ...]]] = field(default_factory=dict)
    strip: list[tuple[float, str, np.ndarray]] = field(default_factory=list)


def read_run(bag: Path, frames: int = 8) -> RunData:
    """Read what the page shows from a replay's output bag.

    Args:
        bag: The output bag folder.
        frames: How many frames the strip shows, evenly spread over those with a result.

    Raises:
        BagError: If the bag does not open or holds no frame records (not a replay's output).
    """
    from rosbags.rosbag2 import Reader

    store = make_typestore('jazzy')
    try:
        reader = Reader(bag)
        reader.open()
    except Exception as err:  # rosbags raises several types for what is not a bag
        raise BagError(f'{bag}: not a readable bag ({err})') from err
    try:
        start = reader.start_time if reader.message_count else 0
        data = RunData(bag.name, (reader.end_time - start) / 1e9 if reader.message_count else 0)
        small = [c for c in reader.connections if c.msgtype not in IMAGE_TYPES]
        open_faults: dict[str, list[float]] = {}
        for conn, stamp, raw in reader.messages(small):
            t_s = (stamp - start) / 1e9
            if conn.topic == topics.FRAMES:
                data.records.append((t_s, FrameRecord.from_json(
                    store.deserialize_cdr(raw, conn.msgtype).data)))
            elif conn.topic.endswith('/telemetry') and conn.msgtype == STRING_TYPE:
                data.reports.append((t_s, InferenceReport.from_json(
                    store.deserialize_cdr(raw, conn.msgtype).data)))
            elif conn.topic == topics.HEALTH_EVENTS:
                data.events.append((t_s, HealthEvent.from_json(
                    store.deserialize_cdr(raw, conn.msgtype).data)))
            elif conn.topic == topics.HEALTH_FAULTS:
                event = FaultEvent.from_json(store.deserialize_cdr(raw, conn.msgtype).data)
                if event.phase == 'start':
                    open_faults.setdefault(event.kind, []).append(t_s)
                elif open_faults.get(event.kind):
                    data.faults.append((open_faults[event.kind].pop(0), t_s, event.kind))
            elif conn.topic == topics.DIAGNOSTICS:
                for status in store.deserialize_cdr(raw, conn.msgtype).status:
                    level = status.level if isinstance(status.level, int) else \
                        int.from_bytes(status.level, 'little')
                    data.diagnostics.setdefault(str(status.name), []).append((t_s, level))
            elif conn.msgtype == DETECTIONS_TYPE and _source_of(conn.topic):
                source = _source_of(conn.topic)
                dets = message_to_detections(store.deserialize_cdr(raw, conn.msgtype), source)
                data.boxes.setdefault(dets.stamp_ns, {})[source] = dets.detections
        for kind, starts in open_faults.items():  # still on when the bag ended
            data.faults += [(t, data.duration_s, kind) for t in starts]
        if not data.records:
            raise BagError(f'{bag}: no frame records on {topics.FRAMES}: not the output of a '
                           'replay (adaptive-offload replay BAG --out OUT)')
        _read_strip(reader, store, data, frames)
    finally:
        reader.close()
    return data


def _source_of(topic: str) -> str:
    """Return whose boxes a detections topic holds: ``cloud``, an edge target, or ''."""
    if topic == topics.CLOUD_DETECTIONS:
        return 'cloud'
    suffix = topics.edge_topic(topics.ROOT_EDGE_SOURCE, 'detections')
    if topic == suffix:
        return topics.ROOT_EDGE_SOURCE
    if topic.endswith(suffix):  # /<source>/edge/detections
        return topic[:-len(suffix)].strip('/')
    return ''  # the fused result, the ground truth


def _read_strip(reader: Any, store: Any, data: RunData, frames: int) -> None:
    answered = [(t, r) for t, r in data.records if r.result_source]
    if not answered or frames <= 0:
        return
    # Up to half the strip from frames more than one source answered (hedged, probed): the
    # edge answers most frames first, and a strip of its boxes alone would hide the cloud's.
    both = [(t, r) for t, r in answered if len(data.boxes.get(r.stamp_ns, {})) > 1]
    wanted = dict(_spread(both, frames // 2))
    rest = [(t, r) for t, r in answered if r.stamp_ns not in wanted]
    wanted.update(_spread(rest, frames - len(wanted)))
    cameras = [c for c in reader.connections if c.msgtype in IMAGE_TYPES and
               c.topic in (topics.CAMERA, f'{topics.CAMERA}/compressed')]
    for conn, _, raw in reader.messages(cameras):
        msg = store.deserialize_cdr(raw, conn.msgtype)
        stamp = stamp_to_ns(msg.header.stamp)
        if stamp not in wanted:
            continue
        try:
            image = image_to_frame(msg).image.copy()
        except ConversionError:
            continue  # an undecodable frame has no picture; its record says why
        for source, dets in data.boxes.get(stamp, {}).items():
            draw(image, dets, colour_of(source))
        scale = STRIP_WIDTH / image.shape[1]
        image = cv2.resize(image, (STRIP_WIDTH, max(1, round(image.shape[0] * scale))))
        t_s, record = wanted.pop(stamp)
        shown = ', '.join(sorted(data.boxes.get(stamp, {}))) or 'none'
        data.strip.append((t_s, f'{t_s:.1f} s: result from {record.result_source} in '
                                f'{record.latency_ms or 0:.0f} ms; boxes of {shown}', image))


def _spread(frames: list[tuple[float, FrameRecord]], count: int
            ) -> list[tuple[int, tuple[float, FrameRecord]]]:
    """Return ``count`` of ``frames`` evenly spread, keyed by stamp."""
    if count <= 0 or not frames:
        return []
    picks = np.linspace(0, len(frames) - 1, min(count, len(frames))).round().astype(int)
    return [(frames[i][1].stamp_ns, frames[i]) for i in sorted(set(picks.tolist()))]


def _png(fig: Any) -> str:
    from matplotlib import pyplot as plt

    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format='png', dpi=90)
    plt.close(fig)
    return 'data:image/png;base64,' + base64.b64encode(buffer.getvalue()).decode()


def _plots(data: RunData) -> list[tuple[str, str]]:
    """Return (title, PNG data URI) of each plot."""
    import matplotlib

    matplotlib.use('Agg')
    from matplotlib import pyplot as plt

    plots = []
    fig, ax = plt.subplots(figsize=(7, 3.5))
    by_source: dict[str, list[float]] = {}
    for _, record in data.records:
        if record.latency_ms is not None:
            by_source.setdefault(record.result_source, []).append(record.latency_ms)
    for source, latencies in sorted(by_source.items()):
        lat = np.sort(latencies)
        ax.plot(lat, np.arange(1, lat.size + 1) / lat.size, label=f'{source} ({lat.size})')
    deadlines = {r.deadline_ms for _, r in data.records if r.deadline_ms}
    for deadline in sorted(deadlines)[:1]:
        ax.axvline(deadline, color='grey', linestyle='--', label='deadline')
    ax.set(xlabel='latency (ms)', ylabel='share of frames')
    ax.legend(fontsize=8)
    plots.append(('Latency per result source (CDF)', _png(fig)))

    fig, ax = plt.subplots(figsize=(7, 3))
    routes = sorted({r.route for _, r in data.records})
    level = {route: i for i, route in enumerate(routes)}
    ax.step([t for t, _ in data.records], [level[r.route] for _, r in data.records],
            where='post')
    lost = [(t, level[r.route]) for t, r in data.records if r.dropped]
    if lost:
        ax.plot(*zip(*lost), 'x', color=LEVEL_COLOURS[2], label='dropped')
        ax.legend(fontsize=8)
    _shade_faults(ax, data)
    ax.set(yticks=list(level.values()), yticklabels=routes, xlabel='time (s)',
           xlim=(0, max(data.duration_s, 1e-3)))
    plots.append(('Route of each frame (faults shaded)', _png(fig)))

    fig, ax = plt.subplots(figsize=(7, 3))
    energy = [(t, r.energy_j) for t, r in data.records if r.energy_j is not None]
    if energy:
        ax.plot(*zip(*energy), linewidth=1)
    _shade_faults(ax, data)
    measured = any(r.energy_measured for _, r in data.records)
    ax.set(xlabel='time (s)', ylabel=f'J/frame ({"measured" if measured else "modelled"})',
           xlim=(0, max(data.duration_s, 1e-3)))
    plots.append(('Robot energy per frame', _png(fig)))

    names = sorted(data.diagnostics)
    fig, ax = plt.subplots(figsize=(7, 0.8 + 0.35 * max(1, len(names))))
    for row, name in enumerate(names):
        times, levels = zip(*data.diagnostics[name])
        ax.scatter(times, [row] * len(times), marker='|', s=120,
                   c=[LEVEL_COLOURS[min(lv, 3)] for lv in levels])
    _shade_faults(ax, data)
    ax.set(yticks=range(len(names)), xlabel='time (s)', xlim=(0, max(data.duration_s, 1e-3)))
    ax.set_yticklabels([n.replace('adaptive_offload: ', '') for n in names], fontsize=7)
    plots.append(('Diagnostics levels (green OK, amber WARN, red ERROR, grey STALE)',
                  _png(fig)))
    return plots


def _shade_faults(ax: Any, data: RunData) -> None:
    for start, end, kind in data.faults:
        ax.axvspan(start, end, color='red', alpha=0.12)
        ax.text(start, 1.0, kind, transform=ax.get_xaxis_transform(), fontsize=7, va='bottom')


def _table(rows: Sequence[Sequence[str]], header: Sequence[str] = ()) -> str:
    head = ''.join(f'<th>{html.escape(h)}</th>' for h in header)
    body = ''.join('<tr>' + ''.join(_cell(c) for c in row) + '</tr>' for row in rows)
    return f'<table>{f"<tr>{head}</tr>" if head else ""}{body}</table>'


def _cell(text: str) -> str:
    """Return a table cell; leading spaces (a sub-row of the summary) become an indent."""
    depth = len(text) - len(text.lstrip(' '))
    style = f' style="padding-left:{8 + 8 * depth}px"' if depth else ''
    return f'<td{style}>{html.escape(text.strip())}</td>'


def _css_colour(source: str) -> str:
    b, g, r = colour_of(source)
    return f'rgb({r},{g},{b})'


STYLE = ('body{font-family:sans-serif;margin:24px;max-width:1100px;color:#222}'
         'table{border-collapse:collapse;margin:8px 0}td,th{border:1px solid #ccc;'
         'padding:3px 8px;text-align:left;font-size:14px}figure{display:inline-block;'
         'margin:4px}figcaption{font-size:12px}img{max-width:100%}'
         '.key{display:inline-block;width:12px;height:12px;margin:0 4px 0 12px}')


def _page(title: str, body: str) -> str:
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>'
            f'{html.escape(title)}</title><style>{STYLE}</style></head><body>'
            f'<h1>{html.escape(title)}</h1>{body}</body></html>')


def _fault_rows(data: RunData) -> list[tuple[str, ...]]:
    """Each fault with how soon it was seen and served again, measured as the replay does."""
    def ms(value: float | None) -> str:
        return '-' if value is None else f'{value * 1e3:.0f} ms'

    faults = sorted(data.faults)
    scenario = Scenario(data.name, tuple(Fault(kind, start, end - start)
                                         for start, end, kind in faults))
    measures = measure(scenario, data.records, data.reports, data.events)
    return [(m.kind, f'{start:.1f} s', f'{end:.1f} s', ms(m.detect_s), ms(m.diagnosed_s),
             ms(m.recover_s), str(m.late), str(m.dropped))
            for (start, end, _), m in zip(faults, measures)]


def render(data: RunData) -> str:
    """Return the page of one run as HTML."""
    records = [r for _, r in data.records]
    summary = summarize(records, data.duration_s)
    summary['cloud'] = cloud_answers([r for _, r in data.reports])
    parts = ['<h2>Summary</h2>', _table(summary_rows(summary))]
    if data.faults:
        parts += ['<h2>Faults injected</h2>', _table(_fault_rows(data),
                                                     ('fault', 'from', 'to', 'detected',
                                                      'on /diagnostics', 'recovered', 'late',
                                                      'dropped'))]
    for title, uri in _plots(data):
        label = html.escape(title)
        parts += [f'<h2>{label}</h2>', f'<img src="{uri}" alt="{label}">']
    if data.strip:
        sources = sorted({s for boxes in data.boxes.values() for s in boxes})
        keys = ''.join(f'<span class="key" style="background:{_css_colour(s)}"></span>'
                       f'{html.escape(s)}' for s in sources)
        parts += [f'<h2>Frames</h2><p>Boxes by source:{keys}</p>']
        for _, caption, image in sorted(data.strip, key=lambda item: item[0]):
            ok, jpeg = cv2.imencode('.jpg', image, [cv2.IMWRITE_JPEG_QUALITY, 80])
            if ok:
                uri = 'data:image/jpeg;base64,' + base64.b64encode(jpeg.tobytes()).decode()
                parts.append(f'<figure><img src="{uri}" alt="{html.escape(caption)}">'
                             f'<figcaption>{html.escape(caption)}</figcaption></figure>')
    return _page(f'adaptive_offload run: {data.name}', ''.join(parts))


def write_report(bag: Path, out: Path | None = None, frames: int = 8) -> Path:
    """Write the page of a replay's output bag; returns its path (default ``bag/report.html``).

    Raises:
        BagError: If the bag is not a replay's output.
    """
    out = out or bag / 'report.html'
    out.write_text(render(read_run(bag, frames)), encoding='utf-8')
    return out


def _markdown_table(text: str) -> str:
    lines = [line.strip().strip('|').split('|') for line in text.splitlines()
             if line.strip().startswith('|')]
    rows = [[c.strip() for c in line] for line in lines if not set(''.join(line)) <= set('-: ')]
    return _table(rows[1:], rows[0]) if rows else ''


def write_evaluation_report(folder: Path) -> Path:
    """Write ``folder/report.html``: an ``evaluate`` folder's tables and every plot in it."""
    parts = []
    for name, title in (('table.md', 'Every policy under every scenario'),
                        ('matched.md', 'Predictive settings matched to each baseline')):
        path = folder / name
        if path.exists():
            parts += [f'<h2>{title}</h2>', _markdown_table(path.read_text(encoding='utf-8'))]
    for png in sorted(folder.glob('*.png')):
        uri = 'data:image/png;base64,' + base64.b64encode(png.read_bytes()).decode()
        parts.append(f'<figure><img src="{uri}" alt="{html.escape(png.stem)}">'
                     f'<figcaption>{html.escape(png.stem)}</figcaption></figure>')
    out = folder / 'report.html'
    out.write_text(_page(f'adaptive_offload evaluation: {folder.name}', ''.join(parts)),
                   encoding='utf-8')
    return out
