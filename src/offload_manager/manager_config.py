"""The offload manager's parameters, validated, and what they build: policies, frame energy."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Mapping

from adaptive_offload.datatypes import Route
from adaptive_offload.errors import ConfigError
from adaptive_offload.package_files import shipped_config
from adaptive_offload.params import ParameterSpec, resolve
from adaptive_offload.split_option import parse_spec
from offload_manager.energy import (EnergyModel, EnergyReader, load_devices, MeasuredEnergy,
                                    READERS)
from offload_manager.frame_energy import FrameEnergy
from offload_manager.policy import Plan, PolicySettings
from offload_manager.split_figures import split_figures

PARAMETERS = (
    ParameterSpec('policy', 'predictive', 'Routing policy (registry name).', live=True),
    ParameterSpec('deadline_ms', 250.0, 'Per-frame deadline from arrival to result.', live=True,
                  minimum=1.0, maximum=60000.0),
    ParameterSpec('decision_period_s', 0.5, 'How often the decision is re-issued.',
                  minimum=0.01, maximum=60.0),
    ParameterSpec('plan_period_s', 0.25,
                  'How often the policy re-plans (at most); decisions change at once then.',
                  minimum=0.01, maximum=60.0),
    ParameterSpec('cloud_switch_jitter_s', 0.0,
                  'Hold a switch onto the cloud for a random 0..this many seconds, so a fleet '
                  'that sees one cause together does not reach the service together.',
                  live=True, minimum=0.0, maximum=60.0),
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
    ParameterSpec('split_options', [''],
                  'arch@imgsz:point:encoding split routes the adaptive policies may choose '
                  '(cloud_bridge runs their heads: give it the same list); [""]: none. '
                  'arch@imgsz:i/j:encoding: three tiers, the middle device runs [i, j) '
                  '(j end: the rest; cloud_bridge sends them via its split_middle_url). '
                  'model@imgsz:k/end:encoding of the edge model: its split head on the robot '
                  'runs [0, k), its tail on the middle device the rest (an edge route).'),
    ParameterSpec('split_middle_device', '',
                  'Device profile of the middle tier (an edge computer on the LAN) of '
                  'three-tier split options; empty: none.'),
    ParameterSpec('split_lan_mbps', 100.0, 'Robot-to-middle-device LAN rate, Mbit/s.',
                  minimum=0.001, maximum=100000.0),
    ParameterSpec('split_lan_rtt_ms', 2.0, 'Robot-to-middle-device LAN round trip, ms.',
                  minimum=0.0, maximum=10000.0),
    ParameterSpec('epsilon', 0.01, 'Largest acceptable P(latency > deadline).', live=True,
                  minimum=0.0001, maximum=0.5),
    ParameterSpec('accuracy_floor', 0.0,
                  'Lowest acceptable expected mAP@[.5:.95] (0-100) of the results; 0: none.',
                  live=True, minimum=0.0, maximum=100.0),
    ParameterSpec('energy_budget_j', 0.0,
                  'Largest acceptable robot energy per frame (J, idle power over the camera '
                  'period included); 0: none.', live=True,
                  minimum=0.0, maximum=1000.0),
    ParameterSpec('cloud_spend_cap_usd_h', 0.0,
                  'Largest acceptable cloud spend (USD per hour, at the measured frame rate); '
                  '0: none.', live=True, minimum=0.0, maximum=1000000.0),
    ParameterSpec('weight_energy', 1.0,
                  'Predictive: tie-break weight of robot energy (options within 1 mJ).',
                  live=True, minimum=0.0, maximum=1000.0),
    ParameterSpec('weight_accuracy', 1.0,
                  'Predictive: tie-break weight of accuracy loss (options within 1 mJ).',
                  live=True, minimum=0.0, maximum=1000.0),
    ParameterSpec('weight_cost', 0.2,
                  'Predictive: tie-break weight of cloud cost (options within 1 mJ).',
                  live=True, minimum=0.0, maximum=1000.0),
    ParameterSpec('probe_every', 10,
                  'Edge (cloud) route: every n-th frame also goes to the cloud (edge), a probe; '
                  "on the robot's own model also to the edge split it left; 0: no probes.",
                  live=True, minimum=0, maximum=1000),
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
SPLIT_POLICIES = ('static-split', 'split-score')
LIVE = frozenset(spec.name for spec in PARAMETERS if spec.live)
ADAPTIVE = ('predictive', 'weighted-score', 'reactive', 'mdp-svr', 'q-learning',
            'static-split', 'split-score')


@dataclass(frozen=True)
class ManagerConfig:
    """Validated manager parameters (see :data:`PARAMETERS`)."""

    policy: str
    deadline_ms: float
    decision_period_s: float
    plan_period_s: float
    cloud_switch_jitter_s: float
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
    split_options: list
    split_middle_device: str
    split_lan_mbps: float
    split_lan_rtt_ms: float
    epsilon: float
    accuracy_floor: float
    energy_budget_j: float
    cloud_spend_cap_usd_h: float
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
        if config.static_route not in {r.value for r in Route} - {Route.SPLIT.value}:
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
        for text in config.splits():
            if parse_spec(text).three_tier and not config.split_middle_device:
                raise ConfigError(f'split option {text!r}: three tiers need '
                                  'split_middle_device')
        if config.policy in SPLIT_POLICIES and not config.splits():
            raise ConfigError(f'policy {config.policy!r} needs split_options')
        return config

    def splits(self) -> tuple[str, ...]:
        """Split options as ``arch@imgsz:point:encoding``; empty: none."""
        return tuple(o for o in self.split_options if o)

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
        for name in (self.device, self.cloud_device, self.split_middle_device):
            if name and name not in devices:
                raise ConfigError(f'device {name!r} is not in the device profiles '
                                  f'(known: {", ".join(sorted(devices))})')
        robot, cloud = devices[self.device], devices[self.cloud_device]
        return replace(settings, energy=EnergyModel(robot),
                       edge_profile_ms=dict(robot.inference_ms),
                       gpu_price_per_hour=cloud.price_per_gpu_hour,
                       server_power_w=cloud.compute_w, cloud_model=self.cloud_model,
                       edge_options=self.options(), epsilon=self.epsilon,
                       accuracy_floor=self.accuracy_floor,
                       energy_budget_j=self.energy_budget_j,
                       spend_cap_usd_h=self.cloud_spend_cap_usd_h,
                       weight_energy=self.weight_energy, weight_accuracy=self.weight_accuracy,
                       weight_cost=self.weight_cost, probe_every=self.probe_every,
                       splits=split_figures(self.splits(), robot, cloud,
                                            middle=devices.get(self.split_middle_device),
                                            lan_mbps=self.split_lan_mbps,
                                            lan_rtt_ms=self.split_lan_rtt_ms))


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
