"""The standalone Store: WAL replay above the flushed index, truncation, and input checks."""

from __future__ import annotations

from pathlib import Path

import pytest

from minikv_core.storage.engine import EngineOptions
from minikv_core.storage.store import Store, StoreClosedError

SMALL = EngineOptions(memtable_size_bytes=64 * 1024)


def test_writes_survive_reopen_without_flush(tmp_path: Path) -> None:
    store = Store.open(tmp_path, engine_options=EngineOptions(flush_on_close=False))
    store.write_batch([(b"a", b"1"), (b"b", b"2")])
    store.write_batch([(b"a", None), (b"c", b"3")])
    # Simulate a crash: drop the engine's memtable by closing the WAL and engine without a
    # flush of the Store's own (flush_on_close=False keeps the memtable out of tables).
    store.wal.close()
    store.engine.close()
    reopened = Store.open(tmp_path)
    try:
        assert reopened.get(b"a") is None
        assert reopened.get(b"b") == b"2"
        assert reopened.get(b"c") == b"3"
        assert reopened.sequence == 2
        assert reopened.engine.applied_index == 2
    finally:
        reopened.close()


def test_replay_skips_batches_already_in_flushed_tables(tmp_path: Path) -> None:
    store = Store.open(tmp_path, engine_options=EngineOptions(flush_on_close=False))
    store.put(b"k", b"old")
    store.engine.flush()  # tables cover sequence 1; the WAL still holds its record
    store.put(b"k", b"new")
    store.wal.close()
    store.engine.close()
    reopened = Store.open(tmp_path)
    try:
        assert reopened.get(b"k") == b"new"
        assert reopened.sequence == 2
    finally:
        reopened.close()


def test_flushed_segments_are_truncated(tmp_path: Path) -> None:
    store = Store.open(tmp_path, segment_size_bytes=64 * 1024, engine_options=SMALL)
    try:
        for i in range(2_000):
            store.put(b"key-%05d" % i, b"v" * 200)
        store.flush()
        segments = store.wal.segments()
        # 2,000 records of ~220 bytes fill several 64 KiB segments; after a flush covering
        # them all, only the active segment may remain.
        assert len(segments) == 1, [s.name for s in segments]
        assert all(store.get(b"key-%05d" % i) == b"v" * 200 for i in range(0, 2_000, 97))
    finally:
        store.close()


@pytest.mark.parametrize(
    ("writes", "message"),
    [
        ([(b"", b"v")], "key"),
        ([(b"k" * 100_000, b"v")], "key"),
        ([("text", b"v")], "key"),
        ([(b"k", "not bytes")], "value"),
    ],
)
def test_invalid_batch_is_refused_and_never_logged(
    tmp_path: Path, writes: list[tuple[object, object]], message: str
) -> None:
    store = Store.open(tmp_path)
    try:
        before = store.wal.stats.records
        with pytest.raises((ValueError, TypeError)) as info:
            store.write_batch(writes)  # type: ignore[arg-type]
        assert message in str(info.value).lower()
        assert store.wal.stats.records == before
        assert store.sequence == 0
        store.put(b"ok", b"1")  # the store keeps serving
        assert store.get(b"ok") == b"1"
    finally:
        store.close()
    Store.open(tmp_path).close()  # and reopens: nothing invalid reached the WAL


def test_use_after_close_is_a_clear_error(tmp_path: Path) -> None:
    store = Store.open(tmp_path)
    store.close()
    with pytest.raises(StoreClosedError, match="closed"):
        store.get(b"a")
    with pytest.raises(StoreClosedError, match="closed"):
        store.put(b"a", b"1")
