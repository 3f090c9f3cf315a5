"""Compaction: a size-tiered policy over sorted runs, the newest-wins merge, the run writer.

The shape of the data. The engine's tables form *sorted runs*, newest first. A flush adds one
run (the memtable's contents) in front; a compaction replaces a window of *adjacent* runs with
one merged run at the same place. Inside a run tables are sorted and disjoint, so a point get
probes at most one table per run (a `bisect` on the run's largest keys). Between runs, newer
shadows older: a get returns the first run that has the key; a merge keeps, for each key, the
entry of the newest input run. Keeping the window adjacent is what makes this correct without
per-entry sequence numbers: every run outside the window is either newer than all of it or
older than all of it, so the merged run can take the window's place in the order.

The policy: size-tiered, like Cassandra's STCS and RocksDB's universal compaction.
Why tiered and not leveled: this engine compacts in Python under the GIL, so every rewritten
byte costs foreground CPU. Leveled compaction rewrites each byte about `fanout` times per level
(write amplification ~10 per level, 20-30 in total for a random-order load); tiered rewrites it
once per tier. The price is read amplification (more runs to probe), which the blocked Bloom
filter makes cheap: a negative probe is one array read and one AND.

- A run's tier is `round(log_F(size / base))`, `F = LSM_TIER_FANOUT` (4) and `base` the
  memtable size, so flushed runs are tier 0, a merge of 4 of them tier 1, and so on.
- When `F` or more adjacent runs share a tier, they merge (newest such group first).
- Past LSM_RUNS_FORCE_MERGE runs (tiers can interleave after deletes shrink a merge), the
  adjacent window of `F` runs with the smallest total size merges.
- Past LSM_RUNS_STALL runs the flush thread waits for compaction, so a get never probes more
  than LSM_RUNS_STALL runs (plus the memtables).
- A merge that includes the oldest run drops tombstones: nothing older remains for them to
  shadow. `Engine.compact()` merges all runs into one (and so drops every tombstone).

Write amplification: each byte is written once by the flush, then once per tier it climbs:
at most `1 + ceil(log_F(data / memtable))`. For 1M keys x 100 B in random order (~125 MiB on
disk) and a 4 MiB memtable that bound is 1 + log_4(~32) = 3.5; measured (EngineStats.
write_amplification): 2.5-2.9 (a leveled engine: ~20). Read amplification: at most `F - 1`
runs per tier, and the forced merge keeps it to LSM_RUNS_FORCE_MERGE runs; that data set
settles at 3-4 runs. Space amplification: a merge holds its inputs until its output is
installed, so up to 2x the data for a full merge; shadowed values and tombstones linger until
their runs merge.
"""

from __future__ import annotations

import atexit
import heapq
import itertools
import json
import math
import operator
import os
import select
import struct
import subprocess
import sys
import threading
from array import array
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from operator import itemgetter
from pathlib import Path
from typing import Any, Final, cast

from minikv_core.storage.errors import CorruptionError, StorageError
from minikv_core.storage.lsm_limits import (
    LSM_COMPACTION_CANCEL_CHECK_ENTRIES,
    LSM_COMPACTION_WORKERS_MAX,
    LSM_RUNS_FORCE_MERGE,
    LSM_TIER_FANOUT,
)
from minikv_core.storage.sstable import TableReader, TableWriter, WrittenTable
from minikv_core.storage.sstable_format import table_file_name

Entry = tuple[bytes, bytes | None]  # (key, value); None is a tombstone
# Entries per chunk handed to `write_run`, which checks for cancellation once per chunk.
WRITE_RUN_CHUNK_ENTRIES: Final = LSM_COMPACTION_CANCEL_CHECK_ENTRIES

_first = itemgetter(0)
# How often a driver thread waiting on the worker checks for cancellation (engine close).
_CANCEL_POLL_S = 0.05


class CompactionCancelledError(Exception):
    """The engine is closing; the partial output was deleted. Internal to the engine."""


class WorkerLostError(StorageError):
    """The worker process died or closed its pipes before answering (killed, out of memory);
    its temporary outputs were deleted. The job itself may still succeed in-thread."""


@dataclass(frozen=True, slots=True)
class CompactionPlan:
    """Merge runs[first : last + 1] (newest-first positions) into one run."""

    first: int
    last: int
    drop_tombstones: bool
    reason: str

    @property
    def width(self) -> int:
        return self.last - self.first + 1


def tier_of(size_bytes: int, base_bytes: int, fanout: int = LSM_TIER_FANOUT) -> int:
    """The size tier of a run: 0 for flush-sized runs, +1 per factor of `fanout`."""
    assert base_bytes > 0 and fanout >= 2
    if size_bytes <= base_bytes:
        return 0
    return math.floor(math.log(size_bytes / base_bytes, fanout) + 0.5)


def pick_compaction(
    run_sizes: Sequence[int],
    base_bytes: int,
    fanout: int = LSM_TIER_FANOUT,
    force_merge_runs: int = LSM_RUNS_FORCE_MERGE,
    busy: Sequence[bool] = (),
) -> CompactionPlan | None:
    """The next merge for runs of these sizes (newest first), or None if none is due. Pure.

    `busy[i]` marks run i as the input of a merge in progress: a window never includes one
    (busy runs split the list into segments planned separately), so two merges can run at
    once on disjoint windows, e.g. a small merge of fresh flushes while a big one runs.
    """
    count = len(run_sizes)
    if count < 2:
        return None
    is_busy = list(busy) or [False] * count
    assert len(is_busy) == count
    tiers = [tier_of(size, base_bytes, fanout) for size in run_sizes]
    start = 0
    while start < count:
        end = start
        while (
            end + 1 < count
            and not is_busy[start]
            and not is_busy[end + 1]
            and tiers[end + 1] == tiers[start]
        ):
            end += 1
        if not is_busy[start] and end - start + 1 >= fanout:
            return CompactionPlan(
                start, end, end == count - 1, f"{end - start + 1} runs in tier {tiers[start]}"
            )
        start = end + 1
    if count > force_merge_runs:
        width = min(fanout, count)
        windows = [
            (sum(run_sizes[i : i + width]), i)
            for i in range(count - width + 1)
            if not any(is_busy[i : i + width])
        ]
        if windows:
            first = min(windows)[1]
            last = first + width - 1
            return CompactionPlan(
                first, last, last == count - 1, f"{count} runs > {force_merge_runs}"
            )
    return None


def plan_full_compaction(run_count: int, oldest_has_tombstones: bool) -> CompactionPlan | None:
    """Merge every run into one; None if there is nothing to gain (one clean run or none)."""
    if run_count == 0 or (run_count == 1 and not oldest_has_tombstones):
        return None
    return CompactionPlan(0, run_count - 1, True, "full compaction")


def merge_newest_wins(sources: Sequence[Iterator[Entry]], reverse: bool = False) -> Iterator[Entry]:
    """Merge sorted sources (newest first) yielding each key once, from the newest source.

    Tombstones are yielded (as None values): the caller decides whether to drop them.
    `heapq.merge` breaks ties between equal keys by source position, in both directions, so
    the first entry of a key is the newest one.
    """
    if not sources:
        return
    if len(sources) == 1:
        yield from sources[0]
        return
    previous: bytes | None = None
    for entry in heapq.merge(*sources, key=_first, reverse=reverse):
        key = entry[0]
        if key == previous:
            continue  # shadowed by a newer source
        previous = key
        yield entry


Chunk = tuple[Sequence[bytes], Sequence[bytes | None]]  # ascending keys and their values


def merge_chunks(
    sources: Sequence[Iterator[Chunk]], reverse: bool = False, limit: int | None = None
) -> list[tuple[bytes, bytes]]:
    """Live entries (tombstones dropped) of sorted sources, newest first, at most `limit`.

    The scan path. Each source yields chunks (a data block's entries in range, or a slice of a
    memtable): ascending within a chunk, chunks in scan order. Why chunks and not
    `merge_newest_wins`: a per-entry heap merge costs ~0.5 us per key in Python; here each
    round (`merge_rounds`) takes, from every source, all entries up to the nearest chunk end
    (nothing beyond it can interleave: every other source's chunk reaches at least that far),
    and merges them with C-speed `dict.update` (newer overwrites older) and `sorted` (Timsort
    merges the sorted runs it is given in near-linear time). A round with one contributing
    source, the common case between keys of different runs, just copies.
    """
    assert limit is None or limit >= 0
    result: list[tuple[bytes, bytes]] = []
    if limit == 0:
        return result
    for live in merge_rounds(sources, reverse):
        result.extend(live)
        if limit is not None and len(result) >= limit:
            del result[limit:]
            break
    return result


def merge_rounds(
    sources: Sequence[Iterator[Chunk]], reverse: bool = False
) -> Iterator[list[tuple[bytes, bytes]]]:
    """The live entries of `merge_chunks`, one list per merge round (bounded by the chunk
    sizes), so a full pass (checksum) never holds more than a round in memory."""
    # Per active source: [rank, keys, values, cursor, chunks]. Forward, the chunk's unread
    # part is keys[cursor:]; in reverse, keys[:cursor].
    active: list[list[Any]] = []
    for rank, chunks in enumerate(sources):
        _refill(active, [rank, (), (), 0, chunks], reverse)
    while active:
        if reverse:
            boundary = max(state[1][0] for state in active)
        else:
            boundary = min(state[1][-1] for state in active)
        taken: list[tuple[int, Sequence[bytes], Sequence[bytes | None]]] = []
        for state in list(active):
            rank, keys, values, cursor, _chunks = state
            if reverse:
                start = bisect_left(keys, boundary, 0, cursor)
                if start < cursor:
                    taken.append((rank, keys[start:cursor], values[start:cursor]))
                state[3] = start
                exhausted = start == 0
            else:
                stop = bisect_right(keys, boundary, cursor)
                if cursor < stop:
                    taken.append((rank, keys[cursor:stop], values[cursor:stop]))
                state[3] = stop
                exhausted = stop == len(keys)
            if exhausted:
                active.remove(state)
                _refill(active, state, reverse)
        keys_out: Sequence[bytes]
        values_out: Sequence[bytes | None]
        if len(taken) == 1:
            _, keys_out, values_out = taken[0]
            if reverse:
                keys_out, values_out = keys_out[::-1], values_out[::-1]
        else:
            merged: dict[bytes, bytes | None] = {}
            for _, keys, values in sorted(taken, key=_first, reverse=True):  # oldest first
                merged.update(zip(keys, values, strict=True))
            keys_out = sorted(merged, reverse=reverse)
            values_out = list(map(merged.__getitem__, keys_out))
        # C-speed copies; tombstones (rare in a scan's range) are filtered only if present.
        if None in values_out:
            yield [
                (key, value)
                for key, value in zip(keys_out, values_out, strict=True)
                if value is not None
            ]
        else:
            yield cast(list[tuple[bytes, bytes]], list(zip(keys_out, values_out, strict=True)))


def _refill(active: list[list[Any]], state: list[Any], reverse: bool) -> None:
    """Load the source's next non-empty chunk into `state` and make it active, if any."""
    for keys, values in state[4]:
        if keys:
            state[1], state[2] = keys, values
            state[3] = len(keys) if reverse else 0
            active.append(state)
            return


def entry_chunks(entries: Iterator[Entry], size: int = WRITE_RUN_CHUNK_ENTRIES) -> Iterator[Chunk]:
    """`entries` as (keys, values) chunks of up to `size`: what `write_run` takes."""
    while batch := list(itertools.islice(entries, size)):
        keys, values = zip(*batch, strict=True)
        yield keys, values


def write_run(
    chunks: Iterable[Chunk],
    new_writer: Callable[[], TableWriter],
    table_size_bytes_target: int,
    drop_tombstones: bool,
    cancelled: Callable[[], bool] = lambda: False,
) -> list[WrittenTable]:
    """Write sorted, de-duplicated entries, in (keys, values) chunks (a memtable's
    `iter_chunks`, or `entry_chunks` of a merge), as a run of tables of ~`table_size_bytes_target`.
    `cancelled` is asked once per chunk.

    Every returned table is durable (fdatasynced). On any exception, including cancellation,
    every file this call created is deleted before the exception propagates.
    """
    assert table_size_bytes_target > 0
    outputs: list[WrittenTable] = []
    writer: TableWriter | None = None
    try:
        for chunk_keys, chunk_values in chunks:
            if cancelled():
                raise CompactionCancelledError
            keys, values = chunk_keys, chunk_values
            if drop_tombstones and None in values:
                keys = [key for key, value in zip(keys, values, strict=True) if value is not None]
                values = [value for value in values if value is not None]
            while keys:
                if writer is None:
                    writer = new_writer()
                taken = writer.add_chunk(keys, values, table_size_bytes_target)
                if writer.size_bytes_estimate >= table_size_bytes_target:
                    outputs.append(writer.finish())
                    writer = None
                if taken == len(keys):
                    break
                keys, values = keys[taken:], values[taken:]
        if writer is not None:
            outputs.append(writer.finish())
            writer = None
    except BaseException:
        if writer is not None:
            writer.abandon()
        for table in outputs:
            table.path.unlink(missing_ok=True)
        raise
    return outputs


# --- compaction in a worker process ----------------------------------------------------------
#
# Why a process: a merge is pure CPU in Python, and a thread doing it holds the GIL. Every
# `pread` of a foreground get releases the GIL, and getting it back means waiting for the
# compaction thread to let go (at its next I/O, or after the 5 ms switch interval). Measured
# on the engine benchmark (1M keys, a merge running after reopen): random gets fell from ~170k/s
# to ~55k/s, p99 29 us. A worker process merges on another core and holds no lock or GIL of
# ours; the engine thread that drives it only waits on a pipe. Small merges (most merges of
# small shards, all of the tests' tiny tables) stay in-thread: starting an interpreter costs
# more than they do.
#
# Protocol: `python -m minikv_core.storage.compaction` reads one JSON job per line on stdin and
# answers one JSON line on stdout. It writes each output to a temporary name carrying its own
# pid (`000123.sst.4242.tmp`) for a file number the engine reserved; the engine renames the
# outputs into place once the job succeeded. So the worker never creates, and never deletes,
# a file under a table name: if the engine dies mid-job, the worker (which abandons the job and
# deletes its temporaries when it notices its parent is gone) cannot collide with the files of
# an engine reopened in the meantime, and any temporary left behind is deleted on open.


@dataclass(frozen=True, slots=True)
class CompactionJob:
    """Merge the input runs (newest first; each a list of table paths in key order), or, for
    a flush (`entries_bytes` > 0, no input runs), write the entries that follow the job's line
    on the worker's input, packed by `pack_entries`."""

    input_runs: tuple[tuple[str, ...], ...]
    output_dir: str
    first_file_number: int
    file_number_count: int
    drop_tombstones: bool
    table_size_bytes: int
    block_size_bytes: int
    bloom_bits_per_key: int
    entries_bytes: int = 0

    def output_path(self, offset: int) -> Path:
        """Where the engine installs output `offset` (a reserved table name)."""
        assert 0 <= offset < self.file_number_count, "job ran out of reserved file numbers"
        return Path(self.output_dir) / table_file_name(self.first_file_number + offset)

    def temporary_path(self, offset: int, pid: int) -> Path:
        """Where worker `pid` writes output `offset` (see the protocol above)."""
        return temporary_table_path(self.output_path(offset), pid)

    def temporary_paths(self, pid: int) -> list[Path]:
        return [self.temporary_path(offset, pid) for offset in range(self.file_number_count)]

    def to_json(self) -> str:
        return json.dumps(
            {
                "input_runs": [list(run) for run in self.input_runs],
                "output_dir": self.output_dir,
                "first_file_number": self.first_file_number,
                "file_number_count": self.file_number_count,
                "drop_tombstones": self.drop_tombstones,
                "table_size_bytes": self.table_size_bytes,
                "block_size_bytes": self.block_size_bytes,
                "bloom_bits_per_key": self.bloom_bits_per_key,
                "entries_bytes": self.entries_bytes,
            }
        )

    @classmethod
    def from_json(cls, line: str | bytes) -> CompactionJob:
        document = json.loads(line)
        return cls(
            input_runs=tuple(tuple(run) for run in document["input_runs"]),
            output_dir=document["output_dir"],
            first_file_number=document["first_file_number"],
            file_number_count=document["file_number_count"],
            drop_tombstones=document["drop_tombstones"],
            table_size_bytes=document["table_size_bytes"],
            block_size_bytes=document["block_size_bytes"],
            bloom_bits_per_key=document["bloom_bits_per_key"],
            entries_bytes=document.get("entries_bytes", 0),
        )


TEMPORARY_SUFFIX = ".tmp"

# A flush job's entries on the worker's input: count (u32), the key lengths and the value
# lengths (u32 each, TOMBSTONE_LENGTH for a tombstone), then every key, then every value.
# Native byte order: only a parent and its own child read it.
_ENTRY_COUNT = struct.Struct("=I")
TOMBSTONE_LENGTH: Final = 0xFFFF_FFFF
# Entries per part of `pack_entries`: ~0.5 MiB of 100 B values, several times the pipe's
# buffer, so writing each part blocks (releasing the GIL) while the worker reads.
_PACK_CHUNK_ENTRIES: Final = 4096


def pack_entries(
    keys: Sequence[bytes], values: Sequence[bytes | None]
) -> tuple[int, Iterator[bytes]]:
    """A memtable's entries for a flush job (unique keys, in any order: the worker sorts them)
    as their packed size and the parts to write in that order (`unpack_entries` reads their
    concatenation). What a flush still costs the engine's process, kept short under the GIL:
    no sort, C-speed passes (`map(len)`, joins), and the keys and values joined a chunk at a
    time by the generator, each chunk written before the next is made; a write that fills the
    pipe releases the GIL until the worker drains it, so writers run in between."""
    count = len(keys)
    key_lengths = array("I", map(len, keys))
    tombstones = None in values
    if tombstones:
        value_lengths = array("I", [TOMBSTONE_LENGTH if v is None else len(v) for v in values])
        stored_bytes = sum(value_lengths) - TOMBSTONE_LENGTH * value_lengths.count(TOMBSTONE_LENGTH)
    else:
        value_lengths = array("I", map(len, cast(Sequence[bytes], values)))
        stored_bytes = sum(value_lengths)
    size = _ENTRY_COUNT.size + 8 * count + sum(key_lengths) + stored_bytes

    def parts() -> Iterator[bytes]:
        yield _ENTRY_COUNT.pack(count)
        yield key_lengths.tobytes()
        yield value_lengths.tobytes()
        for start in range(0, count, _PACK_CHUNK_ENTRIES):
            yield b"".join(keys[start : start + _PACK_CHUNK_ENTRIES])
        for start in range(0, count, _PACK_CHUNK_ENTRIES):
            chunk = values[start : start + _PACK_CHUNK_ENTRIES]
            if tombstones:
                yield b"".join([v for v in chunk if v is not None])
            else:
                yield b"".join(cast(Sequence[bytes], chunk))

    return size, parts()


def unpack_entries(packed: bytes) -> tuple[list[bytes], list[bytes | None]]:
    """The inverse of `pack_entries`."""
    (count,) = _ENTRY_COUNT.unpack_from(packed, 0)
    offset = _ENTRY_COUNT.size
    key_lengths = array("I")
    key_lengths.frombytes(packed[offset : offset + 4 * count])
    offset += 4 * count
    value_lengths = array("I")
    value_lengths.frombytes(packed[offset : offset + 4 * count])
    offset += 4 * count
    key_ends = list(itertools.accumulate(key_lengths, initial=offset))
    keys = list(map(packed.__getitem__, map(slice, key_ends, key_ends[1:])))
    tombstones = value_lengths.count(TOMBSTONE_LENGTH)
    stored_lengths = (
        [0 if n == TOMBSTONE_LENGTH else n for n in value_lengths] if tombstones else value_lengths
    )
    value_ends = list(itertools.accumulate(stored_lengths, initial=key_ends[-1]))
    if value_ends[-1] != len(packed):
        raise ValueError(f"packed entries of {len(packed)} bytes end at byte {value_ends[-1]}")
    values: list[bytes | None] = list(
        map(packed.__getitem__, map(slice, value_ends, value_ends[1:]))
    )
    if tombstones:
        values = [
            None if n == TOMBSTONE_LENGTH else v for n, v in zip(value_lengths, values, strict=True)
        ]
    return keys, values


def temporary_table_path(final: Path, pid: int) -> Path:
    return final.with_name(f"{final.name}.{pid}{TEMPORARY_SUFFIX}")


def is_temporary_table_name(name: str) -> bool:
    """True for a worker's temporary output name (deleted when an engine opens)."""
    stem, _, rest = name.partition(".sst.")
    return stem.isdigit() and rest.endswith(TEMPORARY_SUFFIX)


def file_numbers_needed(input_bytes: int, table_size_bytes: int) -> int:
    """File numbers to reserve for a merge of `input_bytes`: a merge never grows the data, and
    each output table but the last holds at least `table_size_bytes`; doubled (plus slack)
    because each output table also carries its own index, filter and footer. Numbers are
    cheap; running out would fail the job."""
    return 2 * (input_bytes // table_size_bytes) + 4


def run_job(
    job: CompactionJob, cancelled: Callable[[], bool] = lambda: False, entries: bytes = b""
) -> list[WrittenTable]:
    """Execute a compaction job in this process (the worker's body; also usable in-thread);
    `entries` are a flush job's, packed by `pack_entries`."""
    outputs = itertools.count()
    pid = os.getpid()

    def new_writer() -> TableWriter:
        return TableWriter(
            job.temporary_path(next(outputs), pid), job.block_size_bytes, job.bloom_bits_per_key
        )

    if job.entries_bytes:
        keys, values = unpack_entries(entries)
        if not all(map(operator.lt, keys, itertools.islice(keys, 1, None))):
            order = sorted(range(len(keys)), key=keys.__getitem__)
            keys = list(map(keys.__getitem__, order))
            values = list(map(values.__getitem__, order))
        chunks = (
            (
                keys[start : start + WRITE_RUN_CHUNK_ENTRIES],
                values[start : start + WRITE_RUN_CHUNK_ENTRIES],
            )
            for start in range(0, len(keys), WRITE_RUN_CHUNK_ENTRIES)
        )
        return write_run(chunks, new_writer, job.table_size_bytes, job.drop_tombstones, cancelled)
    readers = [[TableReader.open(Path(path)) for path in run_paths] for run_paths in job.input_runs]
    try:
        sources = [
            itertools.chain.from_iterable(table.iter_range(fill_cache=False) for table in run)
            for run in readers
        ]
        return write_run(
            entry_chunks(merge_newest_wins(sources)),
            new_writer,
            job.table_size_bytes,
            job.drop_tombstones,
            cancelled,
        )
    finally:
        for run in readers:
            for table in run:
                table.close()


def _error_document(exc: BaseException) -> dict[str, object]:
    if isinstance(exc, CorruptionError):
        return {"ok": False, "kind": "corruption", "path": str(exc.path), "offset": exc.offset,
                "reason": exc.reason}  # fmt: skip
    return {"ok": False, "kind": type(exc).__name__, "message": str(exc)}


def _worker_main() -> None:
    """The worker process: jobs on stdin, results on stdout, until end of input."""
    parent = os.getppid()

    def orphaned() -> bool:
        return os.getppid() != parent

    jobs = sys.stdin.buffer
    for line in jobs:
        written: list[WrittenTable] = []
        try:
            job = CompactionJob.from_json(line)
            entries = jobs.read(job.entries_bytes) if job.entries_bytes else b""
            if len(entries) != job.entries_bytes:
                return  # the parent closed our input mid-job: it is gone or stopping us
            written = run_job(job, cancelled=orphaned, entries=entries)
            reply: dict[str, object] = {"ok": True, "outputs": [str(t.path) for t in written]}
        except CompactionCancelledError:
            return  # the parent is gone; write_run deleted the outputs
        except Exception as exc:  # reported to the engine, which refuses writes from then on
            reply = _error_document(exc)
        try:
            if orphaned():
                raise BrokenPipeError
            sys.stdout.write(json.dumps(reply) + "\n")
            sys.stdout.flush()
        except BrokenPipeError:  # the engine died during the job: no one will install it
            for table in written:
                table.path.unlink(missing_ok=True)
            os._exit(0)  # not sys.exit: flushing stdout at exit would raise again


class CompactionProcess:
    """A worker process that runs compaction jobs, started on first use."""

    def __init__(self) -> None:
        self._process: subprocess.Popen[bytes] | None = None

    def _started(self) -> subprocess.Popen[bytes]:
        if self._process is None or self._process.poll() is not None:
            self._process = subprocess.Popen(
                [sys.executable, "-m", "minikv_core.storage.compaction"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                close_fds=True,
            )
        return self._process

    def run(
        self, job: CompactionJob, cancelled: Callable[[], bool], entries: Iterable[bytes] = ()
    ) -> list[Path]:
        """Run `job` (a flush job with its entries, the parts `pack_entries` made); return its
        outputs, durable and renamed to their reserved table names (their directory entries
        are not yet fsynced). Raises CompactionCancelledError (the worker is killed and its
        files deleted), WorkerLostError, or the job's error."""
        process = self._started()
        assert process.stdin is not None and process.stdout is not None
        try:
            try:
                process.stdin.write(job.to_json().encode() + b"\n")
                written = 0
                for part in entries:  # the GIL is released while the pipe drains
                    process.stdin.write(part)
                    written += len(part)
                process.stdin.flush()
                assert written == job.entries_bytes, (written, job.entries_bytes)
            except BrokenPipeError as exc:
                raise WorkerLostError(f"compaction worker {process.pid} exited") from exc
            while True:
                if cancelled():
                    raise CompactionCancelledError
                ready, _, _ = select.select([process.stdout], [], [], _CANCEL_POLL_S)
                if ready:
                    break
            line = process.stdout.readline()
            if not line:
                raise WorkerLostError(f"compaction worker {process.pid} exited mid-job")
            reply = json.loads(line)
        except BaseException:
            self.stop(kill=True)
            for path in job.temporary_paths(process.pid):
                path.unlink(missing_ok=True)
            raise
        if not reply["ok"]:  # the worker deleted its outputs (write_run)
            if reply["kind"] == "corruption":
                raise CorruptionError(reply["path"], reply["offset"], reply["reason"])
            raise StorageError(f"compaction worker failed: {reply['kind']}: {reply['message']}")
        outputs: list[Path] = []
        for offset, temporary in enumerate(reply["outputs"]):
            assert Path(temporary) == job.temporary_path(offset, process.pid), temporary
            os.replace(temporary, job.output_path(offset))
            outputs.append(job.output_path(offset))
        return outputs

    def stop(self, kill: bool = False) -> None:
        """End the worker: close its input (it exits) or, with `kill`, SIGKILL it."""
        process, self._process = self._process, None
        if process is None:
            return
        if kill:
            process.kill()
        elif process.stdin is not None:
            process.stdin.close()
        process.wait()
        for stream in (process.stdin, process.stdout):
            if stream is not None and not stream.closed:
                stream.close()


class CompactionWorkers:
    """A pool of worker processes shared by every engine of this process.

    Why shared: a node hosts many shards; one worker per engine would be dozens of processes
    (~15 MiB each) on a laptop running a five-node demo cluster. The pool bounds the node to
    LSM_COMPACTION_WORKERS_MAX merges in worker processes at once; a merge that finds them
    all busy waits for one (its compaction thread waits; reads and writes do not).
    Idle workers are kept for the next merge and exit with this process (end of their input).
    """

    def __init__(self, size: int) -> None:
        assert size >= 1
        self._slots = threading.BoundedSemaphore(size)
        self._lock = threading.Lock()
        self._idle: list[CompactionProcess] = []

    @contextmanager
    def borrowed(self) -> Iterator[CompactionProcess]:
        self._slots.acquire()
        with self._lent() as worker:
            yield worker

    @contextmanager
    def try_borrowed(self) -> Iterator[CompactionProcess | None]:
        """`borrowed`, or None at once when every worker is busy: for a flush, which must
        not queue behind a long merge (the writes would stall meanwhile)."""
        if not self._slots.acquire(blocking=False):
            yield None
            return
        with self._lent() as worker:
            yield worker

    @contextmanager
    def _lent(self) -> Iterator[CompactionProcess]:
        """An idle worker (or a new one) for a caller holding a slot, which this releases."""
        try:
            with self._lock:
                worker = self._idle.pop() if self._idle else CompactionProcess()
            try:
                yield worker
            finally:
                with self._lock:
                    self._idle.append(worker)  # a killed one restarts on its next job
        finally:
            self._slots.release()

    def stop_idle(self) -> None:
        """Stop the idle workers (at exit; a later merge starts new ones)."""
        with self._lock:
            idle, self._idle = self._idle, []
        for worker in idle:
            worker.stop()


SHARED_WORKERS: Final = CompactionWorkers(LSM_COMPACTION_WORKERS_MAX)
atexit.register(SHARED_WORKERS.stop_idle)


if __name__ == "__main__":
    _worker_main()
