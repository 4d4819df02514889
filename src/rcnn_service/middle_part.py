"""The middle of three tiers: run the model from the robot's point to another, forward the rest.

An edge computer on a robot's LAN (a Pi 5, a laptop) runs the same service as the cloud,
started with an upstream, the cloud service (``adaptive-offload serve --upstream URL``). A
robot's request to its tail model that carries ``forward_to`` and ``forward_encoding``
(:data:`adaptive_offload.split_wire.FORWARD_TO`) holds the head's payload at a point i: this
service runs the model from i to the named point j (:meth:`RcnnSplit.middle`), encodes what
crosses j, sends it to the cloud's tail with the robot's id and what is left of its budget, and
answers with the cloud's detections. A request without them is a plain tail request: the
middle device runs the whole rest (an ``i/end`` option).

Before its first forward, and again at most every ``recheck_s`` while they disagree, the part
compares the cloud's architecture, weights digest and split points with its own: a cloud of
other weights would read the payload as noise and answer with confident nonsense. The part
runs in the request's thread, on this process's model under its lock, at most ``max_waiting``
at once (more are refused as overloaded): a middle device serves the robots of one LAN, not a
fleet, so it needs neither the batcher nor a model process. The cloud's refusals come back as
this service's: a load refusal as 503 overloaded with the cloud's retry time, a timeout as 504,
anything else as 502, each with the cloud's reason.
"""

from __future__ import annotations

import threading
import time
from typing import Any, Callable, Mapping, Protocol

from adaptive_offload.errors import ConfigError, ConversionError
from rcnn_service.guard import Overloaded, RequestError
from rcnn_service.rcnn_detector import Detections
from rcnn_service.rcnn_split import encode_payload, EncodedPayload, RcnnPayload
from rcnn_service.split_tail import SplitTail, TailRequest, TailSpec


class Upstream(Protocol):
    """The cloud's tail model, as a middle device reaches it."""

    def metadata(self, timeout_s: float) -> Mapping[str, Any]:
        """Return the V2 metadata of the cloud's tail; its ``split`` names weights and points.

        Raises:
            RequestError: 504 if it did not answer in time, 502 for any other failure.
        """

    def infer(self, payload: EncodedPayload, timeout_s: float, robot: str) -> Detections:
        """Send one payload for ``robot`` (empty: the middle device's own id).

        Raises:
            Overloaded: The cloud refused it for load (503, with its retry time).
            RequestError: 504 if it did not answer in time, 502 for any other failure.
        """

    def close(self) -> None:
        """Release connections."""


class MiddlePart:
    """Runs three-tier requests' middle parts and forwards them. Thread-safe.

    Args:
        tail: The tail of this process's model (its detector, lock and split points).
        upstream: The cloud's tail.
        max_waiting: Most requests in the part at once; more are refused (503 overloaded).
        default_budget_s: Time allowed to a request that states no budget.
        recheck_s: How long a disagreeing cloud is taken at its word before it is asked again.
        clock: Monotonic seconds.

    Raises:
        ConfigError: If ``max_waiting`` is below 1.
    """

    def __init__(self, tail: SplitTail, upstream: Upstream, max_waiting: int = 8,
                 default_budget_s: float = 10.0, recheck_s: float = 30.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if max_waiting < 1:
            raise ConfigError(f'max_waiting must be >= 1, got {max_waiting}')
        self.tail = tail
        self.upstream = upstream
        self._slots = threading.BoundedSemaphore(max_waiting)
        self._max_waiting = max_waiting
        self._default_budget_s = default_budget_s
        self._recheck_s = recheck_s
        self._clock = clock
        self._lock = threading.Lock()
        self._why: str | None = None  # None: not asked yet; '': the cloud agrees
        self._asked_at = 0.0
        self._last_s = 0.1  # the last request's time in the part: a refusal's retry time

    def run(self, request: TailRequest) -> tuple[Detections, float, float]:
        """Run a three-tier request's middle part and return the cloud's answer.

        Args:
            request: A checked tail request with its :attr:`TailRequest.forward`.

        Returns:
            The detections (in the original image's pixels), the seconds the request took
            here, and the part of them it waited for the model.

        Raises:
            Overloaded: 503 if ``max_waiting`` requests are in the part, or the cloud refused.
            RequestError: 400 if the tensors cannot be run or encoded, 502 if the cloud
                disagrees or fails, 504 if the budget ran out.
        """
        forward = request.forward
        if forward is None:
            raise RequestError(400, 'not a three-tier request: it names no forward_to')
        start = self._clock()
        robot = request.context.robot
        if not self._slots.acquire(blocking=False):
            raise Overloaded('queue_full', robot, self._last_s,
                             f'{self._max_waiting} requests are in the middle part')
        try:
            budget = request.context.budget_s
            deadline = start + (self._default_budget_s if budget is None else budget)
            encoded, wait_s = self._middle(request.job.payload, forward.point,
                                           forward.precision, forward.compression)
            self._agree(deadline - self._clock())
            left = deadline - self._clock()
            if left <= 0:
                raise RequestError(504, f'the budget ran out in the middle part '
                                        f'({(self._clock() - start) * 1e3:.0f} ms here)')
            detections = self.upstream.infer(encoded, left, robot)
        finally:
            self._slots.release()
        seconds = self._clock() - start
        with self._lock:
            self._last_s = seconds
        return detections, seconds, wait_s

    def _middle(self, payload: RcnnPayload, point: int, precision: str,
                compression: str) -> tuple[EncodedPayload, float]:
        """Run the model from the payload's point to ``point`` and encode what crosses there."""
        called = self._clock()
        began: list[float] = []

        def work() -> RcnnPayload:
            began.append(self._clock())
            return self.tail.split.middle(payload, point)

        try:
            crossing = self.tail.detector.run_locked(work)
            return encode_payload(crossing, precision, compression), began[0] - called
        except (ConfigError, ConversionError) as err:
            raise RequestError(400, f'the middle part cannot run on these tensors: {err}') \
                from err
        except (RuntimeError, ValueError, IndexError) as err:
            raise RequestError(400, f'the model cannot run on these tensors: '
                                    f'{str(err)[:300]}') from err

    def _agree(self, timeout_s: float) -> None:
        """Refuse (502) while the cloud runs other weights or split points than this model."""
        with self._lock:
            why, asked_at = self._why, self._asked_at
        if why == '':
            return
        if why is None or self._clock() - asked_at >= self._recheck_s:
            if timeout_s <= 0:
                raise RequestError(504, 'the budget ran out before the cloud was asked')
            why = disagreement(self.upstream.metadata(timeout_s), self.tail.spec)
            with self._lock:
                self._why, self._asked_at = why, self._clock()
        if why:
            raise RequestError(502, why)


def disagreement(metadata: Mapping[str, Any], spec: TailSpec) -> str:
    """Return why the cloud's tail of ``metadata`` cannot finish this model's payloads; ''."""
    split = metadata.get('split')
    if not isinstance(split, dict):
        return "the cloud's tail metadata names no split model"
    if split.get('arch') != spec.arch:
        return f'the cloud runs {split.get("arch")!r}, this middle device {spec.arch!r}'
    if split.get('weights_sha256') != spec.weights_sha256:
        return (f'the cloud runs weights {split.get("weights_sha256")!r}, this middle device '
                f'{spec.weights_sha256!r}: give both services the same checkpoint')
    points = split.get('points')
    theirs = [(p.get('index'), p.get('name')) for p in points if isinstance(p, dict)] \
        if isinstance(points, list) else []
    if theirs != [(p.index, p.name) for p in spec.points]:
        return 'the cloud splits its model at other points than this middle device'
    return ''
