"""The node's segmented write-ahead log: every acknowledged write in minikv rests on it.

What it promises: when `append` / `append_sync` returns a `Position`, the batch is on stable
storage (one `write`, then `fdatasync`), whole, after every batch that returned before it; on
reopen it reads back byte for byte, or the open fails naming the file and byte offset that is
bad. It never returns data that was not written.

How:
- Segments: files `0000000000000001.wal`, ... of `segment_size_bytes` each (wal_format has the
  layout). A batch never spans segments; when it would not fit, the active segment is sealed
  (truncated to its last record, fsynced) before the next one is created, so every segment but
  the last is sealed and exact — recovery relies on that order.
- Preallocation (default on): a new segment is zero-filled to its full size and fsynced before
  use, so later `fdatasync`s flush data only, with no file-size or extent metadata to journal
  (etcd and RocksDB preallocate for the same reason). Measured on the dev VM (ext4, 2 cores),
  raw write+fdatasync of 129-byte records: extending the file 4.7-6.6k syncs/s, posix_fallocate
  alone 6.8-8.8k (a write into an "unwritten" extent still journals its conversion, so batches
  of 64 gain nothing: 300-395k records/s), zero-filled 8.0-8.4k and 480-539k records/s.
  Through this class (`minikv wal bench`): 7.0-7.5k appends/s preallocated vs 4.9-5.4k not
  (1 record), 5.5-6.7k vs 4.0-4.3k (64 records). Zero-filling 64 MiB costs 45-170 ms, done on a
  background thread for the next segment once the active one is half full, so rotation does
  not stall writers (only a fresh WAL pays it, in `open`). The zeros are why a zeroed frame
  header (type 0 is never a record) marks the end of the log.
- Group commit: async producers enqueue encoded batches; one flusher task takes everything
  waiting (up to `WAL_GROUP_COMMIT_BYTES_MAX`), and a dedicated thread writes it with one
  `write` and one `fdatasync` while the event loop keeps running; batches arriving meanwhile
  form the next group. `stats.syncs` counts the real fsync calls. A caller with nothing else
  to do meanwhile may ask for `inline=True`: with nothing queued, the batch is written and
  synced in its own step, sparing the two thread hand-offs (the node's driver loop does,
  for rounds where it only follows; see cluster/host.py).
- Recovery on open scans every segment and checks every CRC. A bad frame in the last segment
  is a torn tail — the bytes of the final, never-acknowledged write — only if no valid record
  follows it (partial last record, bad CRC at the end of the data, or zeroed preallocated
  space); the tail is cut and logged. Anything else (mid-segment, a sealed segment, a bad
  header, a missing segment) raises `WalCorruptionError(path, offset, reason)`: the node
  refuses to start and `repair()` cuts the log there (DESIGN: Storage).
- A failed write or fsync poisons the Wal (`WalFailedError`): after fsync fails the kernel may
  have dropped the dirty pages and cleared the error (PostgreSQL "fsyncgate"), so only a
  reopen, which rescans from disk, is safe.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import enum
import fcntl
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import NamedTuple, NoReturn, Self

from minikv_core.storage import limits
from minikv_core.storage.errors import (
    WalClosedError,
    WalCorruptionError,
    WalDirectoryError,
    WalFailedError,
    WalLockedError,
    WalPositionError,
    WalRecordTooLargeError,
)
from minikv_core.storage.wal_format import (
    SEGMENT_HEADER_SIZE,
    SEGMENT_TEMP_SUFFIX,
    EncodedBatch,
    FrameReader,
    Payload,
    SegmentHeader,
    StopKind,
    WalFormatError,
    data_end,
    encode_batch,
    find_valid_frame,
    parse_segment_file_name,
    pread_exact,
    segment_file_name,
)
from minikv_core.storage.wal_records import RecordType

log = logging.getLogger(__name__)

LOCK_FILE_NAME = "LOCK"

_RECORD_TYPES: dict[int, RecordType] = {int(t): t for t in RecordType}
_ZEROS = bytes(limits.WAL_ZERO_FILL_CHUNK_BYTES)


class Position(NamedTuple):
    """Where a record's frame starts: the segment's sequence and the byte offset in it.

    Ordered like the log. The Position a `read` starts from must be one an append returned or
    a read yielded (a record boundary), or `Wal.first_position`.
    """

    segment: int
    offset: int


class WalEntry(NamedTuple):
    position: Position
    record_type: RecordType
    payload: bytes


@dataclass(frozen=True, slots=True)
class SegmentInfo:
    name: str
    path: Path
    sequence: int
    size_bytes: int  # the file's size on disk (the active segment is preallocated)
    used_bytes: int  # the end of its last valid record (header included)
    record_count: int
    first_position: Position
    first_record_ordinal: int  # records appended to the log before this segment
    active: bool


@dataclass(frozen=True, slots=True)
class WalStats:
    """Counters since open. `syncs` counts every fsync/fdatasync of segment data."""

    appends: int = 0  # append / append_sync calls that completed
    records: int = 0
    bytes_written: int = 0
    writes: int = 0  # pwrite calls carrying records (one per group commit or sync append)
    syncs: int = 0
    directory_syncs: int = 0
    rotations: int = 0
    sync_seconds_total: float = 0.0
    sync_seconds_max: float = 0.0


class FindingKind(enum.Enum):
    CORRUPTION = "corruption"  # open refuses; repair cuts the log here
    TORN_TAIL = "torn_tail"  # open cuts it silently: the unacknowledged end of the last write


@dataclass(frozen=True, slots=True)
class Finding:
    kind: FindingKind
    path: Path
    offset: int
    reason: str
    bytes_after: int  # bytes from `offset` to the end of the file's data


@dataclass(frozen=True, slots=True)
class VerifyReport:
    directory: Path
    segments: tuple[SegmentInfo, ...]
    findings: tuple[Finding, ...]

    @property
    def ok(self) -> bool:
        """True when opening would succeed (a torn tail is not corruption)."""
        return not any(f.kind is FindingKind.CORRUPTION for f in self.findings)

    @property
    def record_count(self) -> int:
        return sum(s.record_count for s in self.segments)


@dataclass(frozen=True, slots=True)
class RemovedSegment:
    path: Path
    size_bytes: int
    records_readable: int  # valid records it held before any damage of its own


@dataclass(frozen=True, slots=True)
class TruncatedTail:
    path: Path
    offset: int
    bytes_dropped: int
    records_dropped: int | None  # None: the dropped bytes hold no readable record to count
    reason: str


@dataclass(frozen=True, slots=True)
class RepairReport:
    directory: Path
    dry_run: bool
    truncated: TruncatedTail | None
    removed_segments: tuple[RemovedSegment, ...]
    findings: tuple[Finding, ...]  # what verify found before the repair

    @property
    def changed(self) -> bool:
        return self.truncated is not None or bool(self.removed_segments)


OnRecord = Callable[[Position, int, memoryview], None]


# ------------------------------------------------------------------------- file helpers


def _fsync_directory(directory: Path) -> None:
    """Make creations, renames and deletions in `directory` durable (the entries live there)."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _zero_fill(fd: int, start: int, end: int) -> None:
    """Write real zeros over [start, end) so later overwrites are pure data (no extents)."""
    position = start
    while position < end:
        count = min(len(_ZEROS), end - position)
        written = os.pwrite(fd, memoryview(_ZEROS)[:count], position)
        position += written


def _pwrite_all(fd: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        view = view[written:]
        offset += written


def _list_segment_files(directory: Path) -> list[tuple[int, Path]]:
    segments: list[tuple[int, Path]] = []
    for entry in os.scandir(directory):
        sequence = parse_segment_file_name(entry.name)
        if sequence is not None and entry.is_file(follow_symlinks=False):
            segments.append((sequence, Path(entry.path)))
    segments.sort()
    return segments


def _check_directory_exists(directory: Path) -> None:
    if not directory.exists():
        raise WalDirectoryError(f"WAL directory {directory} does not exist")
    if not directory.is_dir():
        raise WalDirectoryError(f"{directory} is not a directory")


def _lock_directory(directory: Path) -> int:
    """Take the directory's exclusive lock; one process (one open Wal) writes a WAL at a time."""
    fd = os.open(directory / LOCK_FILE_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise WalLockedError(
            f"WAL directory {directory} is in use by another process (or another open Wal)"
        ) from None
    except BaseException:
        os.close(fd)
        raise
    return fd


def check_not_in_use(directory: str | Path) -> None:
    """Raise WalLockedError if a process (a running node) holds the WAL's lock.

    For a caller about to ask a person whether to repair: `repair(dry_run=True)` takes no
    lock, so without this check the plan is shown and confirmed before the real repair
    finds the node running and refuses. The lock is taken and released at once.
    """
    directory = Path(directory)
    _require_wal_directory(directory)  # never leave a LOCK file in a directory not a WAL
    os.close(_lock_directory(directory))


# ----------------------------------------------------------------------------- scanning


@dataclass(frozen=True, slots=True)
class _SegmentScan:
    path: Path
    sequence: int
    header: SegmentHeader | None
    size_bytes: int
    records_end: int  # end of the last valid record (SEGMENT_HEADER_SIZE if none)
    record_count: int
    damage: Finding | None
    data_end: int  # end of the last non-zero byte at or after the damage (for repair sizes)


def _scan_segment(
    path: Path,
    sequence: int,
    *,
    is_last: bool,
    expected_ordinal: int | None,
    on_record: OnRecord | None,
) -> _SegmentScan:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        size = os.fstat(fd).st_size

        def corrupt(offset: int, reason: str, header: SegmentHeader | None) -> _SegmentScan:
            finding = Finding(FindingKind.CORRUPTION, path, offset, reason, size - offset)
            return _SegmentScan(path, sequence, header, size, offset, 0, finding, size)

        try:
            header = SegmentHeader.decode(pread_exact(fd, SEGMENT_HEADER_SIZE, 0))
        except WalFormatError as exc:
            # Never a torn write: a segment is renamed into place only after its header is
            # durable, so a bad header is damage (or not a minikv file at all).
            return corrupt(0, exc.reason, None)
        if header.sequence != sequence:
            return corrupt(
                0, f"header says segment {header.sequence}, file name {sequence}", header
            )
        if expected_ordinal is not None and header.first_record_ordinal != expected_ordinal:
            return corrupt(
                0,
                f"segment starts at record {header.first_record_ordinal} but the previous "
                f"segment ends at record {expected_ordinal}: records are missing",
                header,
            )
        reader = FrameReader(fd, SEGMENT_HEADER_SIZE, size)
        count = 0
        if on_record is None:
            for _ in reader:
                count += 1
        else:
            for offset, record_type, payload in reader:
                on_record(Position(sequence, offset), record_type, payload)
                count += 1
        stop = reader.stop
        assert stop is not None
        damage: Finding | None = None
        end_of_data = stop.offset
        if stop.kind is StopKind.ZEROS:
            end_of_data = data_end(fd, stop.offset, size)
            if end_of_data > stop.offset:
                stop_reason = f"a zeroed record header, followed by data up to byte {end_of_data}"
                damage = _classify_bad_frame(
                    fd,
                    path=path,
                    offset=stop.offset,
                    reason=stop_reason,
                    complete=False,
                    is_last=is_last,
                    size=size,
                    end_of_data=end_of_data,
                )
            elif not is_last:
                damage = Finding(
                    FindingKind.CORRUPTION,
                    path,
                    stop.offset,
                    f"sealed segment has {size - stop.offset} zero bytes after its last record",
                    size - stop.offset,
                )
        elif stop.kind is StopKind.BAD:
            end_of_data = data_end(fd, stop.offset, size)
            damage = _classify_bad_frame(
                fd,
                path=path,
                offset=stop.offset,
                reason=stop.reason,
                complete=stop.complete,
                is_last=is_last,
                size=size,
                end_of_data=end_of_data,
            )
        return _SegmentScan(path, sequence, header, size, stop.offset, count, damage, end_of_data)
    finally:
        os.close(fd)


def _classify_bad_frame(
    fd: int,
    *,
    path: Path,
    offset: int,
    reason: str,
    complete: bool,
    is_last: bool,
    size: int,
    end_of_data: int,
) -> Finding:
    """Torn tail or corruption? Torn only at the end of the last segment, with nothing after.

    A torn write is the unacknowledged end of the last write before a crash: it can only be
    in the last segment, and no whole record can follow it. A complete frame (valid CRC) is
    never torn. If any valid record follows the bad spot, records that were acknowledged
    would be lost by cutting there, so it is corruption for a person to decide (repair).
    """
    bytes_after = max(end_of_data, offset) - offset
    if not is_last:
        return Finding(
            FindingKind.CORRUPTION, path, offset, f"{reason} (in a sealed segment)", bytes_after
        )
    if complete:
        return Finding(FindingKind.CORRUPTION, path, offset, reason, bytes_after)
    following = find_valid_frame(fd, offset + 1, end_of_data, size)
    if following is not None:
        return Finding(
            FindingKind.CORRUPTION,
            path,
            offset,
            f"{reason}; a valid record follows at byte offset {following}",
            bytes_after,
        )
    return Finding(FindingKind.TORN_TAIL, path, offset, reason, bytes_after)


def _scan_directory(
    directory: Path, on_record: OnRecord | None = None
) -> tuple[list[_SegmentScan], list[Finding]]:
    files = _list_segment_files(directory)
    scans: list[_SegmentScan] = []
    findings: list[Finding] = []
    expected_ordinal: int | None = None
    previous_sequence: int | None = None
    for number, (sequence, path) in enumerate(files):
        if previous_sequence is not None and sequence != previous_sequence + 1:
            missing = f"{previous_sequence + 1}" + (
                f"..{sequence - 1}" if sequence - 1 > previous_sequence + 1 else ""
            )
            findings.append(
                Finding(
                    FindingKind.CORRUPTION,
                    path,
                    0,
                    f"segment {missing} before this one is missing",
                    path.stat().st_size,
                )
            )
            expected_ordinal = None
        scan = _scan_segment(
            path,
            sequence,
            is_last=number == len(files) - 1,
            expected_ordinal=expected_ordinal,
            on_record=on_record,
        )
        scans.append(scan)
        if scan.damage is not None:
            findings.append(scan.damage)
        clean = scan.damage is None and scan.header is not None
        expected_ordinal = (
            scan.header.first_record_ordinal + scan.record_count
            if clean and scan.header is not None
            else None
        )
        previous_sequence = sequence
    return scans, findings


def _segment_info(scan: _SegmentScan, *, active: bool) -> SegmentInfo:
    ordinal = scan.header.first_record_ordinal if scan.header is not None else 0
    return SegmentInfo(
        name=scan.path.name,
        path=scan.path,
        sequence=scan.sequence,
        size_bytes=scan.size_bytes,
        used_bytes=scan.records_end,
        record_count=scan.record_count,
        first_position=Position(scan.sequence, SEGMENT_HEADER_SIZE),
        first_record_ordinal=ordinal,
        active=active,
    )


def _require_wal_directory(directory: Path) -> list[tuple[int, Path]]:
    _check_directory_exists(directory)
    files = _list_segment_files(directory)
    if not files:
        raise WalDirectoryError(
            f"{directory} holds no WAL segments (files named like {segment_file_name(1)})"
        )
    return files


def verify(directory: str | Path, on_record: OnRecord | None = None) -> VerifyReport:
    """Check every segment and record of a WAL directory without changing anything.

    Read-only and lock-free, so it can look at a running node's WAL: the active segment may
    then end in a write in progress, reported as a torn tail (what open would cut), not as
    corruption. `on_record(position, type, payload)` sees every valid record (the payload is
    only valid during the call).
    """
    directory = Path(directory)
    _require_wal_directory(directory)
    scans, findings = _scan_directory(directory, on_record)
    segments = tuple(
        _segment_info(scan, active=number == len(scans) - 1) for number, scan in enumerate(scans)
    )
    return VerifyReport(directory, segments, tuple(findings))


def repair(directory: str | Path, *, dry_run: bool = False) -> RepairReport:
    """Cut the log at its first bad record and delete every later segment.

    Usable without opening (the node refuses to open a corrupt WAL); takes the directory lock,
    so it refuses to touch the WAL of a running node. A bad header or a missing segment cuts
    before the whole segment. With `dry_run`, only reports what it would drop.
    """
    directory = Path(directory)
    _require_wal_directory(directory)
    lock_fd = None if dry_run else _lock_directory(directory)
    try:
        scans, findings = _scan_directory(directory)
        if not findings:
            return RepairReport(directory, dry_run, None, (), ())
        first = findings[0]  # findings are in log order
        cut_number = next(n for n, scan in enumerate(scans) if scan.path == first.path)
        cut_scan = scans[cut_number]
        truncated: TruncatedTail | None = None
        removed: list[RemovedSegment] = []
        if first.offset >= SEGMENT_HEADER_SIZE:
            truncated = TruncatedTail(
                path=first.path,
                offset=first.offset,
                bytes_dropped=max(cut_scan.data_end, first.offset) - first.offset,
                records_dropped=None,
                reason=first.reason,
            )
            later = scans[cut_number + 1 :]
        else:
            later = scans[cut_number:]
        removed = [RemovedSegment(s.path, s.size_bytes, s.record_count) for s in later]
        if not dry_run:
            if truncated is not None:
                fd = os.open(truncated.path, os.O_RDWR | os.O_CLOEXEC)
                try:
                    os.ftruncate(fd, truncated.offset)
                    os.fsync(fd)
                finally:
                    os.close(fd)
            # Newest first: a crash midway leaves a log that is still a prefix of the old one.
            for segment in reversed(removed):
                segment.path.unlink()
            _fsync_directory(directory)
            log.warning(
                "repaired WAL %s: %s; removed %d later segment(s)",
                directory,
                f"cut {truncated.path.name} at byte {truncated.offset}"
                if truncated
                else "no cut inside a segment",
                len(removed),
            )
        return RepairReport(directory, dry_run, truncated, tuple(removed), tuple(findings))
    finally:
        if lock_fd is not None:
            os.close(lock_fd)


# ---------------------------------------------------------------------------------- Wal


@dataclass(slots=True)
class _Sealed:
    sequence: int
    path: Path
    size_bytes: int
    record_count: int
    first_record_ordinal: int


@dataclass(slots=True)
class _Active:
    fd: int
    sequence: int
    path: Path
    first_record_ordinal: int
    # Writer-private (guarded by the write lock): where the next frame goes, records written.
    write_offset: int
    written_records: int
    # Shared (guarded by the state lock): what readers may see, i.e. what is fsynced.
    durable_offset: int
    record_count: int
    size_bytes: int  # the file's size on disk


@dataclass(slots=True)
class _Counters:
    appends: int = 0
    records: int = 0
    bytes_written: int = 0
    writes: int = 0
    syncs: int = 0
    directory_syncs: int = 0
    rotations: int = 0
    sync_seconds_total: float = 0.0
    sync_seconds_max: float = 0.0

    def snapshot(self) -> WalStats:
        return WalStats(
            appends=self.appends,
            records=self.records,
            bytes_written=self.bytes_written,
            writes=self.writes,
            syncs=self.syncs,
            directory_syncs=self.directory_syncs,
            rotations=self.rotations,
            sync_seconds_total=self.sync_seconds_total,
            sync_seconds_max=self.sync_seconds_max,
        )


@dataclass(slots=True)
class _AsyncState:
    """Group commit state bound to one event loop (asyncio primitives belong to a loop)."""

    loop: asyncio.AbstractEventLoop
    slots: asyncio.Semaphore
    pending: collections.deque[tuple[EncodedBatch, asyncio.Future[Position]]] = field(
        default_factory=collections.deque
    )
    flusher: asyncio.Task[None] | None = None


class Wal:
    """An open, writable WAL directory. Create with `Wal.open(directory)`.

    Thread-safety: `append_sync`, `read`, `segments`, `truncate_before` and `stats` may be
    called from any thread; `append` from one event loop at a time. Never call `append_sync`
    from an event loop thread (it blocks on fsync): it raises instead.

    Two locks, so the event loop never waits for an fsync: `_write_lock` serializes writers
    and is held across write + fsync (only ever taken off the loop thread); `_state_lock`
    guards what readers see (segment lists, durable end, counters) and is never held across
    I/O, so `stats`, `segments()` and `end_position` are safe to call from the loop.
    """

    def __init__(
        self,
        directory: Path,
        *,
        lock_fd: int,
        segment_size_bytes: int,
        preallocate: bool,
        sealed: list[_Sealed],
        active: _Active,
    ) -> None:
        self._directory = directory
        self._lock_fd = lock_fd
        self._segment_size_bytes = segment_size_bytes
        self._preallocate = preallocate
        self._write_lock = threading.Lock()
        self._state_lock = threading.Lock()
        # Guarded by the state lock (the active segment's writer-private fields excepted).
        self._sealed = sealed
        self._active = active
        self._counters = _Counters()
        self._closed = False
        self._failure: BaseException | None = None
        self._sync_executor: ThreadPoolExecutor | None = None
        # Guarded by the write lock.
        self._prepare_executor: ThreadPoolExecutor | None = None
        self._prepared: tuple[int, Future[int]] | None = None
        # Touched only on the event loop's thread.
        self._async: _AsyncState | None = None

    # ---------------------------------------------------------------------- opening

    @classmethod
    def open(
        cls,
        directory: str | Path,
        *,
        segment_size_bytes: int = limits.WAL_SEGMENT_SIZE_BYTES_DEFAULT,
        preallocate: bool = True,
        create: bool = True,
    ) -> Wal:
        """Open (recovering) or create the WAL in `directory`.

        Scans and checks every segment. Raises WalCorruptionError for damage that is not a
        torn tail, WalLockedError if the directory is in use, WalDirectoryError if it is
        missing (and not `create`) or not a directory. `segment_size_bytes` applies from now
        on; `preallocate=False` extends files as they grow (slower fdatasync, less space).
        """
        if not (
            limits.WAL_SEGMENT_SIZE_BYTES_MIN
            <= segment_size_bytes
            <= limits.WAL_SEGMENT_SIZE_BYTES_MAX
        ):
            raise ValueError(
                f"segment_size_bytes must be in {limits.WAL_SEGMENT_SIZE_BYTES_MIN}.."
                f"{limits.WAL_SEGMENT_SIZE_BYTES_MAX}, got {segment_size_bytes}"
            )
        directory = Path(directory)
        if not directory.exists() and create:
            directory.mkdir(parents=True)
            _fsync_directory(directory.parent)
        _check_directory_exists(directory)
        lock_fd = _lock_directory(directory)
        try:
            return cls._recover(directory, lock_fd, segment_size_bytes, preallocate)
        except BaseException:
            os.close(lock_fd)
            raise

    @classmethod
    def _recover(
        cls, directory: Path, lock_fd: int, segment_size_bytes: int, preallocate: bool
    ) -> Wal:
        removed_temp = False
        for entry in os.scandir(directory):
            if entry.name.endswith(SEGMENT_TEMP_SUFFIX):
                # A segment whose creation did not finish: it was never renamed into the log.
                log.info("removing unfinished segment file %s", entry.path)
                os.unlink(entry.path)
                removed_temp = True
        if removed_temp:
            _fsync_directory(directory)

        scans, findings = _scan_directory(directory)
        for finding in findings:
            if finding.kind is FindingKind.CORRUPTION:
                raise WalCorruptionError(finding.path, finding.offset, finding.reason)
        sealed = [
            _Sealed(
                s.sequence,
                s.path,
                s.size_bytes,
                s.record_count,
                s.header.first_record_ordinal if s.header is not None else 0,
            )
            for s in scans[:-1]
        ]
        if not scans:
            wal = cls(
                directory,
                lock_fd=lock_fd,
                segment_size_bytes=segment_size_bytes,
                preallocate=preallocate,
                sealed=[],
                active=_placeholder(),
            )
            with wal._write_lock:
                wal._active = wal._create_segment(sequence=1, first_record_ordinal=0)
            log.info("created WAL %s", directory)
            return wal

        last = scans[-1]
        assert last.header is not None
        fd = os.open(last.path, os.O_RDWR | os.O_CLOEXEC)
        try:
            end = last.records_end
            if last.damage is not None:
                assert last.damage.kind is FindingKind.TORN_TAIL
                log.warning(
                    "WAL %s: torn tail at byte %d (%s); dropping %d bytes of the "
                    "unacknowledged last write",
                    last.path,
                    last.damage.offset,
                    last.damage.reason,
                    last.damage.bytes_after,
                )
            size = last.size_bytes
            target = max(segment_size_bytes, end) if preallocate else end
            if last.damage is not None or size != target:
                # Cut the torn bytes (never leave stale frames after new appends: a later
                # recovery could read them as records) and restore the zeroed preallocation.
                os.ftruncate(fd, end)
                if preallocate:
                    _zero_fill(fd, end, target)
                os.fsync(fd)
                size = target
            active = _Active(
                fd=fd,
                sequence=last.sequence,
                path=last.path,
                first_record_ordinal=last.header.first_record_ordinal,
                write_offset=end,
                written_records=last.record_count,
                durable_offset=end,
                record_count=last.record_count,
                size_bytes=size,
            )
        except BaseException:
            os.close(fd)
            raise
        wal = cls(
            directory,
            lock_fd=lock_fd,
            segment_size_bytes=segment_size_bytes,
            preallocate=preallocate,
            sealed=sealed,
            active=active,
        )
        log.info(
            "opened WAL %s: %d segment(s), %d records, appending at %s",
            directory,
            len(scans),
            sum(s.record_count for s in scans),
            Position(active.sequence, active.write_offset),
        )
        return wal

    # ---------------------------------------------------------------------- properties

    @property
    def directory(self) -> Path:
        return self._directory

    @property
    def segment_size_bytes(self) -> int:
        return self._segment_size_bytes

    @property
    def first_position(self) -> Position:
        """Where the oldest segment still on disk starts (`read()` starts here)."""
        with self._state_lock:
            sequence = self._sealed[0].sequence if self._sealed else self._active.sequence
        return Position(sequence, SEGMENT_HEADER_SIZE)

    @property
    def end_position(self) -> Position:
        """Just past the last durable record: where the next append goes, unless it rotates."""
        with self._state_lock:
            return Position(self._active.sequence, self._active.durable_offset)

    @property
    def stats(self) -> WalStats:
        with self._state_lock:
            return self._counters.snapshot()

    def segments(self) -> list[SegmentInfo]:
        """Every segment, oldest first; the last is the active one."""
        with self._state_lock:
            infos = [
                SegmentInfo(
                    name=s.path.name,
                    path=s.path,
                    sequence=s.sequence,
                    size_bytes=s.size_bytes,
                    used_bytes=s.size_bytes,
                    record_count=s.record_count,
                    first_position=Position(s.sequence, SEGMENT_HEADER_SIZE),
                    first_record_ordinal=s.first_record_ordinal,
                    active=False,
                )
                for s in self._sealed
            ]
            a = self._active
            infos.append(
                SegmentInfo(
                    name=a.path.name,
                    path=a.path,
                    sequence=a.sequence,
                    size_bytes=a.size_bytes,
                    used_bytes=a.durable_offset,
                    record_count=a.record_count,
                    first_position=Position(a.sequence, SEGMENT_HEADER_SIZE),
                    first_record_ordinal=a.first_record_ordinal,
                    active=True,
                )
            )
            return infos

    # ---------------------------------------------------------------------- appending

    def append_sync(self, records: Iterable[tuple[int, Payload]]) -> Position:
        """Append a batch with one write and one fdatasync; durable when this returns.

        Returns the Position of the batch's first record; a batch's records are contiguous
        in one segment. For single-threaded users (the standalone Store, benchmarks).
        """
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            pass
        else:
            raise RuntimeError(
                "Wal.append_sync blocks on fsync; from an event loop use `await wal.append(...)`"
            )
        batch = self._encode(records)
        with self._write_lock:
            return self._write_locked([batch])[0]

    async def append(
        self, records: Iterable[tuple[int, Payload]], *, inline: bool = False
    ) -> Position:
        """Append a batch; durable when this returns (group commit with concurrent callers).

        Batches of concurrent callers are written together with one write and one fdatasync,
        in the order their `append` calls were made, on a thread: the event loop keeps
        running during the fsync. Returns the Position of the batch's first record. If the
        caller is cancelled after its batch was queued, the batch may still be written.

        `inline=True`: when nothing else is queued or being written and the batch fits the
        active segment, write and fdatasync it right here, blocking the event loop for the
        sync. For a caller that has nothing to do but wait (the node's driver loop waits for
        its round's fsync): handing the write to a thread and back costs it ~60 us of CPU
        and 100-300 us of latency (the GIL passes twice), more than a small fdatasync does.
        Otherwise it is queued as usual.
        """
        batch = self._encode(records)
        state = self._async_state()
        if inline and not state.pending and state.flusher is None:
            position = self._try_write_inline(batch)
            if position is not None:
                return position
        await state.slots.acquire()  # back-pressure: at most WAL_PENDING_APPENDS_MAX queued
        future: asyncio.Future[Position] = state.loop.create_future()
        state.pending.append((batch, future))
        if state.flusher is None:
            state.flusher = state.loop.create_task(self._flush(state), name="minikv-wal-flush")
        return await future

    def _try_write_inline(self, batch: EncodedBatch) -> Position | None:
        """Write and sync `batch` on the calling thread, or None when that could wait on
        something else (another writer holds the lock, or the batch needs a rotation, which
        may wait for the next segment's zero-fill)."""
        if not self._write_lock.acquire(blocking=False):
            return None
        try:
            if self._active.write_offset + batch.size > self._segment_size_bytes:
                return None
            return self._write_locked([batch])[0]
        finally:
            self._write_lock.release()

    def _encode(self, records: Iterable[tuple[int, Payload]]) -> EncodedBatch:
        if isinstance(records, bytes | bytearray | str):
            raise TypeError("records must be an iterable of (record_type, payload) pairs")
        batch = encode_batch(records)
        if batch.count == 0:
            raise ValueError("an append needs at least one record")
        capacity = self._segment_size_bytes - SEGMENT_HEADER_SIZE
        if batch.size > capacity:
            what = "a record" if batch.count == 1 else f"a batch of {batch.count} records"
            raise WalRecordTooLargeError(
                f"{what} of {batch.size} bytes (framed) cannot fit in one segment "
                f"({capacity} bytes after the header, segment_size_bytes="
                f"{self._segment_size_bytes}); split the batch or use larger segments"
            )
        with self._state_lock:
            self._check_usable()
        return batch

    def _async_state(self) -> _AsyncState:
        loop = asyncio.get_running_loop()
        state = self._async
        if state is None or state.loop is not loop:
            if state is not None and (state.pending or state.flusher is not None):
                raise RuntimeError("Wal.append is in use by another event loop")
            state = _AsyncState(loop, asyncio.Semaphore(limits.WAL_PENDING_APPENDS_MAX))
            self._async = state
        return state

    async def _flush(self, state: _AsyncState) -> None:
        """The group committer: one write + fdatasync per round for everything queued."""
        group: list[tuple[EncodedBatch, asyncio.Future[Position]]] = []
        try:
            while state.pending:
                group = []
                group_bytes = 0
                while state.pending and (
                    not group
                    or group_bytes + state.pending[0][0].size <= limits.WAL_GROUP_COMMIT_BYTES_MAX
                ):
                    item = state.pending.popleft()
                    state.slots.release()
                    group.append(item)
                    group_bytes += item[0].size
                try:
                    positions = await self._on_sync_thread(state.loop, [b for b, _ in group])
                except Exception as exc:
                    for _, future in group:
                        if not future.done():
                            future.set_exception(exc)
                    continue
                for (_, future), position in zip(group, positions, strict=True):
                    if not future.done():
                        future.set_result(position)
                group = []
        except asyncio.CancelledError:
            # The loop is going away: nobody will resolve these, so release their callers.
            for _, future in [*group, *state.pending]:
                future.cancel()
            state.pending.clear()
            raise
        finally:
            state.flusher = None

    def _on_sync_thread(
        self, loop: asyncio.AbstractEventLoop, batches: list[EncodedBatch]
    ) -> asyncio.Future[list[Position]]:
        """`_write_group(batches)` on the sync thread; the result comes back with one
        `call_soon_threadsafe` (`run_in_executor` chains two futures per call, which costs
        the node's driver loop more than the rest of a small round)."""
        future: asyncio.Future[list[Position]] = loop.create_future()

        def settle(result: list[Position] | None, error: BaseException | None) -> None:
            if future.done():
                return  # the caller is gone (cancelled): nothing to tell
            if error is not None:
                future.set_exception(error)
            else:
                assert result is not None
                future.set_result(result)

        def work() -> None:
            try:
                result = self._write_group(batches)
            except BaseException as error:  # delivered to the awaiting flusher
                loop.call_soon_threadsafe(settle, None, error)
            else:
                loop.call_soon_threadsafe(settle, result, None)

        self._executor().submit(work)
        return future

    def _executor(self) -> ThreadPoolExecutor:
        with self._state_lock:
            self._check_usable()
            if self._sync_executor is None:
                self._sync_executor = ThreadPoolExecutor(1, thread_name_prefix="minikv-wal-sync")
            return self._sync_executor

    def _write_group(self, batches: list[EncodedBatch]) -> list[Position]:
        with self._write_lock:
            return self._write_locked(batches)

    def _check_usable(self) -> None:
        """Raise if closed or failed. Call with the state lock held."""
        if self._closed:
            raise WalClosedError(f"the WAL in {self._directory} is closed")
        if self._failure is not None:
            raise WalFailedError(
                f"an earlier write or fsync of the WAL in {self._directory} failed "
                f"({self._failure}); reopen it to continue"
            ) from self._failure

    def _write_locked(self, batches: list[EncodedBatch]) -> list[Position]:
        """Write the batches in order, rotating as needed, and fdatasync once at the end.

        Called with the write lock held. Positions are returned only after the data they name
        is durable, so no caller hears of a record that a crash could take back.
        """
        if len(batches) == 1:
            batch = batches[0]
            if self._active.write_offset + batch.size <= self._segment_size_bytes:
                return [self._write_one_locked(batch)]
        with self._state_lock:
            self._check_usable()
        try:
            positions: list[Position] = []
            parts: list[bytes] = []
            pending_bytes = 0
            pending_records = 0
            for batch in batches:
                active = self._active
                if active.write_offset + pending_bytes + batch.size > self._segment_size_bytes:
                    if parts:
                        self._write_parts_locked(parts, pending_bytes, pending_records)
                        parts, pending_bytes, pending_records = [], 0, 0
                    self._rotate_locked()  # sealing fsyncs what was just written
                    active = self._active
                positions.append(Position(active.sequence, active.write_offset + pending_bytes))
                parts.append(batch.data)
                pending_bytes += batch.size
                pending_records += batch.count
            if parts:
                self._write_parts_locked(parts, pending_bytes, pending_records)
            active = self._active
            if active.durable_offset < active.write_offset:
                self._sync_locked(active.fd, data_only=True)
                with self._state_lock:
                    active.durable_offset = active.write_offset
                    active.record_count = active.written_records
                    active.size_bytes = max(active.size_bytes, active.write_offset)
            with self._state_lock:
                self._counters.appends += len(batches)
            self._maybe_prepare_next_locked()
            return positions
        except OSError as exc:
            self._fail_locked(exc)

    def _write_one_locked(self, batch: EncodedBatch) -> Position:
        """`_write_locked` of one batch that fits the active segment: every durable batch of
        the standalone Store and most rounds of a node. The same steps with one state-lock
        round instead of six and no per-part lists. Why a twin: the general path's bookkeeping
        runs right after each sync, on caches the sleep left cold, and cost 1-11 us more per
        7.7 KB append on this disk (median, interleaved A/B; docs/benchmarks.md, session 18)."""
        active = self._active
        offset = active.write_offset
        end = offset + batch.size
        with self._state_lock:
            self._check_usable()
        try:
            data = batch.data
            written = os.pwrite(active.fd, data, offset)
            if written != batch.size:
                _pwrite_all(active.fd, data[written:], offset + written)
            # Writer-private until the sync returns; readers see only durable_offset.
            active.write_offset = end
            active.written_records += batch.count
            started = time.perf_counter()
            os.fdatasync(active.fd)
            elapsed = time.perf_counter() - started
        except OSError as exc:
            self._fail_locked(exc)
        with self._state_lock:
            active.durable_offset = end
            active.record_count = active.written_records
            active.size_bytes = max(active.size_bytes, end)
            counters = self._counters
            counters.appends += 1
            counters.writes += 1
            counters.records += batch.count
            counters.bytes_written += batch.size
            counters.syncs += 1
            counters.sync_seconds_total += elapsed
            counters.sync_seconds_max = max(counters.sync_seconds_max, elapsed)
        if self._prepared is None and end * 2 >= self._segment_size_bytes:
            self._maybe_prepare_next_locked()
        return Position(active.sequence, offset)

    def _fail_locked(self, exc: OSError, doing: str = "writing the WAL") -> NoReturn:
        """A failed write, sync or seal poisons the WAL: what reached the disk is unknown."""
        with self._state_lock:
            self._failure = exc
        log.error("WAL %s: %s failed, refusing further appends: %s", self, doing, exc)
        raise WalFailedError(
            f"{doing} in {self._directory} failed: {exc}; reopen it to continue"
        ) from exc

    def _write_parts_locked(self, parts: list[bytes], size: int, records: int) -> None:
        active = self._active
        # A batch never spans segments: the caller rotated first if it would not fit.
        assert active.write_offset + size <= self._segment_size_bytes, (active, size)
        assert active.durable_offset <= active.write_offset
        data = parts[0] if len(parts) == 1 else b"".join(parts)
        _pwrite_all(active.fd, data, active.write_offset)
        active.write_offset += size
        active.written_records += records
        with self._state_lock:
            counters = self._counters
            counters.writes += 1
            counters.records += records
            counters.bytes_written += size

    def _sync_locked(self, fd: int, *, data_only: bool) -> None:
        started = time.perf_counter()
        if data_only:
            os.fdatasync(fd)
        else:
            os.fsync(fd)
        elapsed = time.perf_counter() - started
        with self._state_lock:
            counters = self._counters
            counters.syncs += 1
            counters.sync_seconds_total += elapsed
            counters.sync_seconds_max = max(counters.sync_seconds_max, elapsed)

    # ---------------------------------------------------------------------- segments

    def _rotate_locked(self) -> None:
        old = self._active
        # Seal: cut the preallocated zeros so a sealed segment ends at its last record, and
        # make that durable before the next segment exists. Recovery relies on this order:
        # every segment but the last is sealed and exact.
        os.ftruncate(old.fd, old.write_offset)
        self._sync_locked(old.fd, data_only=False)
        new = self._create_segment(old.sequence + 1, old.first_record_ordinal + old.written_records)
        with self._state_lock:
            self._sealed.append(
                _Sealed(
                    old.sequence,
                    old.path,
                    old.write_offset,
                    old.written_records,
                    old.first_record_ordinal,
                )
            )
            self._active = new
            self._counters.rotations += 1
        os.close(old.fd)
        log.info("WAL %s: sealed %s, now writing %s", self, old.path.name, new.path.name)

    def _create_segment(self, sequence: int, first_record_ordinal: int) -> _Active:
        """Create segment `sequence`: header durable in a temp file, then an atomic rename.

        Called with the write lock held. The rename is what adds the segment to the log, so
        a crash leaves either no segment or a whole one with a durable header.
        """
        name = segment_file_name(sequence)
        temp_path = self._directory / (name + ".tmp")
        assert temp_path.name.endswith(SEGMENT_TEMP_SUFFIX)
        fd = self._take_prepared(sequence)
        if fd is None:
            fd = os.open(temp_path, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
            try:
                if self._preallocate:
                    _prepare_zeroed(fd, self._segment_size_bytes)
            except BaseException:
                os.close(fd)
                raise
        try:
            header = SegmentHeader(sequence, first_record_ordinal).encode()
            _pwrite_all(fd, header, 0)
            self._sync_locked(fd, data_only=self._preallocate)
            path = self._directory / name
            os.rename(temp_path, path)
            _fsync_directory(self._directory)
            with self._state_lock:
                self._counters.directory_syncs += 1
            size = os.fstat(fd).st_size
        except BaseException:
            os.close(fd)
            raise
        return _Active(
            fd=fd,
            sequence=sequence,
            path=path,
            first_record_ordinal=first_record_ordinal,
            write_offset=SEGMENT_HEADER_SIZE,
            written_records=0,
            durable_offset=SEGMENT_HEADER_SIZE,
            record_count=0,
            size_bytes=size,
        )

    def _maybe_prepare_next_locked(self) -> None:
        """Once the active segment is half full, zero-fill the next one in the background."""
        if not self._preallocate or self._prepared is not None:
            return
        active = self._active
        if active.write_offset * 2 < self._segment_size_bytes:
            return
        if self._prepare_executor is None:
            self._prepare_executor = ThreadPoolExecutor(1, thread_name_prefix="minikv-wal-prep")
        sequence = active.sequence + 1
        temp_path = self._directory / (segment_file_name(sequence) + ".tmp")
        future = self._prepare_executor.submit(
            _prepare_segment_file, temp_path, self._segment_size_bytes
        )
        self._prepared = (sequence, future)

    def _take_prepared(self, sequence: int) -> int | None:
        if self._prepared is None:
            return None
        prepared_sequence, future = self._prepared
        self._prepared = None
        try:
            fd = future.result()
        except OSError as exc:
            log.warning("WAL %s: preparing the next segment failed (%s); retrying", self, exc)
            return None
        if prepared_sequence != sequence:  # not expected; never reuse a file for another slot
            os.close(fd)
            return None
        return fd

    def seal(self) -> bool:
        """Seal the active segment now and continue in a new one; False if it holds no record
        (nothing to seal). Blocks on fsync.

        Why: a node whose sealed segment went bad on disk (bit rot) rewrites what it still
        needs from memory and truncates the damaged segments away (`MultiRaftHost.rewrite_wal`).
        Damage in the *active* segment can only leave once that segment is sealed, because
        truncation never deletes the active segment."""
        with self._write_lock:
            with self._state_lock:
                self._check_usable()
            if self._active.written_records == 0:
                return False
            try:
                self._rotate_locked()
            except OSError as exc:
                self._fail_locked(exc, "sealing the WAL segment")
            return True

    def truncate_before(self, position: Position) -> list[Path]:
        """Delete every segment wholly before the segment holding `position`.

        The active segment is never deleted. Returns the deleted files. Called once every
        group's state covering those segments is flushed (DESIGN: Storage). Readers that
        already opened a deleted segment finish reading it (POSIX unlink semantics).
        """
        with self._state_lock:
            self._check_usable()
            if position.segment > self._active.sequence:
                raise WalPositionError(
                    f"{position} is past the end of the log (active segment "
                    f"{self._active.sequence})"
                )
            doomed = [s for s in self._sealed if s.sequence < position.segment]
            self._sealed = [s for s in self._sealed if s.sequence >= position.segment]
        if doomed:
            # Oldest first: a crash midway leaves a log that starts later, never a gap.
            for segment in doomed:
                segment.path.unlink()
            _fsync_directory(self._directory)
            with self._state_lock:
                self._counters.directory_syncs += 1
            log.info("WAL %s: deleted %d segment(s) before %s", self, len(doomed), position)
        return [segment.path for segment in doomed]

    # ---------------------------------------------------------------------- reading

    def read(self, start: Position | None = None) -> Iterator[WalEntry]:
        """Records from `start` (default: the oldest on disk) to the durable end at call time.

        Yields `WalEntry(position, record_type, payload)`; every CRC is checked again, and a
        bad record raises WalCorruptionError. Appends made after the call are not included.
        """
        with self._state_lock:
            self._check_usable()
            snapshot = [(s.sequence, s.path, s.size_bytes) for s in self._sealed]
            active = self._active
            snapshot.append((active.sequence, active.path, active.durable_offset))
        if start is None:
            start = Position(snapshot[0][0], SEGMENT_HEADER_SIZE)
        sequences = [sequence for sequence, _, _ in snapshot]
        if start.segment not in sequences:
            where = "deleted" if start.segment < sequences[0] else "past the end of the log"
            raise WalPositionError(
                f"cannot read from {start}: segment {start.segment} is {where} "
                f"(segments {sequences[0]}..{sequences[-1]} exist)"
            )
        first = sequences.index(start.segment)
        end_of_start = snapshot[first][2]
        if not SEGMENT_HEADER_SIZE <= start.offset <= end_of_start:
            raise WalPositionError(
                f"cannot read from {start}: offset must be in {SEGMENT_HEADER_SIZE}.."
                f"{end_of_start} for segment {start.segment}"
            )
        return _read_segments(snapshot[first:], start)

    # ---------------------------------------------------------------------- closing

    def close(self) -> None:
        """Close the files and release the directory. Every acknowledged record is durable.

        Waits for a write in progress; async appends still queued fail with WalClosedError
        (use `aclose()` to let them finish first).
        """
        with self._write_lock:
            with self._state_lock:
                if self._closed:
                    return
                self._closed = True
            prepared, self._prepared = self._prepared, None
            if self._active.fd >= 0:
                os.close(self._active.fd)
                self._active.fd = -1
        if prepared is not None:
            sequence, future = prepared
            with contextlib.suppress(OSError):
                os.close(future.result())
            with contextlib.suppress(FileNotFoundError):
                (self._directory / (segment_file_name(sequence) + ".tmp")).unlink()
        for executor in (self._sync_executor, self._prepare_executor):
            if executor is not None:
                executor.shutdown(wait=True)
        os.close(self._lock_fd)

    async def aclose(self) -> None:
        """Wait for queued async appends to be written, then close."""
        state = self._async
        while state is not None and state.flusher is not None:
            await asyncio.shield(state.flusher)
        await asyncio.to_thread(self.close)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        return f"Wal({str(self._directory)!r})"


def _placeholder() -> _Active:
    return _Active(-1, 0, Path(), 0, SEGMENT_HEADER_SIZE, 0, SEGMENT_HEADER_SIZE, 0, 0)


def _prepare_zeroed(fd: int, size: int) -> None:
    try:
        # Reserve the space first (contiguous, and ENOSPC now rather than mid-append) ...
        os.posix_fallocate(fd, 0, size)
    except OSError as exc:
        log.debug("posix_fallocate unsupported here (%s); zero-filling only", exc)
    # ... then write real zeros: fallocate alone leaves "unwritten" extents whose conversion
    # on first write is metadata that every fdatasync would have to journal.
    _zero_fill(fd, 0, size)
    os.fsync(fd)


def _prepare_segment_file(path: Path, size: int) -> int:
    """Runs on the prepare thread: a zero-filled, fsynced temp file for the next segment."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    try:
        _prepare_zeroed(fd, size)
    except BaseException:
        os.close(fd)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        raise
    return fd


def _read_segments(snapshot: list[tuple[int, Path, int]], start: Position) -> Iterator[WalEntry]:
    record_types = _RECORD_TYPES
    for number, (sequence, path, end) in enumerate(snapshot):
        offset = start.offset if number == 0 else SEGMENT_HEADER_SIZE
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            raise WalPositionError(
                f"segment {path.name} was deleted (truncate_before) while being read"
            ) from None
        try:
            reader = FrameReader(fd, offset, end)
            for record_offset, record_type, payload in reader:
                yield WalEntry(
                    Position(sequence, record_offset), record_types[record_type], bytes(payload)
                )
            stop = reader.stop
            assert stop is not None
            if stop.kind is not StopKind.END or stop.offset != end:
                reason = stop.reason or "the data ends early"
                if number == 0 and stop.offset == start.offset != SEGMENT_HEADER_SIZE:
                    reason += f" (is {start} a record boundary?)"
                raise WalCorruptionError(path, stop.offset, reason)
        finally:
            os.close(fd)
