"""The durable Raft log of one node: every group's entries, hard states and snapshot marks in
the node's single WAL, with an in-memory `MemoryStorage` per group in front of it.

Why one WAL for all groups: a node hosts the meta group and one group per shard replica. The
multi-raft host collects the Ready output of *all* of them, and `persist(readies)` writes
their new entries, hard states and snapshot marks as one batch: one write, one fdatasync
(DESIGN: "A write, end to end", step 3). Per-group logs would cost one fsync per group.

The Ready contract (raft/types.py) is kept by construction: `persist` returns only after the
batch is durable, and only then applies each Ready to its group's MemoryStorage (the cache the
Raft core reads); the host sends the Readies' messages after `persist` returns (all but a
leader's appends and heartbeats, which promise nothing about its disk: cluster/host.py).

Sync policy: every append is fdatasynced, and a Ready that needs no sync writes nothing. A
Ready whose only durable change is its commit index (`Ready.must_sync=False`, etcd's
MustSync) is applied to the group's storage but not written: the commit index is persisted
only as an optimization (a restarted node re-applies without waiting for a leader), and a
lost one is learned again from the leader (Raft Figure 2 lists commitIndex as volatile). This
is what a follower does after every write (the leader's empty append that carries the commit)
and what the leader does when it learns a commit, so it saves each of them an append, a
thread hop and an fdatasync per committed write. (A Ready that commits a conf change does
sync its commit index, see Ready.must_sync: after a restart the membership changes a node
applied must still be in effect.) The record is not even written without a
sync: an unsynced record followed by a synced one could reach the disk out of order (page
writeback has no order), leaving a hole that replay would call corruption. The commit index
reaches the WAL with the group's next record that does need the sync.

Records (storage/wal_records.py), written per group in this order within a batch:

    [RAFT_ENTRY(type=SNAPSHOT_META) + RAFT_SNAPSHOT]   a snapshot (Ready.snapshot), then
    RAFT_ENTRY ...                                      the Ready's new entries, then
    RAFT_HARD_STATE                                     its hard state.

A torn write can leave any *prefix* of the last, unacknowledged batch. The order above makes
every prefix a state Raft tolerates: nothing of that batch was acknowledged (no message was
sent), entries precede the hard state whose commit index may point at them, and a snapshot
mark precedes the entries that follow it.

Snapshot marks and their metadata. A RAFT_SNAPSHOT record holds (group, index, term) only,
but a restarted group needs the *membership* at its snapshot (ConfState), and replay needs
to know whether the snapshot was installed from the leader (it replaces the whole log, like
`MemoryStorage.apply_snapshot`) or is a local compaction (it drops only entries <= index).
So every mark is preceded, in the same batch, by a RAFT_ENTRY of reserved entry type
`SNAPSHOT_META_ENTRY_TYPE` at the mark's index and term whose data is
`format u8 | kind u8 | voter_count u32 | learner_count u32 | voter ids u64... | learner ids
u64...`. A mark without its metadata record right before it is corruption. (A dedicated
record type in wal_records would be cleaner; this keeps the WAL format of the storage layer
unchanged and every record decodable by `minikv wal` tools.) The snapshot *data* is not in
the log: it is the engine's state (the engine persists it; see `GroupStorage`).

Group bootstrap: `bootstrap_group(group_id, conf_state)` writes a mark at index 0 carrying
the founding membership, so a restarted founding member knows its group without anyone
telling it again.

Groups come and go at run time (issue #10: repair, rebalance, membership).
`create_group(group_id)` registers a replica that joins an existing group: it has no
membership yet (it learns it from the leader, usually with a snapshot) and is made durable by
an empty hard state record, so a restart still knows the node hosts it. A replica that caught
up from the log instead learns the founding membership from leader heartbeats, and
`record_founding_async` writes it as a mark at index 0, as a founding member has.
`remove_group` writes a REMOVED mark (the same two records as any mark, index and term 0):
replay drops the group's state at that point. Truncation needs nothing more: every record of
the removed incarnation precedes the REMOVED mark, so a prefix of segments that deletes the
mark deletes them too.

Replay (open) reads the WAL once, in order, per group:
- an entry at index i <= snapshot index: covered, ignored;
- otherwise it overwrites index i and drops every entry after it (Raft §5.3); if the group
  has no entries yet, or i is below its first entry, the run of entries restarts at i (older
  segments may be gone, see truncation);
- an INSTALL mark drops all entries; a COMPACTION mark drops entries <= index and checks the
  term of the entry at index if present; marks never go back (an equal COMPACTION mark is a
  re-appended duplicate);
- the last hard state wins.
At the end each group's entries must start right after its snapshot index, and its commit
index must not exceed its last index; otherwise `RaftLogCorruptionError`. Restarting a run is
safe because truncation deletes a *prefix* of the segments: a dead entry record left in a kept
segment was killed by a later record (an overwrite, an install, a mark), which is kept too,
or is covered by the group's latest mark, which truncation keeps or re-appends.

Truncation invariant (what every WAL on disk satisfies, for every group g):
  (I1) the newest record of every *live* entry of g (index > g's durable snapshot index, not
       overwritten or dropped since) is on disk;
  (I2) g's latest hard state record and latest snapshot mark (with its metadata record) are
       on disk;
  (I3) records on disk are in the order they were persisted.
`truncate()` keeps it: it finds T = the oldest segment holding a live entry of any group (or
the active segment), re-appends (synced, before anything is deleted) every latest hard state
and mark that lives in a segment before T, and only then deletes the segments before T
(oldest first). A re-appended mark is written as a COMPACTION mark: all entries written
before an INSTALL mark are in the deleted segments, and every entry in the kept segments was
written after it, so "drop entries <= index" is exactly what the install did to them. A crash
anywhere in between leaves duplicates (harmless: latest wins, equal marks are no-ops) or a
log that starts at a later segment, never a gap in a group's live entries. Entries become
dispensable only once a snapshot mark covers them, i.e. the host calls
`record_compaction(group, metadata)` after the engine has flushed (made durable) everything
up to `metadata.index` (DESIGN: "Segments are deleted once every group's applied state
covering them is flushed").

For the host, installing a snapshot from the leader: keep the received engine snapshot
files durable until the engine has installed them, then `persist` the Ready (its INSTALL
mark), then `Engine.install_snapshot`, then delete the files. A crash in between leaves a log
whose snapshot index is above the engine's applied index, and the kept files to install again
on restart (etcd keeps its .snap file for the same reason). The log cannot do this itself: it
never holds snapshot data.

Concurrency: one caller at a time. The log's meaning depends on record order (I3), and
"latest" must be decidable, so overlapping calls (e.g. two `persist_async` in flight) raise
`RuntimeError` instead of racing. The multi-raft host calls `persist` once per round with
every group's Ready, which is where group commit comes from.
"""

from __future__ import annotations

import asyncio
import enum
import struct
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Self

from minikv_core.cluster import limits
from minikv_core.raft.storage import MemoryStorage, SnapshotTemporarilyUnavailableError
from minikv_core.raft.types import (
    NONE,
    ConfState,
    Entry,
    EntryType,
    HardState,
    Ready,
    Snapshot,
    SnapshotMetadata,
)
from minikv_core.storage import limits as wal_limits
from minikv_core.storage.errors import RecordDecodeError, StorageError
from minikv_core.storage.wal import Position, Wal, WalStats
from minikv_core.storage.wal_format import FRAME_HEADER_SIZE, SEGMENT_HEADER_SIZE
from minikv_core.storage.wal_records import (
    RaftEntry,
    RaftHardState,
    RaftSnapshotMark,
    RecordType,
)

SNAPSHOT_META_ENTRY_TYPE = 0xFF
"""Reserved RAFT_ENTRY type: the metadata of the RAFT_SNAPSHOT mark that follows it."""

_ENTRY_TYPES = frozenset(int(t) for t in EntryType)
assert SNAPSHOT_META_ENTRY_TYPE not in _ENTRY_TYPES

_SNAPSHOT_META_FORMAT = 1
_SNAPSHOT_META_HEADER = struct.Struct("<BBII")  # format, kind, voter count, learner count
_U64_MAX = 2**64 - 1

_RAFT_ENTRY = int(RecordType.RAFT_ENTRY)
_RAFT_HARD_STATE = int(RecordType.RAFT_HARD_STATE)
_RAFT_SNAPSHOT = int(RecordType.RAFT_SNAPSHOT)

Record = tuple[int, bytes]


class MarkKind(enum.IntEnum):
    COMPACTION = 1
    """The host compacted its log: entries <= index are dropped, later ones stay."""
    INSTALL = 2
    """A snapshot from the leader (Raft §7) replaced the whole log."""
    REMOVED = 3
    """The group left this node (its replica was moved or rebuilt): replay forgets every
    record of it written before this mark. A group created again later starts fresh."""


# ------------------------------------------------------------------------------- errors


class RaftLogError(StorageError):
    """Base of the node Raft log's errors."""


class RaftLogCorruptionError(RaftLogError):
    """The WAL's records do not form a valid Raft log; names the segment file and offset.

    Every record passed its CRC, so this is a writer bug or records missing from the middle
    (a deleted segment). The node refuses to start (DESIGN: Storage).
    """

    def __init__(self, directory: Path, position: Position | None, reason: str) -> None:
        self.directory = directory
        self.position = position
        self.reason = reason
        where = (
            f"segment {position.segment} byte offset {position.offset}"
            if position is not None
            else "end of log"
        )
        super().__init__(f"Raft log in WAL {directory}: {where}: {reason}")


class RaftLogInputError(RaftLogError, ValueError):
    """A Ready or request the log refuses (it would break a Raft invariant); nothing written."""


class RaftLogFailedError(RaftLogError):
    """A write failed or was interrupted after it may have reached the WAL: memory and disk
    may disagree, so the log refuses further calls. Close it and reopen (replay)."""


# ----------------------------------------------------------------------------- codecs


def encode_snapshot_meta(kind: MarkKind, conf_state: ConfState) -> bytes:
    voters, learners = conf_state.voters, conf_state.learners
    ids = (*voters, *learners)
    for node_id in ids:
        if type(node_id) is not int or not 0 < node_id <= _U64_MAX:
            raise RaftLogInputError(f"conf state node id {node_id!r} is not a u64 > 0")
    header = _SNAPSHOT_META_HEADER.pack(_SNAPSHOT_META_FORMAT, kind, len(voters), len(learners))
    return header + struct.pack(f"<{len(ids)}Q", *ids)


def decode_snapshot_meta(data: bytes) -> tuple[MarkKind, ConfState]:
    """Raises ValueError naming the problem."""
    size = _SNAPSHOT_META_HEADER.size
    if len(data) < size:
        raise ValueError(f"snapshot metadata of {len(data)} bytes is shorter than its header")
    version, kind, voter_count, learner_count = _SNAPSHOT_META_HEADER.unpack_from(data, 0)
    if version != _SNAPSHOT_META_FORMAT:
        raise ValueError(f"unknown snapshot metadata format {version}")
    try:
        mark_kind = MarkKind(kind)
    except ValueError:
        raise ValueError(f"unknown snapshot mark kind {kind}") from None
    count = voter_count + learner_count
    if len(data) != size + 8 * count:
        raise ValueError(
            f"snapshot metadata is {len(data)} bytes, expected {size + 8 * count} for "
            f"{voter_count} voters and {learner_count} learners"
        )
    ids = struct.unpack_from(f"<{count}Q", data, size)
    return mark_kind, ConfState(tuple(ids[:voter_count]), tuple(ids[voter_count:]))


def _snapshot_records(group_id: int, metadata: SnapshotMetadata, kind: MarkKind) -> list[Record]:
    meta = RaftEntry(
        group_id,
        metadata.term,
        metadata.index,
        SNAPSHOT_META_ENTRY_TYPE,
        encode_snapshot_meta(kind, metadata.conf_state),
    )
    mark = RaftSnapshotMark(group_id, metadata.index, metadata.term)
    return [(_RAFT_ENTRY, meta.encode()), (_RAFT_SNAPSHOT, mark.encode())]


def _hard_state_record(group_id: int, hard_state: HardState) -> Record:
    record = RaftHardState(group_id, hard_state.term, hard_state.vote, hard_state.commit)
    return (_RAFT_HARD_STATE, record.encode())


# --------------------------------------------------------------------------- storage


SnapshotDataSource = Callable[[SnapshotMetadata], bytes]


class GroupStorage(MemoryStorage):
    """A group's MemoryStorage, plus where its snapshot *data* comes from after a restart.

    The log persists snapshot metadata only; the data (the engine's state) lives with the
    engine. A snapshot taken or installed during this run keeps its data in memory as
    MemoryStorage does; after a restart the replayed snapshot has empty data, and
    `snapshot()` asks `snapshot_data_source(metadata)` (set by the host) for it. The core
    calls `snapshot()` only to ship a snapshot to a lagging follower.
    """

    __slots__ = ("_packed", "group_id", "pack_in_background", "snapshot_data_source")

    def __init__(self, group_id: int, conf_state: ConfState | None = None) -> None:
        super().__init__(conf_state)
        self.group_id = group_id
        self.snapshot_data_source: SnapshotDataSource | None = None
        self.pack_in_background: Callable[[SnapshotMetadata], None] | None = None
        """Set by the host: build the data of this snapshot off the event loop and hand it to
        `set_packed`. Without it, `snapshot()` packs inline (tests, tools)."""
        self._packed: Snapshot | None = None

    def snapshot(self) -> Snapshot:
        """The latest snapshot with its data. Packing the engine's state takes long, so with
        `pack_in_background` set the first call starts it and raises
        SnapshotTemporarilyUnavailableError (the core retries on a later heartbeat, as with
        etcd); the packed data is then kept, for every follower that needs it, until a newer
        snapshot replaces it."""
        stored = super().snapshot()
        source = self.snapshot_data_source
        if stored.data or stored.is_empty or source is None:
            return stored
        packed = self._packed
        if packed is not None and packed.metadata == stored.metadata:
            return packed
        if self.pack_in_background is None:
            return Snapshot(stored.metadata, source(stored.metadata))
        self.pack_in_background(stored.metadata)
        raise SnapshotTemporarilyUnavailableError(
            f"group {self.group_id}: snapshot {stored.metadata.index} is being packed"
        )

    def set_packed(self, snapshot: Snapshot) -> None:
        """The data `pack_in_background` built; ignored if a newer snapshot came since."""
        if snapshot.metadata == super().snapshot().metadata:
            self._packed = snapshot

    def snapshot_metadata(self) -> SnapshotMetadata:
        """The latest snapshot's metadata, without fetching its data."""
        return super().snapshot().metadata

    def hard_state(self) -> HardState:
        return self.initial_state()[0]

    def _set_bootstrap(self, conf_state: ConfState) -> None:
        assert self.last_index() == 0 and self.snapshot_metadata().index == 0
        self._snapshot = Snapshot(SnapshotMetadata(0, 0, conf_state), b"")

    def _set_founding(self, conf_state: ConfState) -> None:
        """The membership at index 0 of a replica that joined empty and has entries since."""
        assert self.snapshot_metadata().index == 0
        self._snapshot = Snapshot(SnapshotMetadata(0, 0, conf_state), b"")


# --------------------------------------------------------------------------- tracking


class _EntryRuns:
    """Which WAL segment holds the record of each live entry of one group.

    Runs of consecutive indexes written to one segment: `_starts[k]` is the first index of
    run k, `_segments[k]` its segment. Segments never decrease with the index (an entry is
    written after every lower live entry, or the write truncated them), so the oldest segment
    a group needs is `_segments[0]`.
    """

    __slots__ = ("_last", "_segments", "_starts")

    def __init__(self) -> None:
        self._starts: list[int] = []
        self._segments: list[int] = []
        self._last = 0

    @property
    def first_index(self) -> int | None:
        return self._starts[0] if self._starts else None

    @property
    def last_index(self) -> int | None:
        return self._last if self._starts else None

    @property
    def oldest_segment(self) -> int | None:
        return self._segments[0] if self._segments else None

    def clear(self) -> None:
        self._starts.clear()
        self._segments.clear()
        self._last = 0

    def write(self, first: int, last: int, segment: int) -> None:
        """Entries first..last were written to `segment`, replacing any from `first` on."""
        assert first <= last
        starts, segments = self._starts, self._segments
        if not starts or first <= starts[0]:
            self.clear()
        elif first > self._last + 1:
            raise ValueError(f"entry {first} leaves a gap after {self._last}")
        else:
            cut = bisect_left(starts, first)
            del starts[cut:]
            del segments[cut:]
        assert not segments or segments[-1] <= segment
        if not segments or segments[-1] != segment:
            starts.append(first)
            segments.append(segment)
        self._last = last

    def drop_through(self, index: int) -> None:
        """Entries <= index are covered by a snapshot."""
        starts = self._starts
        if not starts or index < starts[0]:
            return
        if index >= self._last:
            self.clear()
            return
        keep = bisect_right(starts, index + 1) - 1
        del starts[:keep]
        del self._segments[:keep]
        starts[0] = index + 1


class _Group:
    """One group's durable facts (what the WAL holds) next to its MemoryStorage."""

    __slots__ = ("hard_state", "hard_state_segment", "mark", "mark_segment", "runs", "storage")

    def __init__(self, storage: GroupStorage) -> None:
        self.storage = storage
        self.runs = _EntryRuns()
        self.hard_state: HardState | None = None  # the latest durable one
        self.hard_state_segment = 0
        self.mark: SnapshotMetadata | None = None  # the latest durable mark
        self.mark_segment = 0

    @property
    def is_fresh(self) -> bool:
        return self.hard_state is None and self.mark is None and self.runs.first_index is None


@dataclass(frozen=True, slots=True)
class GroupLogInfo:
    """One group's log as the WAL holds it (for the admin API and tests)."""

    group_id: int
    hard_state: HardState
    snapshot_index: int  # the latest durable snapshot mark (0: none)
    snapshot_term: int
    conf_state: ConfState
    first_index: int  # in the MemoryStorage (may be compacted further than the mark)
    last_index: int
    oldest_entry_segment: int | None  # the segment holding its oldest live entry record


@dataclass(frozen=True, slots=True)
class TruncateResult:
    deleted: tuple[Path, ...]
    records_reappended: int
    truncated_before: Position


# ------------------------------------------------------------------------------ plans


@dataclass(slots=True)
class _ReadyPlan:
    group_id: int
    group: _Group
    ready: Ready
    install: bool
    entries_first: int  # the first entry written (0: none)
    entries_last: int
    entries_ordinal: int  # ordinal of the first entry record in the call's record list
    hard_state_ordinal: int  # -1: none
    mark_ordinal: int  # -1: none
    volatile_commit: bool = False  # a commit-only hard state: applied, not written


@dataclass(slots=True)
class _MarkPlan:
    group_id: int
    group: _Group
    metadata: SnapshotMetadata
    ordinal: int
    bootstrap: bool = False


# ------------------------------------------------------------------------------- log


class NodeRaftLog:
    """All Raft groups of one node over one WAL. Create with `NodeRaftLog.open(wal_dir)`."""

    def __init__(self, wal: Wal, groups: dict[int, _Group]) -> None:
        """Private: use `NodeRaftLog.open`."""
        self._wal = wal
        self._groups = groups
        self._busy: str | None = None
        self._failure: str | None = None

    # ----------------------------------------------------------------------- opening

    @classmethod
    def open(
        cls,
        wal_dir: str | Path,
        *,
        segment_size_bytes: int = wal_limits.WAL_SEGMENT_SIZE_BYTES_DEFAULT,
        preallocate: bool = True,
    ) -> NodeRaftLog:
        """Open (creating if needed) the node's WAL and rebuild every group's log from it.

        Raises the WAL's errors (WalCorruptionError, WalLockedError...) and
        RaftLogCorruptionError if the records do not form a valid log for some group.
        """
        wal = Wal.open(wal_dir, segment_size_bytes=segment_size_bytes, preallocate=preallocate)
        try:
            groups = _replay(wal)
        except BaseException:
            wal.close()
            raise
        return cls(wal, groups)

    # ------------------------------------------------------------------------- reads

    @property
    def wal(self) -> Wal:
        """The underlying WAL (stats, segments) for the admin API. Do not append to it."""
        return self._wal

    @property
    def stats(self) -> WalStats:
        return self._wal.stats

    def groups(self) -> list[int]:
        """Ids of every group known: replayed, persisted or asked for."""
        return sorted(self._groups)

    def storage(self, group_id: int) -> GroupStorage:
        """The group's storage (the core reads it); an empty one for a group never seen."""
        return self._group(group_id).storage

    def describe(self) -> list[GroupLogInfo]:
        infos: list[GroupLogInfo] = []
        for group_id in sorted(self._groups):
            group = self._groups[group_id]
            mark = group.mark or SnapshotMetadata()
            storage = group.storage
            infos.append(
                GroupLogInfo(
                    group_id=group_id,
                    hard_state=group.hard_state or HardState(),
                    snapshot_index=mark.index,
                    snapshot_term=mark.term,
                    conf_state=storage.snapshot_metadata().conf_state,
                    first_index=storage.first_index(),
                    last_index=storage.last_index(),
                    oldest_entry_segment=group.runs.oldest_segment,
                )
            )
        return infos

    def truncatable_position(self) -> Position:
        """Segments before `.segment` hold no live entry of any group (their latest hard
        states and marks aside, which `truncate()` re-appends first)."""
        segment = self._wal.end_position.segment
        for group in self._groups.values():
            oldest = group.runs.oldest_segment
            if oldest is not None and oldest < segment:
                segment = oldest
        return Position(segment, SEGMENT_HEADER_SIZE)

    def _group(self, group_id: int) -> _Group:
        group = self._lookup(group_id)
        self._groups.setdefault(group_id, group)
        return group

    def _lookup(self, group_id: int) -> _Group:
        """The group, or a new one not registered yet (a refused call must leave no trace)."""
        group = self._groups.get(group_id)
        if group is None:
            if type(group_id) is not int or not 0 <= group_id <= limits.RAFT_GROUP_ID_MAX:
                raise RaftLogInputError(f"group id must be a u32, got {group_id!r}")
            group = _Group(GroupStorage(group_id))
        return group

    # ----------------------------------------------------------------------- persist

    def persist(self, readies: Sequence[tuple[int, Ready]]) -> None:
        """Make every Ready's snapshot, entries and hard state durable with one append (one
        write + one fdatasync), then apply each to its group's storage. A hard state that
        changes only the commit index of a Ready needing no sync is applied, not written
        ("Sync policy" in the module docstring); a call with nothing else writes nothing.

        Raises RaftLogInputError, writing nothing, if a Ready would break a Raft invariant.
        Blocks on fsync: from an event loop use `persist_async`.
        """
        self._enter_sync("persist")
        try:
            records, plans = self._plan_readies(readies)
            positions = self._append_sync(records)
            self._finish_readies(plans, positions)
        finally:
            self._busy = None

    async def persist_async(
        self, readies: Sequence[tuple[int, Ready]], *, inline: bool = False
    ) -> None:
        """`persist` without blocking the event loop (the WAL fsyncs on its own thread), or,
        with `inline=True`, blocking it for the write and fsync when that is cheaper than
        the hand-off to the thread (see `Wal.append`)."""
        self._enter("persist_async")
        try:
            records, plans = self._plan_readies(readies)
            positions = await self._append_async(records, inline=inline)
            self._finish_readies(plans, positions)
        finally:
            self._busy = None

    def _plan_readies(
        self, readies: Sequence[tuple[int, Ready]]
    ) -> tuple[list[Record], list[_ReadyPlan]]:
        records: list[Record] = []
        plans: list[_ReadyPlan] = []
        seen: set[int] = set()
        for group_id, ready in readies:
            if group_id in seen:
                raise RaftLogInputError(f"two Readies for group {group_id} in one persist call")
            seen.add(group_id)
            plan = self._plan_ready(self._lookup(group_id), group_id, ready, records)
            if plan is not None:
                plans.append(plan)
        return records, plans

    def _plan_ready(
        self, group: _Group, group_id: int, ready: Ready, records: list[Record]
    ) -> _ReadyPlan | None:
        """Check `ready` against the group's log and encode its records (see the module
        docstring for their order). Mirrors MemoryStorage.persist, so that applying it after
        the write cannot fail."""
        storage = group.storage
        stored = storage.hard_state()
        offset = storage.first_index() - 1
        last = storage.last_index()
        previous_term = storage.term(last)
        plan = _ReadyPlan(group_id, group, ready, False, 0, 0, 0, -1, -1)
        snapshot = ready.snapshot
        if not snapshot.is_empty:
            metadata = snapshot.metadata
            if metadata.index <= storage.snapshot_metadata().index:
                raise RaftLogInputError(
                    f"group {group_id}: snapshot at {metadata.index} is not newer than the "
                    f"stored one at {storage.snapshot_metadata().index}"
                )
            plan.install = True
            plan.mark_ordinal = len(records) + 1
            records.extend(_snapshot_records(group_id, metadata, MarkKind.INSTALL))
            offset = last = metadata.index
            previous_term = metadata.term
        entries = ready.entries
        if entries and entries[-1].index > offset:
            first = entries[0].index
            skip = max(0, offset + 1 - first)
            new_first = first + skip
            if new_first > last + 1:
                raise RaftLogInputError(
                    f"group {group_id}: entry {new_first} leaves a gap after last index {last}"
                )
            if new_first <= last:
                # Raft §5.3 overwrites only conflicting, hence uncommitted, entries (§5.4).
                if new_first <= stored.commit:
                    raise RaftLogInputError(
                        f"group {group_id}: entry {new_first} would overwrite a committed "
                        f"entry (commit index {stored.commit})"
                    )
                previous_term = storage.term(new_first - 1)
            term_max = (ready.hard_state or stored).term
            plan.entries_first = new_first
            plan.entries_ordinal = len(records)
            expected = first
            append = records.append
            for position, entry in enumerate(entries):
                if entry.index != expected:
                    raise RaftLogInputError(
                        f"group {group_id}: entries are not consecutive ({expected - 1} then "
                        f"{entry.index})"
                    )
                expected += 1
                if position < skip:
                    continue
                if entry.type not in _ENTRY_TYPES:
                    raise RaftLogInputError(
                        f"group {group_id}: entry {entry.index} has unknown type {entry.type!r}"
                    )
                # Terms never decrease along a log, and no entry is newer than the node's term.
                if not previous_term <= entry.term <= term_max:
                    raise RaftLogInputError(
                        f"group {group_id}: entry {entry.index} has term {entry.term}, outside "
                        f"[{previous_term}, {term_max}] (previous entry's term, current term)"
                    )
                previous_term = entry.term
                append(
                    (
                        _RAFT_ENTRY,
                        RaftEntry(
                            group_id, entry.term, entry.index, entry.type, entry.data
                        ).encode(),
                    )
                )
            last = plan.entries_last = entries[-1].index
        hard_state = ready.hard_state
        if hard_state is not None:
            if hard_state.term < stored.term:
                raise RaftLogInputError(
                    f"group {group_id}: term goes back from {stored.term} to {hard_state.term}"
                )
            if hard_state.term == stored.term and stored.vote not in (NONE, hard_state.vote):
                # Raft §5.2: at most one vote per term, and it survives crashes.
                raise RaftLogInputError(
                    f"group {group_id}: vote changes within term {stored.term} "
                    f"({stored.vote} -> {hard_state.vote})"
                )
            if not stored.commit <= hard_state.commit <= last:
                raise RaftLogInputError(
                    f"group {group_id}: commit index {hard_state.commit} is outside "
                    f"[{stored.commit}, {last}] (stored commit, last index)"
                )
            if (
                ready.must_sync
                or plan.install
                or plan.entries_first
                or hard_state.term != stored.term
                or hard_state.vote != stored.vote
            ):
                plan.hard_state_ordinal = len(records)
                records.append(_hard_state_record(group_id, hard_state))
            else:
                plan.volatile_commit = True  # see "Sync policy" in the module docstring
        if (
            plan.mark_ordinal < 0
            and plan.entries_first == 0
            and plan.hard_state_ordinal < 0
            and not plan.volatile_commit
        ):
            return None
        return plan

    def _finish_readies(self, plans: list[_ReadyPlan], positions: _Positions) -> None:
        try:
            for plan in plans:
                group = self._groups.setdefault(plan.group_id, plan.group)
                ready = plan.ready
                group.storage.persist(ready)
                if plan.install:
                    group.runs.clear()
                    group.mark = ready.snapshot.metadata
                    group.mark_segment = positions.segment_of(plan.mark_ordinal)
                if plan.entries_first:
                    count = plan.entries_last - plan.entries_first + 1
                    first_segment = positions.segment_of(plan.entries_ordinal)
                    last_segment = positions.segment_of(plan.entries_ordinal + count - 1)
                    if first_segment == last_segment:
                        group.runs.write(plan.entries_first, plan.entries_last, first_segment)
                    else:  # the call was split across segments (a round larger than one)
                        for number in range(count):
                            index = plan.entries_first + number
                            segment = positions.segment_of(plan.entries_ordinal + number)
                            group.runs.write(index, index, segment)
                if plan.hard_state_ordinal >= 0:
                    assert ready.hard_state is not None
                    group.hard_state = ready.hard_state
                    group.hard_state_segment = positions.segment_of(plan.hard_state_ordinal)
        except BaseException as exc:
            self._failure = f"applying a durable batch failed: {type(exc).__name__}: {exc}"
            raise

    # ---------------------------------------------------------------- snapshot marks

    def record_compaction(self, group_id: int, metadata: SnapshotMetadata) -> None:
        """`record_compactions([(group_id, metadata)])`."""
        self.record_compactions([(group_id, metadata)])

    def record_compactions(self, marks: Sequence[tuple[int, SnapshotMetadata]]) -> None:
        """Durably mark each group's log as compacted up to `metadata.index` (one append).

        Precondition (the caller's promise): the engine's *durable* state covers every entry
        up to `metadata.index` (`engine.durable_applied_index >= metadata.index`): from now
        on those entries may be deleted from the WAL. `metadata` is the one `RawNode.compact`
        returned (its conf_state is the membership at that index); if the group's storage is
        not compacted that far yet, it is compacted here. A mark not newer than the group's
        latest durable one is skipped.
        """
        self._enter_sync("record_compactions")
        try:
            records, plans = self._plan_marks(marks)
            positions = self._append_sync(records)
            self._finish_marks(plans, positions)
        finally:
            self._busy = None

    async def record_compactions_async(self, marks: Sequence[tuple[int, SnapshotMetadata]]) -> None:
        self._enter("record_compactions_async")
        try:
            records, plans = self._plan_marks(marks)
            positions = await self._append_async(records)
            self._finish_marks(plans, positions)
        finally:
            self._busy = None

    def _plan_marks(
        self, marks: Sequence[tuple[int, SnapshotMetadata]]
    ) -> tuple[list[Record], list[_MarkPlan]]:
        records: list[Record] = []
        plans: list[_MarkPlan] = []
        seen: set[int] = set()
        for group_id, metadata in marks:
            if group_id in seen:
                raise RaftLogInputError(f"two compaction marks for group {group_id} in one call")
            seen.add(group_id)
            group = self._lookup(group_id)
            storage = group.storage
            index = metadata.index
            durable = group.mark.index if group.mark is not None else 0
            if index <= durable:
                continue
            if index > storage.last_index():
                raise RaftLogInputError(
                    f"group {group_id}: cannot compact to {index}, beyond last index "
                    f"{storage.last_index()}"
                )
            stored_metadata = storage.snapshot_metadata()
            if index == stored_metadata.index and metadata != stored_metadata:
                raise RaftLogInputError(
                    f"group {group_id}: compaction metadata {metadata} differs from the "
                    f"storage's snapshot {stored_metadata}"
                )
            if index >= storage.first_index() - 1 and storage.term(index) != metadata.term:
                raise RaftLogInputError(
                    f"group {group_id}: entry {index} has term {storage.term(index)}, "
                    f"not {metadata.term}"
                )
            plans.append(_MarkPlan(group_id, group, metadata, len(records) + 1))
            records.extend(_snapshot_records(group_id, metadata, MarkKind.COMPACTION))
        return records, plans

    def _finish_marks(self, plans: list[_MarkPlan], positions: _Positions) -> None:
        try:
            for plan in plans:
                group = self._groups.setdefault(plan.group_id, plan.group)
                metadata = plan.metadata
                if plan.bootstrap:
                    group.storage._set_bootstrap(metadata.conf_state)
                elif group.storage.snapshot_metadata().index < metadata.index:
                    group.storage.compact(Snapshot(metadata, b""))
                group.runs.drop_through(metadata.index)
                group.mark = metadata
                group.mark_segment = positions.segment_of(plan.ordinal)
        except BaseException as exc:
            self._failure = f"applying a durable mark failed: {type(exc).__name__}: {exc}"
            raise

    def bootstrap_group(self, group_id: int, conf_state: ConfState) -> GroupStorage:
        """Durably create a group with its founding membership (a mark at index 0).

        Founding members of a group call this once with the same ConfState; a node joining
        later does not (it starts empty and learns the membership from a snapshot). Raises
        RaftLogInputError if the group already has durable state.
        """
        self._enter_sync("bootstrap_group")
        try:
            records, plans = self._plan_bootstrap(group_id, conf_state)
            positions = self._append_sync(records)
            self._finish_marks(plans, positions)
        finally:
            self._busy = None
        return self._groups[group_id].storage

    async def bootstrap_group_async(self, group_id: int, conf_state: ConfState) -> GroupStorage:
        self._enter("bootstrap_group_async")
        try:
            records, plans = self._plan_bootstrap(group_id, conf_state)
            positions = await self._append_async(records)
            self._finish_marks(plans, positions)
        finally:
            self._busy = None
        return self._groups[group_id].storage

    async def create_group_async(self, group_id: int) -> GroupStorage:
        """Durably register a replica joining an existing group (empty membership: it learns
        it from the group's leader). Raises RaftLogInputError if the group exists here."""
        self._enter("create_group_async")
        try:
            if group_id in self._groups:
                raise RaftLogInputError(f"group {group_id} already exists on this node")
            group = self._lookup(group_id)
            positions = await self._append_async([_hard_state_record(group_id, HardState())])
            group.hard_state = HardState()
            group.hard_state_segment = positions.segment_of(0)
            self._groups[group_id] = group
        finally:
            self._busy = None
        return group.storage

    async def record_founding_async(self, group_id: int, conf_state: ConfState) -> None:
        """Durably give a replica that joined empty (`create_group_async`) the founding
        membership it learned (RawNode.take_learned_founding): a mark at index 0, as
        `bootstrap_group` writes for a founding member, so that after a restart it replays
        its log's membership changes from there like every member. Without it a group whose
        voters all joined after the bootstrap came back from a full restart with no member
        able to campaign. Does nothing once the group knows a membership (it compacted or
        installed a snapshot since: that mark carries one)."""
        self._enter("record_founding_async")
        try:
            group = self._groups.get(group_id)
            if group is None:
                raise RaftLogInputError(f"group {group_id} does not exist on this node")
            if set(conf_state.voters) & set(conf_state.learners) or not conf_state.voters:
                raise RaftLogInputError(
                    f"group {group_id}: a founding membership needs voters, disjoint from "
                    f"learners: {conf_state}"
                )
            stored = group.storage.snapshot_metadata()
            if stored.index != 0 or stored.conf_state.voters:
                return
            metadata = SnapshotMetadata(0, 0, conf_state)
            positions = await self._append_async(
                _snapshot_records(group_id, metadata, MarkKind.COMPACTION)
            )
            group.storage._set_founding(conf_state)
            group.mark = metadata
            group.mark_segment = positions.segment_of(1)
        finally:
            self._busy = None

    async def remove_group_async(self, group_id: int) -> None:
        """Durably forget the group (a REMOVED mark); its records become dead weight that
        truncation deletes with their segments. Raises RaftLogInputError if unknown."""
        self._enter("remove_group_async")
        try:
            if group_id not in self._groups:
                raise RaftLogInputError(f"group {group_id} does not exist on this node")
            await self._append_async(
                _snapshot_records(group_id, SnapshotMetadata(0, 0, ConfState()), MarkKind.REMOVED)
            )
            del self._groups[group_id]
        finally:
            self._busy = None

    def _plan_bootstrap(
        self, group_id: int, conf_state: ConfState
    ) -> tuple[list[Record], list[_MarkPlan]]:
        group = self._lookup(group_id)
        if not group.is_fresh or group.storage.last_index() != 0:
            raise RaftLogInputError(f"group {group_id} already has a log; cannot bootstrap it")
        if set(conf_state.voters) & set(conf_state.learners) or not conf_state.voters:
            raise RaftLogInputError(
                f"group {group_id}: bootstrap membership needs voters, disjoint from "
                f"learners: {conf_state}"
            )
        metadata = SnapshotMetadata(0, 0, conf_state)
        records = _snapshot_records(group_id, metadata, MarkKind.COMPACTION)
        return records, [_MarkPlan(group_id, group, metadata, 1, bootstrap=True)]

    # -------------------------------------------------------------------- truncation

    def truncate(self) -> TruncateResult:
        """Delete the WAL segments no group needs (see the module docstring's invariant).

        Re-appends (one synced append) the latest hard state and snapshot mark of every group
        whose records live in a segment about to go, then deletes the segments before
        `truncatable_position()`. Blocks on fsync: from an event loop use `truncate_async`.
        """
        self._enter_sync("truncate")
        try:
            target, batches, plans = self._plan_truncate()
            positions = [self._append_sync(records) for records in batches]
            self._finish_truncate(plans, positions)
            deleted = self._wal.truncate_before(target)
        finally:
            self._busy = None
        return TruncateResult(tuple(deleted), sum(map(len, batches)), target)

    async def truncate_async(self) -> TruncateResult:
        self._enter("truncate_async")
        try:
            target, batches, plans = self._plan_truncate()
            positions = [await self._append_async(records) for records in batches]
            self._finish_truncate(plans, positions)
            deleted = await asyncio.to_thread(self._wal.truncate_before, target)
        finally:
            self._busy = None
        return TruncateResult(tuple(deleted), sum(map(len, batches)), target)

    def _plan_truncate(
        self,
    ) -> tuple[Position, list[list[Record]], list[list[tuple[_Group, str, int]]]]:
        target = self.truncatable_position()
        batches: list[list[Record]] = []
        plans: list[list[tuple[_Group, str, int]]] = []
        if target.segment <= self._wal.first_position.segment:
            return target, batches, plans
        bound = min(limits.RAFT_LOG_REAPPEND_BATCH_BYTES_MAX, self._segment_capacity() // 2)
        records: list[Record] = []
        plan: list[tuple[_Group, str, int]] = []
        size = 0
        for group_id in sorted(self._groups):
            group = self._groups[group_id]
            moved: list[tuple[str, list[Record]]] = []
            if group.mark is not None and group.mark_segment < target.segment:
                moved.append(("mark", _snapshot_records(group_id, group.mark, MarkKind.COMPACTION)))
            if group.hard_state is not None and group.hard_state_segment < target.segment:
                moved.append(("hard_state", [_hard_state_record(group_id, group.hard_state)]))
            for what, group_records in moved:
                group_size = sum(FRAME_HEADER_SIZE + len(p) for _, p in group_records)
                if records and size + group_size > bound:
                    batches.append(records)
                    plans.append(plan)
                    records, plan, size = [], [], 0
                plan.append((group, what, len(records) + len(group_records) - 1))
                records.extend(group_records)
                size += group_size
        if records:
            batches.append(records)
            plans.append(plan)
        return target, batches, plans

    def _finish_truncate(
        self, plans: list[list[tuple[_Group, str, int]]], positions: list[_Positions]
    ) -> None:
        for plan, batch_positions in zip(plans, positions, strict=True):
            for group, what, ordinal in plan:
                segment = batch_positions.segment_of(ordinal)
                if what == "mark":
                    group.mark_segment = segment
                else:
                    group.hard_state_segment = segment

    # ------------------------------------------------------------------------ writing

    def _enter_sync(self, what: str) -> None:
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            pass
        else:
            raise RuntimeError(
                f"NodeRaftLog.{what} blocks on fsync; from an event loop use {what}_async"
            )
        self._enter(what)

    def _enter(self, what: str) -> None:
        if self._failure is not None:
            raise RaftLogFailedError(
                f"the Raft log in {self._wal.directory} refuses {what}: {self._failure}; "
                "close and reopen it"
            )
        if self._busy is not None:
            raise RuntimeError(
                f"NodeRaftLog.{what} overlaps {self._busy}: calls must not overlap (the log's "
                "meaning depends on record order)"
            )
        self._busy = what

    def _segment_capacity(self) -> int:
        return self._wal.segment_size_bytes - SEGMENT_HEADER_SIZE

    def _chunks(self, records: list[Record]) -> list[list[Record]]:
        """Normally one chunk: a call is one append. Only a call larger than a segment is
        split (a WAL batch never spans segments)."""
        capacity = self._segment_capacity()
        sizes = [FRAME_HEADER_SIZE + len(payload) for _, payload in records]
        if sum(sizes) <= capacity:
            return [records]
        chunks: list[list[Record]] = []
        chunk: list[Record] = []
        chunk_size = 0
        for record, size in zip(records, sizes, strict=True):
            if size > capacity:
                raise RaftLogInputError(
                    f"a record of {size} bytes cannot fit a WAL segment ({capacity} bytes)"
                )
            if chunk and chunk_size + size > capacity:
                chunks.append(chunk)
                chunk, chunk_size = [], 0
            chunk.append(record)
            chunk_size += size
        chunks.append(chunk)
        return chunks

    def _append_sync(self, records: list[Record]) -> _Positions:
        if not records:
            return _Positions([], [])
        chunks = self._chunks(records)
        segments: list[int] = []
        try:
            for chunk in chunks:
                segments.append(self._wal.append_sync(chunk).segment)
        except BaseException as exc:
            self._failure = f"a WAL append failed: {type(exc).__name__}: {exc}"
            raise
        return _Positions(_chunk_starts(chunks), segments)

    async def _append_async(self, records: list[Record], *, inline: bool = False) -> _Positions:
        if not records:
            return _Positions([], [])
        chunks = self._chunks(records)
        segments: list[int] = []
        try:
            for chunk in chunks:
                segments.append((await self._wal.append(chunk, inline=inline)).segment)
        except BaseException as exc:
            # Includes cancellation: the batch may still be written after we stop waiting.
            self._failure = f"a WAL append failed: {type(exc).__name__}: {exc}"
            raise
        return _Positions(_chunk_starts(chunks), segments)

    # ------------------------------------------------------------------------ closing

    def close(self) -> None:
        self._wal.close()

    async def aclose(self) -> None:
        await self._wal.aclose()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"NodeRaftLog({str(self._wal.directory)!r}, groups={len(self._groups)})"


def _chunk_starts(chunks: list[list[Record]]) -> list[int]:
    starts: list[int] = []
    total = 0
    for chunk in chunks:
        starts.append(total)
        total += len(chunk)
    return starts


class _Positions:
    """Which segment each record of one call landed in (a call is one append, unless it was
    split because it is larger than a segment)."""

    __slots__ = ("_segments", "_starts")

    def __init__(self, starts: list[int], segments: list[int]) -> None:
        self._starts = starts
        self._segments = segments

    def segment_of(self, ordinal: int) -> int:
        if len(self._segments) == 1:
            return self._segments[0]
        return self._segments[bisect_right(self._starts, ordinal) - 1]


# ------------------------------------------------------------------------------ replay


class _ReplayGroup:
    __slots__ = ("entries", "first", "group", "hard_state_position", "pending_meta")

    def __init__(self, group: _Group) -> None:
        self.group = group
        self.entries: list[Entry] = []
        self.first = 0  # index of entries[0]
        self.pending_meta: tuple[int, int, MarkKind, ConfState] | None = None
        self.hard_state_position: Position | None = None


def _replay(wal: Wal) -> dict[int, _Group]:
    """Rebuild every group from the WAL (rules in the module docstring)."""
    directory = wal.directory
    states: dict[int, _ReplayGroup] = {}

    def state_of(group_id: int) -> _ReplayGroup:
        state = states.get(group_id)
        if state is None:
            state = states[group_id] = _ReplayGroup(_Group(GroupStorage(group_id)))
        return state

    for position, record_type, payload in wal.read():
        try:
            if record_type == _RAFT_ENTRY:
                _replay_entry(state_of, RaftEntry.decode(payload), position)
            elif record_type == _RAFT_HARD_STATE:
                hard_state = RaftHardState.decode(payload)
                state = state_of(hard_state.group_id)
                state.group.hard_state = HardState(
                    hard_state.term, hard_state.vote, hard_state.commit
                )
                state.group.hard_state_segment = position.segment
                state.hard_state_position = position
            elif record_type == _RAFT_SNAPSHOT:
                mark = RaftSnapshotMark.decode(payload)
                if _replay_mark(state_of, mark, position):
                    del states[mark.group_id]
            else:
                raise ValueError(
                    f"a {RecordType(record_type).name} record is not part of a Raft log "
                    "(is this the WAL of a standalone store?)"
                )
        except (ValueError, RecordDecodeError) as exc:
            raise RaftLogCorruptionError(directory, position, str(exc)) from None
    return {group_id: _build(directory, group_id, state) for group_id, state in states.items()}


def _replay_entry(
    state_of: Callable[[int], _ReplayGroup], record: RaftEntry, position: Position
) -> None:
    state = state_of(record.group_id)
    group = state.group
    index = record.index
    if record.entry_type == SNAPSHOT_META_ENTRY_TYPE:
        kind, conf_state = decode_snapshot_meta(record.data)
        state.pending_meta = (index, record.term, kind, conf_state)
        return
    if record.entry_type not in _ENTRY_TYPES:
        raise ValueError(f"group {record.group_id}: unknown entry type {record.entry_type}")
    if group.mark is not None and index <= group.mark.index:
        return  # covered by the snapshot
    entry = Entry(record.term, index, EntryType(record.entry_type), record.data)
    entries = state.entries
    if not entries or index < state.first:
        # The first entry seen since the snapshot (older segments may be gone), or an
        # overwrite below the first one seen: the run of entries restarts here.
        state.entries = [entry]
        state.first = index
    elif index <= state.first + len(entries):
        del entries[index - state.first :]  # Raft §5.3: drop the conflicting suffix
        entries.append(entry)
    else:
        raise ValueError(
            f"group {record.group_id}: entry {index} leaves a gap after "
            f"{state.first + len(entries) - 1}"
        )
    group.runs.write(index, index, position.segment)


def _replay_mark(
    state_of: Callable[[int], _ReplayGroup], record: RaftSnapshotMark, position: Position
) -> bool:
    """Apply a mark; True if it is a REMOVED mark (the caller forgets the group)."""
    state = state_of(record.group_id)
    group = state.group
    group_id, index, term = record.group_id, record.index, record.term
    meta = state.pending_meta
    state.pending_meta = None
    if meta is None or meta[:2] != (index, term):
        raise ValueError(
            f"group {group_id}: snapshot mark at {index}/{term} is not preceded by its "
            "metadata record"
        )
    kind, conf_state = meta[2], meta[3]
    if kind is MarkKind.REMOVED:
        return True
    current = group.mark
    if current is not None and (
        index < current.index or (index == current.index and kind is MarkKind.INSTALL)
    ):
        raise ValueError(
            f"group {group_id}: {kind.name} snapshot mark at {index} after one at "
            f"{current.index}: marks never go back"
        )
    entries = state.entries
    if kind is MarkKind.INSTALL:
        state.entries = []
        group.runs.clear()
    elif entries and state.first <= index:
        covered = index - state.first + 1
        if covered <= len(entries) and entries[covered - 1].term != term:
            raise ValueError(
                f"group {group_id}: compaction mark at {index} has term {term}, but entry "
                f"{index} has term {entries[covered - 1].term}"
            )
        del entries[:covered]
        state.first = index + 1
        group.runs.drop_through(index)
    group.mark = SnapshotMetadata(index, term, conf_state)
    group.mark_segment = position.segment
    return False


def _build(directory: Path, group_id: int, state: _ReplayGroup) -> _Group:
    group = state.group
    mark = group.mark or SnapshotMetadata()
    entries = state.entries
    if entries and state.first != mark.index + 1:
        raise RaftLogCorruptionError(
            directory,
            None,
            f"group {group_id}: entries start at {state.first} but the snapshot mark is at "
            f"{mark.index}: the records in between are missing",
        )
    last = mark.index + len(entries)
    hard_state = group.hard_state or HardState()
    if hard_state.commit > last:
        raise RaftLogCorruptionError(
            directory,
            state.hard_state_position,
            f"group {group_id}: commit index {hard_state.commit} is beyond the last entry {last}",
        )
    storage = group.storage
    if mark.index == 0:
        if group.mark is not None:
            storage._set_bootstrap(mark.conf_state)
    else:
        storage.apply_snapshot(Snapshot(mark, b""))
    storage.append(entries)
    storage.set_hard_state(hard_state)
    return group
