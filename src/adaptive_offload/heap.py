"""Python's cyclic garbage collector kept from pausing every thread to re-scan start-up objects."""

from __future__ import annotations

import contextlib
import gc
from typing import Iterator


@contextlib.contextmanager
def frozen_start_up() -> Iterator[None]:
    """Exempt every object alive now (modules, models, the graph) from garbage collection.

    A full collection walks every tracked object while it holds the GIL. With torch,
    ultralytics and torchvision imported that is some 400,000 objects: 40-190 ms in which no
    thread of the process runs, long enough for the edge worker to lose a frame at 10 fps.
    What the run allocates is still collected; only the start-up heap is frozen (it is
    collected first, so its garbage is not kept). Process-wide; when something outside has
    frozen the heap already, this leaves it as it is.

    Yields:
        Nothing; the heap is unfrozen on exit.
    """
    if gc.get_freeze_count():
        yield
        return
    gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()
