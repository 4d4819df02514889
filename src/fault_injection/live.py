"""Fault injection into a running graph (a robot's, under ROS), and its measures.

The health monitor node runs a :class:`Rehearsal` when given a scenario. Network faults go
through the TCP fault proxy the cloud bridge's URL points at; process faults signal the
service process that listens on ``service_port`` on this host (its supervisor, systemd or
Kubernetes, restarts a killed one); CPU contention starts hogs on this host; edge stalls and
manager death are announced on ``/health/faults``, which the edge and manager nodes obey when
told to (:class:`ObeyedFaults`). Every start and end is announced there, and each fault's
detection and recovery times are measured from the frame records and reports the graph
publishes, as in the replay.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from typing import Any, Callable, Mapping
from urllib.parse import urlsplit, urlunsplit

from adaptive_offload import topics
from adaptive_offload.datatypes import Decision, DetectionSet, FrameRecord, InferenceReport, Level
from adaptive_offload.errors import ConfigError
from adaptive_offload.health_records import FaultEvent, HealthEvent, HealthStatus
from adaptive_offload.params import node_params
from fault_injection.fault_measures import FaultMeasure, measure
from fault_injection.fault_proxy import FaultProxy
from fault_injection.processes import CpuHogs, pid_listening_on
from fault_injection.scenario import (Announcer, load_scenario, NETWORK_KINDS, PROCESS_KINDS,
                                      refuse_lan_kinds, refuse_service_kinds, Scenario)

OBEYED_KINDS = frozenset({'edge_stall', 'manager_death'})
_SIGNALS = {('service_stop', 'start'): signal.SIGSTOP, ('service_stop', 'end'): signal.SIGCONT,
            ('service_kill', 'start'): signal.SIGKILL}


class Rehearsal:
    """A scenario injected into the live graph from :meth:`start`, ticked by its node.

    Args:
        scenario: The faults.
        clock: Monotonic nanosecond clock (the node's).
        proxy_listen: ``(host, port)`` the fault proxy listens on; the bridge's URL points
            there. Needed when the scenario has network faults.
        proxy_upstream: ``(host, port)`` of the real service behind the proxy.
        service_port: Port the service listens on, on this host, for process faults.
        kill: Sends a signal to a process (injected in tests).

    Raises:
        ConfigError: If the scenario needs a proxy or a service port it was not given.
    """

    name = topics.CHECK_FAULT_INJECTION

    def __init__(self, scenario: Scenario, clock: Callable[[], int] = time.monotonic_ns,
                 proxy_listen: tuple[str, int] | None = None,
                 proxy_upstream: tuple[str, int] | None = None, service_port: int = 0,
                 kill: Callable[[int, int], None] = os.kill) -> None:
        refuse_service_kinds(scenario, 'health_monitor')
        refuse_lan_kinds(scenario, 'health_monitor')
        kinds = scenario.kinds()
        if kinds & NETWORK_KINDS and (proxy_listen is None or proxy_upstream is None):
            raise ConfigError(f'scenario {scenario.name!r} has network faults: set '
                              'fault_proxy_port and fault_proxy_upstream, and point the '
                              "bridge's url at the proxy")
        if kinds & PROCESS_KINDS and not service_port:
            raise ConfigError(f'scenario {scenario.name!r} has process faults: set '
                              'service_port (the service must run on this host)')
        self.scenario = scenario
        self._clock = clock
        self._kill = kill
        self._service_port = service_port
        self._origin: int | None = None
        self._announcer = Announcer(scenario)
        self._hogs: CpuHogs | None = None
        self._proxy = FaultProxy(proxy_upstream, scenario.only(NETWORK_KINDS),
                                 host=proxy_listen[0], port=proxy_listen[1], clock=clock) \
            if proxy_listen is not None and proxy_upstream is not None else None
        self.records: list[tuple[float, FrameRecord]] = []
        self.reports: list[tuple[float, InferenceReport]] = []
        self.events: list[tuple[float, HealthEvent]] = []
        self.notes: list[str] = []

    def start(self) -> None:
        """Start the scenario's time (and the proxy, which passes traffic until a fault)."""
        self._origin = self._clock()
        if self._proxy is not None:
            self._proxy.start(self._origin)

    @property
    def started(self) -> bool:
        """Whether :meth:`start` was called."""
        return self._origin is not None

    def now_s(self) -> float:
        """Scenario time, seconds (0 before the start)."""
        return 0.0 if self._origin is None else (self._clock() - self._origin) / 1e9

    def tick(self) -> list[FaultEvent]:
        """Apply what starts or ends now; returns the announcements for ``/health/faults``."""
        if self._origin is None:
            return []
        out = []
        for fault, event in self._announcer.due(self.now_s()):
            self._apply(fault.kind, event.phase, dict(fault.params))
            out.append(event)
        return out

    def _apply(self, kind: str, phase: str, params: dict[str, float]) -> None:
        signum = _SIGNALS.get((kind, phase))
        if signum is not None:
            pid = pid_listening_on(self._service_port)
            if pid is None:
                self.notes.append(f'{kind} {phase}: no process listens on port '
                                  f'{self._service_port} on this host')
            else:
                self._kill(pid, signum)
        elif kind == 'cpu_contention' and phase == 'start':
            self._hogs = CpuHogs.for_slowdown(params['slowdown'])
            self._hogs.start()
        elif kind == 'cpu_contention' and self._hogs is not None:
            self._hogs.stop()
            self._hogs = None

    def on_record(self, record: FrameRecord, now_ns: int = 0) -> None:
        """Take a frame record from ``/offload/frames`` (the graph's handler)."""
        self.records.append((self.now_s(), record))

    def on_report(self, report: InferenceReport, now_ns: int = 0) -> None:
        """Take an edge or cloud report (the graph's handler)."""
        self.reports.append((self.now_s(), report))

    def on_health_event(self, event: HealthEvent) -> None:
        """Take one of the monitor's own level changes."""
        self.events.append((self.now_s(), event))

    def measures(self) -> list[FaultMeasure]:
        """Each fault's detection and recovery so far (see ``fault_measures.measure``)."""
        return measure(self.scenario, self.records, self.reports, self.events)

    def run(self, now_ns: int) -> HealthStatus:
        """Report the faults and their measures (a health check: see ``HealthCheck``)."""
        active = [f.kind for f in self.scenario.active(self.now_s())] \
            if self._origin is not None else []
        values = []
        for m in self.measures():
            if m.start_s <= self.now_s():
                values.append((f'{m.kind}@{m.start_s:g}s', _measure_text(m)))
        message = f'scenario {self.scenario.name}: ' + (
            f'{", ".join(active)} in force' if active else 'no fault in force')
        return HealthStatus(self.name, Level.WARN if active else Level.OK, message, '',
                            tuple(values) + tuple(('note', n) for n in self.notes[-3:]))

    def summary(self) -> list[str]:
        """One line per fault, as ``replay`` prints them."""
        return [f'fault {m.kind} at {m.start_s:.1f} s: {_measure_text(m)}'
                for m in self.measures() if m.start_s <= self.now_s()]

    def close(self) -> None:
        """Undo what is in force (continue a stopped service, stop hogs and the proxy)."""
        if any(f.kind == 'service_stop' for f in self._announcer.in_force()):
            self._apply('service_stop', 'end', {})
        if self._hogs is not None:
            self._hogs.stop()
            self._hogs = None
        if self._proxy is not None:
            self._proxy.stop()


def _measure_text(m: FaultMeasure) -> str:
    def ms(value: float | None) -> str:
        return '-' if value is None else f'{value * 1e3:.0f} ms'
    return (f'detected {ms(m.detect_s)} (on /diagnostics {ms(m.diagnosed_s)}), recovered '
            f'{ms(m.recover_s)}, {m.late} late, {m.dropped} dropped')


class ObeyedFaults:
    """What a node obeys of ``/health/faults``: edge stalls and manager death.

    Each announced fault holds from its start event until its end event, and never longer
    than its duration, so a lost end event cannot stall a robot for good.

    Args:
        clock: Monotonic nanosecond clock.
    """

    def __init__(self, clock: Callable[[], int] = time.monotonic_ns) -> None:
        self._clock = clock
        self._until: dict[str, int] = {}
        self._changed = threading.Condition()

    def on_fault(self, event: FaultEvent, now_ns: int = 0) -> None:
        """Take an announcement (the graph's handler); kinds nobody obeys are ignored."""
        if event.kind not in OBEYED_KINDS:
            return
        with self._changed:
            if event.phase == 'start':
                self._until[event.kind] = self._clock() + int(event.duration_s * 1e9)
            else:
                self._until.pop(event.kind, None)
            self._changed.notify_all()

    def active(self, kind: str) -> bool:
        """Whether ``kind`` is in force now."""
        with self._changed:
            return self._clock() < self._until.get(kind, 0)

    def wait_stall(self, timeout_s: float = 3600.0) -> None:
        """Block while an edge stall is in force (the worker hangs as a stuck node would)."""
        with self._changed:
            while True:
                left = (self._until.get('edge_stall', 0) - self._clock()) / 1e9
                if left <= 0 or timeout_s <= 0:
                    return
                wait = min(left, timeout_s)
                self._changed.wait(wait)
                timeout_s -= wait


class StallingProcessor:
    """Wraps an edge core: while an obeyed edge stall is in force, a frame waits for its end."""

    def __init__(self, inner: Any, faults: ObeyedFaults) -> None:
        self._inner = inner
        self._faults = faults

    def process(self, msg: Any, decision: Decision,
                waited_ns: int = 0) -> tuple[DetectionSet | None, InferenceReport]:
        """See :class:`adaptive_offload.frame_worker.FrameProcessor`."""
        self._faults.wait_stall()
        return self._inner.process(msg, decision, waited_ns)

    def drop(self, stamp_ns: int, frame_id: str, reason: str,
             decision: Decision) -> InferenceReport:
        """See :class:`adaptive_offload.frame_worker.FrameProcessor`."""
        return self._inner.drop(stamp_ns, frame_id, reason, decision)


def parse_address(text: str, default_host: str = '127.0.0.1') -> tuple[str, int]:
    """Read ``host:port`` (or a bare port) into an address.

    Raises:
        ConfigError: If it is not an address.
    """
    host, _, port = text.rpartition(':')
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f'{text!r}: expected host:port')
    return (host or default_host, int(port))


def rehearsal_parameters(params: Mapping[str, Mapping[str, Any]], scenario: str,
                         proxy_port: int, service_port: int = 0) -> dict[str, dict[str, Any]]:
    """Per-node parameters, over a params file's, that rehearse ``scenario`` on a robot.

    Network faults put the fault proxy (on this host, ``proxy_port``) between the bridge and
    the service of the bridge's url; process faults signal the service on ``service_port``,
    by default the url's port when the service runs on this host; edge stalls and manager
    death are obeyed by the edge and the manager. Without a scenario nothing changes.

    Args:
        params: Parameter file content (``{node: {ros__parameters: ...}}`` or flat).
        scenario: A scenario file or a shipped name; empty: none.
        proxy_port: Port the fault proxy listens on.
        service_port: Port of the service on this host; 0: the url's, if local.

    Raises:
        ConfigError: If the scenario cannot be read or cannot be injected with this url.
    """
    if not scenario:
        return {}
    kinds = load_scenario(scenario).kinds()
    health: dict[str, Any] = {'scenario': scenario}
    out: dict[str, dict[str, Any]] = {'health_monitor': health}
    url = str(node_params(params, 'cloud_bridge').get('url', ''))
    if ',' in url and kinds & (NETWORK_KINDS | PROCESS_KINDS):
        raise ConfigError(f'scenario {scenario!r} injects faults in front of one endpoint: give '
                          f'cloud_bridge one url, not {url!r}')
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        port = None
    if kinds & (NETWORK_KINDS | PROCESS_KINDS) and (not parts.hostname or port is None):
        raise ConfigError(f'scenario {scenario!r} needs the cloud_bridge url with a host and '
                          f'a port, got {url!r}')
    if kinds & NETWORK_KINDS:
        health.update(fault_proxy_port=proxy_port,
                      fault_proxy_upstream=f'{parts.hostname}:{port}')
        out['cloud_bridge'] = {'url': urlunsplit(
            (parts.scheme, f'127.0.0.1:{proxy_port}', parts.path, parts.query, ''))}
    if kinds & PROCESS_KINDS:
        if not service_port and parts.hostname not in ('127.0.0.1', 'localhost', '::1'):
            raise ConfigError(f'scenario {scenario!r} stops or kills the service, which runs '
                              f'on {parts.hostname}, not here: set service_port')
        health['service_port'] = service_port or port
    if kinds & OBEYED_KINDS:
        out['edge_inference'] = {'obey_faults': True}
        out['offload_manager'] = {'obey_faults': True}
    sources = node_params(params, 'offload_manager').get('edge_sources')
    if sources:
        health['edge_sources'] = list(sources)
    return out
