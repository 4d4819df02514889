"""Stand-in mains for the model's process in tests: importable, since the context is spawn."""

from __future__ import annotations

import os
from pathlib import Path
import signal
import time
from typing import Any, Sequence

import numpy as np
from rcnn_service.rcnn_detector import Detections

HANG_ONCE_ENV = 'ADAPTIVE_OFFLOAD_TEST_HANG_ONCE'
"""Names the marker file of :func:`hanging_model_child`: the first batch that finds none hangs."""


def hanging_model_child(config: Any, conn: Any, frame_names: Sequence[str]) -> None:
    """Say ready, hang in the first batch of the test, answer later batches with no objects.

    The first child to run a batch makes the marker file named by :data:`HANG_ONCE_ENV` and
    hangs, alive, as a stuck kernel would; it ignores SIGINT and SIGTERM as the real child
    does, so only SIGKILL ends it. Its successors find the marker and answer.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    marker = Path(os.environ[HANG_ONCE_ENV])
    conn.send(('ready', None))
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            return  # the parent is gone
        if message[0] != 'run':
            return
        _, batch_id, wire = message
        if not marker.exists():
            marker.touch()
            while True:
                time.sleep(60.0)
        conn.send(('done', batch_id, [Detections(np.zeros((0, 4), np.float32),
                                                 np.zeros(0, np.float32), ())
                                      for _ in wire]))
