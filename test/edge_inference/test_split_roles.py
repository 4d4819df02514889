"""The split roles on the shipped YOLO: head -> CompressedImage -> tail = the unsplit backend.

In fp32 the tail's detections are the unsplit backend's bit for bit (same machine, same
ultralytics network). fp16 and int8 keep every detection and its class within the tolerances
below (measured on these scenes at k = 6, 12, 22, 320 and 640 px: fp16 <= 0.0025 px and 1.4e-4
in score; int8 <= 0.076 px and 0.0055 in score).
"""

from __future__ import annotations

import copy
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Iterator

from adaptive_offload import graph
from adaptive_offload.conversions import frame_to_message, MessageTypes
from adaptive_offload.datatypes import Decision, Route
from adaptive_offload.errors import ConfigError
from adaptive_offload.frame_worker import DecisionHolder, FrameWorker, ResultEmitter
from adaptive_offload.graph_codec import encode_output
from adaptive_offload.split_frame import read_split_frame, split_frame, SplitFrame
from adaptive_offload.split_wire import SplitTensors
from edge_inference.backends import create_backend
from edge_inference.detector import BackendOptions
from edge_inference.inference import EdgeConfig, EdgeInference, launch_argument
from edge_inference.split_message import DECISION_SEQ, SPLIT, WEIGHTS
from edge_inference.split_model import SplitModel
from edge_inference.split_roles import build_core, SplitHead, SplitTail
from edge_inference.ultralytics_backend import prepare_offline
import numpy as np
from offload_runtime.sample_bag import SampleSpec, Scene
import pytest

MODEL = str(Path(__file__).resolve().parents[2] / 'models' / 'yolov8n-shapes.pt')
POINTS = (6, 22)  # the crossing of 6 is two tensors, of 22 Detect's three scales
TOLERANCES = {'fp16+zstd': (0.02, 1e-3), 'int8+lz4': (0.5, 0.02)}  # box px, score
HEAD_TOPIC = '/robot/edge/split'


@pytest.fixture(scope='module')
def yolo(yolo_config_dir: str) -> Iterator[SimpleNamespace]:
    """Load the unsplit backend and the split model at each of :data:`POINTS`, on one thread."""
    import torch

    prepare_offline(yolo_config_dir)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # on a shared 2-core machine, 2 threads run far slower
    options = BackendOptions(MODEL, 'cpu', yolo_config_dir)
    yield SimpleNamespace(backend=create_backend('ultralytics', options),
                          config_dir=yolo_config_dir,
                          models={k: SplitModel.load(options, k) for k in POINTS})
    torch.set_num_threads(threads)


def config(yolo: SimpleNamespace, role: str, k: int, **values: Any) -> EdgeConfig:
    """Return the parameters of a head (source robot) or a tail (source pi) at ``k``."""
    return EdgeConfig.from_params({
        'model': MODEL, 'ultralytics_config_dir': yolo.config_dir, 'split_role': role,
        'split_point': k, 'split_topic': HEAD_TOPIC if role == 'tail' else 'edge/split',
        'source_name': 'robot' if role == 'head' else 'pi', **values})


def scene(seed: int) -> np.ndarray:
    """Render a 640x480 BGR frame with objects of the model's classes."""
    image, _ = Scene(SampleSpec(width=640, height=480, seed=seed)).render(0.3)
    return image


def head_frame(yolo: SimpleNamespace, types: MessageTypes, k: int, image: np.ndarray,
               decision: Decision, **values: Any) -> tuple[Any, Any]:
    """Run a head on ``image``; return (the message it published or None, its report)."""
    sent: list[SplitFrame] = []
    head = SplitHead(config(yolo, 'head', k, **values), yolo.models[k], sent.append)
    return forward(head, sent, types, image, decision)


def forward(head: SplitHead, sent: list[SplitFrame], types: MessageTypes, image: np.ndarray,
            decision: Decision) -> tuple[Any, Any]:
    """Run ``head`` (sending to ``sent``) on ``image``; return (its message or None, report)."""
    before = len(sent)
    msg = frame_to_message(types, image, 5_000_000_007, 'cam', 'bgr8')
    dets, report = head.process(msg, decision)
    assert dets is None and len(sent) - before <= 1
    port = graph.edge_inference('', False, 'robot', split_role='head').output('split')
    return (encode_output(types, port, sent[-1]) if len(sent) > before else None), report


def decision(imgsz: int = 320, **changes: Any) -> Decision:
    """Return an edge decision for the shipped model."""
    return replace(Decision.safe_default('yolov8n-shapes', imgsz, 250.0), seq=4, **changes)


@pytest.mark.parametrize('imgsz', [320, 640])
@pytest.mark.parametrize('k', POINTS)
def test_fp32_head_then_tail_gives_the_unsplit_detections_bit_for_bit(
        yolo: SimpleNamespace, types: MessageTypes, k: int, imgsz: int) -> None:
    tail = SplitTail(config(yolo, 'tail', k), yolo.models[k])
    for seed in (1, 2):
        image = scene(seed)
        expected = yolo.backend.infer(image, imgsz, 0.25, 0.7, None, 100)
        assert expected  # the scene has objects the model sees
        msg, head_report = head_frame(yolo, types, k, image, decision(imgsz),
                                      split_encoding='fp32+zstd')
        dets, report = tail.process(msg, Decision.safe_default())
        assert report.status == 'ok', report.reason
        assert dets is not None and dets.detections == expected
        assert (dets.source, dets.stamp_ns, dets.frame_id) == ('pi', 5_000_000_007, 'cam')
        assert (report.source, report.imgsz, report.decision_seq) == ('pi', imgsz, 4)
        assert report.detections == len(expected) and report.inference_ms > 0
        assert head_report.bytes_sent == len(bytes(msg.data))
        assert report.split == head_report.split == f'yolov8n-shapes@{imgsz}:{k}/end:fp32+zstd'


@pytest.mark.parametrize('imgsz', [320, 640])
def test_a_head_at_point_0_answers_a_frame_whole_as_the_unsplit_detector_would(
        yolo: SimpleNamespace, types: MessageTypes, imgsz: int) -> None:
    sent: list[SplitFrame] = []
    head = SplitHead(config(yolo, 'head', 0), yolo.models[6], sent.append)
    image = scene(2)
    msg = frame_to_message(types, image, 5_000_000_007, 'cam', 'bgr8')
    dets, report = head.process(msg, decision(imgsz))
    assert not sent and report.status == 'ok', report.reason
    assert dets is not None and dets.detections == \
        yolo.backend.infer(image, imgsz, 0.25, 0.7, None, 100)
    assert (dets.source, dets.stamp_ns, dets.model) == ('robot', 5_000_000_007, 'yolov8n-shapes')
    assert (report.split, report.split_role, report.imgsz) == ('', 'head', imgsz)
    assert report.detections == len(dets.detections) and report.inference_ms > 0
    # The manager's split of this model: forwarded, and the tail answers as ever.
    option = f'yolov8n-shapes@{imgsz}:6/end:fp16+zstd'  # options go lossy or not at all
    split_msg, forwarded = forward(head, sent, types, image, decision(imgsz, split=option))
    assert (forwarded.status, forwarded.split, forwarded.split_role) == \
        ('forwarded', option, 'head')
    tail_dets, answer = SplitTail(config(yolo, 'tail', 0), yolo.models[6]).process(
        split_msg, Decision.safe_default())
    assert tail_dets is not None and [d.class_name for d in tail_dets.detections] == \
        [d.class_name for d in dets.detections]
    assert (answer.split, answer.split_role) == (option, 'tail')


@pytest.mark.parametrize('imgsz', [320, 640])
def test_a_head_at_point_0_probes_the_decisions_split_every_nth_frame_it_answers(
        yolo: SimpleNamespace, types: MessageTypes, imgsz: int) -> None:
    sent: list[SplitFrame] = []
    head = SplitHead(config(yolo, 'head', 0), yolo.models[6], sent.append)
    tail = SplitTail(config(yolo, 'tail', 0), yolo.models[6])
    image = scene(2)
    expected = yolo.backend.infer(image, imgsz, 0.25, 0.7, None, 100)
    option = 'yolov8n-shapes@320:6/end:fp16+zstd'
    probing = decision(imgsz, split_probe=option, probe_every=3)
    msg = frame_to_message(types, image, 5_000_000_007, 'cam', 'bgr8')
    answers = [head.process(msg, probing) for _ in range(4)]
    # Frames 1 and 4 go on as probes; every frame is answered here, bit for bit the unsplit
    # detector's, at the decision's size (a probe at another size is a run of its own).
    assert [r.split_probe for _, r in answers] == [option, '', '', option]
    assert len(sent) == 2
    for dets, report in answers:
        assert report.status == 'ok' and report.reason == '' and report.split == ''
        assert dets is not None and dets.detections == expected and report.imgsz == imgsz
    probe = answers[0][1]
    port = graph.edge_inference('', False, 'robot', split_role='head').output('split')
    split_msg = encode_output(types, port, sent[0])
    assert probe.bytes_sent == len(bytes(split_msg.data)) and probe.encode_ms > 0
    assert answers[1][1].bytes_sent == 0 and answers[1][1].encode_ms == 0
    tail_dets, answer = tail.process(split_msg, Decision.safe_default())
    assert (answer.status, answer.split, answer.decision_seq) == ('ok', option, 4)
    assert tail_dets is not None and [d.class_name for d in tail_dets.detections] == \
        [d.class_name for d in yolo.backend.infer(image, 320, 0.25, 0.7, None, 100)]


@pytest.mark.parametrize('probe, note', [
    ('yolov8n-shapes@320:23/end:int8+zstd', "probe 'yolov8n-shapes@320:23/end:int8+zstd' not "
                                            'sent: split_option: '),
    ('yolov8s@320:4/end:int8+zstd', "probe split 'yolov8s@320:4/end:int8+zstd' is no split "
                                    'of yolov8n-shapes to end')])
def test_a_probe_the_head_cannot_send_leaves_the_frame_answered_and_says_why(
        yolo: SimpleNamespace, types: MessageTypes, probe: str, note: str) -> None:
    sent: list[SplitFrame] = []
    head = SplitHead(config(yolo, 'head', 0), yolo.models[6], sent.append)
    image = scene(1)
    msg = frame_to_message(types, image, 5_000_000_007, 'cam', 'bgr8')
    dets, report = head.process(msg, decision(320, split_probe=probe, probe_every=1))
    assert not sent and report.status == 'ok' and report.reason.startswith(note)
    assert dets is not None and dets.detections == \
        yolo.backend.infer(image, 320, 0.25, 0.7, None, 100)
    # Off the edge route, or on a split, the probe is not the head's business.
    _, cloud = head.process(msg, decision(320, split_probe=probe, probe_every=1,
                                          route=Route.CLOUD))
    assert cloud.split_probe == '' and not sent


@pytest.mark.parametrize('k', [0, 6])
def test_with_no_tail_listening_the_head_answers_split_frames_itself_and_sends_no_probe(
        yolo: SimpleNamespace, types: MessageTypes, k: int) -> None:
    """Sent while nobody subscribes (the tail not up, stopped, deactivated), frames are lost."""
    sent: list[SplitFrame] = []
    tail_up = [False]
    head = SplitHead(config(yolo, 'head', k), yolo.models[6], sent.append,
                     listening=lambda: tail_up[0])
    image = scene(1)
    expected = yolo.backend.infer(image, 320, 0.25, 0.7, None, 100)
    msg = frame_to_message(types, image, 5_000_000_007, 'cam', 'bgr8')
    option = 'yolov8n-shapes@320:6/end:int8+zstd'
    dets, report = head.process(msg, decision(320, split=option))
    assert not sent and report.status == 'ok' and report.split_unsent == option
    assert report.split == '' and 'no tail subscribes to the split topic' in report.reason
    assert dets is not None and dets.detections == expected  # the unsplit detector's boxes
    dets, report = head.process(msg, decision(320, split_probe=option, probe_every=1))
    assert not sent and report.status == 'ok' and report.split_probe == ''
    assert dets is not None and dets.detections == expected
    if k == 0:  # on its own model with the split to probe: answered, the probe kept back
        assert report.reason.startswith(f"probe '{option}' not sent: no tail subscribes")
    else:  # a head at a fixed k splits every frame: at its parameters' option, unsent
        assert report.split_unsent == 'yolov8n-shapes@320:6/end:fp16+zstd'
    tail_up[0] = True  # the tail subscribes: split frames go again
    _, forwarded = forward(head, sent, types, image, decision(320, split=option))
    assert forwarded.status == 'forwarded' and forwarded.split_unsent == '' and len(sent) == 1


@pytest.mark.parametrize('encoding', sorted(TOLERANCES))
@pytest.mark.parametrize('k', POINTS)
def test_lossy_encodings_keep_every_detection_within_tolerance(
        yolo: SimpleNamespace, types: MessageTypes, k: int, encoding: str) -> None:
    tail = SplitTail(config(yolo, 'tail', k), yolo.models[k])
    box_px, score = TOLERANCES[encoding]
    for imgsz in (320, 640):
        image = scene(1)
        expected = yolo.backend.infer(image, imgsz, 0.25, 0.7, None, 100)
        msg, _ = head_frame(yolo, types, k, image, decision(imgsz), split_encoding=encoding)
        dets, report = tail.process(msg, Decision.safe_default())
        assert dets is not None, report.reason
        assert [d.class_name for d in dets.detections] == [d.class_name for d in expected]
        for got, want in zip(dets.detections, expected):
            assert max(abs(got.x1 - want.x1), abs(got.y1 - want.y1), abs(got.x2 - want.x2),
                       abs(got.y2 - want.y2)) <= box_px
            assert abs(got.score - want.score) <= score


def test_the_head_reports_its_time_and_bytes_and_sends_the_frames_header(
        yolo: SimpleNamespace, types: MessageTypes) -> None:
    msg, report = head_frame(yolo, types, 6, scene(1), decision(320, edge_model='other'))
    assert msg.header.frame_id == 'cam' and msg.header.stamp.nanosec == 7
    assert msg.format.startswith('adaptive_offload/yolo-split; header_length=')
    request = read_split_frame(msg.format, msg.data, 1 << 26)
    params = request.parameters
    assert params['model'] == 'yolov8n-shapes' and params['imgsz'] == 320
    assert params[WEIGHTS] == yolo.models[6].weights_sha256 and params[DECISION_SEQ] == 4
    assert (params['letterbox_scale'], params['letterbox_pad']) == ('0.5,0.5', '8,0')
    assert request.split.padded_size == (256, 320)
    assert request.split.image_sizes == ((240, 320),)
    assert request.split.original_sizes == ((480, 640),)
    assert [(t.name, t.datatype) for t in request.split.tensors] == [('layer_4', 'FP16'),
                                                                     ('layer_5', 'FP16')]
    assert params[SPLIT] == 'yolov8n-shapes@320:6/end:fp16+zstd' == report.split
    assert (report.status, report.source, report.detections) == ('forwarded', 'robot', 0)
    assert report.inference_ms > 0 and report.encode_ms > 0
    assert report.total_ms >= report.inference_ms + report.encode_ms
    assert report.bytes_sent == len(bytes(msg.data)) and report.imgsz == 320
    assert report.reason == 'model other not split here; used yolov8n-shapes'


def test_on_cuda_the_layers_time_includes_waiting_for_the_device(
        yolo: SimpleNamespace, types: MessageTypes, monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    events: list[str] = []
    monkeypatch.setattr(torch.cuda, 'synchronize', lambda device=None: events.append(
        f'sync {device}'))
    model = copy.copy(yolo.models[6])
    model._device = torch.device('cuda', 0)
    model.letterbox = yolo.models[6].letterbox  # type: ignore[method-assign]  # on the CPU

    def clock() -> int:
        events.append('clock')
        return len(events)

    head = SplitHead(config(yolo, 'head', 6), model, [].append, clock)
    head.process(frame_to_message(types, scene(1), 1, 'cam', 'bgr8'), decision())
    # start, head start, [layers, wait], encode start, encode end, total
    assert events == ['clock', 'clock', 'sync cuda:0', 'clock', 'clock', 'clock']
    events.clear()
    crossing = yolo.models[6].head(yolo.models[6].letterbox(scene(1), 320)[0])
    model.tail(crossing)
    assert events == ['sync cuda:0']
    yolo.models[6].tail(crossing)  # on the CPU nothing waits
    assert events == ['sync cuda:0']


def test_the_head_obeys_the_route_and_its_probes(yolo: SimpleNamespace,
                                                 types: MessageTypes) -> None:
    image = scene(1)
    msg, report = head_frame(yolo, types, 6, image, decision(route=Route.CLOUD))
    assert msg is None and (report.status, report.reason) == ('skipped', 'route=cloud')
    msg, report = head_frame(yolo, types, 6, image, decision(route=Route.CLOUD, probe_every=1))
    assert msg is not None and report.status == 'forwarded'


def _reframed(msg: Any, types: MessageTypes, point: int | None = None,
              **params: Any) -> Any:
    """Rebuild a head's message with other parameters or another split point."""
    request = read_split_frame(msg.format, msg.data, 1 << 26)
    split: SplitTensors = request.split
    if point is not None:
        split = replace(split, point=point)
    frame = split_frame(5, 'cam', split, {**request.parameters, **params})
    port = graph.edge_inference('', False, 'robot', split_role='head').output('split')
    return encode_output(types, port, frame)


def _fails(tail: SplitTail, msg: Any) -> str:
    dets, report = tail.process(msg, Decision.safe_default())
    assert dets is None and report.status == 'failed' and report.source == 'pi'
    return report.reason


def test_the_tail_refuses_what_it_cannot_run_and_says_why(
        yolo: SimpleNamespace, types: MessageTypes) -> None:
    tail = SplitTail(config(yolo, 'tail', 6), yolo.models[6])
    msg, _ = head_frame(yolo, types, 6, scene(1), decision())
    assert _fails(tail, _reframed(msg, types, weights_sha256='ab' * 32)).startswith(
        "split_refused: the head runs weights 'abababababababab'...")
    assert _fails(tail, _reframed(msg, types, point=5)) == (
        'split_refused: the head splits at k=5, this tail at k=6: set the same split_point (or '
        '0 on the tail to follow the head)')
    truncated = replace(msg, data=msg.data[:-100])
    assert _fails(tail, truncated).startswith('tensor_truncated')
    assert _fails(tail, replace(msg, format='jpeg')).startswith('split_format')
    assert _fails(tail, replace(msg, data=np.zeros(50, np.uint8))).startswith('split_request')
    assert _fails(tail, _padded(msg, types, (128, 160))).startswith(
        'split_request: tensor layer_4 of shape [1, 64, 32, 40]: an input of 128x160 gives '
        '[1, 64, 16, 20]')
    assert 'letterbox' in _fails(tail, _reframed(msg, types, letterbox_pad='300,0'))
    assert 'letterbox_scale' in _fails(tail, _reframed(msg, types, letterbox_scale='nan'))
    assert 'parameter imgsz' in _fails(tail, _reframed(msg, types, imgsz='big'))


def test_a_tail_at_point_0_runs_whatever_point_the_head_chose(
        yolo: SimpleNamespace, types: MessageTypes) -> None:
    follower = build_core(config(yolo, 'tail', 0), lambda frame: None)
    assert isinstance(follower, SplitTail)
    image = scene(2)
    expected = yolo.backend.infer(image, 320, 0.25, 0.7, None, 100)
    for k in POINTS + POINTS[:1]:  # the robot moves its cut, and back: the Pi changes nothing
        msg, _ = head_frame(yolo, types, k, image, decision(), split_encoding='fp32+zstd')
        dets, report = follower.process(msg, Decision.safe_default())
        assert report.status == 'ok', report.reason
        assert dets is not None and dets.detections == expected
    msg, _ = head_frame(yolo, types, 6, image, decision())
    assert _fails(follower, _reframed(msg, types, point=23)).startswith(
        'split_request: split point 23 invalid')


def test_the_head_runs_the_split_each_decision_names_and_a_following_tail_answers(
        yolo: SimpleNamespace, types: MessageTypes) -> None:
    sent: list[SplitFrame] = []
    head = SplitHead(config(yolo, 'head', 6), yolo.models[6], sent.append)
    tail = SplitTail(config(yolo, 'tail', 0), yolo.models[6])
    image = scene(1)
    expected = yolo.backend.infer(image, 320, 0.25, 0.7, None, 100)
    assert expected
    for option, point, datatype, codec, (box_px, score) in [
            ('yolov8n-shapes@320:2/end:int8+zstd', 2, 'INT8', 'zstd', TOLERANCES['int8+lz4']),
            ('yolov8n-shapes@320:4/end:fp16+lz4', 4, 'FP16', 'lz4', TOLERANCES['fp16+zstd'])]:
        # The decision's own size (640) gives way to the option's.
        msg, report = forward(head, sent, types, image, decision(640, split=option))
        assert msg is not None, report.reason
        assert (report.status, report.split, report.imgsz, report.reason) == (
            'forwarded', option, 320, '')
        assert report.inference_ms > 0 and report.encode_ms > 0
        assert report.bytes_sent == len(bytes(msg.data))
        request = read_split_frame(msg.format, msg.data, 1 << 26)
        assert (request.split.point, request.parameters[SPLIT]) == (point, option)
        assert {(t.datatype, t.compression) for t in request.split.tensors} == {
            (datatype, codec)}
        dets, answer = tail.process(msg, Decision.safe_default())
        assert (answer.status, answer.split, answer.decision_seq) == ('ok', option, 4)
        assert dets is not None
        assert [d.class_name for d in dets.detections] == [d.class_name for d in expected]
        for got, want in zip(dets.detections, expected):
            assert max(abs(got.x1 - want.x1), abs(got.y1 - want.y1), abs(got.x2 - want.x2),
                       abs(got.y2 - want.y2)) <= box_px
            assert abs(got.score - want.score) <= score


@pytest.mark.parametrize('option, note', [  # more cases: test_split_choice.py
    ('yolov8s@320:4/end:int8+zstd', "split 'yolov8s@320:4/end:int8+zstd' is no split of "
                                    'yolov8n-shapes to end; ran k=6'),
    ('nonsense', "split 'nonsense' unreadable; ran k=6")])
def test_a_split_the_head_cannot_follow_runs_its_parameters_and_says_so(
        yolo: SimpleNamespace, types: MessageTypes, option: str, note: str) -> None:
    msg, report = head_frame(yolo, types, 6, scene(1), decision(320, split=option))
    assert msg is not None and read_split_frame(msg.format, msg.data, 1 << 26).split.point == 6
    assert (report.status, report.reason) == ('forwarded', note)
    assert report.split == 'yolov8n-shapes@320:6/end:fp16+zstd'


@pytest.mark.parametrize('point', [0, 23])
def test_a_split_point_the_model_lacks_fails_the_frame_naming_the_valid_ones(
        yolo: SimpleNamespace, types: MessageTypes, point: int) -> None:
    option = f'yolov8n-shapes@320:{point}/end:int8+zstd'
    msg, report = head_frame(yolo, types, 6, scene(1), decision(320, split=option))
    assert msg is None and (report.status, report.split) == ('failed', '')
    assert report.reason == (f'split_option: {option}: split point {point} invalid: the model '
                             'has 23 layers, so k must be within 1..22')


def test_the_tail_refuses_a_split_name_that_is_not_short_text(
        yolo: SimpleNamespace, types: MessageTypes) -> None:
    tail = SplitTail(config(yolo, 'tail', 6), yolo.models[6])
    msg, _ = head_frame(yolo, types, 6, scene(1), decision())
    for bad in (7, None, 'x' * 257):
        assert _fails(tail, _reframed(msg, types, split=bad)).startswith(
            'split_request: parameter split must be text of at most 256 characters')
    # An older head's message names no option: the answer names none.
    request = read_split_frame(msg.format, msg.data, 1 << 26)
    params = {k: v for k, v in request.parameters.items() if k != SPLIT}
    port = graph.edge_inference('', False, 'robot', split_role='head').output('split')
    older = encode_output(types, port, split_frame(5, 'cam', request.split, params))
    dets, report = tail.process(older, Decision.safe_default())
    assert dets is not None and (report.status, report.split) == ('ok', '')


def _padded(msg: Any, types: MessageTypes, padded: tuple[int, int]) -> Any:
    """Rebuild a message claiming another input size than its tensors have."""
    request = read_split_frame(msg.format, msg.data, 1 << 26)
    image = (padded[0] - 16, padded[1])  # still room for the letterbox's 8 px top and bottom
    frame = split_frame(5, 'cam', replace(request.split, padded_size=padded,
                                          image_sizes=(image,)), request.parameters)
    port = graph.edge_inference('', False, 'robot', split_role='head').output('split')
    return encode_output(types, port, frame)


def test_the_tail_bounds_what_a_message_may_decode_to(
        yolo: SimpleNamespace, types: MessageTypes) -> None:
    msg, _ = head_frame(yolo, types, 6, scene(1), decision(640), split_encoding='int8+zstd')
    decoded = 4 * sum(np.prod(yolo.models[6].expected_shape(j, (480, 640))) for j in (4, 5))
    small = SplitTail(config(yolo, 'tail', 6, split_max_bytes=int(decoded) - 1),
                      yolo.models[6])
    assert _fails(small, msg).startswith('tensor_too_large: the tensors decode to')
    tiny = SplitTail(config(yolo, 'tail', 6, split_max_bytes=1024), yolo.models[6])
    assert _fails(tiny, msg).startswith('split_too_large')
    fits = SplitTail(config(yolo, 'tail', 6, split_max_bytes=int(decoded)), yolo.models[6])
    assert fits.process(msg, Decision.safe_default())[1].status == 'ok'


def test_random_bodies_fail_cleanly(yolo: SimpleNamespace, types: MessageTypes) -> None:
    tail = SplitTail(config(yolo, 'tail', 6), yolo.models[6])
    msg, _ = head_frame(yolo, types, 6, scene(1), decision())
    rng = np.random.default_rng(0)
    data = np.frombuffer(bytes(msg.data), np.uint8)
    for _ in range(30):
        noisy = data.copy()
        at = rng.integers(0, data.size, 8)
        noisy[at] = rng.integers(0, 256, 8, dtype=np.uint8)
        dets, report = tail.process(replace(msg, data=noisy), Decision.safe_default())
        assert report.status in ('ok', 'failed') and (dets is None) == (report.status != 'ok')


def test_a_tail_worker_emits_detections_and_telemetry(yolo: SimpleNamespace,
                                                      types: MessageTypes) -> None:
    tail = SplitTail(config(yolo, 'tail', 22), yolo.models[22])
    out: list[tuple[str, Any]] = []
    worker = FrameWorker(tail, DecisionHolder(tail.config.fallback_decision()),
                         ResultEmitter(lambda name, record: out.append((name, record))),
                         lambda: 0)
    msg, _ = head_frame(yolo, types, 22, scene(2), decision())
    worker.on_image(msg)
    assert worker.process_next(timeout=0)
    assert [name for name, _ in out] == ['detections', 'telemetry']
    assert out[0][1].detections and out[1][1].status == 'ok'
    assert tail.class_names() == yolo.backend.names


def test_live_parameters_reach_a_split_role(yolo: SimpleNamespace,
                                            types: MessageTypes) -> None:
    tail = SplitTail(config(yolo, 'tail', 6), yolo.models[6])
    msg, _ = head_frame(yolo, types, 6, scene(1), decision())
    everything = tail.process(msg, Decision.safe_default())[0]
    assert tail.reconfigure({'conf': 0.99}).conf == 0.99
    assert everything is not None and everything.detections
    assert tail.process(msg, Decision.safe_default())[0] == replace(everything, detections=())
    with pytest.raises(ConfigError, match='read on configure'):
        tail.reconfigure({'split_point': 7})


@pytest.mark.parametrize(('values', 'match'), [
    ({'split_role': 'middle'}, "split_role 'middle'"),
    ({'split_encoding': 'fp8+zstd'}, 'split_encoding'),
    ({'split_encoding': 'fp16'}, 'split_encoding'),
    ({'split_role': 'tail', 'split_point': 6}, 'must be absolute'),
    ({'split_role': 'head', 'split_point': 6, 'alt_models': 'a=b.pt'}, 'one ultralytics'),
    ({'split_role': 'head', 'split_point': 6, 'backend': 'onnx'}, 'one ultralytics'),
    ({'split_role': 'head', 'split_point': 6, 'publish_annotated': True}, 'draws nothing'),
])
def test_split_parameters_that_do_not_fit_are_config_errors(values: dict[str, Any],
                                                            match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        EdgeConfig.from_params(values)


def test_a_point_the_model_does_not_have_names_the_valid_ones(yolo: SimpleNamespace) -> None:
    with pytest.raises(ConfigError, match=r'yolov8n-shapes.pt: split point 23 invalid.*1\.\.22'):
        build_core(config(yolo, 'head', 23), lambda frame: None)


def test_the_role_picks_the_core(yolo: SimpleNamespace) -> None:
    assert isinstance(build_core(config(yolo, 'tail', 22), lambda frame: None), SplitTail)
    whole = build_core(config(yolo, '', 0), lambda frame: None)
    assert isinstance(whole, EdgeInference) and whole.class_names() == yolo.backend.names


@pytest.mark.parametrize('name, text, value', [
    ('split_point', '4', 4), ('split_point', ' 12 ', 12), ('split_role', 'tail', 'tail'),
    ('split_topic', '/robot/edge/split', '/robot/edge/split'), ('model', 'a.pt', 'a.pt')])
def test_launch_arguments_are_typed_as_their_parameters(name: str, text: str,
                                                        value: Any) -> None:
    got = launch_argument(name, text)
    assert got == value and type(got) is type(value)


@pytest.mark.parametrize('name, text, match', [
    ('split_point', 'abc', "launch argument split_point:='abc': expected an integer \\(k of"),
    ('split_point', '4.5', "split_point:='4.5': expected an integer"),
    ('split_point', '-1', "split_point:='-1': Parameter split_point out of range"),
    ('split_max_bytes', '1e9', "split_max_bytes:='1e9': expected an integer"),
    ('publish_annotated', 'maybe', 'expected true or false'),
    ('no_such', '1', 'launch argument no_such: not a scalar edge_inference parameter')])
def test_a_bad_launch_argument_is_one_clear_line_naming_it(name: str, text: str,
                                                           match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        launch_argument(name, text)


def test_edge_launch_types_its_arguments_through_the_parameters() -> None:
    # edge.launch.py imports launch, which this environment may lack: its source is read.
    source = (Path(__file__).resolve().parents[2] / 'launch' / 'edge.launch.py').read_text()
    assert 'from edge_inference.inference import launch_argument' in source
    assert 'launch_argument(name, value)' in source and 'int(' not in source
