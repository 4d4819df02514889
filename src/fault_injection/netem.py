"""Kernel-level fault injection: a network namespace behind a veth pair, shaped with tc.

The cloud side runs in the namespace (:meth:`NetnsLink.exec_argv`), the robot side on the host.
Faults become a qdisc on the host end, shaping traffic into the namespace (the upload, where
images go), so an exchange takes ``delay_ms`` longer, as with the client-side injector.
bandwidth: ``tbf`` (``netem rate`` alongside other faults); latency, loss, corruption: ``netem``
(its bit flips fail TCP checksums and become retransmissions); cloud_outage: the namespace end
goes down, so packets are dropped and connections time out (with the host end down the host
would route them elsewhere). Needs root, ``ip`` and ``tc``.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import subprocess
import time
from typing import Callable, Iterable, Sequence

from adaptive_offload.errors import ConfigError
from fault_injection.scenario import Fault, Scenario

#: Runs a command; raises OSError (with the command's error output) if it fails.
Runner = Callable[[list[str]], None]

_IFNAMSIZ = 15
# every link and probe of this process gets its own names and subnet
_serial = itertools.count()
_SBIN = ('/usr/sbin', '/sbin', '/usr/local/sbin')
# arguments a probe needs to add each qdisc kind (the kernel rejects some bare kinds)
_PROBE_ARGS = {'tbf': ['rate', '1mbit', 'burst', '32kbit', 'latency', '50ms'],
               'netem': ['delay', '1ms']}


def tool(name: str) -> str | None:
    """Full path of ``ip`` or ``tc``: on PATH, or in the sbin folders a non-login PATH lacks."""
    return shutil.which(name) or shutil.which(name, path=os.pathsep.join(_SBIN))


def run_command(argv: list[str]) -> None:
    """Run a command to completion (at most 30 s).

    Raises:
        OSError: If it cannot start, fails or times out; the message holds its error output.
    """
    argv = [tool(argv[0]) or argv[0], *argv[1:]]
    try:
        subprocess.run(argv, check=True, capture_output=True, text=True, timeout=30)
    except subprocess.CalledProcessError as err:
        raise OSError(f'{" ".join(argv)}: {(err.stderr or "").strip() or err}') from err
    except subprocess.TimeoutExpired as err:
        raise OSError(f'{" ".join(argv)}: timed out') from err


def netns_support(run: Runner = run_command) -> str | None:
    """Why namespaces and veth pairs cannot be used here, or None if they can."""
    if not hasattr(os, 'geteuid') or os.geteuid() != 0:
        return 'network namespaces need root'
    missing = [name for name in ('ip', 'tc') if tool(name) is None]
    if missing:
        return f'{" and ".join(missing)} not found (install iproute2)'
    name = f'aoprobe{os.getpid()}-{next(_serial)}'
    try:
        run(['ip', 'netns', 'add', name])
        run(['ip', '-n', name, 'link', 'add', 'name', 'probeh', 'type', 'veth', 'peer', 'name',
             'proben'])
    except OSError as err:
        return f'network namespaces or veth pairs not permitted: {err}'
    finally:
        _quietly(run, ['ip', 'netns', 'del', name])
    return None


def qdisc_support(kind: str, run: Runner = run_command) -> str | None:
    """Why the kernel cannot attach qdisc ``kind`` (``tbf``, ``netem``), or None if it can.

    Probes on the loopback device of a throw-away namespace, leaving the host untouched.
    """
    reason = netns_support(run)
    if reason is not None:
        return reason
    name = f'aoprobe{os.getpid()}-{next(_serial)}'
    try:
        run(['ip', 'netns', 'add', name])
        run(['ip', 'netns', 'exec', name, tool('tc') or 'tc', 'qdisc', 'add', 'dev', 'lo',
             'root', kind, *_PROBE_ARGS.get(kind, [])])
    except OSError as err:
        return f'qdisc {kind} unavailable: {err}'
    finally:
        _quietly(run, ['ip', 'netns', 'del', name])
    return None


def _quietly(run: Runner, argv: list[str]) -> None:
    with contextlib.suppress(OSError):  # cleanup of something that may already be gone
        run(argv)


def qdisc_args(faults: Iterable[Fault]) -> list[str] | None:
    """Return ``tc qdisc`` arguments (after ``root``) for the faults, or None if none shape."""
    by_kind = {f.kind: f.params for f in faults}
    netem: list[str] = []
    if 'latency' in by_kind:
        delay, jitter = by_kind['latency']['delay_ms'], by_kind['latency']['jitter_ms']
        netem += ['delay', f'{delay:g}ms', *([f'{jitter:g}ms'] if jitter > 0 else [])]
    for kind, word in (('loss', 'loss'), ('corruption', 'corrupt')):
        if kind in by_kind:
            netem += [word, f'{by_kind[kind]["probability"] * 100:g}%']
    if 'bandwidth' not in by_kind:
        return ['netem', *netem] if netem else None
    mbps = by_kind['bandwidth']['mbps']
    rate = f'{max(1, round(mbps * 1e6))}bit'
    if netem:
        return ['netem', *netem, 'rate', rate]
    # 10 ms worth of bytes, never less than a full-size frame; 200 ms of queue
    return ['tbf', 'rate', rate, 'burst', str(max(1600, round(mbps * 1e6 / 800))), 'latency',
            '200ms']


class NetnsLink:
    """A network namespace joined to the host by a veth pair, with faults applied by tc.

    Nothing is created before :meth:`open` (or entering the ``with`` block); :meth:`close`
    deletes everything. Addresses are ``10.<a>.<b>.1`` on the host and ``.2`` inside.

    Args:
        prefix: Start of the namespace and interface names (names also hold the pid).
        subnet: The ``(a, b)`` of the /24 used; by default derived from the pid.
        run: Runs a command (tests inject a recorder).
        pid: Process id put in the names; by default this process's.
    """

    def __init__(self, prefix: str = 'ao', subnet: tuple[int, int] | None = None,
                 run: Runner = run_command, pid: int | None = None) -> None:
        serial = next(_serial)
        pid = os.getpid() if pid is None else pid
        self.namespace = f'{prefix}{pid}-{serial}'
        self.host_veth, self.ns_veth = f'{self.namespace}h', f'{self.namespace}n'
        if len(self.host_veth) > _IFNAMSIZ or not prefix.isalnum():
            raise ConfigError(f'netns prefix {prefix!r} must be alphanumeric and short enough '
                              f'for {self.host_veth!r} to fit in {_IFNAMSIZ} characters')
        key = pid * 8 + serial % 8
        a, b = subnet if subnet is not None else (128 + (key >> 8) % 112, key % 256)
        if not (0 <= a <= 255 and 0 <= b <= 255):
            raise ConfigError(f'netns subnet {subnet!r} is not two octets')
        self.host_address, self.ns_address = f'10.{a}.{b}.1', f'10.{a}.{b}.2'
        self._run = run
        self._created: list[list[str]] = []  # undo commands, newest last
        self._link_up = True
        self._qdisc: list[str] | None = None

    def create(self) -> NetnsLink:
        """Create the namespace and the veth pair and bring them up; undone if a step fails.

        Raises:
            OSError: If a command fails.
        """
        if self._created:
            return self
        ns, host, peer = self.namespace, self.host_veth, self.ns_veth
        try:
            self._run(['ip', 'netns', 'add', ns])
            self._created.append(['ip', 'netns', 'del', ns])
            self._run(['ip', 'link', 'add', 'name', host, 'type', 'veth', 'peer', 'name', peer])
            self._created.append(['ip', 'link', 'del', host])
            for argv in (['ip', 'link', 'set', peer, 'netns', ns],
                         ['ip', 'addr', 'add', f'{self.host_address}/24', 'dev', host],
                         ['ip', 'link', 'set', host, 'up'],
                         ['ip', '-n', ns, 'addr', 'add', f'{self.ns_address}/24', 'dev', peer],
                         ['ip', '-n', ns, 'link', 'set', peer, 'up'],
                         ['ip', '-n', ns, 'link', 'set', 'lo', 'up']):
                self._run(argv)
        except BaseException:
            self.close()
            raise
        return self

    def exec_argv(self, argv: Sequence[str]) -> list[str]:
        """Return the command line running ``argv`` inside the namespace."""
        return [tool('ip') or 'ip', 'netns', 'exec', self.namespace, *argv]

    def apply(self, faults: Iterable[Fault]) -> None:
        """Make the faults given (and only those) shape the link; commands only for changes.

        Raises:
            OSError: If a command fails (e.g. the kernel lacks the qdisc).
        """
        faults = list(faults)
        qdisc = qdisc_args(faults)
        link_up = not any(f.kind == 'cloud_outage' for f in faults)
        if qdisc != self._qdisc:
            change = ['del'] if qdisc is None else ['replace']
            self._run(['tc', 'qdisc', *change, 'dev', self.host_veth, 'root', *(qdisc or [])])
            self._qdisc = qdisc
        if link_up != self._link_up:
            self._run(['ip', '-n', self.namespace, 'link', 'set', self.ns_veth,
                       'up' if link_up else 'down'])
            self._link_up = link_up

    def clear(self) -> None:
        """Remove every fault: no qdisc of ours, link up."""
        self.apply([])

    def close(self) -> None:
        """Delete the veth pair and the namespace; safe to call again or after a failed open."""
        while self._created:
            _quietly(self._run, self._created.pop())
        self._link_up, self._qdisc = True, None

    def __enter__(self) -> NetnsLink:
        return self.create()

    def __exit__(self, *exc: object) -> None:
        self.close()


class NetemInjector:
    """Applies a scenario to a :class:`NetnsLink` as time passes, one :meth:`tick` at a time.

    Args:
        link: The link to shape.
        scenario: The faults.
        clock: Monotonic nanosecond clock; scenario times count from :meth:`start`.
    """

    def __init__(self, link: NetnsLink, scenario: Scenario,
                 clock: Callable[[], int] = time.monotonic_ns) -> None:
        self._link = link
        self._scenario = scenario
        self._clock = clock
        self._origin_ns = clock()
        self._active: list[Fault] | None = None

    def start(self, origin_ns: int | None = None) -> None:
        """Set the time scenario times count from (now by default)."""
        self._origin_ns = self._clock() if origin_ns is None else origin_ns

    def now_s(self) -> float:
        """Scenario time, seconds."""
        return (self._clock() - self._origin_ns) / 1e9

    def tick(self) -> bool:
        """Apply the faults in force now if they changed since the last tick; True if so.

        Raises:
            OSError: If the link cannot be shaped.
        """
        active = self._scenario.active(self.now_s())
        if active == self._active:
            return False
        self._link.apply(active)
        self._active = active
        return True
