"""The model in a process of its own, as an :class:`rcnn_service.image_model.ImageModel`.

Request handling (HTTP parsing, JSON, the event loop, admission) and the model share no
interpreter: the service's threads can be as busy as they like while the model launches its
kernels. Frames cross through shared memory (:mod:`rcnn_service.shared_frames`), detections
come back through the pipe. The child is :mod:`rcnn_service.model_child`.

Lifecycle: the child starts with the ``spawn`` method and the model is ready only once it has
loaded and warmed up. When it dies, the batch under way fails at once with a retryable refusal
(:class:`rcnn_service.guard.ModelUnavailable`: 503 with Retry-After, gRPC UNAVAILABLE), readiness
turns false, and it is restarted after a back-off (1 s, doubling to 30 s). The fourth death
within 300 s gives up: a crash loop must not look alive (:class:`RestartPolicy`).

A child that hangs without dying (a stuck kernel, a deadlock) would hold every later batch: a
batch that runs over ``ServiceConfig.batch_timeout_s`` gets SIGKILL to its child, and from there
it is a death like any other (the batch refused, readiness false, a restart counted by the
policy). So is a child whose model is not ready within ``ServiceConfig.load_timeout_s`` of
its start.
"""

from __future__ import annotations

import logging
import math
import multiprocessing
from multiprocessing.connection import wait
import threading
import time
from typing import Any, Callable

from adaptive_offload.errors import ConfigError
from rcnn_service.guard import ModelUnavailable
from rcnn_service.image_model import ImageModel
from rcnn_service.model_child import ErrorWire, main as child_main, TailWire
from rcnn_service.rcnn_detector import Detections
from rcnn_service.service_config import ServiceConfig
from rcnn_service.shared_frames import SharedFrames, slot_bytes
from rcnn_service.split_tail import ModelInput, TailChecks, TailJob

LOG = logging.getLogger('adaptive_offload.service.model')
_POLL_S = 0.2
_STOP_S = 5.0
DEATH_CAUSES = ('exited', 'batch_timeout', 'load_timeout')
"""Why a model process died: it exited (crashed, or was killed from outside), or the service
killed it as hung in a batch or in its load."""


class RestartPolicy:
    """When to restart a dead model process, and when to give up.

    Each death waits ``first_s``, doubling with each further death up to ``max_s``; a process
    that stayed up for ``window_s`` starts the doubling again. The ``max_deaths``-th death
    within ``window_s`` gives up. It keeps no clock: the caller passes the times.

    Args:
        first_s: Back-off after the first death.
        max_s: Longest back-off.
        window_s: The window deaths are counted in.
        max_deaths: Deaths within the window that give up.
    """

    def __init__(self, first_s: float = 1.0, max_s: float = 30.0, window_s: float = 300.0,
                 max_deaths: int = 4) -> None:
        self.first_s = first_s
        self.max_s = max_s
        self.window_s = window_s
        self.max_deaths = max_deaths
        self.deaths: list[float] = []
        self._streak = 0

    def died(self, now: float, up_since: float) -> float | None:
        """Record a death; return the back-off before the restart, None to give up.

        Args:
            now: When it died (monotonic seconds).
            up_since: When it was last ready (the start of the back-off doubling resets
                after ``window_s`` up).
        """
        self.deaths = [t for t in self.deaths if now - t < self.window_s] + [now]
        if len(self.deaths) >= self.max_deaths:
            return None
        if now - up_since >= self.window_s:
            self._streak = 0
        delay = min(self.max_s, self.first_s * 2 ** self._streak)
        self._streak += 1
        return delay


def _stop(proc: Any, conn: Any) -> None:
    """Stop a child: ask, then terminate, then kill; return once it is gone."""
    if proc.is_alive():
        try:
            conn.send(('stop',))
        except (OSError, ValueError):
            pass
        proc.join(_STOP_S)
    if proc.is_alive():
        proc.terminate()  # SIGTERM is ignored by a loaded child: only a starting one stops
        proc.join(1.0)
    if proc.is_alive():
        proc.kill()
        proc.join()
    conn.close()


class ModelProcess:
    """The parent's side: starts, feeds, watches and restarts the model's process.

    Args:
        config: The service's settings; the child builds the model from them.
        policy: When to restart; the default restarts after 1 s doubling to 30 s and gives
            up at the 4th death within 300 s.
        on_give_up: Called once, with the reason, when the policy gives up.
        on_death: Called with the cause of each death: ``exited`` (it crashed, or something
            else killed it), ``batch_timeout`` or ``load_timeout`` (hung: the service killed
            it); see :data:`DEATH_CAUSES`.
        clock: Monotonic seconds (the deaths' times, the Retry-After of a restart).
        slots: Frames of a batch that cross through shared memory; 0: ``max_batch``.
        child: The child's main (:func:`rcnn_service.model_child.main`; tests pass one that
            dies), an importable function of ``(config, connection, frame_names)``.

    Attributes:
        tail: Checks tail requests (the child's spec); None until ready, or if no split.
        load_error: Why the model did not load (then it is not restarted).
        gave_up: Why the policy gave up; empty while it has not.
        starts: Children started.
        timeouts: Batches that ran over ``config.batch_timeout_s`` (each killed its child).

    Raises:
        ConfigError: If ``config.batch_timeout_s`` or ``load_timeout_s`` is not a finite
            number above 0.
    """

    def __init__(self, config: ServiceConfig, policy: RestartPolicy | None = None,
                 on_give_up: Callable[[str], None] | None = None,
                 on_death: Callable[[str], None] | None = None,
                 clock: Callable[[], float] = time.monotonic, slots: int = 0,
                 child: Callable[..., None] = child_main) -> None:
        for name, timeout_s in (('batch', config.batch_timeout_s),
                                ('load', config.load_timeout_s)):
            if isinstance(timeout_s, bool) or not isinstance(timeout_s, (int, float)) or \
                    not 0 < timeout_s < math.inf:
                raise ConfigError(f'the {name} timeout must be a number of seconds above 0, '
                                  f'got {timeout_s!r}')
        self.config = config
        self.policy = policy or RestartPolicy()
        self.tail: TailChecks | None = None
        self.load_error = ''
        self.gave_up = ''
        self.starts = 0
        self.timeouts = 0
        self._on_give_up = on_give_up
        self._on_death = on_death
        self._child_main = child
        self._clock = clock
        self._frames = SharedFrames(slots or config.max_batch, slot_bytes(config.max_image_side))
        room = self._frames.room_left()
        if 0 <= room < self._frames.total_bytes:
            LOG.warning('shared memory has %d MiB free, the frame slots may take %d MiB: a '
                        'large frame could crash the service (mount a larger /dev/shm, or '
                        'lower --max-image-side)', room >> 20, self._frames.total_bytes >> 20)
        self._context = multiprocessing.get_context('spawn')
        self._lock = threading.Lock()  # one batch at a time on the pipe and in the slots
        self._ready = threading.Event()
        self._settled = threading.Event()  # ready once, failed to load, or given up
        self._closing = threading.Event()
        self._child: tuple[Any, Any] | None = None  # (process, connection)
        self._batch = 0
        self._start_s = 0.0
        self._retry_at = 0.0
        self._killed = ('', '')  # (cause, why) the service killed the child, for _died
        self._supervisor = threading.Thread(target=self._supervise, name='model-supervisor',
                                            daemon=True)
        self._supervisor.start()

    @property
    def ready(self) -> bool:
        """Whether the child has the model loaded and runs batches."""
        return self._ready.is_set()

    @property
    def pid(self) -> int | None:
        """The child's process id (None while none is started)."""
        child = self._child
        return None if child is None else child[0].pid

    def wait_settled(self, timeout_s: float | None = None) -> bool:
        """Wait until the first start has an outcome: ready, failed to load, or given up."""
        return self._settled.wait(timeout_s)

    def retry_after_s(self) -> float:
        """When a client may expect the model back: the back-off left plus a start's time."""
        backoff = max(0.0, self._retry_at - self._clock()) if self._retry_at else \
            self.policy.first_s
        return max(1.0, backoff + self._start_s)

    def unavailable(self, detail: str) -> ModelUnavailable:
        """Return the refusal for a request the model cannot take now."""
        return ModelUnavailable(detail, self.retry_after_s())

    def run(self, items: list[ModelInput]) -> list[Detections]:
        """Run one batch in the child (see :meth:`rcnn_service.image_model.ImageModel.run`).

        Raises:
            ModelUnavailable: The child is (re)starting, died under this batch, or ran over
                ``config.batch_timeout_s`` with it (then it is killed and restarted).
            RequestError: What the model raised for the batch, as it would in-process.
        """
        with self._lock:
            child = self._child
            if child is None or not self._ready.is_set():
                raise self.unavailable('the model process is restarting')
            proc, conn = child
            frames = self._frames.put([i for i in items if not isinstance(i, TailJob)])
            order = iter(frames)
            wire = [TailWire.of(i.payload) if isinstance(i, TailJob) else next(order)
                    for i in items]
            self._batch += 1
            # Real seconds, not self._clock: they bound a real wait on the pipe.
            deadline = time.monotonic() + self.config.batch_timeout_s
            try:
                conn.send(('run', self._batch, wire))
                while True:
                    ready = wait([conn, proc.sentinel], max(0.0, deadline - time.monotonic()))
                    if not ready:
                        raise self._hung(proc)
                    if conn in ready:
                        kind, batch, result = conn.recv()
                        if batch == self._batch:
                            break
                    else:
                        raise EOFError
            except (EOFError, OSError) as err:
                self._ready.clear()
                raise self.unavailable(f'the model process died under this batch (exit '
                                       f'{proc.exitcode})') from err
        if kind == 'failed' and isinstance(result, ErrorWire):
            raise result.error()
        return list(result)

    def _hung(self, proc: Any) -> ModelUnavailable:
        """Kill a child that ran over the batch timeout; return the batch's refusal."""
        timeout_s = self.config.batch_timeout_s
        self._ready.clear()
        self.timeouts += 1
        self._killed = ('batch_timeout',
                        f'its batch ran over the batch timeout of {timeout_s:g} s')
        LOG.error('model process %s did not finish a batch within %g s (hung?): killing it',
                  proc.pid, timeout_s)
        proc.kill()  # SIGKILL: a hung child reads no 'stop'; the supervisor restarts it
        return self.unavailable(f'the model process did not finish this batch within the '
                                f'batch timeout of {timeout_s:g} s: it is killed and restarts')

    def close(self) -> None:
        """Stop the child (after its batch under way) and remove the shared memory."""
        self._closing.set()
        self._ready.clear()
        self._supervisor.join(_STOP_S + 10.0)
        self._frames.close()

    def _supervise(self) -> None:
        up_since = self._clock()
        try:
            while not self._closing.is_set():
                outcome = self._start()
                if outcome in ('load_error', 'closing'):
                    return
                if outcome == 'ready':
                    up_since = self._clock()
                    if self._watch():
                        return  # closing
                if self._died(up_since):
                    return
        finally:
            child, self._child = self._child, None
            if child is not None:
                _stop(*child)
            self._settled.set()

    def _start(self) -> str:
        """Start a child and wait for its model: ``ready``, ``load_error``, ``died``..."""
        parent, child_end = self._context.Pipe()
        proc = self._context.Process(target=self._child_main, name='rcnn-model', daemon=True,
                                     args=(self.config, child_end, self._frames.names))
        started = self._clock()
        proc.start()
        child_end.close()
        self.starts += 1
        with self._lock:
            self._child = (proc, parent)
        # Real seconds, as in run(): they bound a real wait for the child.
        deadline = time.monotonic() + self.config.load_timeout_s
        while not self._closing.is_set():
            if not wait([parent, proc.sentinel], _POLL_S):
                if time.monotonic() >= deadline:
                    return self._load_hung(proc)
                continue
            try:
                message = parent.recv()
            except (EOFError, OSError):
                return 'died'
            if message[0] == 'load_error':
                self.load_error = str(message[1])
                LOG.error('model failed to load: %s', self.load_error)
                return 'load_error'
            self.tail = None if message[1] is None else TailChecks(message[1])
            self._start_s = self._clock() - started
            self._ready.set()
            self._settled.set()
            LOG.info('model process %d ready in %.1f s', proc.pid, self._start_s)
            return 'ready'
        return 'closing'

    def _load_hung(self, proc: Any) -> str:
        """Kill a child that ran over the load timeout; its start is then a death."""
        timeout_s = self.config.load_timeout_s
        with self._lock:
            self._killed = ('load_timeout',
                            f'its load ran over the load timeout of {timeout_s:g} s')
        LOG.error('model process %s did not load its model within %g s (hung?): killing it',
                  proc.pid, timeout_s)
        proc.kill()  # SIGKILL: a hung child reads no 'stop'
        return 'died'

    def _watch(self) -> bool:
        """Wait until the child dies (False) or the model closes (True)."""
        child = self._child
        while child is not None and not self._closing.is_set():
            if wait([child[0].sentinel], _POLL_S):
                return False
        return True

    def _died(self, up_since: float) -> bool:
        """Handle a death: back off and return False, or give up and return True."""
        self._ready.clear()
        child = self._child
        if child is not None:
            _stop(*child)  # reaps it: its pipe may close before the exit status is known
        code = None if child is None else child[0].exitcode
        with self._lock:
            self._child = None
            (cause, why), self._killed = self._killed, ('', '')
        status = f'killed: {why}' if why else f'exit status {code}'
        if self._on_death is not None:
            self._on_death(cause or 'exited')
        now = self._clock()
        delay = self.policy.died(now, up_since)
        if delay is None:
            self.gave_up = (f'the model process died {len(self.policy.deaths)} times within '
                            f'{self.policy.window_s:g} s (last {status})')
            LOG.error('%s: giving up, the service stops', self.gave_up)
            if self._on_give_up is not None:
                self._on_give_up(self.gave_up)
            return True
        self._retry_at = now + delay
        LOG.warning('the model process died (%s); restarting in %g s', status, delay)
        return self._closing.wait(delay)


def _model_protocol(model: ModelProcess) -> ImageModel:
    return model  # mypy checks here that ModelProcess satisfies the protocol
