"""Topic names of edge targets, and a target launched where no manager hears it."""

from __future__ import annotations

from adaptive_offload import topics
import pytest


@pytest.mark.parametrize('source, namespace', [('edge', '/'), ('pi', '/pi'), ('pi', '/pi/')])
def test_a_target_in_its_sources_namespace_is_heard(source: str, namespace: str) -> None:
    assert topics.misplaced_source(source, namespace) == ''


def test_a_target_named_for_one_namespace_and_launched_in_another_says_where_to_go() -> None:
    assert topics.misplaced_source('robot', '/') == (
        "source_name 'robot' in namespace '/' publishes on /edge/detections, but a manager "
        "listens for 'robot' on /robot/edge/detections: launch it in namespace /robot or set "
        'source_name to match')
    assert 'launch it in namespace / or' in topics.misplaced_source('edge', '/pi')
