"""The shard state machine: committed Raft entries in, engine writes and client results out.

`ShardStateMachine(engine)` applies a shard group's committed entries, in log order, to the
shard's LSM `Engine`, each entry as one atomic `Engine.apply(ops, applied_index=entry.index)`.
The engine persists the applied index atomically with every flush, so after a crash the host
replays committed entries from `engine.durable_applied_index + 1` (DESIGN: Storage).

Versions. Every key carries a version that increases with each write to it (clients use it
for compare-and-set and transactions). The version of a write is the Raft index of the entry
that carried it, like etcd's per-key mod revision: it is the same on every replica, survives
snapshots (it is stored with the value), needs no read-before-write, and can never go
backwards, not even across a delete and a re-put, because the log index only grows. Versions
are therefore comparable across the keys of one shard, not across shards. A batch writes each
key at most once (commands.py), so no two writes share a version.

Stored value encoding (what the engine holds for a live key):

    version u64 little-endian | client value bytes

A delete removes the key from the engine (an LSM tombstone); nothing of it remains to read,
and the next put gets a larger version anyway.

Entries and results:
- NORMAL with empty data: the leader's no-op (Raft §8): advances the applied index only.
- CONF_CHANGE: advances the applied index; the host applies membership (RawNode.advance).
- NORMAL with a command: one result per client write (a batch gives one per item), carrying
  the request id, the entry index/term, and for a put the new version, for a delete whether
  the key existed.
- NORMAL whose data does not decode: the entry is committed on every replica alike, so
  crashing would take the whole group down forever. It advances the applied index and yields
  one REJECTED result naming the reason (the proposer matches it by index and term).

Transactions (txn_locks.py): a TXN entry is applied by the shard's `TxnLockTable` as one
engine batch (its writes, intent and record changes together) and yields one TXN result. A
plain put or delete of a key locked by a prepared transaction is not applied: it yields a
CONFLICT result naming the lock holders (the proposer waits or resolves them, then retries),
so plain writes serialize with transactions. The transaction state lives in the engine under
`txn.SYSTEM_KEY_PREFIX`; `scan` never returns those keys and the lock table is rebuilt from
them at open and after a snapshot install.

Client sessions (sessions.py): a put or delete carrying a `WriteSession` is checked against
the shard's session table first. A repeat of a write that applied yields that write's result
again (same version, same "existed") and writes nothing; one the shard cannot match yields
EXPIRED; otherwise it applies and its result is remembered. The touched session records go
into the entry's engine batch, so they are exactly as durable as the writes.

Idempotence guard (decided: skip, don't refuse). Entries at or below `applied_index` are
skipped and counted (`entries_skipped`), yielding no result. The engine already holds their
effects: a host that restarts a RawNode with a lower applied index than the engine's (say the
durable one while the memtable still holds more), or redelivers entries around a snapshot
install, must not apply them twice: the engine would refuse the non-increasing index, and a
delete would report a wrong "existed". A *gap* (an entry beyond applied_index + 1) is the
opposite case: entries were lost, and applying past them would make this replica diverge, so
it raises `ApplyGapError` and applies nothing of that call.
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Sequence
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from minikv_core.cluster import limits
from minikv_core.cluster.commands import (
    BatchCommand,
    ChecksumCommand,
    CommandDecodeError,
    DeleteCommand,
    PutCommand,
    TxnCommand,
    WriteCommand,
    decode_command,
)
from minikv_core.cluster.sessions import (
    SessionChanges,
    SessionTable,
    WriteSession,
    delete_code,
    is_delete_code,
    put_code,
)
from minikv_core.cluster.txn import SYSTEM_KEY_PREFIX
from minikv_core.cluster.txn_codec import Conflict, TxnResult
from minikv_core.cluster.txn_locks import TxnLockTable
from minikv_core.frozen import frozen
from minikv_core.raft.types import Entry, EntryType
from minikv_core.storage import verify
from minikv_core.storage.engine import (
    Delete,
    Engine,
    InvalidKeyError,
    InvalidValueError,
    Op,
    PinnedState,
    Put,
    SnapshotInfo,
    StateChecksum,
    prefix_successor,
)
from minikv_core.storage.errors import StorageError

_VERSION = struct.Struct("<Q")
assert _VERSION.size == limits.STORED_VERSION_BYTES


class ResultKind(enum.Enum):
    PUT = "put"
    DELETE = "delete"
    NOOP = "noop"  # the leader's empty entry
    CONF_CHANGE = "conf_change"
    REJECTED = "rejected"  # the entry's data is not a valid command
    TXN = "txn"  # a transaction command: see `txn`
    CONFLICT = "conflict"  # a put/delete refused: the key is locked (see `txn`)
    EXPIRED = "expired"  # a session write whose outcome the shard cannot tell (sessions.py)


@frozen
class ApplyResult:
    """The outcome of one client write (or of one command-less entry)."""

    kind: ResultKind
    index: int
    term: int
    request_id: int | None = None
    """The proposer's id for the waiting client; None for no-op, conf change, rejected."""
    version: int = 0
    """PUT: the key's new version (== index)."""
    existed: bool = False
    """DELETE: whether the key had a value."""
    error: str | None = None
    """REJECTED: why the entry's data is not a command. EXPIRED: why the shard cannot tell
    whether the write applied."""
    txn: TxnResult | None = None
    """TXN: the transaction command's result. CONFLICT: the `Conflict` (lock holders)."""


CHECKSUMS_KEPT = 8

CHECKSUM_WORKERS = ThreadPoolExecutor(1, thread_name_prefix="minikv-checksum")
"""Where the digests of CHECKSUM entries are computed, for every shard of the process. One
thread: a digest is Python holding the GIL, so two at once would finish no sooner and would
pin two states' memory; queued ones wait, each bounded per shard by CHECKSUMS_KEPT."""


@dataclass(frozen=True, slots=True)
class ChecksumRecord:
    """A replica's checksum of its state at a CHECKSUM entry (or why it could not read it)."""

    index: int
    checksum: verify.StateChecksum | None
    error: str
    """Non-empty when reading the state failed (a corrupt table): names file and offset."""

    def to_json(self) -> dict[str, object]:
        return {
            "index": self.index,
            "checksum": self.checksum.to_json() if self.checksum is not None else None,
            "error": self.error,
        }


class VersionedValue(NamedTuple):
    value: bytes
    version: int


class KeyValue(NamedTuple):
    key: bytes
    value: bytes
    version: int


class StateMachineError(StorageError):
    """Base of the state machine's errors."""


class ApplyGapError(StateMachineError):
    """An entry does not follow the applied index: entries are missing, nothing was applied."""


class StoredValueCorruptionError(StateMachineError):
    """A stored value is too short to hold its version prefix (not written by this module)."""


def encode_stored_value(version: int, value: bytes) -> bytes:
    """`version u64 | value`: what the engine holds for a live key."""
    return _VERSION.pack(version) + value


def decode_stored_value(key: bytes, stored: bytes) -> VersionedValue:
    if len(stored) < limits.STORED_VERSION_BYTES:
        raise StoredValueCorruptionError(
            f"stored value of key {key[:64]!r} is {len(stored)} bytes, shorter than its "
            f"{limits.STORED_VERSION_BYTES}-byte version prefix"
        )
    (version,) = _VERSION.unpack_from(stored, 0)
    return VersionedValue(stored[limits.STORED_VERSION_BYTES :], version)


class ShardStateMachine:
    """One shard's replicated key/value state on top of its engine.

    Not thread-safe for writers: the host applies entries from one task. Reads (`get`,
    `scan`) may run concurrently with `apply`; they see whole entries (the engine applies
    each batch atomically).
    """

    __slots__ = (
        "_checksum_executor",
        "_engine",
        "_entries_skipped",
        "checksums",
        "sessions",
        "txn",
    )

    def __init__(self, engine: Engine, checksum_executor: Executor | None = None) -> None:
        """`checksum_executor` computes the digests of CHECKSUM entries (default: the shared
        CHECKSUM_WORKERS); it must run them off the thread that applies entries."""
        self._engine = engine
        self._entries_skipped = 0
        self._checksum_executor = checksum_executor or CHECKSUM_WORKERS
        self.txn = TxnLockTable()
        """Prepared transactions and their locks: an index over replicated state."""
        self.txn.load(engine)
        self.sessions = SessionTable()
        """What each client's retried writes answered (sessions.py): an index over records
        in the engine, like `txn`."""
        self.sessions.load(engine)
        self.checksums: dict[int, Future[ChecksumRecord]] = {}
        """Checksums of the applied state taken at CHECKSUM entries, by entry index (the
        newest CHECKSUMS_KEPT; memory only: a restarted replica is simply checked again).
        Each completes in a worker thread; one dropped before its digest started is
        cancelled (no record). On the event loop, await one with `asyncio.wrap_future`."""

    @property
    def engine(self) -> Engine:
        return self._engine

    @property
    def applied_index(self) -> int:
        """The last entry index applied (memtable included; see `durable_applied_index`)."""
        return self._engine.applied_index

    @property
    def durable_applied_index(self) -> int:
        """The last entry index whose effects survive a crash: replay starts after it."""
        return self._engine.durable_applied_index

    def system_records(self) -> int:
        """Live engine keys under the system prefix (transaction intents and records, client
        sessions): what a count of the engine's entries holds besides client keys."""
        return self.txn.record_count() + self.sessions.record_count()

    @property
    def entries_skipped(self) -> int:
        """Entries at or below the applied index that `apply` skipped (idempotence guard)."""
        return self._entries_skipped

    # ------------------------------------------------------------------------------ apply

    def apply(self, entries: Sequence[Entry]) -> list[ApplyResult]:
        """Apply committed entries in order; one engine batch per entry, atomically.

        Entries at or below `applied_index` are skipped (no result). Raises ApplyGapError,
        before applying anything, if the entries are not consecutive or do not start at or
        before `applied_index + 1`. Engine failures (closed, background error, I/O)
        propagate: the node must stop applying.
        """
        applied = self._engine.applied_index
        expected = applied + 1
        to_apply: list[Entry] = []
        for entry in entries:
            if entry.index <= applied and not to_apply:
                self._entries_skipped += 1
                continue
            if entry.index != expected:
                raise ApplyGapError(
                    f"entry {entry.index} does not follow {expected - 1} (applied index "
                    f"{applied}): entries are missing, nothing was applied"
                )
            to_apply.append(entry)
            expected += 1
        results: list[ApplyResult] = []
        for entry in to_apply:
            self._apply_entry(entry, results)
        return results

    def _record_checksum(self, index: int) -> None:
        """Pin the state as of `index` now, between two entries, so every replica hashes the
        same logical state; hash it in a worker. Why not hash here: this runs on the node's
        event loop, and a full scan of a large shard would stall its Raft ticks, heartbeats
        and clients for as long (elections could fire during a verify); the pin only copies
        the active memtable. A corrupt table is a finding, not a crash: the replica keeps
        applying and verify reports it (repair then rebuilds the replica)."""
        future: Future[ChecksumRecord]
        try:
            pinned = self._engine.pin_state()
        except StorageError as error:
            future = Future()
            future.set_result(ChecksumRecord(index, None, str(error)))
        else:
            assert pinned.applied_index == index, (pinned.applied_index, index)
            future = self._checksum_executor.submit(_digest_pinned, index, pinned)
        self.checksums[index] = future
        while len(self.checksums) > CHECKSUMS_KEPT:
            # A digest not started yet never runs: its pinned state is freed now.
            self.checksums.pop(min(self.checksums)).cancel()

    def _apply_entry(self, entry: Entry, results: list[ApplyResult]) -> None:
        index = entry.index
        if entry.type == EntryType.CONF_CHANGE:
            self._engine.apply((), index)
            results.append(ApplyResult(ResultKind.CONF_CHANGE, index, entry.term))
            return
        if not entry.data:
            self._engine.apply((), index)
            results.append(ApplyResult(ResultKind.NOOP, index, entry.term))
            return
        try:
            command = decode_command(entry.data)
        except CommandDecodeError as exc:
            self._reject(entry, str(exc), results)
            return
        if isinstance(command, TxnCommand):
            self._apply_txn(entry, command, results)
            return
        if isinstance(command, ChecksumCommand):
            self._engine.apply((), index)
            self._record_checksum(index)
            results.append(
                ApplyResult(ResultKind.NOOP, index, entry.term, request_id=command.request_id)
            )
            return
        writes: tuple[WriteCommand, ...] = (
            command.commands if isinstance(command, BatchCommand) else (command,)
        )
        ops: list[Op] = []
        entry_results: list[ApplyResult] = []
        get = self._engine.get
        locks = self.txn
        changes: SessionChanges | None = None
        for write in writes:
            if write.key.startswith(SYSTEM_KEY_PREFIX):
                # The shard's transaction state lives there: a plain write must never
                # change it (the APIs refuse such keys; this guards the log itself).
                entry_results.append(
                    ApplyResult(
                        ResultKind.REJECTED,
                        index,
                        entry.term,
                        request_id=write.request_id,
                        error=f"keys starting with {SYSTEM_KEY_PREFIX!r} are reserved",
                    )
                )
                continue
            session = write.session
            if session is not None:
                if changes is None:
                    changes = self.sessions.begin(index)
                admission = changes.admit(session)
                if admission is not None:
                    # Applied before (answer what it answered then), or the shard no longer
                    # knows: either way, applying it now could land it after later writes.
                    entry_results.append(_not_applied_again(entry, write, session, admission))
                    continue
            if locks.intents:
                blockers = locks.write_blockers(write.key)
                if blockers:
                    # The key is locked by a prepared transaction: writing it now would change
                    # what that transaction read or is about to write (txn_locks.py).
                    entry_results.append(
                        ApplyResult(
                            ResultKind.CONFLICT,
                            index,
                            entry.term,
                            request_id=write.request_id,
                            txn=Conflict(tuple(blockers), "the key is locked by a transaction"),
                        )
                    )
                    continue
            if isinstance(write, PutCommand):
                ops.append(Put(write.key, _VERSION.pack(index) + write.value))
                if session is not None:
                    assert changes is not None
                    changes.remember(session, put_code(index))
                entry_results.append(
                    ApplyResult(
                        ResultKind.PUT,
                        index,
                        entry.term,
                        request_id=write.request_id,
                        version=index,
                    )
                )
            else:
                assert isinstance(write, DeleteCommand)
                # Keys of one batch are distinct (commands.py), so the engine's state before
                # this entry answers "existed" for every delete of it.
                existed = get(write.key) is not None
                ops.append(Delete(write.key))
                if session is not None:
                    assert changes is not None
                    changes.remember(session, delete_code(existed))
                entry_results.append(
                    ApplyResult(
                        ResultKind.DELETE,
                        index,
                        entry.term,
                        request_id=write.request_id,
                        existed=existed,
                    )
                )
        if changes is not None:
            ops.extend(changes.ops())
        try:
            self._engine.apply(ops, index)
        except (InvalidKeyError, InvalidValueError) as exc:
            # decode_command checks the engine's bounds, so this means the two disagree: a
            # deterministic refusal on every replica, so reject rather than crash the group.
            self._reject(entry, f"the engine refused the command: {exc}", results)
            return
        if changes is not None:
            changes.commit()  # only now: the session records are in the engine
        results.extend(entry_results)

    def _apply_txn(self, entry: Entry, command: TxnCommand, results: list[ApplyResult]) -> None:
        applied = self.txn.apply(command.body, entry.index, self._engine, self._read_client)
        try:
            self._engine.apply(applied.ops, entry.index)
        except (InvalidKeyError, InvalidValueError) as exc:
            self._reject(entry, f"the engine refused the transaction: {exc}", results)
            return
        applied.commit()
        results.append(
            ApplyResult(
                ResultKind.TXN,
                entry.index,
                entry.term,
                request_id=command.request_id,
                txn=applied.result,
            )
        )

    def _read_client(self, key: bytes) -> tuple[bytes, int] | None:
        found = self.get(key)
        return None if found is None else (found.value, found.version)

    def _reject(self, entry: Entry, reason: str, results: list[ApplyResult]) -> None:
        self._engine.apply((), entry.index)
        results.append(ApplyResult(ResultKind.REJECTED, entry.index, entry.term, error=reason))

    # ------------------------------------------------------------------------------ reads

    def get(self, key: bytes) -> VersionedValue | None:
        """`(value, version)` of `key`, or None if it has no value."""
        stored = self._engine.get(key)
        if stored is None:
            return None
        return decode_stored_value(key, stored)

    def scan(
        self,
        start: bytes | None = None,
        end: bytes | None = None,
        prefix: bytes | None = None,
        limit: int | None = None,
        reverse: bool = False,
    ) -> list[KeyValue]:
        """Live client keys with start <= key < end and the prefix, in key order (see
        Engine.scan). The reserved transaction space is skipped: the range is cut around it."""
        ranges = _without_system_space(start, end)
        if reverse:
            ranges.reverse()
        rows: list[KeyValue] = []
        for low, high in ranges:
            want = None if limit is None else limit - len(rows)
            if want is not None and want <= 0:
                break
            rows.extend(
                KeyValue(key, *decode_stored_value(key, stored))
                for key, stored in self._engine.scan(low, high, prefix, want, reverse)
            )
        return rows

    # -------------------------------------------------------------------------- snapshots

    def snapshot(self, dest_dir: Path | str) -> SnapshotInfo:
        """The shard's state at one applied index, as the engine's snapshot directory."""
        return self._engine.snapshot(dest_dir)

    def install_snapshot(self, snapshot_dir: Path | str) -> SnapshotInfo:
        """Replace the whole state with a snapshot's (its applied index becomes ours); the
        lock table and the session table are rebuilt from the snapshot's records."""
        info = self._engine.install_snapshot(snapshot_dir)
        self.txn.load(self._engine)
        self.sessions.load(self._engine)
        return info

    def checksum(self) -> StateChecksum:
        """A digest of every live key, value *and version* at the applied index: replicas
        that applied the same entries agree on it."""
        return self._engine.checksum()


def _not_applied_again(
    entry: Entry, write: WriteCommand, session: WriteSession, admission: int | str
) -> ApplyResult:
    """A session write not applied now: answered with what it answered when it applied (its
    result code), or EXPIRED with why the shard cannot tell."""
    request_id = write.request_id
    if isinstance(admission, int):
        if is_delete_code(admission) == isinstance(write, DeleteCommand):
            if isinstance(write, PutCommand):
                return ApplyResult(
                    ResultKind.PUT,
                    entry.index,
                    entry.term,
                    request_id=request_id,
                    version=admission,
                )
            return ApplyResult(
                ResultKind.DELETE,
                entry.index,
                entry.term,
                request_id=request_id,
                existed=admission == delete_code(True),
            )
        admission = (
            f"write {session.seq} of the client was a "
            f"{'delete' if is_delete_code(admission) else 'put'} when it applied, not a "
            f"{'delete' if isinstance(write, DeleteCommand) else 'put'}: the client reused a number"
        )
    return ApplyResult(
        ResultKind.EXPIRED, entry.index, entry.term, request_id=request_id, error=admission
    )


def _digest_pinned(index: int, pinned: PinnedState) -> ChecksumRecord:
    """The record of a CHECKSUM entry (in a worker thread). A damaged block or a failing disk
    under the pinned tables becomes the record's error: the replica's state cannot be read."""
    try:
        checksum = pinned.checksum()
    except StorageError as error:
        return ChecksumRecord(index, None, str(error))
    except OSError as error:
        return ChecksumRecord(index, None, f"reading the shard's tables failed: {error}")
    return ChecksumRecord(index, verify.StateChecksum(checksum.key_count, checksum.digest), "")


_SYSTEM_END = prefix_successor(SYSTEM_KEY_PREFIX)


def _without_system_space(
    start: bytes | None, end: bytes | None
) -> list[tuple[bytes | None, bytes | None]]:
    """[start, end) minus the reserved transaction key space, as up to two ranges in order."""
    low_part = (start, SYSTEM_KEY_PREFIX if end is None or end > SYSTEM_KEY_PREFIX else end)
    ranges: list[tuple[bytes | None, bytes | None]] = []
    if low_part[0] is None or low_part[1] is None or low_part[0] < low_part[1]:
        ranges.append(low_part)
    if _SYSTEM_END is not None and (end is None or end > _SYSTEM_END):
        high_start = _SYSTEM_END if start is None or start < _SYSTEM_END else start
        ranges.append((high_start, end))
    return ranges
