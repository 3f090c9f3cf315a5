"""The transaction record collector against real shard state machines: a record its
coordinator left behind is forgotten only after its age, only once every shard has resolved
the transaction's intents (a committed write lands, it is never dropped), and never while a
shard cannot confirm. Records are replicated state: the index the collector reads is rebuilt
on reopen and on snapshot install."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from minikv_core.cluster.commands import TxnCommand
from minikv_core.cluster.service import UnavailableError
from minikv_core.cluster.state_machine import ResultKind, ShardStateMachine
from minikv_core.cluster.txn import OpKind, TxnOp, TxnRequest
from minikv_core.cluster.txn_codec import (
    Decide,
    Decided,
    Decision,
    Forget,
    Prepare,
    Prepared,
    ShardPart,
    TxnBody,
    TxnResult,
)
from minikv_core.cluster.txn_locks import TxnLockTable
from minikv_core.cluster.txn_record_gc import RecordCollector
from minikv_core.raft.types import Entry, EntryType
from minikv_core.storage.engine import Engine, EngineOptions

AGE_S = 10.0
T1 = b"\x01" * 16
T2 = b"\x02" * 16


class Shards:
    """Three shards applying transaction commands in order, as their leaders would; a shard
    in `down` refuses them as an unreachable leader does."""

    def __init__(self, root: Path) -> None:
        self.engines = [
            Engine.open(root / str(n), EngineOptions(background_compaction=False)) for n in range(3)
        ]
        self.machines = [ShardStateMachine(engine) for engine in self.engines]
        self.down: set[int] = set()
        self.commands: list[tuple[int, str]] = []

    async def run_txn_command(self, shard: int, body: TxnBody, deadline: float) -> TxnResult:
        if shard in self.down:
            raise UnavailableError(f"shard {shard} has no leader")
        self.commands.append((shard, type(body).__name__))
        machine = self.machines[shard]
        entry = Entry(2, machine.applied_index + 1, EntryType.NORMAL, TxnCommand(body, 7).encode())
        (result,) = machine.apply([entry])
        assert result.kind is ResultKind.TXN and result.txn is not None, result
        return result.txn

    def tables(self) -> dict[int, TxnLockTable]:
        return {n: machine.txn for n, machine in enumerate(self.machines)}

    def close(self) -> None:
        for engine in self.engines:
            engine.close()


@pytest.fixture
def shards(tmp_path: Path) -> Iterator[Shards]:
    made = Shards(tmp_path)
    try:
        yield made
    finally:
        made.close()


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def collector(shards: Shards, clock: Clock) -> RecordCollector:
    return RecordCollector(shards, shards.tables, lambda: [0, 1, 2], AGE_S, clock)


def part(key: bytes, value: bytes) -> ShardPart:
    return ShardPart.whole(TxnRequest((), (TxnOp(OpKind.PUT, key, value),), ()))


async def committed_but_unresolved(shards: Shards, txn_id: bytes) -> None:
    """A two-shard transaction whose coordinator died right after its DECIDE: the record on
    home shard 0 says committed, shard 1 still holds its intent."""
    for shard, key in ((0, b"a"), (1, b"b")):
        prepared = await shards.run_txn_command(shard, Prepare(txn_id, 0, 99, part(key, b"v")), 0)
        assert isinstance(prepared, Prepared)
    decided = await shards.run_txn_command(0, Decide(txn_id, Decision.COMMIT_SUCCESS, True), 0)
    assert decided == Decided(Decision.COMMIT_SUCCESS)


async def test_a_left_behind_committed_record_is_forgotten_after_its_intents_commit(
    shards: Shards,
) -> None:
    clock = Clock()
    gc = collector(shards, clock)
    await committed_but_unresolved(shards, T1)
    assert shards.machines[0].txn.records == {T1: Decision.COMMIT_SUCCESS}
    assert shards.machines[0].get(b"a") is not None  # the DECIDE resolved the home intent
    assert set(shards.machines[1].txn.intents) == {T1}

    assert await gc.sweep() == 0, "younger than the age: kept"
    clock.now += AGE_S - 0.1
    assert await gc.sweep() == 0
    assert T1 in shards.machines[0].txn.records

    clock.now += 0.1
    assert await gc.sweep() == 1
    # Resolved by the record's decision first (the write lands), then forgotten.
    assert shards.machines[1].get(b"b") is not None
    assert shards.machines[1].txn.intents == {}
    assert shards.machines[0].txn.records == {}
    assert shards.machines[0].txn.status()["records"] == 0
    assert shards.commands[-4:] == [(0, "Resolve"), (1, "Resolve"), (2, "Resolve"), (0, "Forget")]
    assert gc.document() == {"tracked": 0, "forgotten": 1}


async def test_an_unreachable_shard_keeps_the_record_until_it_confirms(shards: Shards) -> None:
    clock = Clock()
    gc = collector(shards, clock)
    await committed_but_unresolved(shards, T1)
    await gc.sweep()
    clock.now += AGE_S
    shards.down.add(1)
    assert await gc.sweep() == 0
    assert T1 in shards.machines[0].txn.records, "no FORGET before every shard confirmed"
    assert (0, "Forget") not in shards.commands

    shards.down.clear()
    assert await gc.sweep() == 1
    assert shards.machines[1].get(b"b") is not None
    assert shards.machines[0].txn.records == {}


async def test_the_age_restarts_when_leadership_comes_back_and_forgotten_records_drop_out(
    shards: Shards,
) -> None:
    clock = Clock()
    led = shards.tables()
    gc = RecordCollector(shards, lambda: led, lambda: [0, 1, 2], AGE_S, clock)
    await committed_but_unresolved(shards, T1)
    await shards.run_txn_command(0, Decide(T2, Decision.ABORT, True), 0)  # a resolver's abort
    await gc.sweep()
    assert gc.document()["tracked"] == 2

    led = {}  # this node lost the lead of shard 0: its clocks are dropped
    clock.now += AGE_S
    assert await gc.sweep() == 0
    assert gc.document()["tracked"] == 0

    led = shards.tables()  # leads again: a full age from now
    assert await gc.sweep() == 0
    await shards.run_txn_command(0, Forget((T2,)), 0)  # T2's coordinator forgot it meanwhile
    clock.now += AGE_S
    assert await gc.sweep() == 1
    assert shards.machines[0].txn.records == {}
    assert gc.document() == {"tracked": 0, "forgotten": 1}


async def test_records_are_rebuilt_from_the_engine_on_reopen(tmp_path: Path) -> None:
    shards = Shards(tmp_path)
    try:
        await committed_but_unresolved(shards, T1)
        await shards.run_txn_command(0, Decide(T2, Decision.ABORT, True), 0)
        shards.engines[0].flush()
    finally:
        shards.close()
    engine = Engine.open(tmp_path / "0", EngineOptions(background_compaction=False))
    try:
        machine = ShardStateMachine(engine)
        assert machine.txn.records == {T1: Decision.COMMIT_SUCCESS, T2: Decision.ABORT}
    finally:
        engine.close()
