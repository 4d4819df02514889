"""adaptive_offload: keep robot perception fast and alive across robot, edge and cloud.

The subpackages hold pure-Python cores that never import ROS; the ``node`` modules of the
sibling packages wire those cores to rclpy.
"""

__version__ = '0.1.0'
