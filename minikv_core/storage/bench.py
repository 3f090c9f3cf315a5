"""The engine benchmark: minikv's standalone `Store` against sqlite3, side by side, in one run.

Why in one process, in one run: the machine's fsync latency and CPU speed drift, so only
numbers taken in the same minutes are comparable; the result is reported as a ratio
minikv/sqlite rather than as absolute figures alone. The two short put rows go further and
interleave the systems in blocks of a few batches (`interleaved_puts`): the sync latency of
this disk drifts by 2x within seconds.

The peer is configured to give the same durability promise as minikv: WAL journal mode,
`synchronous=FULL` (a commit returns after its fsync), one transaction per batch, a
primary-key (`WITHOUT ROWID`) table — the layout sqlite itself recommends for key-value data.

Definitions (so numbers mean one thing):
- `put_batch_1` / `put_batch_64`: ops are individual puts; latency is per batch commit (one
  durable write + fsync per batch on both systems). The batches (keys and random values) are
  made before the clock starts: making them costs ~30 us per batch of 64, which is neither
  system's work, and counting it (as the runs in docs/benchmarks.md up to 2026-11-26 05:50 UTC
  did) pulls the ratio toward 1.
- `put_batch_64_sustained`: 3,000 batches of 64 in a row (192k keys, on a fresh store, one
  system after the other: their background work must not overlap), long enough for about
  eight memtable flushes (minikv) and many WAL checkpoints (sqlite) to land inside the timed
  loop; the two rows above are too short for either.
- `get_random`: point gets of random existing keys after reopening the loaded data set.
- `scan_prefix_1000`: prefix scans each returning 1,000 keys; latency per scan, ops = scans.
- `reopen`: a fresh child process opens the loaded data set; ops_per_s is 1 / seconds, and
  `rss_mib` is that process's total resident memory right after opening.

The put workloads also run on `fsync-floor`: no store at all, each batch's keys and values
written as they are with one `pwrite` into a preallocated, zero-filled file (the kind of file
minikv's WAL appends to) and made durable with one `fdatasync`. It is what this disk charges
for one durable batch, measured in the same minutes, so `fsync-floor / sqlite` is the best
ratio any store with one sync per batch could reach here: a put target above it is a target
for the disk, not for the code.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Protocol, TypeVar

from minikv_core.storage import speedups
from minikv_core.storage.engine import prefix_successor
from minikv_core.storage.store import Store

KEYS_PER_PREFIX = 1_000
SUSTAINED_WORKLOAD = "put_batch_64_sustained"
LOAD_BATCH_KEYS = 10_000
SEED = 20261125
INTERLEAVE_BATCHES = 10
"""Batches per block when the short put rows interleave the systems (`alternate`)."""
INTERLEAVE_GETS = 2_000
INTERLEAVE_SCANS = 5
"""Gets and scans per block (~12 ms and ~4 ms of work) when the read rows interleave."""

Progress = Callable[[str], None]


@dataclass(frozen=True, slots=True)
class WorkloadResult:
    workload: str
    system: str
    ops: int
    seconds: float
    ops_per_s: float
    p50_us: float
    p99_us: float
    rss_mib: float | None = None

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=False)


@dataclass(frozen=True, slots=True)
class BenchConfig:
    keys: int = 1_000_000
    value_size_bytes: int = 100
    put_batches_of_1: int = 1_000
    put_batches_of_64: int = 300
    gets: int = 200_000
    scans: int = 200
    seed: int = SEED
    # Only the two put workloads (no load, reopen, gets or scans): seconds instead of minutes,
    # for iterating on the write path.
    puts_only: bool = False
    # A third put row: this many batches of 64 in a row, enough to flush several memtables
    # on the way (the two rows before it flush none: 20k keys fit in a 4 MiB memtable), so
    # that it prices what a flush costs the writer. 0 leaves the row out.
    put_batches_sustained: int = 3_000

    def __post_init__(self) -> None:
        assert self.keys >= KEYS_PER_PREFIX, "need at least one full prefix of keys"
        assert self.value_size_bytes >= 1
        assert self.put_batches_of_1 > 0 and self.put_batches_of_64 > 0
        assert self.gets > 0 and self.scans > 0


class DurableWriter(Protocol):
    """What the put workloads need: every `put_batch` is durable when it returns."""

    name: str

    def open(self) -> None: ...
    def close(self) -> None: ...
    def put_batch(self, items: Sequence[tuple[bytes, bytes]]) -> None: ...


class KeyValueSystem(DurableWriter, Protocol):
    """What every workload needs from a system under test."""

    def get(self, key: bytes) -> bytes | None: ...
    def scan_prefix(self, prefix: bytes, limit: int) -> int: ...


class MinikvSystem:
    name = "minikv"

    def __init__(self, path: Path) -> None:
        self.path = path
        self._store: Store | None = None

    def open(self) -> None:
        self._store = Store.open(self.path)

    def _opened(self) -> Store:
        assert self._store is not None, "open() first"
        return self._store

    def close(self) -> None:
        if self._store is not None:
            self._store.close()
            self._store = None

    def put_batch(self, items: Sequence[tuple[bytes, bytes]]) -> None:
        self._opened().write_batch(items)

    def get(self, key: bytes) -> bytes | None:
        return self._opened().get(key)

    def scan_prefix(self, prefix: bytes, limit: int) -> int:
        return len(self._opened().scan(prefix=prefix, limit=limit))


class SqliteSystem:
    name = "sqlite"

    def __init__(self, path: Path) -> None:
        self.path = path
        self._db: sqlite3.Connection | None = None

    def open(self) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        # isolation_level=None: we issue BEGIN/COMMIT ourselves, one transaction per batch.
        db = sqlite3.connect(self.path / "kv.sqlite3", isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.execute("CREATE TABLE IF NOT EXISTS kv (k BLOB PRIMARY KEY, v BLOB) WITHOUT ROWID")
        self._db = db

    def _opened(self) -> sqlite3.Connection:
        assert self._db is not None, "open() first"
        return self._db

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    def put_batch(self, items: Sequence[tuple[bytes, bytes]]) -> None:
        db = self._opened()
        db.execute("BEGIN")
        db.executemany("INSERT OR REPLACE INTO kv (k, v) VALUES (?, ?)", items)
        db.execute("COMMIT")

    def get(self, key: bytes) -> bytes | None:
        row = self._opened().execute("SELECT v FROM kv WHERE k = ?", (key,)).fetchone()
        return None if row is None else bytes(row[0])

    def scan_prefix(self, prefix: bytes, limit: int) -> int:
        end = prefix_successor(prefix)
        assert end is not None, "benchmark prefixes are never all 0xff bytes"
        rows = (
            self._opened()
            .execute(
                "SELECT k, v FROM kv WHERE k >= ? AND k < ? ORDER BY k LIMIT ?",
                (prefix, end, limit),
            )
            .fetchall()
        )
        return len(rows)


def key_of(i: int) -> bytes:
    return b"key:%06d:%06d" % divmod(i, KEYS_PER_PREFIX)


def prefix_of(group: int) -> bytes:
    return b"key:%06d:" % group


def percentile_us(samples_ns: list[int], fraction: float) -> float:
    assert samples_ns, "no samples"
    ordered = sorted(samples_ns)
    rank = min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))
    return ordered[rank] / 1_000


def summarize(
    workload: str, system: str, ops: int, seconds: float, samples_ns: list[int]
) -> WorkloadResult:
    return WorkloadResult(
        workload=workload,
        system=system,
        ops=ops,
        seconds=round(seconds, 4),
        ops_per_s=round(ops / seconds, 1),
        p50_us=round(percentile_us(samples_ns, 0.50), 1),
        p99_us=round(percentile_us(samples_ns, 0.99), 1),
    )


def make_batches(
    batches: int, batch_size: int, value_size: int, rng: random.Random
) -> list[list[tuple[bytes, bytes]]]:
    """Fresh keys (outside the loaded key space) and random values, made before any clock
    starts (see the module docstring)."""
    base = 10**9
    return [
        [
            (b"put:%012d" % (base + b * batch_size + i), rng.randbytes(value_size))
            for i in range(batch_size)
        ]
        for b in range(batches)
    ]


T = TypeVar("T")
S = TypeVar("S", bound=DurableWriter)


def alternate(
    systems: Sequence[S],
    inputs: Sequence[T],
    block: int,
    run_block: Callable[[S, Sequence[T], list[int]], None],
) -> dict[str, list[int]]:
    """Feed `inputs` to every system, `block` at a time each, the system that goes first
    rotating from block to block; `run_block(system, chunk, samples)` times each op. Why:
    this machine's sync latency drifts by 2x within seconds, and its CPU speed too, so rows
    measured one system after the other compared the machine's moods more than the systems
    (batch-64 put ratios of 0.9x-3.1x for one tree in one session); blocks milliseconds
    apart see the same machine."""
    samples: dict[str, list[int]] = {system.name: [] for system in systems}
    for number, start in enumerate(range(0, len(inputs), block)):
        chunk = inputs[start : start + block]
        shift = number % len(systems)
        for system in [*systems[shift:], *systems[:shift]]:
            run_block(system, chunk, samples[system.name])
    return samples


def _put_block(
    system: DurableWriter, chunk: Sequence[list[tuple[bytes, bytes]]], samples: list[int]
) -> None:
    put_batch = system.put_batch
    clock = time.perf_counter_ns
    for items in chunk:
        t0 = clock()
        put_batch(items)
        samples.append(clock() - t0)


def interleaved_puts(
    writers: Sequence[DurableWriter], all_items: list[list[tuple[bytes, bytes]]], workload: str
) -> list[WorkloadResult]:
    """The same batches through every writer (`alternate`, INTERLEAVE_BATCHES at a time);
    seconds are the sum of the batches' own latencies."""
    samples = alternate(writers, all_items, INTERLEAVE_BATCHES, _put_block)
    ops = sum(len(items) for items in all_items)
    return [
        summarize(workload, writer.name, ops, sum(samples[writer.name]) / 1e9, samples[writer.name])
        for writer in writers
    ]


def timed_puts(
    system: DurableWriter, batches: int, batch_size: int, value_size: int, rng: random.Random
) -> WorkloadResult:
    """`batches` batches through one system, one after the other."""
    all_items = make_batches(batches, batch_size, value_size, rng)
    (result,) = interleaved_puts([system], all_items, f"put_batch_{batch_size}")
    return result


def load(system: KeyValueSystem, config: BenchConfig, progress: Progress) -> None:
    order = list(range(config.keys))
    random.Random(config.seed).shuffle(order)
    rng = random.Random(config.seed + 1)
    for start in range(0, config.keys, LOAD_BATCH_KEYS):
        chunk = order[start : start + LOAD_BATCH_KEYS]
        system.put_batch([(key_of(i), rng.randbytes(config.value_size_bytes)) for i in chunk])
        if start % (LOAD_BATCH_KEYS * 20) == 0:
            progress(f"{system.name}: loaded {start:,} of {config.keys:,} keys")


def timed_reads(systems: Sequence[KeyValueSystem], config: BenchConfig) -> list[WorkloadResult]:
    """Random point gets, then prefix scans, the same ones on every (loaded, open) system,
    interleaved (`alternate`): CPU-bound rows that drift with the machine like the puts."""
    rng = random.Random(config.seed + 2)
    keys = [key_of(rng.randrange(config.keys)) for _ in range(config.gets)]
    gets = alternate(systems, keys, INTERLEAVE_GETS, _get_block)
    rng = random.Random(config.seed + 3)
    groups = config.keys // KEYS_PER_PREFIX
    prefixes = [prefix_of(rng.randrange(groups)) for _ in range(config.scans)]
    scans = alternate(systems, prefixes, INTERLEAVE_SCANS, _scan_block)
    return [
        summarize(
            workload, system.name, len(inputs), sum(taken[system.name]) / 1e9, taken[system.name]
        )
        for workload, inputs, taken in (
            ("get_random", keys, gets),
            ("scan_prefix_1000", prefixes, scans),
        )
        for system in systems
    ]


def _get_block(system: KeyValueSystem, keys: Sequence[bytes], samples: list[int]) -> None:
    get = system.get
    clock = time.perf_counter_ns
    missing = 0
    for key in keys:
        t0 = clock()
        value = get(key)
        samples.append(clock() - t0)
        if value is None:
            missing += 1
    if missing:
        raise AssertionError(f"{system.name}: {missing} of {len(keys)} loaded keys not found")


def _scan_block(system: KeyValueSystem, prefixes: Sequence[bytes], samples: list[int]) -> None:
    clock = time.perf_counter_ns
    for prefix in prefixes:
        t0 = clock()
        found = system.scan_prefix(prefix, KEYS_PER_PREFIX)
        samples.append(clock() - t0)
        if found != KEYS_PER_PREFIX:
            raise AssertionError(f"{system.name}: scan of {prefix!r} returned {found} keys")


def reopen_in_child(system_name: str, path: Path) -> WorkloadResult:
    """Open the data set in a fresh interpreter, so its RSS is that of a node that just
    reopened it, not of this process holding the benchmark's own data."""
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "minikv_core.storage.bench",
            "--reopen-probe",
            system_name,
            str(path),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"reopen probe for {system_name} failed: {result.stderr.strip()}")
    probe = json.loads(result.stdout)
    seconds = float(probe["seconds"])
    return WorkloadResult(
        workload="reopen",
        system=system_name,
        ops=1,
        seconds=round(seconds, 4),
        ops_per_s=round(1 / seconds, 3),
        p50_us=round(seconds * 1e6, 1),
        p99_us=round(seconds * 1e6, 1),
        rss_mib=round(float(probe["rss_mib"]), 1),
    )


class SyncFloorSystem:
    """One pwrite + one fdatasync per batch, nothing else (see the module docstring). A
    DurableWriter only: it keeps nothing it could read back."""

    name = "fsync-floor"
    FILE_BYTES = 16 * 1024 * 1024

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd = -1
        self._offset = 0

    def open(self) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path / "floor.bin", os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            chunk = bytes(1024 * 1024)
            for _ in range(self.FILE_BYTES // len(chunk)):
                os.write(fd, chunk)
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        self._offset = 0

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def put_batch(self, items: Sequence[tuple[bytes, bytes]]) -> None:
        data = b"".join(key + value for key, value in items)
        if self._offset + len(data) > self.FILE_BYTES:
            self._offset = 0  # overwriting written blocks costs the same sync
        os.pwrite(self._fd, data, self._offset)
        os.fdatasync(self._fd)
        self._offset += len(data)


SYSTEMS = ("minikv", "sqlite", SyncFloorSystem.name)
"""Every system a run reports on, in the order `run` measures them."""


def make_system(name: str, path: Path) -> KeyValueSystem:
    if name == "minikv":
        return MinikvSystem(path)
    if name == "sqlite":
        return SqliteSystem(path)
    raise ValueError(f"unknown system {name!r}; expected 'minikv' or 'sqlite'")


def rss_mib() -> float:
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("VmRSS not found in /proc/self/status")


def run_system(
    name: str, root: Path, config: BenchConfig, progress: Progress
) -> Iterator[WorkloadResult]:
    """The sustained put row, then (unless puts only) the load of the read rows' data set,
    in `root/name`: kept for `run_reads` unless puts only."""
    path = root / name
    system = make_system(name, path)
    system.open()
    try:
        yield from timed_sustained_puts(system, config, progress)
        if not config.puts_only:
            load(system, config, progress)
    finally:
        system.close()
    if config.puts_only:
        shutil.rmtree(path, ignore_errors=True)


def run_reads(
    names: Sequence[str], root: Path, config: BenchConfig, progress: Progress
) -> Iterator[WorkloadResult]:
    """Each loaded data set reopened in a fresh process (time and memory), then the read rows
    with all of them open at once (`timed_reads`); the data sets are removed afterwards."""
    systems: list[KeyValueSystem] = []
    try:
        for name in names:
            progress(f"{name}: reopening {config.keys:,} keys in a fresh process")
            yield reopen_in_child(name, root / name)
        for name in names:
            system = make_system(name, root / name)
            system.open()
            systems.append(system)
        progress(
            f"{config.gets:,} random point gets and {config.scans:,} prefix scans of "
            f"{KEYS_PER_PREFIX:,} keys, every system in turn"
        )
        yield from timed_reads(systems, config)
    finally:
        for system in systems:
            system.close()
        for name in names:
            shutil.rmtree(root / name, ignore_errors=True)


def run_short_puts(root: Path, config: BenchConfig, progress: Progress) -> list[WorkloadResult]:
    """The batch-of-1 and batch-of-64 rows of every system, interleaved (`interleaved_puts`),
    each system on a fresh store that is removed afterwards. No memtable fills in them (20k
    keys), so no system's background work runs into another's blocks."""
    path = root / "short-puts"
    writers: list[DurableWriter] = [
        make_system("minikv", path / "minikv"),
        make_system("sqlite", path / "sqlite"),
        SyncFloorSystem(path / SyncFloorSystem.name),
    ]
    opened: list[DurableWriter] = []
    try:
        for writer in writers:
            writer.open()
            opened.append(writer)
        rng = random.Random(config.seed + 4)
        results = []
        for batches, size in ((config.put_batches_of_1, 1), (config.put_batches_of_64, 64)):
            progress(f"durable puts in batches of {size}, every system in turn")
            all_items = make_batches(batches, size, config.value_size_bytes, rng)
            results += interleaved_puts(writers, all_items, f"put_batch_{size}")
        return results
    finally:
        for writer in opened:
            writer.close()
        shutil.rmtree(path, ignore_errors=True)


def timed_sustained_puts(
    system: DurableWriter, config: BenchConfig, progress: Progress
) -> Iterator[WorkloadResult]:
    """The sustained row, one system at a time: its flushes and compactions (minikv's worker
    processes, sqlite's checkpoints) would run into the other systems' blocks if interleaved."""
    if config.put_batches_sustained:
        batches = config.put_batches_sustained
        progress(f"{system.name}: {batches:,} durable batches of 64 in a row (flushes included)")
        rng = random.Random(config.seed + 5)
        result = timed_puts(system, batches, 64, config.value_size_bytes, rng)
        yield replace(result, workload=SUSTAINED_WORKLOAD)


def run_floor(root: Path, config: BenchConfig, progress: Progress) -> Iterator[WorkloadResult]:
    path = root / SyncFloorSystem.name
    floor = SyncFloorSystem(path)
    floor.open()
    try:
        yield from timed_sustained_puts(floor, config, progress)
    finally:
        floor.close()
        shutil.rmtree(path, ignore_errors=True)


def run(config: BenchConfig, root: Path, progress: Progress) -> Iterator[WorkloadResult]:
    """Yield results as they come, on `root`: the short put rows of all three systems,
    interleaved; the sustained row of each, one after the other (and the load of the read
    rows' data set); then the reopen and read rows, interleaved."""
    yield from run_short_puts(root, config, progress)
    names = ("minikv", "sqlite")
    for name in names:
        yield from run_system(name, root, config, progress)
    yield from run_floor(root, config, progress)
    if not config.puts_only:
        yield from run_reads(names, root, config, progress)


def _reopen_probe(system_name: str, path: Path) -> None:
    start = time.perf_counter()
    system = make_system(system_name, path)
    system.open()
    seconds = time.perf_counter() - start
    try:
        print(json.dumps({"seconds": seconds, "rss_mib": rss_mib()}))
    finally:
        system.close()


def _puts_only(repeat: int, directory: Path | None) -> None:
    """The put rows alone, `repeat` times: JSON lines on stdout, each run's ratios on stderr
    (the write path moves by less than one run's noise, so one run proves little)."""
    config = BenchConfig(puts_only=True)
    for number in range(1, repeat + 1):
        with tempfile.TemporaryDirectory(prefix="minikv-bench-", dir=directory) as root:
            results = list(run(config, Path(root), lambda _message: None))
        for result in results:
            print(result.to_json(), flush=True)
        ops_per_s = {(r.workload, r.system): r.ops_per_s for r in results}
        floor = SyncFloorSystem.name
        ratios = ", ".join(
            f"{workload} {ops_per_s[workload, 'minikv'] / ops_per_s[workload, 'sqlite']:.2f}x"
            f" (floor {ops_per_s[workload, floor] / ops_per_s[workload, 'sqlite']:.2f}x)"
            for workload in sorted({r.workload for r in results})
        )
        print(
            f"run {number} of {repeat} (minikv loops: {speedups.IMPLEMENTATION}): "
            f"minikv/sqlite {ratios}",
            file=sys.stderr,
            flush=True,
        )


LOADED_MARK = "LOADED"


def _loaded_data_set(name: str, root: Path, config: BenchConfig) -> Path:
    """`root/name` holding the data set `run_reads` reads from (the sustained row, the load),
    made once: a later `--reads-only` run on the same DIR reuses it (a mark file says the load
    completed), so that builds of minikv under comparison read the very same tables."""
    path = root / name
    if (path / LOADED_MARK).exists():
        return path
    shutil.rmtree(path, ignore_errors=True)
    system = make_system(name, path)
    progress: Progress = lambda message: print(message, file=sys.stderr, flush=True)  # noqa: E731
    system.open()
    try:
        for _ in timed_sustained_puts(system, config, progress):
            pass
        load(system, config, progress)
    finally:
        system.close()
    (path / LOADED_MARK).touch()
    return path


def _reads_only(repeat: int, directory: Path | None) -> None:
    """The get and scan rows alone, `repeat` times, on data sets loaded once (kept in
    `directory` if given, for A/B runs of two builds with PYTHONPATH): JSON lines on stdout,
    each run's ratios on stderr."""
    config = BenchConfig()
    with tempfile.TemporaryDirectory(prefix="minikv-bench-", dir=directory) as scratch:
        root = directory if directory is not None else Path(scratch)
        paths = {name: _loaded_data_set(name, root, config) for name in ("minikv", "sqlite")}
        for number in range(1, repeat + 1):
            systems: list[KeyValueSystem] = []
            try:
                for name, path in paths.items():
                    system = make_system(name, path)
                    system.open()
                    systems.append(system)
                results = timed_reads(systems, config)
            finally:
                for system in systems:
                    system.close()
            for result in results:
                print(result.to_json(), flush=True)
            ops_per_s = {(r.workload, r.system): r.ops_per_s for r in results}
            ratios = ", ".join(
                f"{workload} {ops_per_s[workload, 'minikv'] / ops_per_s[workload, 'sqlite']:.2f}x"
                for workload in ("get_random", "scan_prefix_1000")
            )
            print(f"run {number} of {repeat}: minikv/sqlite {ratios}", file=sys.stderr, flush=True)


_USAGE = (
    "usage: python -m minikv_core.storage.bench --puts-only [REPEAT [DIR]]\n"
    "       python -m minikv_core.storage.bench --reads-only [REPEAT [DIR]]\n"
    "       python -m minikv_core.storage.bench --reopen-probe SYSTEM PATH  (internal)"
)

if __name__ == "__main__":
    arguments = sys.argv[1:]
    if len(arguments) == 3 and arguments[0] == "--reopen-probe":
        _reopen_probe(arguments[1], Path(arguments[2]))
    elif 1 <= len(arguments) <= 3 and arguments[0] in ("--puts-only", "--reads-only"):
        if len(arguments) > 1 and not (arguments[1].isdigit() and int(arguments[1]) > 0):
            sys.exit(f"REPEAT must be a whole number >= 1, got {arguments[1]!r}\n{_USAGE}")
        (_puts_only if arguments[0] == "--puts-only" else _reads_only)(
            int(arguments[1]) if len(arguments) > 1 else 3,
            Path(arguments[2]) if len(arguments) > 2 else None,
        )
    else:
        sys.exit(_USAGE)
