"""Fault scenarios: a validated timeline of faults read from YAML.

A scenario file::

    name: cloud outage 10 s
    faults:
      - kind: cloud_outage
        start_s: 5.0
        duration_s: 10.0
      - kind: latency
        start_s: 20.0
        duration_s: 5.0
        delay_ms: 300
        jitter_ms: 50

Times are seconds from the start of the run. Faults of the same kind may not overlap.

A scenario may also replay failure traces, e.g. converted from the LANL failure data::

    traces:
      - file: lanl_node_20.csv     # columns start_s,duration_s (header row); relative to file
        kind: cloud_outage
        time_scale: 0.001          # trace seconds -> run seconds
        offset_s: 5.0
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from adaptive_offload.errors import ConfigError
from adaptive_offload.health_records import FaultEvent
from adaptive_offload.package_files import shipped_config
from adaptive_offload.scene_difficulty import parse_difficulty
from adaptive_offload.yaml_files import read_yaml

# kind -> parameters it takes (name -> default); a parameter without default is required
FAULT_KINDS: dict[str, dict[str, float | None]] = {
    'cloud_outage': {},
    'latency': {'delay_ms': None, 'jitter_ms': 0.0},
    'bandwidth': {'mbps': None},
    'lan_bandwidth': {'mbps': None},  # sim: the robot-to-edge-computer LAN (split routes)
    'lan_loss': {'probability': None},  # sim: that LAN loses a split payload (all of it)
    'loss': {'probability': None},
    'corruption': {'probability': 1.0},
    'cpu_contention': {'slowdown': 2.0},  # edge inference takes this many times longer
    'service_kill': {},    # the service process is killed; restarted when the fault ends
    'service_stop': {},    # the service process is stopped (SIGSTOP); continued at the end
    'edge_stall': {},      # the edge worker stops processing until the fault ends
    'manager_death': {},   # the manager issues no decisions until the fault ends
    'replica_crash': {'replicas': 1.0},  # fleet sim: replicas crash, each restarts in place
    'zone_outage': {'share': 0.5},       # fleet sim: the zones of this share of the replicas
}
NETWORK_KINDS = frozenset({'cloud_outage', 'latency', 'bandwidth', 'loss', 'corruption'})
PROCESS_KINDS = frozenset({'service_kill', 'service_stop'})
EDGE_KINDS = frozenset({'cpu_contention', 'edge_stall'})
SERVICE_KINDS = frozenset({'replica_crash', 'zone_outage'})
"""Faults of a replicated service: only the fleet simulation has replicas to fail."""
INSTANT_KINDS = frozenset({'replica_crash'})
"""Faults that happen at their start and take no duration_s."""
LAN_KINDS = frozenset({'lan_bandwidth', 'lan_loss'})
"""Faults of the robot's LAN to its edge computer: only the simulator models that link."""


def refuse_service_kinds(scenario: Scenario, where: str) -> None:
    """Raise if ``scenario`` has faults only the fleet simulation can play.

    Raises:
        ConfigError: Naming the kinds and where they can run.
    """
    _refuse(scenario, SERVICE_KINDS, where,
            'only the fleet simulation plays (evaluate --mode sim --robots N --replicas R)')


def refuse_lan_kinds(scenario: Scenario, where: str) -> None:
    """Raise if ``scenario`` has faults of the robot's LAN, which only the simulator plays.

    Raises:
        ConfigError: Naming the kinds and where they can run.
    """
    _refuse(scenario, LAN_KINDS, where,
            'only the simulator plays (evaluate --mode sim): live, throttle the link with tc')


def _refuse(scenario: Scenario, kinds: frozenset[str], where: str, plays: str) -> None:
    found = scenario.kinds() & kinds
    if found:
        raise ConfigError(f'{where}: scenario {scenario.name!r} has {", ".join(sorted(found))}, '
                          f'which {plays}')


@dataclass(frozen=True)
class Fault:
    """One fault of a scenario.

    Attributes:
        kind: One of :data:`FAULT_KINDS`.
        start_s: Start, seconds from the start of the run.
        duration_s: How long it lasts.
        params: The kind's parameters, defaults filled in.
    """

    kind: str
    start_s: float
    duration_s: float
    params: Mapping[str, float] = field(default_factory=dict)

    @property
    def end_s(self) -> float:
        """End, seconds from the start of the run."""
        return self.start_s + self.duration_s

    def active(self, t_s: float) -> bool:
        """Whether the fault is in force at ``t_s``."""
        return self.start_s <= t_s < self.end_s


@dataclass(frozen=True)
class Scenario:
    """A named timeline of faults, and of how hard the scene is to see.

    Attributes:
        name: What it is called in tables and plots.
        faults: The faults, in start order.
        scene: The scene's difficulty over time, as ``sample-bag --difficulty`` takes it
            (``easy:0-30,hard:30-60``); empty: easy throughout. Nothing injects it: a live
            evaluation generates its bag so, and the simulator reads each model's measured
            accuracy at that difficulty.
    """

    name: str
    faults: tuple[Fault, ...]
    scene: str = ''

    def active(self, t_s: float) -> list[Fault]:
        """Return the faults in force at ``t_s``."""
        return [f for f in self.faults if f.active(t_s)]

    def only(self, kinds: frozenset[str] | set[str]) -> Scenario:
        """Return the same scenario with only the faults of ``kinds``."""
        return Scenario(self.name, tuple(f for f in self.faults if f.kind in kinds),
                        self.scene)

    def kinds(self) -> set[str]:
        """Every kind of fault in the scenario."""
        return {f.kind for f in self.faults}


class Announcer:
    """Says when each fault of a scenario starts and ends, once each, as time passes.

    Args:
        scenario: The faults.
    """

    def __init__(self, scenario: Scenario) -> None:
        self.scenario = scenario
        self._told: set[tuple[int, str]] = set()

    def due(self, t_s: float) -> list[tuple[Fault, FaultEvent]]:
        """Return the starts and ends reached by ``t_s`` and not told yet, in time order."""
        out = []
        for i, fault in enumerate(self.scenario.faults):
            for phase, at in (('start', fault.start_s), ('end', fault.end_s)):
                if t_s >= at and (i, phase) not in self._told:
                    self._told.add((i, phase))
                    out.append((fault, FaultEvent(t_s=at, kind=fault.kind, phase=phase,
                                                  params=dict(fault.params),
                                                  duration_s=fault.duration_s)))
        return sorted(out, key=lambda pair: pair[1].t_s)

    def in_force(self) -> list[Fault]:
        """Return the faults told started and not yet told ended."""
        return [f for i, f in enumerate(self.scenario.faults)
                if (i, 'start') in self._told and (i, 'end') not in self._told]


def _number(entry: Mapping[str, Any], key: str, where: str) -> float:
    value = entry.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f'{where}: {key} must be a number, got {value!r}')
    return float(value)


def _trace_faults(entry: Any, where: str, base: Path) -> list[dict[str, Any]]:
    """Fault entries from a trace CSV (``start_s,duration_s`` rows), scaled and shifted."""
    if not isinstance(entry, dict) or set(entry) - {'file', 'kind', 'time_scale', 'offset_s'} \
            or 'file' not in entry:
        raise ConfigError(f'{where}: expected file, and optionally kind, time_scale, offset_s')
    scale = _number({'time_scale': entry.get('time_scale', 1.0)}, 'time_scale', where)
    offset = _number({'offset_s': entry.get('offset_s', 0.0)}, 'offset_s', where)
    kind = entry.get('kind', 'cloud_outage')
    if scale <= 0 or kind not in FAULT_KINDS or any(v is None for v in FAULT_KINDS[kind].values()):
        raise ConfigError(f'{where}: need time_scale > 0 and a kind without required parameters')
    path = base / str(entry['file'])
    try:
        with path.open(newline='', encoding='utf-8') as fh:
            rows = list(csv.DictReader(fh))
    except OSError as err:
        raise ConfigError(f'{where}: cannot read trace {path}: {err}') from err
    out = []
    for n, row in enumerate(rows, start=2):
        try:
            start, duration = float(row['start_s']), float(row['duration_s'])
        except (KeyError, TypeError, ValueError) as err:
            raise ConfigError(f'{where}: {path} line {n}: need numbers start_s, duration_s') \
                from err
        out.append({'kind': kind, 'start_s': offset + start * scale,
                    'duration_s': duration * scale})
    return out


def parse_scenario(data: Any, source: str = 'scenario', base: Path | None = None) -> Scenario:
    """Validate a scenario given as parsed YAML.

    Args:
        data: The parsed YAML.
        source: Name used in error messages.
        base: Folder trace files are relative to (the scenario file's).

    Raises:
        ConfigError: Naming the fault and field at fault.
    """
    if not isinstance(data, dict) or not isinstance(data.get('faults', []), list) or \
            not isinstance(data.get('traces', []), list) or \
            ('faults' not in data and 'traces' not in data):
        raise ConfigError(f'{source}: expected a mapping with a list "faults" (or "traces")')
    scene = data.get('scene', '')
    if not isinstance(scene, str):
        raise ConfigError(f'{source}: scene must be a difficulty timeline such as '
                          '"easy:0-30,hard:30-60"')
    try:
        parse_difficulty(scene)
    except ConfigError as err:
        raise ConfigError(f'{source}: scene: {err}') from err
    entries = list(data.get('faults', []))
    for i, trace in enumerate(data.get('traces', [])):
        entries += _trace_faults(trace, f'{source}: trace {i + 1}', base or Path('.'))
    faults = []
    for i, entry in enumerate(entries):
        where = f'{source}: fault {i + 1}'
        if not isinstance(entry, dict):
            raise ConfigError(f'{where}: expected a mapping')
        kind = entry.get('kind')
        if kind not in FAULT_KINDS:
            raise ConfigError(f'{where}: unknown kind {kind!r} '
                              f'(known: {", ".join(sorted(FAULT_KINDS))})')
        start = _number(entry, 'start_s', where)
        if kind in INSTANT_KINDS:
            if 'duration_s' in entry:
                raise ConfigError(f'{where}: {kind} happens at start_s and takes no duration_s')
            duration = 0.0
        else:
            duration = _number(entry, 'duration_s', where)
        if start < 0 or (duration <= 0 and kind not in INSTANT_KINDS):
            raise ConfigError(f'{where}: need start_s >= 0 and duration_s > 0')
        spec = FAULT_KINDS[kind]
        unknown = set(entry) - {'kind', 'start_s', 'duration_s'} - set(spec)
        if unknown:
            raise ConfigError(f'{where}: {kind} takes no {", ".join(sorted(unknown))}')
        params: dict[str, float] = {}
        for name, default in spec.items():
            if name in entry:
                params[name] = _number(entry, name, where)
            elif default is None:
                raise ConfigError(f'{where}: {kind} needs {name}')
            else:
                params[name] = default
        if params.get('probability', 0.5) > 1 or any(v < 0 for v in params.values()):
            raise ConfigError(f'{where}: parameters must be >= 0 (probabilities <= 1)')
        if kind in ('bandwidth', 'lan_bandwidth') and params['mbps'] <= 0:
            raise ConfigError(f'{where}: mbps must be > 0')
        if kind == 'cpu_contention' and params['slowdown'] < 1:
            raise ConfigError(f'{where}: slowdown must be >= 1')
        if kind == 'replica_crash' and (params['replicas'] < 1 or
                                        params['replicas'] != int(params['replicas'])):
            raise ConfigError(f'{where}: replicas must be a whole number >= 1')
        if kind == 'zone_outage' and not 0 < params['share'] <= 1:
            raise ConfigError(f'{where}: share must be in (0, 1]')
        faults.append(Fault(kind, start, duration, params))
    ordered = sorted(faults, key=lambda f: (f.kind, f.start_s))
    for a, b in zip(ordered, ordered[1:]):
        if a.kind == b.kind and b.start_s < a.end_s:
            raise ConfigError(f'{source}: {a.kind} faults at {a.start_s} s and {b.start_s} s '
                              'overlap')
    return Scenario(str(data.get('name', source)),
                    tuple(sorted(faults, key=lambda f: f.start_s)), scene)


def load_scenario(path: str | Path) -> Scenario:
    """Read and validate a scenario file, or a shipped scenario by name.

    Args:
        path: A scenario file, or the name of one in the package's ``config/scenarios``
            (``cloud_outage_10s``).

    Raises:
        ConfigError: If the file cannot be read or is not a valid scenario.
    """
    text = str(path)
    if '/' not in text and not text.endswith(('.yaml', '.yml')):
        path = shipped_config('scenarios', f'{text}.yaml')
    data = read_yaml(path, 'scenario')
    return parse_scenario(data, str(path), Path(path).parent)
