"""Large messages written straight to the MCAP file read back like any other, with any reader."""

from __future__ import annotations

from pathlib import Path

from adaptive_offload.typestore import make_typestore, message_types
from helpers import ManualClock
from mcap.reader import make_reader
from offload_runtime import mcap_direct
from offload_runtime.bag_recovery import count_messages, recover_bag
from offload_runtime.bagio import OutputBag, qos
from rosbags.rosbag2 import Reader

_BIG = mcap_direct.LARGE + 1000


def _payload(i: int) -> bytes:
    return bytes([i % 251]) * _BIG


def _mixed_bag(path: Path, frames: int = 6, clock: ManualClock | None = None) -> OutputBag:
    """Per frame: a String, a large message, another String; a flush after frame 2."""
    store = make_typestore('jazzy')
    bag = OutputBag(path, store, clock or ManualClock())
    bag.add_topic('/text', 'std_msgs/msg/String', qos('result'))
    bag.add_topic('/big', 'std_msgs/msg/String', qos('sensor'))
    string = message_types(store).String
    for i in range(frames):
        bag.write('/text', string(data=f'before {i}'), i * 100)
        bag.write_raw('/big', _payload(i), i * 100 + 10)
        bag.write('/text', string(data=f'after {i}'), i * 100 + 20)
        if i == 2:
            bag.flush()
    return bag


def test_installs_on_the_writer_the_bags_use(tmp_path: Path) -> None:
    bag = _mixed_bag(tmp_path / 'out', frames=0)
    # without it every large message is copied five times (see the module): a silent fallback
    # would only show as lost throughput
    assert bag._writer.storage.write.__qualname__.startswith('install')
    bag.close()


def test_rosbags_reads_every_message_in_time_order(tmp_path: Path) -> None:
    _mixed_bag(tmp_path / 'out').close()
    store = make_typestore('jazzy')
    with Reader(tmp_path / 'out') as reader:
        counts = {c.topic: c.msgcount for c in reader.connections}
        seen = [(c.topic, t, bytes(raw)) for c, t, raw in reader.messages()]
        assert (reader.start_time, reader.end_time) == (0, 521)
    assert counts == {'/text': 12, '/big': 6}
    assert [t for _, t, _ in seen] == sorted(t for _, t, _ in seen)
    assert [raw for topic, _, raw in seen if topic == '/big'] == [_payload(i) for i in range(6)]
    texts = [store.deserialize_cdr(raw, 'std_msgs/msg/String').data
             for topic, _, raw in seen if topic == '/text']
    assert texts == [f'{w} {i}' for i in range(6) for w in ('before', 'after')]


def test_the_reference_mcap_reader_agrees_through_the_index_and_the_stream(
        tmp_path: Path) -> None:
    _mixed_bag(tmp_path / 'out').close()
    path = tmp_path / 'out' / 'out.mcap'
    with path.open('rb') as f:  # the summary's chunk and message indexes
        indexed = [(ch.topic, m.log_time, m.data) for _, ch, m in
                   make_reader(f).iter_messages(log_time_order=True)]
    with path.open('rb') as f:  # every record in file order, as a reader without a summary
        stream = make_reader(f, validate_crcs=True)
        streamed = sorted((ch.topic, m.log_time, m.data) for _, ch, m in
                          stream.iter_messages(log_time_order=False))
        summary = stream.get_summary()
    assert len(indexed) == 18 and sorted(indexed) == streamed
    assert summary is not None and summary.statistics is not None
    assert summary.statistics.message_count == 18
    assert summary.statistics.message_start_time == 0
    assert summary.statistics.message_end_time == 520
    big = [d for topic, _, d in indexed if topic == '/big']
    assert big == [_payload(i) for i in range(6)]


def test_a_killed_writer_keeps_every_chunk_it_wrote(tmp_path: Path) -> None:
    bag = _mixed_bag(tmp_path / 'out', frames=4)
    bag._writer.storage.bio.flush()  # what the OS has when the process is killed
    data = (tmp_path / 'out' / 'out.mcap').read_bytes()
    bag.close()
    killed = tmp_path / 'killed'
    killed.mkdir()
    (killed / 'killed.mcap').write_bytes(data)
    # each large message closed a chunk holding everything before it; the String after the
    # last one waits in memory
    assert count_messages(killed / 'killed.mcap') == {'/text': 7, '/big': 4}
    done = recover_bag(killed)
    assert done.messages == 11
    with Reader(done.out) as reader:
        assert [bytes(raw) for c, _, raw in reader.messages() if c.topic == '/big'] == \
            [_payload(i) for i in range(4)]
