"""What a request tells the service of its time, and what a load refusal tells the robot.

Every request carries its robot's id and its budget (V2 request parameters ``robot_id`` and
``budget_us``): the service serves robots in turn and refuses at once what it cannot answer in
time. Such a refusal (HTTP 503 or gRPC RESOURCE_EXHAUSTED, reason ``overloaded``) says when to
come back.
"""

from __future__ import annotations

import re
import threading
from typing import Any

from adaptive_offload.errors import CloudError

_RETRY_AFTER_MS = re.compile(r'retry after (\d+) ms')


class RequestBudget:
    """What each request tells the service: who sends it, and how long its answer is useful.

    The service counts the budget from the request's arrival, so the time the network takes
    (upload, download; measured as round trip less server time) comes off the time left.

    Args:
        robot_id: The robot's id; empty sends none.
        alpha: Weight of the newest request in the smoothed network time.
    """

    def __init__(self, robot_id: str = '', alpha: float = 0.2) -> None:
        self.robot_id = robot_id
        self._alpha = alpha
        self._network_s: float | None = None
        self._lock = threading.Lock()

    def parameters(self, timeout_s: float) -> dict[str, Any]:
        """Return the V2 request parameters of a request that may take ``timeout_s``."""
        with self._lock:
            network_s = self._network_s or 0.0
        params: dict[str, Any] = {'budget_us': max(0, round((timeout_s - network_s) * 1e6))}
        if self.robot_id:
            params['robot_id'] = self.robot_id
        return params

    def observe(self, request_ms: float, server_ms: float | None) -> None:
        """Record a reply's round trip and the server time it reported."""
        if server_ms is None:
            return
        network_s = max(0.0, request_ms - server_ms) / 1e3
        with self._lock:
            old = self._network_s
            self._network_s = network_s if old is None else \
                old + self._alpha * (network_s - old)


def overloaded(detail: str, bytes_sent: int, retry_after_s: float | None = None) -> CloudError:
    """Return the error of a request the service refused for load (it said when to retry)."""
    if retry_after_s is None:
        found = _RETRY_AFTER_MS.search(detail)
        retry_after_s = int(found.group(1)) / 1e3 if found else 1.0
    return CloudError('overloaded', detail, bytes_sent, retry_after_s)
