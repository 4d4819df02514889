"""A fault rehearsal on the rclpy graph: injected, announced, obeyed, measured (needs ROS 2)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest
from ros_required import require

require('rclpy', 'rclpy.lifecycle', 'sensor_msgs.msg', 'diagnostic_msgs.msg')

from adaptive_offload import ros_interface as ros  # noqa: E402, I100
from adaptive_offload import topics  # noqa: E402
from adaptive_offload.conversions import frame_to_message  # noqa: E402
from adaptive_offload.datatypes import InferenceReport  # noqa: E402
from adaptive_offload.health_records import FaultEvent  # noqa: E402
from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402
from rclpy.executors import SingleThreadedExecutor  # noqa: E402
from rclpy.node import Node  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402
from ros_helpers import node_args, running, spin_until  # noqa: E402
from sensor_msgs.msg import Image  # noqa: E402
from std_msgs.msg import String  # noqa: E402


@pytest.fixture
def graph(tmp_path: Path) -> Iterator[tuple[SingleThreadedExecutor, Node]]:
    """Start rclpy with a random-weight model, an executor and a probe; shut down after."""
    with running(node_args(tmp_path)) as started:
        yield started


def _watch(probe: Node) -> tuple[list[String], list[DiagnosticArray]]:
    faults: list[String] = []
    diagnostics: list[DiagnosticArray] = []
    probe.create_subscription(String, topics.HEALTH_FAULTS, faults.append,
                              ros.qos_profile('result'))
    probe.create_subscription(DiagnosticArray, topics.DIAGNOSTICS, diagnostics.append,
                              ros.qos_profile('result'))
    return faults, diagnostics


def test_without_a_scenario_nothing_is_injected(graph: Any) -> None:
    from health_monitor.node import HealthMonitorNode

    executor, probe = graph
    faults, diagnostics = _watch(probe)
    executor.add_node(HealthMonitorNode())
    assert spin_until(executor, lambda: len(diagnostics) >= 3, timeout=10)
    assert faults == []
    assert not any(s.name == topics.CHECK_FAULT_INJECTION for d in diagnostics
                   for s in d.status)


def test_the_health_node_announces_and_measures_its_scenario(graph: Any,
                                                             tmp_path: Path) -> None:
    from health_monitor.node import HealthMonitorNode

    scenario = tmp_path / 'stall.yaml'
    scenario.write_text('name: stall\nfaults:\n'
                        '  - {kind: edge_stall, start_s: 0.5, duration_s: 1.0}\n')
    executor, probe = graph
    faults, diagnostics = _watch(probe)
    node = HealthMonitorNode(parameter_overrides=[Parameter('scenario', value=str(scenario))])
    executor.add_node(node)
    assert spin_until(executor, lambda: len(faults) >= 2, timeout=10)
    events = [FaultEvent.from_json(m.data) for m in faults]
    assert [(e.kind, e.phase) for e in events] == [('edge_stall', 'start'),
                                                   ('edge_stall', 'end')]
    assert events[0].duration_s == 1.0
    assert spin_until(executor, lambda: any(
        s.name == topics.CHECK_FAULT_INJECTION for s in diagnostics[-1].status), timeout=5)


def test_a_node_told_to_obey_stalls_and_dies_on_announcement(graph: Any) -> None:
    from edge_inference.node import EdgeInferenceNode
    from offload_manager.node import OffloadManagerNode

    executor, probe = graph
    reports: list[String] = []
    decisions: list[String] = []
    probe.create_subscription(String, '/edge/telemetry', reports.append,
                              ros.qos_profile('result'))
    probe.create_subscription(String, topics.DECISION, decisions.append,
                              ros.qos_profile('latched'))
    announce = probe.create_publisher(String, topics.HEALTH_FAULTS, ros.qos_profile('result'))
    camera = probe.create_publisher(Image, '/camera/image_raw', ros.qos_profile('newest_frame'))
    obey = [Parameter('obey_faults', value=True)]
    edge = EdgeInferenceNode(parameter_overrides=obey)
    manager = OffloadManagerNode(parameter_overrides=[
        *obey, Parameter('decision_period_s', value=0.2)])
    executor.add_node(edge)
    executor.add_node(manager)
    assert spin_until(executor, lambda: camera.get_subscription_count() >= 2 and
                      announce.get_subscription_count() >= 2 and bool(decisions))

    def fault(kind: str, phase: str) -> None:
        announce.publish(String(data=FaultEvent(kind=kind, phase=phase,
                                                duration_s=30.0).to_json()))

    fault('manager_death', 'start')
    spin_until(executor, lambda: False, timeout=0.5)
    count = len(decisions)
    spin_until(executor, lambda: False, timeout=1.0)
    assert len(decisions) == count  # dead: no decision in five periods
    fault('manager_death', 'end')
    assert spin_until(executor, lambda: len(decisions) > count, timeout=5)

    fault('edge_stall', 'start')
    spin_until(executor, lambda: False, timeout=0.3)
    pixels = np.full((48, 64, 3), 90, np.uint8)
    camera.publish(frame_to_message(ros.message_types(), pixels, 5_000_000_000, 'cam', 'rgb8'))
    spin_until(executor, lambda: False, timeout=1.5)
    assert not any(InferenceReport.from_json(m.data).stamp_ns == 5_000_000_000
                   for m in reports)  # held by the stall
    fault('edge_stall', 'end')
    assert spin_until(executor, lambda: any(
        InferenceReport.from_json(m.data).stamp_ns == 5_000_000_000 for m in reports))
