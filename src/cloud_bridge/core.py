"""Cloud bridge core: pick frames by the decision, send them as JPEG, scale the reply back."""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from typing import Any, Callable, Mapping

import cv2

from adaptive_offload.conversions import boxes_from_arrays, encode_image, image_to_frame
from adaptive_offload.conversions import stamp_to_ns
from adaptive_offload.errors import CloudError, ConfigError, ConversionError
from adaptive_offload.params import ParameterSpec, resolve
from adaptive_offload.types import Decision, DetectionSet, InferenceReport
from cloud_bridge.transport import TRANSPORTS, InferenceTransport

PARAMETERS = (
    ParameterSpec('url', 'http://127.0.0.1:8080', 'Base URL of the V2 inference server.'),
    ParameterSpec('protocol', 'rest', 'Transport: rest.'),
    ParameterSpec('model', 'rcnn', 'Model name on the server.'),
    ParameterSpec('token', '', 'Bearer token; empty sends none.'),
    ParameterSpec('image_topic', '/camera/image_raw', 'Camera topic (sensor_msgs/Image).'),
    ParameterSpec('compressed', False, 'Subscribe to <image_topic>/compressed instead.'),
    ParameterSpec('deadline_ms', 250.0, 'Deadline applied while no decision is valid.'),
)


@dataclass(frozen=True)
class CloudConfig:
    """Validated cloud bridge parameters (see :data:`PARAMETERS`)."""

    url: str
    protocol: str
    model: str
    token: str
    image_topic: str
    compressed: bool
    deadline_ms: float

    @classmethod
    def from_params(cls, values: Mapping[str, Any] | None = None) -> CloudConfig:
        """Build from parameter values over the defaults.

        Raises:
            ConfigError: For unknown names, wrong types or an unknown protocol.
        """
        config = cls(**resolve(PARAMETERS, values))
        if config.protocol not in TRANSPORTS:
            raise ConfigError(f'protocol {config.protocol!r} (known: {", ".join(TRANSPORTS)})')
        return config

    def make_transport(self) -> InferenceTransport:
        """Build the configured transport."""
        return TRANSPORTS[self.protocol](self.url, self.model, self.token)


class CloudBridge:
    """Sends frames the decision selects to the service and returns its detections.

    Args:
        transport: Connection to the service.
        clock: Monotonic nanosecond clock for timings (injected in tests).
    """

    SOURCE = 'cloud'

    def __init__(self, transport: InferenceTransport,
                 clock: Callable[[], int] = time.perf_counter_ns) -> None:
        self._transport = transport
        self._clock = clock
        self._frames = 0
        self.model = ''

    def drop(self, stamp_ns: int, frame_id: str, reason: str,
             decision: Decision) -> InferenceReport:
        """Report a frame that was not processed (see :class:`FrameProcessor`)."""
        return InferenceReport(stamp_ns=stamp_ns, frame_id=frame_id, source=self.SOURCE,
                               status='dropped', reason=reason, decision_seq=decision.seq)

    def process(self, msg: Any, decision: Decision) -> tuple[DetectionSet | None, InferenceReport]:
        """Send one frame if the decision selects it (see :class:`FrameProcessor`)."""
        start = self._clock()
        stamp_ns, frame_id = stamp_to_ns(msg.header.stamp), str(msg.header.frame_id)
        report = InferenceReport(stamp_ns=stamp_ns, frame_id=frame_id, source=self.SOURCE,
                                 decision_seq=decision.seq)
        if not decision.route.uses_cloud:
            return None, replace(report, status='skipped', reason=f'route={decision.route.value}')
        self._frames += 1
        if (self._frames - 1) % decision.offload_every:
            return None, replace(report, status='skipped', reason='not_sampled')
        try:
            frame = image_to_frame(msg)
            image, scale = _shrink(frame.image, decision.cloud_max_side)
            jpeg = encode_image(image, 'jpeg', decision.jpeg_quality)
            left_s = decision.deadline_ms / 1e3 - (self._clock() - start) / 1e9
            reply = self._transport.infer(jpeg, left_s)
        except (ConversionError, CloudError) as err:
            return None, replace(report, status='failed', reason=str(err),
                                 total_ms=(self._clock() - start) / 1e6)
        dets = boxes_from_arrays(reply.boxes / scale, reply.scores,
                                 range(len(reply.labels)), list(reply.labels),
                                 frame.width, frame.height)
        total_ms = (self._clock() - start) / 1e6
        return (DetectionSet(stamp_ns, frame_id, self.SOURCE, dets, self.model),
                replace(report, detections=len(dets), inference_ms=reply.request_ms,
                        total_ms=total_ms, bytes_sent=reply.bytes_sent,
                        imgsz=max(image.shape[:2])))


def _shrink(image: Any, max_side: int) -> tuple[Any, float]:
    longest = max(image.shape[:2])
    if max_side <= 0 or longest <= max_side:
        return image, 1.0
    scale = max_side / longest
    size = (round(image.shape[1] * scale), round(image.shape[0] * scale))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA), scale
