"""``adaptive-offload evaluate --robots N --replicas R [--autoscale]``: fleets, simulated.

Every scenario x policy x scaler is one fleet run (:class:`FleetSim`): N robots, each an
unchanged manager with the policy, share R replicas of the service, which the scaler resizes.
Writes ``fleet.md`` and ``fleet.csv`` (the resilience table: fleet deadline-miss %, robot
energy, GPU-seconds and cost, utilisation, replicas, MTTR and capacity recovery after the
failures, speed) and, per scenario, ``fleet_<scenario>.png``: replicas ready and the fleet's
misses over time for every run.
"""

from __future__ import annotations

from concurrent.futures import ProcessPoolExecutor
import contextlib
import dataclasses
from dataclasses import dataclass, field
import multiprocessing
from typing import Any, Callable, Iterable, Sequence

from adaptive_offload.errors import ConfigError
from fault_injection.scenario import load_scenario, Scenario
from offload_manager.energy import DeviceProfile, load_devices
from offload_manager.manager import default_devices_file, OffloadManager
from offload_manager.policies import POLICIES
from offload_runtime.autoscalers import HpaSettings, SCALERS
from offload_runtime.eval_figures import slug
from offload_runtime.evaluate import _measured_quality, EvalOptions, manager_config, sim_settings
from offload_runtime.fleet_figures import FleetRow, write_fleet_table
from offload_runtime.fleet_sim import FleetSim, FleetSpec
from offload_runtime.service_settings import ServiceSettings

AUTOSCALE = ('static', 'reactive', 'predictive', 'learned')
"""Scalers compared by ``--autoscale``."""


@dataclass(frozen=True)
class FleetOptions:
    """The fleet part of an evaluation.

    Attributes:
        robots: Robots sharing the service.
        service: Its replicas and lifecycle; ``first_ms`` 0 takes the cloud profile's time
            of the cloud model (60 ms where it has none).
        scalers: Scaler names, each a run of its own.
        hpa: The autoscalers' configuration.
    """

    robots: int
    service: ServiceSettings = field(default_factory=ServiceSettings)
    scalers: Sequence[str] = ('static',)
    hpa: HpaSettings = HpaSettings()


def _service(fleet: FleetOptions, cloud: DeviceProfile, model: str) -> ServiceSettings:
    if fleet.service.first_ms > 0:
        return fleet.service
    return dataclasses.replace(fleet.service,
                               first_ms=cloud.inference_time_ms(model, 640) or 60.0)


def run_fleet(opts: EvalOptions, fleet: FleetOptions, scenario: Scenario, policy: str,
              scaler: str, devices: dict[str, DeviceProfile]) -> tuple[FleetRow, FleetSim]:
    """Simulate one fleet run; return its table row and the finished simulation."""
    robot = opts.robot or 'raspberry_pi_5'
    settings = sim_settings(opts)

    def managers(i: int) -> OffloadManager:
        # Each robot's policy draws its own numbers: a fleet of one seed would move as one.
        own = dataclasses.replace(opts, seed=opts.seed * 100_003 + i)
        return OffloadManager(manager_config(own, policy, robot), executes_split=True)

    spec = FleetSpec(fleet.robots, _service(fleet, devices[opts.cloud], settings.cloud_model),
                     fleet.hpa, scaler)
    sim = FleetSim(spec, managers, devices[robot], devices[opts.cloud], opts.network, scenario,
                   settings, _measured_quality if opts.measured else None)
    return sim.run(), sim


@dataclass(frozen=True)
class FleetRun:
    """What the table and plots keep of one fleet run (small enough to come back from a worker).

    Attributes:
        row: Its table row.
        ready: (time s, replicas ready) samples.
        misses: (window centre s, fleet misses %) per 10 s window with frames.
    """

    row: FleetRow
    ready: list[tuple[float, int]]
    misses: list[tuple[float, float]]


def _run(task: tuple[EvalOptions, FleetOptions, Scenario, str, str,
                     dict[str, DeviceProfile]]) -> FleetRun:
    row, sim = run_fleet(*task)
    misses = []
    for start in range(0, max(1, int(sim.end_ns / 1e9) - 9), 10):
        share = sim.counts.miss_share(start, start + 10)
        if share is not None:
            misses.append((start + 5.0, 100.0 * share))
    return FleetRun(row, sim.ready, misses)


def evaluate_fleet(opts: EvalOptions, fleet: FleetOptions,
                   announce: Callable[[str], Any] = print, jobs: int = 1) -> list[FleetRow]:
    """Run every scenario x policy x scaler as a fleet; write the table and plots.

    Args:
        opts: What to evaluate (mode ``sim``).
        fleet: The fleet, its service and the scalers to compare.
        announce: Takes one line per finished run.
        jobs: Runs at once, each in a process of its own (each run is one core's work).

    Raises:
        ConfigError: For live mode, an unknown policy or scaler, or unusable scenarios.
    """
    if opts.mode != 'sim':
        raise ConfigError('fleets are simulated only: use --mode sim with --robots')
    if fleet.robots < 1 or jobs < 1:
        raise ConfigError(f'--robots and --jobs must be >= 1, got {fleet.robots}, {jobs}')
    unknown = [p for p in opts.policies if p not in POLICIES] + \
        [s for s in fleet.scalers if s not in SCALERS]
    if unknown:
        raise ConfigError(f'unknown policies or scalers {unknown} (policies: '
                          f'{", ".join(sorted(POLICIES))}; scalers: {", ".join(SCALERS)})')
    if not opts.scenarios:
        raise ConfigError('no scenarios given')
    devices = load_devices(opts.devices_file or default_devices_file())
    scenarios = [load_scenario(p) for p in opts.scenarios]
    opts.out.mkdir(parents=True, exist_ok=True)
    tasks = [(opts, fleet, scenario, policy, scaler, devices) for scenario in scenarios
             for policy in opts.policies for scaler in fleet.scalers]
    runs: list[FleetRun] = []
    with contextlib.ExitStack() as stack:
        if jobs > 1:
            pool = stack.enter_context(ProcessPoolExecutor(
                jobs, mp_context=multiprocessing.get_context('spawn')))
            results: Iterable[FleetRun] = pool.map(_run, tasks)
        else:
            results = map(_run, tasks)
        for run in results:
            runs.append(run)
            row = run.row
            announce(f'{row.scenario:28s} {row.policy:12s} {row.scaler:10s} '
                     f'miss {row.miss_pct:5.2f} % late {row.late_frames} '
                     f'replicas {row.mean_replicas:4.1f} MTTR {row.mttr_s:5.0f} s '
                     f'GPU {row.gpu_s:6.0f} s  {row.speed:.0f}x real time')
    for scenario in scenarios:
        _plot(opts, scenario, [r for r in runs if r.row.scenario == scenario.name])
    rows = [r.row for r in runs]
    write_fleet_table(opts.out, rows)
    return rows


def _plot(opts: EvalOptions, scenario: Scenario, runs: list[FleetRun]) -> None:
    """Replicas ready and the fleet's misses (10 s windows) over time, faults shaded."""
    import matplotlib

    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(12, 6), sharex=True)
    for run in runs:
        label = f'{run.row.policy} / {run.row.scaler}'
        top.step([t for t, _ in run.ready], [n for _, n in run.ready], where='post',
                 label=label)
        bottom.plot([t for t, _ in run.misses], [m for _, m in run.misses], label=label)
    for ax in (top, bottom):
        for f in scenario.faults:
            ax.axvspan(f.start_s, f.end_s if f.duration_s else f.start_s + 1, color='red',
                       alpha=0.15)
    top.set_ylabel('replicas ready')
    bottom.set_ylabel('fleet misses, % (10 s)')
    bottom.set_xlabel('time, s')
    top.legend(fontsize='small', loc='upper left', bbox_to_anchor=(1.01, 1.0))
    top.set_title(f'{scenario.name}: {runs[0].row.robots} robots' if runs else scenario.name)
    fig.tight_layout()
    fig.savefig(opts.out / f'fleet_{slug(scenario.name)}.png', dpi=90)
    plt.close(fig)
