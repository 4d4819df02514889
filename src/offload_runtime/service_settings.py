"""The service a simulated fleet shares: replicas, batch times and pod lifecycle timings."""

from __future__ import annotations

from dataclasses import dataclass

from adaptive_offload.errors import ConfigError


@dataclass(frozen=True)
class ServiceSettings:
    """The service a fleet shares.

    Attributes:
        replicas: Replicas at the start (and throughout, without an autoscaler).
        min_replicas: Fewest an autoscaler keeps.
        max_replicas: Most an autoscaler asks for.
        first_ms: Time of a batch of one image on one replica; 0: the cloud profile's time of
            the cloud model (the fleet evaluation fills it in).
        batch_extra: What each further image of a batch adds, as a share of ``first_ms``.
        max_batch: Largest batch (``serve --max-batch``).
        max_queue: Requests a replica queues (``serve --max-queue``).
        pod_start_s: Image pull, model load and warm-up of a new or restarted pod.
        scale_up_delay_s: From the scale decision to the pod's start (scheduling).
        detect_s: From a replica becoming unreachable to the balancer dropping it.
        evict_s: From a replica becoming unreachable to its replacement being created.
        zones: Zones the replicas are spread over, in turn.
    """

    replicas: int = 4
    min_replicas: int = 1
    max_replicas: int = 32
    first_ms: float = 0.0
    batch_extra: float = 0.55
    max_batch: int = 8
    max_queue: int = 128
    pod_start_s: float = 60.0
    scale_up_delay_s: float = 5.0
    detect_s: float = 10.0
    evict_s: float = 300.0
    zones: int = 2

    def __post_init__(self) -> None:
        if not 1 <= self.min_replicas <= self.replicas <= self.max_replicas:
            raise ConfigError(f'need 1 <= min_replicas ({self.min_replicas}) <= replicas '
                              f'({self.replicas}) <= max_replicas ({self.max_replicas})')
        if self.first_ms < 0 or self.batch_extra < 0 or self.max_batch < 1 or self.zones < 1:
            raise ConfigError('need first_ms >= 0, batch_extra >= 0, max_batch >= 1, zones >= 1')
        if min(self.pod_start_s, self.scale_up_delay_s, self.detect_s, self.evict_s) < 0:
            raise ConfigError('pod_start_s, scale_up_delay_s, detect_s and evict_s must be >= 0')

    def batch_s(self, size: int) -> float:
        """Return the profile's seconds for a batch of ``size``."""
        return self.first_ms * (1.0 + self.batch_extra * (size - 1)) / 1e3
