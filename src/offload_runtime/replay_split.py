"""A split edge detector in one replay: the robot's head and the Pi's tail, as two nodes.

On a robot, ``edge_inference`` with ``split_role: head`` runs layers ``[0, k)`` and publishes
each frame's crossing tensors on its ``split_topic``; a second ``edge_inference`` on a Pi
(``edge.launch.py split_role:=tail``) runs the rest and publishes the detections as its own edge
source. A replay given the robot's parameters runs both (:mod:`offload_runtime.replay_graph`):
the tail's parameters are the head's as ``edge.launch.py`` would set them on the Pi, with the
tail's own values (``overrides[TAIL]``) over them.
"""

from __future__ import annotations

import threading
from typing import Any, Callable, Mapping, Sequence

from adaptive_offload.datatypes import DetectionSet, InferenceReport
from adaptive_offload.errors import ConfigError
from adaptive_offload.frame_worker import FrameWorker, ResultEmitter
from adaptive_offload.split_frame import SplitFrame
from adaptive_offload.split_option import parse_spec
from edge_inference.inference import EdgeConfig
import numpy as np

TAIL = 'edge_inference_tail'
"""The replay's name of a split head's tail: a node of its graph, and the key of the tail's own
parameters in :attr:`offload_runtime.replay_options.ReplayOptions.overrides`."""


def edge_splits(options: Sequence[str], edge: EdgeConfig, where: str) -> tuple[str, ...]:
    """Return the manager's split options of the edge model: the split head runs them.

    The others split the cloud model, whose heads the cloud bridge runs.

    Raises:
        ConfigError: For options of the edge model without a split head to run them.
    """
    found = tuple(o for o in options if parse_spec(o).arch == edge.model_name)
    if found and edge.split_role != 'head':
        raise ConfigError(f'{where}offload_manager: split_options {list(found)} split the edge '
                          f'model {edge.model_name}: edge_inference runs them with split_role '
                          'head (its tail on the edge computer)')
    return found


def head_point(head: EdgeConfig) -> str:
    """Say where a split head splits: at its ``split_point``, or as each decision names."""
    return f'k={head.split_point}' if head.split_point else \
        "the decision's k (else the whole model on the robot)"


def tail_values(head: EdgeConfig, head_values: Mapping[str, Any],
                tail_overrides: Mapping[str, Any], edge_sources: Sequence[str],
                head_topic: str, params_source: str, follows: bool = False) -> dict[str, Any]:
    """Return the parameters of a split head's tail, before they are checked.

    As ``edge.launch.py`` starts it on a Pi: the same file's ``edge_inference`` values, as a
    tail (``split_role``) of the head's topic (``split_topic``) under its own ``source_name``,
    here the one manager edge source that is not the head's; with ``follows`` (the manager
    chooses the head's split point) at ``split_point`` 0, following the head; then
    ``tail_overrides``.

    Raises:
        ConfigError: Naming ``offload_manager``'s ``edge_sources`` when they do not name one
            tail (and no override gives its ``source_name``).
    """
    source = tail_overrides.get('source_name')
    others = [s for s in edge_sources if s != head.source_name]
    if source is None and len(others) != 1:
        where = f'{params_source}: ' if params_source else ''
        raise ConfigError(
            f'{where}offload_manager: edge_sources {list(edge_sources)}: a split head '
            f'(edge_inference source_name {head.source_name!r}) makes no detections: its '
            'tail does, under its own source_name; list that one there, the only one beside '
            "the head's (e.g. edge_sources: [pi])")
    return {**head_values, 'split_role': 'tail', 'split_topic': head_topic,
            'source_name': others[0] if source is None else source,
            # A rehearsal's faults are obeyed by the robot's nodes; the Pi's tail is not one.
            'obey_faults': False, **({'split_point': 0} if follows else {}), **tail_overrides}


def check_tail(tail: EdgeConfig, head: EdgeConfig, edge_sources: Sequence[str],
               head_topic: str, params_source: str) -> None:
    """Check that ``tail`` answers ``head`` and that the manager hears it.

    Raises:
        ConfigError: Naming the tail's parameter (or the manager's ``edge_sources``) that
            would leave the head's frames unanswered.
    """
    where = f'{params_source}: ' if params_source else ''
    if tail.split_role != 'tail':
        raise ConfigError(f'{where}{TAIL}: split_role {tail.split_role!r}: the node behind a '
                          'split head is its tail (split_role tail)')
    if tail.split_topic != head_topic:
        raise ConfigError(f'{where}{TAIL}: split_topic {tail.split_topic!r} is not the '
                          f"head's {head_topic!r}: the tail would get nothing")
    if tail.source_name == head.source_name:
        raise ConfigError(f"{where}{TAIL}: source_name {tail.source_name!r} is the head's: "
                          'the two publish in their own namespaces')
    if not head.split_point and head.source_name not in edge_sources:
        raise ConfigError(f'{where}offload_manager: edge_sources {list(edge_sources)} lack '
                          f"{head.source_name!r}, the split head's: at split_point 0 it answers "
                          'the frames it runs whole, and they would be heard by no one')
    if tail.source_name not in edge_sources:
        raise ConfigError(f'{where}offload_manager: edge_sources {list(edge_sources)} lack '
                          f"{tail.source_name!r}, the split head's tail: its detections would "
                          'be heard by no one')


class _Counted:
    """An image input of one part of the pair: gives a message to its worker, counted."""

    def __init__(self, worker: FrameWorker, before: Callable[[], None],
                 after: Callable[[], None]) -> None:
        self._worker = worker
        self._before = before
        self._after = after

    def on_image(self, msg: Any, now_ns: int = 0) -> None:
        """Take a message (the graph's handler) for the worker."""
        self._before()
        self._worker.on_image(msg, now_ns)
        self._after()


class SplitLink:
    """The frames between a head and its tail, for the replay's back-pressure.

    Played as fast as the graph takes frames, the replay gives the head the next frame only
    once its tail has taken the last one: the head, several times faster, would otherwise run
    ahead, and its messages would push each other out of the tail's one-frame queue. The head
    then runs a frame while the tail runs the one before, as the two machines would.

    Args:
        publish: Publishes the head's outputs, as (output port name, record) pairs.
    """

    def __init__(self, publish: Callable[[list[tuple[str, Any]]], None]) -> None:
        self._publish = publish
        self._outputs = ResultEmitter(lambda name, record: None).outputs
        self._changed = threading.Condition()
        self._counts = {'given': 0, 'ended': 0, 'sent': 0, 'delivered': 0}
        self._held: dict[tuple[int, str], SplitFrame] = {}

    def _count(self, what: str) -> None:
        with self._changed:
            self._counts[what] += 1
            self._changed.notify_all()

    def send(self, frame: SplitFrame) -> None:
        """Take a head's split frame (its ``send``): it goes out with the frame's report."""
        with self._changed:
            self._held[(frame.stamp_ns, frame.frame_id)] = frame
            self._counts['sent'] += 1

    def emit(self, msg: Any, dets: DetectionSet | None, report: InferenceReport) -> None:
        """Publish a head's frame (the worker's ``emit``): its split message, then its report.

        In one call, as the replay takes a frame's outputs: sent apart, the report could come
        after a run that ended on the tail's answer.
        """
        with self._changed:
            frame = self._held.pop((report.stamp_ns, report.frame_id), None)
        split = [] if frame is None else [('split', frame)]
        self._publish(split + self._outputs(msg, dets, report))
        self._count('ended')

    def head_input(self, worker: FrameWorker) -> _Counted:
        """Return the head's camera input: each frame counted, then given to ``worker``."""
        return _Counted(worker, lambda: self._count('given'), lambda: None)

    def tail_input(self, worker: FrameWorker) -> _Counted:
        """Return the tail's split input: each message given to ``worker``, then counted."""
        return _Counted(worker, lambda: None, lambda: self._count('delivered'))

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Wait until the head has ended every frame given and its tail holds every message.

        Returns:
            True if so within ``timeout`` seconds.
        """
        counts = self._counts
        with self._changed:
            return self._changed.wait_for(lambda: counts['ended'] == counts['given'] and
                                          counts['delivered'] == counts['sent'], timeout)


def split_summary(reports: Sequence[InferenceReport], head: EdgeConfig,
                  tail: EdgeConfig) -> dict[str, Any]:
    """Summarise a split edge's parts from their reports.

    Returns:
        ``point`` and ``encoding`` (the head's parameters), and for ``head`` and ``tail``:
        ``source``, ``frames`` (run, failed or dropped), ``ok`` (run: the head's
        ``forwarded``, the tail's ``ok``), ``p50_ms`` and ``mean_ms`` (the part's model time,
        None without), ``total_p50_ms`` and ``failures`` (reason -> count); the head's also
        ``bytes_p50`` (its message's bytes) and ``splits`` (the split option run -> frames:
        its parameters', or a decision's).
    """
    out: dict[str, Any] = {'point': head.split_point, 'encoding': head.split_encoding}
    for part, config, ran in (('head', head, 'forwarded'), ('tail', tail, 'ok')):
        mine = [r for r in reports if r.source == config.source_name and
                r.status in (ran, 'failed', 'dropped')]
        ok = [r for r in mine if r.status == ran]
        failures: dict[str, int] = {}
        for r in mine:
            if r.status != ran:
                failures[r.reason or r.status] = failures.get(r.reason or r.status, 0) + 1
        ms = [r.inference_ms for r in ok]
        out[part] = {
            'source': config.source_name, 'frames': len(mine), 'ok': len(ok),
            'p50_ms': float(np.median(ms)) if ms else None,
            'mean_ms': float(np.mean(ms)) if ms else None,
            'total_p50_ms': float(np.median([r.total_ms for r in ok])) if ok else None,
            'failures': dict(sorted(failures.items()))}
        if part == 'head':
            splits: dict[str, int] = {}
            for r in ok:
                splits[r.split] = splits.get(r.split, 0) + 1
            out[part]['bytes_p50'] = int(np.median([r.bytes_sent for r in ok])) if ok else None
            out[part]['splits'] = dict(sorted(splits.items()))
    return out
