"""Decision cost of the predictive policy, and simulator speed (issue 5).

1. Cost of one plan of the predictive policy (every option scored) after a realistic warm-up
   (300 simulated frames), and per frame: the manager re-plans at most every plan_period_s, so
   at 10 fps a frame carries plan_period_s x fps = 2.5 frames per plan. Target <= 50 us/frame.
   The fixed edge-only policy is timed the same way as the baseline.
2. Simulated frames per second of wall time (sim mode of ``adaptive-offload evaluate``).

Run: ``.venv/bin/python benchmarks/bench_decision.py``
"""

from __future__ import annotations

import time

from fault_injection.scenario import parse_scenario
from offload_manager.energy import load_devices
from offload_manager.manager import default_devices_file, OffloadManager
from offload_runtime.evaluate import _manager, EvalOptions
from offload_runtime.sim_settings import NetworkProfile, SimSettings
from offload_runtime.simulator import Simulation


def warmed(policy: str, frames: int) -> tuple[OffloadManager, float]:
    """Run ``frames`` simulated frames; return the manager and the wall time they took."""
    devices = load_devices(default_devices_file())
    manager = OffloadManager(_manager(EvalOptions(scenarios=[]), policy, 'raspberry_pi_5'))
    sim = Simulation(manager, devices['raspberry_pi_5'], devices['gpu_server'],
                     NetworkProfile(), parse_scenario({'faults': []}), SimSettings(frames=frames))
    start = time.perf_counter()
    sim.run()
    return manager, time.perf_counter() - start


def plan_us(manager: OffloadManager, n: int = 3000) -> float:
    """Mean microseconds of one policy plan."""
    policy = manager._policy  # the benchmark times the policy itself, not the manager's cache
    t0 = 400 * 10**9
    start = time.perf_counter()
    for i in range(n):
        policy.plan(t0 + i * 1000)
    return (time.perf_counter() - start) / n * 1e6


def main() -> None:
    """Measure and print."""
    predictive, sim_s = warmed('predictive', 3000)
    fixed, _ = warmed('edge-only', 300)
    ours, base = plan_us(predictive), plan_us(fixed)
    period = predictive.config.plan_period_s
    per_frame = ours / (period * 10.0)
    print(f'predictive plan       {ours:7.1f} us ({len(predictive._policy.options())} options)')
    print(f'edge-only plan        {base:7.1f} us   ratio {ours / base:6.1f}x')
    print(f'per frame at 10 fps   {per_frame:7.1f} us (one plan per {period} s; target <= 50)')
    print(f'share of a 100 ms frame period: {per_frame / 1e5 * 100:.3f} %')
    print(f'simulator: 3000 frames in {sim_s:.2f} s = {3000 / sim_s:,.0f} frames/s '
          f'({3000 / sim_s / 10:,.0f}x real time at 10 fps)')


if __name__ == '__main__':
    main()
