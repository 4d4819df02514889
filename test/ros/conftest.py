"""ROS-only tests: helpers shared by the modules of this folder."""

from __future__ import annotations

import os
from pathlib import Path
import sys

sys.path.insert(0, str(Path(__file__).resolve().parent))
# Keep test traffic on this host and apart from other ROS graphs on the network.
os.environ.setdefault('ROS_DOMAIN_ID', '77')
os.environ.setdefault('ROS_AUTOMATIC_DISCOVERY_RANGE', 'LOCALHOST')  # Jazzy
if os.environ.get('ROS_DISTRO') == 'humble':  # deprecated from Jazzy on, where it warns
    os.environ.setdefault('ROS_LOCALHOST_ONLY', '1')
