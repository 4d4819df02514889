"""Node parameters: one declaration shared by the rclpy nodes, the replay runner and the tests.

Each core module lists its parameters as :class:`ParameterSpec` tuples. The rclpy node declares
exactly those (with descriptors), the standalone runtime reads the same names from the same
``params.yaml``, and a test checks that the YAML names only declared parameters.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Union

from adaptive_offload.errors import ConfigError
import yaml

ParamValue = Union[bool, int, float, str, list]


@dataclass(frozen=True)
class ParameterSpec:
    """One node parameter.

    Attributes:
        name: Parameter name.
        default: Default value; its type is the parameter's type (no empty lists: rclpy cannot
            infer their type).
        description: What it does, shown by ``ros2 param describe``.
        read_only: Whether it can only be set at start-up.
    """

    name: str
    default: ParamValue
    description: str
    read_only: bool = True

    def coerce(self, value: Any) -> ParamValue:
        """Check a value against the default's type; ints are accepted for floats.

        Raises:
            ConfigError: On a type mismatch.
        """
        want = type(self.default)
        if want is float and isinstance(value, int) and not isinstance(value, bool):
            return float(value)
        if want is list and isinstance(value, (list, tuple)):
            kind = type(self.default[0])
            if all(isinstance(v, kind) or (kind is float and isinstance(v, int)) for v in value):
                return [kind(v) for v in value]
        elif isinstance(value, want) and not (want is int and isinstance(value, bool)):
            return value
        raise ConfigError(f'parameter {self.name!r}: {value!r} is not of type {want.__name__}')


def resolve(specs: Iterable[ParameterSpec], values: Mapping[str, Any] | None) -> dict[str, Any]:
    """Merge given values over the defaults, refusing unknown names and wrong types.

    Args:
        specs: Declared parameters.
        values: Given values (may be None).

    Returns:
        Every declared parameter's value.

    Raises:
        ConfigError: For an unknown name or a wrong type.
    """
    table = {s.name: s for s in specs}
    given = dict(values or {})
    unknown = sorted(set(given) - set(table) - {'use_sim_time'})
    if unknown:
        raise ConfigError(f'unknown parameter(s) {", ".join(unknown)} '
                          f'(known: {", ".join(sorted(table))})')
    return {name: spec.coerce(given[name]) if name in given else spec.default
            for name, spec in table.items()}


def load_params_file(path: str | Path) -> dict[str, dict[str, Any]]:
    """Read a ROS 2 parameter file into ``{node name: {parameter: value}}``.

    Node keys may carry a namespace (``/pi/edge_inference``) or be the ``/**`` wildcard, whose
    parameters apply to every node; the returned keys are bare node names plus ``/**``.

    Raises:
        ConfigError: If the file is missing or not a parameter file.
    """
    try:
        data = yaml.safe_load(Path(path).read_text(encoding='utf-8'))
    except (OSError, yaml.YAMLError) as err:
        raise ConfigError(f'cannot read parameter file {path}: {err}') from err
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
