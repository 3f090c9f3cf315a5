"""`Engine.pin_state`: a state pinned at one applied index, digested later in another thread.

The digest must equal `Engine.checksum` of the same state byte for byte (replicas of mixed
versions compare digests), whatever flushes, compactions, snapshot installs or a close did to
the engine between the pin and the digest.
"""

from __future__ import annotations

import random
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import pytest

from minikv_core.storage.engine import (
    Delete,
    Engine,
    EngineClosedError,
    EngineOptions,
    Op,
    Put,
    StateChecksum,
)
from minikv_core.storage.errors import CorruptionError
from minikv_core.storage.sstable import TableReader
from tests.storage.engine_support import (
    BACKGROUND,
    BATCH_OPS,
    EMPTY_DIGEST,
    MEMTABLE_ONLY,
    SMALL,
    reference_digest,
)

SEEDS = (11, 12, 13)
DEADLINE_S = 30.0


def random_ops(rng: random.Random, model: dict[bytes, bytes], count: int) -> list[Op]:
    """`count` puts and deletes over a small key space (overwrites and tombstones), applied
    to `model` as well."""
    ops: list[Op] = []
    touched: set[bytes] = set()
    while len(ops) < count:
        key = b"k%05d" % rng.randrange(3000)
        if key in touched:  # a batch writes a key once, as the state machine's do
            continue
        touched.add(key)
        if rng.random() < 0.2:
            ops.append(Delete(key))
            model.pop(key, None)
        else:
            value = rng.randbytes(rng.randrange(0, 60))
            ops.append(Put(key, value))
            model[key] = value
    return ops


def write(engine: Engine, rng: random.Random, model: dict[bytes, bytes], batches: int) -> None:
    for _ in range(batches):
        engine.apply(random_ops(rng, model, BATCH_OPS), engine.applied_index + 1)


def expected(engine: Engine, model: dict[bytes, bytes]) -> StateChecksum:
    return StateChecksum(engine.applied_index, len(model), reference_digest(model))


def test_the_digest_format_is_pinned_by_a_golden_value(
    tmp_path: Path, engines: list[Engine]
) -> None:
    """A change of format would make replicas of two versions disagree: it must be noticed."""
    engine = Engine.open(tmp_path / "db", SMALL)
    engines.append(engine)
    assert engine.pin_state().checksum() == StateChecksum(0, 0, EMPTY_DIGEST)
    engine.apply([Put(b"beta", b""), Put(b"\xff\xffsys", b"xxx"), Put(b"gone", b"!")], 1)
    engine.flush()
    engine.apply([Put(b"alpha", b"1"), Delete(b"gone")], 2)
    golden = StateChecksum(2, 3, "c14950c27f5f1e1412b558c2e69d3090")
    assert engine.pin_state().checksum() == golden
    assert engine.checksum() == golden


@pytest.mark.parametrize("seed", SEEDS)
def test_pinned_digest_equals_engine_checksum_in_every_layout(
    seed: int, tmp_path: Path, engines: list[Engine]
) -> None:
    rng = random.Random(seed)
    model: dict[bytes, bytes] = {}
    in_memtable = Engine.open(tmp_path / "memtable", MEMTABLE_ONLY)
    layered = Engine.open(tmp_path / "layered", SMALL)
    engines.extend([in_memtable, layered])
    for engine in (in_memtable, layered):
        assert engine.pin_state().checksum() == engine.checksum() == expected(engine, {})

    batches = [random_ops(rng, model, BATCH_OPS) for _ in range(40)]
    batches.append(random_ops(rng, model, 3))  # small enough to stay in layered's memtable
    for index, ops in enumerate(batches, start=1):
        in_memtable.apply(ops, index)
        layered.apply(ops, index)
    assert in_memtable.stats().tables == 0
    assert layered.stats().runs > 3 and layered.stats().memtable_entries > 0, f"seed {seed}"
    layouts = {"memtable": in_memtable, "runs and memtable": layered}
    for name, engine in layouts.items():
        pinned = engine.pin_state().checksum()
        assert pinned == engine.checksum() == expected(engine, model), f"seed {seed}, {name}"

    layered.compact()  # one run, tombstones dropped
    assert layered.stats().runs == 1 and layered.stats().memtable_entries == 0
    assert layered.pin_state().checksum() == layered.checksum() == expected(layered, model)
    write(layered, rng, model, 5)  # deletes and overwrites above the single run
    assert layered.pin_state().checksum() == layered.checksum() == expected(layered, model)


def test_pinned_digest_includes_immutable_memtables(tmp_path: Path, engines: list[Engine]) -> None:
    """Immutable memtables wait for the flush thread only briefly, so the test repeats until
    a pin provably held one: immutables were waiting before it and no flush finished between
    the look before and the look after."""
    engine = Engine.open(
        tmp_path / "db",
        EngineOptions(memtable_size_bytes=256 * 1024, background_compaction=False),
    )
    engines.append(engine)
    rng = random.Random(SEEDS[0])
    model: dict[bytes, bytes] = {}
    seen = 0
    deadline = time.monotonic() + DEADLINE_S
    while seen < 3:
        assert time.monotonic() < deadline, f"no pin held an immutable memtable (seed {SEEDS[0]})"
        ops: list[Op] = []
        for _ in range(2000):  # ~330 KiB: fills the memtable, which rotates
            key = b"i%07d" % rng.randrange(1_000_000)
            value = rng.randbytes(100)
            if key not in model:
                ops.append(Put(key, value))
                model[key] = value
        engine.apply(ops, engine.applied_index + 1)
        before = engine.stats()
        pinned = engine.pin_state()
        after = engine.stats()
        if before.immutable_memtables == 0 or after.flushes != before.flushes:
            continue
        seen += 1
        reference = expected(engine, model)
        assert pinned.checksum() == reference
        assert engine.checksum() == reference


def test_pinned_state_outlives_the_compaction_that_deletes_its_tables(
    tmp_path: Path, engines: list[Engine]
) -> None:
    engine = Engine.open(tmp_path / "db", SMALL)
    engines.append(engine)
    rng = random.Random(SEEDS[1])
    model: dict[bytes, bytes] = {}
    write(engine, rng, model, 60)
    files = [engine.path / info.name for info in engine.tables()]
    assert len(files) > 3
    pinned = engine.pin_state()
    reference = engine.checksum()
    assert reference == expected(engine, model)

    engine.compact()
    write(engine, rng, model, 10)
    engine.flush()
    engine.compact()

    assert not any(path.exists() for path in files), "the compactions unlinked the pinned tables"
    assert engine.checksum() != reference
    assert engine.checksum() == expected(engine, model)
    assert pinned.checksum() == reference


def test_pinned_state_outlives_a_snapshot_install_and_close(
    tmp_path: Path, engines: list[Engine]
) -> None:
    """A replica rebuilt from a snapshot, or dropped from the node, while its digest runs."""
    engine = Engine.open(tmp_path / "db", SMALL)
    other = Engine.open(tmp_path / "other", SMALL)
    engines.extend([engine, other])
    rng = random.Random(SEEDS[2])
    model: dict[bytes, bytes] = {}
    write(engine, rng, model, 40)
    write(other, rng, {}, 20)
    pinned = engine.pin_state()
    reference = engine.checksum()

    engine.install_snapshot(other.snapshot(tmp_path / "snapshot").path)
    assert engine.checksum() == other.checksum()
    engine.close()

    assert pinned.checksum() == reference == StateChecksum(40, len(model), reference_digest(model))


def test_digests_in_threads_match_while_flushes_and_compactions_swap_tables(
    tmp_path: Path, engines: list[Engine]
) -> None:
    """Each pin's reference is `Engine.checksum` right after it, before the next write: the
    same logical state. The digests then run in worker threads while the writer goes on and
    the background threads flush and merge (which interleaving happens varies; the outcome
    may not)."""
    engine = Engine.open(tmp_path / "db", BACKGROUND)
    engines.append(engine)
    rng = random.Random(SEEDS[0])
    model: dict[bytes, bytes] = {}
    pending: list[tuple[int, Future[StateChecksum], StateChecksum]] = []
    with ThreadPoolExecutor(2, thread_name_prefix="test-digest") as workers:
        for round_number in range(60):
            write(engine, rng, model, 2)
            if round_number % 3 == 2:  # the last round (59) among them
                future = workers.submit(engine.pin_state().checksum)
                pending.append((round_number, future, engine.checksum()))
        results = [(n, f.result(timeout=DEADLINE_S), reference) for n, f, reference in pending]
    for round_number, digest, reference in results:
        assert digest == reference, f"seed {SEEDS[0]}, round {round_number}"
    assert results[-1][1] == StateChecksum(
        engine.applied_index, len(model), reference_digest(model)
    )
    engine.wait_idle(timeout_s=DEADLINE_S)
    stats = engine.stats()
    assert stats.flushes > 10 and stats.compactions > 0, stats


def test_pinned_digest_reading_a_damaged_block_raises_naming_the_file(tmp_path: Path) -> None:
    directory = tmp_path / "db"
    with Engine.open(directory, SMALL) as engine:
        write(engine, random.Random(SEEDS[0]), {}, 40)
    with Engine.open(directory, SMALL) as reopened:
        path = reopened.path / reopened.tables()[-1].name
    reader = TableReader.open(path)
    try:
        blocks = list(reader.check_blocks())
    finally:
        reader.close()
    bad = blocks[len(blocks) // 2]
    with open(path, "r+b") as file:
        file.seek(bad.offset + bad.size_bytes // 2)
        original = file.read(1)
        file.seek(bad.offset + bad.size_bytes // 2)
        file.write(bytes([original[0] ^ 0xFF]))
    # A fresh engine: its cache is empty, so the block is read from disk.
    with Engine.open(directory, SMALL) as fresh:
        pinned = fresh.pin_state()
        with pytest.raises(CorruptionError, match="CRC mismatch") as caught:
            pinned.checksum()
    assert (caught.value.path, caught.value.offset) == (path, bad.offset)


def test_pinning_a_closed_engine_raises(tmp_path: Path) -> None:
    engine = Engine.open(tmp_path / "db", SMALL)
    engine.close()
    with pytest.raises(EngineClosedError):
        engine.pin_state()
