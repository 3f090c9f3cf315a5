"""Client sessions in the shard state machine: a write sent again applies at most once."""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path

import pytest

from minikv_core.cluster import limits
from minikv_core.cluster.commands import (
    BatchCommand,
    Command,
    CommandDecodeError,
    CommandEncodeError,
    DeleteCommand,
    PutCommand,
    decode_command,
)
from minikv_core.cluster.sessions import SESSION_KEY_PREFIX, SessionCorruptionError, WriteSession
from minikv_core.cluster.state_machine import (
    ApplyResult,
    ResultKind,
    ShardStateMachine,
    VersionedValue,
)
from minikv_core.raft.types import Entry, EntryType
from minikv_core.storage.engine import Engine, EngineOptions, Put

TERM = 2
ALICE = b"A" * 16
BOB = b"B" * 16
OPTIONS = EngineOptions(background_compaction=False)


def entry(index: int, command: Command) -> Entry:
    return Entry(TERM, index, EntryType.NORMAL, command.encode())


def put(
    key: bytes, value: bytes, client: bytes, seq: int, acked: int = 1, *, retry: bool = False
) -> PutCommand:
    return PutCommand(key, value, request_id=seq, session=WriteSession(client, seq, acked, retry))


@pytest.fixture
def machine(tmp_path: Path) -> Iterator[ShardStateMachine]:
    engine = Engine.open(tmp_path / "shard", OPTIONS)
    try:
        yield ShardStateMachine(engine)
    finally:
        engine.close()


def test_a_repeat_after_later_writes_answers_the_first_result_and_writes_nothing(
    machine: ShardStateMachine,
) -> None:
    """The anomaly sessions exist for: a put that applied, then another client's write, then
    the first put sent again must not bring the overwritten value back."""
    first = machine.apply([entry(1, put(b"k", b"old", ALICE, 1))])
    machine.apply([entry(2, PutCommand(b"k", b"new", 9))])
    again = machine.apply([entry(3, put(b"k", b"old", ALICE, 1, retry=True))])
    assert first == [ApplyResult(ResultKind.PUT, 1, TERM, request_id=1, version=1)]
    assert again == [ApplyResult(ResultKind.PUT, 3, TERM, request_id=1, version=1)]
    assert machine.get(b"k") == VersionedValue(b"new", 2)
    assert machine.applied_index == 3
    assert machine.sessions.status() == {
        "clients": 1,
        "forgotten": 0,
        "repeats_answered": 1,
        "repeats_refused": 0,
    }


def test_a_repeated_delete_answers_whether_the_key_existed_the_first_time(
    machine: ShardStateMachine,
) -> None:
    delete = DeleteCommand(b"k", 5, WriteSession(ALICE, 1, 1))
    machine.apply([entry(1, PutCommand(b"k", b"v", 4)), entry(2, delete)])
    repeat = DeleteCommand(b"k", 6, WriteSession(ALICE, 1, 1, retry=True))
    [result] = machine.apply([entry(3, repeat)])
    assert (result.kind, result.existed, result.request_id) == (ResultKind.DELETE, True, 6)


def test_a_repeat_the_shard_cannot_match_is_refused_not_applied(
    machine: ShardStateMachine,
) -> None:
    # A shard that never forgot a session has never applied a write of a client it does not
    # know: a retry of its first write applies.
    [unknown] = machine.apply([entry(1, put(b"k", b"v", ALICE, 3, acked=3, retry=True))])
    assert unknown.kind is ResultKind.PUT
    # Below the session's acknowledged mark: the shard forgot whether it applied.
    machine.apply([entry(2, put(b"a", b"1", BOB, 1)), entry(3, put(b"b", b"2", BOB, 5, 5))])
    [old] = machine.apply([entry(4, put(b"c", b"3", BOB, 2, acked=2, retry=True))])
    assert old.kind is ResultKind.EXPIRED and "older than" in (old.error or "")
    assert machine.sessions.status()["repeats_refused"] == 1
    assert machine.get(b"c") is None
    assert machine.sessions.results_of(BOB) == {5: 3}  # write 5 put version 3


def test_first_sends_of_new_numbers_apply_and_acked_lets_the_shard_forget(
    machine: ShardStateMachine,
) -> None:
    machine.apply([entry(i, put(b"k%d" % i, b"v", ALICE, i)) for i in range(1, 5)])
    assert sorted(machine.sessions.results_of(ALICE)) == [1, 2, 3, 4]
    machine.apply([entry(5, put(b"k5", b"v", ALICE, 5, acked=4))])
    assert sorted(machine.sessions.results_of(ALICE)) == [4, 5]


def test_a_batch_mixes_session_and_plain_writes(machine: ShardStateMachine) -> None:
    batch = BatchCommand(
        (put(b"a", b"1", ALICE, 1), PutCommand(b"b", b"2", 7), put(b"c", b"3", BOB, 1))
    )
    assert decode_command(batch.encode()) == batch
    results = machine.apply([entry(1, batch)])
    assert [r.kind for r in results] == [ResultKind.PUT] * 3
    repeat = BatchCommand((put(b"c", b"3", BOB, 1, retry=True), put(b"a", b"x", ALICE, 2)))
    results = machine.apply([entry(2, repeat)])
    assert [(r.kind, r.version) for r in results] == [(ResultKind.PUT, 1), (ResultKind.PUT, 2)]
    assert machine.get(b"c") == VersionedValue(b"3", 1)


def test_sessions_survive_a_reopen_and_travel_in_snapshots(tmp_path: Path) -> None:
    with Engine.open(tmp_path / "one", OPTIONS) as engine:
        machine = ShardStateMachine(engine)
        machine.apply([entry(1, put(b"k", b"old", ALICE, 1)), entry(2, PutCommand(b"k", b"x"))])
        engine.flush()
        machine.snapshot(tmp_path / "snapshot")
    with Engine.open(tmp_path / "one", OPTIONS) as engine:
        machine = ShardStateMachine(engine)
        [result] = machine.apply([entry(3, put(b"k", b"old", ALICE, 1, retry=True))])
        assert result.version == 1 and machine.get(b"k") == VersionedValue(b"x", 2)
        assert machine.scan() == machine.scan(prefix=b"k"), "session records stay hidden"
    with Engine.open(tmp_path / "two", OPTIONS) as engine:
        follower = ShardStateMachine(engine)
        follower.apply([entry(1, put(b"z", b"z", BOB, 1))])
        follower.install_snapshot(tmp_path / "snapshot")
        assert follower.sessions.results_of(BOB) == {}
        [result] = follower.apply([entry(3, put(b"k", b"old", ALICE, 1, retry=True))])
        assert result.version == 1 and follower.get(b"k") == VersionedValue(b"x", 2)


def test_the_oldest_session_is_forgotten_alike_on_every_replica(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Eviction picks by (last index, client id), so a replica that restarted in between
    (its table rebuilt from the engine) evicts exactly what one that did not evicts."""
    monkeypatch.setattr(limits, "SESSIONS_PER_SHARD_MAX", 3)
    clients = [bytes([n]) * 16 for n in range(6)]
    log = [
        entry(1, BatchCommand(tuple(put(b"k%d" % n, b"v", clients[n], 1) for n in (2, 1)))),
        entry(2, put(b"k0", b"v", clients[0], 1)),
        entry(3, put(b"k3", b"v", clients[3], 1)),  # 4 sessions: forget 1 (index 1, id 1 < 2)
        entry(4, put(b"k4", b"v", clients[4], 1)),  # forget 2
        entry(5, put(b"k1", b"again", clients[1], 1, retry=True)),
        entry(6, put(b"k0", b"again", clients[0], 1, retry=True)),
    ]
    with (
        Engine.open(tmp_path / "steady", OPTIONS) as steady_engine,
        Engine.open(tmp_path / "restarted", OPTIONS) as restarted_engine,
    ):
        steady = ShardStateMachine(steady_engine)
        restarted = ShardStateMachine(restarted_engine)
        steady_results = steady.apply(log)
        restarted_results = restarted.apply(log[:4])
        restarted = ShardStateMachine(restarted_engine)  # rebuilt from the engine
        restarted_results += restarted.apply(log[4:])
        assert steady_results == restarted_results
        assert steady.checksum() == restarted.checksum()
    assert len(steady.sessions) == 3 and steady.sessions.evicted == 2
    # Three session records and the forgotten count: what a key count must leave out.
    assert steady.system_records() == 4
    assert steady_results[-2].kind is ResultKind.EXPIRED  # client 1 was forgotten
    assert "forgotten sessions" in (steady_results[-2].error or "")
    assert steady_results[-1].kind is ResultKind.PUT and steady_results[-1].version == 2


def test_a_session_remembers_at_most_session_results_max_writes(
    machine: ShardStateMachine, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(limits, "SESSION_RESULTS_MAX", 2)
    machine.apply([entry(i, put(b"k%d" % i, b"v", ALICE, i)) for i in range(1, 4)])
    assert sorted(machine.sessions.results_of(ALICE)) == [2, 3]
    [forgotten] = machine.apply([entry(4, put(b"k1", b"v", ALICE, 1, retry=True))])
    assert forgotten.kind is ResultKind.EXPIRED


@pytest.mark.parametrize("seed", range(8))
def test_retries_in_any_order_never_apply_a_write_twice(
    machine: ShardStateMachine, seed: int
) -> None:
    """A seeded model run: clients send writes and repeats in random order, interleaved with
    plain writes; every key must end with the value of the last write that *applied*, and
    each (client, seq) must have applied once."""
    rng = random.Random(seed)
    clients = [bytes([n + 1]) * 16 for n in range(3)]
    sent: list[tuple[bytes, int, bytes, bytes]] = []  # client, seq, key, value
    next_seq = dict.fromkeys(clients, 1)
    model: dict[bytes, bytes] = {}
    applied: set[tuple[bytes, int]] = set()
    for index in range(1, 400):
        if sent and rng.random() < 0.4:
            client, seq, key, value = rng.choice(sent)
            command: Command = put(key, value, client, seq, acked=1, retry=True)
        elif rng.random() < 0.2:
            key, value = b"k%d" % rng.randrange(5), b"plain%d" % index
            command = PutCommand(key, value)
        else:
            client = rng.choice(clients)
            seq = next_seq[client]
            next_seq[client] += 1
            key, value = b"k%d" % rng.randrange(5), b"%d/%d" % (clients.index(client), seq)
            sent.append((client, seq, key, value))
            command = put(key, value, client, seq, acked=1)
        [result] = machine.apply([entry(index, command)])
        assert result.kind is ResultKind.PUT, f"seed {seed}: {result}"
        session = command.session if isinstance(command, PutCommand) else None
        if session is None or (session.client_id, session.seq) not in applied:
            if session is not None:
                applied.add((session.client_id, session.seq))
            assert isinstance(command, PutCommand)
            model[command.key] = command.value
            assert result.version == index, f"seed {seed}"
        else:
            assert result.version < index, f"seed {seed}: a repeat applied again"
    assert {k: v.value for k, v in ((kv.key, kv) for kv in machine.scan())} == model, f"seed {seed}"


def test_session_commands_round_trip_and_bad_sessions_are_refused() -> None:
    for command in (
        put(b"k", b"v", ALICE, 2**64 - 1, acked=7, retry=True),
        DeleteCommand(b"k", 3, WriteSession(BOB, 9, 0)),
    ):
        assert decode_command(command.encode()) == command
    for session, message in (
        (WriteSession(b"short", 1, 1), "16 bytes"),
        (WriteSession(ALICE, 0, 0), "seq must be"),
        (WriteSession(ALICE, 3, 4), "acked must be"),
    ):
        with pytest.raises(CommandEncodeError, match=message):
            PutCommand(b"k", b"v", 1, session).encode()
    data = bytearray(put(b"k", b"v", ALICE, 5, acked=5).encode())
    retry_flag_at = 1 + 1 + 8 + 16 + 8 + 8
    data[retry_flag_at] = 2
    with pytest.raises(CommandDecodeError, match="retry flag is 2"):
        decode_command(bytes(data))
    data[retry_flag_at] = 0
    acked_at = 1 + 1 + 8 + 16 + 8
    data[acked_at : acked_at + 8] = (6).to_bytes(8, "little")  # acked 6 > seq 5
    with pytest.raises(CommandDecodeError, match="acked must be"):
        decode_command(bytes(data))


def test_a_damaged_session_record_is_reported_at_open(tmp_path: Path) -> None:
    with Engine.open(tmp_path / "shard", OPTIONS) as engine:
        engine.apply([Put(SESSION_KEY_PREFIX + ALICE, b"\x01\x02")], 1)
        with pytest.raises(SessionCorruptionError, match="too short"):
            ShardStateMachine(engine)
