"""Plain data types shared by every core, and the versioned JSON carried in ``std_msgs/String``.

Decisions, per-frame records, inference reports and health events travel as JSON objects with a
``schema`` name and a ``version``. The dataclasses below (and the health and fault records of
:mod:`adaptive_offload.health_records`) are the one definition of those schemas;
``docs/messages.md`` documents them for users.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
import enum
import json
from typing import Any, TypeVar

from adaptive_offload.errors import ConversionError

SCHEMA_VERSION = 1

T = TypeVar('T', bound='JsonRecord')


class Route(str, enum.Enum):
    """Where a frame is processed."""

    EDGE = 'edge'
    CLOUD = 'cloud'
    HEDGED = 'hedged'
    SPLIT = 'split'  # the cloud model's head on the robot, its tail in the cloud

    @property
    def uses_edge(self) -> bool:
        """Whether the local detector runs on frames of this route."""
        return self is Route.EDGE or self is Route.HEDGED

    @property
    def uses_cloud(self) -> bool:
        """Whether frames of this route may be sent to the cloud."""
        return self is not Route.EDGE


class Level(enum.IntEnum):
    """Health levels, numerically equal to ``diagnostic_msgs/DiagnosticStatus`` constants."""

    OK = 0
    WARN = 1
    ERROR = 2
    STALE = 3


@dataclass(frozen=True)
class Detection:
    """One detected object, in pixels of the original image.

    Attributes:
        x1: Left edge.
        y1: Top edge.
        x2: Right edge.
        y2: Bottom edge.
        score: Confidence in [0, 1].
        class_name: Human-readable class (what goes into ``class_id`` of vision_msgs).
    """

    x1: float
    y1: float
    x2: float
    y2: float
    score: float
    class_name: str

    def iou(self, other: Detection) -> float:
        """Return the intersection over union of this box and ``other``."""
        w = min(self.x2, other.x2) - max(self.x1, other.x1)
        h = min(self.y2, other.y2) - max(self.y1, other.y1)
        if w <= 0 or h <= 0:
            return 0.0
        inter = w * h
        union = (self.x2 - self.x1) * (self.y2 - self.y1) + \
            (other.x2 - other.x1) * (other.y2 - other.y1) - inter
        return inter / union if union > 0 else 0.0


@dataclass(frozen=True)
class DetectionSet:
    """Detections of one frame from one source.

    Attributes:
        stamp_ns: Header stamp of the source image, in nanoseconds.
        frame_id: Header frame_id of the source image.
        source: ``edge`` or ``cloud`` (or the namespaced name of an edge target).
        detections: The detections.
        model: Name of the model that produced them.
    """

    stamp_ns: int
    frame_id: str
    source: str
    detections: tuple[Detection, ...]
    model: str = ''


@dataclass(frozen=True)
class Frame:
    """A decoded camera frame.

    Attributes:
        stamp_ns: Header stamp in nanoseconds; with frame_id, the key of the frame everywhere.
        frame_id: Header frame_id.
        image: HxWx3 uint8 array in BGR order (OpenCV and ultralytics convention).
        encoding: Encoding of the message it came from (``rgb8``, ``jpeg``, ...).
    """

    stamp_ns: int
    frame_id: str
    image: Any
    encoding: str

    @property
    def width(self) -> int:
        """Image width in pixels."""
        return int(self.image.shape[1])

    @property
    def height(self) -> int:
        """Image height in pixels."""
        return int(self.image.shape[0])


@dataclass(frozen=True)
class JsonRecord:
    """Mixin giving a dataclass a versioned JSON form.

    Subclasses set ``SCHEMA``; enum fields serialise to their values.
    """

    SCHEMA = ''

    def to_json(self) -> str:
        """Serialise to compact JSON with ``schema`` and ``version`` fields.

        Returns:
            JSON text.
        """
        body = {'schema': self.SCHEMA, 'version': SCHEMA_VERSION}
        for fld in dataclasses.fields(self):
            value = getattr(self, fld.name)
            body[fld.name] = value.value if isinstance(value, enum.Enum) else value
        return json.dumps(body, separators=(',', ':'), sort_keys=True)

    @classmethod
    def from_json(cls: type[T], text: str) -> T:
        """Parse JSON made by :meth:`to_json`.

        Unknown fields are ignored so that newer publishers stay readable; missing fields take
        their defaults, and a missing field without default is an error.

        Args:
            text: JSON text.

        Returns:
            The record.

        Raises:
            ConversionError: If the text is not JSON of this schema and version.
        """
        try:
            body = json.loads(text)
        except (TypeError, ValueError) as err:
            raise ConversionError('bad_json', f'{cls.SCHEMA}: {err}') from err
        if not isinstance(body, dict) or body.get('schema') != cls.SCHEMA:
            raise ConversionError('bad_json', f'expected schema {cls.SCHEMA!r}')
        if body.get('version') != SCHEMA_VERSION:
            raise ConversionError(
                'bad_json', f'{cls.SCHEMA}: version {body.get("version")!r} != {SCHEMA_VERSION}')
        names = {fld.name for fld in dataclasses.fields(cls)}
        try:
            record = cls(**{k: v for k, v in body.items() if k in names})
        except (TypeError, ValueError) as err:
            raise ConversionError('bad_json', f'{cls.SCHEMA}: {err}') from err
        return record


@dataclass(frozen=True)
class Decision(JsonRecord):
    """A routing policy issued by the offload manager and applied by every worker.

    Workers apply the newest valid decision to each frame on their own; when the newest one has
    expired (the manager died), :meth:`safe_default` applies: edge only.

    Attributes:
        seq: Increasing sequence number; a worker ignores a decision older than one it has.
        issued_ns: Manager clock (ROS time) when issued.
        valid_for_ms: Validity period after ``issued_ns``.
        route: Where frames go.
        edge_model: Edge model name (a key of the edge node's model table).
        edge_imgsz: Edge inference input size in pixels.
        jpeg_quality: JPEG quality for frames sent to the cloud (1-100).
        cloud_max_side: Longest image side sent to the cloud; 0 keeps the original size.
        offload_every: Send every n-th frame to the cloud (1 = every frame).
        hedge_delay_ms: For hedged routes, how long after the frame the cloud request starts.
        probe_every: On a one-sided route, every n-th frame also goes to the other side as
            a probe nobody waits for: to the cloud on the edge route (it measures the cloud),
            to the edge on the cloud route (it measures the edge, and serves the frame if
            the cloud fails). 0 = none.
        deadline_ms: Deadline a result must meet, measured from frame arrival.
        policy: Name of the policy that made the decision.
        reason: Why the policy chose this, for humans.
        unmet: The user's bounds no option met, comma-separated (``energy budget``,
            ``accuracy floor``, ``cloud spend cap``, ``deadline``); empty when all are met.
        split: On the split route, the split option (``arch@imgsz:point:encoding``); on the
            edge route, a split of the edge detector (``model@imgsz:k/end:encoding``) that the
            robot's split head runs to layer ``k``, its tail on an edge computer running the
            rest; empty: the whole edge detector (or a head's own ``split_point``).
        split_probe: On the edge route with no ``split`` (the robot's own model), a split of
            the edge detector (``model@imgsz:k/end:encoding``) that the robot's split head
            also sends on every ``probe_every``-th frame it answers itself: the tail's answer
            measures the split while the robot does not use it. Empty: none.
    """

    SCHEMA = 'adaptive_offload/Decision'

    seq: int = 0
    issued_ns: int = 0
    valid_for_ms: float = 2000.0
    route: Route = Route.EDGE
    edge_model: str = ''
    edge_imgsz: int = 640
    jpeg_quality: int = 75
    cloud_max_side: int = 0
    offload_every: int = 1
    hedge_delay_ms: float = 0.0
    probe_every: int = 0
    deadline_ms: float = 250.0
    policy: str = ''
    reason: str = ''
    unmet: str = ''
    split: str = ''
    split_probe: str = ''

    def __post_init__(self) -> None:
        object.__setattr__(self, 'route', Route(self.route))
        if not 1 <= int(self.jpeg_quality) <= 100:
            raise ValueError(f'jpeg_quality {self.jpeg_quality} not in 1..100')
        if int(self.offload_every) < 1 or float(self.valid_for_ms) <= 0 or \
                int(self.probe_every) < 0:
            raise ValueError('offload_every must be >= 1, probe_every >= 0 and valid_for_ms > 0')

    def is_valid(self, now_ns: int) -> bool:
        """Whether the decision still applies at ``now_ns`` (same clock as ``issued_ns``)."""
        return self.issued_ns <= now_ns + 1_000_000 and \
            now_ns - self.issued_ns <= self.valid_for_ms * 1e6

    @classmethod
    def safe_default(cls, edge_model: str = '', edge_imgsz: int = 640,
                     deadline_ms: float = 250.0) -> Decision:
        """Return the decision applied when no valid one is known: edge only, never the cloud."""
        return cls(seq=-1, route=Route.EDGE, edge_model=edge_model, edge_imgsz=edge_imgsz,
                   deadline_ms=deadline_ms, policy='safe-default',
                   reason='no valid decision from the manager')


@dataclass(frozen=True)
class InferenceReport(JsonRecord):
    """What a worker (edge or cloud) did with one frame; published on ``*/telemetry``.

    Attributes:
        stamp_ns: Header stamp of the frame.
        frame_id: Header frame_id of the frame.
        source: ``edge`` or ``cloud``.
        status: ``ok``, ``skipped`` (not routed to this source), ``dropped`` (never
            processed), ``refused`` (its stamp repeated or went back: the report concerns the
            refused frame, not the earlier frame with that key), ``forwarded`` (a split
            detector's head ran its layers and sent the rest on: its tail, another source,
            answers) or ``failed``.
        reason: Why it was dropped or failed; empty when ok.
        model: Model used.
        imgsz: Input size used.
        inference_ms: Model time.
        total_ms: Time from receipt by the worker to the result (decode, queueing, inference,
            and for the cloud the whole request).
        detections: Number of detections.
        bytes_sent: Bytes sent over the network (cloud only).
        decision_seq: Sequence number of the decision applied.
        server_ms: Server-side time of the request (cloud only, when the server says).
        queue_ms: The part of ``server_ms`` the request waited in the service's queue (cloud
            only, when the server says): the shared service's load.
        rtt_ms: Median recent round trip (cloud only).
        uplink_mbps: Median recent uplink bandwidth estimate (cloud only).
        breaker: Circuit breaker state after the frame (cloud only).
        encode_ms: Robot time to make the image request (cloud only: conversion, resize, JPEG
            encode), charged as robot compute; a split request's is in its ``inference_ms``.
            A split head's ``forwarded`` report gives its wire encode here too.
        split: The edge detector's split option this frame ran on
            (``model@imgsz:k/end:encoding``, :mod:`adaptive_offload.split_option`): on its
            head's ``forwarded`` report and on its tail's answer; empty otherwise.
        split_role: ``head`` on every report of a split detector's head, ``tail`` on its
            tail's, empty otherwise. A frame a head answers, fails or skips itself never
            reaches its tail: knowing the head, the manager settles the tail's part at once.
        split_probe: On a head's ``ok`` report of a frame it answered itself, the split
            option it also sent the frame on as a probe (``Decision.split_probe``); its
            ``encode_ms`` and ``bytes_sent`` are the probe's. Empty otherwise.
        split_unsent: On a head's ``ok`` report of a frame it answered itself because no tail
            took its split frames, the split the decision named. Empty otherwise.
    """

    SCHEMA = 'adaptive_offload/InferenceReport'

    stamp_ns: int = 0
    frame_id: str = ''
    source: str = ''
    status: str = 'ok'
    reason: str = ''
    model: str = ''
    imgsz: int = 0
    inference_ms: float = 0.0
    total_ms: float = 0.0
    detections: int = 0
    bytes_sent: int = 0
    decision_seq: int = -1
    server_ms: float = 0.0
    rtt_ms: float = 0.0
    uplink_mbps: float = 0.0
    breaker: str = ''
    queue_ms: float = 0.0
    encode_ms: float = 0.0
    split: str = ''
    split_role: str = ''
    split_probe: str = ''
    split_unsent: str = ''


@dataclass(frozen=True)
class FrameRecord(JsonRecord):
    """The fate of one input frame; exactly one per frame that entered.

    Attributes:
        index: Arrival order of the frame at the manager (0-based).
        stamp_ns: Header stamp.
        frame_id: Header frame_id.
        route: Route of the decision applied.
        sources: Sources that returned a result.
        result_source: Source of the published result; empty when dropped.
        latency_ms: Arrival to published result; None when dropped.
        deadline_ms: Deadline applied.
        deadline_met: Whether a result was published within the deadline.
        drop_reason: Why no result was published; empty when one was.
        detections: Number of detections in the published result.
        decision_seq: Sequence number of the decision applied.
        reason: Notes from the sources (failures that did not prevent a result).
        energy_j: Robot energy spent on the frame; None when no device profile is known.
        energy_measured: Whether ``energy_j`` was measured (RAPL, NVML) or modelled.
        recall: Share of the frame's true boxes found by the published result (IoU 0.5, same
            class); None when no ground truth is known (a live robot).
        precision: Share of the published detections that are true; None without ground
            truth or without detections.
        edge_map_estimate: The manager's estimate, when the frame ended, of the mAP@[.5:.95]
            (0-100) of the edge model and input size of the decision in force: the prior
            corrected by edge/cloud agreement; None when the policy keeps no estimate (the
            fixed-route baselines).
        agreement_samples: Edge/cloud agreement samples the manager had taken when the frame
            ended (every edge model together; one per frame both sides answered).
        split: The split option of the decision applied (``Decision.split``); empty if none.
    """

    SCHEMA = 'adaptive_offload/FrameRecord'

    index: int = 0
    stamp_ns: int = 0
    frame_id: str = ''
    route: str = ''
    sources: list[str] = field(default_factory=list)
    result_source: str = ''
    latency_ms: float | None = None
    deadline_ms: float = 0.0
    deadline_met: bool = False
    drop_reason: str = ''
    detections: int = 0
    decision_seq: int = -1
    reason: str = ''
    energy_j: float | None = None
    energy_measured: bool = False
    recall: float | None = None
    precision: float | None = None
    edge_map_estimate: float | None = None
    agreement_samples: int = 0
    split: str = ''

    @property
    def dropped(self) -> bool:
        """Whether the frame ended without a result."""
        return bool(self.drop_reason)
