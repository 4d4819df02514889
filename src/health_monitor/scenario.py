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
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import yaml

from adaptive_offload.errors import ConfigError

# kind -> parameters it takes (name -> default); a parameter without default is required
FAULT_KINDS: dict[str, dict[str, float | None]] = {
    'cloud_outage': {},
    'latency': {'delay_ms': None, 'jitter_ms': 0.0},
    'bandwidth': {'mbps': None},
    'loss': {'probability': None},
    'corruption': {'probability': 1.0},
    'cpu_contention': {'slowdown': 2.0},  # edge inference takes this many times longer
}


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
    """A named timeline of faults."""

    name: str
    faults: tuple[Fault, ...]

    def active(self, t_s: float) -> list[Fault]:
        """The faults in force at ``t_s``."""
        return [f for f in self.faults if f.active(t_s)]


def _number(entry: Mapping[str, Any], key: str, where: str) -> float:
    value = entry.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f'{where}: {key} must be a number, got {value!r}')
    return float(value)


def parse_scenario(data: Any, source: str = 'scenario') -> Scenario:
    """Validate a scenario given as parsed YAML.

    Raises:
        ConfigError: Naming the fault and field at fault.
    """
    if not isinstance(data, dict) or not isinstance(data.get('faults'), list):
        raise ConfigError(f'{source}: expected a mapping with a list "faults"')
    faults = []
    for i, entry in enumerate(data['faults']):
        where = f'{source}: fault {i + 1}'
        if not isinstance(entry, dict):
            raise ConfigError(f'{where}: expected a mapping')
        kind = entry.get('kind')
        if kind not in FAULT_KINDS:
            raise ConfigError(f'{where}: unknown kind {kind!r} '
                              f'(known: {", ".join(sorted(FAULT_KINDS))})')
        start, duration = _number(entry, 'start_s', where), _number(entry, 'duration_s', where)
        if start < 0 or duration <= 0:
            raise ConfigError(f'{where}: need start_s >= 0 and duration_s > 0')
        spec = FAULT_KINDS[kind]
        unknown = set(entry) - {'kind', 'start_s', 'duration_s'} - set(spec)
        if unknown:
            raise ConfigError(f'{where}: {kind} takes no {", ".join(sorted(unknown))}')
        params = {}
        for name, default in spec.items():
            if name not in entry and default is None:
                raise ConfigError(f'{where}: {kind} needs {name}')
            params[name] = _number(entry, name, where) if name in entry else default
        if params.get('probability', 0.5) > 1 or any(v < 0 for v in params.values()):
            raise ConfigError(f'{where}: parameters must be >= 0 (probabilities <= 1)')
        if kind == 'bandwidth' and params['mbps'] <= 0:
            raise ConfigError(f'{where}: mbps must be > 0')
        if kind == 'cpu_contention' and params['slowdown'] < 1:
            raise ConfigError(f'{where}: slowdown must be >= 1')
        faults.append(Fault(kind, start, duration, params))
    ordered = sorted(faults, key=lambda f: (f.kind, f.start_s))
    for a, b in zip(ordered, ordered[1:]):
        if a.kind == b.kind and b.start_s < a.end_s:
            raise ConfigError(f'{source}: {a.kind} faults at {a.start_s} s and {b.start_s} s '
                              'overlap')
    return Scenario(str(data.get('name', source)), tuple(sorted(faults,
                                                                key=lambda f: f.start_s)))


def load_scenario(path: str | Path) -> Scenario:
    """Read and validate a scenario file.

    Raises:
        ConfigError: If the file cannot be read or is not a valid scenario.
    """
    try:
        data = yaml.safe_load(Path(path).read_text(encoding='utf-8'))
    except (OSError, yaml.YAMLError) as err:
        raise ConfigError(f'cannot read scenario {path}: {err}') from err
    return parse_scenario(data, str(path))
