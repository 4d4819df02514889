"""The fault rig of a replay: every injector a scenario needs, behind one small interface.

Network faults (outage, latency, bandwidth, loss, corruption) go where ``network`` says:
``client`` (in the bridge's transport), ``proxy`` (a TCP fault proxy between bridge and
service) or ``netns`` (tc in a network namespace the service runs in; root only). Process
faults kill or stop the service process, so a scenario with them (or ``netns``) runs the
service as a child process. CPU contention starts hogs beside the edge. Edge stalls and
manager death are announced on /health/faults, which the replay's edge and manager obey as
the nodes do (``fault_injection.live.ObeyedFaults``).
"""

from __future__ import annotations

from dataclasses import replace
import signal
import socket
import threading
import time
from typing import Any, Callable

from adaptive_offload.errors import ConfigError
from adaptive_offload.inference_transport import InferenceTransport
from fault_injection.client_faults import FaultInjectingTransport
from fault_injection.processes import CpuHogs, ServiceProcess
from fault_injection.scenario import (NETWORK_KINDS, PROCESS_KINDS, refuse_lan_kinds,
                                      refuse_service_kinds, Scenario)
from rcnn_service.service import ServiceConfig

NETWORK_MODES = ('client', 'proxy', 'netns')


def _free_port(host: str) -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


class FaultRig:
    """Injectors of one run, started at the run's origin and ticked from its main loop.

    Args:
        scenario: The faults.
        network: Where network faults go: ``client``, ``proxy`` or ``netns``.
        clock: Monotonic nanosecond clock.
        sleep: Sleeps seconds.
        seed: Seed of random draws (loss, corruption, jitter).

    Raises:
        ConfigError: For an unknown network mode, or ``netns`` where it cannot run.
    """

    def __init__(self, scenario: Scenario, network: str = 'client',
                 clock: Callable[[], int] = time.monotonic_ns,
                 sleep: Callable[[float], None] = time.sleep, seed: int = 0) -> None:
        if network not in NETWORK_MODES:
            raise ConfigError(f'injector {network!r} (known: {", ".join(NETWORK_MODES)})')
        refuse_service_kinds(scenario, 'fault rig')
        refuse_lan_kinds(scenario, 'fault rig')
        self.scenario = scenario
        self.network = network
        self.sleep = sleep
        self._clock = clock
        self._seed = seed
        self._origin = clock()
        self._net = scenario.only(NETWORK_KINDS)
        self.service: ServiceProcess | None = None
        self._proxy: Any = None
        self._link: Any = None
        self._netem: Any = None
        self._client: FaultInjectingTransport | None = None
        self._hogs: CpuHogs | None = None
        self._process_state: dict[str, bool] = {}
        if network == 'netns':
            from fault_injection.netem import netns_support

            reason = netns_support()
            if reason:
                raise ConfigError(f'injector netns unavailable: {reason}')

    @property
    def runs_service(self) -> bool:
        """Whether the rig runs the cloud service itself (process faults or netns)."""
        return bool(self.scenario.kinds() & PROCESS_KINDS) or self.network == 'netns'

    def now_s(self) -> float:
        """Scenario time: seconds since :meth:`start`."""
        return (self._clock() - self._origin) / 1e9

    def start_service(self, config: ServiceConfig) -> str:
        """Run the service as a child process (inside the namespace for netns); its URL."""
        prefix: list[str] = []
        host = '127.0.0.1'
        if self.network == 'netns':
            from fault_injection.netem import NetemInjector, NetnsLink

            self._link = NetnsLink().create()
            self._netem = NetemInjector(self._link, self._net, self._clock)
            prefix, host = self._link.exec_argv([]), self._link.ns_address
        port = config.port or (_free_port(host) if not prefix else 8080)
        self.service = ServiceProcess(replace(config, host=host, port=port), prefix,
                                      sleep=self.sleep)
        self.service.start()
        return self.service.url

    def service_url(self, url: str) -> str:
        """Return the URL the bridge should use: a fault proxy's in proxy mode.

        Raises:
            ConfigError: In proxy mode, for a URL without host or port.
        """
        if self.network != 'proxy' or not self._net.faults:
            return url
        from urllib.parse import urlsplit

        from fault_injection.fault_proxy import FaultProxy

        parts = urlsplit(url)
        if parts.hostname is None or parts.port is None:
            raise ConfigError(f'fault proxy: the service URL {url!r} needs a host and a port')
        self._proxy = FaultProxy((parts.hostname, parts.port), self._net, clock=self._clock,
                                 seed=self._seed)
        self._proxy.start(self._origin)
        host, port = self._proxy.address
        return f'{parts.scheme}://{host}:{port}'

    def wrap_transport(self, transport: InferenceTransport) -> InferenceTransport:
        """In client mode, the transport with network faults injected; else unchanged."""
        if self.network != 'client' or not self._net.faults:
            return transport
        self._client = FaultInjectingTransport(transport, self._net, self._clock, self.sleep,
                                               self._seed)
        return self._client

    def start(self, origin_ns: int) -> None:
        """Start counting scenario time (the start of the run)."""
        self._origin = origin_ns
        for injector in (self._client, self._netem):
            if injector is not None:
                injector.start(origin_ns)
        if self._proxy is not None:
            self._proxy.set_scenario(self._net, origin_ns)

    def tick(self) -> None:
        """Apply what changed: qdiscs, service process state, CPU hogs."""
        active = {f.kind: f for f in self.scenario.active(self.now_s())}
        if self._netem is not None:
            self._netem.tick()
        service = self.service
        if service is not None:
            self._process('service_stop', 'service_stop' in active,
                          lambda: service.signal(signal.SIGSTOP),
                          lambda: service.signal(signal.SIGCONT))
            # The restart waits for the model to load: not on the caller's (main loop) thread.
            self._process('service_kill', 'service_kill' in active, service.kill,
                          lambda: threading.Thread(target=service.start, name='restart',
                                                   daemon=True).start())
        contention = active.get('cpu_contention')
        if contention is not None and self._hogs is None:
            self._hogs = CpuHogs.for_slowdown(contention.params['slowdown'])
            self._hogs.start()
        elif contention is None and self._hogs is not None:
            self._hogs.stop()
            self._hogs = None

    def _process(self, kind: str, active: bool, begin: Callable[[], None],
                 end: Callable[[], None]) -> None:
        if active != self._process_state.get(kind, False):
            self._process_state[kind] = active
            (begin if active else end)()

    def close(self) -> None:
        """Stop everything the rig started (idempotent)."""
        if self._hogs is not None:
            self._hogs.stop()
            self._hogs = None
        if self._proxy is not None:
            self._proxy.stop()
            self._proxy = None
        if self.service is not None:
            self.service.close()
            self.service = None
        if self._link is not None:
            self._link.close()
            self._link = None
