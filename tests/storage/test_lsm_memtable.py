"""Memtable and input validation: typed errors, size accounting, bounded range copies."""

from __future__ import annotations

import random
import sys
import threading

import pytest

from minikv_core.storage.errors import StorageError
from minikv_core.storage.lsm_limits import (
    LSM_KEY_SIZE_BYTES_MAX,
    LSM_MEMTABLE_ENTRY_OVERHEAD_BYTES,
    LSM_VALUE_SIZE_BYTES_MAX,
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
from minikv_core.storage.sstable import ABSENT


def test_key_at_the_limit_is_accepted_and_one_byte_more_is_refused() -> None:
    assert check_key(b"k" * LSM_KEY_SIZE_BYTES_MAX) == b"k" * LSM_KEY_SIZE_BYTES_MAX
    with pytest.raises(KeyTooLargeError, match=f"{LSM_KEY_SIZE_BYTES_MAX + 1} bytes"):
        check_key(b"k" * (LSM_KEY_SIZE_BYTES_MAX + 1))


@pytest.mark.parametrize(
    ("key", "message"),
    [
        (b"", "must not be empty"),
        ("text", "must be bytes, got str"),
        (bytearray(b"k"), "must be bytes, got bytearray"),
        (memoryview(b"k"), "must be bytes, got memoryview"),
        (None, "must be bytes, got NoneType"),
        (7, "must be bytes, got int"),
    ],
)
def test_bad_keys_raise_invalid_key_error(key: object, message: str) -> None:
    with pytest.raises(InvalidKeyError, match=message):
        check_key(key)


def test_bad_values_raise_invalid_value_error() -> None:
    assert check_value(b"", b"k") == b""
    with pytest.raises(InvalidValueError, match="must be bytes, got str"):
        check_value("v", b"k")
    with pytest.raises(ValueTooLargeError, match="more than the limit"):
        check_value(b"v" * (LSM_VALUE_SIZE_BYTES_MAX + 1), b"k")


def test_input_errors_are_both_value_errors_and_storage_errors() -> None:
    for error in (InvalidKeyError, KeyTooLargeError, InvalidValueError, ValueTooLargeError):
        assert issubclass(error, ValueError) and issubclass(error, StorageError)


def test_size_accounts_for_overwrites_and_tombstones() -> None:
    memtable = Memtable(applied_index=0)
    memtable.set(b"a", b"12345")
    memtable.set(b"a", b"1")
    memtable.set(b"b", None)
    overhead = LSM_MEMTABLE_ENTRY_OVERHEAD_BYTES
    assert memtable.size_bytes == (1 + 1 + overhead) + (1 + overhead)
    assert memtable.tombstone_count == 1
    memtable.set(b"b", b"back")
    assert memtable.tombstone_count == 0
    assert memtable.get(b"a") == b"1"
    assert memtable.get(b"zz") is ABSENT


def test_copy_range_stops_after_limit_live_entries_keeping_tombstones_between() -> None:
    memtable = Memtable(applied_index=0)
    for key, value in [(b"a", b"1"), (b"b", None), (b"c", b"3"), (b"d", b"4"), (b"e", b"5")]:
        memtable.set(key, value)
    assert memtable.copy_range(None, None, False, 2) == [(b"a", b"1"), (b"b", None), (b"c", b"3")]
    assert memtable.copy_range(None, None, True, 2) == [(b"e", b"5"), (b"d", b"4")]
    assert memtable.copy_range(b"b", b"d", False, None) == [(b"b", None), (b"c", b"3")]
    assert memtable.copy_range(None, None, False, 0) == []
    assert list(memtable.iter_range(b"c", None, reverse=True)) == [
        (b"e", b"5"),
        (b"d", b"4"),
        (b"c", b"3"),
    ]


def test_set_many_accounts_exactly_like_one_set_per_pair() -> None:
    pairs: list[tuple[bytes, bytes | None]] = [
        (b"a", b"1"),
        (b"b", None),
        (b"a", b"longer value"),
        (b"b", b"back"),
        (b"c", None),
        (b"a", None),
    ]
    one_by_one, at_once = Memtable(0), Memtable(0)
    for key, value in pairs:
        one_by_one.set(key, value)
    at_once.set_many(pairs)
    assert (
        dict(at_once.entries) == dict(one_by_one.entries) == {b"a": None, b"b": b"back", b"c": None}
    )
    assert at_once.size_bytes == one_by_one.size_bytes
    assert at_once.tombstone_count == one_by_one.tombstone_count == 2


def _model_range(
    model: dict[bytes, bytes | None], start: bytes | None, end: bytes | None, reverse: bool
) -> list[tuple[bytes, bytes | None]]:
    keys = sorted(k for k in model if (start is None or k >= start) and (end is None or k < end))
    return [(k, model[k]) for k in (reversed(keys) if reverse else keys)]


@pytest.mark.parametrize("batch_keys", [1, 64, 3_000])
def test_reads_in_order_stay_exact_while_writes_arrive_unordered(batch_keys: int) -> None:
    """Writes land in the dict only; every ordered read merges them first. Batches of 1 and
    64 against a growing order take the insert-per-key path, 3,000 the bulk rebuild."""
    rng = random.Random(20261126 + batch_keys)
    memtable = Memtable(0)
    model: dict[bytes, bytes | None] = {}
    for round_number in range(40):
        batch: list[tuple[bytes, bytes | None]] = []
        for _ in range(batch_keys):
            key = b"k%05d" % rng.randrange(20_000)
            batch.append((key, None if rng.random() < 0.2 else b"v%d" % round_number))
        memtable.set_many(batch)
        model.update(batch)
        assert all(memtable.get(key) == model[key] for key, _ in batch)
        start = b"k%05d" % rng.randrange(20_000) if rng.random() < 0.7 else None
        end = b"k%05d" % rng.randrange(20_000) if rng.random() < 0.7 else None
        reverse = rng.random() < 0.5
        expected = _model_range(model, start, end, reverse)
        assert memtable.copy_range(start, end, reverse, None) == expected
        assert list(memtable.iter_range(start, end, reverse)) == expected
        chunks = list(memtable.iter_chunks(start, end, reverse))
        flattened = [
            pair
            for keys, values in (chunks[::-1] if reverse else chunks)
            for pair in zip(keys, values, strict=True)
        ]
        assert flattened == sorted(expected)
    assert len(memtable) == len(model)
    assert memtable.tombstone_count == sum(value is None for value in model.values())
    assert memtable.size_bytes == sum(
        len(key) + len(value or b"") + LSM_MEMTABLE_ENTRY_OVERHEAD_BYTES
        for key, value in model.items()
    )


def _ordered_keys_read_at_once(memtable: Memtable, readers: int) -> list[list[bytes]]:
    barrier = threading.Barrier(readers)
    results: list[list[bytes]] = []

    def first_read() -> None:
        barrier.wait(timeout=10)
        results.append([key for key, _ in memtable.iter_range(None, None)])

    threads = [threading.Thread(target=first_read) for _ in range(readers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert not any(thread.is_alive() for thread in threads)
    return results


@pytest.mark.parametrize(
    "ordered_keys",
    [5_000, 55_000],
    ids=["bulk-rebuild", "insert-per-key"],
)
def test_concurrent_first_ordered_reads_of_a_rotated_memtable_each_see_every_key_once(
    ordered_keys: int,
) -> None:
    """A rotated memtable's flush and scans may all be the first to need its order: the
    pending keys must be merged exactly once (a second merge would duplicate them)."""
    rng = random.Random(20261126)
    keys = [b"key-%08d" % i for i in range(60_000)]
    rng.shuffle(keys)
    previous_interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as possible: provoke the race
    try:
        for attempt in range(5):
            memtable = Memtable(0)
            memtable.set_many([(key, b"v") for key in keys[:ordered_keys]])
            memtable.copy_range(None, None, False, 1)  # an order exists: the next merge adds
            memtable.set_many([(key, b"v") for key in keys[ordered_keys:]])
            results = _ordered_keys_read_at_once(memtable, readers=4)
            assert len(results) == 4, f"attempt {attempt}"
            for result in results:
                assert result == sorted(keys), f"attempt {attempt}: {len(result)} keys"
    finally:
        sys.setswitchinterval(previous_interval)
