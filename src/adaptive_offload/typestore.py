"""rosbags type stores with the message definitions rosbags does not ship (vision_msgs)."""

from __future__ import annotations

from importlib import resources
from typing import Any

from adaptive_offload.conversions import MessageTypes
from adaptive_offload.errors import ConfigError
import numpy as np
from rosbags.typesys import get_types_from_msg, get_typestore, Stores

DISTROS = {'humble': Stores.ROS2_HUMBLE, 'jazzy': Stores.ROS2_JAZZY}


def vision_msgs_definitions() -> dict[str, str]:
    """Return the vision_msgs 4.x (Humble/Jazzy) .msg texts kept in this package, by type name."""
    # One segment per step: Traversable takes a single child on 3.10.
    folder = resources.files('adaptive_offload') / 'interfaces' / 'vision_msgs' / 'msg'
    return {f'vision_msgs/msg/{entry.name[:-4]}': entry.read_text(encoding='utf-8')
            for entry in folder.iterdir() if entry.name.endswith('.msg')}


def make_typestore(distro: str = 'jazzy') -> Any:
    """Build a rosbags typestore of a ROS 2 distribution with vision_msgs registered.

    Args:
        distro: ``humble`` or ``jazzy``.

    Returns:
        The typestore.

    Raises:
        ConfigError: For an unknown distribution.
    """
    if distro not in DISTROS:
        raise ConfigError(f'unknown ROS distribution {distro!r} (known: {", ".join(DISTROS)})')
    store = get_typestore(DISTROS[distro])
    types: dict[str, Any] = {}
    for name, text in vision_msgs_definitions().items():
        types.update(get_types_from_msg(text, name))
    store.register(types)
    return store


def message_types(store: Any) -> MessageTypes:
    """Collect the classes of a rosbags typestore that the conversions build."""
    t = store.types
    return MessageTypes(
        Time=t['builtin_interfaces/msg/Time'],
        Header=t['std_msgs/msg/Header'],
        Image=t['sensor_msgs/msg/Image'],
        CompressedImage=t['sensor_msgs/msg/CompressedImage'],
        String=t['std_msgs/msg/String'],
        Point=t['geometry_msgs/msg/Point'],
        Quaternion=t['geometry_msgs/msg/Quaternion'],
        Pose=t['geometry_msgs/msg/Pose'],
        PoseWithCovariance=t['geometry_msgs/msg/PoseWithCovariance'],
        Point2D=t['vision_msgs/msg/Point2D'],
        Pose2D=t['vision_msgs/msg/Pose2D'],
        BoundingBox2D=t['vision_msgs/msg/BoundingBox2D'],
        ObjectHypothesis=t['vision_msgs/msg/ObjectHypothesis'],
        ObjectHypothesisWithPose=t['vision_msgs/msg/ObjectHypothesisWithPose'],
        Detection2D=t['vision_msgs/msg/Detection2D'],
        Detection2DArray=t['vision_msgs/msg/Detection2DArray'],
        KeyValue=t['diagnostic_msgs/msg/KeyValue'],
        DiagnosticStatus=t['diagnostic_msgs/msg/DiagnosticStatus'],
        DiagnosticArray=t['diagnostic_msgs/msg/DiagnosticArray'],
        VisionClass=t['vision_msgs/msg/VisionClass'],
        LabelInfo=t['vision_msgs/msg/LabelInfo'],
        BatteryState=t['sensor_msgs/msg/BatteryState'],
        ColorRGBA=t['std_msgs/msg/ColorRGBA'],
        Duration=t['builtin_interfaces/msg/Duration'],
        ImageMarker=t['visualization_msgs/msg/ImageMarker'],
        byte_array=lambda data: np.frombuffer(data, dtype=np.uint8),
        float32_array=lambda values: np.asarray(values, dtype=np.float32),
    )
