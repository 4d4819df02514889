"""YAML files: parsed with the safe constructors, every failure a ConfigError naming the file."""

from __future__ import annotations

from pathlib import Path

from adaptive_offload.errors import ConfigError
from adaptive_offload.yaml_files import read_yaml
import pytest


def test_a_document_is_parsed_with_the_safe_constructors(tmp_path: Path) -> None:
    path = tmp_path / 'devices.yaml'
    path.write_text('devices:\n  pi: {idle_w: 2.7, sizes: [1, 2]}\n', encoding='utf-8')
    parsed = read_yaml(path, 'device profiles')
    assert parsed == {'devices': {'pi': {'idle_w': 2.7, 'sizes': [1, 2]}}}
    (tmp_path / 'empty.yaml').write_text('', encoding='utf-8')
    assert read_yaml(tmp_path / 'empty.yaml', 'scenario') is None


@pytest.mark.parametrize('content', [
    'a: [1, 2\n',  # unclosed
    '!!python/object/apply:os.system ["true"]\n',  # no arbitrary objects
    b'\xff\xfe not utf-8',
])
def test_a_bad_file_is_a_config_error_naming_it(tmp_path: Path, content: str | bytes) -> None:
    path = tmp_path / 'bad.yaml'
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding='utf-8')
    with pytest.raises(ConfigError, match=r'cannot read device profiles .*bad\.yaml'):
        read_yaml(path, 'device profiles')


def test_a_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match='cannot read scenario .*absent.yaml'):
        read_yaml(tmp_path / 'absent.yaml', 'scenario')
