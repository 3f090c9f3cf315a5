"""The per-shard LSM engine: memtable, background flush and compaction, snapshots.

One `Engine` owns one directory:

    MANIFEST        live tables by sorted run + the applied Raft index they cover (manifest.py)
    000012.sst ...  immutable tables (sstable_format.py)
    LOCK            flock()ed while the engine is open: one owner per directory

Applied index (the contract with the Raft host). `apply(ops, applied_index)` inserts a batch
into the memtable and records `applied_index`; indexes must strictly increase. A flush writes a
memtable to a table and, in the same atomic manifest replacement, records the last index that
memtable holds. After a crash the memtable is lost and `applied_index` reopens as the durable
one, so the host replays its log from exactly `engine.applied_index + 1`.

Threads and consistency. Readers never lock: they read `self._view` once, an immutable
`_View` (active memtable, immutable memtables, version = tuple of sorted runs) that writers
replace atomically, as RocksDB's SuperVersion. A get sees each key in the newest structure
holding it; a scan copies the active memtable's range under the write lock (the only mutable
part) and iterates the rest lock-free. Background work:

- Flush thread: when the memtable reaches `memtable_size_bytes` it becomes immutable and a new
  one takes writes at once; the flush thread writes it as a new run, fsyncs, replaces the
  manifest, then swaps the view. At most LSM_IMMUTABLE_MEMTABLES_MAX memtables wait; past
  that `apply` waits (write stall), bounding memory. With `background_flush=False` the `apply`
  that fills the memtable flushes it itself (a 4 MiB memtable takes ~0.1 s): every flush then
  happens at a point fixed by the calls, which deterministic tests need.
- Compaction threads (LSM_COMPACTION_THREADS): run the size-tiered policy of compaction.py on
  disjoint windows of runs, so fresh flushes keep merging while a big merge runs. A merge reads
  only immutable tables, writes new files, and holds no lock that reads or writes need; it
  takes the version lock only to install its result (one manifest write). Merges of
  `compaction_process_min_bytes` or more run in worker processes shared by every engine of
  the process (compaction.py: a merge in a thread holds the GIL that reads need).

Locks, always taken in this order: `_exclusive_lock` (one `compact()` or `install_snapshot()`
at a time; background merges are paused and drained while it is held) -> `_version_lock`
(serializes manifest writes and version installs; held during their fsync) -> `_lock` (the
memtable, the view and the bookkeeping of merges; never held across I/O).

Obsolete tables are unlinked under the version lock right after the manifest that drops them is
durable. Readers holding an older view keep reading them through their open descriptors (POSIX
keeps an unlinked inode alive while open; sstable.py closes a descriptor when its last reader
drops the table), so compaction never waits for readers and readers never wait for it.

Crash safety: a table is fdatasynced and its directory entry fsynced before any manifest names
it; the manifest is replaced atomically (manifest.py). A kill at any moment leaves the old or
the new manifest, plus possibly table files no manifest names: those orphans (and a stray
MANIFEST.tmp) are deleted on open. A directory that has tables but no MANIFEST is refused
rather than guessed about.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import shutil
import struct
import threading
import zlib
from array import array
from bisect import bisect_left
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, Literal, NamedTuple

import crc32c as _crc32c_module

from minikv_core.storage.block_cache import BlockCache, BlockCacheStats
from minikv_core.storage.bloom import MASK_OF_6_BITS as _MASK_OF_6_BITS
from minikv_core.storage.bloom import MASK_OF_12_BITS as _MASK_OF_12_BITS
from minikv_core.storage.compaction import (
    SHARED_WORKERS,
    WRITE_RUN_CHUNK_ENTRIES,
    Chunk,
    CompactionCancelledError,
    CompactionJob,
    CompactionPlan,
    Entry,
    WorkerLostError,
    entry_chunks,
    file_numbers_needed,
    is_temporary_table_name,
    merge_chunks,
    merge_newest_wins,
    merge_rounds,
    pack_entries,
    pick_compaction,
    plan_full_compaction,
    write_run,
)
from minikv_core.storage.errors import CorruptionError, StorageError
from minikv_core.storage.lsm_limits import (
    LSM_BATCH_OPS_MAX,
    LSM_BLOCK_CACHE_BYTES_DEFAULT,
    LSM_BLOCK_SIZE_BYTES_MIN,
    LSM_BLOCK_SIZE_BYTES_TARGET,
    LSM_BLOOM_BITS_PER_KEY,
    LSM_BLOOM_PROBES,
    LSM_COMPACTION_PROCESS_MIN_BYTES_DEFAULT,
    LSM_COMPACTION_THREADS,
    LSM_IMMUTABLE_MEMTABLES_MAX,
    LSM_KEY_SIZE_BYTES_MAX,
    LSM_MEMTABLE_SIZE_BYTES_DEFAULT,
    LSM_MEMTABLE_SIZE_BYTES_MIN,
    LSM_RUNS_FORCE_MERGE,
    LSM_RUNS_STALL,
    LSM_TABLE_SIZE_BYTES_TARGET_DEFAULT,
    LSM_TIER_FANOUT,
)
from minikv_core.storage.manifest import (
    MANIFEST_NAME,
    MANIFEST_TEMP_NAME,
    ManifestState,
    TableMeta,
    fsync_directory,
    read_manifest,
    write_manifest,
)
from minikv_core.storage.memtable import (
    InvalidKeyError,
    InvalidValueError,
    KeyTooLargeError,
    Memtable,
    ValueTooLargeError,
    check_key,
    check_value,
)
from minikv_core.storage.sstable import (
    ABSENT,
    Absent,
    TableReader,
    TableWriter,
)
from minikv_core.storage.sstable_format import parse_table_file_name, table_file_name

log = logging.getLogger(__name__)

__all__ = [
    "AppliedIndexError",
    "BackgroundError",
    "Delete",
    "Engine",
    "EngineClosedError",
    "EngineLockedError",
    "EngineOptions",
    "EngineStats",
    "InvalidKeyError",
    "InvalidValueError",
    "KeyTooLargeError",
    "Op",
    "PinnedState",
    "Put",
    "SnapshotInfo",
    "StateChecksum",
    "TableInfo",
    "ValueTooLargeError",
]

LOCK_NAME: Final = "LOCK"
crc32 = zlib.crc32
crc32c = _crc32c_module.crc32c
_KEY_MAX: Final = LSM_KEY_SIZE_BYTES_MAX
_LENGTH: Final = struct.Struct("<I")


# --- errors ----------------------------------------------------------------------------------


class EngineClosedError(StorageError):
    """The engine was closed; open it again to use it."""


class EngineLockedError(StorageError):
    """Another `Engine` (in this or another process) has the directory open."""


class BackgroundError(StorageError):
    """A background flush or compaction failed; the engine refuses writes from then on.

    Reads still work (the durable tables and the memtables are intact). Why refuse writes: a
    failed flush means the memtable can no longer be made durable in order, so accepting more
    writes would only grow what is lost. Close and reopen; the host replays its log.
    """


class AppliedIndexError(StorageError, ValueError):
    """`apply` was given an applied index that does not move forward."""


# --- public records --------------------------------------------------------------------------


class Put(NamedTuple):
    key: bytes
    value: bytes


class Delete(NamedTuple):
    key: bytes


Op = Put | Delete


@dataclass(frozen=True, slots=True)
class EngineOptions:
    """Tuning knobs; the defaults suit a shard of up to a few GiB."""

    # The memtable is flushed once its charged size (keys + values + per-entry overhead)
    # reaches this. It is also the base of the compaction tiers.
    memtable_size_bytes: int = LSM_MEMTABLE_SIZE_BYTES_DEFAULT
    block_size_bytes: int = LSM_BLOCK_SIZE_BYTES_TARGET
    table_size_bytes: int = LSM_TABLE_SIZE_BYTES_TARGET_DEFAULT
    bloom_bits_per_key: int = LSM_BLOOM_BITS_PER_KEY
    # A private cache of this many bytes, unless `block_cache` (shared by a node's engines)
    # is given.
    block_cache_bytes: int = LSM_BLOCK_CACHE_BYTES_DEFAULT
    block_cache: BlockCache | None = field(default=None, compare=False)
    # Off: a full memtable is flushed by the `apply` call that filled it, in the caller's
    # thread (no flush thread). Slower writes, but every flush happens at a point fixed by
    # the sequence of calls: deterministic tests use it.
    background_flush: bool = True
    # Off: compaction runs only when `compact()` is called (and writes never stall on runs).
    background_compaction: bool = True
    # Merges of at least this many input bytes run in a worker process (compaction.py: a
    # merge in a thread holds the GIL that foreground reads need); smaller ones, and all if
    # None, run in the engine's thread.
    compaction_process_min_bytes: int | None = LSM_COMPACTION_PROCESS_MIN_BYTES_DEFAULT
    tier_fanout: int = LSM_TIER_FANOUT
    # `close()` flushes the memtable so reopening does not need the host to replay its log.
    flush_on_close: bool = True
    # Gets and scans copy data blocks out of a memory map of each table rather than `pread`
    # them: ~1 us less per get (sstable._map_file, which also says what it trades away).
    mmap_reads: bool = True

    def __post_init__(self) -> None:
        if self.memtable_size_bytes < LSM_MEMTABLE_SIZE_BYTES_MIN:
            raise ValueError(
                f"memtable_size_bytes must be >= {LSM_MEMTABLE_SIZE_BYTES_MIN}, "
                f"got {self.memtable_size_bytes}"
            )
        if self.block_size_bytes < LSM_BLOCK_SIZE_BYTES_MIN:
            raise ValueError(
                f"block_size_bytes must be >= {LSM_BLOCK_SIZE_BYTES_MIN}, "
                f"got {self.block_size_bytes}"
            )
        if self.table_size_bytes < self.block_size_bytes:
            raise ValueError("table_size_bytes must be >= block_size_bytes")
        if self.bloom_bits_per_key < LSM_BLOOM_PROBES:
            raise ValueError(f"bloom_bits_per_key must be >= {LSM_BLOOM_PROBES}")
        if self.block_cache_bytes < 0:
            raise ValueError("block_cache_bytes must be >= 0")
        if self.compaction_process_min_bytes is not None and self.compaction_process_min_bytes < 0:
            raise ValueError("compaction_process_min_bytes must be >= 0 or None")
        if not 2 <= self.tier_fanout <= LSM_RUNS_FORCE_MERGE:
            raise ValueError(f"tier_fanout must be in 2..{LSM_RUNS_FORCE_MERGE}")


@dataclass(frozen=True, slots=True)
class TableInfo:
    """One live table, for the dashboard and `stats`. `level` is the sorted run it belongs to:
    0 is the newest run; larger levels hold older data (compaction.py)."""

    name: str
    file_number: int
    level: int
    size_bytes: int
    key_count: int  # entries, tombstones included
    tombstone_count: int
    smallest: bytes
    largest: bytes


@dataclass(frozen=True, slots=True)
class EngineStats:
    applied_index: int
    durable_applied_index: int
    memtable_entries: int
    memtable_bytes: int
    immutable_memtables: int
    runs: int
    tables: int
    table_bytes: int
    table_entries: int
    flushes: int
    flushes_in_worker: int  # of `flushes`, those written by a compaction worker process
    bytes_flushed: int
    compactions: int
    compaction_bytes_read: int
    compaction_bytes_written: int
    write_stalls: int
    block_cache: BlockCacheStats
    background_error: str | None

    @property
    def write_amplification(self) -> float:
        """Bytes written to tables per byte flushed (1.0 before any compaction)."""
        if not self.bytes_flushed:
            return 0.0
        return (self.bytes_flushed + self.compaction_bytes_written) / self.bytes_flushed


@dataclass(frozen=True, slots=True)
class SnapshotInfo:
    """A snapshot directory: a MANIFEST and the tables it names, at one applied index."""

    path: Path
    applied_index: int
    files: tuple[str, ...]
    size_bytes: int
    key_count: int  # entries in the tables, tombstones included


@dataclass(frozen=True, slots=True)
class StateChecksum:
    """A digest of the live key/value state at `applied_index` (equal state, equal digest)."""

    applied_index: int
    key_count: int
    digest: str  # BLAKE2b-128, hex


# --- internal structures ---------------------------------------------------------------------


class _Run:
    """A sorted run: disjoint tables in key order. Immutable."""

    __slots__ = ("largest_keys", "metas", "probes", "size_bytes", "tables")

    def __init__(self, tables: Sequence[TableReader], metas: Sequence[TableMeta]) -> None:
        assert tables and len(tables) == len(metas)
        self.tables = tuple(tables)
        self.metas = tuple(metas)
        self.largest_keys = [table.largest for table in tables]
        # Per table, what a point get checks before reading it (unpacked in one step).
        self.probes = [
            (table.smallest, table.bloom_words, table.bloom_word_count, table) for table in tables
        ]
        self.size_bytes = sum(meta.size_bytes for meta in metas)

    @property
    def tombstone_count(self) -> int:
        return sum(meta.tombstone_count for meta in self.metas)

    def iter_chunks(
        self, start: bytes | None, end: bytes | None, reverse: bool, fill_cache: bool = True
    ) -> Iterator[Chunk]:
        first = 0 if start is None else bisect_left(self.largest_keys, start)
        tables = self.tables[first:]
        if reverse:
            tables = tables[::-1]
        for table in tables:
            if end is not None and table.smallest >= end:
                if reverse:
                    continue
                return
            yield from table.iter_chunks(start, end, reverse, fill_cache)

    def iter_range(
        self, start: bytes | None, end: bytes | None, reverse: bool, fill_cache: bool = True
    ) -> Iterator[Entry]:
        first = 0 if start is None else bisect_left(self.largest_keys, start)
        tables = self.tables[first:]
        if reverse:
            tables = tables[::-1]
        for table in tables:
            if end is not None and table.smallest >= end:
                if reverse:
                    continue
                return
            yield from table.iter_range(start, end, reverse, fill_cache)


@dataclass(frozen=True, slots=True)
class _Version:
    runs: tuple[_Run, ...]  # newest first
    applied_index: int  # every write <= this index is in `runs`, nothing later

    def state(self, next_file_number: int) -> ManifestState:
        return ManifestState(
            self.applied_index, next_file_number, tuple(r.metas for r in self.runs)
        )


# What a point get needs of one run, as a tuple it unpacks in one step (attribute loads cost
# ~25 ns each, and a get visits every run): (smallest, largest) of the whole run, then for a
# run of one table (bloom words, bloom word count, table, None); for a run of several
# (_, _, _, (largest key of each table, each table's probe)): the get then bisects for the one
# table whose range may hold the key. Same types in both, for one loop.
_TableProbe = tuple[bytes, "array[int]", int, TableReader]
_RunTables = tuple[list[bytes], list[_TableProbe]]
_Probe = tuple[bytes, bytes, "array[int]", int, TableReader, _RunTables | None]


def _probe(run: _Run) -> _Probe:
    first, last = run.tables[0], run.tables[-1]
    tables = None if len(run.tables) == 1 else (run.largest_keys, run.probes)
    return (first.smallest, last.largest, first.bloom_words, first.bloom_word_count, first,
            tables)  # fmt: skip


class _View:
    """What a reader needs, swapped as one reference (RocksDB's SuperVersion)."""

    __slots__ = ("immutables", "memtable", "probes", "runs", "version")

    def __init__(
        self, memtable: Memtable, immutables: tuple[Memtable, ...], version: _Version
    ) -> None:
        self.memtable = memtable
        self.immutables = immutables  # newest first
        self.version = version
        self.runs = version.runs
        self.probes = tuple(_probe(run) for run in version.runs)


def _effective_range(
    start: bytes | None, end: bytes | None, prefix: bytes | None
) -> tuple[bytes | None, bytes | None]:
    if prefix:
        if start is None or start < prefix:
            start = prefix
        successor = prefix_successor(prefix)
        if successor is not None and (end is None or end > successor):
            end = successor
    return start, end


def prefix_successor(prefix: bytes) -> bytes | None:
    """The smallest key above every key starting with `prefix`; None if there is none."""
    trimmed = prefix.rstrip(b"\xff")
    if not trimmed:
        return None
    return trimmed[:-1] + bytes([trimmed[-1] + 1])


def _link_or_copy(source: Path, target: Path) -> None:
    """Hard-link `source` as `target` (tables are immutable, so sharing the inode is safe);
    copy and fsync when linking is impossible (another filesystem)."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)
        fd = os.open(target, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


class PinnedState:
    """An engine's live state at one applied index, held so that its digest can be computed
    later, in another thread, while the engine goes on applying, flushing and compacting (a
    replica's `verify` checksum must not stall the node's event loop; state_machine.py).

    Why it stays exact: it holds a copy of the active memtable (the only mutable part, copied
    under the write lock as `Engine.scan` does), the immutable memtables (never written again)
    and the sorted runs (immutable, each holding its `TableReader`s). A compaction or snapshot
    install that replaces those runs unlinks their files, but a reader's descriptor stays open
    until the reader is garbage (sstable.py), and this object keeps the readers: POSIX keeps an
    unlinked inode readable while a descriptor is open. The same holds after `Engine.close`,
    which drops only the engine's own reference to its view.

    Cost while held: the copied entry list (references to the memtable's keys and values, not
    copies of the bytes), the immutable memtables a flush would otherwise free and the disk
    space of tables a compaction replaced. Its owner drops it once the digest is taken.
    """

    __slots__ = ("_immutables", "_newest", "_runs", "applied_index")

    def __init__(
        self,
        applied_index: int,
        newest: list[tuple[bytes, bytes | None]],
        immutables: tuple[Memtable, ...],
        runs: tuple[_Run, ...],
    ) -> None:
        """Private: use `Engine.pin_state`."""
        self.applied_index = applied_index
        self._newest = newest
        self._immutables = immutables
        self._runs = runs

    def checksum(self) -> StateChecksum:
        """The digest of this state. Its format is fixed (tests pin it with a golden value):
        replicas of mixed versions compare digests.

        Blocking and O(data), lock-free: run it off the event loop. Memory is one merge round
        beyond what is pinned. A block read from disk with a bad CRC raises `CorruptionError`
        naming the file and offset.
        """
        newest = self._newest
        sources: list[Iterator[Chunk]] = [iter([([k for k, _ in newest], [v for _, v in newest])])]
        sources.extend(m.iter_chunks(None, None) for m in self._immutables)
        sources.extend(run.iter_chunks(None, None, False, fill_cache=False) for run in self._runs)
        digest = hashlib.blake2b(digest_size=16)
        pack = _LENGTH.pack
        count = 0
        for live in merge_rounds(sources):
            for key, value in live:
                digest.update(b"".join((pack(len(key)), key, pack(len(value)), value)))
            count += len(live)
        return StateChecksum(self.applied_index, count, digest.hexdigest())


# --- the engine ------------------------------------------------------------------------------


class Engine:
    """One shard's LSM store. Create with `Engine.open(path, options)`.

    Thread-safe: any number of readers and writers; `apply` calls are serialized.
    """

    def __init__(self, path: Path, options: EngineOptions, lock_fd: int) -> None:
        """Private: use `Engine.open`."""
        self.path = path
        self.options = options
        self._lock_fd = lock_fd
        # None when disabled (block_cache_bytes=0 and no shared cache): readers then skip
        # the cache calls altogether.
        self._cache: BlockCache | None = options.block_cache
        if self._cache is None and options.block_cache_bytes:
            self._cache = BlockCache(options.block_cache_bytes)
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._version_lock = threading.Lock()
        self._exclusive_lock = threading.Lock()  # one compact() or install_snapshot() at once
        self._flush_lock = threading.Lock()  # one flush at a time, in memtable order
        self._view: _View | None = None
        self._applied_index = 0
        self._next_file_number = 1
        self._epoch = 0  # bumped by install_snapshot: in-flight flush results are discarded
        self._stopping = False
        self._closed = False
        self._background_error: BaseException | None = None
        # Merges in progress (background and compact()), and the runs they consume: a new
        # background merge never takes a busy run (compaction.pick_compaction).
        self._compactions_running = 0
        self._busy_runs: set[_Run] = set()
        # > 0 while compact() or install_snapshot() needs every run to itself: no background
        # merge starts, and those callers wait for running ones to finish.
        self._compactions_paused = 0
        self._flushes = 0
        self._flushes_in_worker = 0
        self._bytes_flushed = 0
        self._compactions = 0
        self._compaction_bytes_read = 0
        self._compaction_bytes_written = 0
        self._write_stalls = 0
        self._threads: list[threading.Thread] = []

    # --- open / close ------------------------------------------------------------------------

    @classmethod
    def open(cls, path: Path | str, options: EngineOptions | None = None) -> Engine:
        """Open (creating if needed) the engine in `path`; loads only index + bloom per table.

        Raises `EngineLockedError` if another engine has it open, `CorruptionError` if the
        manifest or a table's footer, index or filter is damaged or a listed table is missing.
        """
        directory = Path(path)
        directory.mkdir(parents=True, exist_ok=True)
        lock_fd = os.open(directory / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(lock_fd)
            raise EngineLockedError(f"{directory} is already open by another engine") from None
        try:
            engine = cls(directory, options or EngineOptions(), lock_fd)
            engine._load()
        except BaseException:
            os.close(lock_fd)  # releases the flock
            raise
        engine._start_threads()
        return engine

    def _load(self) -> None:
        directory = self.path
        state = read_manifest(directory)
        names = os.listdir(directory)
        if state is None:
            tables = [name for name in names if parse_table_file_name(name) is not None]
            if tables:
                raise CorruptionError(
                    directory / MANIFEST_NAME,
                    0,
                    f"no MANIFEST, but {len(tables)} table files (e.g. {sorted(tables)[0]}): "
                    "refusing to guess which are live",
                )
            state = ManifestState(applied_index=0, next_file_number=1, runs=())
            write_manifest(directory, state)
        live = {table.file_number for table in state.tables()}
        removed = False
        for name in names:
            number = parse_table_file_name(name)
            if (
                (number is not None and number not in live)
                or name == MANIFEST_TEMP_NAME
                or is_temporary_table_name(name)
            ):
                # An orphan: written by a flush or compaction whose manifest never committed,
                # or a compaction worker's temporary output.
                (directory / name).unlink()
                removed = True
        if removed:
            fsync_directory(directory)
        runs = tuple(
            _Run([self._open_table(meta) for meta in run_metas], run_metas)
            for run_metas in state.runs
        )
        version = _Version(runs, state.applied_index)
        self._applied_index = state.applied_index
        self._next_file_number = state.next_file_number
        self._view = _View(Memtable(state.applied_index), (), version)

    def _open_table(self, meta: TableMeta) -> TableReader:
        path = self.path / meta.file_name
        if not path.exists():
            raise CorruptionError(path, 0, "listed in the MANIFEST but missing")
        table = TableReader.open(path, self._cache, mapped=self.options.mmap_reads)
        if (
            table.file_size_bytes != meta.size_bytes
            or table.properties.entry_count != meta.entry_count
            or table.smallest != meta.smallest
            or table.largest != meta.largest
        ):
            table.close()
            raise CorruptionError(
                path,
                0,
                f"table ({table.file_size_bytes} bytes, {table.properties.entry_count} entries) "
                f"differs from the MANIFEST ({meta.size_bytes} bytes, {meta.entry_count} entries)",
            )
        return table

    def _start_threads(self) -> None:
        name = self.path.name or str(self.path)
        workers: list[threading.Thread] = []
        if self.options.background_flush:
            workers.append(threading.Thread(target=self._flush_loop, name=f"lsm-flush-{name}"))
        if self.options.background_compaction:
            workers.extend(
                threading.Thread(target=self._compaction_loop, name=f"lsm-compact{i}-{name}")
                for i in range(LSM_COMPACTION_THREADS)
            )
        for worker in workers:
            worker.daemon = True
            worker.start()
        self._threads = workers

    def close(self) -> None:
        """Flush (if `flush_on_close` and healthy), stop background work, release the directory.

        Merges in progress are finished and installed (as LevelDB's close waits for its
        background compaction): cancelling one throws its work away and leaves the next open
        with more runs to probe and the same merge to redo. No new merge starts. Idempotent.
        Calls racing `close()` may fail with `EngineClosedError`.
        """
        with self._lock:
            if self._closed:
                return
            healthy = self._background_error is None
        error: BaseException | None = None
        if self.options.flush_on_close and healthy:
            try:
                self.flush()
            except BaseException as exc:  # still stop the threads and release the lock
                error = exc
        with self._lock:
            self._stopping = True
            self._cond.notify_all()
        for worker in self._threads:
            worker.join()
        with self._lock:
            self._closed = True
            self._view = None  # the tables' descriptors close as their last reader lets go
            self._cond.notify_all()
        os.close(self._lock_fd)
        if error is not None:
            raise error

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    # --- reads -------------------------------------------------------------------------------

    def _opened_view(self) -> _View:
        view = self._view
        if view is None:
            raise EngineClosedError(f"engine at {self.path} is closed")
        return view

    def get(self, key: bytes) -> bytes | None:
        """The value of `key`, or None if it has none. Never blocks on writers or compaction."""
        if type(key) is not bytes or not 0 < len(key) <= _KEY_MAX:
            check_key(key)
        view = self._view
        if view is None:
            raise EngineClosedError(f"engine at {self.path} is closed")
        value: bytes | Literal[Absent.ABSENT] | None = view.memtable.entries.get(key, ABSENT)
        if value is not ABSENT:
            return value
        for immutable in view.immutables:
            value = immutable.entries.get(key, ABSENT)
            if value is not ABSENT:
                return value
        # bloom.key_hashes, inlined (once per get, for all tables).
        bits = crc32(key)
        mask = (
            _MASK_OF_12_BITS[bits & 4095]
            | _MASK_OF_12_BITS[bits >> 12 & 4095]
            | _MASK_OF_6_BITS[bits >> 24 & 63]
        )
        word_hash = crc32c(key)
        for smallest, largest, first_words, first_word_count, first, tables in view.probes:
            # TableReader.may_contain, inlined: most runs a get visits do not hold the key,
            # and this check is all they cost (one comparison pair, one word of the filter).
            if key < smallest or key > largest:
                continue
            if tables is None:
                words, word_count, table = first_words, first_word_count, first
            else:  # a run of several tables: the one whose range may hold the key
                largest_keys, table_probes = tables
                low, words, word_count, table = table_probes[bisect_left(largest_keys, key)]
                if key < low:
                    continue
            if words[word_hash % word_count] & mask != mask:
                continue
            found = table.find(key)
            if found is not ABSENT:
                return found
        return None

    def scan(
        self,
        start: bytes | None = None,
        end: bytes | None = None,
        prefix: bytes | None = None,
        limit: int | None = None,
        reverse: bool = False,
    ) -> list[tuple[bytes, bytes]]:
        """Live (key, value) pairs with start <= key < end and key.startswith(prefix), in key
        order (descending if `reverse`), at most `limit` of them (None: all)."""
        for bound, what in ((start, "start"), (end, "end"), (prefix, "prefix")):
            if bound is not None and not isinstance(bound, bytes):
                raise InvalidKeyError(
                    f"scan {what} must be bytes or None, got {type(bound).__name__}"
                )
        if limit is not None and (type(limit) is not int or limit < 0):
            raise ValueError(f"scan limit must be None or an int >= 0, got {limit!r}")
        low, high = _effective_range(start or None, end, prefix)
        if limit == 0 or (low is not None and high is not None and low >= high):
            return []
        with self._lock:
            view = self._opened_view()
            newest = view.memtable.copy_range(low, high, reverse, limit)
        if reverse:
            newest.reverse()
        sources: list[Iterator[Chunk]] = []
        if newest:
            sources.append(iter([([k for k, _ in newest], [v for _, v in newest])]))
        sources.extend(m.iter_chunks(low, high, reverse) for m in view.immutables)
        sources.extend(run.iter_chunks(low, high, reverse) for run in view.runs)
        return merge_chunks(sources, reverse, limit)

    def checksum(self) -> StateChecksum:
        """A digest of every live key and value at one applied index (a full scan: O(data));
        `pin_state().checksum()` computes the same thing, later and in another thread."""
        return self.pin_state().checksum()

    def pin_state(self) -> PinnedState:
        """The live state as of the call, to digest later and elsewhere (`PinnedState`).

        Cheap and synchronous: under the write lock it copies the active memtable's entries
        (bounded by `memtable_size_bytes`) and takes the immutable memtables and runs as they
        are; no table is read. Raises `EngineClosedError` if the engine is closed.
        """
        with self._lock:
            view = self._opened_view()
            newest = view.memtable.copy_range(None, None, False, None)
            return PinnedState(self._applied_index, newest, view.immutables, view.runs)

    @property
    def applied_index(self) -> int:
        """The last Raft index applied (held by the memtables and the tables)."""
        return self._applied_index

    @property
    def durable_applied_index(self) -> int:
        """The last Raft index whose effects are in flushed tables (survives a crash)."""
        return self._opened_view().version.applied_index

    # --- writes ------------------------------------------------------------------------------

    def _check_writable_locked(self) -> None:
        if self._closed or self._stopping:
            raise EngineClosedError(f"engine at {self.path} is closed")
        if self._background_error is not None:
            raise BackgroundError(
                f"engine at {self.path} refuses writes after a background failure: "
                f"{type(self._background_error).__name__}: {self._background_error}"
            ) from self._background_error

    def apply(self, ops: Sequence[Op], applied_index: int) -> None:
        """Apply a batch atomically (all ops or, on invalid input, none) at `applied_index`.

        `applied_index` must be greater than `self.applied_index` (Raft applies each entry
        once, in order). An empty batch only advances the index (e.g. a Raft no-op entry).
        """
        if len(ops) > LSM_BATCH_OPS_MAX:
            raise ValueError(f"batch of {len(ops)} ops exceeds the limit of {LSM_BATCH_OPS_MAX}")
        if type(applied_index) is not int:
            raise AppliedIndexError(
                f"applied_index must be an int, got {type(applied_index).__name__}"
            )
        prepared: list[tuple[bytes, bytes | None]] = []
        for op in ops:
            if type(op) is Put:
                key = check_key(op.key)
                prepared.append((key, check_value(op.value, key)))
            elif type(op) is Delete:
                prepared.append((check_key(op.key), None))
            else:
                raise TypeError(f"ops must be Put or Delete, got {type(op).__name__}")
        self.apply_checked(prepared, applied_index)

    def apply_checked(
        self, pairs: Sequence[tuple[bytes, bytes | None]], applied_index: int
    ) -> None:
        """`apply` of (key, value-or-None) pairs whose keys and values the caller has already
        checked with `check_key` / `check_value` (the Store does, before its WAL append):
        validating twice cost a tenth of a durable batch's CPU time."""
        with self._lock:
            self._check_writable_locked()
            if applied_index <= self._applied_index:
                raise AppliedIndexError(
                    f"applied_index {applied_index} does not follow the engine's "
                    f"{self._applied_index}"
                )
            view = self._opened_view()
            memtable = view.memtable
            memtable.set_many(pairs)
            memtable.applied_index = applied_index
            self._applied_index = applied_index
            full = memtable.size_bytes >= self.options.memtable_size_bytes
            if full:
                self._rotate_locked(memtable)
        if full and not self.options.background_flush:
            self._flush_pending()

    def put(self, key: bytes, value: bytes, applied_index: int | None = None) -> None:
        """`apply([Put(key, value)], applied_index)`; None means `self.applied_index + 1`
        (for standalone use without a Raft log)."""
        self.apply([Put(key, value)], self._next_index(applied_index))

    def delete(self, key: bytes, applied_index: int | None = None) -> None:
        """`apply([Delete(key)], applied_index)`; None means `self.applied_index + 1`."""
        self.apply([Delete(key)], self._next_index(applied_index))

    def _next_index(self, applied_index: int | None) -> int:
        return self._applied_index + 1 if applied_index is None else applied_index

    def _rotate_locked(self, memtable: Memtable) -> None:
        """Make `memtable` immutable and give writers a fresh one (the write lock is held).

        Waits while LSM_IMMUTABLE_MEMTABLES_MAX memtables already wait for the flush thread.
        """
        while True:
            view = self._opened_view()
            if view.memtable is not memtable:
                return  # another writer rotated it while we waited
            if len(view.immutables) < LSM_IMMUTABLE_MEMTABLES_MAX:
                break
            self._write_stalls += 1
            self._cond.wait()
            self._check_writable_locked()
        self._view = _View(
            Memtable(memtable.applied_index), (memtable, *view.immutables), view.version
        )
        self._cond.notify_all()

    def flush(self) -> int:
        """Make everything applied so far durable in tables; return the durable applied index.

        Synchronous: waits until every memtable pending at the call is written.
        """
        with self._lock:
            self._check_writable_locked()
            view = self._opened_view()
            memtable = view.memtable
            pending_index = (
                view.immutables[0].applied_index if view.immutables else view.version.applied_index
            )
            if len(memtable) or memtable.applied_index > pending_index:
                self._rotate_locked(memtable)
                target: Memtable | None = memtable
            else:
                target = view.immutables[0] if view.immutables else None
        if not self.options.background_flush:
            self._flush_pending()
        with self._lock:
            while target is not None:
                view = self._opened_view()
                if target not in view.immutables and target is not view.memtable:
                    break
                if self._background_error is not None:
                    self._check_writable_locked()
                self._cond.wait()
            return self._opened_view().version.applied_index

    # --- flush thread ------------------------------------------------------------------------

    def _fail(self, exc: BaseException) -> None:
        with self._lock:
            if self._background_error is None:
                self._background_error = exc
            self._cond.notify_all()

    def _new_writer(self) -> TableWriter:
        with self._lock:
            number = self._next_file_number
            self._next_file_number += 1
        return TableWriter(
            self.path / table_file_name(number),
            self.options.block_size_bytes,
            self.options.bloom_bits_per_key,
        )

    def _run_of(self, paths: Sequence[Path]) -> _Run | None:
        """Open the tables a flush or compaction just wrote (reading back their footer, index
        and filter: what was written is checked before a manifest names it) as a run."""
        if not paths:
            return None
        readers: list[TableReader] = []
        metas: list[TableMeta] = []
        for path in paths:
            number = parse_table_file_name(path.name)
            assert number is not None, path
            reader = TableReader.open(path, self._cache, mapped=self.options.mmap_reads)
            readers.append(reader)
            metas.append(
                TableMeta(
                    file_number=number,
                    size_bytes=reader.file_size_bytes,
                    entry_count=reader.properties.entry_count,
                    tombstone_count=reader.properties.tombstone_count,
                    smallest=reader.smallest,
                    largest=reader.largest,
                )
            )
        # The tables' directory entries are durable before any manifest names them.
        fsync_directory(self.path)
        return _Run(readers, metas)

    def _next_flush_locked(self, wait: bool) -> tuple[Memtable, int, bool] | None:
        """The oldest immutable memtable to flush, with the epoch and whether the flush may
        drop tombstones; None if there is none (and `wait` is False) or the engine stops."""
        while True:
            if self._stopping or self._background_error is not None:
                return None
            view = self._opened_view()
            if not view.immutables:
                if not wait:
                    return None
            elif not (self.options.background_compaction and len(view.runs) >= LSM_RUNS_STALL):
                # The oldest first: flushes install in order. Tombstones may go when there is
                # no older run for them to shadow.
                return view.immutables[-1], self._epoch, not view.runs
            # Nothing to flush yet, or too many runs: let compaction catch up first (the
            # write stall then reaches `apply` through the bounded immutable queue).
            self._cond.wait()

    def _flush_loop(self) -> None:
        while True:
            with self._lock:
                job = self._next_flush_locked(wait=True)
            if job is None:
                return
            try:
                self._flush_memtable(*job)
            except BaseException as exc:
                self._fail(exc)
                return

    def _flush_pending(self) -> None:
        """Flush every immutable memtable in the caller's thread (background_flush off)."""
        with self._flush_lock:
            while True:
                with self._lock:
                    job = self._next_flush_locked(wait=False)
                if job is None:
                    break
                try:
                    self._flush_memtable(*job)
                except BaseException as exc:
                    self._fail(exc)
                    raise
        with self._lock:
            self._check_writable_locked()

    def _flush_in_worker(self, memtable: Memtable, drop_tombstones: bool) -> list[Path] | None:
        """Write `memtable` as tables in a compaction worker process; None when the flush
        should run in this thread instead: a small memtable (below
        `compaction_process_min_bytes`: starting a worker costs more), no idle worker (a flush
        must not queue behind a long merge), or a worker that died mid-job.

        Why a process: building a table is ~1.2 us of Python per entry (~29 ms for a full
        4 MiB memtable), and a flush thread holds the GIL for it; a writer whose fsync
        returns meanwhile waits for the GIL up to the 5 ms switch interval, so a full flush cost
        a Store's writer ~30 ms of stalls (docs/benchmarks.md, "flush"). Packing the entries
        for the worker is a few C-speed passes (~2 ms), and the pipe writes release the GIL.
        """
        threshold = self.options.compaction_process_min_bytes
        if threshold is None or memtable.size_bytes < threshold or not len(memtable):
            return None
        with SHARED_WORKERS.try_borrowed() as worker:
            if worker is None:
                return None
            # In insertion order (the worker sorts): no sort under the GIL here. The
            # memtable is immutable now, so the two lists pair up.
            entries_bytes, entries = pack_entries(
                list(memtable.entries), list(memtable.entries.values())
            )
            count = file_numbers_needed(entries_bytes, self.options.table_size_bytes)
            with self._lock:
                first_number = self._next_file_number
                self._next_file_number += count
            job = CompactionJob(
                input_runs=(),
                output_dir=str(self.path),
                first_file_number=first_number,
                file_number_count=count,
                drop_tombstones=drop_tombstones,
                table_size_bytes=self.options.table_size_bytes,
                block_size_bytes=self.options.block_size_bytes,
                bloom_bits_per_key=self.options.bloom_bits_per_key,
                entries_bytes=entries_bytes,
            )
            try:
                return worker.run(job, cancelled=lambda: False, entries=entries)
            except WorkerLostError as exc:
                log.warning("%s: flushing in-thread: %s", self.path, exc)
                return None

    def _view_immutables(self) -> tuple[Memtable, ...]:
        view = self._view
        return () if view is None else view.immutables

    def _flush_memtable(self, memtable: Memtable, epoch: int, drop_tombstones: bool) -> None:
        written = self._flush_in_worker(memtable, drop_tombstones)
        in_worker = written is not None
        if written is None:
            written = [
                table.path
                for table in write_run(
                    memtable.iter_chunks(None, None, chunk_keys=WRITE_RUN_CHUNK_ENTRIES),
                    self._new_writer,
                    self.options.table_size_bytes,
                    drop_tombstones,
                )
            ]
        committed = False
        try:
            run = self._run_of(written)
            with self._version_lock:
                with self._lock:
                    current = self._opened_view().version
                    stale = self._epoch != epoch
                if stale:  # a snapshot was installed meanwhile; this memtable is superseded
                    return
                version = _Version(
                    ((run,) if run is not None else ()) + current.runs, memtable.applied_index
                )
                # From here the manifest on disk may name these tables, even if the write
                # fails half-way (a rename that did happen): they must never be deleted.
                committed = True
                write_manifest(self.path, version.state(self._next_file_number))
                with self._lock:
                    view = self._opened_view()
                    self._view = _View(
                        view.memtable,
                        tuple(m for m in view.immutables if m is not memtable),
                        version,
                    )
                    self._flushes += 1
                    self._flushes_in_worker += in_worker
                    self._bytes_flushed += 0 if run is None else run.size_bytes
                    self._cond.notify_all()
        finally:
            if not committed:
                for path in written:
                    path.unlink(missing_ok=True)

    # --- compaction --------------------------------------------------------------------------

    def _pick_locked(self) -> CompactionPlan | None:
        view = self._view
        if view is None or self._compactions_paused:
            return None
        return pick_compaction(
            [run.size_bytes for run in view.runs],
            self.options.memtable_size_bytes,
            self.options.tier_fanout,
            busy=[run in self._busy_runs for run in view.runs],
        )

    def _compaction_loop(self) -> None:
        while True:
            with self._lock:
                while True:
                    if self._stopping or self._background_error is not None:
                        return
                    plan = self._pick_locked()
                    if plan is not None:
                        break
                    self._cond.wait()
                version = self._opened_view().version
                inputs = version.runs[plan.first : plan.last + 1]
                self._busy_runs.update(inputs)
                self._compactions_running += 1
            try:
                self._compact(version, plan)
            except CompactionCancelledError:
                return
            except BaseException as exc:
                self._fail(exc)
                return
            finally:
                with self._lock:
                    self._busy_runs.difference_update(inputs)
                    self._compactions_running -= 1
                    self._cond.notify_all()

    @contextmanager
    def _exclusive(self) -> Iterator[None]:
        """Hold the engine's runs alone: no background merge runs or starts meanwhile."""
        with self._exclusive_lock:
            with self._lock:
                self._compactions_paused += 1
                try:
                    while self._compactions_running:
                        self._cond.wait()
                except BaseException:
                    self._compactions_paused -= 1
                    raise
            try:
                yield
            finally:
                with self._lock:
                    self._compactions_paused -= 1
                    self._cond.notify_all()

    def _compact(self, version: _Version, plan: CompactionPlan) -> None:
        """Merge `version.runs[plan.first : plan.last + 1]` and install the result.

        The caller marked the input runs busy (or holds `_exclusive`), so they stay live and
        adjacent: only their own merge replaces them, other merges replace disjoint windows,
        and flushes only add newer runs in front.
        """
        inputs = version.runs[plan.first : plan.last + 1]
        input_bytes = sum(run.size_bytes for run in inputs)
        threshold = self.options.compaction_process_min_bytes
        written: list[Path]
        if threshold is not None and input_bytes >= threshold:
            count = file_numbers_needed(input_bytes, self.options.table_size_bytes)
            with self._lock:
                first_number = self._next_file_number
                self._next_file_number += count
            job = CompactionJob(
                input_runs=tuple(tuple(str(t.path) for t in run.tables) for run in inputs),
                output_dir=str(self.path),
                first_file_number=first_number,
                file_number_count=count,
                drop_tombstones=plan.drop_tombstones,
                table_size_bytes=self.options.table_size_bytes,
                block_size_bytes=self.options.block_size_bytes,
                bloom_bits_per_key=self.options.bloom_bits_per_key,
            )
            with SHARED_WORKERS.borrowed() as worker:
                written = worker.run(job, cancelled=lambda: False)
        else:
            sources = [run.iter_range(None, None, False, fill_cache=False) for run in inputs]
            written = [
                table.path
                for table in write_run(
                    entry_chunks(merge_newest_wins(sources)),
                    self._new_writer,
                    self.options.table_size_bytes,
                    plan.drop_tombstones,
                )
            ]
        committed = False
        try:
            merged = self._run_of(written)
            with self._version_lock:
                current = self._opened_view().version
                first = next(i for i, run in enumerate(current.runs) if run is inputs[0])
                assert current.runs[first : first + len(inputs)] == inputs, "inputs not adjacent"
                runs = (
                    current.runs[:first]
                    + ((merged,) if merged is not None else ())
                    + current.runs[first + len(inputs) :]
                )
                new_version = _Version(runs, current.applied_index)
                committed = True  # see _flush_memtable: named tables are never deleted
                write_manifest(self.path, new_version.state(self._next_file_number))
                with self._lock:
                    view = self._opened_view()
                    self._view = _View(view.memtable, view.immutables, new_version)
                    self._compactions += 1
                    self._compaction_bytes_read += sum(run.size_bytes for run in inputs)
                    self._compaction_bytes_written += 0 if merged is None else merged.size_bytes
                    self._cond.notify_all()
                # Durable: the inputs are garbage. Readers of older views keep their open
                # descriptors; orphans of a crash right here are deleted on open.
                for run in inputs:
                    for reader in run.tables:
                        reader.path.unlink(missing_ok=True)
        finally:
            if not committed:
                for path in written:
                    path.unlink(missing_ok=True)

    def compact(self) -> None:
        """Flush, then merge every run into one (dropping all tombstones). Synchronous."""
        self.flush()
        with self._exclusive():
            with self._lock:
                self._check_writable_locked()
                version = self._opened_view().version
                oldest_tombstones = bool(version.runs) and version.runs[-1].tombstone_count > 0
                plan = plan_full_compaction(len(version.runs), oldest_tombstones)
                if plan is None:
                    return
                self._compactions_running += 1
            try:
                self._compact(version, plan)
            except CompactionCancelledError:
                raise EngineClosedError(f"engine at {self.path} closed during compact()") from None
            finally:
                with self._lock:
                    self._compactions_running -= 1
                    self._cond.notify_all()

    def wait_idle(self, timeout_s: float | None = None) -> None:
        """Wait until no flush is pending and (with background compaction) no compaction is
        due or running. Raises `BackgroundError` if background work failed, `TimeoutError`
        after `timeout_s` seconds."""
        with self._lock:
            idle = self._cond.wait_for(
                lambda: (
                    self._closed
                    or self._background_error is not None
                    or not (
                        self._view_immutables()
                        or self._compactions_running
                        or (self.options.background_compaction and self._pick_locked() is not None)
                    )
                ),
                timeout=timeout_s,
            )
            if not idle:
                raise TimeoutError(f"engine at {self.path} not idle after {timeout_s} s")
            self._check_writable_locked()

    # --- snapshots ---------------------------------------------------------------------------

    def snapshot(self, dest_dir: Path | str) -> SnapshotInfo:
        """Flush, then hard-link (or copy) the live tables and write a MANIFEST into
        `dest_dir` (created; must be empty): the shard's state at one applied index, the
        payload of a Raft InstallSnapshot. `Engine.open(dest_dir)` reads it as an engine."""
        destination = Path(dest_dir)
        destination.mkdir(parents=True, exist_ok=True)
        if any(destination.iterdir()):
            raise FileExistsError(f"snapshot directory {destination} is not empty")
        self.flush()
        with self._version_lock:  # no compaction may unlink a table while we link it
            version = self._opened_view().version
            files: list[str] = []
            for run in version.runs:
                for table in run.tables:
                    _link_or_copy(table.path, destination / table.path.name)
                    files.append(table.path.name)
            metas = [meta for run in version.runs for meta in run.metas]
            next_number = max((meta.file_number for meta in metas), default=0) + 1
            fsync_directory(destination)
            write_manifest(destination, version.state(next_number))
        return SnapshotInfo(
            path=destination,
            applied_index=version.applied_index,
            files=tuple(files),
            size_bytes=sum(meta.size_bytes for meta in metas),
            key_count=sum(meta.entry_count for meta in metas),
        )

    def install_snapshot(self, snapshot_dir: Path | str) -> SnapshotInfo:
        """Replace this engine's whole state (memtables included) with a snapshot's.

        Every table of the snapshot is verified block by block first, so a damaged snapshot
        raises `CorruptionError` and changes nothing. The switch is the manifest rename: a
        crash before it keeps the old state, after it the new one.
        """
        source = Path(snapshot_dir)
        state = read_manifest(source)
        if state is None:
            raise CorruptionError(source / MANIFEST_NAME, 0, "no MANIFEST: not a minikv snapshot")
        for meta in state.tables():
            path = source / meta.file_name
            if not path.exists():
                raise CorruptionError(path, 0, "listed in the snapshot MANIFEST but missing")
            table = TableReader.open(path)
            try:
                table.verify()
                if (table.file_size_bytes, table.properties.entry_count) != (
                    meta.size_bytes,
                    meta.entry_count,
                ):
                    raise CorruptionError(path, 0, "table differs from the snapshot MANIFEST")
            finally:
                table.close()
        with self._exclusive(), self._version_lock:
            with self._lock:
                self._check_writable_locked()
            renamed_runs: list[tuple[TableMeta, ...]] = []
            created: list[Path] = []
            committed = False
            try:
                for run_metas in state.runs:
                    renamed: list[TableMeta] = []
                    for meta in run_metas:
                        with self._lock:
                            number = self._next_file_number
                            self._next_file_number += 1
                        target = self.path / table_file_name(number)
                        _link_or_copy(source / meta.file_name, target)
                        created.append(target)
                        renamed.append(
                            TableMeta(
                                number,
                                meta.size_bytes,
                                meta.entry_count,
                                meta.tombstone_count,
                                meta.smallest,
                                meta.largest,
                            )
                        )
                    renamed_runs.append(tuple(renamed))
                fsync_directory(self.path)
                runs = tuple(
                    _Run([self._open_table(meta) for meta in metas], metas)
                    for metas in renamed_runs
                )
                version = _Version(runs, state.applied_index)
                committed = True  # see _flush_memtable: named tables are never deleted
                try:
                    write_manifest(self.path, version.state(self._next_file_number))
                except BaseException as exc:
                    self._fail(exc)  # disk and memory may now disagree: refuse writes
                    raise
            finally:
                if not committed:
                    for path in created:
                        path.unlink(missing_ok=True)
            with self._lock:
                old = self._opened_view()
                self._view = _View(Memtable(state.applied_index), (), version)
                self._applied_index = state.applied_index
                self._epoch += 1
                self._cond.notify_all()
            for run in old.runs:
                for table in run.tables:
                    table.path.unlink(missing_ok=True)
        return SnapshotInfo(
            path=source,
            applied_index=state.applied_index,
            files=tuple(meta.file_name for meta in state.tables()),
            size_bytes=sum(meta.size_bytes for meta in state.tables()),
            key_count=sum(meta.entry_count for meta in state.tables()),
        )

    @classmethod
    def restore(
        cls,
        snapshot_dir: Path | str,
        engine_dir: Path | str,
        options: EngineOptions | None = None,
    ) -> Engine:
        """Open (creating if needed) the engine in `engine_dir` with the snapshot's state."""
        engine = cls.open(engine_dir, options)
        try:
            engine.install_snapshot(snapshot_dir)
        except BaseException:
            engine.close()
            raise
        return engine

    # --- introspection -----------------------------------------------------------------------

    def tables(self) -> list[TableInfo]:
        """Every live table, newest run first."""
        view = self._opened_view()
        return [
            TableInfo(
                name=meta.file_name,
                file_number=meta.file_number,
                level=level,
                size_bytes=meta.size_bytes,
                key_count=meta.entry_count,
                tombstone_count=meta.tombstone_count,
                smallest=meta.smallest,
                largest=meta.largest,
            )
            for level, run in enumerate(view.runs)
            for meta in run.metas
        ]

    def stats(self) -> EngineStats:
        with self._lock:
            view = self._opened_view()
            metas = [meta for run in view.runs for meta in run.metas]
            error = self._background_error
            return EngineStats(
                applied_index=self._applied_index,
                durable_applied_index=view.version.applied_index,
                memtable_entries=len(view.memtable),
                memtable_bytes=view.memtable.size_bytes,
                immutable_memtables=len(view.immutables),
                runs=len(view.runs),
                tables=len(metas),
                table_bytes=sum(meta.size_bytes for meta in metas),
                table_entries=sum(meta.entry_count for meta in metas),
                flushes=self._flushes,
                flushes_in_worker=self._flushes_in_worker,
                bytes_flushed=self._bytes_flushed,
                compactions=self._compactions,
                compaction_bytes_read=self._compaction_bytes_read,
                compaction_bytes_written=self._compaction_bytes_written,
                write_stalls=self._write_stalls,
                block_cache=(self._cache or BlockCache(0)).stats(),
                background_error=None if error is None else f"{type(error).__name__}: {error}",
            )

    def verify(self) -> int:
        """Read every block of every live table, checking CRCs; return the entry count.
        Raises `CorruptionError` at the first damaged block."""
        view = self._opened_view()
        return sum(table.verify() for run in view.runs for table in run.tables)
