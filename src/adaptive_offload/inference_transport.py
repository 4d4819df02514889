"""The contract between the cloud bridge and any transport to the inference service.

The V2 transports implement it, and fault injection wraps it; both import it from here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np


@dataclass(frozen=True)
class CloudReply:
    """Detections returned by the service, in pixels of the image that was sent.

    Attributes:
        boxes: Nx4 float array, x1 y1 x2 y2.
        scores: N confidences.
        labels: N class names.
        request_ms: Round trip measured by the client.
        bytes_sent: Request body size.
        server_ms: Server-side time when the server reports it (``parameters.server_us``).
        queue_ms: The part of it the request waited in the service's queue, when the server
            reports it (``parameters.queue_us``): the service's load, apart from the network.
    """

    boxes: np.ndarray
    scores: np.ndarray
    labels: tuple[str, ...]
    request_ms: float
    bytes_sent: int
    server_ms: float | None = None
    queue_ms: float | None = None


class InferenceTransport(Protocol):
    """Sends one encoded image to the service."""

    def infer(self, image: bytes, timeout_s: float) -> CloudReply:
        """Run inference on JPEG/PNG bytes within ``timeout_s``.

        Raises:
            CloudError: With reason ``timeout``, ``connection``, ``http_<code>`` or
                ``bad_reply``.
        """

    def close(self) -> None:
        """Release connections."""
