"""Split option names: one parser for the manager, the decisions and the bridge's head."""

from __future__ import annotations

from adaptive_offload.errors import ConfigError
from adaptive_offload.split_option import check_order, END, parse_spec
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


def test_three_tier_names_carry_both_cuts_and_end() -> None:
    spec = parse_spec(f'{ARCH}@640:body.2/body.3:int8+zstd')
    assert (spec.point, spec.middle_to, spec.three_tier, spec.to_cloud) == \
        ('body.2', 'body.3', True, True)
    assert spec.key == f'{ARCH}@640:body.2/body.3:int8+zstd'
    end = parse_spec(f'{ARCH}@640:transform/end:fp16+lz4')
    assert (end.middle_to, end.three_tier, end.to_cloud) == (END, True, False)
    two = parse_spec(f'{ARCH}@640:body.2:int8+zstd')
    assert (two.middle_to, two.three_tier, two.to_cloud) == ('', False, True)


@pytest.mark.parametrize('text', ['rcnn@640:body.2/:int8+zstd', 'rcnn@640:/body.3:int8+zstd',
                                  'rcnn@640:end/body.3:int8+zstd',
                                  'rcnn@640:a/b/c:int8+zstd', 'rcnn@640:end:int8+zstd'])
def test_malformed_three_tier_names_are_refused(text: str) -> None:
    with pytest.raises(ConfigError, match='arch@imgsz:i/j:encoding'):
        parse_spec(text)


def test_cuts_must_be_points_in_model_order() -> None:
    points = ['transform', 'body.0', 'body.1', 'body.2', 'fpn']
    for ok in ('body.0/body.2', 'transform/fpn', 'body.2/end', 'fpn/end'):
        check_order(parse_spec(f'{ARCH}@640:{ok}:int8+zstd'), points)
    for bad, why in (('body.2/body.0', 'must be a split point after'),
                     ('body.2/body.2', 'must be a split point after'),
                     ('body.1/layer3', 'must be a split point after'),
                     ('layer1/body.2', 'not a split point')):
        with pytest.raises(ConfigError, match=f'{ARCH}@640:{bad}:int8\\+zstd.*{why}'):
            check_order(parse_spec(f'{ARCH}@640:{bad}:int8+zstd'), points)


def test_a_learned_bottleneck_is_an_encoding_of_two_tier_options_only() -> None:
    spec = parse_spec('fasterrcnn_mobilenet_v3_small_fpn@640:body.3:bottleneck')
    assert spec.learned and not spec.three_tier and spec.point == 'body.3'
    assert spec.key == 'fasterrcnn_mobilenet_v3_small_fpn@640:body.3:bottleneck'
    assert not parse_spec('a@640:body.3:int8+zstd').learned
    for text in ('a@640:body.2/body.3:bottleneck', 'a@640:body.3:bottleneck+zstd',
                 'a@640:body.3:learned'):
        with pytest.raises(ConfigError, match='bottleneck \\(two tiers\\)'):
            parse_spec(text)
