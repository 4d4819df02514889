"""Processes the fault rig controls: the cloud service, and CPU hogs on the edge."""

from __future__ import annotations

import os
from pathlib import Path
import signal
import subprocess
import sys
import time
from typing import Callable, Sequence
import urllib.error
import urllib.request

from adaptive_offload.errors import BackendError
from rcnn_service.guard import TOKENS_ENV
from rcnn_service.service import ServiceConfig


class ServiceProcess:
    """``adaptive-offload serve --runtime builtin`` in a child process, for process faults.

    Args:
        config: Service settings; ``host`` and ``port`` must be fixed (not 0) so a restarted
            service comes back where the bridge looks for it.
        prefix: Command prefix (``ip netns exec NS`` to run it inside a namespace).
        ready_timeout_s: Longest wait for readiness at each (re)start.
        sleep: Sleeps seconds (polling readiness).
    """

    def __init__(self, config: ServiceConfig, prefix: Sequence[str] = (),
                 ready_timeout_s: float = 300.0,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.config = config
        self._prefix = list(prefix)
        self._timeout = ready_timeout_s
        self._sleep = sleep
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """Base URL of the service."""
        return f'http://{self.config.host}:{self.config.port}'

    def start(self) -> None:
        """Start the process and wait until the model is ready.

        Raises:
            BackendError: If it exits or is not ready in time.
        """
        cfg = self.config
        argv = [*self._prefix, sys.executable, '-m', 'offload_runtime.cli', 'serve',
                '--runtime', 'builtin', '--host', cfg.host, '--port', str(cfg.port),
                '--arch', cfg.arch, '--threads', str(cfg.threads), '--model-name',
                cfg.model_name, '--max-batch', str(cfg.max_batch)]
        if cfg.checkpoint:
            argv += ['--checkpoint', cfg.checkpoint]
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
        # Tokens go by the environment: argv shows in ps to every user of the host.
        env[TOKENS_ENV] = ','.join(cfg.tokens)
        self._proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL,
                                      stderr=subprocess.DEVNULL, env=env)
        deadline = time.monotonic() + self._timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise BackendError(f'cloud service exited with {self._proc.returncode}')
            try:
                with urllib.request.urlopen(f'{self.url}/v2/health/ready', timeout=1):
                    return
            except (urllib.error.URLError, OSError):
                self._sleep(0.1)
        self.kill()
        raise BackendError(f'cloud service not ready within {self._timeout:.0f} s')

    def signal(self, signum: int) -> None:
        """Send ``signum`` (SIGKILL, SIGSTOP, SIGCONT) to the service process."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.send_signal(signum)

    def kill(self) -> None:
        """Kill the service at once (the fault), and reap it."""
        if self._proc is not None:
            self.signal(signal.SIGCONT)  # a stopped process must be able to die
            self.signal(signal.SIGKILL)
            self._proc.wait(30)

    def close(self) -> None:
        """Stop the service for good (SIGTERM, then SIGKILL after 10 s)."""
        if self._proc is None or self._proc.poll() is not None:
            return
        self.signal(signal.SIGCONT)
        self._proc.terminate()
        try:
            self._proc.wait(10)
        except subprocess.TimeoutExpired:
            self.kill()


class CpuHogs:
    """Busy processes that take the robot's CPU from the edge model (CPU contention).

    Args:
        count: Processes to run; one keeps one core busy.
    """

    def __init__(self, count: int) -> None:
        self.count = max(1, count)
        self._procs: list[subprocess.Popen[bytes]] = []

    @classmethod
    def for_slowdown(cls, slowdown: float) -> CpuHogs:
        """Enough hogs to slow a CPU-bound model about ``slowdown`` times on this machine."""
        return cls(round((slowdown - 1.0) * (os.cpu_count() or 1)))

    @property
    def running(self) -> bool:
        """Whether the hogs run."""
        return bool(self._procs)

    def start(self) -> None:
        """Start the hogs (idempotent)."""
        if not self._procs:
            self._procs = [subprocess.Popen([sys.executable, '-c', 'while True: pass'])
                           for _ in range(self.count)]

    def stop(self) -> None:
        """Kill and reap the hogs (idempotent)."""
        for proc in self._procs:
            proc.kill()
        for proc in self._procs:
            proc.wait(30)
        self._procs = []


def pid_listening_on(port: int, proc: Path = Path('/proc')) -> int | None:
    """Return the process listening on TCP ``port`` on this host, or None (Linux /proc).

    Only processes whose file descriptors this process may read are found (the same user,
    or root).
    """
    inodes = set()
    for table in ('tcp', 'tcp6'):
        try:
            lines = (proc / 'net' / table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) > 9 and fields[3] == '0A' and \
                    int(fields[1].rsplit(':', 1)[1], 16) == port:
                inodes.add(f'socket:[{fields[9]}]')
    if not inodes:
        return None
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if any(os.readlink(fd) in inodes for fd in (entry / 'fd').iterdir()):
                return int(entry.name)
        except OSError:  # gone, or not ours to read
            continue
    return None
