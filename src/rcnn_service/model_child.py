"""The model's own process: loads the model from the service's config and answers batches.

Started by :class:`rcnn_service.model_process.ModelProcess` with the ``spawn`` start method (a
fresh interpreter: no copy of the parent's threads, locks or CUDA state). It imports neither
the HTTP server nor the batcher, only the model. Messages on its pipe, all small:

* to the child: ``('run', batch_id, items)``, each item a
  :class:`rcnn_service.shared_frames.FrameHeader` (a frame in shared memory) or a
  :class:`TailWire` (a tail request's tensors, pickled); ``('stop',)``.
* from the child: ``('ready', TailSpec | None)`` once the model is loaded and warm, or
  ``('load_error', message)``; ``('done', batch_id, detections)`` or
  ``('failed', batch_id, ErrorWire)`` for each batch.

The parent owns its lifetime: it ignores SIGINT and SIGTERM (a Ctrl-C reaches the whole
process group, and the parent stops it after the requests under way), and it exits when its
pipe closes, so it never outlives a parent that was killed.
"""

from __future__ import annotations

from dataclasses import dataclass
import signal
from typing import Any, Sequence

from adaptive_offload.errors import AdaptiveOffloadError
import numpy as np
from rcnn_service.guard import RequestError
from rcnn_service.rcnn_split import RcnnPayload, Size
from rcnn_service.service_config import ServiceConfig
from rcnn_service.shared_frames import AttachedFrames, FrameHeader
from rcnn_service.split_tail import ModelInput, TailJob

_MAX_ERROR = 500


@dataclass(frozen=True)
class TailWire:
    """A tail request's payload as it crosses to the child: numpy arrays, no torch tensors.

    Attributes:
        point: Index of the split point.
        arrays: The crossing tensors by name.
        padded_size: As :class:`rcnn_service.rcnn_split.RcnnPayload`.
        image_sizes: As :class:`rcnn_service.rcnn_split.RcnnPayload`.
        original_sizes: As :class:`rcnn_service.rcnn_split.RcnnPayload`.
    """

    point: int
    arrays: dict[str, np.ndarray]
    padded_size: Size
    image_sizes: tuple[Size, ...]
    original_sizes: tuple[Size, ...]

    @classmethod
    def of(cls, payload: RcnnPayload) -> TailWire:
        """Return a payload's wire form (its tensors copied to host memory)."""
        return cls(payload.point, {n: t.detach().cpu().numpy() for n, t in
                                   payload.tensors.items()},
                   payload.padded_size, payload.image_sizes, payload.original_sizes)

    def payload(self, device: Any) -> RcnnPayload:
        """Return the payload again, its tensors on ``device``."""
        import torch

        return RcnnPayload(self.point, {n: torch.from_numpy(a).to(device)
                                        for n, a in self.arrays.items()},
                           self.padded_size, self.image_sizes, self.original_sizes)


@dataclass(frozen=True)
class ErrorWire:
    """An exception of the child's model, as the parent raises it again.

    Attributes:
        status: The :class:`rcnn_service.guard.RequestError` status; 0 for any other error.
        message: Its message (with the type's name for any other error).
    """

    status: int
    message: str

    @classmethod
    def of(cls, err: Exception) -> ErrorWire:
        """Return an exception's wire form."""
        if isinstance(err, RequestError):
            return cls(err.status, str(err))
        return cls(0, f'{type(err).__name__}: {str(err)[:_MAX_ERROR]}')

    def error(self) -> Exception:
        """Return the exception to raise in the parent."""
        if self.status:
            return RequestError(self.status, self.message)
        return RuntimeError(f'the model process failed: {self.message}')


def load_model(config: ServiceConfig) -> Any:
    """Load the model as the in-process service does: a :class:`LocalModel` of the config.

    Raises:
        AdaptiveOffloadError: What :class:`rcnn_service.rcnn_detector.RcnnDetector` raises.
    """
    from rcnn_service.image_model import LocalModel
    from rcnn_service.rcnn_detector import RcnnDetector

    return LocalModel(RcnnDetector(config.arch, config.checkpoint, config.device,
                                   config.score_threshold, config.threads, config.input_size))


def main(config: ServiceConfig, conn: Any, frame_names: Sequence[str]) -> None:
    """Run the child: load the model, say so, answer batches until told to stop.

    Args:
        config: The service's settings (arch, checkpoint, device, threads, input size...).
        conn: This end of the pipe to the parent.
        frame_names: Names of the parent's shared-memory slots.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    frames = AttachedFrames(frame_names)
    try:
        model = load_model(config)
    except AdaptiveOffloadError as err:
        conn.send(('load_error', str(err)))
        return
    split_tail = model.split_tail
    conn.send(('ready', None if split_tail is None else split_tail.spec))
    device = model.detector.device
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            return  # the parent is gone
        if message[0] != 'run':
            return
        _, batch_id, wire = message
        try:
            items: list[ModelInput] = [
                frames.get(w) if isinstance(w, FrameHeader) else TailJob(w.payload(device))
                for w in wire]
            conn.send(('done', batch_id, model.run(items)))
        except Exception as err:  # the parent raises it for the batch, as in-process
            conn.send(('failed', batch_id, ErrorWire.of(err)))
