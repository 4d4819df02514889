"""Node parameters: one declaration shared by the rclpy nodes, the replay runner and the tests.

Each role lists its parameters as :class:`ParameterSpec` tuples. The rclpy node declares exactly
those, with descriptors that carry the ranges; the runtime reads the same names from the same
``params.yaml`` and types them exactly as rclpy does, so that a file ``ros2 launch`` refuses is
refused here too, with rclpy's reason.
"""

from __future__ import annotations

from dataclasses import dataclass
import math
from pathlib import Path
from typing import Any, Iterable, Mapping, Union

from adaptive_offload.errors import ConfigError
from adaptive_offload.yaml_files import read_yaml

ParamValue = Union[bool, int, float, str, list]
# The node options every rclpy node accepts without declaring them.
IMPLICIT = frozenset({'use_sim_time', 'start_type_description_service'})


def type_name(value: Any) -> str:
    """Return the rclpy parameter type of a value (``Parameter.Type.from_parameter_value``).

    Raises:
        ConfigError: For a value rclpy cannot hold (a mixed list, a mapping, None).
    """
    if isinstance(value, bool):
        return 'BOOL'
    if isinstance(value, int):
        return 'INTEGER'
    if isinstance(value, float):
        return 'DOUBLE'
    if isinstance(value, str):
        return 'STRING'
    if isinstance(value, (list, tuple)):
        kind: type
        for kind, name in ((bytes, 'BYTE_ARRAY'), (bool, 'BOOL_ARRAY')):
            if all(isinstance(v, kind) for v in value):
                return name
        if all(isinstance(v, int) and not isinstance(v, bool) for v in value):
            return 'INTEGER_ARRAY'
        for kind, name in ((float, 'DOUBLE_ARRAY'), (str, 'STRING_ARRAY')):
            if all(isinstance(v, kind) for v in value):
                return name
        raise ConfigError(f'{value!r} mixes element types; a parameter array has one type')
    raise ConfigError(f'{value!r} is not a parameter value')


@dataclass(frozen=True)
class ParameterSpec:
    """One node parameter.

    Attributes:
        name: Parameter name.
        default: Default value; its rclpy type is the parameter's type (no empty lists: rclpy
            cannot infer their type).
        description: What it does, shown by ``ros2 param describe``.
        live: Applied by the running node when set (``ros2 param set``): the role's
            ``reconfigure`` takes it, and the next decision or frame shows it.
        configure: Settable while a lifecycle node is unconfigured, read again on configure.
            A parameter that is neither live nor configure is read-only: set at start-up only.
        minimum: Lowest value (INTEGER and DOUBLE only), inclusive; the descriptor's range.
        maximum: Highest value, inclusive.
    """

    name: str
    default: ParamValue
    description: str
    live: bool = False
    configure: bool = False
    minimum: int | float | None = None
    maximum: int | float | None = None

    @property
    def read_only(self) -> bool:
        """Whether the descriptor is read-only: neither live nor set for a configure."""
        return not (self.live or self.configure)

    @property
    def type_name(self) -> str:
        """The rclpy type the default gives the parameter (``DOUBLE``, ``STRING_ARRAY``...)."""
        return type_name(self.default)

    def bounds(self) -> tuple[int | float, int | float] | None:
        """(from, to) of the descriptor's range, or None without one."""
        if self.minimum is None and self.maximum is None:
            return None
        if self.type_name == 'INTEGER':
            return (int(self.minimum if self.minimum is not None else -2 ** 63),
                    int(self.maximum if self.maximum is not None else 2 ** 63 - 1))
        return (float(self.minimum if self.minimum is not None else -math.inf),
                float(self.maximum if self.maximum is not None else math.inf))

    def check(self, value: Any) -> ParamValue:
        """Check a value as rclpy checks it against this parameter's descriptor.

        Returns:
            The value (a list for an array).

        Raises:
            ConfigError: With rclpy's own reason: a value of another type (rclpy types
                parameters statically from the default: ``300`` is no DOUBLE), or out of range.
        """
        got = type_name(value)
        if got != self.type_name:
            raise ConfigError(f"Trying to set parameter '{self.name}' to '{value}' of type "
                              f"'{got}', expecting type '{self.type_name}'")
        bounds = self.bounds()
        if bounds is not None and not _within(value, *bounds):
            raise ConfigError(f'Parameter {self.name} out of range. Min: {bounds[0]}, '
                              f'Max: {bounds[1]}, value: {value}')
        return list(value) if isinstance(value, (list, tuple)) else value


def _within(value: float, low: float, high: float) -> bool:
    # rclpy accepts the edges themselves (doubles within its relative tolerance).
    if isinstance(value, float):
        if math.isclose(value, low, rel_tol=1e-6) or math.isclose(value, high, rel_tol=1e-6):
            return True
    return low <= value <= high


def resolve(specs: Iterable[ParameterSpec], values: Mapping[str, Any] | None,
            source: str = '') -> dict[str, Any]:
    """Merge given values over the defaults, refusing unknown names, wrong types and ranges.

    Args:
        specs: Declared parameters.
        values: Given values (may be None).
        source: Where the values came from (a file, a node), named in errors.

    Returns:
        Every declared parameter's value.

    Raises:
        ConfigError: For an unknown name, a wrong type or a value out of range.
    """
    table = {s.name: s for s in specs}
    given = dict(values or {})
    where = f'{source}: ' if source else ''
    unknown = sorted(set(given) - set(table) - IMPLICIT)
    if unknown:
        raise ConfigError(f'{where}unknown parameter(s) {", ".join(unknown)} '
                          f'(known: {", ".join(sorted(table))})')
    out = {}
    for name, spec in table.items():
        if name not in given:
            out[name] = spec.default
            continue
        try:
            out[name] = spec.check(given[name])
        except ConfigError as err:
            raise ConfigError(f'{where}{err}') from None
    return out


def load_params_file(path: str | Path) -> dict[str, dict[str, Any]]:
    """Read a ROS 2 parameter file into ``{node name: {parameter: value}}``.

    Node keys may carry a namespace (``/pi/edge_inference``) or be the ``/**`` wildcard, whose
    parameters apply to every node; the returned keys are bare node names plus ``/**``.

    Raises:
        ConfigError: If the file is missing or not a parameter file.
    """
    data = read_yaml(path, 'parameter file')
    if not isinstance(data, dict):
        raise ConfigError(f'{path}: not a ROS 2 parameter file (expected a mapping)')
    out: dict[str, dict[str, Any]] = {}
    for key, body in data.items():
        if not isinstance(body, dict) or not isinstance(body.get('ros__parameters'), dict):
            raise ConfigError(f'{path}: {key!r} has no ros__parameters mapping')
        name = key if key == '/**' else str(key).rstrip('/').rsplit('/', 1)[-1]
        out.setdefault(name, {}).update(body['ros__parameters'])
    return out


def node_params(params_file: Mapping[str, Mapping[str, Any]], node: str) -> dict[str, Any]:
    """Return the parameters a file gives one node: the wildcard's, then the node's own."""
    merged = dict(params_file.get('/**', {}))
    merged.update(params_file.get(node, {}))
    return merged


def check_params_file(path: str | Path,
                      nodes: Mapping[str, Iterable[ParameterSpec]]) -> list[str]:
    """Check a parameter file against every node's declarations, as ``ros2 launch`` would.

    Args:
        path: The parameter file.
        nodes: Declared parameters of each node the file may configure.

    Returns:
        One line per problem (empty when the file is fine): an unknown node, an unknown
        parameter, a wrong type or a value out of range, each naming the file and the node.

    Raises:
        ConfigError: If the file cannot be read or is not a parameter file.
    """
    params = load_params_file(path)
    problems = [f'{path}: no node {name!r} (known: {", ".join(sorted(nodes))})'
                for name in sorted(set(params) - set(nodes) - {'/**'})]
    for node, specs in nodes.items():
        if node not in params and '/**' not in params:
            continue
        table = {s.name: s for s in specs}
        for name, value in node_params(params, node).items():
            spec = table.get(name)
            if spec is None:
                # The wildcard may set what only some nodes declare, as rclpy allows.
                if name not in IMPLICIT and name in params.get(node, {}):
                    problems.append(f'{path}: {node}: unknown parameter {name!r}')
                continue
            try:
                spec.check(value)
            except ConfigError as err:
                problems.append(f'{path}: {node}: {err}')
    return problems
