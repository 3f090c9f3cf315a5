"""ShardStateMachine: committed entries to engine writes, versions, results, and recovery."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from minikv_core.cluster.commands import BatchCommand, Command, DeleteCommand, PutCommand
from minikv_core.cluster.state_machine import (
    ApplyGapError,
    ApplyResult,
    KeyValue,
    ResultKind,
    ShardStateMachine,
    StoredValueCorruptionError,
    VersionedValue,
    encode_stored_value,
)
from minikv_core.raft.types import ConfChange, ConfChangeType, Entry, EntryType
from minikv_core.storage.engine import Engine, EngineOptions

TERM = 3


def command_entry(index: int, command: Command, term: int = TERM) -> Entry:
    return Entry(term, index, EntryType.NORMAL, command.encode())


def noop(index: int) -> Entry:
    return Entry(TERM, index, EntryType.NORMAL, b"")


@pytest.fixture
def machine(tmp_path: Path) -> Iterator[ShardStateMachine]:
    engine = Engine.open(tmp_path / "shard", EngineOptions(background_compaction=False))
    try:
        yield ShardStateMachine(engine)
    finally:
        engine.close()


def test_put_stores_the_value_with_the_entry_index_as_its_version(
    machine: ShardStateMachine,
) -> None:
    results = machine.apply([noop(1), command_entry(2, PutCommand(b"k", b"v1", request_id=41))])
    assert results == [
        ApplyResult(ResultKind.NOOP, 1, TERM),
        ApplyResult(ResultKind.PUT, 2, TERM, request_id=41, version=2),
    ]
    assert machine.get(b"k") == VersionedValue(b"v1", 2)
    assert machine.applied_index == 2
    # The documented encoding: version u64 little-endian, then the client's bytes.
    assert machine.engine.get(b"k") == (2).to_bytes(8, "little") + b"v1"


def test_versions_never_go_back_across_delete_and_reput(machine: ShardStateMachine) -> None:
    versions: list[int] = []
    index = 0
    for round_number in range(3):
        index += 1
        put = machine.apply([command_entry(index, PutCommand(b"k", b"%d" % round_number, 1))])
        versions.append(put[0].version)
        got = machine.get(b"k")
        assert got is not None and got.version == put[0].version
        index += 1
        deleted = machine.apply([command_entry(index, DeleteCommand(b"k", 2))])
        assert deleted[0].kind is ResultKind.DELETE and deleted[0].existed
        assert machine.get(b"k") is None
        index += 1
        again = machine.apply([command_entry(index, DeleteCommand(b"k", 3))])
        assert not again[0].existed, "deleting an absent key reports it did not exist"
    assert versions == sorted(set(versions)), f"versions must strictly increase: {versions}"


def test_noop_and_conf_change_entries_only_advance_the_applied_index(
    machine: ShardStateMachine,
) -> None:
    change = ConfChange(ConfChangeType.ADD_LEARNER, 4).encode()
    results = machine.apply([noop(1), Entry(TERM, 2, EntryType.CONF_CHANGE, change), noop(3)])
    assert [r.kind for r in results] == [ResultKind.NOOP, ResultKind.CONF_CHANGE, ResultKind.NOOP]
    assert all(r.request_id is None for r in results)
    assert machine.applied_index == 3
    assert machine.scan() == []


def test_batch_applies_atomically_with_one_result_per_write(machine: ShardStateMachine) -> None:
    machine.apply([command_entry(1, PutCommand(b"a", b"old", 1))])
    batch = BatchCommand(
        (PutCommand(b"b", b"2", 10), DeleteCommand(b"a", 11), DeleteCommand(b"zz", 12))
    )
    results = machine.apply([command_entry(2, batch)])
    assert results == [
        ApplyResult(ResultKind.PUT, 2, TERM, request_id=10, version=2),
        ApplyResult(ResultKind.DELETE, 2, TERM, request_id=11, existed=True),
        ApplyResult(ResultKind.DELETE, 2, TERM, request_id=12, existed=False),
    ]
    assert machine.scan() == [KeyValue(b"b", b"2", 2)]


def test_malformed_entry_is_a_rejected_result_not_a_crash(machine: ShardStateMachine) -> None:
    bad = Entry(TERM, 1, EntryType.NORMAL, b"\x01\x09garbage")
    results = machine.apply([bad, command_entry(2, PutCommand(b"k", b"v", 5))])
    assert results[0].kind is ResultKind.REJECTED
    assert results[0].index == 1 and results[0].request_id is None
    assert results[0].error is not None and "unknown command kind 9" in results[0].error
    assert results[1] == ApplyResult(ResultKind.PUT, 2, TERM, request_id=5, version=2)
    assert machine.applied_index == 2


def test_entries_at_or_below_the_applied_index_are_skipped(machine: ShardStateMachine) -> None:
    machine.apply(
        [
            command_entry(1, PutCommand(b"k", b"v", 1)),
            command_entry(2, DeleteCommand(b"k", 2)),
            command_entry(3, PutCommand(b"j", b"w", 3)),
        ]
    )
    results = machine.apply(
        [
            command_entry(2, DeleteCommand(b"k", 2)),
            command_entry(3, PutCommand(b"j", b"w", 3)),
            command_entry(4, PutCommand(b"k", b"again", 4)),
        ]
    )
    assert results == [ApplyResult(ResultKind.PUT, 4, TERM, request_id=4, version=4)]
    assert machine.entries_skipped == 2
    assert machine.get(b"j") == VersionedValue(b"w", 3), "the skipped put kept its version"
    assert machine.apply([command_entry(4, DeleteCommand(b"k", 9))]) == []
    assert machine.get(b"k") == VersionedValue(b"again", 4)


@pytest.mark.parametrize(
    "indexes",
    [[3], [2, 4], [1, 2, 2]],
    ids=["gap after applied", "gap inside the call", "repeat inside the call"],
)
def test_a_gap_raises_and_applies_nothing_of_the_call(
    machine: ShardStateMachine, indexes: list[int]
) -> None:
    with pytest.raises(ApplyGapError, match="entries are missing"):
        machine.apply([command_entry(i, PutCommand(b"k%d" % i, b"v", i)) for i in indexes])
    assert machine.applied_index == 0
    assert machine.scan() == []


def test_scan_decodes_values_and_versions(machine: ShardStateMachine) -> None:
    for index, key in enumerate([b"a1", b"a2", b"b1", b"a3"], start=1):
        machine.apply([command_entry(index, PutCommand(key, key.upper(), index))])
    assert machine.scan(prefix=b"a") == [
        KeyValue(b"a1", b"A1", 1),
        KeyValue(b"a2", b"A2", 2),
        KeyValue(b"a3", b"A3", 4),
    ]
    assert machine.scan(start=b"a2", end=b"b1", reverse=True, limit=1) == [
        KeyValue(b"a3", b"A3", 4)
    ]


def test_a_value_without_its_version_prefix_is_reported(machine: ShardStateMachine) -> None:
    machine.engine.put(b"raw", b"abc")  # written behind the state machine's back
    with pytest.raises(StoredValueCorruptionError, match="b'raw' is 3 bytes"):
        machine.get(b"raw")
    with pytest.raises(StoredValueCorruptionError):
        machine.scan()


def test_snapshot_install_round_trip_keeps_values_versions_and_index(tmp_path: Path) -> None:
    options = EngineOptions(background_compaction=False)
    with (
        Engine.open(tmp_path / "leader", options) as leader_engine,
        Engine.open(tmp_path / "follower", options) as follower_engine,
    ):
        leader = ShardStateMachine(leader_engine)
        follower = ShardStateMachine(follower_engine)
        follower.apply([command_entry(1, PutCommand(b"stale", b"x", 1))])
        for index in range(1, 51):
            key = b"key%03d" % (index % 20)
            command: Command = (
                DeleteCommand(key, index) if index % 7 == 0 else PutCommand(key, b"%d" % index)
            )
            leader.apply([command_entry(index, command)])
        info = leader.snapshot(tmp_path / "snapshot")
        assert info.applied_index == 50
        installed = follower.install_snapshot(tmp_path / "snapshot")
        assert installed.applied_index == 50
        assert follower.applied_index == 50
        assert follower.get(b"stale") is None
        assert follower.scan() == leader.scan()
        assert follower.checksum() == leader.checksum()
        # Both continue from the snapshot in lockstep.
        step = [command_entry(51, PutCommand(b"key001", b"after", 7))]
        assert follower.apply(step) == leader.apply(step)
        assert follower.checksum() == leader.checksum()
        assert follower.get(b"key001") == VersionedValue(b"after", 51)


def test_checksum_covers_versions(tmp_path: Path) -> None:
    options = EngineOptions(background_compaction=False)
    with (
        Engine.open(tmp_path / "one", options) as one_engine,
        Engine.open(tmp_path / "two", options) as two_engine,
    ):
        one, two = ShardStateMachine(one_engine), ShardStateMachine(two_engine)
        one.apply([noop(1), command_entry(2, PutCommand(b"k", b"v"))])
        two.apply([command_entry(1, PutCommand(b"k", b"v")), noop(2)])
        assert one.scan()[0].value == two.scan()[0].value
        assert one.checksum().digest != two.checksum().digest


def test_replay_after_losing_the_memtable_rebuilds_the_same_state(tmp_path: Path) -> None:
    """The crash contract: the engine reopens at its durable applied index, and the host
    re-delivers committed entries from the log; entries the engine holds are skipped."""
    log = [
        command_entry(1, PutCommand(b"a", b"1", 1)),
        command_entry(2, PutCommand(b"b", b"2", 2)),
        noop(3),
        command_entry(4, DeleteCommand(b"a", 4)),
        command_entry(5, BatchCommand((PutCommand(b"a", b"5"), PutCommand(b"c", b"5")))),
        command_entry(6, DeleteCommand(b"b", 6)),
    ]
    options = EngineOptions(background_compaction=False, flush_on_close=False)
    with Engine.open(tmp_path / "shard", options) as engine:
        machine = ShardStateMachine(engine)
        expected_results = machine.apply(log[:3])
        engine.flush()
        expected_results += machine.apply(log[3:])
        expected = machine.checksum()
    with Engine.open(tmp_path / "shard", options) as engine:
        machine = ShardStateMachine(engine)
        assert machine.durable_applied_index == machine.applied_index == 3
        results = machine.apply(log)  # the host replays from its log's first entry
        assert results == expected_results[3:]
        assert machine.entries_skipped == 3
        assert machine.checksum() == expected


def test_stored_value_encoding_is_version_then_value() -> None:
    assert encode_stored_value(2**64 - 1, b"v") == b"\xff" * 8 + b"v"
