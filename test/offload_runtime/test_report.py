"""The HTML page of a run: what it holds, that it stands alone, and that a browser draws it."""

from __future__ import annotations

import base64
import os
from pathlib import Path
import re
import shutil
from typing import Any, Callable

from adaptive_offload.errors import BagError
from fault_injection.scenario import parse_scenario
from offload_runtime.cli import main
from offload_runtime.replay import Replay, ReplayOptions
from offload_runtime.report import write_evaluation_report, write_report
from offload_runtime.sample_bag import SampleSpec, write_sample_bag
import pytest

PLOTS = 4  # latency CDF, routes, energy, diagnostics
TINY_PNG = base64.b64decode('iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwAD'
                            'hgGAWjR9awAAAABJRU5ErkJggg==')


@pytest.fixture(scope='module')
def run_bag(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Replay 30 frames with a fault at their recorded rate; return the output bag."""
    from helpers import FakeBackend

    tmp = tmp_path_factory.mktemp('report')
    write_sample_bag(tmp / 'in', SampleSpec(frames=30, fps=10, width=160, height=120))
    scenario = parse_scenario({'faults': [
        {'kind': 'edge_stall', 'start_s': 1.0, 'duration_s': 0.5}]})
    Replay(ReplayOptions(bag=tmp / 'in', out=tmp / 'out', rate=1.0, scenario=scenario,
                         overrides={'offload_manager': {'policy': 'edge-only'}}),
           backend_factory=lambda name, options: FakeBackend()).run()
    return tmp / 'out'


def _images(page: str) -> list[str]:
    return re.findall(r'<img src="([^"]+)"', page)


def test_the_page_holds_the_summary_plots_faults_and_frames(run_bag: Path,
                                                            tmp_path: Path) -> None:
    page_path = write_report(run_bag, tmp_path / 'page.html', frames=5)
    page = page_path.read_text(encoding='utf-8')
    assert '<td>frames in</td><td>30</td>' in page
    # The fault measured from the bag as the replay measured it: when it was seen, and what it
    # cost; edge-only has no other side to recover on.
    row = re.search(r'<td>edge_stall</td><td>1\.\d s</td><td>1\.\d s</td><td>(\d+) ms</td>'
                    r'<td>[^<]+</td><td>-</td><td>0</td><td>(\d+)</td>', page)
    assert row, page[page.index('Faults injected'):][:600]
    detected, dropped = (int(g) for g in row.groups())
    assert detected <= 500 and dropped >= 1
    images = _images(page)
    assert len(images) == PLOTS + 5
    assert all(src.startswith(('data:image/png;base64,', 'data:image/jpeg;base64,'))
               for src in images)
    # It stands alone: nothing is fetched, nothing runs.
    assert not re.search(r'(src|href)="(?!data:)', page) and '<script' not in page
    assert 'rgb(60,200,80)' in page  # the edge's box colour in the key


def test_the_default_page_goes_in_the_bag_folder(run_bag: Path) -> None:
    page = write_report(run_bag, frames=0)
    assert page == run_bag / 'report.html' and len(_images(page.read_text())) == PLOTS


def test_a_bag_that_is_not_a_runs_output_is_a_clear_error(tmp_path: Path) -> None:
    write_sample_bag(tmp_path / 'in', SampleSpec(frames=3, fps=10, width=64, height=48))
    with pytest.raises(BagError, match='not the output of a replay'):
        write_report(tmp_path / 'in')
    with pytest.raises(BagError, match='not a readable bag'):
        write_report(tmp_path / 'nothing')


def test_report_command_writes_the_page_of_a_bag_or_an_evaluation(
        run_bag: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(['report', str(run_bag), '--html', str(tmp_path / 'a.html')]) == 0
    assert capsys.readouterr().out.strip() == f'report: {tmp_path / "a.html"}'
    folder = tmp_path / 'eval'
    folder.mkdir()
    (folder / 'table.md').write_text('| scenario | policy |\n|---|---|\n| steady | edge-only |\n')
    (folder / 'routes_steady.png').write_bytes(TINY_PNG)
    assert main(['report', str(folder)]) == 0
    page = (folder / 'report.html').read_text()
    assert '<th>scenario</th><th>policy</th>' in page and '<td>edge-only</td>' in page
    assert len(_images(page)) == 1
    assert main(['report', str(tmp_path / 'missing')]) != 0


def _browser() -> Any:
    """Return a headless Chromium driven by selenium, or skip saying what is missing."""
    webdriver = pytest.importorskip('selenium.webdriver', reason='selenium is not installed')
    from selenium.webdriver.chrome.service import Service

    binary = shutil.which('chromium') or shutil.which('chromium-browser')
    driver = shutil.which('chromedriver')
    if not binary or not driver:
        pytest.skip('no headless browser: apt-get install chromium chromium-driver')
    options = webdriver.ChromeOptions()
    for arg in ('--headless=new', '--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage'):
        options.add_argument(arg)
    options.binary_location = binary
    options.set_capability('goog:loggingPrefs', {'browser': 'ALL'})
    return webdriver.Chrome(service=Service(driver), options=options)


@pytest.mark.skipif(os.environ.get('ADAPTIVE_OFFLOAD_NO_BROWSER') == '1',
                    reason='ADAPTIVE_OFFLOAD_NO_BROWSER=1')
def test_a_headless_browser_draws_every_plot_without_errors(run_bag: Path,
                                                            tmp_path: Path) -> None:
    page = write_report(run_bag, tmp_path / 'page.html', frames=3)
    evaluation = tmp_path / 'eval'
    evaluation.mkdir()
    (evaluation / 'energy_steady.png').write_bytes(TINY_PNG)
    browser = _browser()
    try:
        for path, count in ((page, PLOTS + 3), (write_evaluation_report(evaluation), 1)):
            browser.get(path.as_uri())
            drawn = browser.execute_script(
                'return [...document.images].map(i => i.complete && i.naturalWidth > 0)')
            assert drawn == [True] * count, path
            assert browser.get_log('browser') == [], path  # no console error or warning
    finally:
        browser.quit()


def test_replay_command_prints_the_report(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                          monkeypatch: pytest.MonkeyPatch,
                                          fake_backend_factory: Callable[..., Any]) -> None:
    from offload_runtime import replay as replay_module

    write_sample_bag(tmp_path / 'in', SampleSpec(frames=5, fps=10, width=64, height=48))
    original = replay_module.Replay.__init__

    def with_fake(self: Any, options: Any, **kw: Any) -> None:
        original(self, options, backend_factory=fake_backend_factory)

    monkeypatch.setattr(replay_module.Replay, '__init__', with_fake)
    assert main(['replay', str(tmp_path / 'in'), '--out', str(tmp_path / 'out'),
                 '--policy', 'edge-only']) == 0
    assert f'report: {tmp_path / "out" / "report.html"}' in capsys.readouterr().out
    assert (tmp_path / 'out' / 'report.html').exists()
