"""Offload manager core: issues decisions on a period and arbitrates every frame."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, replace
import math
from pathlib import Path
import time
from typing import Any, Mapping

from adaptive_offload import topics
from adaptive_offload.datatypes import (Decision, DetectionSet, HealthEvent, InferenceReport,
                                        Level, Route)
from adaptive_offload.errors import ConfigError
from adaptive_offload.graph_codec import BatterySample, FrameHeader
from adaptive_offload.package_files import shipped_config
from adaptive_offload.params import ParameterSpec, resolve
from offload_manager.energy import (BatteryReader, EnergyModel, EnergyReader, load_devices,
                                    MeasuredEnergy, READERS)
from offload_manager.frame_energy import FrameEnergy
from offload_manager.frame_outcomes import Arbiter, Outcome
from offload_manager.policies import create_policy, Plan, Policy, PolicySettings

PARAMETERS = (
    ParameterSpec('policy', 'predictive', 'Routing policy (registry name).', live=True),
    ParameterSpec('deadline_ms', 250.0, 'Per-frame deadline from arrival to result.', live=True,
                  minimum=1.0, maximum=60000.0),
    ParameterSpec('decision_period_s', 0.5, 'How often the decision is re-issued.',
                  minimum=0.01, maximum=60.0),
    ParameterSpec('plan_period_s', 0.25,
                  'How often the policy re-plans (at most); decisions change at once then.',
                  minimum=0.01, maximum=60.0),
    ParameterSpec('decision_valid_s', 2.0,
                  'Validity of a decision; workers fall back to edge-only after it.',
                  minimum=0.02, maximum=600.0),
    ParameterSpec('result_timeout_ms', 2000.0,
                  'Longest wait for any result before a drop; never shorter than the deadline.',
                  minimum=1.0, maximum=600000.0),
    ParameterSpec('static_route', 'edge', 'Route of the static policy: edge, cloud or hedged.',
                  live=True),
    ParameterSpec('edge_model', 'yolov8n', 'Edge model name decisions ask for.', live=True),
    ParameterSpec('edge_imgsz', 640, 'Edge input size decisions ask for.', live=True,
                  minimum=32, maximum=4096),
    ParameterSpec('jpeg_quality', 75, 'JPEG quality of frames sent to the cloud.', live=True,
                  minimum=1, maximum=100),
    ParameterSpec('cloud_max_side', 0, 'Longest side sent to the cloud; 0 keeps the size.',
                  live=True, minimum=0, maximum=8192),
    ParameterSpec('offload_every', 1, 'Send every n-th frame to the cloud.', live=True,
                  minimum=1, maximum=1000),
    ParameterSpec('hedge_delay_ms', 0.0, 'Delay of the cloud request on hedged routes.',
                  live=True, minimum=0.0, maximum=60000.0),
    ParameterSpec('edge_sources', ['edge'], 'source_name of every edge_inference target.'),
    ParameterSpec('image_topic', '/camera/image_raw', 'Camera topic (sensor_msgs/Image).'),
    ParameterSpec('compressed', False, 'Subscribe to <image_topic>/compressed instead.'),
    ParameterSpec('annotate', True, 'Publish /offload/annotated for rviz.'),
    ParameterSpec('device', 'raspberry_pi_5', 'Robot device profile (energy, inference times).'),
    ParameterSpec('cloud_device', 'gpu_server', 'Cloud device profile (price, GPU power).'),
    ParameterSpec('devices_file', '', 'Device profiles (YAML); empty: the shipped devices.yaml.'),
    ParameterSpec('cloud_model', 'fasterrcnn_resnet50_fpn_v2', 'Cloud model (accuracy prior).'),
    ParameterSpec('edge_options', [''],
                  'model@imgsz the adaptive policies may choose; [""]: edge_model@edge_imgsz.'),
    ParameterSpec('epsilon', 0.01, 'Largest acceptable P(latency > deadline).', live=True,
                  minimum=0.0001, maximum=0.5),
    ParameterSpec('weight_energy', 1.0, 'Weight of robot energy in the predictive policy.',
                  live=True, minimum=0.0, maximum=1000.0),
    ParameterSpec('weight_accuracy', 1.0, 'Weight of accuracy loss in the predictive policy.',
                  live=True, minimum=0.0, maximum=1000.0),
    ParameterSpec('weight_cost', 0.2, 'Weight of cloud cost in the predictive policy.',
                  live=True, minimum=0.0, maximum=1000.0),
    ParameterSpec('probe_every', 10,
                  'Edge (cloud) route: every n-th frame also goes to the cloud (edge), a probe; '
                  '0: no probes.', live=True, minimum=0, maximum=1000),
    ParameterSpec('seed', 0, 'Seed of learning policies.', minimum=0, maximum=2 ** 31 - 1),
    ParameterSpec('energy_reader', '',
                  'Measure robot energy with rapl, nvml or battery (BatteryState on '
                  'battery_topic) where it works; empty: model only.'),
    ParameterSpec('battery_topic', '/battery_state',
                  'sensor_msgs/BatteryState topic read when energy_reader is battery.'),
    ParameterSpec('history_file', '',
                  'Failure history the health monitor writes; read at start to warm the '
                  'availability predictor. Empty: none.'),
    ParameterSpec('obey_faults', False,
                  'Obey manager deaths announced on /health/faults (a fault rehearsal).'),
)
LIVE = frozenset(spec.name for spec in PARAMETERS if spec.live)
ADAPTIVE = ('predictive', 'weighted-score', 'reactive', 'mdp-svr', 'q-learning')


@dataclass(frozen=True)
class ManagerConfig:
    """Validated manager parameters (see :data:`PARAMETERS`)."""

    policy: str
    deadline_ms: float
    decision_period_s: float
    plan_period_s: float
    decision_valid_s: float
    result_timeout_ms: float
    static_route: str
    edge_model: str
    edge_imgsz: int
    jpeg_quality: int
    cloud_max_side: int
    offload_every: int
    hedge_delay_ms: float
    edge_sources: list
    image_topic: str
    compressed: bool
    annotate: bool
    device: str
    cloud_device: str
    devices_file: str
    cloud_model: str
    edge_options: list
    epsilon: float
    weight_energy: float
    weight_accuracy: float
    weight_cost: float
    probe_every: int
    seed: int
    history_file: str
    energy_reader: str
    battery_topic: str
    obey_faults: bool

    @classmethod
    def from_params(cls, values: Mapping[str, Any] | None = None) -> ManagerConfig:
        """Build from parameter values over the defaults.

        Raises:
            ConfigError: For unknown names, wrong types or out-of-range values.
        """
        config = cls(**resolve(PARAMETERS, values))
        if config.static_route not in {r.value for r in Route}:
            raise ConfigError(f'static_route {config.static_route!r}: edge, cloud or hedged')
        if config.deadline_ms <= 0 or config.decision_period_s <= 0 or \
                config.decision_valid_s <= config.decision_period_s:
            raise ConfigError('need deadline_ms > 0 and decision_valid_s > decision_period_s > 0')
        if config.plan_period_s <= 0:
            raise ConfigError('need plan_period_s > 0')
        if not 1 <= config.jpeg_quality <= 100 or config.offload_every < 1:
            raise ConfigError('need jpeg_quality in 1..100 and offload_every >= 1')
        if config.energy_reader not in ('', 'rapl', 'nvml', 'battery'):
            raise ConfigError(f'energy_reader {config.energy_reader!r}: rapl, nvml, battery '
                              'or empty')
        if not 0 < config.epsilon < 1 or config.probe_every < 0:
            raise ConfigError('need 0 < epsilon < 1 and probe_every >= 0')
        for spec in config.options():
            model, _, size = spec.rpartition('@')
            if not model or not size.isdigit() or int(size) <= 0:
                raise ConfigError(f'edge_options entry {spec!r}: expected model@imgsz')
        return config

    def options(self) -> tuple[str, ...]:
        """Edge choices as ``model@imgsz``: the listed ones, else the parameters' own."""
        listed = tuple(o for o in self.edge_options if o)
        return listed or (f'{self.edge_model}@{self.edge_imgsz}',)

    def policy_settings(self) -> PolicySettings:
        """Return the subset policies read; device profiles are loaded for the adaptive policies.

        Raises:
            ConfigError: If an adaptive policy is chosen and the device profiles are unusable.
        """
        route = Route(self.static_route)
        defaults = Plan(route=route, edge_model=self.edge_model, edge_imgsz=self.edge_imgsz,
                        jpeg_quality=self.jpeg_quality, cloud_max_side=self.cloud_max_side,
                        offload_every=self.offload_every, hedge_delay_ms=self.hedge_delay_ms,
                        reason='')
        settings = PolicySettings(self.deadline_ms, route, defaults, seed=self.seed)
        if self.policy not in ADAPTIVE:
            return settings
        from offload_manager.energy import EnergyModel, load_devices

        devices = load_devices(self.devices_file or default_devices_file())
        for name in (self.device, self.cloud_device):
            if name not in devices:
                raise ConfigError(f'device {name!r} is not in the device profiles '
                                  f'(known: {", ".join(sorted(devices))})')
        robot, cloud = devices[self.device], devices[self.cloud_device]
        return replace(settings, energy=EnergyModel(robot),
                       edge_profile_ms=dict(robot.inference_ms),
                       gpu_price_per_hour=cloud.price_per_gpu_hour,
                       server_power_w=cloud.compute_w, cloud_model=self.cloud_model,
                       edge_options=self.options(), epsilon=self.epsilon,
                       weight_energy=self.weight_energy, weight_accuracy=self.weight_accuracy,
                       weight_cost=self.weight_cost, probe_every=self.probe_every)


def frame_energy(config: ManagerConfig, reader: EnergyReader | None = None) -> FrameEnergy:
    """Per-frame energy for ``config``: its robot profile, and its reader if it names one.

    Args:
        config: Parameters.
        reader: The reader to measure with; by default a new one of ``config.energy_reader``.
            Frames are modelled whenever the reader is unavailable.
    """
    path = config.devices_file or default_devices_file()
    if not Path(path).is_file():
        return FrameEnergy(None)
    devices = load_devices(path)
    if config.device not in devices:
        raise ConfigError(f'device {config.device!r} is not in the device profiles')
    meter = None
    if config.energy_reader:
        meter = MeasuredEnergy(reader or READERS[config.energy_reader]())
    return FrameEnergy(EnergyModel(devices[config.device]), meter)


def default_devices_file() -> Path:
    """Return the shipped ``devices.yaml``: in the source tree, or installed under share/."""
    return shipped_config('devices.yaml')


class OffloadManager:
    """Issues decisions and turns sources' results into one outcome per frame.

    All methods take the current time; the caller owns the clock (ROS time on a robot, the
    replay clock in the standalone runtime, a manual clock in tests).

    Args:
        config: Parameters.
        policy: Policy to use; by default the one ``config.policy`` names.
    """

    def __init__(self, config: ManagerConfig, policy: Policy | None = None) -> None:
        self.config = config
        self._policy = policy or create_policy(config.policy, config.policy_settings())
        # A frame that may still meet its deadline is never given up on.
        self._arbiter = Arbiter(tuple(config.edge_sources),
                                max(config.result_timeout_ms, config.deadline_ms))
        self._decision: Decision | None = None
        self._plan: Plan | None = None
        self._planned_ns = 0
        self._seq = 0
        self._history_pending = bool(config.history_file)
        self._battery = BatteryReader() if config.energy_reader == 'battery' else None
        self._energy = frame_energy(config, self._battery)
        self._ended: list[Outcome] = []  # frames refused on arrival, until the next poll

    def reconfigure(self, values: Mapping[str, Any]) -> ManagerConfig:
        """Apply parameters set at runtime; the next decision (issued at the next tick) shows them.

        The policy keeps what it learned unless ``policy`` names another one.

        Args:
            values: New values of live parameters (see :data:`PARAMETERS`).

        Returns:
            The new configuration.

        Raises:
            ConfigError: For a parameter that is not live or a value the manager refuses; the
                configuration in force is then unchanged.
        """
        fixed = sorted(name for name in values if name not in LIVE)
        if fixed:
            raise ConfigError(f'{", ".join(fixed)}: only set at start-up')
        config = ManagerConfig.from_params({**dataclasses.asdict(self.config), **values})
        settings = config.policy_settings()
        if config.policy != self.config.policy:
            self._policy = create_policy(config.policy, settings)
        else:
            self._policy.retune(settings)
        self.config = config
        self._arbiter.set_timeout(max(config.result_timeout_ms, config.deadline_ms))
        self._plan = None  # re-plan at the next tick, which then issues a decision
        return config

    @property
    def decision(self) -> Decision | None:
        """The decision in force, if one was issued."""
        return self._decision

    @property
    def pending(self) -> int:
        """Frames still waiting for a result."""
        return self._arbiter.pending

    def tick(self, now_ns: int) -> Decision | None:
        """Issue a decision if the plan changed or the period elapsed; returns it if issued."""
        plan = self._plan_at(now_ns)
        last = self._decision
        due = last is None or plan != self._plan or \
            now_ns - last.issued_ns >= self.config.decision_period_s * 1e9
        if not due:
            return None
        return self._issue(plan, now_ns)

    def _in_force(self, now_ns: int) -> Decision:
        """Return the decision in force; a frame before the first tick has the first issued."""
        if self._decision is not None:
            return self._decision
        return self._issue(self._plan_at(now_ns), now_ns)

    def _plan_at(self, now_ns: int) -> Plan:
        """Return the policy's plan, asked anew when none is kept or the plan period ended."""
        if self._history_pending:  # on the first tick: history needs the caller's clock
            from adaptive_offload.failure_log import load_outcomes

            self._history_pending = False
            self._policy.observe_history(load_outcomes(self.config.history_file, time.time(),
                                                       now_ns / 1e9))
        if self._plan is None or now_ns - self._planned_ns >= self.config.plan_period_s * 1e9:
            plan = self._policy.plan(now_ns)
            self._planned_ns = now_ns
        else:
            plan = self._plan
        return plan

    def _issue(self, plan: Plan, now_ns: int) -> Decision:
        """Issue the next decision, carrying out ``plan``."""
        self._seq += 1
        self._plan = plan
        decision = self._decision = Decision(
            seq=self._seq, issued_ns=now_ns, valid_for_ms=self.config.decision_valid_s * 1e3,
            route=plan.route, edge_model=plan.edge_model, edge_imgsz=plan.edge_imgsz,
            jpeg_quality=plan.jpeg_quality, cloud_max_side=plan.cloud_max_side,
            offload_every=plan.offload_every, hedge_delay_ms=plan.hedge_delay_ms,
            probe_every=plan.probe_every, deadline_ms=self.config.deadline_ms,
            policy=self.config.policy, reason=plan.reason)
        return decision

    def next_due_ns(self, now_ns: int) -> int:
        """Return when :meth:`tick` or :meth:`poll` may next act without a new input.

        A caller may sleep until then, or until an input comes, and miss nothing: the plan and
        decision periods and the pending frames' deadlines and timeouts all fall on or after
        it. A time not after ``now_ns`` means at once.
        """
        if self._decision is None or self._plan is None or self._history_pending or \
                self._ended:
            return now_ns
        due = min(self._planned_ns + math.ceil(self.config.plan_period_s * 1e9),
                  self._decision.issued_ns + math.ceil(self.config.decision_period_s * 1e9))
        frames = self._arbiter.next_due_ns(now_ns)
        return due if frames is None else min(due, frames)

    def frame_arrived(self, stamp_ns: int, frame_id: str, now_ns: int) -> Outcome | None:
        """Register an input frame under the current decision; a refused one ends at once."""
        decision = self._in_force(now_ns)
        outcome = self._arbiter.frame_arrived(stamp_ns, frame_id, now_ns, decision)
        if outcome is None:
            return None
        [annotated] = self._energy.annotate([outcome], now_ns)
        self._policy.observe_record(annotated.record)
        return annotated

    def on_frame(self, header: FrameHeader, now_ns: int) -> None:
        """Take a camera frame (the graph's handler); a refused one ends at the next poll."""
        outcome = self.frame_arrived(header.stamp_ns, header.frame_id, now_ns)
        if outcome is not None:
            self._ended.append(outcome)

    def frame_unreadable(self, reason: str, now_ns: int) -> Outcome:
        """Record a frame that could not even be deserialized: it ends as a drop."""
        decision = self._in_force(now_ns)
        [outcome] = self._energy.annotate([self._arbiter.unreadable(reason, decision)], now_ns)
        self._policy.observe_record(outcome.record)
        return outcome

    def on_detections(self, dets: DetectionSet, now_ns: int) -> None:
        """Take the detections a source published for a frame."""
        self._policy.observe_detections(dets)
        self._arbiter.add_result(dets, now_ns)

    def on_health_event(self, event: HealthEvent, now_ns: int = 0) -> None:
        """Take a health level change; the cloud check's tells the policy if the cloud is down."""
        if event.name == topics.CHECK_CLOUD:
            self._policy.observe_health(event.level >= Level.ERROR)

    def on_battery(self, sample: BatterySample, now_ns: int) -> None:
        """Take a BatteryState sample (used when ``energy_reader`` is battery)."""
        if self._battery is not None:
            self._battery.update(sample.voltage_v, sample.current_a, now_ns)

    def on_report(self, report: InferenceReport, now_ns: int = 0) -> None:
        """Take a source's report of what it did with a frame."""
        self._policy.observe_report(report)
        self._energy.report(report)
        self._arbiter.add_report(report)

    def poll(self, now_ns: int, final: bool = False) -> list[Outcome]:
        """Outcomes of the frames that are finished at ``now_ns`` (all of them if final)."""
        ended, self._ended = self._ended, []
        outcomes = self._arbiter.flush(now_ns) if final else self._arbiter.poll(now_ns)
        outcomes = ended + self._energy.annotate(outcomes, now_ns)
        for outcome in outcomes:
            self._policy.observe_record(outcome.record)
        return outcomes
