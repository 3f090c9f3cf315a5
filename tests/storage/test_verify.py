"""Storage verification: table checks on disk and the layout-independent state checksum."""

from __future__ import annotations

import os
import random
import threading
from pathlib import Path

import pytest

from minikv_core.storage.engine import Delete, Engine, Op, Put, TableInfo
from minikv_core.storage.errors import CorruptionError
from minikv_core.storage.sstable import BlockCheck, TableReader
from minikv_core.storage.sstable_format import FOOTER_SIZE_BYTES, decode_footer
from minikv_core.storage.verify import (
    StateChecksum,
    TableProblem,
    state_checksum,
    verify_tables,
)
from tests.storage.engine_support import (
    BACKGROUND,
    BATCH_OPS,
    EMPTY_DIGEST,
    MEMTABLE_ONLY,
    SMALL,
    reference_digest,
)

SEEDS = (1, 2, 3)


def random_model(seed: int, count: int) -> dict[bytes, bytes]:
    """Keys of varied length (some under the internal b'\\xff\\xff' prefix), varied values."""
    rng = random.Random(seed)
    model: dict[bytes, bytes] = {}
    while len(model) < count:
        prefix = b"\xff\xff" if rng.random() < 0.05 else b""
        key = prefix + rng.randbytes(rng.randrange(1, 24))
        model[key] = rng.randbytes(rng.randrange(0, 80))
    return model


def apply_in_batches(engine: Engine, ops: list[Op]) -> None:
    for start in range(0, len(ops), BATCH_OPS):
        engine.apply(ops[start : start + BATCH_OPS], engine.applied_index + 1)


def write_plainly(engine: Engine, model: dict[bytes, bytes]) -> None:
    apply_in_batches(engine, [Put(key, value) for key, value in sorted(model.items())])


def write_with_churn(engine: Engine, model: dict[bytes, bytes], seed: int) -> None:
    """The same final content through overwrites, deletes of extra keys and re-puts, in random
    order, with flushes in between: tombstones and shadowed values land in older tables."""
    rng = random.Random(seed + 1000)
    keys = list(model)
    extra = [b"extra-%d" % i for i in range(len(model) // 4)]
    first: list[Op] = [Put(key, rng.randbytes(rng.randrange(0, 40))) for key in keys + extra]
    rng.shuffle(first)
    apply_in_batches(engine, first)
    engine.flush()
    doomed = rng.sample(keys, len(keys) // 5)
    apply_in_batches(engine, [Delete(key) for key in doomed + extra])
    engine.flush()
    final: list[Op] = [Put(key, value) for key, value in model.items()]
    rng.shuffle(final)
    apply_in_batches(engine, final)
    # A small last batch (values unchanged) that stays in the memtable.
    engine.apply([Put(key, model[key]) for key in keys[:5]], engine.applied_index + 1)


def table_paths(engine: Engine) -> list[Path]:
    return [engine.path / info.name for info in engine.tables()]


def data_blocks(path: Path) -> list[BlockCheck]:
    reader = TableReader.open(path)
    try:
        return list(reader.check_blocks())
    finally:
        reader.close()


def flip_byte(path: Path, offset: int) -> None:
    with open(path, "r+b") as file:
        file.seek(offset)
        original = file.read(1)
        file.seek(offset)
        file.write(bytes([original[0] ^ 0xFF]))


def healthy_engine_with_tables(directory: Path, seed: int = SEEDS[0]) -> Engine:
    engine = Engine.open(directory, SMALL)
    write_with_churn(engine, random_model(seed, 1500), seed)
    engine.flush()
    assert len(engine.tables()) > 3
    return engine


# --- state_checksum --------------------------------------------------------------------------


def test_empty_engine_has_the_digest_of_no_input(tmp_path: Path, engines: list[Engine]) -> None:
    engine = Engine.open(tmp_path / "db", SMALL)
    engines.append(engine)
    assert state_checksum(engine) == StateChecksum(keys=0, digest=EMPTY_DIGEST)
    assert reference_digest({}) == EMPTY_DIGEST
    engine.apply([Put(b"k", b"v"), Delete(b"k")], 1)  # only a tombstone left
    engine.flush()
    assert state_checksum(engine) == StateChecksum(keys=0, digest=EMPTY_DIGEST)


@pytest.mark.parametrize("seed", SEEDS)
def test_checksum_is_the_documented_digest_of_the_live_pairs(
    seed: int, tmp_path: Path, engines: list[Engine]
) -> None:
    model = random_model(seed, 1200)
    engine = Engine.open(tmp_path / "db", SMALL)
    engines.append(engine)
    write_with_churn(engine, model, seed)
    checksum = state_checksum(engine)
    assert checksum == StateChecksum(len(model), reference_digest(model)), f"seed {seed}"


@pytest.mark.parametrize("seed", SEEDS)
def test_same_content_written_differently_has_equal_checksums(
    seed: int, tmp_path: Path, engines: list[Engine]
) -> None:
    model = random_model(seed, 1500)
    in_memtable = Engine.open(tmp_path / "memtable", MEMTABLE_ONLY)
    many_tables = Engine.open(tmp_path / "tables", SMALL)
    compacted = Engine.open(tmp_path / "compacted", SMALL)
    churned = Engine.open(tmp_path / "churned", SMALL)
    engines.extend([in_memtable, many_tables, compacted, churned])
    write_plainly(in_memtable, model)
    write_plainly(many_tables, model)
    many_tables.flush()
    write_plainly(compacted, model)
    compacted.compact()
    write_with_churn(churned, model, seed)
    assert (in_memtable.stats().tables, in_memtable.stats().memtable_entries) == (0, len(model))
    assert many_tables.stats().runs > 3
    assert compacted.stats().runs == 1
    assert churned.stats().runs > 3 and churned.stats().memtable_entries > 0

    checksums = [state_checksum(e) for e in (in_memtable, many_tables, compacted, churned)]
    assert checksums == [StateChecksum(len(model), reference_digest(model))] * 4, f"seed {seed}"
    churned.compact()
    assert state_checksum(churned) == checksums[0], f"seed {seed}"


@pytest.mark.parametrize("seed", SEEDS)
def test_one_changed_value_or_key_changes_the_checksum(
    seed: int, tmp_path: Path, engines: list[Engine]
) -> None:
    model = random_model(seed, 800)
    engine = Engine.open(tmp_path / "db", SMALL)
    engines.append(engine)
    write_plainly(engine, model)
    engine.flush()
    before = state_checksum(engine)
    key = random.Random(seed).choice(sorted(model))

    engine.put(key, model[key] + b"!")
    changed = state_checksum(engine)
    assert changed.keys == before.keys and changed.digest != before.digest, f"seed {seed}"
    engine.put(key, model[key])
    assert state_checksum(engine) == before, f"seed {seed}"
    engine.delete(key)
    assert state_checksum(engine).keys == before.keys - 1, f"seed {seed}"
    engine.put(key, model[key])
    engine.put(b"\xff\xff" + key, b"")  # an internal key with an empty value counts too
    grown = state_checksum(engine)
    assert grown.keys == before.keys + 1 and grown.digest != before.digest, f"seed {seed}"


def test_checksum_is_exact_at_each_call_while_background_work_swaps_tables(
    tmp_path: Path, engines: list[Engine]
) -> None:
    seed = SEEDS[0]
    engine = Engine.open(tmp_path / "db", BACKGROUND)
    engines.append(engine)
    rng = random.Random(seed)
    model: dict[bytes, bytes] = {}
    for round_number in range(40):
        ops: list[Op] = []
        for _ in range(BATCH_OPS):
            key = b"k%05d" % rng.randrange(2000)
            if rng.random() < 0.2:
                ops.append(Delete(key))
                model.pop(key, None)
            else:
                value = rng.randbytes(rng.randrange(0, 60))
                ops.append(Put(key, value))
                model[key] = value
        engine.apply(ops, round_number + 1)
        expected = StateChecksum(len(model), reference_digest(model))
        assert state_checksum(engine) == expected, f"seed {seed}, round {round_number}"
    engine.wait_idle(timeout_s=30)
    assert engine.stats().flushes > 5 and engine.stats().compactions > 0
    assert state_checksum(engine) == StateChecksum(len(model), reference_digest(model))


def test_checksum_reading_a_damaged_block_raises_naming_the_file(tmp_path: Path) -> None:
    directory = tmp_path / "db"
    healthy_engine_with_tables(directory).close()
    with Engine.open(directory, SMALL) as reopened:
        path = table_paths(reopened)[-1]
    blocks = data_blocks(path)
    bad = blocks[len(blocks) // 2]
    flip_byte(path, bad.offset + bad.size_bytes // 2)
    # A fresh engine has an empty cache: the block comes from disk.
    with (
        Engine.open(directory, SMALL) as fresh,
        pytest.raises(CorruptionError, match="CRC mismatch") as caught,
    ):
        state_checksum(fresh)
    assert (caught.value.path, caught.value.offset) == (path, bad.offset)


# --- verify_tables ---------------------------------------------------------------------------


@pytest.mark.parametrize("seed", SEEDS)
def test_healthy_tables_have_no_problem(seed: int, tmp_path: Path, engines: list[Engine]) -> None:
    engine = healthy_engine_with_tables(tmp_path / "db", seed)
    engines.append(engine)
    assert verify_tables(engine) == [], f"seed {seed}"
    engine.compact()
    assert verify_tables(engine) == [], f"seed {seed}"


def test_empty_engine_has_no_table_and_no_problem(tmp_path: Path, engines: list[Engine]) -> None:
    engine = Engine.open(tmp_path / "db", SMALL)
    engines.append(engine)
    assert verify_tables(engine) == []


def test_flipped_byte_in_a_data_block_names_the_file_and_block(
    tmp_path: Path, engines: list[Engine]
) -> None:
    engine = healthy_engine_with_tables(tmp_path / "db")
    engines.append(engine)
    path = table_paths(engine)[1]
    blocks = data_blocks(path)
    bad = blocks[len(blocks) // 2]
    for _ in range(2):  # a block is admitted to the cache on its second miss
        engine.scan()
    assert engine.stats().block_cache.blocks > 0  # and cached blocks must not hide the damage
    flip_byte(path, bad.offset + bad.size_bytes // 2)

    problems = verify_tables(engine)

    assert len(problems) == 1, problems
    assert (problems[0].path, problems[0].offset) == (str(path.absolute()), bad.offset)
    assert f"data block {bad.number} CRC mismatch" in problems[0].reason


def test_every_damaged_block_is_reported_not_only_the_first(
    tmp_path: Path, engines: list[Engine]
) -> None:
    engine = healthy_engine_with_tables(tmp_path / "db")
    engines.append(engine)
    first, second = [path for path in table_paths(engine) if len(data_blocks(path)) >= 3][:2]
    damaged = [(first, data_blocks(first)[0]), (first, data_blocks(first)[-1])]
    damaged.append((second, data_blocks(second)[1]))
    for path, block in damaged:
        flip_byte(path, block.offset + 3)
    found = {(problem.path, problem.offset) for problem in verify_tables(engine)}
    assert found == {(str(path.absolute()), block.offset) for path, block in damaged}


@pytest.mark.parametrize("region", ["bloom", "index", "meta", "footer", "magic"])
def test_damage_outside_the_data_blocks_is_named_with_its_offset(
    region: str, tmp_path: Path, engines: list[Engine]
) -> None:
    engine = healthy_engine_with_tables(tmp_path / "db")
    engines.append(engine)
    path = table_paths(engine)[0]
    size = path.stat().st_size
    with open(path, "rb") as file:
        file.seek(size - FOOTER_SIZE_BYTES)
        footer = decode_footer(file.read(FOOTER_SIZE_BYTES))
    footer_offset = size - FOOTER_SIZE_BYTES
    flip_at, reported_at, reason = {
        "bloom": (footer.bloom_offset + 9, footer.bloom_offset, "bloom block CRC mismatch"),
        "index": (footer.index_offset + 2, footer.index_offset, "index block CRC mismatch"),
        "meta": (footer.meta_offset + 1, footer.meta_offset, "meta block CRC mismatch"),
        "footer": (footer_offset + 1, footer_offset, "footer CRC mismatch"),
        "magic": (size - 1, footer_offset, "bad magic"),
    }[region]
    flip_byte(path, flip_at)

    problems = verify_tables(engine)

    assert [(p.path, p.offset) for p in problems] == [(str(path.absolute()), reported_at)]
    assert reason in problems[0].reason


@pytest.mark.parametrize("keep_bytes", [0, 10, "half"])
def test_truncated_table_is_named_where_it_now_ends(
    keep_bytes: int | str, tmp_path: Path, engines: list[Engine]
) -> None:
    engine = healthy_engine_with_tables(tmp_path / "db")
    engines.append(engine)
    path = table_paths(engine)[2]
    size = path.stat().st_size
    new_size = size // 2 if keep_bytes == "half" else int(keep_bytes)
    os.truncate(path, new_size)

    problems = verify_tables(engine)

    assert [(p.path, p.offset) for p in problems] == [(str(path.absolute()), new_size)]
    assert f"file is {new_size} bytes, the MANIFEST says {size}: truncated" in problems[0].reason


def test_deleted_table_is_named_as_missing(tmp_path: Path, engines: list[Engine]) -> None:
    engine = healthy_engine_with_tables(tmp_path / "db")
    engines.append(engine)
    paths = table_paths(engine)
    paths[-1].unlink()

    problems = verify_tables(engine)

    assert problems == [
        TableProblem(str(paths[-1].absolute()), None, "listed in the MANIFEST but missing")
    ]


def test_damaged_manifest_is_reported_with_its_offset(
    tmp_path: Path, engines: list[Engine]
) -> None:
    """A running engine never reads its MANIFEST again: verify passed a damaged one, and the
    node then refused to start at its next restart. Found here, repair rebuilds the replica."""
    engine = healthy_engine_with_tables(tmp_path / "db")
    engines.append(engine)
    manifest = engine.path / "MANIFEST"
    flip_byte(manifest, manifest.stat().st_size - 3)

    problems = verify_tables(engine)

    assert len(problems) == 1, problems
    assert problems[0].path == str(manifest.absolute())
    assert problems[0].offset is not None and "CRC mismatch" in problems[0].reason


def test_missing_manifest_is_reported(tmp_path: Path, engines: list[Engine]) -> None:
    engine = healthy_engine_with_tables(tmp_path / "db")
    engines.append(engine)
    (engine.path / "MANIFEST").unlink()

    problems = verify_tables(engine)

    assert [(p.path, p.offset) for p in problems] == [
        (str((engine.path / "MANIFEST").absolute()), None)
    ]
    assert "missing" in problems[0].reason


def test_table_replaced_by_another_valid_table_is_reported(
    tmp_path: Path, engines: list[Engine]
) -> None:
    engine = healthy_engine_with_tables(tmp_path / "db")
    engines.append(engine)
    first, second = table_paths(engine)[:2]
    os.replace(second, first)  # CRCs all fine, but not the table the MANIFEST names
    problems = verify_tables(engine)
    assert {p.path for p in problems} == {str(first.absolute()), str(second.absolute())}
    assert any("MANIFEST" in p.reason for p in problems if p.path == str(first.absolute()))


class _ListsStaleTablesOnce(Engine):
    """An engine whose next `tables()` answers with an older listing: the interleaving of a
    verification that listed the tables just before a compaction deleted some of them."""

    stale_listing: list[TableInfo] | None = None

    def tables(self) -> list[TableInfo]:
        listing, self.stale_listing = self.stale_listing, None
        return super().tables() if listing is None else listing


def test_table_deleted_by_compaction_after_the_listing_is_not_a_problem(
    tmp_path: Path, engines: list[Engine]
) -> None:
    engine = _ListsStaleTablesOnce.open(tmp_path / "db", SMALL)
    assert isinstance(engine, _ListsStaleTablesOnce)
    engines.append(engine)
    write_with_churn(engine, random_model(SEEDS[0], 1500), SEEDS[0])
    engine.flush()
    before = engine.tables()
    engine.compact()
    assert not any((engine.path / info.name).exists() for info in before)

    engine.stale_listing = before
    assert verify_tables(engine) == []
    # The same stale listing with a live table damaged: only the live one is reported.
    live = table_paths(engine)[0]
    flip_byte(live, data_blocks(live)[0].offset + 1)
    engine.stale_listing = before + engine.tables()
    problems = verify_tables(engine)
    assert [(p.path, p.offset) for p in problems] == [(str(live.absolute()), 0)]


def test_verification_in_a_thread_while_the_engine_writes_and_compacts(
    tmp_path: Path, engines: list[Engine]
) -> None:
    seed = SEEDS[1]
    engine = Engine.open(tmp_path / "db", BACKGROUND)
    engines.append(engine)
    writing = threading.Event()
    writing.set()
    results: list[list[TableProblem]] = []
    failures: list[BaseException] = []

    def verify_until_writes_stop() -> None:
        try:
            while writing.is_set():
                results.append(verify_tables(engine))
            results.append(verify_tables(engine))
        except BaseException as exc:
            failures.append(exc)

    verifier = threading.Thread(target=verify_until_writes_stop, name="verifier")
    verifier.start()
    try:
        rng = random.Random(seed)
        for round_number in range(300):
            ops: list[Op] = [
                Put(b"k%05d" % rng.randrange(3000), rng.randbytes(rng.randrange(0, 60)))
                for _ in range(32)
            ]
            engine.apply(ops, round_number + 1)
        engine.wait_idle(timeout_s=30)
    finally:
        writing.clear()
        verifier.join(timeout=60)
    assert not verifier.is_alive()
    assert failures == []
    assert engine.stats().compactions > 3, "compactions must have run during the verifications"
    assert len(results) > 1
    assert all(result == [] for result in results), [r for r in results if r][:1]


# --- records ---------------------------------------------------------------------------------


def test_problem_describes_itself_on_one_line() -> None:
    problem = TableProblem("/data/000007.sst", 8192, "data block 4 CRC mismatch")
    assert problem.describe() == "/data/000007.sst @ 8192: data block 4 CRC mismatch"
    missing = TableProblem("/data/000008.sst", None, "listed in the MANIFEST but missing")
    assert missing.describe() == "/data/000008.sst: listed in the MANIFEST but missing"


def test_checksum_as_json() -> None:
    checksum = StateChecksum(keys=3, digest="ab" * 16)
    assert checksum.to_json() == {"keys": 3, "digest": "ab" * 16}
