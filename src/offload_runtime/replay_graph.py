"""The graph of one replay: the four roles' cores, wired by the graph declaration.

The same declarations the rclpy nodes subscribe and publish by (:mod:`adaptive_offload.graph`)
route records here: an output goes to the bag and to every input subscribed to its topic, whose
handler takes it as the node's would. Records pass as they are; only the bag gets messages,
and the image inputs: a split head's tensors reach its tail as the message the bag got
(:mod:`offload_runtime.replay_split`: the robot's head and the Pi's tail, both run here).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Callable, Mapping, Sequence

from adaptive_offload import graph
from adaptive_offload.datatypes import InferenceReport
from adaptive_offload.errors import AdaptiveOffloadError, ConfigError
from adaptive_offload.frame_worker import DecisionHolder, Emit, FrameWorker, ResultEmitter
from adaptive_offload.graph_codec import decode_input, LabelMap
from adaptive_offload.params import node_params
from adaptive_offload.split_frame import SplitFrame
from adaptive_offload.split_option import parse_spec
from cloud_bridge.bridge import CloudBridge
from cloud_bridge.bridge_config import CloudConfig
from cloud_bridge.split_head import SplitRoute
from edge_inference.detector import BackendOptions, DetectorBackend
from edge_inference.inference import build_edge, edge_worker, EdgeConfig, EdgeCore
from edge_inference.split_roles import build_core
from fault_injection.live import OBEYED_KINDS, ObeyedFaults
from fault_injection.rig import FaultRig
from fault_injection.scenario import EDGE_KINDS, Scenario
from health_monitor.monitor import HealthConfig, HealthMonitor
from offload_manager.manager import ADAPTIVE, ManagerConfig, OffloadManager
from offload_runtime.embedded_service import EmbeddedService, start_middle, with_bottleneck
from offload_runtime.replay_split import (check_tail, edge_splits, split_summary, SplitLink,
                                          TAIL)
from offload_runtime.replay_split import head_point, tail_values
from rcnn_service.service import ServiceConfig

BackendFactory = Callable[[str, BackendOptions], DetectorBackend]
Publish = Callable[[str, list[tuple[str, Any]]], None]  # node, [(output port name, record)]


def node_values(params: Mapping[str, Mapping[str, Any]],
                overrides: Mapping[str, Mapping[str, Any]], node: str) -> dict[str, Any]:
    """Return one node's parameters: the file's (wildcard, then the node's), then overrides."""
    values = node_params(params, node)
    values.update(overrides.get(node, {}))
    return values


def configure(node: str, build: Callable[[Mapping[str, Any]], Any], values: Mapping[str, Any],
              source: str) -> Any:
    """Build a role's configuration, naming the file and the node in a refusal.

    Raises:
        ConfigError: ``FILE: NODE: reason``, rclpy's reason for a type or range refusal.
    """
    try:
        return build(values)
    except ConfigError as err:
        where = f'{source}: ' if source else ''
        raise ConfigError(f'{where}{node}: {err}') from None


def _emitter(node: str, publish: Publish) -> Emit:
    """Return a worker's emit: a frame's outputs go to ``publish`` in one call."""
    outputs = ResultEmitter(lambda name, record: None).outputs
    return lambda msg, dets, report: publish(node, outputs(msg, dets, report))


def _where(params_source: str) -> str:
    return f'{params_source}: ' if params_source else ''


def _no_send(frame: SplitFrame) -> None:
    """Send nothing (a tail's ``send``)."""


def _split_core(config: EdgeConfig, send: Callable[[SplitFrame], None], params_source: str,
                node: str = 'edge_inference') -> EdgeCore:
    """Load a split role's model, warmed up, and make its core.

    Raises:
        ConfigError: ``FILE: NODE: split_point K: reason`` for a point the model lacks, or a
            class filter it does not know.
        BackendError: If the model cannot be loaded.
    """
    try:
        return build_core(config, send)
    except ConfigError as err:
        raise ConfigError(f'{_where(params_source)}{node}: split_point {config.split_point}: '
                          f'{err}') from None


def quiet(line: str) -> None:
    """Say nothing (the default for status lines)."""


class ReplayGraph:
    """The roles of one replay, their inputs' targets and the routes between them.

    Args:
        params: Parameter file content (``{node: {param: value}}``).
        overrides: Per-node overrides over ``params``.
        params_source: Where ``params`` came from (named in refusals).
        input_topic: The camera topic the bag is played on.
        backend_factory: Builds the edge detector (a split one loads its parts itself, as
            the node does).
        clock: Monotonic nanosecond clock.
        services: The embedded service started when a cloud policy has no URL: the first
            architecture, or the next that answers within the deadline on this machine.
        rig: The fault rig of the run, if a scenario is injected.
        scenario: The scenario (to refuse cloud faults a policy never meets).
        publish: Called by the workers' emitters, from their threads, with the node and one
            frame's outputs as (output port name, record): together, so that a frame wakes
            the replay's main loop once, not once an output.
        status: Told, one line each, of the long steps (model load, service start-up).

    Raises:
        AdaptiveOffloadError: For refused parameters or a model that does not load.
    """

    def __init__(self, params: Mapping[str, Mapping[str, Any]],
                 overrides: Mapping[str, Mapping[str, Any]], params_source: str,
                 input_topic: str, backend_factory: BackendFactory, clock: Callable[[], int],
                 services: Sequence[ServiceConfig], rig: FaultRig | None,
                 scenario: Scenario | None,
                 publish: Publish, status: Callable[[str], Any] = quiet) -> None:
        def values(node: str) -> dict[str, Any]:
            return node_values(params, overrides, node)

        service = services[0]
        edge_cfg = configure('edge_inference', EdgeConfig.from_params, values('edge_inference'),
                             params_source)
        if edge_cfg.split_role == 'tail':
            # A tail takes a head's tensors, and the camera a replay plays reaches no head.
            raise ConfigError(f'{_where(params_source)}edge_inference: split_role tail runs '
                              'behind a head on another machine (edge.launch.py), taking the '
                              f"head's tensors from split_topic {edge_cfg.split_topic!r}: give "
                              "the robot's parameters (split_role head) and the replay runs "
                              'the head and its tail')
        manager_cfg = configure('offload_manager', ManagerConfig.from_params,
                                values('offload_manager'), params_source)
        # The edge model's splits run in the split head; the bridge's heads run the rest,
        # checked once the bridge is built.
        on_edge = edge_splits(manager_cfg.splits(), edge_cfg, _where(params_source))
        health_cfg = configure('health_monitor', HealthConfig.from_params,
                               values('health_monitor'), params_source)
        compressed = input_topic.endswith('/compressed')
        camera = input_topic[:-len('/compressed')] if compressed else input_topic
        obey = scenario is not None and bool(scenario.kinds() & OBEYED_KINDS)
        edge = graph.edge_inference(camera, compressed, edge_cfg.source_name, obey_faults=obey,
                                    split_role=edge_cfg.split_role,
                                    split_topic=edge_cfg.split_topic)
        self._tail_cfg: EdgeConfig | None = None
        if edge_cfg.split_role:  # checked before either part's model loads
            head_topic = edge.output('split').resolved(edge.namespace)
            self._tail_cfg = configure(TAIL, EdgeConfig.from_params, tail_values(
                edge_cfg, values('edge_inference'), overrides.get(TAIL, {}),
                manager_cfg.edge_sources, head_topic, params_source, bool(on_edge)),
                params_source)
            check_tail(self._tail_cfg, edge_cfg, manager_cfg.edge_sources, head_topic,
                       params_source)
        cloud_values = values('cloud_bridge')
        wants_cloud = manager_cfg.policy in ('cloud-only', *ADAPTIVE) or (
            manager_cfg.policy == 'static' and manager_cfg.static_route != 'edge')
        embedded = wants_cloud and not cloud_values.get('url')
        if embedded:
            # The accuracy prior must describe the model this run serves, not the params' one.
            manager_cfg = replace(manager_cfg, cloud_model=service.arch)
        if rig and rig.runs_service and cloud_values.get('url'):
            raise ConfigError('process and netns faults act on the service this run starts; '
                              'drop the cloud URL')
        self.service: EmbeddedService | None = None
        self.middle: EmbeddedService | None = None  # three tiers: the middle device's service
        self.cloud: CloudBridge | None = None
        self._split: SplitRoute | None = None
        self.battery_topic = manager_cfg.battery_topic \
            if manager_cfg.energy_reader == 'battery' else ''
        splits = tuple(o for o in manager_cfg.splits() if o not in on_edge)
        self.manager = OffloadManager(manager_cfg, executes_split=bool(splits or on_edge))
        # Edge stalls and manager death are announced on /health/faults and obeyed, as the
        # nodes of a rehearsal on a robot obey them.
        self.faults = ObeyedFaults(clock)
        self.graphs: dict[str, graph.NodeGraph] = {'edge_inference': edge}
        self.workers: list[FrameWorker] = []
        self.targets: dict[str, Mapping[str, Any]] = {}
        self._link: SplitLink | None = None
        self._add_edge(edge_cfg, backend_factory, clock, obey, params_source, publish, status)
        self.edge_source = self.detector_core.config.source_name
        self.health = HealthMonitor(health_cfg, clock())
        self.graphs['offload_manager'] = graph.offload_manager(
            camera, compressed, manager_cfg.edge_sources, self.battery_topic, obey)
        # The run's camera is what the monitor's camera topic sees (a compressed bag too).
        self.graphs['health_monitor'] = graph.health_monitor(
            [input_topic if t == camera else t for t in health_cfg.monitored_topics],
            health_cfg.monitored_types)
        self.targets['offload_manager'] = {'*': self.manager, 'faults': self.faults}
        self.targets['health_monitor'] = {'*': self.health}
        try:
            if embedded:
                # The embedded default: the real service on loopback, for this run only.
                services = [with_bottleneck(service, (*splits, *cloud_values.get(
                    'split_options', ()))), *services[1:]]
                service = services[0]
                status(f'starting the cloud service on loopback '
                       f'({", ".join(s.arch for s in services)}); '
                       '--cloud URL uses one already running')
                if rig and rig.runs_service:  # a process of its own: the first architecture
                    url = rig.start_service(replace(service, port=0))
                else:
                    self.service = EmbeddedService(service, manager_cfg.deadline_ms, status,
                                                   services[1:])
                    url = self.service.url
                    if self.service.arch != manager_cfg.cloud_model:
                        # Another architecture serves: its accuracy prior is the one to use.
                        manager_cfg = replace(manager_cfg, cloud_model=self.service.arch)
                        self.manager = OffloadManager(manager_cfg, executes_split=bool(
                            splits or on_edge))
                        self.targets['offload_manager'] = {'*': self.manager,
                                                           'faults': self.faults}
                token = service.tokens[0] if service.tokens else ''
                served = next((s for s in services if s.arch == manager_cfg.cloud_model),
                              service)
                cloud_values = {'split_checkpoint': served.checkpoint,
                                'split_bottleneck': served.bottleneck, **cloud_values,
                                'url': url, 'token': token, 'model': service.model_name}
            if splits and not [o for o in cloud_values.get('split_options', ()) if o]:
                cloud_values = {**cloud_values, 'split_options': list(splits)}
            if embedded and not cloud_values.get('split_middle_url') and any(
                    o and parse_spec(o).three_tier for o in cloud_values.get('split_options', ())):
                self.middle = start_middle(served, cloud_values, status)
                cloud_values = {**cloud_values, 'split_middle_url': self.middle.url}
            if cloud_values.get('url'):
                self._add_cloud(cloud_values, edge_cfg, camera, compressed, clock, rig,
                                params_source, publish, status)
            elif scenario is not None and scenario.kinds() - EDGE_KINDS - {'manager_death'}:
                raise ConfigError(f'scenario {scenario.name!r} injects cloud faults, but '
                                  f'policy {manager_cfg.policy!r} never uses the cloud')
            missing = set(splits) - set(self.cloud.split_options if self.cloud else ())
            if missing:
                raise ConfigError(f'{params_source}: offload_manager: split_options '
                                  f'{sorted(missing)}: cloud_bridge runs no head for them '
                                  '(its split_options)')
        except AdaptiveOffloadError:
            self.close()
            raise
        # Keyed by the replay's node names: a head and its tail are both edge_inference.
        self.subscribers: dict[str, list[tuple[str, graph.Port]]] = {}
        for key, node_graph in self.graphs.items():
            for topic, inputs in graph.subscribers([node_graph]).items():
                self.subscribers.setdefault(topic, []).extend((key, p) for _, p in inputs)

    def _add_edge(self, config: EdgeConfig, backend_factory: BackendFactory,
                  clock: Callable[[], int], obey: bool, params_source: str, publish: Publish,
                  status: Callable[[str], Any]) -> None:
        """Add edge_inference: the whole detector, or a split head and its tail (the Pi's)."""
        holder = DecisionHolder(config.fallback_decision())
        emit = _emitter('edge_inference', publish)
        tail_cfg = self._tail_cfg
        if tail_cfg is None:
            status(f'loading the edge model {config.model} ({config.backend} on '
                   f'{config.device}) and warming it up at {config.imgsz}')
            self.edge: EdgeCore = build_edge(config, backend_factory)
        else:
            link = self._link = SplitLink(lambda outputs: publish('edge_inference', outputs))
            emit = link.emit
            status(f'loading the split edge model {config.model} on {config.device} twice: '
                   f'the head, and its tail as source {tail_cfg.source_name!r} ({TAIL}), at '
                   f'{head_point(config)} with {config.split_encoding} between them, and '
                   f'warming them up at {config.imgsz}')
            self.edge = _split_core(config, link.send, params_source)
        head = edge_worker(self.edge, holder, emit, clock, self.faults if obey else None)
        self.workers.append(head)
        self.targets['edge_inference'] = {
            'camera': head if self._link is None else self._link.head_input(head),
            'decision': holder, 'faults': self.faults}
        # The node whose detections are the edge source's: the tail of a split head.
        self.detector, self.detector_core = 'edge_inference', self.edge
        if tail_cfg is None or self._link is None:
            return
        tail = _split_core(tail_cfg, _no_send, params_source, TAIL)
        # A tail takes no decisions: its head obeyed them; the fallback only labels its drops.
        worker = edge_worker(tail, DecisionHolder(tail_cfg.fallback_decision()),
                             _emitter(TAIL, publish), clock)
        self.workers.append(worker)
        self.graphs[TAIL] = graph.edge_inference(  # a tail's input is its head's, no camera
            '', False, tail_cfg.source_name, split_role='tail', split_topic=tail_cfg.split_topic)
        self.targets[TAIL] = {'split': self._link.tail_input(worker)}
        self.detector, self.detector_core = TAIL, tail

    def _add_cloud(self, cloud_values: Mapping[str, Any], edge_cfg: EdgeConfig, camera: str,
                   compressed: bool, clock: Callable[[], int], rig: FaultRig | None,
                   params_source: str, publish: Publish, status: Callable[[str], Any]) -> None:
        if rig:
            cloud_values = {**cloud_values, 'url': rig.service_url(cloud_values['url'])}
        cloud_cfg = configure('cloud_bridge', CloudConfig.from_params, cloud_values,
                              params_source)
        transport = cloud_cfg.make_transport()
        if rig:
            transport = rig.wrap_transport(transport)
        if cloud_cfg.splits():
            status(f'loading the split heads {", ".join(cloud_cfg.splits())} from '
                   f'{cloud_cfg.split_checkpoint}')
        self._split = cloud_cfg.make_split()
        cloud = self.cloud = cloud_cfg.make_bridge(transport, self._split)
        holder = DecisionHolder(edge_cfg.fallback_decision())
        worker = FrameWorker(cloud, holder, _emitter('cloud_bridge', publish),
                             clock, workers=cloud_cfg.max_in_flight,
                             pending=cloud_cfg.max_pending)
        self.workers.append(worker)
        self.graphs['cloud_bridge'] = graph.cloud_bridge(camera, compressed,
                                                         cloud_cfg.sampled_sources())
        self.targets['cloud_bridge'] = {'camera': worker, 'decision': holder, '*': cloud}

    def outputs(self) -> list[tuple[str, str, str]]:
        """Return (topic, type, QoS name) of every output the replay writes.

        Annotated images are for rviz on a robot; the replay does not draw them.
        """
        return [(port.resolved(g.namespace), port.msg_type, port.qos)
                for g in self.graphs.values() for port in g.outputs if port.kind != 'image']

    def topic_of(self, node: str, name: str) -> str:
        """Return the absolute topic of a node's output."""
        node_graph = self.graphs[node]
        return node_graph.output(name).resolved(node_graph.namespace)

    def port_of(self, node: str, name: str) -> graph.Port:
        """Return a node's output port."""
        return self.graphs[node].output(name)

    def handle(self, topic: str, record: Any, now_ns: int, message: Any = None,
               published: Any = None) -> None:
        """Give a record published on ``topic`` to every input subscribed to it.

        A camera message (``message``) is decoded for each input as its node would. Image
        inputs (the workers) take messages: the player gives them the camera's in its thread
        (:meth:`submit_frame`); a node's output (a split head's tensors, for its tail) comes
        here as ``published``, the message the bag got.
        """
        for node, port in self.subscribers.get(topic, ()):
            target = self.targets[node]
            if port.kind == 'image':
                if message is None and published is not None:
                    getattr(target[port.name], port.handler)(published, now_ns)
                continue
            if message is not None or port.kind == 'arrival':
                value = decode_input(port, message)
            else:
                value = record
            getattr(target.get(port.name, target.get('*')), port.handler)(value, now_ns)

    def submit_frame(self, topic: str, msg: Any, now_ns: int) -> None:
        """Give a camera message to the image inputs (the workers), in the player's thread."""
        for node, port in self.subscribers.get(topic, ()):
            if port.kind == 'image':
                self.targets[node][port.name].on_image(msg, now_ns)

    def wait_taken(self, timeout: float | None = None) -> bool:
        """Wait until the frames given so far are taken, by every worker and a head's tail.

        Returns:
            True if they are within ``timeout`` seconds (each wait's).
        """
        link = self._link
        return (link is None or link.wait_idle(timeout)) and \
            all(w.wait_taken(timeout) for w in self.workers)

    def label_map(self) -> LabelMap:
        """Return the label map of the edge source's detector (a split head's tail)."""
        core = self.detector_core
        return LabelMap(core.class_names(), core.config.conf, 0)

    def edge_split(self, reports: Sequence[InferenceReport]) -> dict[str, Any] | None:
        """Summarise a split head and its tail from the run's reports; None without a split.

        See :func:`offload_runtime.replay_split.split_summary`.
        """
        if self._tail_cfg is None:
            return None
        return split_summary(reports, self.edge.config, self._tail_cfg)

    def holders(self) -> list[DecisionHolder]:
        """Return the workers' decision holders."""
        return [t['decision'] for n, t in self.targets.items() if 'decision' in t]

    def close(self) -> None:
        """Stop what this graph started (the embedded service, the failure history)."""
        self.health.close()
        if self._split is not None:
            self._split.close()
            self._split = None
        for service in (self.middle, self.service):
            if service is not None:
                service.shutdown()
        self.service = self.middle = None
