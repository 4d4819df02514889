"""Cloud bridge core: pick frames by the decision, send each as a JPEG or a split head's output."""

from __future__ import annotations

from dataclasses import replace
import functools
import random
import threading
import time
from typing import Any, Callable

from adaptive_offload.conversions import (boxes_from_arrays, encode_image, image_to_frame,
                                          stamp_to_ns)
from adaptive_offload.datatypes import Decision, DetectionSet, InferenceReport, Route
from adaptive_offload.errors import AdaptiveOffloadError, CloudError, ConfigError
from adaptive_offload.split_option import parse_spec, SPLIT_PREFIX
from cloud_bridge.resilience import CircuitBreaker, LinkEstimator
from cloud_bridge.sampling import Sampler, UniformSampler
from cloud_bridge.split_head import SplitRoute
from cloud_bridge.transport import CloudReply, InferenceTransport
import cv2


class CloudBridge:
    """Sends frames the decision selects to the service and returns its detections.

    Cloud routes send one in ``offload_every`` frames, picked by the sampler (every n-th, or
    where the edge is unsure); the edge route sends every ``probe_every``-th frame as a probe
    (its answer measures the cloud for the manager).

    A request never outlives the frame's deadline; a refused or dropped connection is retried
    (``max_retries``) only if the time left exceeds the recent round trip; the circuit breaker
    fails frames at once while the service is known to be down. A service that refuses a
    request for load (``overloaded``) is healthy but busy: it does not count against the
    breaker, and frames fail at once (``backoff``) for the time it said, drawn between half and
    one and a half times it, so that a fleet refused together does not come back together.
    Thread-safe, so that several requests can be in flight (the transport must be thread-safe
    too; ours are).

    Args:
        transport: Connection to the service.
        clock: Monotonic nanosecond clock for timings (injected in tests).
        max_retries: Retries of connection failures within the deadline.
        breaker: Circuit breaker; a default one when None.
        model: Model name put on the detections.
        sampler: Picks the frames of one-in-n decisions; uniform when None.
        rng: Draws the back-off after a load refusal (seeded in tests).
        split: Runs split decisions (the model's head here, its tail on the service); without
            it they fail.
    """

    SOURCE = 'cloud'

    def __init__(self, transport: InferenceTransport,
                 clock: Callable[[], int] = time.perf_counter_ns, max_retries: int = 1,
                 breaker: CircuitBreaker | None = None, model: str = '',
                 sampler: Sampler | None = None, rng: random.Random | None = None,
                 split: SplitRoute | None = None) -> None:
        self._transport = transport
        self._split = split
        self._clock = clock
        self._sampling: Sampler = sampler or UniformSampler()
        self._lock = threading.Lock()  # frame count, breaker and link estimates
        self._retries = max_retries
        self.breaker = breaker or CircuitBreaker()
        self.link = LinkEstimator()
        self.model = model
        self._rng = rng or random.Random()
        self._backoff_until = 0

    @property
    def split_options(self) -> tuple[str, ...]:
        """The split options whose heads this bridge runs."""
        return self._split.options if self._split is not None else ()

    def on_edge_detections(self, dets: DetectionSet, now_ns: int = 0) -> None:
        """Take an edge result: content sampling judges the next frames by it."""
        with self._lock:
            self._sampling.observe_edge(dets)

    def drop(self, stamp_ns: int, frame_id: str, reason: str,
             decision: Decision) -> InferenceReport:
        """Report a frame that was not processed (see :class:`FrameProcessor`)."""
        return InferenceReport(stamp_ns=stamp_ns, frame_id=frame_id, source=self.SOURCE,
                               status='dropped', reason=reason, decision_seq=decision.seq)

    def process(self, msg: Any, decision: Decision,
                waited_ns: int = 0) -> tuple[DetectionSet | None, InferenceReport]:
        """Send one frame if the decision selects it (see :class:`FrameProcessor`).

        The deadline counts from the frame's arrival: ``waited_ns`` (its wait for a free
        request) comes off the time the request, and the service's budget, may take. A frame
        that waited past its deadline is dropped (``expired``) without being sent: nobody
        would use its answer, and the service would compute it for nothing.
        """
        start = self._clock()
        deadline_ns = start - max(0, waited_ns) + int(decision.deadline_ms * 1e6)
        stamp_ns, frame_id = stamp_to_ns(msg.header.stamp), str(msg.header.frame_id)
        report = InferenceReport(stamp_ns=stamp_ns, frame_id=frame_id, source=self.SOURCE,
                                 decision_seq=decision.seq)
        every = decision.offload_every if decision.route.uses_cloud else decision.probe_every
        if not every:
            return None, replace(report, status='skipped', reason=f'route={decision.route.value}')
        with self._lock:
            sampled = self._sampling.pick(every)
        if not sampled:
            return None, replace(report, status='skipped', reason='not_sampled')
        if deadline_ns <= start:
            return None, self._link(replace(
                report, status='dropped', reason=f'expired: waited {waited_ns / 1e6:.0f} ms '
                                                 f'of its {decision.deadline_ms:g} ms deadline'))
        split = decision.route is Route.SPLIT
        if split:  # its reports name the option, so that the manager learns each one
            report = replace(report, model=SPLIT_PREFIX + decision.split)
        # Asked before the frame is encoded: a frame that cannot go costs the robot nothing.
        with self._lock:
            backoff = start < self._backoff_until
            allowed = not backoff and self.breaker.allow(start)
        if not allowed:
            return None, self._link(replace(report, status='failed',
                                            reason='backoff' if backoff else 'circuit_open'))
        try:
            frame = image_to_frame(msg)
            if split:
                send, scale, size = self._split_request(frame.image, decision.split)
            else:
                image, scale = _shrink(frame.image, decision.cloud_max_side)
                jpeg = encode_image(image, 'jpeg', decision.jpeg_quality)
                send, size = functools.partial(self._transport.infer, jpeg), max(image.shape[:2])
        except AdaptiveOffloadError as err:
            with self._lock:
                self.breaker.release()  # nothing went out: says nothing of the service
            return None, self._link(replace(report, status='failed', reason=str(err)))
        # The robot's work for the request, charged as compute (the manager's energy): a split
        # report gives its head as inference_ms, an image request its conversion and encode.
        prepared_ms = (self._clock() - start) / 1e6
        head_ms = prepared_ms if split else 0.0
        if not split:
            report = replace(report, encode_ms=prepared_ms)
        try:
            reply, retried_bytes = self._request(send, deadline_ns)
        except ConfigError as err:  # the service's tail cannot finish this head's payload
            with self._lock:
                self.breaker.release()
            return None, self._link(replace(report, status='failed', reason=str(err)))
        except CloudError as err:
            with self._lock:
                if err.reason == 'overloaded':
                    self.breaker.release()
                    hold_s = err.retry_after_s * self._rng.uniform(0.5, 1.5)
                    self._backoff_until = max(self._backoff_until,
                                              self._clock() + int(hold_s * 1e9))
                else:
                    self.breaker.record(False, self._clock())
            return None, self._link(replace(report, status='failed', reason=str(err),
                                            total_ms=(self._clock() - start) / 1e6,
                                            bytes_sent=err.bytes_sent))
        with self._lock:
            self.breaker.record(True, self._clock())
            self.link.add(reply.request_ms, reply.server_ms, reply.bytes_sent)
        dets = boxes_from_arrays(reply.boxes / scale, reply.scores,
                                 range(len(reply.labels)), list(reply.labels),
                                 frame.width, frame.height)
        total_ms = (self._clock() - start) / 1e6
        # A split report's inference_ms is the robot's head time (the manager charges it as
        # compute, as the simulator does); an image request's is its round trip.
        return (DetectionSet(stamp_ns, frame_id, self.SOURCE, dets, report.model or self.model),
                self._link(replace(report, detections=len(dets),
                                   inference_ms=head_ms if split else reply.request_ms,
                                   total_ms=total_ms,
                                   bytes_sent=reply.bytes_sent + retried_bytes, imgsz=size,
                                   server_ms=reply.server_ms or 0.0,
                                   queue_ms=reply.queue_ms or 0.0)))

    def _split_request(self, image: Any, option: str
                       ) -> tuple[Callable[[float], CloudReply], float, int]:
        """Run a split option's head on the frame; return its sender, scale 1 and size.

        Raises:
            ConfigError: If this bridge runs no split, or not this option.
            ConversionError: If the payload cannot be encoded.
        """
        if self._split is None:
            raise ConfigError(f'split option {option!r}: this bridge runs no split head (set '
                              'its split_options and split_checkpoint)')
        payload = self._split.head(option, image)
        return (functools.partial(self._split.send, option, payload), 1.0,
                parse_spec(option).imgsz)

    def _request(self, send: Callable[[float], CloudReply],
                 deadline_ns: int) -> tuple[CloudReply, int]:
        """Send with retries of connection failures while the deadline leaves time.

        Args:
            send: Sends the request with the time it may take.
            deadline_ns: When the frame's deadline passes.

        Returns:
            The reply, and the bytes that failed attempts before it had sent.

        Raises:
            CloudError: The last failure, with the bytes of every attempt.
        """
        attempt, sent = 0, 0
        while True:
            left_s = (deadline_ns - self._clock()) / 1e9
            try:
                return send(left_s), sent
            except CloudError as err:
                sent += err.bytes_sent
                rtt_s = (self.link.rtt_ms or 0.0) / 1e3
                left_s = (deadline_ns - self._clock()) / 1e9
                if err.reason != 'connection' or attempt >= self._retries or left_s <= rtt_s:
                    err.bytes_sent = sent
                    raise
                attempt += 1

    def _link(self, report: InferenceReport) -> InferenceReport:
        with self._lock:
            return replace(report, rtt_ms=self.link.rtt_ms or 0.0,
                           uplink_mbps=self.link.uplink_mbps or 0.0,
                           breaker=self.breaker.state.value)


def _shrink(image: Any, max_side: int) -> tuple[Any, float]:
    longest = max(image.shape[:2])
    if max_side <= 0 or longest <= max_side:
        return image, 1.0
    scale = max_side / longest
    size = (round(image.shape[1] * scale), round(image.shape[0] * scale))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA), scale
