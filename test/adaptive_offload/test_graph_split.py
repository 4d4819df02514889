"""The graph of a split edge detector: a head on the robot, a tail on a Pi."""

from __future__ import annotations

from adaptive_offload import graph
from adaptive_offload.errors import ConfigError
from adaptive_offload.frame_worker import DecisionHolder, FrameWorker
from fault_injection.live import ObeyedFaults
import pytest

CAMERA = '/camera/image_raw'


def _split(obey_faults: bool = False) -> tuple[graph.NodeGraph, graph.NodeGraph]:
    head = graph.edge_inference(CAMERA, True, 'robot', obey_faults=obey_faults,
                                split_role='head')
    tail = graph.edge_inference(CAMERA, True, 'pi', obey_faults=obey_faults, split_role='tail',
                                split_topic='/robot/edge/split')
    return head, tail


def test_a_head_publishes_tensors_in_its_namespace_and_detections_of_frames_run_whole() -> None:
    head, _ = _split()
    assert [p.name for p in head.inputs] == ['camera', 'decision']
    assert head.inputs[0].topic == f'{CAMERA}/compressed'
    assert [p.name for p in head.outputs] == ['split', 'detections', 'telemetry', 'label_info']
    assert head.output('detections').resolved(head.namespace) == '/robot/edge/detections'
    split = head.output('split')
    assert split.resolved(head.namespace) == '/robot/edge/split'
    assert (split.msg_type, split.kind, split.qos) == (graph.COMPRESSED_IMAGE, 'split_frame',
                                                       'newest_frame')
    assert head.output('telemetry').resolved(head.namespace) == '/robot/edge/telemetry'


def test_a_tail_takes_the_heads_tensors_and_publishes_as_its_own_source() -> None:
    head, tail = _split()
    assert [(p.name, p.topic, p.msg_type, p.qos, p.kind, p.handler) for p in tail.inputs] == [
        ('split', '/robot/edge/split', graph.COMPRESSED_IMAGE, 'newest_frame', 'image',
         'on_image')]
    assert [p.name for p in tail.outputs] == ['detections', 'telemetry', 'label_info']
    manager = graph.offload_manager(CAMERA, True, ['robot', 'pi'])
    subs = graph.subscribers([head, tail, manager])
    assert [n for n, _ in subs['/robot/edge/split']] == ['edge_inference']
    assert [(n, p.source) for n, p in subs['/pi/edge/detections']] == [('offload_manager', 'pi')]
    assert [(n, p.source) for n, p in subs['/robot/edge/telemetry']] == [
        ('offload_manager', 'robot')]


def test_every_split_input_is_published_and_every_port_is_known() -> None:
    head, tail = _split(obey_faults=True)
    nodes = [head, tail, graph.cloud_bridge(CAMERA, True),
             graph.offload_manager(CAMERA, True, ['robot', 'pi'], obey_faults=True),
             graph.health_monitor([CAMERA], [graph.IMAGE], ('robot', 'pi'))]
    published = {p.resolved(n.namespace) for n in nodes for p in n.outputs}
    unpublished = {port.resolved(node.namespace) for node in nodes for port in node.inputs} - \
        published - {f'{CAMERA}/compressed', CAMERA}
    # A manager listing the head's source too gets its reports and its whole frames' answers.
    assert unpublished == set()
    for node in (head, tail):
        for port in node.inputs:
            assert port.kind in graph.RECORD_KINDS and port.qos in graph.QOS
            assert any(callable(getattr(cls, port.handler, None))
                       for cls in (FrameWorker, DecisionHolder, ObeyedFaults)), port
        assert all(p.kind in graph.OUTPUT_KINDS and p.qos in graph.QOS for p in node.outputs)
        assert node.inputs[-1].name == 'faults'


def test_the_whole_detector_is_unchanged_and_an_unknown_role_is_refused() -> None:
    assert graph.edge_inference(CAMERA, False, 'pi', split_role='') == \
        graph.edge_inference(CAMERA, False, 'pi')
    with pytest.raises(ConfigError, match="split_role 'middle'"):
        graph.edge_inference(CAMERA, False, 'pi', split_role='middle')
