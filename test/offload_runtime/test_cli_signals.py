"""Real signals to ``adaptive-offload replay`` in a child process.

SIGINT and SIGTERM finish the output bag and print the summary of the frames so far; after a
SIGKILL ``recover-bag`` gets back every frame written a second or more before the kill.
"""

from __future__ import annotations

from pathlib import Path
import re
import signal
import subprocess
import sys
import threading
import time
from typing import Callable, Iterator

from helpers import child_env
from offload_runtime.cli import main
from offload_runtime.sample_bag import SampleSpec, write_sample_bag
import pytest
from rosbags.rosbag2 import Reader

PROGRESS = re.compile(r'(\d+)/\d+ frames')
START_S = 40.0  # importing torch and building the model, on a busy two-core machine
FLUSH_S = 1.0  # the output bag's promise: at most this much is lost to a SIGKILL
MARGIN_S = 0.5  # progress is drawn every 250 ms, and read a little after


class _Replay:
    """A replay child process and the progress it draws on stderr, read as it comes.

    Args:
        argv: The replay's arguments.
    """

    def __init__(self, argv: list[str]) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, '-m', 'offload_runtime.cli', 'replay', *argv, '--progress'],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=child_env())
        self.progress: list[tuple[float, int]] = []  # (monotonic s, frames with a record)
        self._err = b''
        self._seen = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        partial = ''
        for data in iter(lambda: self.proc.stderr.read1(4096), b''):  # type: ignore[union-attr]
            now = time.monotonic()
            *done, partial = re.split(r'[\r\n]', partial + data.decode(errors='replace'))
            with self._seen:
                self._err += data
                for line in done:
                    match = PROGRESS.search(line)
                    if match:
                        self.progress.append((now, int(match[1])))
                self._seen.notify_all()
        with self._seen:
            self._seen.notify_all()

    def frames(self) -> int:
        """Frames the last progress line counted."""
        with self._seen:
            return self.progress[-1][1] if self.progress else 0

    def wait_frames(self, count: int, timeout_s: float) -> int:
        """Wait until the progress counts ``count`` frames; return the count."""
        with self._seen:
            self._seen.wait_for(lambda: self.frames() >= count or self.proc.poll() is not None,
                                timeout_s)
        shown = self.frames()
        assert shown >= count, f'{shown} frames after {timeout_s} s: {self._err.decode()}'
        return shown

    def finish(self, timeout_s: float = 20.0) -> tuple[int, str, str]:
        """Wait for the exit; return the exit code, stdout and stderr."""
        code = self.proc.wait(timeout_s)
        self._reader.join(5)
        assert self.proc.stdout is not None
        return code, self.proc.stdout.read().decode(), self._err.decode()


@pytest.fixture(scope='module')
def replay_argv(tmp_path_factory: pytest.TempPathFactory, yolo_config_dir: str) -> list[str]:
    """Return replay arguments: a 30 s bag at 10 fps, a tiny random-weight model."""
    root = tmp_path_factory.mktemp('signals')
    write_sample_bag(root / 'in', SampleSpec(frames=300, fps=10, width=64, height=48))
    params = root / 'params.yaml'
    params.write_text('/**/edge_inference:\n  ros__parameters:\n'
                      f'    ultralytics_config_dir: {yolo_config_dir}\n')
    return [str(root / 'in'), '--model', 'yolov8n.yaml', '--imgsz', '64', '--params',
            str(params), '--policy', 'edge-only']


@pytest.fixture
def start(replay_argv: list[str]) -> Iterator[Callable[[Path], _Replay]]:
    """Start replays writing to a given folder; any still running at the end is killed."""
    started: list[_Replay] = []

    def run(out: Path) -> _Replay:
        started.append(_Replay([*replay_argv, '--out', str(out)]))
        return started[-1]
    yield run
    for replay in started:
        if replay.proc.poll() is None:
            replay.proc.kill()
            replay.proc.wait(10)


def _frames_in(bag: Path) -> int:
    with Reader(bag) as reader:
        return sum(c.msgcount for c in reader.connections if c.topic == '/offload/frames')


@pytest.mark.parametrize('signum, code', [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_finishes_the_bag_and_prints_the_summary_so_far(
        tmp_path: Path, start: Callable[[Path], _Replay], signum: int, code: int) -> None:
    replay = start(tmp_path / 'out')
    shown = replay.wait_frames(5, START_S)
    replay.proc.send_signal(signum)
    exit_code, out, err = replay.finish()
    assert exit_code == code, err
    assert 'Traceback' not in err
    assert f'stopped by {signal.Signals(signum).name} after' in err
    frames = int(re.search(r'^frames in\s+(\d+)$', out, re.M)[1])  # type: ignore[index]
    assert shown <= frames < 300 and 'output bag: ' in out
    assert (tmp_path / 'out' / 'metadata.yaml').exists()
    assert _frames_in(tmp_path / 'out') == frames


def test_after_sigkill_recover_bag_gets_back_all_but_the_last_second(
        tmp_path: Path, start: Callable[[Path], _Replay],
        capsys: pytest.CaptureFixture[str]) -> None:
    replay = start(tmp_path / 'out')
    first = replay.wait_frames(5, START_S)
    replay.wait_frames(first + 20, 10.0)  # two seconds of frames, a few flushes
    replay.proc.kill()
    killed_at = time.monotonic()
    shown = replay.frames()
    assert replay.finish()[0] == -signal.SIGKILL
    assert not (tmp_path / 'out' / 'metadata.yaml').exists()
    with pytest.raises(Exception):  # what recover-bag is for: the bag itself does not open
        Reader(tmp_path / 'out').open()
    assert main(['recover-bag', str(tmp_path / 'out')]) == 0
    assert capsys.readouterr().out.startswith('recovered ')
    recovered = _frames_in(tmp_path / 'out-recovered')
    settled = max((n for t, n in replay.progress if t <= killed_at - FLUSH_S - MARGIN_S),
                  default=0)
    print(f'killed at {shown} frames shown, recovered {recovered} ({shown - recovered} lost); '
          f'{settled} were shown {FLUSH_S + MARGIN_S} s before the kill')
    assert settled >= first and recovered >= settled
