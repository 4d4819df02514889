"""Parameters are typed and ranged exactly as rclpy types and ranges them."""

from __future__ import annotations

from pathlib import Path

from adaptive_offload.errors import ConfigError
from adaptive_offload.params import check_params_file, ParameterSpec, resolve, type_name
import pytest

DEADLINE = ParameterSpec('deadline_ms', 250.0, 'd', live=True, minimum=1.0, maximum=60000.0)
IMGSZ = ParameterSpec('imgsz', 640, 'i', minimum=32, maximum=4096)
TOPICS = ParameterSpec('topics', ['/a'], 't')


@pytest.mark.parametrize(('value', 'expected'), [
    (True, 'BOOL'), (3, 'INTEGER'), (3.0, 'DOUBLE'), ('x', 'STRING'),
    ([True, False], 'BOOL_ARRAY'), ([1, 2], 'INTEGER_ARRAY'), ([1.0, 2.5], 'DOUBLE_ARRAY'),
    (['a'], 'STRING_ARRAY'), ((1, 2), 'INTEGER_ARRAY'),
])
def test_type_names_are_rclpys(value: object, expected: str) -> None:
    assert type_name(value) == expected


def test_mixed_lists_and_other_values_have_no_parameter_type() -> None:
    for value in ([1, 2.0], [1, 'a'], None, {'a': 1}):
        with pytest.raises(ConfigError):
            type_name(value)


def test_an_integer_is_no_double_and_a_double_no_integer() -> None:
    # What rclpy's InvalidParameterTypeException says for deadline_ms: 300 in a params file.
    with pytest.raises(ConfigError) as err:
        DEADLINE.check(300)
    assert str(err.value) == ("Trying to set parameter 'deadline_ms' to '300' of type "
                              "'INTEGER', expecting type 'DOUBLE'")
    with pytest.raises(ConfigError, match="'320.0' of type 'DOUBLE', expecting type 'INTEGER'"):
        IMGSZ.check(320.0)
    with pytest.raises(ConfigError, match="of type 'BOOL', expecting type 'INTEGER'"):
        IMGSZ.check(True)
    with pytest.raises(ConfigError, match="expecting type 'STRING_ARRAY'"):
        TOPICS.check([1])
    assert DEADLINE.check(300.0) == 300.0 and IMGSZ.check(320) == 320


def test_ranges_are_inclusive_as_in_rclpy() -> None:
    assert IMGSZ.check(32) == 32 and IMGSZ.check(4096) == 4096
    assert DEADLINE.check(1.0) == 1.0 and DEADLINE.check(60000.0) == 60000.0
    with pytest.raises(ConfigError) as err:
        IMGSZ.check(-5)
    assert str(err.value) == 'Parameter imgsz out of range. Min: 32, Max: 4096, value: -5'
    with pytest.raises(ConfigError, match='out of range'):
        DEADLINE.check(0.5)
    assert ParameterSpec('x', 1.0, 'x', minimum=0.0).bounds() == (0.0, float('inf'))
    assert ParameterSpec('x', 'a', 'x').bounds() is None


def test_read_only_unless_live_or_set_for_a_configure() -> None:
    assert IMGSZ.read_only
    assert not DEADLINE.read_only
    assert not ParameterSpec('model', 'a', 'm', configure=True).read_only


def test_resolve_names_the_source_and_refuses_unknown_names() -> None:
    with pytest.raises(ConfigError) as err:
        resolve((DEADLINE, IMGSZ), {'deadline_ms': 300}, 'params.yaml: offload_manager')
    assert str(err.value).startswith('params.yaml: offload_manager: Trying to set parameter '
                                     "'deadline_ms'")
    with pytest.raises(ConfigError, match='unknown parameter'):
        resolve((DEADLINE,), {'dead_line': 3.0})
    assert resolve((DEADLINE, IMGSZ), {'use_sim_time': True, 'imgsz': 320}) == {
        'deadline_ms': 250.0, 'imgsz': 320}


def test_check_params_file_reports_every_problem_with_file_and_node(tmp_path: Path) -> None:
    path = tmp_path / 'params.yaml'
    path.write_text('/**:\n  ros__parameters:\n    use_sim_time: true\n'
                    'manager:\n  ros__parameters:\n    deadline_ms: 300\n    imgsz: -5\n'
                    '    typo: 1\n'
                    '/robot/edge:\n  ros__parameters:\n    imgsz: 320\n'
                    'stranger:\n  ros__parameters:\n    a: 1\n')
    problems = check_params_file(path, {'manager': (DEADLINE, IMGSZ), 'edge': (IMGSZ,)})
    assert problems == [
        f"{path}: no node 'stranger' (known: edge, manager)",
        f"{path}: manager: Trying to set parameter 'deadline_ms' to '300' of type 'INTEGER', "
        "expecting type 'DOUBLE'",
        f'{path}: manager: Parameter imgsz out of range. Min: 32, Max: 4096, value: -5',
        f"{path}: manager: unknown parameter 'typo'",
    ]
    path.write_text('manager:\n  ros__parameters:\n    deadline_ms: 300.0\n')
    assert check_params_file(path, {'manager': (DEADLINE,)}) == []
