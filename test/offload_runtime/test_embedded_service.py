"""The embedded service serves the architecture and size this machine answers in, in time."""

from __future__ import annotations

import time

from adaptive_offload.errors import BackendError
from offload_runtime.embedded_service import EmbeddedService
import pytest
from rcnn_service.compact_rcnn import COMPACT_ARCH
from rcnn_service.service import ServiceConfig

CONFIG = ServiceConfig(arch=COMPACT_ARCH, threads=1)


def _start(deadline_ms: float, lines: list[str], config: ServiceConfig = CONFIG,
           alternatives: tuple[ServiceConfig, ...] = ()) -> int:
    service = EmbeddedService(config, deadline_ms, lines.append, alternatives)
    try:
        service.wait_ready(60.0, time.monotonic_ns, time.sleep)
        assert service.arch in {c.arch for c in (config, *alternatives)}
        return service.input_size
    finally:
        service.shutdown()


def test_a_deadline_it_easily_meets_keeps_the_largest_size() -> None:
    lines: list[str] = []
    assert _start(60_000.0, lines) == 640
    [line] = lines
    assert line.startswith(f'cloud service: {COMPACT_ARCH} reads frames at 640 px')


def test_a_deadline_no_size_meets_takes_the_smallest_and_says_so() -> None:
    lines: list[str] = []
    assert _start(1.0, lines) == 320
    [line] = lines
    assert 'no input size' in line and '(640: ' in line and ', 320: ' in line


def test_a_size_given_or_no_deadline_is_kept_without_timing() -> None:
    lines: list[str] = []
    assert _start(1.0, lines, ServiceConfig(arch=COMPACT_ARCH, threads=1, input_size=480)) == 480
    assert _start(0.0, lines) == 0
    assert lines == []


def test_an_architecture_that_does_not_load_is_passed_over_for_the_next() -> None:
    lines: list[str] = []
    missing = ServiceConfig(arch=COMPACT_ARCH, checkpoint='/nonexistent/rcnn.pt', threads=1)
    assert _start(60_000.0, lines, ServiceConfig(arch='resnet-imaginary'), (CONFIG,)) == 640
    [line] = lines
    assert line.startswith(f'cloud service: {COMPACT_ARCH} reads frames at 640 px')
    assert 'passed over resnet-imaginary: did not load: unknown architecture' in line
    with pytest.raises(BackendError, match='resnet-imaginary: unknown architecture.*; '
                                           f'{COMPACT_ARCH}: '):
        EmbeddedService(ServiceConfig(arch='resnet-imaginary'), 250.0, lines.append, (missing,))
