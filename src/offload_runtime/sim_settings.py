"""What a simulation plays: the robot's links, the camera and the service's model."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable


@dataclass(frozen=True)
class NetworkProfile:
    """The robot's link to the cloud, and to a middle device on its LAN (three-tier splits).

    Attributes:
        uplink_mbps: Uplink bandwidth (the scenario's bandwidth faults act on it alone).
        rtt_ms: Round trip without payload.
        jitter: Relative spread (log-normal sigma) of every simulated duration.
        lan_mbps: Robot-to-middle-device LAN rate.
        lan_rtt_ms: Its round trip.
        middle: The middle device's profile name; empty: the manager's ``split_middle_device``.
    """

    uplink_mbps: float = 50.0
    rtt_ms: float = 30.0
    jitter: float = 0.1
    lan_mbps: float = 100.0
    lan_rtt_ms: float = 2.0
    middle: str = ''

    def manager_params(self) -> dict[str, object]:
        """Return the manager parameters of the middle device and LAN (none without one)."""
        if not self.middle:
            return {}
        return {'split_middle_device': self.middle, 'split_lan_mbps': float(self.lan_mbps),
                'split_lan_rtt_ms': float(self.lan_rtt_ms)}


Quality = Callable[[str, int, str], 'float | None']
"""Measured mAP of (model, input size, scene difficulty); None where not measured."""


@dataclass(frozen=True)
class SimSettings:
    """What is simulated.

    Attributes:
        frames: Frames to play.
        fps: Camera rate.
        q75_bytes: JPEG size of a frame at quality 75 (640x480 natural image, estimate).
        encode_ms: JPEG encode time on the robot.
        cloud_model: Model the service runs (its profile time and accuracy prior).
        max_in_flight: Cloud requests at once.
        objects: Ground-truth objects per frame.
        seed: Random seed.
    """

    frames: int = 3000
    fps: float = 10.0
    q75_bytes: int = 50_000
    encode_ms: float = 5.0
    cloud_model: str = 'fasterrcnn_resnet50_fpn_v2'
    max_in_flight: int = 2
    objects: int = 5
    seed: int = 0
