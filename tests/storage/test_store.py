"""The standalone Store: WAL replay above the flushed index, truncation, and input checks."""

from __future__ import annotations

from pathlib import Path

import pytest

from minikv_core.storage.engine import EngineOptions
from minikv_core.storage.lsm_limits import LSM_KEY_SIZE_BYTES_MAX
from minikv_core.storage.memtable import InvalidValueError, KeyTooLargeError
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


def test_a_bad_pair_after_good_ones_refuses_the_whole_batch(tmp_path: Path) -> None:
    """Keys are checked while the batch is encoded: the good pairs before a bad one must not
    reach the WAL or the memtable either."""
    store = Store.open(tmp_path)
    try:
        good = [(b"k%02d" % i, b"v") for i in range(63)]
        with pytest.raises(InvalidValueError, match="must be bytes, got str"):
            store.write_batch([*good, (b"last", "text")])  # type: ignore[list-item]
        with pytest.raises(KeyTooLargeError):
            store.write_batch([*good, (b"k" * (LSM_KEY_SIZE_BYTES_MAX + 1), None)])
        assert (store.sequence, store.wal.stats.records) == (0, 0)
        assert store.get(b"k00") is None
        assert store.scan() == []
    finally:
        store.close()


class _Key(bytes):
    pass


def test_bytes_subclass_keys_and_values_are_accepted_and_read_back_as_bytes(
    tmp_path: Path,
) -> None:
    store = Store.open(tmp_path, engine_options=EngineOptions(flush_on_close=False))
    store.write_batch([(_Key(b"sub"), _Key(b"value")), (b"plain", b"1")])
    store.wal.close()
    store.engine.close()
    reopened = Store.open(tmp_path)  # replayed from the WAL record
    try:
        assert reopened.scan() == [(b"plain", b"1"), (b"sub", b"value")]
    finally:
        reopened.close()


def test_use_after_close_is_a_clear_error(tmp_path: Path) -> None:
    store = Store.open(tmp_path)
    store.close()
    with pytest.raises(StoreClosedError, match="closed"):
        store.get(b"a")
    with pytest.raises(StoreClosedError, match="closed"):
        store.put(b"a", b"1")
