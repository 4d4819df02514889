"""Three-tier split routes in the simulator: robot, middle device on the LAN, cloud.

A three-tier option (``arch@imgsz:i/j:encoding``) runs the robot's head to ``i``, sends its
payload over the LAN to the middle device (an edge computer), which runs ``i`` to ``j`` and
sends the payload of ``j`` over the uplink to the cloud's tail; ``j = end`` stops at the middle
device. :func:`route_parts` draws one frame's time on each leg; faults of the uplink (a
bandwidth drop, added delay) reach only the legs that cross it. ``evaluate``'s ``--middle``,
``--lan-mbps`` and ``--lan-rtt-ms`` are in :mod:`offload_runtime.fleet_cli`.
"""

from __future__ import annotations

from typing import Callable

from adaptive_offload.split_option import parse_spec
from offload_manager.energy import DeviceProfile, load_devices
from offload_manager.manager_config import default_devices_file, ManagerConfig
from offload_manager.split_figures import SplitFigures
from offload_runtime.sim_settings import NetworkProfile

Spread = Callable[[float, str], float]
"""Draws a duration (ms) around its nominal value for one purpose (``lan``, ``middle`` ...)."""

TIERS = ('robot', 'lan', 'middle', 'wan', 'cloud')
"""The legs of a three-tier frame, in order."""


def route_parts(fig: SplitFigures, network: NetworkProfile, uplink_mbps: float,
                wan_delay_ms: float, spread: Spread, slowdown: float = 1.0) -> dict[str, float]:
    """Draw one frame's time on each leg of a split route (two-tier ones too).

    Args:
        fig: The option's figures.
        network: The links (LAN rate and round trip, uplink round trip).
        uplink_mbps: The uplink's rate now (the scenario's bandwidth faults applied).
        wan_delay_ms: Delay the scenario adds to the uplink now.
        spread: Draws a duration around its nominal value.
        slowdown: The robot's CPU contention (its head only).

    Returns:
        Milliseconds by leg (:data:`TIERS`); legs the route does not take are 0.
    """
    parts = dict.fromkeys(TIERS, 0.0)
    parts['robot'] = spread(fig.robot_ms * slowdown, 'head')
    if fig.spec.three_tier:
        parts['lan'] = spread(fig.payload_bytes * 8 / (network.lan_mbps * 1e3), 'lan') + \
            spread(network.lan_rtt_ms, 'lan_rtt')
        parts['middle'] = spread(fig.middle_ms, 'middle')
    if fig.to_cloud:
        parts['wan'] = spread(fig.wan_bytes * 8 / (uplink_mbps * 1e3), 'transfer') + \
            spread(network.rtt_ms, 'rtt') + wan_delay_ms
        parts['cloud'] = spread(fig.server_ms, 'server')
    return parts


def middle_device(config: ManagerConfig, named: str = '') -> DeviceProfile | None:
    """Return the middle device a manager's three-tier options run on, if it names one.

    Args:
        config: The manager's parameters (``split_middle_device``, ``devices_file``).
        named: A device to use instead of the parameter's (the simulator's network profile).
    """
    name = named or config.split_middle_device
    if not name or not any(parse_spec(o).three_tier for o in config.splits()):
        return None
    return load_devices(config.devices_file or default_devices_file()).get(name)
