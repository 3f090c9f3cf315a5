"""Memtable and input validation: typed errors, size accounting, bounded range copies."""

from __future__ import annotations

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
