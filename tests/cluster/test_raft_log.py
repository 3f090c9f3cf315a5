"""NodeRaftLog: many groups' Raft logs in one WAL, replay, truncation and crash safety.

The model is `MemoryStorage` itself: a seeded `Scenario` generates valid multi-group Readies
(appends, Raft §5.3 overwrites, new terms and votes, commits, snapshot installs, compactions,
truncations), applies each to a model MemoryStorage per group and to the NodeRaftLog, and the
tests compare every group's (hard state, snapshot metadata, entries) after reopening.

The crash test runs this module as a child process (`python -m tests.cluster.test_raft_log
child DIR SEED`): it prints each step's number only after the step returned, and is SIGKILLed
at a seeded random moment. The reopened log must hold every printed step, and each group must
be in its state after the last printed step or after a *prefix* of the next step's records
(a torn, unacknowledged batch).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from minikv_core.cluster.raft_log import (
    SNAPSHOT_META_ENTRY_TYPE,
    MarkKind,
    NodeRaftLog,
    RaftLogCorruptionError,
    RaftLogInputError,
    encode_snapshot_meta,
)
from minikv_core.raft.node import Config, RawNode
from minikv_core.raft.storage import MemoryStorage
from minikv_core.raft.types import (
    EMPTY_SNAPSHOT,
    ConfState,
    Entry,
    EntryType,
    HardState,
    Message,
    NotLeaderError,
    ProposalDroppedError,
    Ready,
    Role,
    Snapshot,
    SnapshotMetadata,
)
from minikv_core.storage.wal import Wal
from minikv_core.storage.wal_records import (
    KvBatch,
    KvOp,
    OpKind,
    RaftEntry,
    RaftHardState,
    RaftSnapshotMark,
    RecordType,
)

KIB = 1024
SEGMENT_BYTES = 256 * KIB
SMALL_SEGMENT_BYTES = 8 * KIB
CRASH_SEGMENT_BYTES = 32 * KIB
GROUP_IDS = (0, 1, 7, 2**32 - 1)
REPO_ROOT = Path(__file__).resolve().parents[2]

Fingerprint = tuple[HardState, SnapshotMetadata, tuple[Entry, ...]]
FRESH: Fingerprint = (HardState(), SnapshotMetadata(), ())


# ------------------------------------------------------------------------------ model


def fingerprint(storage: MemoryStorage) -> Fingerprint:
    """What a group's log *is*: hard state, snapshot metadata, entries after it."""
    hard_state, _ = storage.initial_state()
    metadata = MemoryStorage.snapshot(storage).metadata  # never a data source
    first, last = storage.first_index(), storage.last_index()
    entries = tuple(storage.entries(first, last + 1, 1 << 62)) if last >= first else ()
    return hard_state, metadata, entries


def storage_from(state: Fingerprint) -> MemoryStorage:
    hard_state, metadata, entries = state
    storage = MemoryStorage(metadata.conf_state)
    if metadata.index > 0:
        storage.apply_snapshot(Snapshot(metadata, b""))
    storage.append(list(entries))
    storage.set_hard_state(hard_state)
    return storage


def make_ready(
    *,
    entries: tuple[Entry, ...] = (),
    hard_state: HardState | None = None,
    snapshot: Snapshot = EMPTY_SNAPSHOT,
) -> Ready:
    return Ready(
        soft_state=None,
        hard_state=hard_state,
        entries=entries,
        snapshot=snapshot,
        committed_entries=(),
        messages=(),
        read_states=(),
        must_sync=bool(entries) or not snapshot.is_empty or hard_state is not None,
    )


@dataclass(frozen=True)
class PersistOp:
    readies: tuple[tuple[int, Ready], ...]


@dataclass(frozen=True)
class CompactOp:
    marks: tuple[tuple[int, SnapshotMetadata], ...]


@dataclass(frozen=True)
class TruncateOp:
    pass


@dataclass(frozen=True)
class BootstrapOp:
    group_id: int
    conf_state: ConfState


Op = PersistOp | CompactOp | TruncateOp | BootstrapOp


def run_op(log: NodeRaftLog, op: Op) -> None:
    if isinstance(op, PersistOp):
        log.persist(op.readies)
    elif isinstance(op, CompactOp):
        log.record_compactions(op.marks)
    elif isinstance(op, TruncateOp):
        log.truncate()
    else:
        log.bootstrap_group(op.group_id, op.conf_state)


class Scenario:
    """Seeded valid operations on several groups; `models` is the expected state."""

    def __init__(
        self,
        seed: int,
        group_ids: tuple[int, ...] = GROUP_IDS,
        *,
        models: dict[int, MemoryStorage] | None = None,
        truncate_weight: int = 6,
        compact_weight: int = 9,
    ) -> None:
        self.rng = random.Random(seed)
        self.group_ids = group_ids
        self.truncate_weight = truncate_weight
        self.compact_weight = compact_weight
        if models is None:
            self.models = {group_id: MemoryStorage() for group_id in group_ids}
            # Every other group is founded with a bootstrap membership.
            self.pending_bootstraps = list(group_ids[::2])
        else:
            self.models = models
            self.pending_bootstraps = []

    def next_op(self) -> Op:
        """Generate the next operation and apply it to the models."""
        rng = self.rng
        if self.pending_bootstraps:
            group_id = self.pending_bootstraps.pop(0)
            conf_state = ConfState((1, 2, 3), (4,))
            self.models[group_id] = MemoryStorage(conf_state)
            return BootstrapOp(group_id, conf_state)
        roll = rng.randrange(100)
        if roll < self.truncate_weight:
            return TruncateOp()
        if roll < self.truncate_weight + self.compact_weight:
            marks = self._compactions()
            if marks:
                return CompactOp(marks)
        count = rng.randint(1, len(self.group_ids))
        readies: list[tuple[int, Ready]] = []
        for group_id in rng.sample(self.group_ids, count):
            ready = self._ready_for(self.models[group_id])
            if ready is not None:
                self.models[group_id].persist(ready)
                readies.append((group_id, ready))
        return PersistOp(tuple(readies))

    def _compactions(self) -> tuple[tuple[int, SnapshotMetadata], ...]:
        marks: list[tuple[int, SnapshotMetadata]] = []
        for group_id in self.group_ids:
            model = self.models[group_id]
            snapshot_index = model.first_index() - 1
            commit = model.initial_state()[0].commit
            if commit > snapshot_index and self.rng.random() < 0.7:
                index = self.rng.randint(snapshot_index + 1, commit)
                metadata = SnapshotMetadata(index, model.term(index), ConfState((1, 2, 3)))
                model.compact(Snapshot(metadata, b""))
                marks.append((group_id, metadata))
        return tuple(marks)

    def _entry(self, term: int, index: int) -> Entry:
        rng = self.rng
        size = rng.choice((0, 1, rng.randint(2, 300)))
        kind = EntryType.CONF_CHANGE if rng.random() < 0.05 else EntryType.NORMAL
        return Entry(term, index, kind, rng.randbytes(size))

    def _ready_for(self, model: MemoryStorage) -> Ready | None:
        rng = self.rng
        stored, _ = model.initial_state()
        term, vote, commit = stored.term, stored.vote, stored.commit
        snapshot_index = model.first_index() - 1
        last = model.last_index()
        kind = rng.choices(
            ("append", "overwrite", "install", "vote", "commit"), weights=(60, 12, 4, 10, 14)
        )[0]
        if kind in ("overwrite", "install", "vote") or term == 0:
            term += rng.randint(1, 2)  # a new term, and at most one vote in it (Raft §5.2)
            vote = rng.randint(0, 5)
        snapshot = EMPTY_SNAPSHOT
        entries: list[Entry] = []
        if kind == "install":
            index = max(last, commit) + rng.randint(1, 30)
            conf_state = ConfState(tuple(sorted(rng.sample(range(1, 8), 3))))
            metadata = SnapshotMetadata(index, rng.randint(1, term), conf_state)
            snapshot = Snapshot(metadata, b"engine state at %d" % index)
            commit = index
            entries = [self._entry(term, index + 1 + k) for k in range(rng.randint(0, 3))]
        elif kind == "overwrite":
            start = rng.randint(max(commit, snapshot_index) + 1, last + 1)
            entries = [self._entry(term, start + k) for k in range(rng.randint(1, 6))]
        elif kind == "append":
            entries = [self._entry(term, last + 1 + k) for k in range(rng.randint(1, 8))]
            if rng.random() < 0.5:
                commit = rng.randint(commit, entries[-1].index)
        elif kind == "commit" and last > commit:
            commit = rng.randint(commit + 1, last)
        hard_state = HardState(term, vote, commit)
        changed = hard_state if hard_state != stored else None
        if not entries and snapshot.is_empty and changed is None:
            return None
        return make_ready(entries=tuple(entries), hard_state=changed, snapshot=snapshot)

    def fingerprints(self) -> dict[int, Fingerprint]:
        return {group_id: fingerprint(model) for group_id, model in self.models.items()}


def log_fingerprints(log: NodeRaftLog) -> dict[int, Fingerprint]:
    return {group_id: fingerprint(log.storage(group_id)) for group_id in log.groups()}


def durable_fingerprints(log: NodeRaftLog) -> dict[int, Fingerprint]:
    """What a reopen must find: the storage's log with the hard state last *written* (a
    commit-only hard state of a Ready that needs no sync is applied but not written)."""
    written = {info.group_id: info.hard_state for info in log.describe()}
    return {
        group_id: (written[group_id], *fingerprint(log.storage(group_id))[1:])
        for group_id in log.groups()
    }


def assert_log_matches(log: NodeRaftLog, expected: dict[int, Fingerprint], context: str) -> None:
    actual = log_fingerprints(log)
    for group_id in sorted(set(actual) | set(expected)):
        want = expected.get(group_id, FRESH)
        got = actual.get(group_id, FRESH)
        assert got == want, f"{context}: group {group_id} differs:\n got {got}\nwant {want}"


@pytest.fixture
def wal_dir(tmp_path: Path) -> Path:
    return tmp_path / "wal"


def open_log(directory: Path, segment_size_bytes: int = SEGMENT_BYTES) -> NodeRaftLog:
    return NodeRaftLog.open(directory, segment_size_bytes=segment_size_bytes)


def entries(term: int, first: int, last: int, data: bytes = b"x") -> tuple[Entry, ...]:
    return tuple(Entry(term, index, EntryType.NORMAL, data) for index in range(first, last + 1))


# --------------------------------------------------------------------------- replay


@pytest.mark.parametrize("seed", [11, 12, 13])
def test_replay_rebuilds_every_group_after_overwrites_installs_and_compactions(
    wal_dir: Path, seed: int
) -> None:
    scenario = Scenario(seed)
    with open_log(wal_dir) as log:
        for step in range(300):
            run_op(log, scenario.next_op())
            if step % 100 == 99:
                assert_log_matches(log, scenario.fingerprints(), f"seed={seed} live step={step}")
        live_description = log.describe()
    with open_log(wal_dir) as log:
        assert_log_matches(log, scenario.fingerprints(), f"seed={seed} after reopen")
        # The truncation bookkeeping rebuilt by replay equals the one kept while writing.
        assert log.describe() == live_description, f"seed={seed}"


def test_overwrite_drops_the_conflicting_suffix_on_replay(wal_dir: Path) -> None:
    """Raft §5.3: a conflicting entry truncates the log from its index."""
    with open_log(wal_dir) as log:
        log.persist([(5, make_ready(entries=entries(1, 1, 6), hard_state=HardState(1, 1, 2)))])
        log.persist(
            [(5, make_ready(entries=entries(2, 3, 4, b"new"), hard_state=HardState(2, 0, 2)))]
        )
    with open_log(wal_dir) as log:
        storage = log.storage(5)
        assert storage.last_index() == 4
        assert [e.term for e in storage.entries(1, 5, 1 << 30)] == [1, 1, 2, 2]
        assert storage.initial_state()[0] == HardState(2, 0, 2)


def test_install_drops_every_earlier_entry_even_beyond_the_snapshot_index(
    wal_dir: Path,
) -> None:
    """An installed snapshot replaces the whole log (MemoryStorage.apply_snapshot), so stale
    entries after its index written before it must not come back on replay."""
    snapshot = Snapshot(SnapshotMetadata(3, 2, ConfState((1, 2))), b"state")
    with open_log(wal_dir) as log:
        log.persist([(1, make_ready(entries=entries(1, 1, 8), hard_state=HardState(1, 2, 1)))])
        log.persist([(1, make_ready(snapshot=snapshot, hard_state=HardState(2, 0, 3)))])
        assert log.storage(1).last_index() == 3
    with open_log(wal_dir) as log:
        storage = log.storage(1)
        assert (storage.first_index(), storage.last_index()) == (4, 3)
        assert storage.initial_state() == (HardState(2, 0, 3), ConfState((1, 2)))


# --------------------------------------------------------------------- group commit


def test_one_persist_of_many_groups_is_one_append_and_one_fsync(wal_dir: Path) -> None:
    with open_log(wal_dir) as log:
        scenario = Scenario(5, models={g: MemoryStorage() for g in range(50)}, compact_weight=0)
        before = log.stats
        readies = []
        for group_id in range(50):
            ready = scenario._ready_for(scenario.models[group_id])
            assert ready is not None
            scenario.models[group_id].persist(ready)
            readies.append((group_id, ready))
        log.persist(readies)
        after = log.stats
        assert after.rotations == before.rotations, "the test needs no segment rotation"
        assert after.appends - before.appends == 1
        assert after.writes - before.writes == 1
        assert after.syncs - before.syncs == 1
        written = sum(len(r.entries) + (r.hard_state is not None) for _, r in readies)
        assert after.records - before.records >= written
        assert_log_matches(log, scenario.fingerprints(), "after one persist")


def test_persist_of_readies_with_nothing_durable_writes_nothing(wal_dir: Path) -> None:
    with open_log(wal_dir) as log:
        before = log.stats
        log.persist([(1, make_ready()), (2, make_ready())])
        log.persist([])
        assert log.stats == before


def test_commit_only_hard_state_needing_no_sync_is_applied_but_not_written(
    wal_dir: Path,
) -> None:
    """etcd's MustSync: a Ready that only moves the commit index needs no fsync. The log
    writes nothing for it (no append, no sync); the storage sees the new commit at once; a
    reopen finds the last *written* commit, and the next record that is written carries it."""
    commit_only = replace(make_ready(hard_state=HardState(1, 1, 3)), must_sync=False)
    with open_log(wal_dir) as log:
        log.persist([(1, make_ready(entries=entries(1, 1, 4), hard_state=HardState(1, 1, 1)))])
        before = log.stats
        log.persist([(1, commit_only)])
        assert log.stats == before, "a commit-only Ready needing no sync wrote something"
        assert log.storage(1).hard_state() == HardState(1, 1, 3)
        assert log.describe()[0].hard_state == HardState(1, 1, 1)
    with open_log(wal_dir) as log:
        assert log.storage(1).hard_state() == HardState(1, 1, 1)
        log.persist([(1, commit_only)])
        log.persist([(1, make_ready(entries=entries(1, 5, 5), hard_state=HardState(1, 1, 4)))])
    with open_log(wal_dir) as log:
        assert log.storage(1).hard_state() == HardState(1, 1, 4)


@pytest.mark.parametrize(
    "hard_state", [HardState(2, 1, 3), HardState(1, 2, 3)], ids=["new term", "new vote"]
)
def test_a_term_or_vote_change_is_written_even_if_the_ready_claims_no_sync(
    wal_dir: Path, hard_state: HardState
) -> None:
    """Only a commit-only change may skip the disk: a term or vote is written and synced
    whatever `must_sync` says (Raft §5.2: a vote survives crashes)."""
    with open_log(wal_dir) as log:
        log.persist([(1, make_ready(entries=entries(1, 1, 4), hard_state=HardState(1, 0, 1)))])
        before = log.stats
        log.persist([(1, replace(make_ready(hard_state=hard_state), must_sync=False))])
        assert log.stats.syncs == before.syncs + 1
    with open_log(wal_dir) as log:
        assert log.storage(1).hard_state() == hard_state


async def test_persist_async_is_one_append_and_applies_only_after_durability(
    wal_dir: Path,
) -> None:
    log = await asyncio.to_thread(open_log, wal_dir)
    try:
        before = log.stats
        ready = make_ready(entries=entries(1, 1, 3), hard_state=HardState(1, 1, 1))
        task = asyncio.ensure_future(log.persist_async([(3, ready), (4, ready)]))
        await asyncio.sleep(0)  # the append is queued, the fsync not done: storage unchanged
        if not task.done():
            assert log.storage(3).last_index() == 0
        await task
        assert log.stats.appends - before.appends == 1
        assert log.stats.syncs - before.syncs == 1
        assert log.storage(3).last_index() == 3
        assert log.storage(4).initial_state()[0] == HardState(1, 1, 1)
    finally:
        await log.aclose()
    with open_log(wal_dir) as reopened:
        assert reopened.storage(4).last_index() == 3


async def test_async_variants_bootstrap_compact_and_truncate_like_the_sync_ones(
    wal_dir: Path,
) -> None:
    log = await asyncio.to_thread(open_log, wal_dir, SMALL_SEGMENT_BYTES)
    try:
        await log.bootstrap_group_async(4, ConfState((1, 2)))
        await log.persist_async([(5, make_ready(hard_state=HardState(2, 1, 0)))])
        for index in range(1, 41):
            ready = make_ready(
                entries=entries(1, index, index, b"a" * 1000), hard_state=HardState(1, 1, index)
            )
            await log.persist_async([(1, ready)])
        await log.record_compactions_async([(1, SnapshotMetadata(40, 1, ConfState((1,))))])
        result = await log.truncate_async()
        assert result.deleted and result.records_reappended == 3  # group 4's mark, 5's state
        expected = log_fingerprints(log)
    finally:
        await log.aclose()
    with open_log(wal_dir, SMALL_SEGMENT_BYTES) as reopened:
        assert_log_matches(reopened, expected, "after async truncation")
        assert reopened.storage(4).initial_state()[1] == ConfState((1, 2))
        assert reopened.storage(5).initial_state()[0] == HardState(2, 1, 0)


async def test_overlapping_async_calls_are_refused(wal_dir: Path) -> None:
    log = await asyncio.to_thread(open_log, wal_dir)
    try:
        ready = make_ready(entries=entries(1, 1, 1), hard_state=HardState(1))
        first = asyncio.ensure_future(log.persist_async([(1, ready)]))
        await asyncio.sleep(0)
        with pytest.raises(RuntimeError, match="overlaps persist_async"):
            await log.persist_async([(2, ready)])
        await first
        assert log.storage(2).last_index() == 0
    finally:
        await log.aclose()


async def test_a_blocking_call_from_an_event_loop_is_refused(wal_dir: Path) -> None:
    log = await asyncio.to_thread(open_log, wal_dir)
    try:
        with pytest.raises(RuntimeError, match="persist_async"):
            log.persist([(1, make_ready(hard_state=HardState(1)))])
        await log.persist_async([(1, make_ready(hard_state=HardState(1)))])  # still usable
    finally:
        await log.aclose()


def test_a_round_larger_than_a_segment_is_split_across_segments(wal_dir: Path) -> None:
    """A WAL batch never spans segments, so only an oversized round costs several appends."""
    big = make_ready(entries=entries(1, 1, 30, b"b" * 700), hard_state=HardState(1, 1, 30))
    small = make_ready(entries=entries(1, 1, 2), hard_state=HardState(1, 1, 0))
    with open_log(wal_dir, SMALL_SEGMENT_BYTES) as log:
        before = log.stats
        log.persist([(1, small), (2, big)])
        appends = log.stats.appends - before.appends
        assert appends >= 3, "30 x 700 bytes cannot fit one 8 KiB segment"
        expected, description = log_fingerprints(log), log.describe()
    with open_log(wal_dir, SMALL_SEGMENT_BYTES) as log:
        assert_log_matches(log, expected, "after a split round")
        assert log.describe() == description
        assert log.storage(2).last_index() == 30


def test_a_record_larger_than_a_segment_is_refused_before_writing(wal_dir: Path) -> None:
    with open_log(wal_dir, SMALL_SEGMENT_BYTES) as log:
        before = log.stats
        ready = make_ready(
            entries=entries(1, 1, 1, b"x" * SMALL_SEGMENT_BYTES), hard_state=HardState(1)
        )
        with pytest.raises(RaftLogInputError, match="cannot fit a WAL segment"):
            log.persist([(1, make_ready(hard_state=HardState(1))), (2, ready)])
        assert log.stats == before
        assert log.storage(1).initial_state()[0] == HardState()


# ------------------------------------------------------------------------ refusals


@pytest.mark.parametrize(
    ("case", "ready", "message"),
    [
        ("gap", make_ready(entries=entries(1, 7, 8)), "gap after last index 5"),
        (
            "overwrite committed",
            make_ready(entries=entries(2, 2, 3), hard_state=HardState(2)),
            "overwrite a committed entry",
        ),
        ("vote change in term", make_ready(hard_state=HardState(1, 3, 2)), "vote changes"),
        ("term goes back", make_ready(hard_state=HardState(0, 0, 2)), "term goes back"),
        ("commit beyond last", make_ready(hard_state=HardState(1, 2, 9)), "commit index 9"),
        ("commit goes back", make_ready(hard_state=HardState(1, 2, 1)), "commit index 1"),
        ("entry term beyond term", make_ready(entries=entries(5, 6, 6)), "has term 5"),
        ("not consecutive", make_ready(entries=(*entries(1, 6, 6), *entries(1, 8, 8))), "6 then 8"),
        (
            "stale snapshot",
            make_ready(snapshot=Snapshot(SnapshotMetadata(1, 1), b"")),
            "not newer than the stored one at 1",
        ),
    ],
)
def test_a_ready_breaking_a_raft_invariant_is_refused_and_nothing_is_written(
    wal_dir: Path, case: str, ready: Ready, message: str
) -> None:
    with open_log(wal_dir) as log:
        log.persist([(1, make_ready(entries=entries(1, 1, 5), hard_state=HardState(1, 2, 2)))])
        log.record_compaction(1, SnapshotMetadata(1, 1))
        before_stats, before_state = log.stats, log_fingerprints(log)
        with pytest.raises(RaftLogInputError, match=message):
            log.persist([(9, make_ready(hard_state=HardState(1))), (1, ready)])
        assert log.stats == before_stats, case
        assert log_fingerprints(log) == before_state, case
        log.persist([(1, make_ready(entries=entries(1, 6, 6)))])  # still usable


def test_two_readies_for_one_group_in_one_call_are_refused(wal_dir: Path) -> None:
    with open_log(wal_dir) as log:
        ready = make_ready(hard_state=HardState(1))
        with pytest.raises(RaftLogInputError, match="two Readies for group 4"):
            log.persist([(4, ready), (4, ready)])


def test_group_id_outside_u32_is_refused(wal_dir: Path) -> None:
    with open_log(wal_dir) as log, pytest.raises(RaftLogInputError, match="u32"):
        log.storage(2**32)


# --------------------------------------------------------------- bootstrap, snapshots


def test_bootstrap_membership_survives_restart(wal_dir: Path) -> None:
    conf_state = ConfState((1, 2, 3), (9,))
    with open_log(wal_dir) as log:
        storage = log.bootstrap_group(2, conf_state)
        assert storage.initial_state() == (HardState(), conf_state)
        with pytest.raises(RaftLogInputError, match="already has a log"):
            log.bootstrap_group(2, conf_state)
        log.persist([(3, make_ready(hard_state=HardState(1)))])
        with pytest.raises(RaftLogInputError, match="already has a log"):
            log.bootstrap_group(3, conf_state)
    with open_log(wal_dir) as log:
        assert log.storage(2).initial_state() == (HardState(), conf_state)
        assert log.storage(2).snapshot().is_empty


def test_snapshot_data_comes_from_the_source_after_restart(wal_dir: Path) -> None:
    """The log keeps snapshot metadata only; the engine supplies the data to ship."""
    metadata = SnapshotMetadata(3, 1, ConfState((1,)))
    with open_log(wal_dir) as log:
        log.persist([(1, make_ready(entries=entries(1, 1, 4), hard_state=HardState(1, 1, 3)))])
        log.record_compaction(1, metadata)
        assert log.storage(1).first_index() == 4
    asked: list[SnapshotMetadata] = []

    def source(wanted: SnapshotMetadata) -> bytes:
        asked.append(wanted)
        return b"engine files at %d" % wanted.index

    with open_log(wal_dir) as log:
        storage = log.storage(1)
        assert storage.snapshot() == Snapshot(metadata, b"")  # no source yet
        storage.snapshot_data_source = source
        assert storage.snapshot() == Snapshot(metadata, b"engine files at 3")
        assert asked == [metadata]
        assert [e.index for e in storage.entries(4, 5, 1 << 20)] == [4]


def test_compaction_mark_must_match_the_log(wal_dir: Path) -> None:
    with open_log(wal_dir) as log:
        log.persist([(1, make_ready(entries=entries(2, 1, 4), hard_state=HardState(2, 1, 3)))])
        before = log.stats
        with pytest.raises(RaftLogInputError, match="has term 2, not 1"):
            log.record_compaction(1, SnapshotMetadata(2, 1))
        with pytest.raises(RaftLogInputError, match="beyond last index 4"):
            log.record_compaction(1, SnapshotMetadata(5, 2))
        assert log.stats == before
        log.record_compaction(1, SnapshotMetadata(2, 2))
        appends = log.stats.appends
        log.record_compaction(1, SnapshotMetadata(2, 2))  # not newer: skipped, nothing written
        assert log.stats.appends == appends


def test_compaction_after_raw_node_compacted_the_storage_records_its_metadata(
    wal_dir: Path,
) -> None:
    """The host's order: RawNode.compact (storage compacted in memory), then the mark."""
    metadata = SnapshotMetadata(2, 1, ConfState((1, 2)))
    with open_log(wal_dir) as log:
        log.persist([(1, make_ready(entries=entries(1, 1, 3), hard_state=HardState(1, 1, 3)))])
        log.storage(1).compact(Snapshot(metadata, b"data"))
        with pytest.raises(RaftLogInputError, match="differs from the storage's snapshot"):
            log.record_compaction(1, replace(metadata, conf_state=ConfState((1,))))
        log.record_compaction(1, metadata)
    with open_log(wal_dir) as log:
        assert fingerprint(log.storage(1))[1] == metadata
        assert log.storage(1).first_index() == 3


# ---------------------------------------------------------------------- truncation


def fill_segments(log: NodeRaftLog, group_id: int, start: int, count: int, term: int) -> int:
    """Append `count` entries of ~1 KiB to `group_id`, committing them; returns last index."""
    last = start - 1
    for _ in range(count):
        last += 1
        log.persist(
            [
                (
                    group_id,
                    make_ready(
                        entries=entries(term, last, last, b"p" * 1000),
                        hard_state=HardState(term, 1, last),
                    ),
                )
            ]
        )
    return last


def test_truncation_keeps_a_hard_state_written_once_in_a_deleted_segment(wal_dir: Path) -> None:
    with open_log(wal_dir, SMALL_SEGMENT_BYTES) as log:
        log.persist([(7, make_ready(hard_state=HardState(4, 2, 0)))])  # group 7: only this
        log.bootstrap_group(8, ConfState((1, 2, 3)))  # group 8: only its bootstrap mark
        last = fill_segments(log, 1, 1, 40, 1)
        first_segment = log.wal.first_position.segment
        assert log.truncatable_position().segment == first_segment, "group 1 is not compacted"
        assert log.truncate().deleted == ()
        log.record_compaction(1, SnapshotMetadata(last - 1, 1))
        result = log.truncate()
        assert result.deleted, "compacted segments must go"
        assert result.records_reappended == 1 + 2  # group 7's hard state, group 8's mark pair
        assert log.wal.first_position.segment == result.truncated_before.segment
        expected = log_fingerprints(log)
    with open_log(wal_dir, SMALL_SEGMENT_BYTES) as log:
        assert_log_matches(log, expected, "after truncation")
        assert log.storage(7).initial_state()[0] == HardState(4, 2, 0)
        assert log.storage(8).initial_state()[1] == ConfState((1, 2, 3))
        assert [e.index for e in log.storage(1).entries(last, last + 1, 1 << 20)] == [last]
        # Truncating again re-appends nothing: the latest records now live in kept segments.
        assert log.truncate().records_reappended == 0


def test_truncation_never_deletes_a_segment_holding_a_live_entry(wal_dir: Path) -> None:
    with open_log(wal_dir, SMALL_SEGMENT_BYTES) as log:
        fill_segments(log, 2, 1, 5, 1)  # group 2: entries 1..5 in the first segment, live
        last = fill_segments(log, 1, 1, 40, 1)
        log.record_compaction(1, SnapshotMetadata(last, 1))
        first_segment = log.wal.first_position.segment
        assert log.truncatable_position().segment == first_segment
        assert log.truncate().deleted == ()
        log.record_compaction(2, SnapshotMetadata(3, 1))  # entries 4, 5 still live
        assert log.truncate().deleted == ()
        log.record_compaction(2, SnapshotMetadata(5, 1))
        assert log.truncate().deleted
        expected = log_fingerprints(log)
    with open_log(wal_dir, SMALL_SEGMENT_BYTES) as log:
        assert_log_matches(log, expected, "after truncation")


def test_install_mark_reappended_by_truncation_keeps_the_entries_written_after_it(
    wal_dir: Path,
) -> None:
    """The install mark's segment goes; its re-appended copy (a COMPACTION mark, at the end
    of the log) must keep the live entries written after the install, earlier in the log."""
    metadata = SnapshotMetadata(100, 3, ConfState((1, 2, 3)))
    with open_log(wal_dir, SMALL_SEGMENT_BYTES) as log:
        log.persist([(5, make_ready(entries=entries(1, 1, 4), hard_state=HardState(1, 1, 1)))])
        log.persist(
            [(5, make_ready(snapshot=Snapshot(metadata, b"d"), hard_state=HardState(3, 0, 100)))]
        )
        last = fill_segments(log, 1, 1, 20, 1)  # move on to later segments
        log.persist([(5, make_ready(entries=entries(3, 101, 103)))])
        last = fill_segments(log, 1, last + 1, 20, 1)
        log.record_compaction(1, SnapshotMetadata(last, 1))
        result = log.truncate()
        assert result.deleted and result.records_reappended >= 2
        expected = log_fingerprints(log)
    with open_log(wal_dir, SMALL_SEGMENT_BYTES) as log:
        assert_log_matches(log, expected, "after truncation")
        storage = log.storage(5)
        assert (storage.first_index(), storage.last_index()) == (101, 103)
        assert storage.initial_state() == (HardState(3, 0, 100), ConfState((1, 2, 3)))


@pytest.mark.parametrize("seed", [21, 22])
def test_random_truncations_with_small_segments_keep_every_group_exact(
    wal_dir: Path, seed: int
) -> None:
    scenario = Scenario(seed, truncate_weight=10, compact_weight=15)
    deleted = 0
    log = open_log(wal_dir, SMALL_SEGMENT_BYTES)
    try:
        for step in range(400):
            op = scenario.next_op()
            if isinstance(op, TruncateOp):
                deleted += len(log.truncate().deleted)
            else:
                run_op(log, op)
            if step % 100 == 99:
                description = log.describe()
                log.close()
                log = open_log(wal_dir, SMALL_SEGMENT_BYTES)
                assert_log_matches(log, scenario.fingerprints(), f"seed={seed} step={step}")
                assert log.describe() == description, f"seed={seed} step={step}"
    finally:
        log.close()
    assert deleted > 5, f"seed={seed}: truncation must have deleted segments"


# --------------------------------------------------------------------- corruption


def write_raw(directory: Path, *batches: list[tuple[int, bytes]]) -> None:
    with Wal.open(directory, segment_size_bytes=SEGMENT_BYTES) as wal:
        for batch in batches:
            wal.append_sync(batch)


def raw_entry(group_id: int, term: int, index: int) -> tuple[int, bytes]:
    return (RecordType.RAFT_ENTRY, RaftEntry(group_id, term, index, 0, b"d").encode())


def test_mark_without_its_metadata_record_is_corruption(wal_dir: Path) -> None:
    write_raw(
        wal_dir,
        [raw_entry(1, 1, 1), raw_entry(1, 1, 2)],
        [(RecordType.RAFT_SNAPSHOT, RaftSnapshotMark(1, 2, 1).encode())],
    )
    with pytest.raises(RaftLogCorruptionError, match="not preceded by its metadata") as info:
        open_log(wal_dir)
    assert info.value.position is not None and info.value.position.segment == 1
    assert "byte offset" in str(info.value)


def test_entries_after_a_gap_are_corruption(wal_dir: Path) -> None:
    write_raw(wal_dir, [raw_entry(1, 1, 1), raw_entry(1, 1, 2), raw_entry(1, 1, 5)])
    with pytest.raises(RaftLogCorruptionError, match="entry 5 leaves a gap after 2"):
        open_log(wal_dir)


def test_entries_not_following_the_snapshot_mark_are_corruption(wal_dir: Path) -> None:
    meta = RaftEntry(
        1, 1, 3, SNAPSHOT_META_ENTRY_TYPE, encode_snapshot_meta(MarkKind.COMPACTION, ConfState())
    )
    write_raw(
        wal_dir,
        [raw_entry(1, 1, 6), raw_entry(1, 1, 7)],
        [
            (RecordType.RAFT_ENTRY, meta.encode()),
            (RecordType.RAFT_SNAPSHOT, RaftSnapshotMark(1, 3, 1).encode()),
        ],
    )
    with pytest.raises(RaftLogCorruptionError, match="entries start at 6 but the snapshot mark"):
        open_log(wal_dir)


def test_commit_beyond_the_last_entry_is_corruption(wal_dir: Path) -> None:
    write_raw(
        wal_dir,
        [raw_entry(3, 1, 1), (RecordType.RAFT_HARD_STATE, RaftHardState(3, 1, 0, 2).encode())],
    )
    with pytest.raises(RaftLogCorruptionError, match="commit index 2 is beyond the last entry 1"):
        open_log(wal_dir)


def test_a_standalone_store_record_is_not_a_raft_log(wal_dir: Path) -> None:
    batch = KvBatch(1, (KvOp(OpKind.PUT, b"k", b"v"),))
    write_raw(wal_dir, [(RecordType.KV_BATCH, batch.encode())])
    with pytest.raises(RaftLogCorruptionError, match="KV_BATCH record is not part of a Raft"):
        open_log(wal_dir)


def test_unknown_entry_type_is_corruption(wal_dir: Path) -> None:
    record = RaftEntry(1, 1, 1, 7, b"").encode()
    write_raw(wal_dir, [(RecordType.RAFT_ENTRY, record)])
    with pytest.raises(RaftLogCorruptionError, match="unknown entry type 7"):
        open_log(wal_dir)


# ------------------------------------------------------------------ torn last batch


def ready_prefixes(ready: Ready) -> Iterator[Ready]:
    """The Ready's effect cut after each of its records (mark, entries, hard state)."""
    yield make_ready()
    installs = () if ready.snapshot.is_empty else (ready.snapshot,)
    for snapshot in installs:
        yield make_ready(snapshot=snapshot)
    for count in range(1, len(ready.entries) + 1):
        yield make_ready(entries=ready.entries[:count], snapshot=ready.snapshot)
    yield ready


def candidate_states(before: Fingerprint, op: Op | None, group_id: int) -> list[Fingerprint]:
    """Every state `group_id` may be in after a crash during `op` (it started at `before`)."""
    if op is None or isinstance(op, TruncateOp):
        return [before]
    if isinstance(op, BootstrapOp):
        if op.group_id != group_id:
            return [before]
        return [before, fingerprint(MemoryStorage(op.conf_state))]
    if isinstance(op, CompactOp):
        states = [before]
        for marked, metadata in op.marks:
            if marked == group_id:
                storage = storage_from(before)
                storage.compact(Snapshot(metadata, b""))
                states.append(fingerprint(storage))
        return states
    states = [before]
    for readied, ready in op.readies:
        if readied == group_id:
            for partial in ready_prefixes(ready):
                storage = storage_from(before)
                storage.persist(partial)
                states.append(fingerprint(storage))
    return states


def test_a_torn_last_batch_recovers_to_a_prefix_raft_tolerates(tmp_path: Path) -> None:
    """Cut the last batch at every record boundary (and inside records): each group is in its
    state before the batch or after a prefix of its records: never a hard state without the
    entries it commits, never entries of an install without the install."""
    directory = tmp_path / "wal"
    snapshot = Snapshot(SnapshotMetadata(20, 2, ConfState((1, 2))), b"s")
    last_op = PersistOp(
        (
            (1, make_ready(entries=entries(2, 3, 6), hard_state=HardState(2, 1, 5))),
            (
                2,
                make_ready(
                    snapshot=snapshot, entries=entries(2, 21, 22), hard_state=HardState(2, 0, 20)
                ),
            ),
            (3, make_ready(hard_state=HardState(3, 3, 1))),
        )
    )
    with open_log(directory) as log:
        log.persist(
            [
                (g, make_ready(entries=entries(1, 1, 4), hard_state=HardState(1, 1, 1)))
                for g in (1, 2, 3)
            ]
        )
        before = log_fingerprints(log)
        start = log.wal.end_position
        run_op(log, last_op)
        end = log.wal.end_position
    assert start.segment == end.segment
    segment_path = directory / f"{start.segment:016d}.wal"
    cuts = sorted({*range(start.offset, end.offset, 7), end.offset})
    for cut in cuts:
        trial = tmp_path / f"cut{cut}"
        shutil.copytree(directory, trial)
        with (trial / segment_path.name).open("r+b") as file:
            file.seek(cut)
            file.write(bytes(end.offset - cut))
        with open_log(trial) as log:
            recovered = log_fingerprints(log)
        for group_id in (1, 2, 3):
            candidates = candidate_states(before[group_id], last_op, group_id)
            assert recovered[group_id] in candidates, f"cut at byte {cut}: group {group_id}"
        shutil.rmtree(trial)


# ---------------------------------------------------------------- RawNode on the log


def drive(node: RawNode, log: NodeRaftLog, group_id: int) -> None:
    """Run the Ready loop of a single-voter group until it has nothing to do."""
    while node.has_ready():
        ready = node.ready()
        log.persist([(group_id, ready)])
        node.advance(ready)


def test_raw_node_restarts_from_the_node_log(wal_dir: Path) -> None:
    with open_log(wal_dir) as log:
        storage = log.bootstrap_group(3, ConfState((1,)))
        node = RawNode(Config(node_id=1), storage, random.Random(1))
        node.campaign()
        drive(node, log, 3)
        assert node.role == Role.LEADER
        indexes = [node.propose(b"command %d" % n)[1] for n in range(5)]
        drive(node, log, 3)
        status = node.status()
        assert status.commit == indexes[-1]
    with open_log(wal_dir) as log:
        storage = log.storage(3)
        restarted = RawNode(Config(node_id=1), storage, random.Random(2))
        again = restarted.status()
        assert (again.term, again.last_index) == (status.term, status.last_index)
        # The last commit-only hard state was not written (it needs no sync): the commit
        # index comes back behind, and the group commits everything again once it leads.
        assert again.commit < status.commit
        assert again.conf_state == ConfState((1,))
        data = [e.data for e in storage.entries(indexes[0], indexes[-1] + 1, 1 << 20)]
        assert data == [b"command %d" % n for n in range(5)]
        restarted.campaign()
        drive(restarted, log, 3)
        assert restarted.status().commit == status.last_index + 1  # its new term's no-op


@dataclass
class ClusterCounters:
    proposals: int = 0
    restarts: int = 0
    compactions: int = 0
    installs: int = 0
    segments_deleted: int = 0


@pytest.mark.parametrize("seed", [3, 58])
def test_three_raw_nodes_over_node_logs_survive_loss_restarts_and_compaction(
    tmp_path: Path, seed: int
) -> None:
    """The real core on the real log: lossy delivery, restarts from the WAL, compactions
    and truncations, InstallSnapshot to laggards. Every Ready the core produces must pass the
    log's invariant checks, committed prefixes must agree, and each log must reopen exactly.
    """
    rng = random.Random(seed)
    ids, group_id = (1, 2, 3), 9
    logs = {i: open_log(tmp_path / f"n{i}", SMALL_SEGMENT_BYTES) for i in ids}
    counters = ClusterCounters()
    try:
        for i in ids:
            logs[i].bootstrap_group(group_id, ConfState(ids))

        def start(node_id: int) -> RawNode:
            storage = logs[node_id].storage(group_id)
            storage.snapshot_data_source = lambda meta: b"state@%d" % meta.index
            return RawNode(Config(node_id=node_id), storage, random.Random(seed * 10 + node_id))

        nodes = {i: start(i) for i in ids}
        applied = dict.fromkeys(ids, 0)
        inbox: list[Message] = []
        for _ in range(2500):
            i = rng.choice(ids)
            roll = rng.random()
            if roll < 0.3:
                nodes[i].tick()
            elif roll < 0.7:
                rng.shuffle(inbox)
                count = rng.randint(1, 20)
                batch, inbox[:] = inbox[:count], inbox[count:]
                for message in batch:
                    if rng.random() >= 0.1:  # 10% loss
                        nodes[message.to].step(message)
            elif roll < 0.9:
                for node in nodes.values():
                    if node.role == Role.LEADER:
                        with contextlib.suppress(NotLeaderError, ProposalDroppedError):
                            node.propose(rng.randbytes(rng.randint(0, 300)))
                            counters.proposals += 1
            elif roll < 0.97:
                if applied[i] >= logs[i].storage(group_id).first_index():
                    snapshot = nodes[i].compact(applied[i], b"state@%d" % applied[i])
                    logs[i].record_compaction(group_id, snapshot.metadata)
                    counters.segments_deleted += len(logs[i].truncate().deleted)
                    counters.compactions += 1
            else:
                logs[i].close()
                inbox[:] = [m for m in inbox if m.to != i]
                logs[i] = open_log(tmp_path / f"n{i}", SMALL_SEGMENT_BYTES)
                nodes[i] = start(i)
                applied[i] = logs[i].storage(group_id).first_index() - 1
                counters.restarts += 1
            for j, node in nodes.items():
                while node.has_ready():
                    ready = node.ready()
                    logs[j].persist([(group_id, ready)])
                    inbox.extend(ready.messages)
                    if not ready.snapshot.is_empty:
                        applied[j] = ready.snapshot.metadata.index
                        counters.installs += 1
                    if ready.committed_entries:
                        applied[j] = ready.committed_entries[-1].index
                    node.advance(ready)
        context = f"seed={seed} {counters}"
        commit = min(node.status().commit for node in nodes.values())
        assert commit > 50, context
        assert counters.installs and counters.segments_deleted and counters.restarts, context
        for index in range(1, commit + 1):
            seen = set()
            for log in logs.values():
                storage = log.storage(group_id)
                if storage.first_index() <= index <= storage.last_index():
                    entry = storage.entries(index, index + 1, 1 << 30)[0]
                    seen.add((entry.term, entry.data))
            assert len(seen) <= 1, f"{context}: committed entry {index} differs: {seen}"
        for i in ids:
            durable = durable_fingerprints(logs[i])
            logs[i].close()
            logs[i] = open_log(tmp_path / f"n{i}", SMALL_SEGMENT_BYTES)
            assert log_fingerprints(logs[i]) == durable, f"{context}: node {i} after reopen"
    finally:
        for log in logs.values():
            log.close()


# ------------------------------------------------------------------------ SIGKILL


CRASH_SEED = 20240917
CRASH_STEPS = 400
CRASH_ROUNDS_MIN = 4
CRASH_ROUNDS_MAX = 30
CRASH_TIME_BUDGET_S = 5.0


def child_main(directory: str, seed: int) -> None:
    """Run the scenario's steps, printing each step number once the step returned."""
    scenario = Scenario(seed, truncate_weight=8, compact_weight=12)
    log = open_log(Path(directory), CRASH_SEGMENT_BYTES)
    sys.stdout.write("open\n")
    sys.stdout.flush()
    for step in range(CRASH_STEPS):
        run_op(log, scenario.next_op())
        sys.stdout.write(f"{step}\n")
        sys.stdout.flush()
    sys.stdin.read()  # wait for the kill with everything acknowledged


def run_crash_round(directory: Path, seed: int, rng: random.Random, log_path: Path) -> int:
    """Start a child, SIGKILL it at a random moment; returns the last acknowledged step."""
    with log_path.open("ab") as child_log:
        child = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests.cluster.test_raft_log",
                "child",
                str(directory),
                str(seed),
            ],
            cwd=REPO_ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=child_log,
            text=True,
        )
        last_step = -1
        try:
            assert child.stdout is not None
            if rng.random() < 0.2:
                time.sleep(rng.uniform(0.0, 0.4))  # may land in startup or recovery
            else:
                kill_after = rng.randint(0, CRASH_STEPS - 1)
                for line in child.stdout:
                    if line.strip().isdigit():
                        last_step = int(line)
                    if last_step >= kill_after:
                        break
            child.send_signal(signal.SIGKILL)
            child.wait(timeout=10)
            for line in child.stdout.read().splitlines():
                if line.strip().isdigit():
                    last_step = int(line)
        finally:
            if child.poll() is None:
                child.kill()
                child.wait(timeout=10)
            for stream in (child.stdout, child.stdin):
                if stream is not None:
                    stream.close()
    assert child.returncode == -signal.SIGKILL, (
        f"seed {seed}: child exited with {child.returncode} before the kill: "
        f"{log_path.read_text()[-2000:]}"
    )
    return last_step


def test_sigkill_at_random_moments_loses_no_acknowledged_step(tmp_path: Path) -> None:
    rng = random.Random(CRASH_SEED)
    log_path = tmp_path / "child.log"
    started = time.monotonic()
    rounds = 0
    acknowledged_total = 0
    while rounds < CRASH_ROUNDS_MAX and (
        rounds < CRASH_ROUNDS_MIN or time.monotonic() - started < CRASH_TIME_BUDGET_S
    ):
        seed = rng.randrange(2**31)
        directory = tmp_path / f"round{rounds}"
        last_step = run_crash_round(directory, seed, rng, log_path)
        context = f"CRASH_SEED={CRASH_SEED} round={rounds} seed={seed} last_step={last_step}"
        acknowledged_total += last_step + 1
        # Replay the scenario: the state after the last acknowledged step, and the next op.
        scenario = Scenario(seed, truncate_weight=8, compact_weight=12)
        for _ in range(last_step + 1):
            scenario.next_op()
        before = scenario.fingerprints()
        in_flight = scenario.next_op() if last_step + 1 < CRASH_STEPS else None
        if not directory.exists() or not any(directory.glob("*.wal")):
            assert last_step == -1, context
            rounds += 1
            continue
        with open_log(directory, CRASH_SEGMENT_BYTES) as log:
            recovered = log_fingerprints(log)
            assert set(recovered) <= set(GROUP_IDS), context
            for group_id in GROUP_IDS:
                state = recovered.get(group_id, FRESH)
                candidates = candidate_states(before[group_id], in_flight, group_id)
                assert state in candidates, f"{context}: group {group_id} lost acknowledged state"
            # The recovered log keeps working: continue from what it holds.
            models = {g: storage_from(recovered.get(g, FRESH)) for g in GROUP_IDS}
            more = Scenario(seed + 1, models=models, truncate_weight=10, compact_weight=10)
            for _ in range(20):
                run_op(log, more.next_op())
        with open_log(directory, CRASH_SEGMENT_BYTES) as log:
            assert_log_matches(log, more.fingerprints(), f"{context} after continuing")
        shutil.rmtree(directory)
        rounds += 1
    assert rounds >= CRASH_ROUNDS_MIN
    assert acknowledged_total > 0, f"CRASH_SEED={CRASH_SEED}: no round acknowledged a step"


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "child":
        child_main(sys.argv[2], int(sys.argv[3]))
    else:
        sys.exit("usage: python -m tests.cluster.test_raft_log child DIRECTORY SEED")
