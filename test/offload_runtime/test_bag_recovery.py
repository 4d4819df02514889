"""Recovering the bag a killed writer left: every complete chunk, nothing after the cut."""

from __future__ import annotations

from pathlib import Path

from adaptive_offload.errors import BagError
from adaptive_offload.typestore import make_typestore, message_types
from helpers import ManualClock
from offload_runtime.bag_recovery import count_messages, read_mcap, recover_bag, Scan
from offload_runtime.bagio import OutputBag, qos
from offload_runtime.cli import main
from offload_runtime.sample_bag import SampleSpec, write_sample_bag
import pytest
from rosbags.rosbag2 import Reader


def _chunked_bag(path: Path, chunks: int = 3, per_chunk: int = 4) -> bytes:
    """Write ``chunks`` flushed chunks of Strings, finalise; return the .mcap bytes."""
    clock = ManualClock()
    store = make_typestore('jazzy')
    bag = OutputBag(path, store, clock)
    bag.add_topic('/chatter', 'std_msgs/msg/String', qos('result'))
    for c in range(chunks):
        for i in range(per_chunk):
            bag.write('/chatter', message_types(store).String(data=f'{c}.{i}'), c * 100 + i)
        clock.advance(1000)
        assert bag.flush_due()
    bag.close()
    return (path / f'{path.name}.mcap').read_bytes()


def _killed(tmp_path: Path, data: bytes, name: str = 'killed') -> Path:
    """Make a bag folder as a SIGKILL leaves it: the .mcap as far as it got, no metadata."""
    folder = tmp_path / name
    folder.mkdir()
    (folder / f'{name}.mcap').write_bytes(data)
    return folder


def test_every_cut_keeps_exactly_the_complete_chunks_before_it(tmp_path: Path) -> None:
    data = _chunked_bag(tmp_path / 'whole')
    cut_file = tmp_path / 'cut.mcap'
    counts = []
    for size in range(len(data) + 1):
        cut_file.write_bytes(data[:size])
        counts.append(count_messages(cut_file).get('/chatter', 0))
    assert counts == sorted(counts)  # a longer file never holds fewer
    assert set(counts) == {0, 4, 8, 12} and counts[-1] == 12
    # the cut keeping 8 messages right after a chunk's index, and one byte short of it
    first_8 = counts.index(8)
    assert counts[first_8 - 1] == 4
    done = recover_bag(_killed(tmp_path, data[:first_8 - 1]))
    assert done.messages == 4 and done.end.startswith('killed.mcap: cut at byte')
    with Reader(done.out) as reader:
        store = make_typestore('jazzy')
        texts = [store.deserialize_cdr(raw, c.msgtype).data for c, _, raw in reader.messages()]
    assert texts == ['0.0', '0.1', '0.2', '0.3']


def test_a_recovered_bag_is_the_original_to_the_last_complete_chunk(tmp_path: Path) -> None:
    write_sample_bag(tmp_path / 'orig', SampleSpec(frames=6, width=32, height=24,
                                                   battery_hz=20))
    mcap = (tmp_path / 'orig' / 'orig.mcap').read_bytes()
    scan = Scan()
    list(read_mcap(tmp_path / 'orig' / 'orig.mcap', scan))
    assert scan.end == 'end of data'
    # a finalised file cut in its summary section: every message is before the cut
    done = recover_bag(_killed(tmp_path, mcap[:-40]), tmp_path / 'rebuilt')
    assert done.out == tmp_path / 'rebuilt' and done.end == 'killed.mcap: end of data'
    with Reader(tmp_path / 'orig') as orig, Reader(tmp_path / 'rebuilt') as rebuilt:
        def topics(reader: Reader) -> list[tuple]:
            return sorted((c.topic, c.msgtype, c.digest, c.msgdef.data, c.msgcount,
                           tuple(c.ext.offered_qos_profiles)) for c in reader.connections)
        assert topics(rebuilt) == topics(orig)
        assert done.messages == orig.message_count == rebuilt.message_count
        assert [(c.topic, t, bytes(d)) for c, t, d in rebuilt.messages()] == \
            [(c.topic, t, bytes(d)) for c, t, d in orig.messages()]


def test_a_finalised_bag_folder_or_file_recovers_whole_beside_it(tmp_path: Path) -> None:
    _chunked_bag(tmp_path / 'bag')
    assert recover_bag(tmp_path / 'bag').out == tmp_path / 'bag-recovered'
    done = recover_bag(tmp_path / 'bag' / 'bag.mcap', tmp_path / 'again')
    assert done.messages == 12 and done.counts == {'/chatter': 12}


def test_cli_counts_what_it_recovered_on_one_line(tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    data = _chunked_bag(tmp_path / 'whole')
    killed = _killed(tmp_path, data[:len(data) // 2])
    assert main(['recover-bag', str(killed), '--out', str(tmp_path / 'r')]) == 0
    out = capsys.readouterr().out.strip()
    assert out.startswith('recovered ') and ' to ' in out and len(out.splitlines()) == 1
    with Reader(tmp_path / 'r') as reader:
        assert reader.message_count == int(out.split()[1]) > 0


def test_cli_nothing_recoverable_exits_1_and_writes_nothing(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = _chunked_bag(tmp_path / 'whole')
    cases = {'empty': b'', 'magic': data[:5], 'header': data[:40]}
    for name, content in cases.items():
        killed = _killed(tmp_path, content, name)
        assert main(['recover-bag', str(killed)]) == 1
        err = capsys.readouterr().err.strip()
        assert 'nothing to recover' in err and len(err.splitlines()) == 1
        assert not (tmp_path / f'{name}-recovered').exists()


def test_cli_unreadable_input_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _killed(tmp_path, b'PK\x03\x04 a zip, not a bag', 'zip')
    (tmp_path / 'nomcap').mkdir()
    _chunked_bag(tmp_path / 'ok')
    (tmp_path / 'taken').mkdir()
    cases = [(['zip'], 'not an MCAP file'), (['missing'], 'no such bag'),
             (['nomcap'], 'no .mcap file'), (['ok', '--out', 'taken'], 'already exists')]
    for argv, message in cases:
        argv = [str(tmp_path / argv[0]), *[str(tmp_path / a) if a != '--out' else a
                                           for a in argv[1:]]]
        assert main(['recover-bag', *argv]) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1
    with pytest.raises(BagError, match='not an MCAP file'):
        count_messages(tmp_path / 'zip' / 'zip.mcap')
