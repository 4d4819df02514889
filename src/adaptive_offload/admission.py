"""Admission of frames: by header stamp (duplicates, out of order) and every n-th."""

from __future__ import annotations

from collections import OrderedDict

from adaptive_offload.errors import ConfigError


class StampGate:
    """Refuses a frame whose stamp was already seen or is older than the newest of its frame_id.

    Workers and the arbiter each run one, so that all agree which frames are processed: a
    repeated stamp would otherwise make two frames share one result.

    Args:
        memory: How many recent keys to remember for duplicate detection.
    """

    def __init__(self, memory: int = 4096) -> None:
        self._seen: OrderedDict[tuple[int, str], None] = OrderedDict()
        self._newest: dict[str, int] = {}
        self._memory = memory

    def check(self, stamp_ns: int, frame_id: str) -> str:
        """Admit or refuse a frame.

        Args:
            stamp_ns: Header stamp.
            frame_id: Header frame_id.

        Returns:
            An empty string when admitted, else the drop reason (``duplicate_stamp`` or
            ``out_of_order_stamp``).
        """
        key = (stamp_ns, frame_id)
        if key in self._seen:
            return 'duplicate_stamp'
        if stamp_ns < self._newest.get(frame_id, -1):
            return 'out_of_order_stamp'
        self._newest[frame_id] = stamp_ns
        self._seen[key] = None
        if len(self._seen) > self._memory:
            self._seen.popitem(last=False)
        return ''


class EveryNth:
    """Picks every n-th of the frames it is asked about, the first one included.

    The cloud bridge samples with it (``offload_every``, probes) and the edge probes with it;
    the simulator uses the same so its workers pick the frames the real ones would. Callers
    that share one across threads hold their own lock.

    Args:
        phase: Frames counted as seen before the first: robots started together that draw
            different phases do not pick the same frames (a fleet's cloud probes would
            otherwise reach the shared service in step, every n-th frame).
    """

    def __init__(self, phase: int = 0) -> None:
        if phase < 0:
            raise ConfigError(f'phase must be >= 0, got {phase}')
        self._seen = phase

    def pick(self, every: int) -> bool:
        """Count one frame; whether it is an every-``every``-th one (never when ``every`` is 0)."""
        if every <= 0:
            return False
        self._seen += 1
        return (self._seen - 1) % every == 0
