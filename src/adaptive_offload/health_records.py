"""The health and fault records: a check's state, its changes, and injected faults.

:class:`HealthEvent` and :class:`FaultEvent` travel as versioned JSON in ``std_msgs/String``
(:class:`adaptive_offload.datatypes.JsonRecord`), documented in ``docs/messages.md``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from adaptive_offload.datatypes import JsonRecord, Level


@dataclass(frozen=True)
class HealthStatus:
    """The state of one health check, as a ``diagnostic_msgs/DiagnosticStatus`` carries it.

    Attributes:
        name: Check name, e.g. ``adaptive_offload: /camera/image_raw rate``.
        level: Level.
        message: One-line summary.
        hardware_id: What the check is about (a host, a topic's publisher, the cloud URL).
        values: Key values, in order.
    """

    name: str
    level: Level
    message: str
    hardware_id: str = ''
    values: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class HealthEvent(JsonRecord):
    """A change of level of a health check; published on ``/health/events``.

    Attributes:
        stamp_ns: When the change was seen (monitor clock).
        name: Check name.
        level: New level (numeric, as :class:`Level`).
        previous: Previous level.
        message: The check's message.
    """

    SCHEMA = 'adaptive_offload/HealthEvent'

    stamp_ns: int = 0
    name: str = ''
    level: int = 0
    previous: int = 0
    message: str = ''


@dataclass(frozen=True)
class FaultEvent(JsonRecord):
    """An injected fault starting or ending; published on ``/health/faults``.

    Attributes:
        t_s: Seconds from the start of the run.
        kind: Fault kind.
        phase: ``start`` or ``end``.
        params: The fault's parameters.
        duration_s: How long the fault lasts (a node that obeys it never holds it longer).
    """

    SCHEMA = 'adaptive_offload/FaultEvent'

    t_s: float = 0.0
    kind: str = ''
    phase: str = 'start'
    params: dict = field(default_factory=dict)
    duration_s: float = 0.0
