"""An in-memory "disk" per node: what the host made durable survives a crash, nothing else.

Deliberately separate from the core's MemoryStorage (which the core reads while running): the
disk is written only by the host, only with what a Ready asked to persist (or a compaction),
and a restarted node gets a *fresh* MemoryStorage rebuilt from it. So a core that kept state
somewhere the host never persisted loses it on a crash, as it would on a real machine, and the
log-matching check reads logs that the core cannot have touched behind the host's back.

The disk also keeps the last "flushed" image of the host's state machine (data + applied
index), like the LSM's flush that records the applied index atomically (DESIGN.md): a restart
resumes from it with `Config.applied_index` instead of replaying from the snapshot.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

from minikv_core.raft.storage import MemoryStorage
from minikv_core.raft.types import (
    ConfState,
    Entry,
    HardState,
    Snapshot,
    SnapshotMetadata,
)


class DiskInvariantError(AssertionError):
    """The host asked the disk for something impossible (a gap, a term going back)."""


@dataclass(frozen=True, slots=True)
class StateMachineImage:
    applied_index: int
    data: bytes


class Disk:
    """Durable state of one node: hard state, snapshot, log after it, state machine image."""

    __slots__ = ("_entries", "_image", "hard_state", "snapshot", "writes")

    def __init__(self, conf_state: ConfState) -> None:
        """A fresh node: empty log; `conf_state` bootstraps the group (empty for a joiner)."""
        self.hard_state = HardState()
        self.snapshot = Snapshot(SnapshotMetadata(0, 0, conf_state), b"")
        self._entries: list[Entry] = []  # entries snapshot.index+1 .. last_index, contiguous
        self._image: StateMachineImage | None = None
        self.writes = 0

    # --- reads -------------------------------------------------------------------------------

    @property
    def snapshot_index(self) -> int:
        return self.snapshot.metadata.index

    def last_index(self) -> int:
        return self.snapshot_index + len(self._entries)

    def term_at(self, index: int) -> int | None:
        """Term of entry `index`; 0 beyond the log; None below the snapshot (compacted)."""
        offset = self.snapshot_index
        if index < offset:
            return None
        if index == offset:
            return self.snapshot.metadata.term
        if index > offset + len(self._entries):
            return 0
        return self._entries[index - offset - 1].term

    def entry_at(self, index: int) -> Entry | None:
        offset = self.snapshot_index
        if offset < index <= offset + len(self._entries):
            return self._entries[index - offset - 1]
        return None

    def image(self) -> StateMachineImage | None:
        return self._image

    # --- writes (each one is "written and fsynced") --------------------------------------------

    def set_hard_state(self, hard_state: HardState) -> None:
        old = self.hard_state
        if hard_state.term < old.term:
            raise DiskInvariantError(f"term went back from {old.term} to {hard_state.term}")
        if hard_state.term == old.term and old.vote not in (0, hard_state.vote):
            # Raft §5.2: at most one vote per term, and it must survive a crash.
            raise DiskInvariantError(
                f"vote changed within term {old.term}: {old.vote} -> {hard_state.vote}"
            )
        self.hard_state = hard_state
        self.writes += 1

    def append(self, entries: tuple[Entry, ...]) -> list[Entry]:
        """Append; the first entry may overwrite a suffix (Raft §5.3). Returns what was
        written (entries wholly covered by the snapshot are skipped)."""
        offset = self.snapshot_index
        written = [entry for entry in entries if entry.index > offset]
        if not written:
            return written
        for before, after in itertools.pairwise(written):
            if after.index != before.index + 1:
                raise DiskInvariantError(f"entries not contiguous: {before.index}, {after.index}")
        first = written[0].index
        if first > self.last_index() + 1:
            raise DiskInvariantError(f"append at {first} after last index {self.last_index()}")
        del self._entries[first - offset - 1 :]
        self._entries.extend(written)
        self.writes += 1
        return written

    def install_snapshot(self, snapshot: Snapshot) -> None:
        """A snapshot from the leader replaces the log (Raft §7), keeping entries after it
        only if they agree with it (they would be re-sent anyway; keeping none is simpler and
        what MemoryStorage does)."""
        if snapshot.metadata.index <= self.snapshot_index:
            raise DiskInvariantError(
                f"snapshot at {snapshot.metadata.index} not newer than {self.snapshot_index}"
            )
        self.snapshot = snapshot
        self._entries = []
        self.writes += 1

    def compact(self, snapshot: Snapshot) -> None:
        """The host's own snapshot at an applied index: drop the entries it covers."""
        index = snapshot.metadata.index
        if not self.snapshot_index < index <= self.last_index():
            raise DiskInvariantError(
                f"compaction to {index} outside ({self.snapshot_index}, {self.last_index()}]"
            )
        if self.term_at(index) != snapshot.metadata.term:
            raise DiskInvariantError(
                f"snapshot at {index} has term {snapshot.metadata.term}, "
                f"log has {self.term_at(index)}"
            )
        self._entries = self._entries[index - self.snapshot_index :]
        self.snapshot = snapshot
        self.writes += 1

    def flush_image(self, image: StateMachineImage) -> None:
        self._image = image
        self.writes += 1

    def losable_entries(self) -> int:
        """How many entries `lose_tail` may drop: those above the snapshot and the flushed
        state machine image, whose data was made durable elsewhere (the snapshot file, the
        engine) and is not lost with the log."""
        floor = self.snapshot_index
        if self._image is not None:
            floor = max(floor, self._image.applied_index)
        return max(0, self.last_index() - floor)

    def lose_tail(self, count: int) -> int:
        """The disk lost its newest `count` entries although they were fsynced (a damaged last
        WAL record, cut on open as a torn tail). Returns the new last index.

        Term and vote survive (a lost vote breaks Raft §5.2 whatever the core does: not
        modelled); the commit index drops to the new last index, the newest commit a hard
        state written before the lost entries could hold. The disk keeps no overwritten
        entries, so an older suffix coming back is not modelled either: the log gets shorter.
        """
        assert 0 <= count <= self.losable_entries(), f"cannot lose {count} entries"
        if count:
            del self._entries[len(self._entries) - count :]
            hard = self.hard_state
            self.hard_state = HardState(hard.term, hard.vote, min(hard.commit, self.last_index()))
        return self.last_index()

    # --- restart -------------------------------------------------------------------------------

    def rebuild_storage(self) -> MemoryStorage:
        """A fresh MemoryStorage holding exactly what is durable, for a restarted core."""
        if self.snapshot_index == 0:
            storage = MemoryStorage(self.snapshot.metadata.conf_state)
        else:
            storage = MemoryStorage()
            storage.apply_snapshot(self.snapshot)
        storage.append(tuple(self._entries))
        storage.set_hard_state(self.hard_state)
        return storage
