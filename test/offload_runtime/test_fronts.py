"""The fronts: swept predictive settings matched against baselines."""

from __future__ import annotations

import math
from pathlib import Path

from offload_runtime.eval_figures import Row
from offload_runtime.evaluate import default_devices_file, EvalOptions, evaluate
from offload_runtime.fronts import match, swept_label, write_matched
import yaml

ROOT = Path(__file__).resolve().parents[2]


def _row(policy: str, energy: float, accuracy: float, miss: float = 0.0,
         measured: float = math.nan, scenario: str = 's') -> Row:
    return Row(scenario, policy, 'sim', 100, energy, 10.0, 20.0, 30.0, miss, accuracy, 0, 0.0,
               0.0, 0.0, measured)


def test_each_baseline_gets_the_least_energy_setting_that_reaches_its_accuracy(
        tmp_path: Path) -> None:
    rows = [_row('static', 0.70, 36.9, miss=1.0), _row('cloud-only', 0.30, 46.7),
            _row('edge-only', 0.20, 50.0, measured=20.0),  # measured beats the prior
            _row(swept_label(0), 0.18, 26.4), _row(swept_label(30), 0.25, 38.5),
            _row(swept_label(35), 0.31, 46.5), _row(swept_label(45), 0.45, 46.9, miss=0.2),
            _row('static', 0.1, 99.0, scenario='other')]
    by = {(m.scenario, m.baseline.policy): m for m in match(rows)}
    static = by[('s', 'static')]
    assert static.setting.policy == swept_label(30) and static.no_worse
    cloud = by[('s', 'cloud-only')]  # 46.5 is within half a point of 46.7
    assert cloud.setting.policy == swept_label(35) and not cloud.no_worse  # 0.31 J > 0.30 J
    assert by[('s', 'edge-only')].setting.policy == swept_label(0)  # needs only 19.5
    assert by[('other', 'static')].setting is None  # no sweep in that scenario
    write_matched(tmp_path, list(by.values()))
    table = (tmp_path / 'matched.md').read_text()
    assert '| s | static | 36.9 | 0.700 | 1.0 | 30 | floor 30 | 38.5 | 0.250 | 0.0 | 30 | yes |' \
        in table
    assert '| other | static | 99.0 | 0.100 | 0.0 | 30 | none reaches it |' in table


def test_a_miss_rate_over_the_baselines_is_worse_beyond_the_slack() -> None:
    rows = [_row('reactive', 0.50, 40.0, miss=0.5), _row(swept_label(40), 0.40, 40.0, miss=0.6),
            _row('mdp-svr', 0.50, 40.0, miss=0.3)]
    by = {m.baseline.policy: m for m in match(rows)}
    assert by['reactive'].no_worse  # 0.1 points more misses: within the slack
    assert not by['mdp-svr'].no_worse  # 0.3 points more


def _cellular_pi(tmp_path: Path) -> str:
    """Write the shipped profiles with the Pi 5's radio at 2 uJ a bit (a cellular modem).

    On Wi-Fi the cloud is both cheaper for the robot and more accurate, so no floor is needed
    to reach it; over a dear radio the edge is cheaper, and a floor has to buy the accuracy.
    """
    data = yaml.safe_load(default_devices_file().read_text())
    data['devices']['raspberry_pi_5']['tx_nj_per_bit'] = 2000.0
    path = tmp_path / 'devices.yaml'
    path.write_text(yaml.safe_dump(data))
    return str(path)


def test_evaluate_sweeps_floors_and_draws_the_fronts(tmp_path: Path) -> None:
    rows = evaluate(EvalOptions(scenarios=[ROOT / 'config/scenarios/steady.yaml'],
                                policies=['static', 'cloud-only'], out=tmp_path, frames=600,
                                floors=(0.0, 35.0), devices_file=_cellular_pi(tmp_path)),
                    announce=lambda _: None)
    assert [r.policy for r in rows] == ['static', 'cloud-only', 'predictive floor 0',
                                        'predictive floor 35']
    by = {r.policy: r for r in rows}
    # The floor buys accuracy with energy: above the floor, and dearer than no floor.
    assert by['predictive floor 35'].accuracy >= 35.0 > by['predictive floor 0'].accuracy
    assert by['predictive floor 35'].energy_j > by['predictive floor 0'].energy_j
    assert (tmp_path / 'front_steady.png').stat().st_size > 1000
    matched = (tmp_path / 'matched.md').read_text()
    assert '| steady | static |' in matched and '| steady | cloud-only |' in matched
