"""The stable log as the core sees it: a Protocol, and MemoryStorage, its in-memory model.

The core only *reads* stable storage (entries, terms, the latest snapshot) and asks it to
record a compaction; the host writes everything else after it has made a Ready durable, as in
etcd-io/raft's `storage.go`. A durable host keeps a MemoryStorage as the cache in front of its
WAL: append to the WAL, fsync, then `MemoryStorage.persist(ready)`.

Index layout of MemoryStorage: `_entries[0]` is a dummy entry holding the index and term of
the latest snapshot (or 0/0), so `term(snapshot_index)` is always answerable, and entry `i`
lives at `_entries[i - _entries[0].index]`.
"""

from __future__ import annotations

from typing import Protocol

from minikv_core.raft.types import (
    ConfState,
    Entry,
    HardState,
    Ready,
    Snapshot,
    SnapshotMetadata,
)


class StorageError(Exception):
    """Base class of storage errors the core understands."""


class CompactedError(StorageError):
    """The requested index is at or below the snapshot: the entry is gone (send a snapshot)."""


class UnavailableError(StorageError):
    """The requested index is beyond the last stored entry."""


class SnapshotOutOfDateError(StorageError):
    """A snapshot older than the one already stored was offered."""


class SnapshotTemporarilyUnavailableError(StorageError):
    """The snapshot's data is being prepared (etcd's ErrSnapshotTemporarilyUnavailable): the
    leader sends nothing to that follower now and tries again on its next heartbeat."""


class Storage(Protocol):
    """The read side of stable storage, plus recording a compaction (log compaction, §7)."""

    def initial_state(self) -> tuple[HardState, ConfState]:
        """The persisted HardState and the ConfState of the latest snapshot."""
        ...

    def entries(self, low: int, high: int, size_bytes_max: int) -> list[Entry]:
        """Entries [low, high), at least one if any, stopping before `size_bytes_max` of data.

        Raises CompactedError if low <= first_index() - 1, UnavailableError if high >
        last_index() + 1.
        """
        ...

    def term(self, index: int) -> int:
        """Term of entry `index`; valid for first_index() - 1 <= index <= last_index()."""
        ...

    def first_index(self) -> int:
        """Index of the first available entry (snapshot index + 1)."""
        ...

    def last_index(self) -> int:
        """Index of the last stored entry (the snapshot index if the log is empty)."""
        ...

    def snapshot(self) -> Snapshot:
        """The most recent snapshot (EMPTY_SNAPSHOT-like metadata index 0 if none), data
        included; may raise SnapshotTemporarilyUnavailableError while the data is prepared."""
        ...

    def snapshot_metadata(self) -> SnapshotMetadata:
        """The most recent snapshot's metadata alone: cheap, never prepares data (the core
        reads it on every heartbeat)."""
        ...

    def compact(self, snapshot: Snapshot) -> None:
        """Record `snapshot` as the latest one and drop the entries it covers.

        Called by `RawNode.compact()` with a snapshot of applied state. A durable
        implementation writes and fsyncs the snapshot before dropping log entries.
        """
        ...


class MemoryStorage:
    """An in-memory Storage. Used by tests, the simulator, the bench and as a host's cache."""

    __slots__ = ("_entries", "_hard_state", "_snapshot")

    def __init__(self, conf_state: ConfState | None = None) -> None:
        """A fresh log. `conf_state` bootstraps the membership of a new group (index 0)."""
        self._hard_state = HardState()
        self._snapshot = Snapshot(SnapshotMetadata(0, 0, conf_state or ConfState()), b"")
        self._entries: list[Entry] = [Entry(0, 0)]

    # -- Storage protocol -------------------------------------------------------------------

    def initial_state(self) -> tuple[HardState, ConfState]:
        return self._hard_state, self._snapshot.metadata.conf_state

    def entries(self, low: int, high: int, size_bytes_max: int) -> list[Entry]:
        offset = self._entries[0].index
        if low <= offset:
            raise CompactedError(f"entry {low} is compacted (snapshot index {offset})")
        if high > self.last_index() + 1:
            raise UnavailableError(f"entry {high - 1} is beyond last index {self.last_index()}")
        result = self._entries[low - offset : high - offset]
        return limit_size(result, size_bytes_max)

    def term(self, index: int) -> int:
        offset = self._entries[0].index
        if index < offset:
            raise CompactedError(f"term of {index} is compacted (snapshot index {offset})")
        if index - offset >= len(self._entries):
            raise UnavailableError(f"entry {index} is beyond last index {self.last_index()}")
        return self._entries[index - offset].term

    def first_index(self) -> int:
        return self._entries[0].index + 1

    def last_index(self) -> int:
        return self._entries[0].index + len(self._entries) - 1

    def snapshot(self) -> Snapshot:
        return self._snapshot

    def snapshot_metadata(self) -> SnapshotMetadata:
        return self._snapshot.metadata

    def compact(self, snapshot: Snapshot) -> None:
        index = snapshot.metadata.index
        offset = self._entries[0].index
        if index <= offset:
            raise SnapshotOutOfDateError(
                f"snapshot at {index} is not newer than the stored one at {offset}"
            )
        if index > self.last_index():
            raise UnavailableError(f"compact to {index} beyond last index {self.last_index()}")
        assert self._entries[index - offset].term == snapshot.metadata.term, "snapshot term"
        self._snapshot = snapshot
        self._entries = [Entry(snapshot.metadata.term, index), *self._entries[index - offset + 1 :]]

    # -- host writes --------------------------------------------------------------------------

    def set_hard_state(self, hard_state: HardState) -> None:
        self._hard_state = hard_state

    def apply_snapshot(self, snapshot: Snapshot) -> None:
        """Install a snapshot received from the leader: it replaces the whole log."""
        index = snapshot.metadata.index
        if index <= self._snapshot.metadata.index:
            raise SnapshotOutOfDateError(
                f"snapshot at {index} is not newer than the stored one at "
                f"{self._snapshot.metadata.index}"
            )
        self._snapshot = snapshot
        self._entries = [Entry(snapshot.metadata.term, index)]

    def append(self, entries: tuple[Entry, ...] | list[Entry]) -> None:
        """Append entries; the first may overwrite a suffix of the log (Raft §5.3)."""
        if not entries:
            return
        first = entries[0].index
        offset = self._entries[0].index
        if first + len(entries) - 1 <= offset:
            return  # wholly covered by the snapshot
        if first <= offset:
            entries = entries[offset + 1 - first :]
            first = offset + 1
        position = first - offset
        stored = len(self._entries)
        if position == stored:
            self._entries.extend(entries)
        elif position < stored:
            del self._entries[position:]
            self._entries.extend(entries)
        else:
            raise UnavailableError(
                f"append at {first} leaves a gap after last index {self.last_index()}"
            )

    def persist(self, ready: Ready) -> None:
        """Apply a Ready's durable part in the required order: snapshot, entries, hard state."""
        if not ready.snapshot.is_empty:
            self.apply_snapshot(ready.snapshot)
        if ready.entries:
            self.append(ready.entries)
        if ready.hard_state is not None:
            self.set_hard_state(ready.hard_state)


def limit_size(entries: list[Entry], size_bytes_max: int) -> list[Entry]:
    """The longest prefix of `entries` within `size_bytes_max` data bytes, never empty.

    At least one entry is returned so an entry larger than the bound still replicates.
    """
    if not entries:
        return entries
    total = 0
    for position, entry in enumerate(entries):
        total += len(entry.data)
        if total > size_bytes_max and position > 0:
            return entries[:position]
    return entries
