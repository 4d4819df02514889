"""``adaptive-offload evaluate``: every policy under every scenario, simulated or live.

Writes ``table.md`` and ``table.csv`` (one row per scenario and policy: robot energy per
frame, latency P50/P95/P99, deadline-miss %, accuracy proxy, cloud requests, bytes sent, GPU
seconds and cost per 1,000 frames) and per scenario three plots: latency CDF per policy, the
route each policy chose over time with the faults shaded, and energy per frame.

``sim`` runs :mod:`offload_runtime.simulator` with device and network profiles; ``live`` replays
a generated bag through the real models and the embedded service on loopback, faults
injected in the bridge's transport, so its figures describe this machine only.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from adaptive_offload.datatypes import FrameRecord, InferenceReport
from adaptive_offload.errors import ConfigError
from adaptive_offload.package_files import shipped_model
from adaptive_offload.split_option import parse_spec
from fault_injection.scenario import (EDGE_KINDS, load_scenario, refuse_service_kinds,
                                      Scenario)
import numpy as np
from offload_manager.accuracy import measured_figures, prior
from offload_manager.energy import DeviceProfile, load_devices
from offload_manager.manager import default_devices_file, ManagerConfig, OffloadManager
from offload_manager.policies import POLICIES
from offload_manager.split_figures import default_payloads_file, load_payload_file
from offload_runtime.eval_figures import plot, Row, slug, Trace, write_table
from offload_runtime.fronts import match, plot_front, swept_label, write_matched
from offload_runtime.sim_settings import NetworkProfile, SimSettings
from offload_runtime.simulator import Simulation
from offload_runtime.train_cli import CLOUD_FILE, EDGE_FILE
from rcnn_service.compact_rcnn import COMPACT_ARCH

DEFAULT_POLICIES = ('predictive', 'edge-only', 'cloud-only', 'static', 'weighted-score',
                    'mdp-svr', 'reactive', 'q-learning')


@dataclass(frozen=True)
class EvalOptions:
    """What to evaluate.

    Attributes:
        scenarios: Scenario files.
        policies: Policy names.
        mode: ``sim`` or ``live``.
        out: Output folder.
        frames: Frames per run (sim), or per live replay.
        fps: Camera rate.
        deadline_ms: Per-frame deadline.
        robot: Robot profile (``config/devices.yaml``); live mode defaults to ``ci_machine``.
        cloud: Cloud profile.
        devices_file: Profiles file; empty: the shipped one.
        edge_options: Edge ``model@imgsz`` choices for adaptive policies.
        network: Link profile (sim).
        seed: Random seed.
        model: Edge model for live mode (weights or ``.yaml``); empty: the shipped one
            (``models/yolov8n-shapes.pt``), so measured mAP means something.
        cloud_arch: Architecture of the embedded service (live); by default the shipped
            compact Faster R-CNN.
        cloud_checkpoint: Its checkpoint; None: the shipped one for the compact
            architecture, random weights for another; empty: random weights.
        imgsz: Edge input size of the live runs' default plan.
        backend_factory: Builds the edge detector in live mode (tests inject a fake).
        edge_params: More edge_inference parameters for live runs.
        split_options: Split routes (``arch@imgsz:point:encoding``) the adaptive policies may
            choose; in the simulator frames then have the payload file's JPEG sizes, live the
            replay's cloud bridge runs their heads against the embedded service's tail.
        measured: Simulate the shipped detectors (``yolov8n-shapes``, the compact Faster
            R-CNN) with their measured mAP at each scene difficulty, instead of COCO models
            and their priors.
        floors: Accuracy floors (mAP) to sweep ``predictive`` over, each a run of its own; with
            any, each scenario's energy-against-accuracy front is drawn and ``matched.md``
            pairs every baseline with the setting that reaches its accuracy.
    """

    scenarios: Sequence[Path]
    policies: Sequence[str] = DEFAULT_POLICIES
    mode: str = 'sim'
    out: Path = Path('evaluation')
    frames: int = 3000
    fps: float = 10.0
    deadline_ms: float = 250.0
    robot: str = ''
    cloud: str = 'gpu_server'
    devices_file: str = ''
    edge_options: Sequence[str] = ('yolov8n@320', 'yolov8n@640')
    network: NetworkProfile = field(default_factory=NetworkProfile)
    seed: int = 0
    model: str = ''
    cloud_arch: str = COMPACT_ARCH
    cloud_checkpoint: str | None = None
    imgsz: int = 640
    backend_factory: Callable[..., Any] | None = None
    edge_params: Mapping[str, Any] = field(default_factory=dict)
    floors: Sequence[float] = ()
    measured: bool = False
    split_options: Sequence[str] = ()


SHIPPED_EDGE, SHIPPED_CLOUD = 'yolov8n-shapes', 'fasterrcnn_mobilenet_v3_small_fpn'
"""The shipped detectors' names in ``models/accuracy.json`` (``--measured``)."""


def live_models(opts: EvalOptions) -> tuple[str, str]:
    """Return the edge model and the cloud checkpoint a live run uses."""
    edge = opts.model or str(shipped_model(EDGE_FILE))
    checkpoint = opts.cloud_checkpoint
    if checkpoint is None:
        checkpoint = str(shipped_model(CLOUD_FILE)) if opts.cloud_arch == COMPACT_ARCH else ''
    return edge, checkpoint


def manager_config(opts: EvalOptions, policy: str, robot: str,
                   floor: float = 0.0) -> ManagerConfig:
    """Return the manager configuration a simulated or live run of ``policy`` uses."""
    edge, options = 'yolov8n', list(opts.edge_options)
    extra = opts.network.manager_params()  # a middle device and its LAN, if any
    if opts.measured and opts.mode == 'sim':
        edge = SHIPPED_EDGE
        extra['cloud_model'] = SHIPPED_CLOUD
    elif opts.mode == 'live':
        # The name the edge node gives its model (the file's stem): the manager's priors and
        # its decisions' model must be that one.
        edge = Path(live_models(opts)[0]).stem
        extra['cloud_model'] = opts.cloud_arch
    options = [o.replace('yolov8n@', f'{edge}@') for o in options]
    return ManagerConfig.from_params({
        'policy': policy, 'deadline_ms': opts.deadline_ms, 'edge_model': edge,
        'edge_imgsz': opts.imgsz, 'edge_options': options, 'device': robot,
        'cloud_device': opts.cloud, 'devices_file': opts.devices_file, 'seed': opts.seed,
        'decision_period_s': 0.5, 'decision_valid_s': 2.0, 'accuracy_floor': float(floor),
        'split_options': list(opts.split_options) or [''], **extra})


def _measured_quality(model: str, imgsz: int, level: str) -> float | None:
    """Return a shipped model's held-out mAP at a scene difficulty (the sim's quality)."""
    sizes = measured_figures().get(model)
    if not sizes:
        return None
    size = imgsz if imgsz in sizes else (next(iter(sizes)) if len(sizes) == 1 else None)
    return None if size is None else sizes[size].get(level)


def make_row(scenario: str, policy: str, mode: str, records: list[FrameRecord],
             energy: dict[int, float], accuracy: dict[int, float], cloud_requests: int,
             bytes_sent: int, gpu_s: float, price_per_hour: float) -> Row:
    """Aggregate one run's records and per-frame figures into a table row."""
    n = max(1, len(records))
    lat = [r.latency_ms for r in records if r.latency_ms is not None]
    q = np.percentile(lat, [50, 95, 99]) if lat else np.full(3, np.nan)
    misses = sum(1 for r in records if not r.deadline_met)
    gpu_cost = gpu_s * price_per_hour / 3600
    return Row(scenario, policy, mode, len(records),
               float(np.mean([energy.get(r.stamp_ns, 0.0) for r in records])) if records else 0,
               float(q[0]), float(q[1]), float(q[2]), 100.0 * misses / n,
               float(np.mean([accuracy.get(r.stamp_ns, 0.0) for r in records])) if records
               else 0.0, cloud_requests, bytes_sent / 1e6, gpu_s, gpu_cost * 1000 / n)


def sim_settings(opts: EvalOptions) -> SimSettings:
    """Return what a simulated run of ``opts`` plays (one robot's, or each of a fleet's)."""
    settings = SimSettings(frames=opts.frames, fps=opts.fps, seed=opts.seed)
    for option in opts.split_options:  # JPEGs of the frame the cloud model's were measured on
        spec = parse_spec(option)
        found = load_payload_file(default_payloads_file(spec.arch, spec.imgsz))
        if found.family != 'yolo':  # the edge detector's frame is its own square input
            settings = dataclasses.replace(settings,
                                           q75_bytes=found.jpeg.get(75, settings.q75_bytes))
            break
    if opts.measured:
        settings = dataclasses.replace(settings, cloud_model=SHIPPED_CLOUD)
    return settings


def run_sim(opts: EvalOptions, scenario: Scenario, policy: str,
            devices: dict[str, DeviceProfile], floor: float | None = None) -> tuple[Row, Trace]:
    """Simulate one policy under one scenario (predictive with ``floor``, if given)."""
    robot = opts.robot or 'raspberry_pi_5'
    manager = OffloadManager(manager_config(opts, policy, robot, floor or 0.0),
                             executes_split=True)
    settings = sim_settings(opts)
    sim = Simulation(manager, devices[robot], devices[opts.cloud], opts.network, scenario,
                     settings, _measured_quality if opts.measured else None)
    res = sim.run()
    label = policy if floor is None else swept_label(floor)
    row = make_row(scenario.name, label, 'sim', res.records, res.energy_j, res.accuracy,
                   res.cloud_requests, res.bytes_sent, res.gpu_seconds,
                   devices[opts.cloud].price_per_gpu_hour)
    return row, Trace([r.latency_ms for r in res.records if r.latency_ms is not None],
                      [res.energy_j[r.stamp_ns] for r in res.records], res.routes)


def run_live(opts: EvalOptions, scenario: Scenario, policy: str,
             devices: dict[str, DeviceProfile], bag: Path,
             floor: float | None = None) -> tuple[Row, Trace]:
    """Replay the bag through the real graph for one policy under one scenario."""
    from offload_runtime.replay import Replay, ReplayOptions
    from rcnn_service.service import ServiceConfig

    robot = opts.robot or 'ci_machine'
    cfg = manager_config(opts, policy, robot, floor or 0.0)
    manager = {k: getattr(cfg, k) for k in ('policy', 'deadline_ms', 'edge_model', 'edge_imgsz',
                                            'edge_options', 'device', 'cloud_device',
                                            'devices_file', 'seed', 'accuracy_floor',
                                            'split_options')}
    label = policy if floor is None else swept_label(floor)
    out = opts.out / 'runs' / f'{slug(scenario.name)}-{label.replace(" ", "-")}'
    factory = {'backend_factory': opts.backend_factory} if opts.backend_factory else {}
    edge_model, checkpoint = live_models(opts)
    if cfg.policy == 'edge-only' or (cfg.policy == 'static' and cfg.static_route == 'edge'):
        # The policy never calls the cloud: its faults cannot touch this run.
        scenario = scenario.only(EDGE_KINDS | {'manager_death'})
    result = Replay(ReplayOptions(
        bag=bag, out=out, rate=1.0, scenario=scenario if scenario.faults else None,
        overrides={'offload_manager': manager,
                   'edge_inference': {'model': edge_model, 'imgsz': opts.imgsz,
                                      'deadline_ms': opts.deadline_ms, **opts.edge_params}},
        service=ServiceConfig(arch=opts.cloud_arch, checkpoint=checkpoint)), **factory).run()
    cloud = {r.stamp_ns: r for r in result.reports if r.status == 'ok' and r.source == 'cloud'}
    edge = {r.stamp_ns: r for r in result.reports if r.status == 'ok' and r.source != 'cloud'}
    energy, accuracy = {}, {}
    for rec in result.records:
        energy[rec.stamp_ns] = rec.energy_j or 0.0  # the manager's, from the robot profile
        accuracy[rec.stamp_ns] = _live_accuracy(rec, edge, opts.cloud_arch)
    row = make_row(scenario.name, label, 'live', result.records, energy, accuracy,
                   len(cloud), sum(c.bytes_sent for c in cloud.values()),
                   sum(c.server_ms for c in cloud.values()) / 1e3,
                   devices[opts.cloud].price_per_gpu_hour)
    measured = (result.summary.get('map') or {}).get('all')
    if measured is not None:
        row = dataclasses.replace(row, measured_map=100.0 * measured)
    return row, Trace([r.latency_ms for r in result.records if r.latency_ms is not None],
                      [energy[r.stamp_ns] for r in result.records], result.routes)


def _live_accuracy(rec: FrameRecord, edge: dict[int, InferenceReport], cloud_arch: str) -> float:
    # The prior of what served the frame: the served architecture, or the edge model at the
    # input size its report says it ran (a decision may have chosen 320 or 640).
    if not rec.result_source:
        return 0.0
    if rec.result_source == 'cloud':
        return prior(cloud_arch)
    report = edge.get(rec.stamp_ns)
    return prior(report.model or 'yolov8n', report.imgsz) if report else prior('yolov8n')


def evaluate(opts: EvalOptions, announce: Callable[[str], Any] = print) -> list[Row]:
    """Run every scenario x policy, write the table and plots, return the rows.

    Raises:
        ConfigError: For an unknown mode or policy, or unusable scenarios or profiles.
    """
    if opts.mode not in ('sim', 'live'):
        raise ConfigError(f'mode must be sim or live, got {opts.mode!r}')
    unknown = [p for p in opts.policies if p not in POLICIES]
    if unknown:
        raise ConfigError(f'unknown policies {unknown} (known: {", ".join(sorted(POLICIES))})')
    if not opts.scenarios:
        raise ConfigError('no scenarios given')
    devices = load_devices(opts.devices_file or default_devices_file())
    scenarios = [load_scenario(p) for p in opts.scenarios]
    for scenario in scenarios:
        refuse_service_kinds(scenario, 'evaluate of one robot')
    opts.out.mkdir(parents=True, exist_ok=True)
    rows: list[Row] = []
    for scenario in scenarios:
        bag = _live_bag(opts, scenario) if opts.mode == 'live' else opts.out
        traces: dict[str, Trace] = {}
        for policy in opts.policies:
            if opts.mode == 'live':
                row, traces[policy] = run_live(opts, scenario, policy, devices, bag)
            else:
                row, traces[policy] = run_sim(opts, scenario, policy, devices)
            rows.append(row)
            _announce(announce, row)
        plot(opts.out, scenario, traces)
        for floor in opts.floors:
            if opts.mode == 'live':
                row, _ = run_live(opts, scenario, 'predictive', devices, bag, floor)
            else:
                row, _ = run_sim(opts, scenario, 'predictive', devices, floor)
            rows.append(row)
            _announce(announce, row)
        if opts.floors:
            plot_front(opts.out, scenario.name, slug(scenario.name), rows)
    write_table(opts.out, rows)
    if opts.floors:
        write_matched(opts.out, match(rows))
    return rows


def _live_bag(opts: EvalOptions, scenario: Scenario) -> Path:
    """Return the generated bag of a scenario's scene, written on first use."""
    from offload_runtime.sample_bag import SampleSpec, write_sample_bag

    bag = opts.out / (f'bag-{slug(scenario.scene)}' if scenario.scene else 'bag')
    if not bag.exists():
        write_sample_bag(bag, SampleSpec(frames=opts.frames, fps=opts.fps,
                                         difficulty=scenario.scene))
    return bag


def _announce(announce: Callable[[str], Any], row: Row) -> None:
    announce(f'{row.scenario:32s} {row.policy:22s} miss {row.miss_pct:5.1f} % '
             f'P99 {row.p99_ms:7.1f} ms energy {row.energy_j:6.3f} J mAP {row.accuracy:5.1f}')
