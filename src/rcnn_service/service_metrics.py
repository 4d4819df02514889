"""The service's load metrics, for dashboards and for the autoscaler (Prometheus).

What a GPU inference service's load is: how many requests wait (``queue_depth``), how long
they wait (``queue_wait_seconds``), how full its batches are (``batch_size``), how many answers
were useful (``goodput_total``: computed within their budget) and how many requests it refused
because it could not answer in time (``refusals_total``, by reason and robot); and how often
its model process died (``model_process_deaths_total``, by cause), for alerts. CPU utilisation
says little of it: a GPU-bound process shows one busy core whether its queue is empty or
overflowing.

What the autoscaler sizes the service by: the load offered to a pod against what it can
compute. ``offered_total`` counts every request that reached admission, once, whatever its
fate (answered in or after its budget, refused at once, or later pushed out or expired);
``capacity_images_per_second`` is the images a second the pod computes at its best batch size,
from the batch times it measured at start and keeps measuring. Their ratio,
``rate(offered_total) / capacity``, is the pod's offered utilisation (1: offered exactly what
it can compute). Requests refused before admission (malformed, unauthorised, model not ready)
are not offered load. ``busy_seconds_total`` counts the seconds the model computed batches:
its rate is the share of the time the pod is busy, which the offered utilisation misses when
batches do not fill (a pod computing one image at a time is busy long before the offered
load reaches what it computes at its best batch size).
"""

from __future__ import annotations

import threading
from typing import Any, Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from rcnn_service.guard import Overloaded

MAX_ROBOT_LABELS = 256
"""Distinct robot labels kept; later robots are counted as ``other`` (bounded series)."""
_BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 32)
_WAIT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class ServiceMetrics:
    """Counters, gauges and histograms of the queue, registered on ``registry``.

    Args:
        registry: Where they are exported (a service's own, or the process's default).
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        self.queue_depth = Gauge('adaptive_offload_queue_depth',
                                 'Requests waiting for the model', registry=registry)
        self.queue_wait = Histogram('adaptive_offload_queue_wait_seconds',
                                    'Time a request waited for its batch to start',
                                    buckets=_WAIT_BUCKETS, registry=registry)
        self.batch_size = Histogram('adaptive_offload_batch_size', 'Requests per model batch',
                                    buckets=_BATCH_BUCKETS, registry=registry)
        self.goodput = Counter('adaptive_offload_goodput',
                               'Answers computed within their budget', registry=registry)
        self.late = Counter('adaptive_offload_late_answers',
                            'Answers that finished after their budget', registry=registry)
        self.refusals = Counter('adaptive_offload_refusals',
                                'Requests refused for lack of time or room, by reason and robot',
                                ['reason', 'robot'], registry=registry)
        self.offered = Counter('adaptive_offload_offered',
                               'Requests that reached admission, admitted or refused',
                               registry=registry)
        self.busy = Counter('adaptive_offload_busy_seconds',
                            'Seconds the model spent computing batches of requests',
                            registry=registry)
        self.capacity = Gauge('adaptive_offload_capacity_images_per_second',
                              'Images a second the model computes at its best batch size, from '
                              'its measured batch times (0 until measured)', registry=registry)
        self.model_deaths = Counter('adaptive_offload_model_process_deaths',
                                    'Deaths of the model process, by cause: exited, or killed '
                                    'as hung (batch_timeout, load_timeout)', ['cause'],
                                    registry=registry)
        self._robots: set[str] = set()
        self._lock = threading.Lock()

    def watch(self, depth: Callable[[], int],
              capacity: Callable[[], float] = lambda: 0.0) -> None:
        """Read the queue depth and the capacity at each scrape.

        Read, not set: the batch times are measured again with every batch, so the capacity
        exported is always that of the newest times.

        Args:
            depth: Requests waiting now.
            capacity: Images a second the model computes (e.g.
                :attr:`rcnn_service.batching.AdaptiveBatcher.capacity`); 0 until measured.
        """
        self.queue_depth.set_function(depth)
        self.capacity.set_function(capacity)

    def death_counter(self, causes: tuple[str, ...]) -> Callable[[str], None]:
        """Export a zero for each cause of a model process's death; return what counts one.

        Each cause's series exists from the start, so an alert on its increase sees the first
        death (a counter that appears at 1 has no increase to see).

        Args:
            causes: The causes the model process reports
                (:data:`rcnn_service.model_process.DEATH_CAUSES`).
        """
        for cause in causes:
            self.model_deaths.labels(cause)
        return lambda cause: self.model_deaths.labels(cause).inc()

    def answered(self, queue_wait_s: float, in_budget: bool) -> None:
        """Count an answer computed for a request."""
        self.queue_wait.observe(queue_wait_s)
        (self.goodput if in_budget else self.late).inc()

    def refused(self, err: Overloaded) -> None:
        """Count a request refused for lack of time or room."""
        self.refusals.labels(err.reason, self._label(err.robot)).inc()

    def _label(self, robot: str) -> str:
        with self._lock:
            if robot in self._robots:
                return robot
            if len(self._robots) < MAX_ROBOT_LABELS:
                self._robots.add(robot)
                return robot
        return 'other'


def exposition(registry: CollectorRegistry) -> str:
    """Return the registry's metrics in the Prometheus text format."""
    from prometheus_client import generate_latest

    text: Any = generate_latest(registry)
    return text.decode()
