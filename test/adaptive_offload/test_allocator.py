"""The allocator setting that keeps a CPU model's activations mapped."""

from __future__ import annotations

import ctypes
import sys
from typing import Any

from adaptive_offload import allocator
import pytest


@pytest.mark.skipif(not sys.platform.startswith('linux'), reason='glibc only')
def test_glibc_takes_the_thresholds_and_again() -> None:
    assert allocator.keep_freed_memory() is True
    assert allocator.keep_freed_memory() is True


def test_a_c_library_without_mallopt_is_left_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_mallopt(name: str) -> Any:
        return object()

    monkeypatch.setattr(ctypes, 'CDLL', no_mallopt)
    assert allocator.keep_freed_memory() is False
