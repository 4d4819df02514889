"""A split head's choice per frame: the decision's split option of its model, else its own."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from adaptive_offload.datatypes import Decision, Route
from adaptive_offload.split_option import parse_spec
from edge_inference.inference import EdgeConfig
from edge_inference.split_choice import choose, HeadChoice, option_name
import pytest


def head(**values: Any) -> EdgeConfig:
    """Return the parameters of a head of the shipped model at k = 6, fp16+zstd, 640 px."""
    return EdgeConfig.from_params({'model': 'models/yolov8n-shapes.pt', 'split_role': 'head',
                                   'split_point': 6, **values})


def decision(**changes: Any) -> Decision:
    """Return an edge decision for the shipped model at 320 px."""
    return replace(Decision.safe_default('yolov8n-shapes', 320, 250.0), **changes)


def test_without_an_option_the_head_runs_its_parameters_at_the_decisions_size() -> None:
    assert choose(decision(), head()) == HeadChoice(6, 320, 'fp16', 'zstd')
    assert choose(decision(edge_imgsz=0), head(imgsz=480, split_encoding='fp32+lz4')) == \
        HeadChoice(6, 480, 'fp32', 'lz4')


@pytest.mark.parametrize('route', [Route.EDGE, Route.HEDGED, Route.CLOUD])
def test_an_option_of_its_model_to_the_end_sets_k_encoding_and_size(route: Route) -> None:
    choice = choose(decision(route=route, split='yolov8n-shapes@640:12/end:int8+lz4'), head())
    assert choice == HeadChoice(12, 640, 'int8', 'lz4')
    assert choice.option('yolov8n-shapes') == 'yolov8n-shapes@640:12/end:int8+lz4'


def test_an_option_out_of_the_models_range_is_still_chosen_the_model_says_no() -> None:
    assert choose(decision(split='yolov8n-shapes@320:99/end:fp16+none'), head()).point == 99


@pytest.mark.parametrize('option, why', [
    ('yolov8s@320:4/end:int8+zstd', 'is no split of yolov8n-shapes to end'),
    ('yolov8n-shapes@320:4:int8+zstd', 'is no split of yolov8n-shapes to end'),
    ('yolov8n-shapes@320:4/6:int8+zstd', 'is no split of yolov8n-shapes to end'),
    ('yolov8n-shapes@320:model.4/end:int8+zstd', 'is no split of yolov8n-shapes to end'),
    ('yolov8n-shapes@320:\u00b2/end:int8+zstd', 'is no split of yolov8n-shapes to end'),
    ('yolov8n-shapes@320:4/end:fp32+zstd', 'unreadable'),
    ('yolov8n-shapes@320:4/end:bottleneck', 'unreadable'),
    ('nonsense', 'unreadable')])
def test_an_option_it_cannot_follow_leaves_its_parameters_with_a_note(
        option: str, why: str) -> None:
    choice = choose(decision(split=option), head())
    assert choice == HeadChoice(6, 320, 'fp16', 'zstd', f'split {option!r} {why}; ran k=6')


def test_a_long_option_is_quoted_short() -> None:
    note = choose(decision(split='x' * 500), head()).note
    assert note == f'split {"x" * 80!r} unreadable; ran k=6'


def test_the_notes_of_another_model_and_its_option_add_up() -> None:
    other = decision(edge_model='yolov8s', split='yolov8s@320:4/end:int8+zstd')
    assert choose(other, head()).note == (
        'model yolov8s not split here; used yolov8n-shapes; '
        "split 'yolov8s@320:4/end:int8+zstd' is no split of yolov8n-shapes to end; ran k=6")
    assert choose(decision(edge_model='yolov8s'), head()).note == \
        'model yolov8s not split here; used yolov8n-shapes'


def test_on_the_split_route_the_option_is_the_clouds_and_left_alone() -> None:
    cloud = decision(route=Route.SPLIT, split='fasterrcnn_mobilenet_v3_small_fpn@640:body.2:'
                                              'int8+zstd')
    assert choose(cloud, head()) == HeadChoice(6, 320, 'fp16', 'zstd')


def test_the_option_name_reads_back_as_the_option() -> None:
    spec = parse_spec(option_name('yolov8n-shapes', 320, 4, 'int8', 'zstd'))
    assert (spec.arch, spec.imgsz, spec.point, spec.middle_to, spec.encoding) == (
        'yolov8n-shapes', 320, '4', 'end', 'int8+zstd')


def test_a_head_at_point_0_runs_the_whole_model_unless_the_decision_names_a_split() -> None:
    at_zero = head(split_point=0)
    whole = choose(decision(), at_zero)
    assert whole == HeadChoice(0, 320, 'fp16', 'zstd', whole=True)
    assert whole.option('yolov8n-shapes') == ''
    chosen = choose(decision(split='yolov8n-shapes@320:4/end:int8+zstd'), at_zero)
    assert chosen == HeadChoice(4, 320, 'int8', 'zstd')
    assert chosen.option('yolov8n-shapes') == 'yolov8n-shapes@320:4/end:int8+zstd'
    foreign = choose(decision(split='yolov8s@320:4/end:int8+zstd'), at_zero)
    assert foreign.whole and foreign.note == \
        "split 'yolov8s@320:4/end:int8+zstd' is no split of yolov8n-shapes to end; ran the " \
        'whole model'
    # A decision naming k = 0 asks for a split the model lacks: the head says so (it fails).
    assert not choose(decision(split='yolov8n-shapes@320:0/end:int8+zstd'), at_zero).whole
