"""Fuzzing the bag readers with damaged bags: a readable result or a BagError, nothing else.

The bags are real ones (a sample bag, MCAP as OutputBag writes it), cut or with bytes
flipped or overwritten. Budgets: a share of the profile's (test/fuzzing.py), as each example
writes and reads a bag on disk.
"""

from __future__ import annotations

from pathlib import Path
import shutil
import struct
import tempfile

from adaptive_offload.errors import BagError
from adaptive_offload.typestore import make_typestore
from fuzzing import budget
from hypothesis import given, strategies as st
from offload_runtime.bag_recovery import count_messages, MAGIC, recover_bag
from offload_runtime.bagio import InputBag
from offload_runtime.ground_truth import load_truth
from offload_runtime.sample_bag import SampleSpec, write_sample_bag
import pytest
from rosbags.rosbag2 import Reader

STORE = make_typestore('jazzy')


@pytest.fixture(scope='module')
def sample(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Write a 3-frame bag with ground truth and a battery topic (a few kB)."""
    path = tmp_path_factory.mktemp('fuzz') / 'sample'
    write_sample_bag(path, SampleSpec(frames=3, width=16, height=16, battery_hz=20))
    return path


@st.composite
def damage(draw: st.DrawFn, size: int) -> list[tuple[str, int, bytes]]:
    """Draw edits of a file of ``size`` bytes: cut at, flip at, or overwrite at an offset."""
    offset = st.integers(0, size - 1)
    edit = st.one_of(
        st.tuples(st.just('cut'), offset, st.just(b'')),
        st.tuples(st.just('flip'), offset, st.binary(min_size=1, max_size=1)),
        st.tuples(st.just('write'), offset, st.binary(min_size=1, max_size=12)),
        # a record length (or a string length in one) far beyond the file
        st.tuples(st.just('write'), offset, st.sampled_from(
            (b'\xff' * 8, struct.pack('<Q', 2**62), struct.pack('<I', 2**31), b'\x00' * 8))))
    return draw(st.lists(edit, min_size=1, max_size=4))


def _damaged(data: bytes, edits: list[tuple[str, int, bytes]]) -> bytes:
    out = bytearray(data)
    for kind, pos, value in edits:
        pos = min(pos, max(0, len(out) - 1))
        if kind == 'cut':
            del out[pos:]
        elif kind == 'flip':
            out[pos:pos + 1] = bytes([out[pos] ^ (value[0] or 1)]) if out else b''
        else:
            out[pos:pos + len(value)] = value
    return bytes(out)


def _mcap(sample: Path) -> bytes:
    return (sample / 'sample.mcap').read_bytes()


def _check_recovery(folder: Path) -> None:
    try:
        counts = count_messages(folder / 'sample.mcap')
        done = recover_bag(folder, folder.with_name('rebuilt'))
    except BagError:
        return
    assert sum(counts.values()) >= done.messages
    if not done.messages:
        assert not done.out.exists()
        return
    with Reader(done.out) as reader:  # the recovered bag is whole
        assert reader.message_count == done.messages
        assert len(list(reader.messages())) == done.messages


@budget(0.5)
@given(st.data())
def test_recovering_a_damaged_mcap_gives_a_readable_bag_or_a_bag_error(
        sample: Path, data: st.DataObject) -> None:
    mcap = _mcap(sample)
    edits = data.draw(damage(len(mcap)))
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / 'killed'
        folder.mkdir()
        (folder / 'sample.mcap').write_bytes(_damaged(mcap, edits))
        _check_recovery(folder)


def _read_all(folder: Path) -> int:
    with InputBag(folder) as bag:
        return sum(1 for _ in bag.messages())


@budget(0.5)
@given(st.data())
def test_reading_a_damaged_bag_gives_its_messages_or_a_bag_error(
        sample: Path, data: st.DataObject) -> None:
    mcap = _mcap(sample)
    edits = data.draw(damage(len(mcap)))
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / 'sample'
        shutil.copytree(sample, folder)
        (folder / 'sample.mcap').write_bytes(_damaged(mcap, edits))
        try:
            messages = _read_all(folder)
        except BagError:
            pass
        else:
            assert messages <= 3 + 3 + 20  # frames, truths, battery samples at most
        try:
            truth = load_truth(folder, STORE)
        except BagError:
            pass
        else:
            assert len(truth) <= 3


@pytest.mark.parametrize('tail', [
    struct.pack('<BQ', 0x01, 2**62),        # a record longer than any file
    struct.pack('<BQ', 0x01, 2**64 - 1),
    struct.pack('<BQ', 0x03, 10) + b'\x01\x00\x02\x00\x00\x00\xff\xfe\x00\x00',  # not UTF-8
    # a chunk whose records' length does not fit an index (2**63 + 4)
    struct.pack('<BQ', 0x06, 40) + struct.pack('<QQQI', 0, 0, 0, 0) + struct.pack('<I', 0)
    + struct.pack('<Q', 2**63 + 4),
    struct.pack('<BQ', 0x05, 4) + b'\x01\x00\x00\x00',  # a message shorter than its header
    struct.pack('<BQ', 0x05, 22) + b'\x07\x00' + b'\x00' * 20,  # of a channel never declared
])
def test_a_bad_record_ends_the_scan_it_is_no_crash(tmp_path: Path, tail: bytes) -> None:
    """Found by fuzzing: OverflowError, MemoryError, UnicodeDecodeError, struct.error, KeyError."""
    path = tmp_path / 'cut' / 'cut.mcap'
    path.parent.mkdir()
    path.write_bytes(MAGIC + tail)
    assert count_messages(path) == {}
    assert recover_bag(path.parent).messages == 0


def test_a_chunk_that_does_not_read_back_is_a_bag_error(sample: Path, tmp_path: Path) -> None:
    """Found by fuzzing: rosbags' ReaderError (and others) escaped InputBag and load_truth."""
    data = _mcap(sample)
    pos = len(MAGIC)
    while struct.unpack_from('<B', data, pos)[0] != 0x06:  # the first chunk
        pos += 9 + struct.unpack_from('<Q', data, pos + 1)[0]
    crc = pos + 9 + 24  # start, end, size, then its records' CRC
    folder = tmp_path / 'sample'
    shutil.copytree(sample, folder)
    (folder / 'sample.mcap').write_bytes(data[:crc] + bytes(b ^ 0xFF for b in data[crc:crc + 4])
                                         + data[crc + 4:])
    with pytest.raises(BagError, match='damaged'):
        _read_all(folder)
    with pytest.raises(BagError, match='ground truth'):
        load_truth(folder, STORE)
