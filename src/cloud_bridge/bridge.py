"""Cloud bridge core: pick frames by the decision, send them as JPEG, scale the reply back."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
import random
import socket
import threading
import time
from typing import Any, Callable, Mapping

from adaptive_offload.conversions import (boxes_from_arrays, encode_image, image_to_frame,
                                          stamp_to_ns)
from adaptive_offload.datatypes import Decision, DetectionSet, InferenceReport
from adaptive_offload.errors import CloudError, ConfigError, ConversionError
from adaptive_offload.params import ParameterSpec, resolve
from cloud_bridge.endpoints import HedgedEndpoints
from cloud_bridge.resilience import CircuitBreaker, LinkEstimator
from cloud_bridge.sampling import make_sampler, Sampler, UniformSampler
from cloud_bridge.transport import CloudReply, InferenceTransport, make_transport
import cv2

SAMPLING_PHASES = 1000
"""The uniform sampler of each bridge starts at a random count below this: bridges started
together (a fleet after an outage) would otherwise send their one-in-n frames in step."""

PARAMETERS = (
    ParameterSpec('url', 'grpc://127.0.0.1:8081',
                  'V2 inference server: grpc://host:port (gRPC), grpcs:// (gRPC over TLS) or '
                  'http(s)://host:port (REST); several (replicas, regions) separated by commas.'),
    ParameterSpec('model', 'rcnn', 'Model name on the server.'),
    ParameterSpec('token', '', 'Bearer token; empty sends none (see token_file).'),
    ParameterSpec('token_file', '',
                  'File whose first line is the bearer token: kept out of the parameter '
                  'server, where anyone on the ROS graph can read it; excludes token.'),
    ParameterSpec('ca_file', '',
                  'PEM CA file that verifies a grpcs:// or https:// service; empty trusts the '
                  "system's CAs."),
    ParameterSpec('image_topic', '/camera/image_raw', 'Camera topic (sensor_msgs/Image).'),
    ParameterSpec('compressed', False, 'Subscribe to <image_topic>/compressed instead.'),
    ParameterSpec('deadline_ms', 250.0, 'Deadline applied while no decision is valid.',
                  minimum=1.0, maximum=60000.0),
    ParameterSpec('max_retries', 1,
                  'Retries of a refused or dropped connection, only while the deadline allows.',
                  minimum=0, maximum=10),
    ParameterSpec('breaker_threshold', 3, 'Consecutive failures that open the circuit breaker.',
                  minimum=1, maximum=1000),
    ParameterSpec('breaker_cooldown_ms', 1000.0, 'Open time before the breaker probes again.',
                  minimum=0.0, maximum=600000.0),
    ParameterSpec('max_in_flight', 2,
                  'Requests in flight at once (their round trips overlap).', minimum=1,
                  maximum=64),
    ParameterSpec('max_pending', 1,
                  'Frames waiting for a free request; when full the oldest is dropped.',
                  minimum=1, maximum=64),
    ParameterSpec('sampling', 'uniform',
                  'Which of one-in-n frames go to the cloud: uniform (every n-th) or content '
                  "(where the edge's newest result is unsure or changing; same rate)."),
    ParameterSpec('edge_sources', ['edge'],
                  'source_name of the edge targets whose results content sampling reads.'),
    ParameterSpec('hedge_share', 0.1,
                  'With several urls: most requests sent again to a second endpoint when the '
                  'first is slow, as a share of all requests (0: never).',
                  minimum=0.0, maximum=1.0),
    ParameterSpec('robot_id', '',
                  "This robot's id on a shared service (its fair turn, its metrics); empty: "
                  "the host's name."),
)


@dataclass(frozen=True)
class CloudConfig:
    """Validated cloud bridge parameters (see :data:`PARAMETERS`)."""

    url: str
    model: str
    token: str
    token_file: str
    ca_file: str
    image_topic: str
    compressed: bool
    deadline_ms: float
    max_retries: int
    breaker_threshold: int
    breaker_cooldown_ms: float
    max_in_flight: int
    max_pending: int
    sampling: str
    edge_sources: list
    hedge_share: float
    robot_id: str

    @classmethod
    def from_params(cls, values: Mapping[str, Any] | None = None) -> CloudConfig:
        """Build from parameter values over the defaults.

        Raises:
            ConfigError: For unknown names, wrong types or a URL no transport speaks.
        """
        config = cls(**resolve(PARAMETERS, values))
        if config.token and config.token_file:
            raise ConfigError('give token or token_file, not both')
        make_sampler(config.sampling)  # a name it does not know fails here
        if config.max_in_flight < 1 or config.max_pending < 1:
            raise ConfigError('max_in_flight and max_pending must be >= 1')
        config.make_transport().close()  # validates the URL; connections open lazily
        return config

    def make_transport(self) -> InferenceTransport:
        """Build the transport for the URL's scheme; several URLs: one that hedges over them.

        Raises:
            ConfigError: For a URL no transport speaks.
        """
        token, robot = self.bearer_token(), self.robot_id or socket.gethostname()
        transports = [(url, make_transport(url, self.model, token, self.ca_file, robot))
                      for url in self.urls()]
        if len(transports) == 1:
            return transports[0][1]
        return HedgedEndpoints(transports, self.hedge_share)

    def urls(self) -> list[str]:
        """Return the endpoint URLs of ``url`` (comma-separated).

        Raises:
            ConfigError: If it names none, or one twice.
        """
        urls = [u.strip() for u in self.url.split(',') if u.strip()]
        if not urls:
            raise ConfigError('url names no endpoint')
        if len(set(urls)) != len(urls):
            raise ConfigError(f'url names an endpoint twice: {self.url!r}')
        return urls

    def bearer_token(self) -> str:
        """Return the token, read from ``token_file`` when that is set.

        Raises:
            ConfigError: If the file cannot be read or its first line is empty.
        """
        if not self.token_file:
            return self.token
        try:
            lines = Path(self.token_file).read_text(encoding='utf-8').splitlines()
        except (OSError, UnicodeDecodeError) as err:
            raise ConfigError(f'token_file {self.token_file!r}: {err}') from err
        token = lines[0].strip() if lines else ''
        if not token:
            raise ConfigError(f'token_file {self.token_file!r} has no token on its first line')
        return token

    def make_bridge(self, transport: InferenceTransport | None = None) -> CloudBridge:
        """Build the bridge core with this configuration's breaker and retries."""
        return CloudBridge(transport or self.make_transport(), max_retries=self.max_retries,
                           breaker=CircuitBreaker(self.breaker_threshold,
                                                  self.breaker_cooldown_ms), model=self.model,
                           sampler=make_sampler(self.sampling,
                                                random.randrange(SAMPLING_PHASES)))

    def sampled_sources(self) -> tuple[str, ...]:
        """Return the edge sources whose results the sampler reads (none for uniform)."""
        return tuple(self.edge_sources) if self.sampling == 'content' else ()


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
    """

    SOURCE = 'cloud'

    def __init__(self, transport: InferenceTransport,
                 clock: Callable[[], int] = time.perf_counter_ns, max_retries: int = 1,
                 breaker: CircuitBreaker | None = None, model: str = '',
                 sampler: Sampler | None = None, rng: random.Random | None = None) -> None:
        self._transport = transport
        self._clock = clock
        self._sampling: Sampler = sampler or UniformSampler()
        self._lock = threading.Lock()  # frame count, breaker and link estimates
        self._retries = max_retries
        self.breaker = breaker or CircuitBreaker()
        self.link = LinkEstimator()
        self.model = model
        self._rng = rng or random.Random()
        self._backoff_until = 0

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
        try:
            frame = image_to_frame(msg)
            image, scale = _shrink(frame.image, decision.cloud_max_side)
            jpeg = encode_image(image, 'jpeg', decision.jpeg_quality)
        except ConversionError as err:
            return None, self._link(replace(report, status='failed', reason=str(err)))
        with self._lock:
            now = self._clock()
            backoff = now < self._backoff_until
            allowed = not backoff and self.breaker.allow(now)
        if not allowed:
            return None, self._link(replace(report, status='failed',
                                            reason='backoff' if backoff else 'circuit_open'))
        try:
            reply, retried_bytes = self._request(jpeg, deadline_ns)
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
        return (DetectionSet(stamp_ns, frame_id, self.SOURCE, dets, self.model),
                self._link(replace(report, detections=len(dets), inference_ms=reply.request_ms,
                                   total_ms=total_ms,
                                   bytes_sent=reply.bytes_sent + retried_bytes,
                                   imgsz=max(image.shape[:2]),
                                   server_ms=reply.server_ms or 0.0,
                                   queue_ms=reply.queue_ms or 0.0)))

    def _request(self, jpeg: bytes, deadline_ns: int) -> tuple[CloudReply, int]:
        """Send with retries of connection failures while the deadline leaves time.

        Returns:
            The reply, and the bytes that failed attempts before it had sent.

        Raises:
            CloudError: The last failure, with the bytes of every attempt.
        """
        attempt, sent = 0, 0
        while True:
            left_s = (deadline_ns - self._clock()) / 1e9
            try:
                return self._transport.infer(jpeg, left_s), sent
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
