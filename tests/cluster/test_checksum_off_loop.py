"""CHECKSUM entries: the state is pinned when the entry applies, the digest is computed in a
worker thread, and the node's event loop keeps running meanwhile (issue #10, verify)."""

from __future__ import annotations

import asyncio
import random
import threading
import time
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from minikv_core.cluster.commands import (
    BatchCommand,
    ChecksumCommand,
    Command,
    DeleteCommand,
    PutCommand,
    WriteCommand,
)
from minikv_core.cluster.service import UnavailableError
from minikv_core.cluster.shard_map import shard_for_key
from minikv_core.cluster.state_machine import (
    CHECKSUMS_KEPT,
    ChecksumRecord,
    ResultKind,
    ShardStateMachine,
    encode_stored_value,
)
from minikv_core.raft.types import Entry, EntryType
from minikv_core.storage import verify
from minikv_core.storage.engine import Engine, EngineOptions
from minikv_core.storage.sstable import TableReader
from tests.cluster.node_harness import Cluster, retry_unavailable, started_cluster

TERM = 2
SEED = 7
DEADLINE_S = 30.0
SMALL = EngineOptions(
    memtable_size_bytes=4096,
    block_size_bytes=256,
    table_size_bytes=8192,
    background_flush=False,
    background_compaction=False,
)


def entry(index: int, command: Command) -> Entry:
    return Entry(TERM, index, EntryType.NORMAL, command.encode())


def random_writes(rng: random.Random, count: int) -> BatchCommand:
    """Puts and deletes of distinct keys over a small key space (overwrites, tombstones)."""
    keys = rng.sample(range(2000), count)
    writes: list[WriteCommand] = [
        DeleteCommand(b"k%04d" % key)
        if rng.random() < 0.2
        else PutCommand(b"k%04d" % key, rng.randbytes(rng.randrange(0, 40)))
        for key in keys
    ]
    return BatchCommand(tuple(writes))


def record_of(machine: ShardStateMachine) -> ChecksumRecord:
    """What the CHECKSUM entry's record must be if applied now: `Engine.checksum` (the
    reference digest, unchanged since before the digest moved to a thread) of this state."""
    reference = machine.checksum()
    return ChecksumRecord(
        reference.applied_index, verify.StateChecksum(reference.key_count, reference.digest), ""
    )


class Gate:
    """A real one-thread executor whose thread is held until `open()`: digests queue behind
    it, so a test decides that they run only after later entries were applied."""

    def __init__(self) -> None:
        self.executor = ThreadPoolExecutor(1, thread_name_prefix="test-checksum")
        self._event = threading.Event()
        self.executor.submit(self._event.wait)

    def open(self) -> None:
        self._event.set()

    def close(self) -> None:
        self._event.set()
        self.executor.shutdown(wait=True, cancel_futures=True)


@pytest.fixture
def gate() -> Iterator[Gate]:
    held = Gate()
    try:
        yield held
    finally:
        held.close()


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    opened = Engine.open(tmp_path / "shard", SMALL)
    try:
        yield opened
    finally:
        opened.close()


def test_the_digest_is_of_the_state_at_the_entry_even_when_computed_later(
    engine: Engine, gate: Gate
) -> None:
    rng = random.Random(SEED)
    machine = ShardStateMachine(engine, checksum_executor=gate.executor)
    machine.apply([entry(i, random_writes(rng, 50)) for i in range(1, 31)])
    results = machine.apply([entry(31, ChecksumCommand(request_id=5))])
    assert [(r.kind, r.index, r.request_id) for r in results] == [(ResultKind.NOOP, 31, 5)]
    expected = record_of(machine)
    assert expected.index == 31
    # Later entries, flushes and a compaction that deletes the pinned tables, all before the
    # digest starts.
    files = [engine.path / info.name for info in engine.tables()]
    machine.apply([entry(i, random_writes(rng, 50)) for i in range(32, 52)])
    engine.compact()
    assert files and not any(path.exists() for path in files)
    assert not machine.checksums[31].done()

    gate.open()

    assert machine.checksums[31].result(timeout=DEADLINE_S) == expected
    assert record_of(machine).checksum != expected.checksum, "the later entries changed state"


def test_only_the_newest_checksums_are_kept_and_dropped_ones_never_run(
    engine: Engine, gate: Gate
) -> None:
    """A pinned state costs memory until its digest runs: one dropped for newer checksums
    before it started is cancelled, not computed."""
    rng = random.Random(SEED + 1)
    machine = ShardStateMachine(engine, checksum_executor=gate.executor)
    expected: dict[int, ChecksumRecord] = {}
    futures = {}
    index = 0
    for _ in range(CHECKSUMS_KEPT + 2):
        machine.apply([entry(index + 1, random_writes(rng, 30))])
        index += 2
        machine.apply([entry(index, ChecksumCommand())])
        expected[index] = record_of(machine)
        futures[index] = machine.checksums[index]
    dropped, kept = sorted(expected)[:2], sorted(expected)[2:]
    assert sorted(machine.checksums) == kept and len(kept) == CHECKSUMS_KEPT
    assert all(futures[i].cancelled() for i in dropped)
    assert not any(futures[i].done() for i in kept)

    gate.open()

    for i in kept:
        assert machine.checksums[i].result(timeout=DEADLINE_S) == expected[i]


def test_a_damaged_table_becomes_the_records_error_and_applying_goes_on(
    tmp_path: Path,
) -> None:
    directory = tmp_path / "shard"
    rng = random.Random(SEED + 2)
    with Engine.open(directory, SMALL) as first:
        ShardStateMachine(first).apply([entry(i, random_writes(rng, 50)) for i in range(1, 21)])
        path = first.path / first.tables()[-1].name
    reader = TableReader.open(path)
    try:
        block = next(reader.check_blocks())
    finally:
        reader.close()
    with open(path, "r+b") as file:
        file.seek(block.offset + 3)
        original = file.read(1)
        file.seek(block.offset + 3)
        file.write(bytes([original[0] ^ 0xFF]))

    with Engine.open(directory, SMALL) as reopened:  # an empty cache: blocks come from disk
        machine = ShardStateMachine(reopened)
        machine.apply([entry(21, ChecksumCommand())])
        record = machine.checksums[21].result(timeout=DEADLINE_S)
        results = machine.apply([entry(22, PutCommand(b"after", b"v", request_id=9))])

    assert record.index == 21 and record.checksum is None
    assert str(path) in record.error and "CRC mismatch" in record.error
    assert [(r.kind, r.index) for r in results] == [(ResultKind.PUT, 22)]


# --- the event loop ------------------------------------------------------------------------

LARGE_SHARD_KEYS = 1_000_000
LOAD_BATCH_KEYS = 20_000
PROBE_INTERVAL_S = 0.002


class LagProbe:
    """A task that sleeps PROBE_INTERVAL_S over and over and records by how much each wake-up
    came late: the loop's responsiveness, as Raft ticks and heartbeats would feel it."""

    def __init__(self) -> None:
        self.lags_s: list[float] = []
        self._started = asyncio.Event()
        self._stop = False
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> LagProbe:
        self._task = asyncio.create_task(self._run())
        await self._started.wait()
        return self

    async def __aexit__(self, *_exc: object) -> None:
        self._stop = True
        assert self._task is not None
        await self._task

    async def _run(self) -> None:
        self._started.set()
        while not self._stop:
            before = time.perf_counter()
            await asyncio.sleep(PROBE_INTERVAL_S)
            self.lags_s.append(time.perf_counter() - before - PROBE_INTERVAL_S)

    @property
    def max_lag_s(self) -> float:
        return max(self.lags_s, default=0.0)


def load_large_shard(engine: Engine) -> int:
    """LARGE_SHARD_KEYS keys in random order, so every run spans the whole key range and the
    digest's merge does real work; a memtable's worth stays unflushed. Returns the index."""
    rng = random.Random(SEED)
    order = list(range(LARGE_SHARD_KEYS))
    rng.shuffle(order)
    index = 0
    for start in range(0, LARGE_SHARD_KEYS, LOAD_BATCH_KEYS):
        index += 1
        stored = encode_stored_value(index, b"value")
        batch = order[start : start + LOAD_BATCH_KEYS]
        # Valid by construction: apply_checked skips a validation that tripled the load time.
        engine.apply_checked([(b"key%08d" % key, stored) for key in batch], index)
    return index


@pytest.fixture
def large_engine(tmp_path: Path) -> Iterator[Engine]:
    opened = Engine.open(
        tmp_path / "large", EngineOptions(background_flush=False, background_compaction=False)
    )
    try:
        yield opened
    finally:
        opened.close()


@pytest.mark.slow  # 1M keys, ~8 s, and timing-sensitive on a loaded machine: `make test-slow`
async def test_the_event_loop_keeps_running_while_a_large_shard_is_checksummed(
    large_engine: Engine,
) -> None:
    """Outcome, not timing: the same digest computed on the loop delays the probe by about
    its whole duration (which shows the probe measures what matters), computed through a
    CHECKSUM entry it delays it by a small fraction. Both durations stretch alike on a busy
    machine, so the comparison is of ratios with wide margins."""
    last = load_large_shard(large_engine)
    machine = ShardStateMachine(large_engine)  # the shared worker, as a node runs it

    async with LagProbe() as on_loop:
        started = time.perf_counter()
        reference = machine.checksum()  # the old way: the digest on the event loop
        on_loop_s = time.perf_counter() - started
    assert reference.key_count == LARGE_SHARD_KEYS
    assert on_loop.max_lag_s >= 0.5 * on_loop_s, (on_loop.max_lag_s, on_loop_s)

    async with LagProbe() as off_loop:
        started = time.perf_counter()
        machine.apply([entry(last + 1, ChecksumCommand())])
        record = await asyncio.wrap_future(machine.checksums[last + 1])
        off_loop_s = time.perf_counter() - started

    assert record == ChecksumRecord(
        last + 1, verify.StateChecksum(LARGE_SHARD_KEYS, reference.digest), ""
    )
    assert len(off_loop.lags_s) >= 20, "the probe hardly ran while the digest was computed"
    assert off_loop.max_lag_s * 4 < off_loop_s, (off_loop.max_lag_s, off_loop_s)


# --- a node answering verify ---------------------------------------------------------------


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[Cluster]:
    async with started_cluster(tmp_path, 3, shards=2) as nodes:
        yield nodes


async def test_every_replica_answers_the_same_digest_at_the_agreed_index(
    cluster: Cluster,
) -> None:
    """The maintenance RPC path: the leader proposes CHECKSUM, each node awaits its digest."""
    keys = [b"user%04d" % i for i in range(300)]
    node = cluster.nodes[1]

    async def put(key: bytes) -> int:
        return await retry_unavailable(lambda deadline: node.put(key, key * 3, deadline))

    await asyncio.gather(*(put(key) for key in keys))
    for shard in range(cluster.shards):

        async def propose(deadline: float, shard: int = shard) -> int:
            leaders = [n for n in cluster.nodes.values() if n.host.shard_groups[shard].is_leader]
            if not leaders:
                raise UnavailableError(f"shard {shard} has no leader yet", leader_hint=0)
            local = leaders[0].maintenance.local
            proposed = await local.propose_checksum({"shard": shard}, deadline)
            return int(proposed["index"])

        index = await retry_unavailable(propose)
        answers = [
            await n.maintenance.local.checksum(
                {"shard": shard, "index": index}, time.monotonic() + DEADLINE_S
            )
            for n in cluster.nodes.values()
        ]
        in_shard = sum(1 for key in keys if shard_for_key(key, cluster.shards) == shard)
        assert in_shard > 0
        digests = {answer["checksum"]["digest"] for answer in answers}
        assert len(digests) == 1, answers
        for answer in answers:
            assert answer["index"] == index and answer["error"] == "" and answer["tables"] == []
            assert answer["checksum"]["keys"] == in_shard
