"""The graph declaration: consistent ports, QoS, handlers that exist, topics that connect."""

from __future__ import annotations

from adaptive_offload import graph, topics
from adaptive_offload.errors import ConversionError
from adaptive_offload.frame_worker import DecisionHolder, FrameWorker
from adaptive_offload.graph_codec import decode_input, Diagnostics, encode_output, FrameHeader
from adaptive_offload.typestore import make_typestore, message_types
from fault_injection.live import ObeyedFaults, Rehearsal
from health_monitor.monitor import HealthMonitor
from offload_manager.manager import OffloadManager
import pytest


def _all(edge_sources: tuple[str, ...] = ('edge',), rehearse: bool = True
         ) -> list[graph.NodeGraph]:
    return [*(graph.edge_inference('/camera/image_raw', False, s, obey_faults=rehearse)
              for s in edge_sources),
            graph.cloud_bridge('/camera/image_raw', False),
            graph.offload_manager('/camera/image_raw', False, edge_sources, '/battery_state',
                                  obey_faults=rehearse),
            graph.health_monitor(['/camera/image_raw', '/detections'],
                                 [graph.IMAGE, graph.DETECTIONS],
                                 edge_sources if rehearse else ())]


def test_ports_name_known_qos_and_kinds() -> None:
    for node in _all():
        for port in node.inputs:
            assert port.qos in graph.QOS and port.kind in graph.RECORD_KINDS and port.handler
        for port in node.outputs:
            assert port.qos in graph.QOS and port.kind in graph.OUTPUT_KINDS
    assert graph.QOS['latched'].latched and graph.QOS['newest_frame'].depth == 1
    assert graph.QOS['every_frame'].depth == 10 and not graph.QOS['every_frame'].reliable


def test_every_input_is_published_by_a_node_or_comes_from_the_robot() -> None:
    nodes = _all(('edge', 'pi'))
    published = {p.resolved(n.namespace) for n in nodes for p in n.outputs}
    external = {'/camera/image_raw', '/battery_state'}
    for node in nodes:
        for port in node.inputs:
            assert port.resolved(node.namespace) in published | external, (node.node, port)


def test_an_edge_target_in_a_namespace_publishes_where_the_manager_listens() -> None:
    pi = graph.edge_inference('/camera/image_raw', True, 'pi')
    assert pi.output('detections').resolved(pi.namespace) == '/pi/edge/detections'
    assert pi.inputs[0].topic == '/camera/image_raw/compressed'
    assert pi.inputs[0].msg_type == graph.COMPRESSED_IMAGE
    manager = graph.offload_manager('/camera/image_raw', False, ['edge', 'pi'])
    subs = graph.subscribers([pi, manager])
    assert [(n, p.source) for n, p in subs['/pi/edge/detections']] == [('offload_manager', 'pi')]
    assert topics.edge_topic('pi', 'detections') == '/pi/edge/detections'
    with pytest.raises(KeyError, match='no output'):
        pi.output('nothing')


def test_every_handler_exists_on_its_target() -> None:
    targets = {'edge_inference': (FrameWorker, DecisionHolder, ObeyedFaults),
               'cloud_bridge': (FrameWorker, DecisionHolder),
               'offload_manager': (OffloadManager, ObeyedFaults),
               'health_monitor': (HealthMonitor, Rehearsal)}
    for node in _all():
        for port in node.inputs:
            assert any(callable(getattr(cls, port.handler, None))
                       for cls in targets[node.node]), (node.node, port.handler)


def test_records_cross_the_ports_both_ways() -> None:
    store = make_typestore('jazzy')
    types = message_types(store)
    health = graph.health_monitor([], [])
    manager = graph.offload_manager('/camera/image_raw', False, ['edge'])
    diag = encode_output(types, health.output('diagnostics'), Diagnostics((), 5))
    assert diag.header.stamp.nanosec == 5
    camera = manager.inputs[0]
    header = types.Header(stamp=types.Time(sec=1, nanosec=2), frame_id='cam')
    image = types.Image(header=header, height=0, width=0, encoding='rgb8', is_bigendian=0,
                        step=0, data=types.byte_array(b''))
    assert decode_input(camera, image) == FrameHeader(1_000_000_002, 'cam')
    arrival = graph.health_monitor(['/x'], [graph.STRING]).inputs[0]
    assert decode_input(arrival, object()) == '/x'


def test_an_unknown_kind_is_a_conversion_error() -> None:
    # Raised as ConversionError('...') without its detail, these were a TypeError instead.
    port = graph.Port('x', '/x', graph.STRING, 'result', 'meteor')
    with pytest.raises(ConversionError, match='input x') as err:
        decode_input(port, object())
    assert err.value.reason == 'unknown_kind'
    with pytest.raises(ConversionError, match='output x'):
        encode_output(message_types(make_typestore('jazzy')), port, object())


def test_only_a_rehearsal_subscribes_to_injected_faults() -> None:
    quiet = {p.topic for n in _all(rehearse=False) for p in n.inputs}
    assert topics.HEALTH_FAULTS not in quiet and topics.FRAMES not in quiet
    nodes = {n.node: n for n in _all(('edge', 'pi'))}
    assert [p.handler for p in nodes['edge_inference'].inputs
            if p.topic == topics.HEALTH_FAULTS] == ['on_fault']
    assert [p.handler for p in nodes['offload_manager'].inputs
            if p.topic == topics.HEALTH_FAULTS] == ['on_fault']
    rehearsal = {p.name: p.source for p in nodes['health_monitor'].inputs
                 if p.name.startswith('rehearsal_')}
    assert rehearsal == {'rehearsal_frames': '', 'rehearsal_edge': 'edge',
                         'rehearsal_pi': 'pi', 'rehearsal_cloud': 'cloud'}
