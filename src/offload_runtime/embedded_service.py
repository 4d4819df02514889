"""The cloud service run inside the replay's process on loopback, for one run."""

from __future__ import annotations

from dataclasses import replace
import functools
import threading
from typing import Any, Callable, Mapping, Sequence

from adaptive_offload.errors import BackendError
from adaptive_offload.split_option import parse_spec
import numpy as np
from rcnn_service.input_size import fit_architecture
from rcnn_service.rcnn_detector import RcnnDetector
from rcnn_service.service import InferenceService, ServiceConfig

# Of the deadline, what the model may take of a frame: the rest is the JPEG, the transport,
# and a frame that waits behind another.
BUDGET_SHARE = 0.6
CAMERA = (480, 640)  # height, width of the frame the sizes are timed on


def _quiet(line: str) -> None:
    """Say nothing."""


def _load(config: ServiceConfig) -> RcnnDetector:
    """Load the detector of ``config`` (raises what :class:`RcnnDetector` raises)."""
    return RcnnDetector(config.arch, config.checkpoint, config.device, config.score_threshold,
                        config.threads)


class EmbeddedService:
    """Start the V2 service on a free loopback port.

    Args:
        config: The service; host and port are replaced by loopback and a free port.
        deadline_ms: The robot's deadline. Without an input size in ``config``, the model is
            loaded here and timed at each candidate size, and serves at the largest whose
            time fits :data:`BUDGET_SHARE` of it (the smallest if none does); 0 keeps the
            architecture's own size and loads the model in the background.
        status: Told in one line which architecture and size were chosen and why, or that
            none fits.
        alternatives: Other architectures (and their checkpoints) to fall back on, in order,
            when ``config``'s has no size within the deadline here; the fastest serves when
            none has. Timed only with a deadline.
        upstream: The cloud's tail: this service is then a middle device of three tiers
            (``rcnn_service.middle_part``), its model in this process.

    Raises:
        BackendError: If no model loads (when they are timed here).
    """

    def __init__(self, config: ServiceConfig, deadline_ms: float = 0.0,
                 status: Callable[[str], Any] = _quiet,
                 alternatives: Sequence[ServiceConfig] = (), upstream: Any = None) -> None:
        detector = None
        if deadline_ms > 0 and not config.input_size:
            configs = {c.arch: c for c in (config, *alternatives)}
            noise = np.random.default_rng(0).integers(0, 255, (*CAMERA, 3), np.uint8)
            chosen, detector = fit_architecture(
                [(arch, functools.partial(_load, c)) for arch, c in configs.items()],
                BUDGET_SHARE * deadline_ms, noise)
            if detector is None:
                raise BackendError('embedded cloud service: ' + '; '.join(
                    str(why) if len(configs) == 1 else f'{arch}: {why}'
                    for arch, why in chosen.tried))
            config = replace(configs[chosen.arch], input_size=detector.input_size)
            status(chosen.describe(deadline_ms))
        self.arch = config.arch
        self.input_size = config.input_size
        if upstream is not None:
            config = replace(config, model_process=False)
        self._service = InferenceService(replace(config, host='127.0.0.1', port=0), detector,
                                         upstream=upstream)
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


def start_middle(served: ServiceConfig, cloud_values: Mapping[str, Any],
                 status: Callable[[str], Any] = _quiet) -> EmbeddedService:
    """Start the middle device's service of three-tier options, forwarding to the cloud's.

    Args:
        served: The cloud service's settings: the middle device loads the same weights.
        cloud_values: The bridge's parameters: ``url``, ``model`` and ``token`` of the cloud.
        status: Told in one line what starts.
    """
    from offload_runtime.upstream_tail import UpstreamTail

    status(f"starting the middle device's service on loopback ({served.arch}), forwarding to "
           f'{cloud_values["url"]}; cloud_bridge split_middle_url uses one already running')
    return EmbeddedService(served, upstream=UpstreamTail(
        cloud_values['url'], cloud_values['model'], cloud_values.get('token', ''),
        device_id='middle'))


def with_bottleneck(service: ServiceConfig, options: Sequence[str]) -> ServiceConfig:
    """Return ``service`` decoding the shipped bottleneck when ``options`` need one it lacks.

    The shipped bottleneck fits the shipped compact model only; with other weights the service
    refuses it at load, saying to retrain it.
    """
    if service.bottleneck or not any(o and parse_spec(o).learned for o in options):
        return service
    from adaptive_offload.package_files import shipped_model
    from offload_runtime.bottleneck_training import BOTTLENECK_FILE

    return replace(service, bottleneck=str(shipped_model(BOTTLENECK_FILE)))
