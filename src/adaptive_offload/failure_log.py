"""A file-backed log of cloud request outcomes and health events that survives restarts.

The health monitor appends one JSON line per cloud request outcome and per health level
change, with the wall-clock time; the offload manager reads the request outcomes at start to
warm its availability predictor, so a restarted robot remembers that the cloud failed an hour
ago. Unreadable lines are skipped (a crash may cut the last one).
"""

from __future__ import annotations

import json
from pathlib import Path
import threading
import time
from typing import Any, Callable

from adaptive_offload.datatypes import InferenceReport
from adaptive_offload.errors import ConfigError
from adaptive_offload.health_records import HealthEvent


class FailureLog:
    """Appends outcomes and events to a JSON-lines file.

    Args:
        path: The log file (created with its folder).
        wall: Wall clock, seconds since the epoch.

    Raises:
        ConfigError: If the file cannot be opened for appending.
    """

    def __init__(self, path: str | Path, wall: Callable[[], float] = time.time) -> None:
        self.path = Path(path)
        self._wall = wall
        self._lock = threading.Lock()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fh = self.path.open('a', encoding='utf-8')
        except OSError as err:
            raise ConfigError(f'cannot open failure history {self.path}: {err}') from err

    def _write(self, entry: dict[str, Any]) -> None:
        with self._lock:
            self._fh.write(json.dumps({'t': self._wall(), **entry}) + '\n')
            self._fh.flush()

    def report(self, report: InferenceReport) -> None:
        """Log a cloud request's outcome (other reports made no request)."""
        if report.source == 'cloud' and report.status in ('ok', 'failed'):
            self._write({'type': 'request', 'ok': report.status == 'ok',
                         'reason': report.reason})

    def event(self, event: HealthEvent) -> None:
        """Log a health level change."""
        self._write({'type': 'health', 'name': event.name, 'level': event.level})

    def close(self) -> None:
        """Close the file."""
        with self._lock:
            self._fh.close()


def load_outcomes(path: str | Path, now_wall: float, now_s: float,
                  max_age_s: float = 3600.0) -> list[tuple[float, bool]]:
    """Request outcomes from a log, on the caller's monotonic time scale.

    Args:
        path: The log; a missing file is an empty history.
        now_wall: Wall time now (seconds since the epoch).
        now_s: The caller's monotonic time now, seconds.
        max_age_s: Older outcomes are left out.

    Returns:
        (time, ok) pairs in time order.
    """
    try:
        lines = Path(path).read_text(encoding='utf-8').splitlines()
    except FileNotFoundError:
        return []
    except OSError as err:
        raise ConfigError(f'cannot read failure history {path}: {err}') from err
    out = []
    for line in lines:
        try:
            entry = json.loads(line)
            if entry.get('type') == 'request' and now_wall - entry['t'] <= max_age_s:
                out.append((now_s - (now_wall - float(entry['t'])), bool(entry['ok'])))
        except (ValueError, KeyError, TypeError):
            continue
    return sorted(out)
