"""The frame worker shared by edge and cloud: admission, newest-frame hand-off, processing.

Both the rclpy nodes and the replay runner drive a :class:`FrameWorker`: the subscription
callback (or the bag player) calls :meth:`FrameWorker.submit`, a worker thread processes the
newest admitted frame, and every frame ends in exactly one :class:`InferenceReport`.
"""

from __future__ import annotations

from dataclasses import replace
import threading
import time
from typing import Any, Callable, Protocol

from adaptive_offload.admission import StampGate
from adaptive_offload.conversions import stamp_to_ns
from adaptive_offload.datatypes import Decision, DetectionSet, Frame, InferenceReport
from adaptive_offload.drawing import annotate_message
from adaptive_offload.errors import ConversionError
from adaptive_offload.latest_slot import LatestSlot

Emit = Callable[[Any, 'DetectionSet | None', InferenceReport], None]
Publish = Callable[[str, Any], None]


class FrameProcessor(Protocol):
    """What a worker does with a frame (implemented by the edge and cloud cores)."""

    def process(self, msg: Any, decision: Decision,
                waited_ns: int = 0) -> tuple[DetectionSet | None, InferenceReport]:
        """Process one image message under a decision; never raises for a bad frame.

        ``waited_ns`` is how long the frame waited for a worker: its deadline, counted from
        its arrival, has that much less left.
        """

    def drop(self, stamp_ns: int, frame_id: str, reason: str,
             decision: Decision) -> InferenceReport:
        """Report a frame that was not processed."""


class DecisionHolder:
    """Thread-safe newest decision, falling back to a safe default when it expires.

    Args:
        fallback: Decision used while none is valid (see :meth:`Decision.safe_default`).
    """

    def __init__(self, fallback: Decision) -> None:
        self._lock = threading.Lock()
        self._latest: Decision | None = None
        self._fallback = fallback

    def update(self, decision: Decision) -> bool:
        """Keep ``decision`` unless a newer one (higher ``seq``) is held; True if kept."""
        with self._lock:
            if self._latest is not None and decision.seq <= self._latest.seq:
                return False
            self._latest = decision
            return True

    def set_fallback(self, fallback: Decision) -> None:
        """Change the decision used while none is valid (a parameter set at runtime)."""
        with self._lock:
            self._fallback = fallback

    def on_decision(self, decision: Decision, now_ns: int = 0) -> None:
        """Take a decision from the decision topic (the graph's handler)."""
        self.update(decision)

    def update_json(self, text: str) -> str:
        """Parse a decision message and keep it; returns an error text, empty on success."""
        try:
            self.update(Decision.from_json(text))
        except ConversionError as err:
            return f'ignored a bad decision: {err}'
        return ''

    def current(self, now_ns: int) -> Decision:
        """Return the newest decision if still valid at ``now_ns``, else the fallback."""
        with self._lock:
            latest = self._latest
        if latest is not None and latest.is_valid(now_ns):
            return latest
        return self._fallback


class ResultEmitter:
    """The one emitter of the edge and cloud workers: a frame's outputs by graph port name.

    Every frame gives its ``telemetry`` report; a processed frame also its ``detections`` and,
    when asked, an ``annotated`` image with the boxes drawn. The rclpy nodes publish what it
    gives; the replay routes it to the other cores and writes it to the output bag.

    Args:
        publish: Called with (output port name, record).
        annotated: Also give the annotated image of every processed frame.
    """

    def __init__(self, publish: Publish, annotated: bool = False) -> None:
        self._publish = publish
        self._annotated = annotated

    def __call__(self, msg: Any, dets: DetectionSet | None, report: InferenceReport) -> None:
        """Emit one frame's outputs (the :data:`Emit` a :class:`FrameWorker` calls)."""
        for name, record in self.outputs(msg, dets, report):
            self._publish(name, record)

    def outputs(self, msg: Any, dets: DetectionSet | None,
                report: InferenceReport) -> list[tuple[str, Any]]:
        """Return one frame's outputs as (port name, record), in the order they go out."""
        outputs: list[tuple[str, Any]] = []
        if dets is not None:
            outputs.append(('detections', dets))
            if self._annotated:
                image = annotate_message(msg, dets.detections, dets.source, dets.model)
                if image is not None:
                    outputs.append(('annotated', Frame(dets.stamp_ns, dets.frame_id, image,
                                                       'bgr8')))
        outputs.append(('telemetry', report))
        return outputs


class FrameWorker:
    """Runs a processor on the newest admitted frames in background threads.

    With ``workers`` > 1 (the cloud bridge: requests in flight overlap their round trips) the
    processor must be thread-safe. At most ``workers`` frames are in process and ``pending``
    wait; a frame arriving when all are taken pushes out the oldest waiting one, which is
    reported as ``superseded``.

    Args:
        processor: The edge or cloud core.
        decisions: Where the current decision comes from.
        emit: Called with ``(msg, detections or None, report)`` once per submitted frame, from
            the submitting thread for refused frames and from a worker thread otherwise.
        now_ns: Clock used to judge decision validity (ROS time on a robot).
        workers: Frames processed at once.
        pending: Frames that may wait.
        monotonic_ns: Clock that times how long a frame waited (steady, unlike ROS time,
            which a bag's /clock may drive).
    """

    def __init__(self, processor: FrameProcessor, decisions: DecisionHolder, emit: Emit,
                 now_ns: Callable[[], int], workers: int = 1, pending: int = 1,
                 monotonic_ns: Callable[[], int] = time.monotonic_ns) -> None:
        self._processor = processor
        self._decisions = decisions
        self._emit = emit
        self._now_ns = now_ns
        self._monotonic_ns = monotonic_ns
        self._gate = StampGate()
        self._slot: LatestSlot[tuple[Any, int]] = LatestSlot(pending)
        self._workers = max(1, workers)
        self._threads: list[threading.Thread] = []

    def submit(self, msg: Any) -> None:
        """Offer a frame; a refused or superseded frame is reported as dropped at once."""
        stamp_ns, frame_id = stamp_to_ns(msg.header.stamp), str(msg.header.frame_id)
        refusal = self._gate.check(stamp_ns, frame_id)
        if refusal:
            # 'refused', not 'dropped': the key belongs to another frame, whose fate this
            # report must not decide.
            self._report_drop(msg, refusal, 'refused')
            return
        replaced = self._slot.put((msg, self._monotonic_ns()))
        if replaced is not None:
            self._report_drop(replaced[0], 'superseded')

    def on_image(self, msg: Any, now_ns: int = 0) -> None:
        """Take a camera message (the graph's handler): see :meth:`submit`."""
        self.submit(msg)

    def _report_drop(self, msg: Any, reason: str, status: str = 'dropped') -> None:
        decision = self._decisions.current(self._now_ns())
        report = self._processor.drop(stamp_to_ns(msg.header.stamp), str(msg.header.frame_id),
                                      reason, decision)
        self._emit(msg, None, replace(report, status=status))

    def process_next(self, timeout: float | None = None) -> bool:
        """Process the waiting frame, if one arrives within ``timeout``; False if none did."""
        taken = self._slot.take(timeout)
        if taken is None:
            return False
        msg, put_ns = taken
        dets, report = self._processor.process(msg, self._decisions.current(self._now_ns()),
                                               max(0, self._monotonic_ns() - put_ns))
        self._emit(msg, dets, report)
        return True

    def start(self, name: str = 'frame-worker') -> None:
        """Start the worker threads."""
        self._threads = [threading.Thread(target=self._run, name=f'{name}-{i}', daemon=True)
                         for i in range(self._workers)]
        for thread in self._threads:
            thread.start()

    def _run(self) -> None:
        while not self._slot.closed:
            self.process_next(timeout=0.1)
        while self.process_next(timeout=0):
            pass

    def wait_taken(self, timeout: float | None = None) -> bool:
        """Wait until the submitted frames have been taken by the workers."""
        return self._slot.wait_empty(timeout)

    def stop(self, timeout: float = 30.0) -> None:
        """Finish the waiting frames, then stop the threads."""
        self._slot.close()
        for thread in self._threads:
            thread.join(timeout)
