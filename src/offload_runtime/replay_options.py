"""What a replay is asked to do (:class:`ReplayOptions`) and gives (:class:`ReplayResult`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from adaptive_offload.datatypes import FrameRecord, InferenceReport
from adaptive_offload.health_records import HealthEvent
from fault_injection.fault_measures import FaultMeasure
from fault_injection.scenario import Scenario
from offload_runtime.accuracy_tracking import TrackingSettings
from rcnn_service.service import ServiceConfig


@dataclass(frozen=True)
class ReplayOptions:
    """What to replay and how.

    Attributes:
        bag: Input bag.
        out: Output bag folder (must not exist).
        rate: Playback rate factor; 0 plays as fast as the graph can take frames.
        max_frames: Stop after this many frames; 0 plays all.
        topic: Image topic; empty picks the bag's only image topic.
        params: Parameter file content (``{node: {param: value}}``).
        params_file: Where ``params`` came from, named when a parameter is refused.
        overrides: Per-node parameter overrides applied over ``params``. When
            ``edge_inference`` is a split head (``split_role: head``), the replay also runs its
            tail with the head's parameters, as ``edge.launch.py`` starts it on a Pi;
            ``edge_inference_tail`` (:data:`offload_runtime.replay_split.TAIL`) gives the
            tail's own values over them (its ``source_name``, another ``split_point``...).
        distro: ROS distribution whose message definitions are written.
        progress: Show a progress line on stderr.
        service: The embedded cloud service started when a cloud policy has no
            ``cloud_bridge`` url (host and port are always loopback and free).
        service_alternatives: Architectures (and checkpoints) the embedded service falls
            back on, in order, when ``service``'s cannot answer within the deadline here.
        service_timeout_s: Longest wait for the embedded service to be ready.
        scenario: Faults injected into the run, timed from its start; each is measured (time
            to detect and recover, frames late and dropped).
        injector: Where network faults are injected: ``client``, ``proxy`` or ``netns``.
        tracking: Windows and thresholds of the edge accuracy tracking (summarised when the
            bag has ground truth; see :mod:`offload_runtime.accuracy_tracking`).
    """

    bag: Path
    out: Path
    rate: float = 1.0
    max_frames: int = 0
    topic: str = ''
    params: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    params_file: str = ''
    overrides: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    distro: str = 'jazzy'
    progress: bool = False
    service: ServiceConfig = field(default_factory=ServiceConfig)
    service_alternatives: tuple[ServiceConfig, ...] = ()
    service_timeout_s: float = 300.0
    scenario: Scenario | None = None
    injector: str = 'client'
    tracking: TrackingSettings = field(default_factory=TrackingSettings)


@dataclass
class ReplayResult:
    """What a replay produced (records in frame arrival order).

    ``routes`` holds (seconds since the start, route) of every decision issued;
    ``interrupted`` tells a run ended by :meth:`Replay.stop` before the end of the bag.
    ``frames_s`` is the part of ``wall_s`` from the player's start to the last record
    written: the run without its start-up (opening the output bag, declaring its topics)
    and finish (stopping the workers, closing the bag).
    """

    records: list[FrameRecord]
    events: list[HealthEvent]
    summary: dict[str, Any]
    out: Path
    wall_s: float
    faults: list[FaultMeasure] = field(default_factory=list)
    reports: list[InferenceReport] = field(default_factory=list)
    routes: list[tuple[float, str]] = field(default_factory=list)
    interrupted: bool = False
    frames_s: float = 0.0
