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
"""Names the marker file of the hanging children: the first one to find none hangs."""


def _first_to_hang() -> bool:
    """Whether this child is the test's first (it makes the marker); ignore what the real one does.

    The real child ignores SIGINT and SIGTERM, so only SIGKILL ends a hung one.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    marker = Path(os.environ[HANG_ONCE_ENV])
    if marker.exists():
        return False
    marker.touch()
    return True


def _hang() -> None:
    while True:
        time.sleep(60.0)


def _answer(conn: Any, hang_in_first_batch: bool) -> None:
    """Say ready, then answer every batch with no objects (or hang, alive, in the first)."""
    conn.send(('ready', None))
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            return  # the parent is gone
        if message[0] != 'run':
            return
        if hang_in_first_batch:
            _hang()
        _, batch_id, wire = message
        conn.send(('done', batch_id, [Detections(np.zeros((0, 4), np.float32),
                                                 np.zeros(0, np.float32), ())
                                      for _ in wire]))


def hanging_model_child(config: Any, conn: Any, frame_names: Sequence[str]) -> None:
    """Say ready and hang in the test's first batch, as a stuck kernel would; then answer."""
    _answer(conn, _first_to_hang())


def slow_loading_model_child(config: Any, conn: Any, frame_names: Sequence[str]) -> None:
    """Never say ready in the test's first start (a load stuck on a driver); later ones answer."""
    if _first_to_hang():
        _hang()
    _answer(conn, False)
