"""RaftLog: the stable log (Storage) followed by the unstable tail not yet handed to the host.

Layout (etcd-io/raft `log.go` + `log_unstable.go`):

    storage:  [first_index ............ offset-1]          durable, readable via Storage
    unstable:                          [offset ........ last_index]   in memory only
                                       ^ in_progress: entries before it were handed out in a
                                         Ready and are being persisted by the host

`offset` always equals the index after the last entry that is durable *and still part of the
log*: when a leader's entries overwrite a suffix (Raft §5.3), the unstable list starts below
the storage's last index and the host truncates storage when it persists them.

Terms in any Raft log never decrease with the index, and two logs that agree on the term of an
index agree on everything before it (Log Matching, Raft §5.3). Both facts let the conflict
searches below be binary searches instead of per-entry walks.
"""

from __future__ import annotations

from operator import attrgetter

from minikv_core.raft.storage import CompactedError, Storage, UnavailableError, limit_size
from minikv_core.raft.types import Entry, RaftError, Snapshot

_ENTRY_DATA = attrgetter("data")


class InconsistentStateError(RaftError):
    """The persisted state contradicts itself (commit or applied beyond the stored log)."""


def entries_size_bytes(entries: tuple[Entry, ...] | list[Entry]) -> int:
    """Payload bytes of `entries`, summed in C (no Python loop per entry)."""
    return sum(map(len, map(_ENTRY_DATA, entries)))


class RaftLog:
    """The log of one node: stable storage + unstable entries + commit/apply cursors."""

    __slots__ = (
        "applied",
        "applying",
        "committed",
        "in_progress",
        "offset",
        "pending_snapshot",
        "snapshot_in_progress",
        "storage",
        "unstable",
    )

    def __init__(self, storage: Storage, applied_index: int) -> None:
        self.storage = storage
        first = storage.first_index()
        last = storage.last_index()
        hard_state, _ = storage.initial_state()
        self.unstable: list[Entry] = []
        self.offset = last + 1
        self.in_progress = last + 1
        self.pending_snapshot: Snapshot | None = None
        self.snapshot_in_progress = False
        # Commit beyond the stored log means the host lost acknowledged data; Raft cannot
        # recover that silently (the node must be repaired from its peers).
        if hard_state.commit > last:
            raise InconsistentStateError(
                f"persisted commit index {hard_state.commit} is beyond the last stored entry "
                f"{last}: the log lost entries this node had acknowledged"
            )
        self.committed = max(hard_state.commit, first - 1)
        applied = max(applied_index, first - 1)
        if applied > self.committed:
            raise InconsistentStateError(
                f"applied index {applied} is beyond the commit index {self.committed}"
            )
        self.applied = applied
        self.applying = applied

    # -- bounds and terms ---------------------------------------------------------------------

    def last_index(self) -> int:
        return self.offset + len(self.unstable) - 1

    def first_index(self) -> int:
        if self.pending_snapshot is not None:
            return self.pending_snapshot.metadata.index + 1
        return self.storage.first_index()

    def persisted_last_index(self) -> int:
        """The last index that is durable and part of this log."""
        if self.pending_snapshot is not None:
            return 0
        return self.offset - 1

    def term(self, index: int) -> int:
        """Term at `index`; raises CompactedError / UnavailableError outside the log."""
        if index >= self.offset:
            position = index - self.offset
            if position < len(self.unstable):
                return self.unstable[position].term
            raise UnavailableError(f"entry {index} is beyond last index {self.last_index()}")
        snapshot = self.pending_snapshot
        if snapshot is not None:
            if index == snapshot.metadata.index:
                return snapshot.metadata.term
            raise CompactedError(f"entry {index} is covered by the incoming snapshot")
        return self.storage.term(index)

    def last_term(self) -> int:
        return self.term(self.last_index())

    def match_term(self, index: int, term: int) -> bool:
        try:
            return self.term(index) == term
        except (CompactedError, UnavailableError):
            return False

    def is_up_to_date(self, last_index: int, last_term: int) -> bool:
        """Raft §5.4.1: is a candidate's log at least as up-to-date as ours?"""
        our_term = self.last_term()
        return last_term > our_term or (last_term == our_term and last_index >= self.last_index())

    # -- follower side ------------------------------------------------------------------------

    def maybe_append(
        self, index: int, log_term: int, committed: int, entries: tuple[Entry, ...]
    ) -> int | None:
        """AppendEntries consistency check and append (Raft §5.3).

        Returns the last index known to match the leader, or None if the entry preceding
        `entries` does not match (the follower must reject).
        """
        if not self.match_term(index, log_term):
            return None
        last_new = index + len(entries)
        conflict = self.find_conflict(entries)
        if conflict:
            # Committed entries never conflict (Leader Completeness, Raft §5.4).
            assert conflict > self.committed, (
                f"entry {conflict} conflicts with committed prefix up to {self.committed}"
            )
            self.append(entries[conflict - entries[0].index :])
        self.commit_to(min(committed, last_new))
        return last_new

    def find_conflict(self, entries: tuple[Entry, ...] | list[Entry]) -> int:
        """Index of the first entry whose term differs from ours (or is new); 0 if none.

        Matching entries form a prefix of `entries` (Log Matching), so binary search.
        Entries at or below our snapshot are committed, hence matching.
        """
        if not entries:
            return 0
        first = entries[0].index
        last_index = self.last_index()
        if first > last_index:
            return first
        if self._matches_or_compacted(entries[-1]):
            return 0
        low, high = 0, len(entries) - 1  # entries[high] is known not to match
        while low < high:
            middle = (low + high) // 2
            if self._matches_or_compacted(entries[middle]):
                low = middle + 1
            else:
                high = middle
        return entries[low].index

    def _matches_or_compacted(self, entry: Entry) -> bool:
        try:
            return self.term(entry.index) == entry.term
        except CompactedError:
            return True
        except UnavailableError:
            return False

    def find_conflict_by_term(self, index: int, term: int) -> tuple[int, int]:
        """The largest index <= `index` whose term is <= `term`, and that term.

        Used for fast backoff (etcd `findConflictByTerm`, Raft §5.3's optimization): every
        entry above the returned index has a term the other log cannot match. Returns term 0
        when the search reaches compacted entries (the term is then unknown).
        """
        index = min(index, self.last_index())
        low = self.first_index() - 1
        if index < low:
            return index, 0
        try:
            if self.term(index) <= term:
                return index, self.term(index)
            if self.term(low) > term:
                return low, 0
        except CompactedError:
            return index, 0
        # Invariant: term(low) <= term < term(index); terms are non-decreasing with index.
        while index - low > 1:
            middle = (low + index) // 2
            if self.term(middle) <= term:
                low = middle
            else:
                index = middle
        return low, self.term(low)

    # -- appending ----------------------------------------------------------------------------

    def append(self, entries: tuple[Entry, ...] | list[Entry]) -> int:
        """Append to the unstable tail; the first entry may overwrite a suffix. Returns last."""
        if not entries:
            return self.last_index()
        after = entries[0].index
        assert after > self.committed, f"append at {after} would overwrite committed entries"
        unstable = self.unstable
        end = self.offset + len(unstable)
        if after == end:
            unstable.extend(entries)
        elif after <= self.offset:
            # Replace the whole unstable tail; storage is truncated when the host persists.
            self.offset = after
            self.unstable = list(entries)
            self.in_progress = after
        else:
            assert after < end, f"append at {after} leaves a gap after {end - 1}"
            del unstable[after - self.offset :]
            unstable.extend(entries)
            self.in_progress = min(self.in_progress, after)
        return self.last_index()

    def commit_to(self, index: int) -> None:
        if index > self.committed:
            assert index <= self.last_index(), (
                f"commit {index} beyond last index {self.last_index()}: log lost or corrupt"
            )
            self.committed = index

    # -- Ready support ------------------------------------------------------------------------

    def has_entries_to_persist(self) -> bool:
        return self.in_progress <= self.last_index()

    def entries_to_persist(self) -> tuple[Entry, ...]:
        return tuple(self.unstable[self.in_progress - self.offset :])

    def accept_persisting(self) -> None:
        """Everything unstable has been handed to the host in a Ready."""
        self.in_progress = self.last_index() + 1
        if self.pending_snapshot is not None:
            self.snapshot_in_progress = True

    def stable_to(self, index: int, term: int) -> None:
        """Entries up to `index` (with `term`) are durable, unless overwritten since."""
        if index < self.offset or not self.match_term(index, term):
            return
        del self.unstable[: index + 1 - self.offset]
        self.offset = index + 1
        self.in_progress = max(self.in_progress, self.offset)

    def stable_snapshot_to(self, index: int) -> None:
        snapshot = self.pending_snapshot
        if snapshot is not None and snapshot.metadata.index == index:
            self.pending_snapshot = None
            self.snapshot_in_progress = False

    def has_committed_to_apply(self) -> bool:
        return self.pending_snapshot is None and self.committed > self.applying

    def committed_to_apply(self, size_bytes_max: int) -> list[Entry]:
        """Committed entries not yet handed out, at most `size_bytes_max` (at least one)."""
        if not self.has_committed_to_apply():
            return []
        entries = self.slice(self.applying + 1, self.committed + 1, size_bytes_max)
        if entries:
            self.applying = entries[-1].index
        return entries

    def applied_to(self, index: int) -> None:
        if index > self.applied:
            assert index <= self.committed, f"applied {index} beyond commit {self.committed}"
            self.applied = index
            self.applying = max(self.applying, index)

    # -- reading ------------------------------------------------------------------------------

    def slice(self, low: int, high: int, size_bytes_max: int) -> list[Entry]:
        """Entries [low, high) within `size_bytes_max` payload bytes (at least one).

        Raises CompactedError if `low` is below the first index.
        """
        if low >= high:
            return []
        if low < self.first_index():
            raise CompactedError(f"entry {low} is compacted")
        offset = self.offset
        if high <= offset:
            return self.storage.entries(low, high, size_bytes_max)
        if low >= offset:
            return limit_size(self.unstable[low - offset : high - offset], size_bytes_max)
        stored = self.storage.entries(low, offset, size_bytes_max)
        if len(stored) < offset - low:
            return stored  # the byte bound stopped inside storage
        budget = size_bytes_max - entries_size_bytes(stored)
        if budget <= 0:
            return stored
        tail = limit_size(self.unstable[: high - offset], budget)
        if tail and entries_size_bytes(tail) > budget:
            return stored  # limit_size keeps one entry even when over budget
        stored.extend(tail)
        return stored

    def restore(self, snapshot: Snapshot) -> None:
        """Replace the log by an incoming snapshot (Raft §7: discard the entire log)."""
        index = snapshot.metadata.index
        self.committed = index
        self.unstable = []
        self.offset = index + 1
        self.in_progress = index + 1
        self.pending_snapshot = snapshot
        self.snapshot_in_progress = False
