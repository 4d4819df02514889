"""Names shared by the nodes, the launch files and the runtime: topics and health checks."""

from __future__ import annotations

CAMERA = '/camera/image_raw'
DETECTIONS = '/detections'
DECISION = '/offload/decision'
FRAMES = '/offload/frames'
ANNOTATED = '/offload/annotated'
ANNOTATIONS = '/offload/annotations'
DIAGNOSTICS = '/diagnostics'
HEALTH_EVENTS = '/health/events'
HEALTH_FAULTS = '/health/faults'
CLOUD_DETECTIONS = '/cloud/detections'
CLOUD_TELEMETRY = '/cloud/telemetry'
# Boxes that are really in each frame (a recording's or a generated bag's), for scoring.
GROUND_TRUTH = '/camera/ground_truth'
ROOT_EDGE_SOURCE = 'edge'

# Names of the health checks' statuses on /diagnostics, which the manager and the fault
# measures match on.
CHECK_CLOUD = 'adaptive_offload: cloud'
CHECK_CLOUD_READINESS = 'adaptive_offload: cloud readiness'
CHECK_UPLINK_BANDWIDTH = 'adaptive_offload: uplink bandwidth'
CHECK_FAULT_INJECTION = 'adaptive_offload: fault injection'
CHECK_GOALS = 'adaptive_offload: offload goals'


def topic_rate_check(topic: str) -> str:
    """Name of the rate check of one monitored topic."""
    return f'adaptive_offload: {topic} rate'


def edge_topic(source: str, leaf: str) -> str:
    """Topic of an edge target: ``/edge/<leaf>`` for ``edge``, ``/<source>/edge/<leaf>`` else.

    An ``edge_inference`` node publishes on the relative name ``edge/<leaf>``, so a node in
    namespace ``/pi`` (source name ``pi``) lands on ``/pi/edge/<leaf>``.
    """
    prefix = '' if source == ROOT_EDGE_SOURCE else f'/{source.strip("/")}'
    return f'{prefix}/edge/{leaf}'


def misplaced_source(source: str, namespace: str) -> str:
    """Say why an edge target in ``namespace`` is not heard as ``source``; empty if it is.

    The manager listens for source ``source`` on :func:`edge_topic`; the node publishes on
    ``edge/...`` relative to its namespace. Named ``robot`` but launched at the root, its
    answers and reports would reach no manager.
    """
    published = f'{namespace.rstrip("/")}/edge/detections'
    expected = edge_topic(source, 'detections')
    if published == expected:
        return ''
    return (f'source_name {source!r} in namespace {namespace!r} publishes on {published}, '
            f'but a manager listens for {source!r} on {expected}: launch it in namespace '
            f'{expected[:-len("/edge/detections")] or "/"} or set source_name to match')
