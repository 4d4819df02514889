"""The output bag flushes its chunks as it goes: a killed writer leaves them readable."""

from __future__ import annotations

from pathlib import Path

from adaptive_offload.typestore import make_typestore, message_types
from helpers import ManualClock
from offload_runtime.bag_recovery import count_messages
from offload_runtime.bagio import OutputBag, qos
from rosbags.rosbag2 import Reader

TOPIC = '/chatter'


def _bag(path: Path, clock: ManualClock, flush_after_s: float = 1.0) -> OutputBag:
    bag = OutputBag(path, make_typestore('jazzy'), clock, flush_after_s)
    bag.add_topic(TOPIC, 'std_msgs/msg/String', qos('result'))
    return bag


def _say(bag: OutputBag, text: str, stamp: int) -> None:
    bag.write(TOPIC, message_types(make_typestore('jazzy')).String(data=text), stamp)


def test_a_chunk_is_on_disk_once_its_oldest_message_is_a_second_old(tmp_path: Path) -> None:
    clock = ManualClock()
    bag = _bag(tmp_path / 'out', clock)
    mcap = tmp_path / 'out' / 'out.mcap'
    for i in range(5):
        _say(bag, f'm{i}', i)
    clock.advance(999)
    assert not bag.flush_due()
    assert count_messages(mcap) == {}  # still in the open chunk, in memory
    clock.advance(1)
    assert bag.flush_due()
    assert count_messages(mcap) == {TOPIC: 5}  # read while the bag is still open
    _say(bag, 'm5', 5)  # a new chunk, whose second starts now
    clock.advance(500)
    _say(bag, 'm6', 6)
    assert count_messages(mcap) == {TOPIC: 5}
    clock.advance(500)
    _say(bag, 'm7', 7)  # a write flushes a due chunk too, without a separate call
    assert count_messages(mcap) == {TOPIC: 8}
    assert not bag.flush_due()  # nothing unflushed
    bag.close()
    with Reader(tmp_path / 'out') as reader:
        assert reader.message_count == 8
        assert [ts for _, ts, _ in reader.messages()] == list(range(8))


def test_flush_after_zero_keeps_the_chunk_until_close(tmp_path: Path) -> None:
    clock = ManualClock()
    bag = _bag(tmp_path / 'out', clock, flush_after_s=0)
    _say(bag, 'm', 1)
    clock.advance(60_000)
    assert not bag.flush_due()
    assert count_messages(tmp_path / 'out' / 'out.mcap') == {}
    bag.close()
    assert count_messages(tmp_path / 'out' / 'out.mcap') == {TOPIC: 1}
