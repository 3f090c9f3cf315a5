"""Transactions applied by the shard state machine: one-phase atomicity, prepare locks and
their conflicts, resolve, first-decision-wins records, and intents surviving restart and
snapshot install (they are replicated state)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from minikv_core.cluster.commands import Command, DeleteCommand, PutCommand, TxnCommand
from minikv_core.cluster.state_machine import ApplyResult, ResultKind, ShardStateMachine
from minikv_core.cluster.txn import (
    SYSTEM_KEY_PREFIX,
    Compare,
    CompareTarget,
    OpKind,
    OpResult,
    TxnOp,
    TxnRequest,
)
from minikv_core.cluster.txn_codec import (
    Conflict,
    Decide,
    Decided,
    Decision,
    Finish,
    Finished,
    Forget,
    Forgotten,
    OnePhase,
    PartDone,
    Prepare,
    Prepared,
    Resolve,
    Resolved,
    ResolveMany,
    ShardPart,
    TxnBody,
)
from minikv_core.raft.types import Entry, EntryType
from minikv_core.storage.engine import Engine, EngineOptions

TERM = 2
T1 = b"\x01" * 16
T2 = b"\x02" * 16


class Shard:
    """A state machine with an index counter, so each test reads as a sequence of entries."""

    def __init__(self, machine: ShardStateMachine) -> None:
        self.machine = machine
        self.index = machine.applied_index

    def apply(self, command: Command) -> ApplyResult:
        self.index += 1
        (result,) = self.machine.apply(
            [Entry(TERM, self.index, EntryType.NORMAL, command.encode())]
        )
        return result

    def txn(self, body: TxnBody) -> object:
        result = self.apply(TxnCommand(body, request_id=5))
        assert result.kind is ResultKind.TXN, result
        return result.txn


def open_shard(path: Path) -> Engine:
    return Engine.open(path, EngineOptions(background_compaction=False))


@pytest.fixture
def shard(tmp_path: Path) -> Iterator[Shard]:
    engine = open_shard(tmp_path / "shard")
    try:
        yield Shard(ShardStateMachine(engine))
    finally:
        engine.close()


def put(key: bytes, value: bytes) -> TxnOp:
    return TxnOp(OpKind.PUT, key, value)


def get(key: bytes) -> TxnOp:
    return TxnOp(OpKind.GET, key)


def part(
    compare: tuple[Compare, ...] = (),
    success: tuple[TxnOp, ...] = (),
    failure: tuple[TxnOp, ...] = (),
) -> ShardPart:
    return ShardPart.whole(TxnRequest(compare, success, failure))


def test_one_phase_applies_the_success_branch_in_one_entry_reading_the_state_before(
    shard: Shard,
) -> None:
    shard.apply(PutCommand(b"a", b"1"))
    done = shard.txn(
        OnePhase(
            part(
                (Compare(b"a", CompareTarget.VALUE, value=b"1"),),
                (put(b"a", b"2"), get(b"a"), TxnOp(OpKind.DELETE, b"b"), put(b"c", b"3")),
            )
        )
    )
    index = shard.index
    assert done == PartDone(
        True,
        (
            (0, OpResult(OpKind.PUT, index)),
            (1, OpResult(OpKind.GET, 1, value=b"1")),  # the state before the transaction
            (2, OpResult(OpKind.DELETE, deleted=False)),
            (3, OpResult(OpKind.PUT, index)),
        ),
    )
    assert shard.machine.get(b"a") == (b"2", index)
    assert shard.machine.get(b"c") == (b"3", index)


def test_one_phase_runs_the_failure_branch_when_a_compare_fails(shard: Shard) -> None:
    done = shard.txn(
        OnePhase(
            part(
                (Compare(b"a", CompareTarget.EXISTS, exists=True),),
                (put(b"a", b"x"),),
                (put(b"b", b"y"),),
            )
        )
    )
    assert isinstance(done, PartDone) and not done.succeeded
    assert shard.machine.get(b"a") is None
    assert shard.machine.get(b"b") == (b"y", shard.index)


def test_prepare_locks_block_other_writers_until_resolved(shard: Shard) -> None:
    shard.apply(PutCommand(b"r", b"old"))
    prepared = shard.txn(Prepare(T1, 0, 1, part((), (put(b"w", b"new"), get(b"r")))))
    prepare_index = shard.index
    assert prepared == Prepared(
        True,
        ((0, OpResult(OpKind.PUT, prepare_index)), (1, OpResult(OpKind.GET, 1, value=b"old"))),
        (),
    )
    # A plain put of a write-locked key and of a read-locked key: refused, nothing applied.
    for key in (b"w", b"r"):
        refused = shard.apply(PutCommand(key, b"plain", request_id=9))
        assert refused.kind is ResultKind.CONFLICT and refused.request_id == 9
        assert isinstance(refused.txn, Conflict)
        assert [b.txn_id for b in refused.txn.blockers] == [T1]
    assert shard.machine.get(b"r") == (b"old", 1)
    # Another transaction: reading the write-locked key conflicts, reading the read-locked
    # key does not (read-read), writing it does.
    assert isinstance(shard.txn(Prepare(T2, 0, 1, part((), (get(b"w"),)))), Conflict)
    assert isinstance(shard.txn(OnePhase(part((), (get(b"r"),)))), PartDone)
    assert isinstance(shard.txn(OnePhase(part((), (put(b"r", b"x"),)))), Conflict)
    # The staged write is invisible until the commit resolves it, with the prepare's version.
    assert shard.machine.get(b"w") is None
    assert shard.txn(Resolve(T1, Decision.COMMIT_SUCCESS)) == Resolved(True)
    assert shard.machine.get(b"w") == (b"new", prepare_index)
    assert shard.machine.txn.intents == {}
    assert shard.apply(PutCommand(b"r", b"plain")).kind is ResultKind.PUT
    # Resolving again is a no-op: a commit is never applied twice.
    assert shard.txn(Resolve(T1, Decision.COMMIT_SUCCESS)) == Resolved(False)
    assert shard.machine.get(b"w") == (b"new", prepare_index)


def test_abort_drops_the_staged_writes_and_releases_the_locks(shard: Shard) -> None:
    shard.txn(Prepare(T1, 0, 1, part((), (put(b"w", b"new"),), (TxnOp(OpKind.DELETE, b"z"),))))
    assert shard.txn(Resolve(T1, Decision.ABORT)) == Resolved(True)
    assert shard.machine.get(b"w") is None
    assert shard.apply(DeleteCommand(b"z")).kind is ResultKind.DELETE


def test_the_first_decision_wins_and_forget_deletes_the_record(shard: Shard) -> None:
    assert shard.txn(Decide(T1, Decision.ABORT)) == Decided(Decision.ABORT)
    assert shard.txn(Decide(T1, Decision.COMMIT_SUCCESS)) == Decided(Decision.ABORT)
    assert shard.txn(Decide(T2, Decision.COMMIT_FAILURE)) == Decided(Decision.COMMIT_FAILURE)
    assert shard.txn(Forget((T2,))) == Forgotten(True)
    assert shard.txn(Forget((T2,))) == Forgotten(False)


def test_forget_deletes_many_records_in_one_entry(shard: Shard) -> None:
    t3 = b"\x03" * 16
    shard.txn(Decide(T1, Decision.ABORT))
    shard.txn(Decide(T2, Decision.COMMIT_SUCCESS))
    assert shard.txn(Forget((T1, T2, t3))) == Forgotten(True)
    assert shard.txn(Forget((T1, T2))) == Forgotten(False)
    # Forgotten: a new decision for the same id is recorded afresh.
    assert shard.txn(Decide(T1, Decision.COMMIT_FAILURE)) == Decided(Decision.COMMIT_FAILURE)


def test_decide_resolves_the_home_shards_own_intent_by_the_recorded_decision(
    shard: Shard,
) -> None:
    """The home shard is a participant: its DECIDE entry settles its intent too."""
    prepared = shard.txn(Prepare(T1, 0, 1, part((), (put(b"w", b"new"),))))
    assert isinstance(prepared, Prepared)
    prepare_index = shard.index
    decided = shard.txn(Decide(T1, Decision.COMMIT_SUCCESS, resolve=True))
    assert decided == Decided(Decision.COMMIT_SUCCESS)
    assert shard.machine.get(b"w") == (b"new", prepare_index)
    assert shard.machine.txn.intents == {}
    assert shard.txn(Resolve(T1, Decision.COMMIT_SUCCESS)) == Resolved(False)
    # A record already aborted (a resolver got there first): the intent follows the record.
    shard.txn(Decide(T2, Decision.ABORT))
    shard.txn(Prepare(T2, 0, 1, part((), (put(b"x", b"lost"),))))
    assert shard.txn(Decide(T2, Decision.COMMIT_SUCCESS, resolve=True)) == Decided(Decision.ABORT)
    assert shard.machine.get(b"x") is None
    assert shard.machine.txn.intents == {}
    assert shard.apply(PutCommand(b"x", b"free")).kind is ResultKind.PUT


def test_a_plain_decide_leaves_the_intent_to_its_resolve(shard: Shard) -> None:
    """DECIDE entries written before DECIDE_RESOLVE existed must replay as they applied."""
    shard.txn(Prepare(T1, 0, 1, part((), (put(b"w", b"new"),))))
    assert shard.txn(Decide(T1, Decision.COMMIT_SUCCESS)) == Decided(Decision.COMMIT_SUCCESS)
    assert shard.machine.get(b"w") is None
    assert set(shard.machine.txn.intents) == {T1}
    assert shard.txn(Resolve(T1, Decision.COMMIT_SUCCESS)) == Resolved(True)
    assert shard.machine.get(b"w") is not None


def test_resolve_many_resolves_each_transaction_as_its_own_resolve_would(shard: Shard) -> None:
    shard.txn(Prepare(T1, 0, 1, part((), (put(b"a", b"one"),))))
    first = shard.index
    shard.txn(Prepare(T2, 0, 1, part((), (put(b"b", b"two"),))))
    t3 = b"\x03" * 16
    batch = ResolveMany(
        (
            Resolve(T1, Decision.COMMIT_SUCCESS),
            Resolve(T2, Decision.ABORT),
            Resolve(t3, Decision.ABORT),  # no intent here: nothing to do
            Resolve(T1, Decision.ABORT),  # named twice: the first decision stands
        )
    )
    assert shard.txn(batch) == Resolved(True)
    assert shard.machine.get(b"a") == (b"one", first)
    assert shard.machine.get(b"b") is None
    assert shard.machine.txn.intents == {}
    assert shard.txn(batch) == Resolved(False)
    assert shard.apply(PutCommand(b"b", b"free")).kind is ResultKind.PUT


def test_finish_applies_the_home_part_and_writes_the_record_in_one_entry(shard: Shard) -> None:
    shard.apply(PutCommand(b"a", b"1"))
    body = Finish(
        T1,
        True,
        True,
        False,
        part(
            (Compare(b"a", CompareTarget.VALUE, value=b"1"),),
            (put(b"a", b"2"), get(b"a")),
        ),
    )
    done = shard.txn(body)
    index = shard.index
    expected = Finished(
        Decision.COMMIT_SUCCESS,
        True,
        ((0, OpResult(OpKind.PUT, index)), (1, OpResult(OpKind.GET, 1, value=b"1"))),
    )
    assert done == expected
    assert shard.machine.get(b"a") == (b"2", index)
    assert shard.machine.txn.records == {T1: Decision.COMMIT_SUCCESS}
    assert shard.machine.txn.intents == {}, "the home part needs no intent"
    # Proposed again (an unknown outcome): the record answers what the first one did, and
    # nothing is applied twice.
    assert shard.txn(body) == expected
    assert shard.machine.get(b"a") == (b"2", index)
    # A resolver's DECIDE finds the commit.
    assert shard.txn(Decide(T1, Decision.ABORT, resolve=True)) == Decided(Decision.COMMIT_SUCCESS)


def test_finish_runs_the_failure_branch_when_another_participants_compares_failed(
    shard: Shard,
) -> None:
    body = Finish(T1, False, True, True, part((), (put(b"a", b"s"),), (put(b"b", b"f"),)))
    done = shard.txn(body)
    assert done == Finished(
        Decision.COMMIT_FAILURE, False, ((0, OpResult(OpKind.PUT, shard.index)),)
    )
    assert shard.machine.get(b"a") is None
    assert shard.machine.get(b"b") == (b"f", shard.index)


def test_finish_after_a_resolvers_abort_applies_nothing(shard: Shard) -> None:
    assert shard.txn(Decide(T1, Decision.ABORT, resolve=True)) == Decided(Decision.ABORT)
    done = shard.txn(Finish(T1, True, True, False, part((), (put(b"a", b"x"),))))
    assert done == Finished(Decision.ABORT, False, ())
    assert shard.machine.get(b"a") is None


def test_finish_on_locked_keys_conflicts_and_leaves_an_abort_record(shard: Shard) -> None:
    shard.txn(Prepare(T2, 0, 1, part((), (put(b"a", b"other"),))))
    body = Finish(T1, True, True, False, part((), (put(b"a", b"x"),)))
    conflict = shard.txn(body)
    assert isinstance(conflict, Conflict) and [b.txn_id for b in conflict.blockers] == [T2]
    assert shard.machine.txn.records == {T1: Decision.ABORT}
    # A copy of that FINISH applied later, once the lock is gone, must not commit what the
    # coordinator released elsewhere: the record says ABORT.
    shard.txn(Resolve(T2, Decision.ABORT))
    assert shard.txn(body) == Finished(Decision.ABORT, False, ())
    assert shard.machine.get(b"a") is None


def test_a_finish_that_writes_nowhere_leaves_no_record(shard: Shard) -> None:
    shard.apply(PutCommand(b"a", b"1"))
    done = shard.txn(Finish(T1, True, False, False, part((), (get(b"a"),))))
    assert done == Finished(None, True, ((0, OpResult(OpKind.GET, 1, value=b"1")),))
    assert shard.machine.txn.records == {}
    shard.txn(Prepare(T2, 0, 1, part((), (put(b"a", b"x"),))))
    conflict = shard.txn(Finish(T1, True, False, False, part((), (get(b"a"),))))
    assert isinstance(conflict, Conflict)
    assert shard.machine.txn.records == {}


def test_transaction_state_is_invisible_to_scans(shard: Shard) -> None:
    shard.apply(PutCommand(b"\xff\xff\xff", b"after"))
    shard.apply(PutCommand(b"a", b"before"))
    shard.txn(Decide(T1, Decision.ABORT))
    shard.txn(Prepare(T2, 0, 1, part((), (put(b"b", b"1"),))))
    assert [row.key for row in shard.machine.scan()] == [b"a", b"\xff\xff\xff"]
    assert [row.key for row in shard.machine.scan(reverse=True)] == [b"\xff\xff\xff", b"a"]
    assert [row.key for row in shard.machine.scan(start=b"\xff")] == [b"\xff\xff\xff"]
    assert shard.machine.scan(prefix=SYSTEM_KEY_PREFIX) == []
    assert [row.key for row in shard.machine.scan(limit=1, start=b"\xff\xfe")] == [b"\xff\xff\xff"]


def test_intents_survive_a_restart_and_a_snapshot_install(tmp_path: Path) -> None:
    engine = open_shard(tmp_path / "a")
    shard = Shard(ShardStateMachine(engine))
    shard.txn(Prepare(T1, 3, 99, part((), (put(b"w", b"v"), get(b"r")))))
    engine.flush()
    shard.machine.snapshot(tmp_path / "snap")
    engine.close()

    reopened = open_shard(tmp_path / "a")
    try:
        machine = ShardStateMachine(reopened)
        assert set(machine.txn.intents) == {T1}
        assert machine.txn.write_locks == {b"w": T1}
        assert machine.txn.read_locks == {b"r": {T1}}
    finally:
        reopened.close()

    other = open_shard(tmp_path / "b")
    try:
        machine = ShardStateMachine(other)
        assert machine.txn.intents == {}
        machine.install_snapshot(tmp_path / "snap")
        (blocker,) = machine.txn.write_blockers(b"w")
        assert (blocker.txn_id, blocker.home_shard, blocker.expiry_ms) == (T1, 3, 99)
        follower = Shard(machine)
        assert follower.txn(Resolve(T1, Decision.COMMIT_SUCCESS)) == Resolved(True)
        assert machine.get(b"w") == (b"v", 1)
    finally:
        other.close()


def test_a_plain_write_into_the_reserved_space_is_rejected(shard: Shard) -> None:
    shard.txn(Decide(T1, Decision.COMMIT_SUCCESS))
    record = SYSTEM_KEY_PREFIX + b"r/" + T1
    for command in (PutCommand(record, b"\x01", request_id=3), DeleteCommand(record, 4)):
        result = shard.apply(command)
        assert result.kind is ResultKind.REJECTED and "reserved" in (result.error or "")
    assert shard.txn(Decide(T1, Decision.ABORT)) == Decided(Decision.COMMIT_SUCCESS)
