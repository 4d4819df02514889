"""The cloud service run inside the replay's process on loopback, for one run."""

from __future__ import annotations

from dataclasses import replace
import threading
from typing import Callable

from adaptive_offload.errors import BackendError
from rcnn_service.service import InferenceService, ServiceConfig


class EmbeddedService:
    """Start the V2 service on a free loopback port; it loads its model in the background.

    Args:
        config: The service; host and port are replaced by loopback and a free port.
    """

    def __init__(self, config: ServiceConfig) -> None:
        self._service = InferenceService(replace(config, host='127.0.0.1', port=0))
        threading.Thread(target=self._service.serve_forever, name='service',
                         daemon=True).start()

    @property
    def url(self) -> str:
        """Return the service's URL (the port is known before the model is loaded)."""
        return self._service.url

    def wait_ready(self, timeout_s: float, clock: Callable[[], int],
                   sleep: Callable[[float], None],
                   stopped: Callable[[], bool] = lambda: False) -> None:
        """Wait until the model is loaded.

        Args:
            timeout_s: Longest wait.
            clock: Monotonic nanosecond clock.
            sleep: Sleeps seconds.
            stopped: Returns True when the run is stopped: the wait then ends at once.

        Raises:
            BackendError: If loading failed or took longer than ``timeout_s``.
        """
        deadline = clock() + int(timeout_s * 1e9)
        while not self._service.ready and not self._service.load_error and not stopped():
            if clock() > deadline:
                raise BackendError('the embedded cloud service was not ready in '
                                   f'{timeout_s:.0f} s')
            sleep(0.05)
        if self._service.load_error:
            raise BackendError(f'embedded cloud service: {self._service.load_error}')

    def shutdown(self) -> None:
        """Stop serving and release the port."""
        self._service.shutdown()
