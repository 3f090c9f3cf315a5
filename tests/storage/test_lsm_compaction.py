"""Compaction: the size-tiered policy (pure), the newest-wins merge, the run writer."""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from minikv_core.storage.compaction import (
    Chunk,
    CompactionCancelledError,
    CompactionJob,
    CompactionPlan,
    CompactionProcess,
    Entry,
    entry_chunks,
    file_numbers_needed,
    is_temporary_table_name,
    merge_chunks,
    merge_newest_wins,
    pack_entries,
    pick_compaction,
    plan_full_compaction,
    tier_of,
    unpack_entries,
    write_run,
)
from minikv_core.storage.errors import CorruptionError
from minikv_core.storage.lsm_limits import LSM_COMPACTION_CANCEL_CHECK_ENTRIES
from minikv_core.storage.sstable import TableReader, TableWriter

SEED = 11
MIB = 1 << 20
BASE = 4 * MIB  # the memtable size: flush-sized runs are tier 0


def test_tier_grows_by_one_per_fanout_factor() -> None:
    assert tier_of(1, BASE) == 0
    assert tier_of(BASE, BASE) == 0
    assert tier_of(int(1.9 * BASE), BASE) == 0
    assert tier_of(2 * BASE, BASE) == 1  # geometric midpoint between 1x and 4x
    assert tier_of(4 * BASE, BASE) == 1
    assert tier_of(16 * BASE, BASE) == 2
    assert tier_of(64 * BASE, BASE) == 3


def test_fewer_than_fanout_runs_of_a_tier_do_not_merge() -> None:
    assert pick_compaction([], BASE) is None
    assert pick_compaction([BASE], BASE) is None
    assert pick_compaction([BASE, BASE, BASE], BASE) is None
    assert pick_compaction([BASE, BASE, BASE, 16 * BASE], BASE) is None


def test_fanout_runs_of_one_tier_merge_and_drop_tombstones_only_at_the_bottom() -> None:
    assert pick_compaction([BASE] * 4, BASE) == CompactionPlan(0, 3, True, "4 runs in tier 0")
    plan = pick_compaction([BASE] * 4 + [16 * BASE], BASE)
    assert plan is not None
    assert (plan.first, plan.last, plan.drop_tombstones) == (0, 3, False)


def test_a_full_older_tier_merges_even_behind_newer_runs() -> None:
    plan = pick_compaction([BASE, 4 * BASE, 4 * BASE, 4 * BASE, 4 * BASE], BASE)
    assert plan is not None
    assert (plan.first, plan.last, plan.drop_tombstones) == (1, 4, True)


def test_too_many_interleaved_runs_force_the_cheapest_adjacent_window() -> None:
    # Tiers alternate, so no tier has 4 adjacent runs; 11 runs > LSM_RUNS_FORCE_MERGE.
    sizes = [BASE, 4 * BASE] * 5 + [64 * BASE]
    plan = pick_compaction(sizes, BASE)
    assert plan is not None
    assert plan.width == 4
    totals = [sum(sizes[i : i + 4]) for i in range(len(sizes) - 3)]
    assert sum(sizes[plan.first : plan.last + 1]) == min(totals)
    assert not plan.drop_tombstones


def test_full_compaction_plan() -> None:
    assert plan_full_compaction(0, False) is None
    assert plan_full_compaction(1, False) is None  # one clean run: nothing to gain
    assert plan_full_compaction(1, True) == CompactionPlan(0, 0, True, "full compaction")
    assert plan_full_compaction(5, False) == CompactionPlan(0, 4, True, "full compaction")


def test_merge_keeps_the_newest_source_for_equal_keys_in_both_directions() -> None:
    newest: list[Entry] = [(b"a", b"new"), (b"c", None)]
    oldest: list[Entry] = [(b"a", b"old"), (b"b", b"old"), (b"c", b"old")]
    assert list(merge_newest_wins([iter(newest), iter(oldest)])) == [
        (b"a", b"new"),
        (b"b", b"old"),
        (b"c", None),
    ]
    assert list(merge_newest_wins([iter(newest[::-1]), iter(oldest[::-1])], reverse=True)) == [
        (b"c", None),
        (b"b", b"old"),
        (b"a", b"new"),
    ]


def test_merge_matches_a_dict_model_for_random_sources() -> None:
    rng = random.Random(SEED)
    for case in range(50):
        sources: list[dict[bytes, bytes | None]] = [
            {
                bytes([rng.randrange(40)]): rng.choice([None, rng.randbytes(2)])
                for _ in range(rng.randrange(0, 30))
            }
            for _ in range(rng.randrange(1, 6))
        ]
        model: dict[bytes, bytes | None] = {}
        for source in reversed(sources):  # oldest first, newer overwrite
            model.update(source)
        for reverse in (False, True):
            merged = list(
                merge_newest_wins(
                    [iter(sorted(s.items(), reverse=reverse)) for s in sources], reverse
                )
            )
            assert merged == sorted(model.items(), reverse=reverse), f"seed {SEED} case {case}"


def numbered_writers(directory: Path) -> Iterator[TableWriter]:
    number = 0
    while True:
        number += 1
        yield TableWriter(directory / f"{number:06d}.sst", block_size_bytes=256)


def test_write_run_splits_at_the_target_size_into_disjoint_tables(tmp_path: Path) -> None:
    entries: list[Entry] = [(b"k%06d" % i, b"v" * 50) for i in range(2000)]
    writers = numbered_writers(tmp_path)
    tables = write_run(
        entry_chunks(iter(entries)), lambda: next(writers), 16 * 1024, drop_tombstones=False
    )
    assert len(tables) > 3
    assert all(t.size_bytes >= 16 * 1024 for t in tables[:-1])
    read: list[Entry] = []
    for written in tables:
        reader = TableReader.open(written.path)
        read.extend(reader.iter_range())
        reader.close()
    assert read == entries


def test_write_run_drops_tombstones_when_asked(tmp_path: Path) -> None:
    entries: list[Entry] = [(b"a", b"1"), (b"b", None), (b"c", b"3")]
    writers = numbered_writers(tmp_path)
    (kept,) = write_run(
        entry_chunks(iter(entries)), lambda: next(writers), MIB, drop_tombstones=False
    )
    (dropped,) = write_run(
        entry_chunks(iter(entries)), lambda: next(writers), MIB, drop_tombstones=True
    )
    assert kept.properties.tombstone_count == 1
    assert dropped.properties.entry_count == 2 and dropped.properties.tombstone_count == 0


def test_write_run_of_only_tombstones_writes_no_table(tmp_path: Path) -> None:
    writers = numbered_writers(tmp_path)
    entries: list[Entry] = [(b"a", None), (b"b", None)]
    assert (
        write_run(entry_chunks(iter(entries)), lambda: next(writers), MIB, drop_tombstones=True)
        == []
    )
    assert list(tmp_path.iterdir()) == []


def test_cancelled_write_run_deletes_every_file_it_created(tmp_path: Path) -> None:
    count = 3 * LSM_COMPACTION_CANCEL_CHECK_ENTRIES
    entries: list[Entry] = [(b"k%08d" % i, b"v" * 20) for i in range(count)]
    writers = numbered_writers(tmp_path)
    checks = iter([False, True])
    with pytest.raises(CompactionCancelledError):
        write_run(
            entry_chunks(iter(entries)),
            lambda: next(writers),
            8 * 1024,
            False,
            lambda: next(checks),
        )
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("seed", range(SEED, SEED + 3))
def test_packed_entries_unpack_to_the_same_keys_values_and_tombstones(seed: int) -> None:
    rng = random.Random(seed)
    keys = sorted({rng.randbytes(rng.randrange(1, 30)) for _ in range(500)})
    values: list[bytes | None] = [
        rng.choice([None, b"", rng.randbytes(rng.randrange(1, 200))]) for _ in keys
    ]
    for chosen in (values, [v if v is not None else b"live" for v in values]):
        size, parts = pack_entries(keys, chosen)
        packed = b"".join(parts)
        assert len(packed) == size, f"seed {seed}"
        assert unpack_entries(packed) == (keys, chosen), f"seed {seed}"
    with pytest.raises(ValueError, match="end at byte"):
        unpack_entries(b"".join(pack_entries(keys, values)[1]) + b"extra")


def test_failing_source_leaves_no_files(tmp_path: Path) -> None:
    def source() -> Iterator[Entry]:
        for i in range(5000):
            yield b"k%08d" % i, b"v" * 20
        raise OSError("disk read failed")

    writers = numbered_writers(tmp_path)
    with pytest.raises(OSError, match="disk read failed"):
        write_run(entry_chunks(source()), lambda: next(writers), 8 * 1024, drop_tombstones=False)
    assert list(tmp_path.iterdir()) == []


# --- the worker process -----------------------------------------------------------------------


def job_for(tmp_path: Path, inputs: list[list[Path]], count: int = 8) -> CompactionJob:
    return CompactionJob(
        input_runs=tuple(tuple(str(p) for p in run) for run in inputs),
        output_dir=str(tmp_path),
        first_file_number=100,
        file_number_count=count,
        drop_tombstones=True,
        table_size_bytes=16 * 1024,
        block_size_bytes=256,
        bloom_bits_per_key=12,
    )


def write_entries(path: Path, entries: list[Entry]) -> Path:
    writer = TableWriter(path, block_size_bytes=256)
    for key, value in entries:
        writer.add(key, value)
    return writer.finish().path


def test_worker_process_merges_newest_first_and_installs_reserved_names(tmp_path: Path) -> None:
    newer = write_entries(tmp_path / "000002.sst", [(b"a", b"new"), (b"b", None)])
    old_entries: list[Entry] = [(b"a", b"old"), (b"b", b"old")]
    old_entries += [(b"k%05d" % i, b"old" * 10) for i in range(3000)]
    older = write_entries(tmp_path / "000001.sst", old_entries)
    worker = CompactionProcess()
    try:
        input_bytes = newer.stat().st_size + older.stat().st_size
        job = job_for(tmp_path, [[newer], [older]], file_numbers_needed(input_bytes, 16 * 1024))
        outputs = worker.run(job, cancelled=lambda: False)
    finally:
        worker.stop()
    assert len(outputs) > 1
    assert [p.name for p in outputs] == [f"{100 + i:06d}.sst" for i in range(len(outputs))]
    merged: list[Entry] = []
    for path in outputs:
        reader = TableReader.open(path)
        merged.extend(reader.iter_range())
        reader.close()
    # Newest wins for "a"; "b"'s tombstone shadows the old value and, at the bottom, is dropped.
    assert merged == [(b"a", b"new"), *old_entries[2:]]
    assert not any(is_temporary_table_name(p.name) for p in tmp_path.iterdir())


def test_worker_flush_job_writes_entries_in_any_order_as_sorted_tables(tmp_path: Path) -> None:
    """A flush job: the entries travel with the job, in a memtable's insertion order."""
    rng = random.Random(SEED)
    entries: list[Entry] = [
        (b"k%05d" % i, rng.choice([None, rng.randbytes(40)])) for i in range(3000)
    ]
    rng.shuffle(entries)
    size, parts = pack_entries([k for k, _ in entries], [v for _, v in entries])
    job = replace(
        job_for(tmp_path, [], file_numbers_needed(size, 16 * 1024)),
        drop_tombstones=False,
        entries_bytes=size,
    )
    worker = CompactionProcess()
    try:
        outputs = worker.run(job, cancelled=lambda: False, entries=parts)
    finally:
        worker.stop()
    assert len(outputs) > 1
    written: list[Entry] = []
    for path in outputs:
        reader = TableReader.open(path)
        written.extend(reader.iter_range())
        reader.close()
    assert written == sorted(entries), f"seed {SEED}"
    assert not any(is_temporary_table_name(p.name) for p in tmp_path.iterdir())


def test_cancelled_worker_job_is_killed_and_leaves_no_files(tmp_path: Path) -> None:
    source = write_entries(
        tmp_path / "000001.sst", [(b"k%06d" % i, b"v" * 30) for i in range(20000)]
    )
    before = set(tmp_path.iterdir())
    worker = CompactionProcess()
    with pytest.raises(CompactionCancelledError):
        worker.run(job_for(tmp_path, [[source]], count=40), cancelled=lambda: True)
    worker.stop()
    assert set(tmp_path.iterdir()) == before


def test_worker_reports_corrupt_input_with_its_path(tmp_path: Path) -> None:
    source = write_entries(tmp_path / "000001.sst", [(b"k%06d" % i, b"v" * 30) for i in range(500)])
    data = bytearray(source.read_bytes())
    data[100] ^= 0x01  # inside the first data block
    source.write_bytes(bytes(data))
    worker = CompactionProcess()
    try:
        with pytest.raises(CorruptionError, match="CRC mismatch") as caught:
            worker.run(job_for(tmp_path, [[source]]), cancelled=lambda: False)
    finally:
        worker.stop()
    assert caught.value.path == source
    assert sorted(p.name for p in tmp_path.iterdir()) == ["000001.sst"]


def test_temporary_names_are_recognized() -> None:
    assert is_temporary_table_name("000123.sst.4242.tmp")
    assert not is_temporary_table_name("000123.sst")
    assert not is_temporary_table_name("MANIFEST.tmp")
    assert not is_temporary_table_name("notes.sst.tmp.txt")


def chunked(items: list[Entry], rng: random.Random, reverse: bool) -> Iterator[Chunk]:
    """`items` (ascending) as chunks of random sizes, in scan order, ascending within."""
    chunks: list[Chunk] = []
    position = 0
    while position < len(items):
        size = rng.randrange(1, 6)
        part = items[position : position + size]
        chunks.append(([k for k, _ in part], [v for _, v in part]))
        position += size
    return iter(chunks[::-1] if reverse else chunks)


def test_chunk_merge_matches_a_dict_model_with_limits_both_ways() -> None:
    rng = random.Random(SEED)
    for case in range(200):
        sources: list[dict[bytes, bytes | None]] = [
            {
                bytes([rng.randrange(60)]): rng.choice([None, rng.randbytes(2)])
                for _ in range(rng.randrange(0, 40))
            }
            for _ in range(rng.randrange(1, 6))
        ]
        model: dict[bytes, bytes | None] = {}
        for source in reversed(sources):
            model.update(source)
        reverse = rng.random() < 0.5
        limit = rng.choice([None, 0, 1, 5, 30])
        live = sorted((k, v) for k, v in model.items() if v is not None)
        expected = (live[::-1] if reverse else live)[:limit]
        merged = merge_chunks(
            [chunked(sorted(s.items()), rng, reverse) for s in sources], reverse, limit
        )
        assert merged == expected, f"seed {SEED} case {case}"
