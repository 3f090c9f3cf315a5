"""The LSM engine: API semantics, applied index durability, files on disk, snapshots."""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import threading
from dataclasses import replace
from pathlib import Path

import pytest

from minikv_core.storage.compaction import (
    SHARED_WORKERS,
    CompactionProcess,
    WorkerLostError,
    pick_compaction,
)
from minikv_core.storage.engine import (
    AppliedIndexError,
    BackgroundError,
    Delete,
    Engine,
    EngineClosedError,
    EngineLockedError,
    EngineOptions,
    InvalidKeyError,
    InvalidValueError,
    KeyTooLargeError,
    Put,
    ValueTooLargeError,
)
from minikv_core.storage.errors import CorruptionError
from minikv_core.storage.lsm_limits import (
    LSM_COMPACTION_WORKERS_MAX,
    LSM_KEY_SIZE_BYTES_MAX,
    LSM_RUNS_FORCE_MERGE,
    LSM_VALUE_SIZE_BYTES_MAX,
)
from minikv_core.storage.manifest import MANIFEST_NAME, MANIFEST_TEMP_NAME

SEED = 5
# Tiny sizes so a few thousand keys make many flushes, tables and compactions.
SMALL = EngineOptions(memtable_size_bytes=2048, block_size_bytes=256, table_size_bytes=4096)


def key(i: int) -> bytes:
    return b"k%06d" % i


def fill(engine: Engine, count: int, start_index: int = 1, seed: int = SEED) -> dict[bytes, bytes]:
    """Write `count` puts/deletes over a key space of count // 2 keys; return the model."""
    rng = random.Random(seed)
    model: dict[bytes, bytes] = {}
    for offset in range(count):
        k = key(rng.randrange(max(1, count // 2)))
        if rng.random() < 0.2:
            engine.delete(k, start_index + offset)
            model.pop(k, None)
        else:
            value = rng.randbytes(rng.randrange(0, 60))
            engine.put(k, value, start_index + offset)
            model[k] = value
    return model


def table_files(path: Path) -> set[str]:
    return {p.name for p in path.iterdir() if p.suffix == ".sst"}


@pytest.fixture
def engine(tmp_path: Path) -> Engine:
    return Engine.open(tmp_path / "db", SMALL)


def test_put_get_delete(engine: Engine) -> None:
    engine.put(b"a", b"1")
    engine.put(b"b", b"")
    assert engine.get(b"a") == b"1"
    assert engine.get(b"b") == b""  # an empty value is a value, not a deletion
    engine.delete(b"a")
    assert engine.get(b"a") is None
    assert engine.get(b"never") is None
    assert engine.applied_index == 3
    engine.close()


def test_random_history_reads_back_through_memtable_tables_and_compaction(
    engine: Engine,
) -> None:
    model = fill(engine, 4000)
    for phase in ("live", "idle", "compacted"):
        if phase == "idle":
            engine.wait_idle()
        elif phase == "compacted":
            engine.compact()
        for i in range(2000):
            assert engine.get(key(i)) == model.get(key(i)), f"seed {SEED} {phase} {key(i)!r}"
        assert engine.scan() == sorted(model.items()), f"seed {SEED} {phase}"
    stats = engine.stats()
    assert stats.flushes > 10 and stats.compactions >= 1
    engine.close()


def test_scan_bounds_prefix_limit_and_reverse(engine: Engine) -> None:
    items = {b"a": b"1", b"ab": b"2", b"abc": b"3", b"b": b"4", b"\xff": b"5", b"\xff\xff": b"6"}
    engine.apply([Put(k, v) for k, v in items.items()], 1)
    ordered = sorted(items.items())
    assert engine.scan() == ordered
    assert engine.scan(start=b"ab") == ordered[1:]
    assert engine.scan(end=b"ab") == ordered[:1]  # end is exclusive
    assert engine.scan(start=b"ab", end=b"b") == ordered[1:3]
    assert engine.scan(prefix=b"ab") == [(b"ab", b"2"), (b"abc", b"3")]
    assert engine.scan(prefix=b"\xff") == [(b"\xff", b"5"), (b"\xff\xff", b"6")]  # no successor
    assert engine.scan(prefix=b"a", start=b"ab", end=b"abc") == [(b"ab", b"2")]
    assert engine.scan(limit=2) == ordered[:2]
    assert engine.scan(limit=2, reverse=True) == ordered[::-1][:2]
    assert engine.scan(prefix=b"a", reverse=True) == ordered[:3][::-1]
    assert engine.scan(limit=0) == []
    assert engine.scan(start=b"b", end=b"a") == []
    engine.close()


def test_scan_limit_counts_live_keys_past_deletions(engine: Engine) -> None:
    engine.apply([Put(key(i), b"v") for i in range(100)], 1)
    engine.flush()
    engine.apply([Delete(key(i)) for i in range(50)], 2)  # newest layer deletes the first half
    assert engine.scan(limit=10) == [(key(i), b"v") for i in range(50, 60)]
    assert engine.scan(limit=10, reverse=True) == [(key(i), b"v") for i in range(99, 89, -1)]
    engine.close()


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (lambda e: e.get(b""), InvalidKeyError, "must not be empty"),
        (lambda e: e.get("text"), InvalidKeyError, "must be bytes, got str"),
        (lambda e: e.put(b"k" * (LSM_KEY_SIZE_BYTES_MAX + 1), b"v"), KeyTooLargeError, "bytes"),
        (lambda e: e.put(b"k", "v"), InvalidValueError, "must be bytes, got str"),
        (lambda e: e.put(b"k", bytearray(b"v")), InvalidValueError, "got bytearray"),
        (
            lambda e: e.put(b"k", b"v" * (LSM_VALUE_SIZE_BYTES_MAX + 1)),
            ValueTooLargeError,
            "limit",
        ),
        (lambda e: e.delete(b""), InvalidKeyError, "must not be empty"),
        (lambda e: e.scan(start="a"), InvalidKeyError, "scan start must be bytes"),
        (lambda e: e.scan(limit=-1), ValueError, "scan limit"),
        (lambda e: e.apply([(b"k", b"v")], 1), TypeError, "ops must be Put or Delete"),
        (lambda e: e.apply([], True), AppliedIndexError, "must be an int"),
    ],
)
def test_bad_input_raises_a_typed_error_naming_the_problem(
    engine: Engine, call: object, error: type[Exception], message: str
) -> None:
    assert callable(call)
    with pytest.raises(error, match=message):
        call(engine)
    engine.close()


def test_batch_with_one_bad_op_applies_nothing(engine: Engine) -> None:
    engine.put(b"a", b"old", 1)
    with pytest.raises(InvalidKeyError):
        engine.apply([Put(b"a", b"new"), Put(b"", b"x")], 2)
    assert engine.get(b"a") == b"old"
    assert engine.applied_index == 1
    engine.close()


def test_applied_index_must_move_forward(engine: Engine) -> None:
    engine.put(b"a", b"1", 5)
    for stale in (5, 4):
        with pytest.raises(AppliedIndexError, match=f"applied_index {stale} does not follow"):
            engine.put(b"a", b"2", stale)
    assert engine.get(b"a") == b"1"
    engine.apply([], 9)  # a Raft no-op entry only advances the index
    assert engine.applied_index == 9
    engine.close()


def test_flush_persists_the_applied_index_with_the_tables(tmp_path: Path) -> None:
    """After a crash the host replays from durable_applied_index + 1 (etcd 3.5 bug class)."""
    options = EngineOptions(flush_on_close=False)
    engine = Engine.open(tmp_path, options)
    engine.apply([Put(b"a", b"1")], 10)
    assert (engine.applied_index, engine.durable_applied_index) == (10, 0)
    assert engine.flush() == 10
    engine.apply([Put(b"b", b"2")], 11)
    engine.apply([], 12)
    assert (engine.applied_index, engine.durable_applied_index) == (12, 10)
    engine.close()  # no flush: index 11..12 live only in the lost memtable
    engine = Engine.open(tmp_path, options)
    assert (engine.applied_index, engine.durable_applied_index) == (10, 10)
    assert (engine.get(b"a"), engine.get(b"b")) == (b"1", None)
    engine.apply([], 11)  # the host replays 11..
    assert engine.flush() == 11  # an empty memtable still records its index
    engine.close()
    assert Engine.open(tmp_path, options).applied_index == 11


def test_close_flushes_by_default(tmp_path: Path) -> None:
    engine = Engine.open(tmp_path)
    engine.put(b"a", b"1", 3)
    engine.close()
    engine.close()  # idempotent
    reopened = Engine.open(tmp_path)
    assert (reopened.get(b"a"), reopened.applied_index) == (b"1", 3)
    reopened.close()


def test_closed_engine_refuses_calls(engine: Engine) -> None:
    engine.close()
    for call in (
        lambda: engine.get(b"a"),
        lambda: engine.put(b"a", b"1"),
        engine.scan,
        engine.flush,
        engine.tables,
    ):
        with pytest.raises(EngineClosedError):
            call()


def test_directory_is_owned_by_one_engine_at_a_time(tmp_path: Path) -> None:
    engine = Engine.open(tmp_path)
    with pytest.raises(EngineLockedError, match="already open"):
        Engine.open(tmp_path)
    engine.close()
    Engine.open(tmp_path).close()


def test_orphan_tables_and_temp_manifest_are_deleted_on_open(tmp_path: Path) -> None:
    with Engine.open(tmp_path, SMALL) as engine:
        model = fill(engine, 500)
    live = table_files(tmp_path)
    (tmp_path / "999999.sst").write_bytes(b"a table whose manifest never committed")
    (tmp_path / MANIFEST_TEMP_NAME).write_bytes(b"half")
    (tmp_path / "notes.txt").write_text("not ours: left alone")
    with Engine.open(tmp_path, SMALL) as engine:
        assert table_files(tmp_path) == live
        assert not (tmp_path / MANIFEST_TEMP_NAME).exists()
        assert (tmp_path / "notes.txt").exists()
        assert engine.scan() == sorted(model.items())


def test_tables_without_a_manifest_are_refused_not_deleted(tmp_path: Path) -> None:
    with Engine.open(tmp_path, SMALL) as engine:
        fill(engine, 500)
    (tmp_path / MANIFEST_NAME).unlink()
    files = table_files(tmp_path)
    with pytest.raises(CorruptionError, match="no MANIFEST"):
        Engine.open(tmp_path, SMALL)
    assert table_files(tmp_path) == files


def test_missing_live_table_is_reported(tmp_path: Path) -> None:
    with Engine.open(tmp_path, SMALL) as engine:
        fill(engine, 500)
    victim = sorted(table_files(tmp_path))[0]  # after close, every table file is live
    (tmp_path / victim).unlink()
    with pytest.raises(CorruptionError, match="listed in the MANIFEST but missing") as caught:
        Engine.open(tmp_path, SMALL)
    assert caught.value.path == tmp_path / victim


def test_compact_leaves_one_run_without_tombstones_and_no_obsolete_files(
    tmp_path: Path,
) -> None:
    options = EngineOptions(
        memtable_size_bytes=2048,
        block_size_bytes=256,
        table_size_bytes=4096,
        background_compaction=False,
    )
    with Engine.open(tmp_path, options) as engine:
        model = fill(engine, 3000)
        engine.flush()
        assert engine.stats().runs > 5  # nothing compacted in the background
        engine.compact()
        tables = engine.tables()
        assert {t.level for t in tables} == {0}
        assert sum(t.tombstone_count for t in tables) == 0
        assert sum(t.key_count for t in tables) == len(model)
        assert table_files(tmp_path) == {t.name for t in tables}
        assert engine.scan() == sorted(model.items())
        assert engine.verify() == len(model)


def test_background_compaction_bounds_the_number_of_runs(engine: Engine) -> None:
    model = fill(engine, 6000)
    engine.wait_idle(timeout_s=60)
    stats = engine.stats()
    # Idle means the policy wants nothing more: no tier holds `fanout` adjacent runs, and
    # there are at most LSM_RUNS_FORCE_MERGE runs in all.
    run_sizes = [0] * stats.runs
    for table in engine.tables():
        run_sizes[table.level] += table.size_bytes
    assert pick_compaction(run_sizes, SMALL.memtable_size_bytes, SMALL.tier_fanout) is None
    assert stats.compactions > 0 and stats.runs <= LSM_RUNS_FORCE_MERGE, stats
    assert 1.0 < stats.write_amplification < 8.0, stats
    assert table_files(engine.path) == {t.name for t in engine.tables()}
    assert engine.scan() == sorted(model.items())
    engine.close()


def test_merges_in_a_worker_process_give_the_same_state(tmp_path: Path) -> None:
    """compaction_process_min_bytes=0: every merge and flush runs in a worker process (a
    flush that finds both workers merging runs in-thread)."""
    options = replace(SMALL, compaction_process_min_bytes=0)
    with Engine.open(tmp_path, options) as engine:
        model = fill(engine, 3000)
        engine.wait_idle(timeout_s=60)
        stats = engine.stats()
        assert stats.compactions > 0 and 0 < stats.flushes_in_worker <= stats.flushes, stats
        engine.compact()
        assert engine.stats().runs == 1
        assert engine.scan() == sorted(model.items())
        assert table_files(tmp_path) == {t.name for t in engine.tables()}
        assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    with Engine.open(tmp_path, options) as engine:
        assert engine.scan() == sorted(model.items())


def test_a_flush_runs_in_thread_when_every_worker_is_busy(tmp_path: Path) -> None:
    """A flush must not queue behind long merges: with every worker lent out, it is written
    here (and the data is the same)."""
    options = replace(SMALL, compaction_process_min_bytes=0, background_compaction=False)
    with contextlib.ExitStack() as held:
        for _ in range(LSM_COMPACTION_WORKERS_MAX):
            held.enter_context(SHARED_WORKERS.borrowed())
        with Engine.open(tmp_path, options) as engine:
            model = fill(engine, 1000)
            engine.flush()
            stats = engine.stats()
            assert stats.flushes > 0 and stats.flushes_in_worker == 0, stats
            assert engine.scan() == sorted(model.items())
    with Engine.open(tmp_path, options) as engine:
        assert engine.scan() == sorted(model.items())
        engine.put(b"one more", b"x", engine.applied_index + 1)
        engine.flush()
        assert engine.stats().flushes_in_worker == 1  # the workers are free again


def test_a_flush_whose_worker_dies_is_written_in_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def lost(*_args: object, **_kwargs: object) -> list[Path]:
        raise WorkerLostError("compaction worker 4242 exited mid-job")

    monkeypatch.setattr(CompactionProcess, "run", lost)
    options = replace(SMALL, compaction_process_min_bytes=0, background_compaction=False)
    with Engine.open(tmp_path, options) as engine:
        model = fill(engine, 1000)
        engine.flush()
        stats = engine.stats()
        assert stats.flushes > 0 and stats.flushes_in_worker == 0 and not stats.background_error
        assert engine.scan() == sorted(model.items())
    monkeypatch.undo()
    with Engine.open(tmp_path, options) as engine:
        assert engine.scan() == sorted(model.items())


def test_worker_temporaries_left_by_a_crash_are_deleted_on_open(tmp_path: Path) -> None:
    with Engine.open(tmp_path, SMALL) as engine:
        model = fill(engine, 500)
    (tmp_path / "000777.sst.4242.tmp").write_bytes(b"half a merge")
    with Engine.open(tmp_path, SMALL) as engine:
        assert not (tmp_path / "000777.sst.4242.tmp").exists()
        assert engine.scan() == sorted(model.items())


def test_readers_see_the_same_data_while_compaction_replaces_tables(tmp_path: Path) -> None:
    options = EngineOptions(
        memtable_size_bytes=2048,
        block_size_bytes=256,
        table_size_bytes=4096,
        background_compaction=False,
    )
    engine = Engine.open(tmp_path, options)
    model = fill(engine, 3000)
    engine.flush()
    expected = sorted(model.items())
    failures: list[BaseException] = []
    compactor = threading.Thread(target=lambda: _run_into(failures, engine.compact))
    compactor.start()
    try:
        rounds = 0
        while compactor.is_alive() or rounds < 3:
            assert engine.scan() == expected, f"seed {SEED} round {rounds}"
            for i in range(0, 1500, 7):
                assert engine.get(key(i)) == model.get(key(i)), f"seed {SEED} round {rounds}"
            rounds += 1
    finally:
        compactor.join()
    assert failures == []
    assert engine.stats().runs == 1
    engine.close()


def _run_into(failures: list[BaseException], call: object) -> None:
    assert callable(call)
    try:
        call()
    except BaseException as exc:
        failures.append(exc)


def test_snapshot_then_restore_gives_the_state_at_the_snapshot_index(tmp_path: Path) -> None:
    source = Engine.open(tmp_path / "source", SMALL)
    model = fill(source, 2000)
    expected_checksum = source.checksum()
    info = source.snapshot(tmp_path / "snap")
    assert info.applied_index == source.applied_index == 2000
    assert set(info.files) == {p.name for p in (tmp_path / "snap").glob("*.sst")}
    source.put(b"after-snapshot", b"x", 2001)
    source.compact()  # unlinks the tables the snapshot shares by hard link
    restored = Engine.restore(tmp_path / "snap", tmp_path / "restored", SMALL)
    assert restored.applied_index == restored.durable_applied_index == 2000
    assert restored.scan() == sorted(model.items())
    assert restored.get(b"after-snapshot") is None
    assert restored.checksum() == expected_checksum
    restored.close()
    source.close()
    # The snapshot directory is itself an engine directory.
    with Engine.open(tmp_path / "snap", SMALL) as opened:
        assert opened.scan() == sorted(model.items())


def test_install_snapshot_replaces_tables_and_memtable(tmp_path: Path) -> None:
    source = Engine.open(tmp_path / "source", SMALL)
    model = fill(source, 1500, seed=1)
    source.snapshot(tmp_path / "snap")
    source.close()
    target = Engine.open(tmp_path / "target", SMALL)
    fill(target, 3000, seed=2)
    target.put(b"unflushed", b"memtable only", 5000)
    info = target.install_snapshot(tmp_path / "snap")
    assert info.applied_index == target.applied_index == 1500
    assert target.scan() == sorted(model.items())
    target.put(b"new", b"write", 1501)  # the host continues from the snapshot's index
    target.close()
    reopened = Engine.open(tmp_path / "target", SMALL)
    assert reopened.scan() == sorted({**model, b"new": b"write"}.items())
    # A merge the reopened engine starts at once writes tables that are not live yet.
    reopened.wait_idle(timeout_s=30)
    assert table_files(tmp_path / "target") == {t.name for t in reopened.tables()}
    reopened.close()


def test_damaged_snapshot_is_refused_and_changes_nothing(tmp_path: Path) -> None:
    source = Engine.open(tmp_path / "source", SMALL)
    fill(source, 1500, seed=1)
    info = source.snapshot(tmp_path / "snap")
    source.close()
    victim = tmp_path / "snap" / info.files[0]
    data = bytearray(victim.read_bytes())
    victim.unlink()  # break the hard link: damage the snapshot's copy only
    data[10] ^= 0x01
    victim.write_bytes(bytes(data))
    target = Engine.open(tmp_path / "target", SMALL)
    model = fill(target, 500, seed=3)
    target.wait_idle()  # no background compaction may change the files under the check
    before = table_files(tmp_path / "target")
    with pytest.raises(CorruptionError, match="CRC mismatch"):
        target.install_snapshot(tmp_path / "snap")
    assert target.scan() == sorted(model.items())
    assert table_files(tmp_path / "target") == before
    target.close()


def test_snapshot_into_a_non_empty_directory_is_refused(engine: Engine, tmp_path: Path) -> None:
    (tmp_path / "snap").mkdir()
    (tmp_path / "snap" / "x").write_text("occupied")
    with pytest.raises(FileExistsError, match="not empty"):
        engine.snapshot(tmp_path / "snap")
    engine.close()


def test_checksum_depends_on_logical_state_not_on_table_layout(tmp_path: Path) -> None:
    first = Engine.open(tmp_path / "first", SMALL)
    second = Engine.open(
        tmp_path / "second", EngineOptions(memtable_size_bytes=64 * 1024, flush_on_close=False)
    )
    fill(first, 2000)
    fill(second, 2000)
    first.compact()
    assert first.stats().runs != second.stats().runs or first.stats().runs == 1
    assert first.checksum() == second.checksum()
    second.put(key(0), b"different", 2001)
    first.apply([], 2001)
    assert first.checksum().digest != second.checksum().digest
    first.close()
    second.close()


def test_tables_and_stats_describe_what_is_on_disk(engine: Engine) -> None:
    fill(engine, 1000)
    engine.flush()
    tables = engine.tables()
    stats = engine.stats()
    assert stats.tables == len(tables) > 0
    assert stats.table_bytes == sum((engine.path / t.name).stat().st_size for t in tables)
    assert stats.applied_index == stats.durable_applied_index == 1000
    assert stats.memtable_entries == 0 and stats.immutable_memtables == 0
    for table in tables:
        assert table.smallest <= table.largest
        assert table.key_count >= table.tombstone_count
    engine.close()


def test_descriptors_are_released_on_close(tmp_path: Path) -> None:
    def open_descriptors() -> int:
        return len(os.listdir("/proc/self/fd"))

    before = open_descriptors()
    engine = Engine.open(tmp_path, SMALL)
    fill(engine, 2000)
    engine.compact()
    assert open_descriptors() > before
    engine.close()
    assert open_descriptors() == before


def test_failed_flush_stops_writes_but_not_reads(tmp_path: Path) -> None:
    engine = Engine.open(tmp_path / "db", EngineOptions(memtable_size_bytes=64 * 1024))
    engine.put(b"a", b"1", 1)
    shutil.rmtree(tmp_path / "db")  # the flush cannot create its table file
    with pytest.raises(BackgroundError, match="refuses writes after a background failure"):
        engine.flush()
    with pytest.raises(BackgroundError):
        engine.put(b"b", b"2", 2)
    with pytest.raises(BackgroundError):
        engine.wait_idle()
    assert engine.get(b"a") == b"1"
    assert engine.stats().background_error is not None
    engine.close()
