"""The standalone runtime end to end: sample bags, bad input, output bags."""

from __future__ import annotations

import gc
import json
from pathlib import Path
import threading
import time
from typing import Any, Callable

from adaptive_offload.conversions import encode_image, frame_to_message, header
from adaptive_offload.datatypes import FrameRecord
from adaptive_offload.errors import BackendError, BagError
from adaptive_offload.typestore import make_typestore, message_types
from helpers import FakeBackend
import numpy as np
from offload_runtime.bagio import OutputBag, qos
from offload_runtime.replay import Replay, ReplayOptions
from offload_runtime.sample_bag import SampleSpec, write_sample_bag
import pytest
from rcnn_service.service import ServiceConfig
from rosbags.rosbag2 import Reader

RAW = 'sensor_msgs/msg/Image'
COMPRESSED = 'sensor_msgs/msg/CompressedImage'


EDGE_ONLY = {'offload_manager': {'policy': 'edge-only'}}


def _replay(bag: Path, out: Path, factory: Callable[..., Any], **kw: Any) -> Any:
    # The data path under edge-only unless a test names a policy: the default (predictive)
    # may use the cloud, so it would start the embedded service.
    overrides = dict(kw.pop('overrides', {}))
    overrides['offload_manager'] = {'policy': 'edge-only', **overrides.get('offload_manager', {})}
    return Replay(ReplayOptions(bag=bag, out=out, rate=kw.pop('rate', 0.0), overrides=overrides,
                                **kw), backend_factory=factory).run()


def _messages(bag: Path, topic: str) -> list[Any]:
    store = make_typestore('jazzy')
    with Reader(bag) as reader:
        conns = [c for c in reader.connections if c.topic == topic]
        return [store.deserialize_cdr(raw, c.msgtype) for c, _, raw in reader.messages(conns)]


def test_300_frames_give_300_records_and_a_complete_output_bag(
        sample_bag_300: Path, tmp_path: Path, fake_backend_factory: Callable[..., Any]) -> None:
    result = _replay(sample_bag_300, tmp_path / 'out', fake_backend_factory)
    assert len(result.records) == 300
    assert [r.index for r in result.records] == list(range(300))
    assert result.summary['frames'] == 300 and result.summary['results'] == 300
    assert result.summary['drops'] == {} and result.summary['p50'] is not None
    assert 0 < result.frames_s < result.wall_s  # the frames, without start-up and finish
    records = [FrameRecord.from_json(m.data) for m in _messages(tmp_path / 'out',
                                                                '/offload/frames')]
    assert len(records) == 300 and all(r.result_source == 'edge' for r in records)
    decisions = _messages(tmp_path / 'out', '/offload/decision')
    assert result.routes and len(result.routes) == len(decisions)
    assert {route for _, route in result.routes} == {'edge'}
    assert [t for t, _ in result.routes] == sorted(t for t, _ in result.routes)
    fused = _messages(tmp_path / 'out', '/detections')
    assert len(fused) == 300 and len(fused[0].detections) == 1
    # results keep the source image's header
    images = _messages(tmp_path / 'out', '/camera/image_raw')
    assert [f.header.stamp for f in fused] == [i.header.stamp for i in images]
    # Each frame's boxes are drawn over it in a viewer: one marker a frame, on its stamp.
    markers = _messages(tmp_path / 'out', '/offload/annotations')
    assert [m.header.stamp for m in markers] == [i.header.stamp for i in images]
    assert all(len(m.points) == 8 for m in markers)  # the fake backend's one box
    assert len(_messages(tmp_path / 'out', '/edge/telemetry')) == 300
    assert _messages(tmp_path / 'out', '/offload/decision')
    diagnostics = _messages(tmp_path / 'out', '/diagnostics')
    assert diagnostics and {s.name for s in diagnostics[-1].status} >= {
        'adaptive_offload: /camera/image_raw rate'}
    assert len(_messages(tmp_path / 'out', '/camera/ground_truth')) == 300


def test_frames_are_detected_with_the_start_up_heap_frozen(tmp_path: Path) -> None:
    # A full collection of the start-up heap stops every thread for up to 0.2 s: long enough
    # for the edge worker to lose frames at 10 fps (a hedged replay under an outage did).
    write_sample_bag(tmp_path / 'in', SampleSpec(frames=5, fps=10, width=64, height=48))
    frozen: list[int] = []

    class Recording(FakeBackend):
        def infer(self, *args: Any, **kwargs: Any) -> Any:
            frozen.append(gc.get_freeze_count())
            return super().infer(*args, **kwargs)

    _replay(tmp_path / 'in', tmp_path / 'out', lambda name, options: Recording())
    assert len(frozen) >= 5 and min(frozen[-5:]) > 0  # the first may be the warm-up
    assert gc.get_freeze_count() == 0


def test_max_frames_and_real_time_pacing_without_sleeping(
        tmp_path: Path, fake_backend_factory: Callable[..., Any]) -> None:
    write_sample_bag(tmp_path / 'in', SampleSpec(frames=20, fps=10, width=64, height=48))
    slept: list[float] = []

    def clock() -> int:  # real time plus the time the player 'slept'
        return time.monotonic_ns() + int(sum(slept) * 1e9)

    result = Replay(ReplayOptions(bag=tmp_path / 'in', out=tmp_path / 'out', rate=2.0,
                                  max_frames=12, overrides=EDGE_ONLY),
                    backend_factory=fake_backend_factory, clock=clock, sleep=slept.append).run()
    assert len(result.records) == 12
    # 12 frames 100 ms apart at rate 2: the player waits 50 ms before each after the first
    # (their ground truth, at the same times, is never ahead of the clock)
    assert len(slept) == 11 and sum(slept) == pytest.approx(0.55, abs=0.05)


def test_the_main_loop_sleeps_until_an_event_comes_or_a_period_is_due(
        tmp_path: Path) -> None:
    write_sample_bag(tmp_path / 'in', SampleSpec(frames=10, width=64, height=48))
    runner = Replay(ReplayOptions(bag=tmp_path / 'in', out=tmp_path / 'out', rate=0.0,
                                  overrides=EDGE_ONLY),
                    backend_factory=lambda name, options: FakeBackend(lambda: time.sleep(0.1)))
    polls: list[int] = []
    poll = runner.health.poll
    runner.health.poll = lambda now: polls.append(now) or poll(now)  # type: ignore[method-assign]
    result = runner.run()
    assert result.summary['results'] == 10 and result.summary['drops'] == {}
    # Polled every 5 ms, the checks would run some 20 times a frame; a frame's five events (two
    # copies, its arrival, its detections and report) wake the loop at most five times, and the
    # periods (plan, decision, diagnostics) a few times a second.
    assert len(polls) <= 8 * 10


def _defect_bag(path: Path) -> list[str]:
    """Write a raw-image bag with one frame per defect; return the expected drop reasons."""
    store = make_typestore('jazzy')
    types = message_types(store)
    img = np.full((24, 32, 3), 128, np.uint8)
    bag = OutputBag(path, store)
    bag.add_topic('/camera/image_raw', RAW, qos('sensor'))
    expected: list[str] = []

    def put(stamp: int, msg: Any, reason: str) -> None:
        bag.write('/camera/image_raw', msg, stamp)
        expected.append(reason)

    put(10, frame_to_message(types, img, 10, 'cam', 'rgb8'), '')
    for stamp, encoding in ((20, '16UC1'), (30, 'yuv422')):
        msg = frame_to_message(types, img, stamp, 'cam', 'rgb8')
        msg.encoding = encoding
        put(stamp, msg, 'unsupported_encoding')
    short = frame_to_message(types, img, 40, 'cam', 'rgb8')
    short.data = short.data[:-7]
    put(40, short, 'size_mismatch')
    put(50, types.Image(header=header(types, 50, 'cam'), height=0, width=0, encoding='rgb8',
                        is_bigendian=0, step=0, data=np.zeros(0, np.uint8)), 'empty_image')
    put(60, frame_to_message(types, img, 60, 'cam', 'bgr8'), '')
    put(61, frame_to_message(types, img, 60, 'cam', 'bgr8'), 'duplicate_stamp')
    put(62, frame_to_message(types, img, 55, 'cam', 'bgr8'), 'out_of_order_stamp')
    bag.write_raw('/camera/image_raw', b'\x00\x01\x00\x00garbage', 63)
    expected.append('deserialize_error')
    put(70, frame_to_message(types, img, 70, 'cam', 'mono8'), '')
    bag.close()
    return expected


def test_every_bad_raw_frame_becomes_an_explicit_drop(
        tmp_path: Path, fake_backend_factory: Callable[..., Any]) -> None:
    expected = _defect_bag(tmp_path / 'in')
    result = _replay(tmp_path / 'in', tmp_path / 'out', fake_backend_factory)
    got = [r.drop_reason.split(':', 1)[0] for r in result.records]
    assert got == expected
    assert result.summary['results'] == 3


def test_bad_compressed_frames_become_explicit_drops(
        tmp_path: Path, fake_backend_factory: Callable[..., Any]) -> None:
    store = make_typestore('jazzy')
    types = message_types(store)
    img = np.random.default_rng(0).integers(0, 255, (24, 32, 3), np.uint8)
    jpeg = encode_image(img, 'jpeg', 80)
    frames = [('jpeg', jpeg, ''), ('jpeg', jpeg[:len(jpeg) // 2], 'truncated_image'),
              ('png', b'\x89PNG\r\n\x1a\nnot really', 'decode_failed'),
              ('jpeg', b'', 'empty_image'), ('bgr8; compressedDepth', jpeg,
                                             'unsupported_encoding'),
              ('png', encode_image(img, 'png'), '')]
    bag = OutputBag(tmp_path / 'in', store)
    topic = '/camera/image_raw/compressed'
    bag.add_topic(topic, COMPRESSED, qos('sensor'))
    for i, (fmt, data, _) in enumerate(frames):
        bag.write(topic, types.CompressedImage(header=header(types, i + 1, 'cam'), format=fmt,
                                               data=np.frombuffer(data, np.uint8)), i + 1)
    bag.close()
    result = _replay(tmp_path / 'in', tmp_path / 'out', fake_backend_factory)
    assert [r.drop_reason.split(':', 1)[0] for r in result.records] == [f[2] for f in frames]


def test_unusable_bags_are_clear_errors(tmp_path: Path,
                                        fake_backend_factory: Callable[..., Any]) -> None:
    store = make_typestore('jazzy')
    empty = OutputBag(tmp_path / 'empty', store)
    empty.add_topic('/camera/image_raw', RAW)
    empty.close()
    no_image = OutputBag(tmp_path / 'noimg', store)
    no_image.add_topic('/chatter', 'std_msgs/msg/String')
    no_image.write('/chatter', message_types(store).String(data='hi'), 1)
    no_image.close()
    (tmp_path / 'plain').mkdir()
    (tmp_path / 'plain' / 'notes.txt').write_text('not a bag')
    cases = [('empty', 'no messages'), ('noimg', 'no image topics'),
             ('plain', 'not a readable rosbag2 bag'), ('missing', 'no such bag')]
    for name, message in cases:
        with pytest.raises(BagError, match=message):
            _replay(tmp_path / name, tmp_path / f'out-{name}', fake_backend_factory)
    write_sample_bag(tmp_path / 'ok', SampleSpec(frames=2, width=32, height=24))
    with pytest.raises(BagError, match='no image topic'):
        _replay(tmp_path / 'ok', tmp_path / 'o1', fake_backend_factory, topic='/nope')
    (tmp_path / 'exists').mkdir()
    with pytest.raises(BagError, match='already exists'):
        _replay(tmp_path / 'ok', tmp_path / 'exists', fake_backend_factory)
    with pytest.raises(BackendError, match='embedded cloud service: unknown architecture'):
        _replay(tmp_path / 'ok', tmp_path / 'o2', fake_backend_factory,
                overrides={'offload_manager': {'policy': 'cloud-only'}},
                service=ServiceConfig(arch='resnet-imaginary'))
    assert not (tmp_path / 'o2').exists()  # nothing written for a run that never started


def test_replay_with_real_ultralytics_model(tmp_path: Path, yolo_config_dir: str) -> None:
    """The real backend (random-weight yolov8n) through the whole graph, offline."""
    write_sample_bag(tmp_path / 'in', SampleSpec(frames=8, width=160, height=96,
                                                 encoding='jpeg'))
    from edge_inference.backends import create_backend

    result = _replay(tmp_path / 'in', tmp_path / 'out', create_backend, overrides={
        'edge_inference': {'model': 'yolov8n.yaml', 'imgsz': 160,
                           'ultralytics_config_dir': yolo_config_dir},
        'offload_manager': {'edge_imgsz': 160}})
    assert len(result.records) == 8 and result.summary['results'] == 8
    report = json.loads(_messages(tmp_path / 'out', '/edge/telemetry')[0].data)
    assert report['model'] == 'yolov8n' and report['status'] == 'ok' and report['imgsz'] == 160


def test_replay_measures_energy_from_the_bags_battery_state(
        tmp_path: Path, fake_backend_factory: Callable[..., Any]) -> None:
    """A 12 V battery at 1.5 A (18 W) and frames 100 ms apart: about 1.8 J a frame, measured.

    Real time (2 s): the samples are read on the replay clock as they are played.
    """
    write_sample_bag(tmp_path / 'in', SampleSpec(frames=20, fps=10, width=64, height=48,
                                                 battery_hz=4))
    result = _replay(tmp_path / 'in', tmp_path / 'out', fake_backend_factory, rate=1.0,
                     overrides={'offload_manager': {'policy': 'edge-only',
                                                    'energy_reader': 'battery'}})
    assert len(result.records) == 20
    assert not result.records[0].energy_measured  # the first reading starts the interval
    measured = [r.energy_j for r in result.records if r.energy_measured]
    assert len(measured) >= 17
    assert sum(measured) / len(measured) == pytest.approx(1.8, rel=0.15)
    assert result.summary['energy_measured']
    assert len(_messages(tmp_path / 'out', '/battery_state')) == 8


def test_without_a_battery_reader_the_records_stay_modelled(
        tmp_path: Path, fake_backend_factory: Callable[..., Any]) -> None:
    write_sample_bag(tmp_path / 'in', SampleSpec(frames=5, fps=10, width=64, height=48,
                                                 battery_hz=4))
    result = _replay(tmp_path / 'in', tmp_path / 'out', fake_backend_factory,
                     overrides={'offload_manager': {'policy': 'edge-only'}})
    assert result.records and not any(r.energy_measured for r in result.records)


def _frames_in_bag(bag: Path) -> int:
    assert (bag / 'metadata.yaml').exists()  # finalised, not just flushed
    return len(_messages(bag, '/offload/frames'))


def test_stop_mid_run_ends_promptly_with_a_finalised_bag_of_the_frames_so_far(
        tmp_path: Path, fake_backend_factory: Callable[..., Any]) -> None:
    write_sample_bag(tmp_path / 'in', SampleSpec(frames=50, fps=10, width=64, height=48))
    slept: list[float] = []
    replays: list[Replay] = []
    at_stop: list[int] = []

    def sleep(seconds: float) -> None:  # the player's pacing; stops the run after ~1 s
        slept.append(seconds)
        if sum(slept) >= 1.0 and not at_stop:
            at_stop.append(len(slept))
            replays[0].stop()

    def clock() -> int:
        return time.monotonic_ns() + int(sum(slept) * 1e9)

    replay = Replay(ReplayOptions(bag=tmp_path / 'in', out=tmp_path / 'out', rate=1.0,
                                  overrides=EDGE_ONLY),
                    backend_factory=fake_backend_factory, clock=clock, sleep=sleep)
    replays.append(replay)
    result = replay.run()
    assert result.interrupted
    assert len(slept) == at_stop[0]  # not one more wait after the stop
    # ~10 frames: 1 s of pacing, plus what real time (in the clock) let through on a busy host
    assert 9 <= len(result.records) < 50 and result.summary['frames_lost'] == 0
    assert _frames_in_bag(tmp_path / 'out') == len(result.records)
    replay.stop()  # idempotent, harmless after the run


def test_stop_before_run_writes_an_empty_finalised_bag(
        tmp_path: Path, fake_backend_factory: Callable[..., Any]) -> None:
    write_sample_bag(tmp_path / 'in', SampleSpec(frames=5, width=32, height=24))
    replay = Replay(ReplayOptions(bag=tmp_path / 'in', out=tmp_path / 'out', rate=0.0,
                                  overrides=EDGE_ONLY), backend_factory=fake_backend_factory)
    replay.stop()
    result = replay.run()
    assert result.interrupted and result.records == [] and result.summary['frames'] == 0
    assert _frames_in_bag(tmp_path / 'out') == 0


class _HeldBackend(FakeBackend):
    """A detector that holds every frame until released (a slow model, without sleeping)."""

    def __init__(self) -> None:
        super().__init__()
        self.entered = threading.Event()
        self.release = threading.Event()
        self.hold = False  # not the warm-up inference of the constructor

    def infer(self, *args: Any) -> Any:
        if self.hold:
            self.entered.set()
            assert self.release.wait(10)
        return super().infer(*args)


def test_stop_while_the_player_waits_for_a_busy_worker(tmp_path: Path) -> None:
    write_sample_bag(tmp_path / 'in', SampleSpec(frames=30, width=32, height=24))
    backend = _HeldBackend()
    replay = Replay(ReplayOptions(bag=tmp_path / 'in', out=tmp_path / 'out', rate=0.0,
                                  overrides=EDGE_ONLY),
                    backend_factory=lambda name, options: backend)
    backend.hold = True
    results: list[Any] = []
    runner = threading.Thread(target=lambda: results.append(replay.run()))
    runner.start()
    assert backend.entered.wait(10)
    replay.stop()  # the player is (or soon is) blocked on the held worker
    backend.release.set()
    runner.join(10)
    assert not runner.is_alive()
    result = results[0]
    assert result.interrupted and 1 <= len(result.records) <= 2
    assert result.summary['frames_lost'] == 0
    assert _frames_in_bag(tmp_path / 'out') == len(result.records)


def test_an_exception_in_the_loop_stops_the_player_before_its_bag_is_closed(
        sample_bag_300: Path, tmp_path: Path, fake_backend_factory: Callable[..., Any],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A KeyboardInterrupt without the CLI's handler: no 'seek of closed file' in the player."""
    thread_errors: list[Any] = []
    monkeypatch.setattr(threading, 'excepthook', thread_errors.append)
    frames: list[int] = []
    handle = Replay._handle

    def interrupted(self: Replay, out: OutputBag, kind: str, payload: Any) -> bool:
        frames.append(kind == 'frame')
        if sum(frames) == 20:  # Ctrl-C in the main thread while the player reads on
            raise KeyboardInterrupt
        return handle(self, out, kind, payload)

    monkeypatch.setattr(Replay, '_handle', interrupted)
    replay = Replay(ReplayOptions(bag=sample_bag_300, out=tmp_path / 'out', rate=0.0,
                                  overrides=EDGE_ONLY), backend_factory=fake_backend_factory)
    with pytest.raises(KeyboardInterrupt):
        replay.run()
    assert not [t for t in threading.enumerate() if t.name == 'player']
    assert thread_errors == []


def test_the_summary_tracks_the_edge_accuracy_estimate_against_the_measured_map(
        tmp_path: Path, fake_backend_factory: Callable[..., Any]) -> None:
    """Predictive with the embedded service (random weights): the estimate is on the records."""
    from offload_runtime.accuracy_tracking import TrackingSettings
    from offload_runtime.bagio import InputBag
    from offload_runtime.summary import format_summary

    write_sample_bag(tmp_path / 'in', SampleSpec(frames=40, fps=10, width=128, height=96,
                                                 difficulty='easy:0-2,hard:2-4'))
    settings = TrackingSettings(window_s=1.0, step_s=0.5)
    result = _replay(tmp_path / 'in', tmp_path / 'out', fake_backend_factory, tracking=settings,
                     overrides={'offload_manager': {'policy': 'predictive',
                                                    'deadline_ms': 2000.0}},
                     service=ServiceConfig(arch='fasterrcnn_mobilenet_v3_large_320_fpn',
                                           threads=1))
    tracking = result.summary['accuracy_tracking']
    assert tracking['changes_from'] == 'timeline' and tracking['settings']['window_s'] == 1.0
    [change] = tracking['changes']
    assert (change['t_s'], change['label']) == (2.0, 'easy -> hard')
    assert [w['start_s'] for w in tracking['windows']] == [0.5 * k for k in range(7)]
    assert all(w['edge_frames'] == 10 and w['measured'] is not None
               for w in tracking['windows'])
    assert all(r.edge_map_estimate is not None for r in result.records)
    assert all(w['estimate'] is not None for w in tracking['windows'])
    assert 'edge mAP estimate' in format_summary(result.summary)
    with InputBag(tmp_path / 'out') as out:  # the output bag keeps the timeline
        assert out.custom_data['adaptive_offload.difficulty'] == 'easy:0-2,hard:2-4'
    # A fixed policy keeps no estimate: the windows say so, measured all the same.
    fixed = _replay(tmp_path / 'in', tmp_path / 'out2', fake_backend_factory, tracking=settings)
    windows = fixed.summary['accuracy_tracking']['windows']
    assert windows and all(w['estimate'] is None and w['measured'] is not None
                           for w in windows)
    assert fixed.summary['accuracy_tracking']['mae'] is None


def test_every_output_topic_lies_on_the_inputs_timeline(
        tmp_path: Path, fake_backend_factory: Callable[..., Any]) -> None:
    write_sample_bag(tmp_path / 'in', SampleSpec(frames=20, fps=10))
    _replay(tmp_path / 'in', tmp_path / 'out', fake_backend_factory)
    with Reader(tmp_path / 'in') as source:
        start, end = source.start_time, source.end_time
    with Reader(tmp_path / 'out') as reader:
        spans: dict[str, list[int]] = {}
        for conn, stamp, _ in reader.messages():
            span = spans.setdefault(conn.topic, [stamp, stamp])
            span[0], span[1] = min(span[0], stamp), max(span[1], stamp)
        assert reader.start_time == start
        # The run's tail after the last frame is its processing time: far under a second here.
        assert reader.end_time - end < 1_000_000_000
    assert {'/edge/label_info', '/offload/decision', '/diagnostics'} <= set(spans)
    for topic, (first, last) in spans.items():
        assert start <= first <= last < end + 1_000_000_000, topic


def test_the_long_steps_are_told_one_line_each(
        tmp_path: Path, fake_backend_factory: Callable[..., Any]) -> None:
    write_sample_bag(tmp_path / 'in', SampleSpec(frames=5, fps=10, width=64, height=48))
    lines: list[str] = []
    Replay(ReplayOptions(bag=tmp_path / 'in', out=tmp_path / 'out', rate=0.0, max_frames=3,
                         overrides=EDGE_ONLY),
           backend_factory=fake_backend_factory, status=lines.append).run()
    assert len(lines) == 2 and lines[0].startswith('loading the edge model')
    assert lines[1] == f'playing 3 frames of {tmp_path / "in"} as fast as the graph takes them'
