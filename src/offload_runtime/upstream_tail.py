"""A middle device's way to the cloud: the bridge's tail client as the service's upstream.

``adaptive-offload serve --upstream URL`` on an edge computer forwards three-tier requests
(:mod:`rcnn_service.middle_part`) to the cloud service's tail model through
:class:`cloud_bridge.tail_client.V2TailTransport`, the client a robot's bridge uses: the same
connections, token, CA, budget and error reasons. This module turns those errors into the
middle service's answers, so that the robot reads the cloud's refusal as it would read it
directly.
"""

from __future__ import annotations

import socket
from typing import Any, Mapping

from adaptive_offload.errors import CloudError
from adaptive_offload.split_wire import SplitTensors
from cloud_bridge.tail_client import V2TailTransport
import numpy as np
from rcnn_service.guard import Overloaded, RequestError
from rcnn_service.rcnn_detector import Detections
from rcnn_service.rcnn_split import EncodedPayload


class UpstreamTail:
    """The cloud's tail model, reached over V2 REST (an ``Upstream`` of the middle part).

    Args:
        url: The cloud service's base URL, ``http(s)://host:port``.
        model: The image model's name there (its tail is ``<model>-tail``).
        token: Bearer token the cloud accepts from this device; empty sends none.
        ca_file: PEM CA file that verifies an https cloud; empty trusts the system's CAs.
        device_id: The id sent with requests that name no robot (the host name by default).

    Raises:
        ConfigError: For a URL that is not http(s), or a bad CA file.
    """

    def __init__(self, url: str, model: str, token: str = '', ca_file: str = '',
                 device_id: str = '') -> None:
        self.url = url
        self._tail = V2TailTransport(url, model, token, ca_file,
                                     device_id or socket.gethostname())

    def metadata(self, timeout_s: float) -> Mapping[str, Any]:
        """Return the cloud's tail metadata.

        Raises:
            RequestError: 504 if it did not answer in time, 502 for any other failure.
        """
        try:
            return self._tail.metadata(timeout_s)
        except CloudError as err:
            raise self._answer(err, '') from err

    def infer(self, payload: EncodedPayload | SplitTensors, timeout_s: float,
              robot: str) -> Detections:
        """Send one payload for ``robot`` (empty: this device's id) and return the detections.

        Raises:
            Overloaded: 503 if the cloud refused it for load, with the cloud's retry time.
            RequestError: 504 if it did not answer in time, 502 for any other failure.
        """
        try:
            reply = self._tail.infer(payload, timeout_s, {'robot_id': robot} if robot else None)
        except CloudError as err:
            raise self._answer(err, robot) from err
        return Detections(np.asarray(reply.boxes, np.float32).reshape(-1, 4),
                          np.asarray(reply.scores, np.float32), tuple(reply.labels))

    def close(self) -> None:
        """Release connections."""
        self._tail.close()

    def _answer(self, err: CloudError, robot: str) -> RequestError:
        if err.reason == 'overloaded':
            return Overloaded('upstream', robot, err.retry_after_s or 1.0,
                              f'the cloud at {self.url} refused: {err.detail}')
        status = 504 if err.reason == 'timeout' else 502
        return RequestError(status, f'the cloud at {self.url}: {err.reason}: {err.detail}'[:400])
