"""Adaptive batching for the service: requests that wait together run as one batch.

A single worker thread runs the detector. While it is busy, new requests queue; when it is
free it takes everything queued (up to ``max_batch``) as the next batch. Under light load a
request runs alone at once (``max_wait_ms`` = 0) and under heavy load batches grow by
themselves, so nobody waits for a batch to fill. Each request keeps its own errors: a batch
that raises fails only if every image fails alone too.
"""

from __future__ import annotations

from collections import deque
from concurrent.futures import Future
import threading
from typing import Callable, Generic, Sequence, TypeVar

from adaptive_offload.errors import ConfigError

In = TypeVar('In')
Out = TypeVar('Out')


class AdaptiveBatcher(Generic[In, Out]):
    """Runs ``run_batch`` on the requests that queued while the previous batch ran.

    Args:
        run_batch: Maps a list of inputs to one output each, in order.
        max_batch: Largest batch.
        max_wait_ms: How long a lone request waits for company (0: never).
        on_batch: Called with the size of each batch as it starts (metrics).

    Raises:
        ConfigError: For a batch size below 1 or a negative wait.
    """

    def __init__(self, run_batch: Callable[[list[In]], Sequence[Out]], max_batch: int = 4,
                 max_wait_ms: float = 0.0,
                 on_batch: Callable[[int], None] | None = None) -> None:
        if max_batch < 1 or max_wait_ms < 0:
            raise ConfigError(f'need max_batch >= 1 and max_wait_ms >= 0, got {max_batch}, '
                              f'{max_wait_ms}')
        self._run = run_batch
        self.max_batch = max_batch
        self._wait_s = max_wait_ms / 1e3
        self._queue: deque[tuple[In, Future[Out]]] = deque()
        self._cond = threading.Condition()
        self._closed = False
        self._on_batch = on_batch
        self._thread = threading.Thread(target=self._loop, name='batcher', daemon=True)
        self._thread.start()

    @property
    def alive(self) -> bool:
        """Whether requests are taken and run (not closed, worker thread running)."""
        return not self._closed and self._thread.is_alive()

    def submit(self, item: In) -> Future[Out]:
        """Queue one input; the future holds its output or its exception.

        Raises:
            RuntimeError: After :meth:`close`.
        """
        future: Future[Out] = Future()
        with self._cond:
            if self._closed:
                raise RuntimeError('batcher is closed')
            self._queue.append((item, future))
            self._cond.notify()
        return future

    def close(self, timeout_s: float = 10.0, drain: bool = True) -> None:
        """Stop taking requests and join the worker once the queue is done.

        Args:
            timeout_s: Longest wait for the worker.
            drain: Run the queued requests first; False cancels them (their futures raise
                ``CancelledError``), so only the batch under way is finished.
        """
        with self._cond:
            self._closed = True
            dropped = [] if drain else list(self._queue)
            if not drain:
                self._queue.clear()
            self._cond.notify()
        for _, future in dropped:
            # Notified too: concurrent.futures.wait() counts a cancelled future as done only
            # then, and the worker that would notify it never sees it now.
            if future.cancel():
                future.set_running_or_notify_cancel()
        self._thread.join(timeout_s)

    def _next_batch(self) -> list[tuple[In, Future[Out]]]:
        with self._cond:
            while not self._queue and not self._closed:
                self._cond.wait()
            if self._wait_s and len(self._queue) < self.max_batch and not self._closed:
                self._cond.wait_for(lambda: len(self._queue) >= self.max_batch or self._closed,
                                    self._wait_s)
            n = min(len(self._queue), self.max_batch)
            return [self._queue.popleft() for _ in range(n)]

    def _loop(self) -> None:
        while True:
            batch = self._next_batch()
            if not batch:
                return  # closed and drained
            batch = [(item, fut) for item, fut in batch if fut.set_running_or_notify_cancel()]
            if batch:
                if self._on_batch is not None:
                    self._on_batch(len(batch))
                self._finish(batch)

    def _finish(self, batch: list[tuple[In, Future[Out]]]) -> None:
        try:
            outputs = list(self._run([item for item, _ in batch]))
            if len(outputs) != len(batch):
                raise RuntimeError(f'batch of {len(batch)} gave {len(outputs)} outputs')
        except Exception as err:  # delivered to the waiting requests
            if len(batch) == 1:
                batch[0][1].set_exception(err)
                return
            for item, fut in batch:  # one bad input must not fail its neighbours
                try:
                    fut.set_result(self._run([item])[0])
                except Exception as single:
                    fut.set_exception(single)
            return
        for (_, fut), out in zip(batch, outputs):
            fut.set_result(out)
