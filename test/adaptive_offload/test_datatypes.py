"""Versioned JSON of decisions, reports, records and health events."""

from __future__ import annotations

import json

from adaptive_offload.datatypes import (Decision, FrameRecord, InferenceReport, Route,
                                        SCHEMA_VERSION)
from adaptive_offload.errors import ConversionError
from adaptive_offload.health_records import HealthEvent
import pytest

RECORDS = [
    Decision(seq=4, issued_ns=10, route=Route.HEDGED, edge_model='yolov8n', jpeg_quality=60,
             offload_every=2, policy='static', reason='r'),
    InferenceReport(stamp_ns=5, frame_id='cam', source='cloud', status='failed',
                    reason='timeout', bytes_sent=1000, uplink_mbps=12.5, breaker='open'),
    Decision(seq=5, route=Route.EDGE, edge_model='yolov8n-shapes', probe_every=10,
             split_probe='yolov8n-shapes@320:4/end:int8+zstd'),
    InferenceReport(stamp_ns=6, frame_id='cam', source='robot', split_role='head',
                    split_probe='yolov8n-shapes@320:4/end:int8+zstd', bytes_sent=53_000,
                    encode_ms=2.5),
    InferenceReport(stamp_ns=7, frame_id='cam', source='robot', split_role='head',
                    split_unsent='yolov8n-shapes@320:4/end:int8+zstd', reason='no tail'),
    FrameRecord(index=3, stamp_ns=5, frame_id='cam', route='edge', sources=['edge'],
                result_source='edge', latency_ms=41.5, deadline_ms=250.0, deadline_met=True),
    HealthEvent(stamp_ns=9, name='adaptive_offload: /camera/image_raw rate', level=3,
                previous=0, message='silent'),
]


@pytest.mark.parametrize('record', RECORDS, ids=lambda r: type(r).__name__)
def test_round_trip_with_schema_and_version(record: object) -> None:
    text = record.to_json()
    body = json.loads(text)
    assert body['schema'] == record.SCHEMA and body['version'] == SCHEMA_VERSION
    assert type(record).from_json(text) == record


def test_readers_ignore_unknown_fields_and_default_missing_ones() -> None:
    body = json.loads(Decision(seq=2).to_json())
    body['future_field'] = 1
    del body['hedge_delay_ms']
    assert Decision.from_json(json.dumps(body)) == Decision(seq=2)


@pytest.mark.parametrize('text', [
    'not json', '[]', '{"schema": "adaptive_offload/FrameRecord", "version": 1}',
    json.dumps({'schema': 'adaptive_offload/Decision', 'version': 99}),
    json.dumps({'schema': 'adaptive_offload/Decision', 'version': 1, 'jpeg_quality': 0}),
    json.dumps({'schema': 'adaptive_offload/Decision', 'version': 1, 'route': 'mars'}),
    json.dumps({'schema': 'adaptive_offload/Decision', 'version': 1, 'offload_every': 0}),
])
def test_bad_json_is_a_conversion_error(text: str) -> None:
    with pytest.raises(ConversionError) as err:
        Decision.from_json(text)
    assert err.value.reason == 'bad_json'


def test_decision_validation_and_validity_window() -> None:
    for bad in ({'jpeg_quality': 101}, {'offload_every': 0}, {'valid_for_ms': 0}):
        with pytest.raises(ValueError):
            Decision(**bad)
    decision = Decision(issued_ns=1_000_000_000, valid_for_ms=500)
    assert decision.is_valid(1_000_000_000) and decision.is_valid(1_500_000_000)
    assert not decision.is_valid(1_500_000_001)
    assert not decision.is_valid(900_000_000)  # issued in the future: clocks disagree
    safe = Decision.safe_default('yolov8n', 320, 100.0)
    assert (safe.route, safe.seq, safe.edge_imgsz, safe.deadline_ms) == (Route.EDGE, -1, 320,
                                                                         100.0)


def test_route_properties() -> None:
    uses = [(r.uses_edge, r.uses_cloud) for r in Route]
    assert uses == [(True, False), (False, True), (True, True), (False, True)]
    assert FrameRecord(drop_reason='superseded').dropped and not FrameRecord().dropped


def test_records_from_before_split_probes_read_without_them() -> None:
    old = {'schema': Decision.SCHEMA, 'version': SCHEMA_VERSION, 'seq': 3, 'route': 'edge'}
    assert Decision.from_json(json.dumps(old)).split_probe == ''
    old = {'schema': InferenceReport.SCHEMA, 'version': SCHEMA_VERSION, 'stamp_ns': 1}
    assert InferenceReport.from_json(json.dumps(old)).split_probe == ''
    assert InferenceReport.from_json(json.dumps(old)).split_unsent == ''
