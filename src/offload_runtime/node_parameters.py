"""Every node's declared parameters, and a check of a parameter file against them.

``adaptive-offload check-params FILE`` tells before a launch what ``ros2 launch`` would refuse
(a value of the wrong type or out of its range, with rclpy's reason) and what the nodes would
refuse once started (a value outside its choices, lists of different lengths, a bad URL).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Mapping

from adaptive_offload.errors import ConfigError
from adaptive_offload.params import check_params_file, load_params_file, node_params
from adaptive_offload.params import ParameterSpec
from cloud_bridge.bridge_config import CloudConfig
from cloud_bridge.bridge_config import PARAMETERS as CLOUD_BRIDGE
from edge_inference.inference import EdgeConfig
from edge_inference.inference import PARAMETERS as EDGE_INFERENCE
from health_monitor.monitor import HealthConfig
from health_monitor.monitor import PARAMETERS as HEALTH_MONITOR
from offload_manager.manager import ManagerConfig
from offload_manager.manager import PARAMETERS as OFFLOAD_MANAGER

# node name -> (declared parameters, the role's configuration builder)
NODES: Mapping[str, tuple[tuple[ParameterSpec, ...], Callable[[Mapping[str, Any]], Any]]] = {
    'edge_inference': (EDGE_INFERENCE, EdgeConfig.from_params),
    'cloud_bridge': (CLOUD_BRIDGE, CloudConfig.from_params),
    'offload_manager': (OFFLOAD_MANAGER, ManagerConfig.from_params),
    'health_monitor': (HEALTH_MONITOR, HealthConfig.from_params),
}


def check_file(path: str | Path) -> list[str]:
    """Check a parameter file as the nodes would take it.

    Args:
        path: The parameter file.

    Returns:
        One line per problem, each naming the file and the node; empty when it is fine.

    Raises:
        ConfigError: If the file cannot be read or is not a parameter file.
    """
    problems = check_params_file(path, {node: specs for node, (specs, _) in NODES.items()})
    if problems:
        return problems
    params = load_params_file(path)
    for node, (_, build) in NODES.items():
        if node not in params:
            continue
        try:
            build(node_params(params, node))
        except ConfigError as err:
            problems.append(f'{path}: {node}: {err}')
    return problems
