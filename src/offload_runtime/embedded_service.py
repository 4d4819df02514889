"""The cloud service run inside the replay's process on loopback, for one run."""

from __future__ import annotations

from dataclasses import replace
import threading
from typing import Any, Callable

from adaptive_offload.errors import AdaptiveOffloadError, BackendError
import numpy as np
from rcnn_service.input_size import CANDIDATES, fit_input_size
from rcnn_service.service import InferenceService, ServiceConfig

# Of the deadline, what the model may take of a frame: the rest is the JPEG, the transport,
# and a frame that waits behind another.
BUDGET_SHARE = 0.6
CAMERA = (480, 640)  # height, width of the frame the sizes are timed on


def _quiet(line: str) -> None:
    """Say nothing."""


class EmbeddedService:
    """Start the V2 service on a free loopback port.

    Args:
        config: The service; host and port are replaced by loopback and a free port.
        deadline_ms: The robot's deadline. Without an input size in ``config``, the model is
            loaded here and timed at each candidate size, and serves at the largest whose
            time fits :data:`BUDGET_SHARE` of it (the smallest if none does); 0 keeps the
            architecture's own size and loads the model in the background.
        status: Told in one line which size was chosen and why, or that none fits.

    Raises:
        BackendError: If the model does not load (when it is timed here).
    """

    def __init__(self, config: ServiceConfig, deadline_ms: float = 0.0,
                 status: Callable[[str], Any] = _quiet) -> None:
        detector = None
        if deadline_ms > 0 and not config.input_size:
            from rcnn_service.rcnn_detector import RcnnDetector

            try:
                detector = RcnnDetector(config.arch, config.checkpoint, config.device,
                                        config.score_threshold, config.threads)
            except AdaptiveOffloadError as err:
                raise BackendError(f'embedded cloud service: {err}') from err
            noise = np.random.default_rng(0).integers(0, 255, (*CAMERA, 3), np.uint8)
            fit = fit_input_size(detector, BUDGET_SHARE * deadline_ms, noise)
            detector.set_input_size(fit.size or min(CANDIDATES))
            config = replace(config, input_size=detector.input_size)
            status(fit.describe(config.arch, deadline_ms))
        self.input_size = config.input_size
        self._service = InferenceService(replace(config, host='127.0.0.1', port=0), detector)
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
