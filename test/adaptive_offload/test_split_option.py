"""Split option names: one parser for the manager, the decisions and the bridge's head."""

from __future__ import annotations

from adaptive_offload.errors import ConfigError
from adaptive_offload.split_option import parse_spec
import pytest

ARCH = 'fasterrcnn_mobilenet_v3_small_fpn'


def test_spec_names_arch_size_point_and_encoding() -> None:
    spec = parse_spec(f'{ARCH}@640:body.2:int8+zstd')
    assert (spec.arch, spec.imgsz, spec.point, spec.encoding) == (ARCH, 640, 'body.2',
                                                                  'int8+zstd')
    assert (spec.precision, spec.codec) == ('int8', 'zstd')
    assert spec.key == f'{ARCH}@640:body.2:int8+zstd'


@pytest.mark.parametrize('text', ['rcnn:body.2:int8+zstd', 'rcnn@640:body.2',
                                  'rcnn@640::int8+zstd', 'rcnn@640:body.2:fp8+zstd',
                                  'rcnn@x:body.2:int8+zstd', 'rcnn@640:body.2:int8+gzip',
                                  'rcnn@640:body.2:int8', 'rcnn@0:body.2:fp16+lz4'])
def test_malformed_specs_are_refused(text: str) -> None:
    with pytest.raises(ConfigError, match='arch@imgsz:point:encoding'):
        parse_spec(text)
