"""A standalone durable key-value store: the WAL in front of one LSM engine.

Inside a node, the Raft log (kept in the node's WAL) is what makes an engine's memtable
recoverable: the engine reopens at its durable applied index and Raft replays from there.
Single-node users (tests, benchmarks, `minikv bench engine`) have no Raft log, so `Store` plays
that part itself with the same two pieces and the same contract:

- Every `write_batch` is one `KV_BATCH` record carrying a sequence number, appended and
  fdatasynced (one write + one fsync per batch) before the batch is applied to the memtable
  under that sequence number as its "applied index". A batch is acknowledged only once durable.
- On open, records with a sequence above `engine.applied_index` (what the engine's flushed
  tables cover, persisted atomically with each flush) are replayed, in order. Records at or
  below it are skipped, so a crash between a flush and the WAL truncation replays nothing twice.
- Once a flush makes sequences durable in tables, WAL segments holding only such records are
  deleted (log truncation); the segment holding the oldest unflushed record is kept.

A batch is validated in full before it reaches the WAL: a record that the engine would refuse
on replay would make the store unopenable, so invalid input must never become durable.
"""

from __future__ import annotations

import collections
import threading
from collections.abc import Sequence
from pathlib import Path

from minikv_core.storage.engine import Delete, Engine, EngineOptions, Op, Put
from minikv_core.storage.errors import StorageError
from minikv_core.storage.limits import WAL_SEGMENT_SIZE_BYTES_DEFAULT
from minikv_core.storage.lsm_limits import (
    LSM_BATCH_OPS_MAX,
    LSM_KEY_SIZE_BYTES_MAX,
    LSM_VALUE_SIZE_BYTES_MAX,
)
from minikv_core.storage.memtable import check_key, check_value
from minikv_core.storage.wal import Position, Wal
from minikv_core.storage.wal_records import KvBatch, KvOp, OpKind, RecordType

WAL_DIRECTORY_NAME = "wal"
ENGINE_DIRECTORY_NAME = "engine"

# A write: (key, value) puts the value, (key, None) deletes the key.
Write = tuple[bytes, bytes | None]


class StoreClosedError(StorageError):
    """The store was used after `close()`."""


class Store:
    """Durable single-node key-value store. Thread-safe; writes are serialized."""

    def __init__(self, path: Path, wal: Wal, engine: Engine) -> None:
        self.path = path
        self._wal = wal
        self._engine = engine
        self._write_lock = threading.Lock()
        self._sequence = engine.applied_index
        # (sequence, position) of each WAL record not yet covered by flushed tables, oldest
        # first: the truncation watermark is the position of the oldest one.
        self._unflushed: collections.deque[tuple[int, Position]] = collections.deque()
        self._closed = False

    @classmethod
    def open(
        cls,
        path: Path | str,
        *,
        segment_size_bytes: int = WAL_SEGMENT_SIZE_BYTES_DEFAULT,
        engine_options: EngineOptions | None = None,
    ) -> Store:
        """Open or create the store at `path`, replaying the WAL above the flushed index."""
        root = Path(path)
        root.mkdir(parents=True, exist_ok=True)
        engine = Engine.open(root / ENGINE_DIRECTORY_NAME, engine_options)
        try:
            wal = Wal.open(root / WAL_DIRECTORY_NAME, segment_size_bytes=segment_size_bytes)
        except BaseException:
            engine.close()
            raise
        store = cls(root, wal, engine)
        try:
            store._replay()
        except BaseException:
            store.close()
            raise
        return store

    def _replay(self) -> None:
        durable = self._engine.applied_index
        last = durable
        for entry in self._wal.read():
            if entry.record_type != RecordType.KV_BATCH:
                raise StorageError(
                    f"{self._wal.directory}: record at {entry.position} has type "
                    f"{entry.record_type.name}; a standalone store holds only KV_BATCH records"
                )
            batch = KvBatch.decode(entry.payload)
            if batch.sequence <= durable:
                continue  # already in the engine's flushed tables
            if batch.sequence != last + 1:
                raise StorageError(
                    f"{self._wal.directory}: batch sequence {batch.sequence} at "
                    f"{entry.position} does not follow {last}; the log has a gap"
                )
            self._engine.apply(_engine_ops(batch.ops), batch.sequence)
            self._unflushed.append((batch.sequence, entry.position))
            last = batch.sequence
        self._sequence = last

    @property
    def engine(self) -> Engine:
        return self._engine

    @property
    def wal(self) -> Wal:
        return self._wal

    @property
    def sequence(self) -> int:
        """The sequence number of the last acknowledged batch."""
        return self._sequence

    def write_batch(self, writes: Sequence[Write]) -> int:
        """Apply `writes` atomically and durably; return the batch's sequence number.

        Returns only after the batch is fsynced in the WAL; it is then visible to reads.
        """
        # A snapshot of the caller's sequence: the WAL record and the memtable must be made
        # from the same pairs even if the caller's list changes meanwhile.
        pairs = tuple(writes)
        if len(pairs) > LSM_BATCH_OPS_MAX:
            raise ValueError(f"batch of {len(pairs)} ops exceeds the limit of {LSM_BATCH_OPS_MAX}")
        with self._write_lock:
            self._check_open()
            sequence = self._sequence + 1
            # Each key and value is checked once, while it is encoded (nothing is durable
            # before the whole batch passed); the engine takes the checked pairs as they are.
            payload = KvBatch.encode_pairs(
                sequence,
                pairs,
                key_size_bytes_max=LSM_KEY_SIZE_BYTES_MAX,
                value_size_bytes_max=LSM_VALUE_SIZE_BYTES_MAX,
                check_pair=_check_write,
            )
            position = self._wal.append_sync([(RecordType.KV_BATCH, payload)])
            # Durable from here: a failure below must not let the sequence be reused.
            self._sequence = sequence
            self._unflushed.append((sequence, position))
            self._engine.apply_checked(pairs, sequence)
            self._truncate_flushed()
        return sequence

    def put(self, key: bytes, value: bytes) -> int:
        return self.write_batch([(key, value)])

    def delete(self, key: bytes) -> int:
        return self.write_batch([(key, None)])

    def get(self, key: bytes) -> bytes | None:
        if self._closed:  # _check_open, inlined: a get is ~5 us, a call ~0.1
            self._check_open()
        return self._engine.get(key)

    def scan(
        self,
        start: bytes | None = None,
        end: bytes | None = None,
        *,
        prefix: bytes | None = None,
        limit: int | None = None,
        reverse: bool = False,
    ) -> list[tuple[bytes, bytes]]:
        self._check_open()
        return list(
            self._engine.scan(start=start, end=end, prefix=prefix, limit=limit, reverse=reverse)
        )

    def flush(self) -> None:
        """Make everything written durable in tables and truncate the WAL behind it."""
        with self._write_lock:
            self._check_open()
            self._engine.flush()
            self._truncate_flushed()

    def _truncate_flushed(self) -> None:
        """Drop WAL segments whose every record is covered by flushed tables (write lock held)."""
        durable = self._engine.durable_applied_index
        if not self._unflushed or self._unflushed[0][0] > durable:
            return
        while self._unflushed and self._unflushed[0][0] <= durable:
            self._unflushed.popleft()
        watermark = self._unflushed[0][1] if self._unflushed else self._wal.end_position
        self._wal.truncate_before(watermark)

    def _check_open(self) -> None:
        if self._closed:
            raise StoreClosedError(f"store at {self.path} is closed")

    def close(self) -> None:
        """Flush the engine (so reopening replays nothing) and close both parts."""
        with self._write_lock:
            if self._closed:
                return
            self._closed = True
            try:
                self._engine.flush()
                self._truncate_flushed()
                self._engine.close()
            finally:
                self._wal.close()


def _check_write(key: object, value: object) -> None:
    """Raise the precise InvalidKeyError / InvalidValueError of a write, if it has one."""
    checked_key = check_key(key)
    if value is not None:
        check_value(value, checked_key)


def _engine_ops(ops: Sequence[KvOp]) -> list[Op]:
    return [Put(op.key, op.value) if op.kind == OpKind.PUT else Delete(op.key) for op in ops]
