"""The simulator on bandwidth_drop_twice: predictive follows each drop and each recovery."""

from __future__ import annotations

from pathlib import Path

from fault_injection.scenario import load_scenario
from offload_runtime import evaluate as ev

S = 'fasterrcnn_mobilenet_v3_small_fpn@640'
SCENARIO = Path(__file__).resolve().parents[2] / 'config/scenarios/bandwidth_drop_twice.yaml'


def test_predictive_is_back_on_the_link_within_a_second_of_each_recovery(tmp_path: Path) -> None:
    opts = ev.EvalOptions(scenarios=[SCENARIO], policies=['predictive'], frames=420,
                          robot='raspberry_pi_5', cloud='h200_server', out=tmp_path,
                          measured=True, split_options=[f'{S}:body.3:int8+zstd'])
    scenario = load_scenario(SCENARIO)
    devices = ev.load_devices(ev.default_devices_file())
    _, trace = ev.run_sim(opts, scenario, 'predictive', devices)

    def route_at(t_s: float) -> str:
        return [r for t, r in trace.routes if t <= t_s][-1]

    assert len(scenario.faults) == 2
    for fault in scenario.faults:
        left = [t for t, r in trace.routes if fault.start_s <= t < fault.end_s and r == 'edge']
        assert left, 'it leaves the slowed link'
        assert route_at(fault.end_s - 0.01) == 'edge'
        back = next(t for t, r in trace.routes if t >= fault.end_s and r == 'cloud')
        assert back - fault.end_s <= 1.0
