"""What the batcher runs a batch on: the model in this process, or in a process of its own.

Both implementations satisfy :class:`ImageModel`: :class:`LocalModel` here, and
:class:`rcnn_service.model_process.ModelProcess`, which runs the same :class:`LocalModel` in a
child process so that request handling (parsing, JSON, the event loop) never holds the
interpreter the model's kernel launches wait for.
"""

from __future__ import annotations

from typing import Any, Protocol

from rcnn_service.guard import ModelUnavailable
from rcnn_service.rcnn_detector import Detections
from rcnn_service.split_tail import ModelInput, SplitTail, TailChecks, TailJob


class ImageModel(Protocol):
    """The model as the service sees it.

    Attributes:
        tail: Checks the requests to the tail model; None when the model does not split.
    """

    tail: TailChecks | None

    @property
    def ready(self) -> bool:
        """Whether a batch can run now (False while a model process is (re)starting)."""

    def run(self, items: list[ModelInput]) -> list[Detections]:
        """Run one batch: the images as one batch, each tail request alone.

        Raises:
            RequestError: A tail request the model refuses (400), or out of memory (503).
            ModelUnavailable: The model's process died or is restarting (503, retryable).
        """

    def unavailable(self, detail: str) -> ModelUnavailable:
        """Return the refusal for a request the model cannot take now (while not ready)."""

    def close(self) -> None:
        """Release the model (stop its process, if it has one)."""


class LocalModel:
    """A detector in this process, as an :class:`ImageModel`.

    Args:
        detector: A loaded :class:`rcnn_service.rcnn_detector.RcnnDetector`, or a stand-in
            with its ``detect`` (tests): that one serves no tail.
    """

    def __init__(self, detector: Any) -> None:
        self.detector = detector
        self.split_tail = SplitTail.of(detector)
        self.tail: TailChecks | None = self.split_tail

    @property
    def ready(self) -> bool:
        """Always: a loaded detector can run."""
        return True

    def run(self, items: list[ModelInput]) -> list[Detections]:
        """Run one batch: the images as one batch, each tail request alone."""
        images = [i for i in items if not isinstance(i, TailJob)]
        found = iter(self.detector.detect(images) if images else [])
        return [self._tail(i) if isinstance(i, TailJob) else next(found) for i in items]

    def _tail(self, job: TailJob) -> Detections:
        if self.split_tail is None:  # a tail request is only read where a tail exists
            raise RuntimeError('this model does not split')
        return self.split_tail.run(job.payload)

    def unavailable(self, detail: str) -> ModelUnavailable:
        """Return the refusal for a request the model cannot take now (never: it is ready)."""
        return ModelUnavailable(detail, 1.0)

    def close(self) -> None:
        """Nothing to release: the detector goes with its last reference."""
