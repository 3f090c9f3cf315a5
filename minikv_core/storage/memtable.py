"""The memtable (recent writes, tombstones included, read in key order) and input validation.

Inputs enter the engine here, so the typed errors for bad keys and values live here too. They
subclass both `StorageError` (the storage layer's base, as the WAL's `WalRecordTooLargeError`)
and `ValueError` (they are bad arguments: an HTTP layer maps them to 400, never to 500):

    InvalidKeyError        key is not `bytes`, or is empty
      KeyTooLargeError     key longer than LSM_KEY_SIZE_BYTES_MAX
    InvalidValueError      value is not `bytes`
      ValueTooLargeError   value longer than LSM_VALUE_SIZE_BYTES_MAX

Only `bytes` is accepted, not `bytearray` or `memoryview`: the memtable keeps a reference to
what it is given, and a mutable buffer changed by the caller later would change stored data.

The memtable is a dict (key -> value, a tombstone is a key mapped to `None`) plus a key order
kept lazily. A point get only needs the dict: one C-speed lookup. Writes only touch the dict
and note each *new* key in an unordered list; the order (a `SortedList` of keys) absorbs those
keys only when something needs key order: a scan, a flush, a checksum. Why: keeping the order
on every write (a `SortedDict`) cost 0.6-1.7 us per key (ascending / random keys), about half
of the CPU of a durable 64-key batch, while most memtables are written many times between
scans and ordered once, by their flush, where C sorts of the pending keys cost far less than
n Python inserts (a 64-key batch into the dict: 0.2-0.4 us per key). When few new keys meet a
large order they are inserted one by one, as a `SortedDict` would have, so writes interleaved
with scans cost no more than before.

Keys are never removed (a delete is a tombstone), so the order only grows and a key is noted as
new exactly once. Writes happen under the engine's write lock; lock-free gets are safe because
a dict lookup is atomic under the GIL. Sorting the pending keys takes the memtable's own lock:
once the engine rotates a memtable out it is never written again, but its flush and any number
of scans may ask for its order at once. The active memtable is read in order only under the
engine's write lock (`copy_range`), so no write races a sort.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from itertools import islice
from typing import Literal

from sortedcontainers import SortedList

from minikv_core.storage.errors import StorageError
from minikv_core.storage.lsm_limits import (
    LSM_KEY_SIZE_BYTES_MAX,
    LSM_KEY_SIZE_BYTES_MIN,
    LSM_MEMTABLE_ENTRY_OVERHEAD_BYTES,
    LSM_VALUE_SIZE_BYTES_MAX,
)
from minikv_core.storage.speedups import memtable_set_many as _c_set_many
from minikv_core.storage.sstable import ABSENT, Absent

# Entries per chunk of `iter_chunks`: big enough to amortize a merge round, small enough that
# a scan with a small limit reads little more than it returns.
_CHUNK_KEYS = 256

# New keys merged into the order per C call. A flush is the first to need the order of a full
# memtable, and one sort of all its keys would hold the GIL (stalling gets and the node's event
# loop) for 4-9 ms at the default 4 MiB, 130 ms at 64 MiB; chunks of 8,192 keep every call
# under ~3 ms for about the same total work at the default size. Past 4 chunks' worth of
# ordered keys, SortedList inserts key by key (interruptible Python, as the SortedDict did).
_ORDER_CHUNK_KEYS = 8_192


class InvalidKeyError(StorageError, ValueError):
    """A key is not `bytes` or is empty (see the module docstring for the hierarchy)."""


class KeyTooLargeError(InvalidKeyError):
    """A key is longer than LSM_KEY_SIZE_BYTES_MAX."""


class InvalidValueError(StorageError, ValueError):
    """A value is not `bytes`."""


class ValueTooLargeError(InvalidValueError):
    """A value is longer than LSM_VALUE_SIZE_BYTES_MAX."""


def _preview(data: bytes) -> str:
    return repr(data[:32]) + ("..." if len(data) > 32 else "")


def check_key(key: object, what: str = "key") -> bytes:
    """Return `key` if it is a valid key, else raise the precise `InvalidKeyError`."""
    if type(key) is not bytes and not isinstance(key, bytes):
        raise InvalidKeyError(f"{what} must be bytes, got {type(key).__name__}")
    if len(key) < LSM_KEY_SIZE_BYTES_MIN:
        raise InvalidKeyError(f"{what} must not be empty")
    if len(key) > LSM_KEY_SIZE_BYTES_MAX:
        raise KeyTooLargeError(
            f"{what} is {len(key)} bytes, more than the limit of {LSM_KEY_SIZE_BYTES_MAX} "
            f"bytes: {_preview(key)}"
        )
    return key


def check_value(value: object, key: bytes) -> bytes:
    """Return `value` if it is a valid value for `key`, else raise `InvalidValueError`."""
    if type(value) is not bytes and not isinstance(value, bytes):
        raise InvalidValueError(
            f"value for key {_preview(key)} must be bytes, got {type(value).__name__}"
        )
    if len(value) > LSM_VALUE_SIZE_BYTES_MAX:
        raise ValueTooLargeError(
            f"value for key {_preview(key)} is {len(value)} bytes, more than the limit of "
            f"{LSM_VALUE_SIZE_BYTES_MAX} bytes"
        )
    return value


class Memtable:
    """Recent writes; `applied_index` is the last Raft index applied into it."""

    __slots__ = (
        "_order",
        "_order_lock",
        "_unordered",
        "applied_index",
        "entries",
        "size_bytes",
        "tombstone_count",
    )

    def __init__(self, applied_index: int) -> None:
        assert applied_index >= 0
        # key -> value, or None for a tombstone. Public for the engine's lock-free get path,
        # which calls `entries.get` directly (one C call). Never iterated for order.
        self.entries: dict[bytes, bytes | None] = {}
        self.size_bytes = 0
        self.tombstone_count = 0
        self.applied_index = applied_index
        # Every key of `entries` is in exactly one of these two.
        self._order: SortedList = SortedList()
        self._unordered: list[bytes] = []
        self._order_lock = threading.Lock()

    def __len__(self) -> int:
        return len(self.entries)

    def _charge(self, key: bytes, value: bytes | None) -> int:
        return len(key) + (0 if value is None else len(value)) + LSM_MEMTABLE_ENTRY_OVERHEAD_BYTES

    def set(self, key: bytes, value: bytes | None) -> None:
        """Put (value) or delete (None); the caller validated both and holds the write lock."""
        entries = self.entries
        previous = entries.get(key, ABSENT)
        if previous is ABSENT:
            self._unordered.append(key)
        else:
            self.size_bytes -= self._charge(key, previous)
            if previous is None:
                self.tombstone_count -= 1
        entries[key] = value
        self.size_bytes += self._charge(key, value)
        if value is None:
            self.tombstone_count += 1

    def set_many(self, pairs: Sequence[tuple[bytes, bytes | None]]) -> None:
        """`set` for each pair, in order (a later pair for the same key wins): this loop runs
        once per key of every applied batch, in C when it is built (`speedups`)."""
        if _c_set_many is not None:
            counts = _c_set_many(
                self.entries,
                self._unordered,
                pairs,
                LSM_MEMTABLE_ENTRY_OVERHEAD_BYTES,
                self.size_bytes,
                self.tombstone_count,
            )
            if counts is not None:
                self.size_bytes, self.tombstone_count = counts
                return
        self.set_many_python(pairs)

    def set_many_python(self, pairs: Sequence[tuple[bytes, bytes | None]]) -> None:
        """`set_many` in Python, with the per-call lookups hoisted: its meaning, and what
        runs when the C loops are not built."""
        entries = self.entries
        get = entries.get
        note_new = self._unordered.append
        overhead = LSM_MEMTABLE_ENTRY_OVERHEAD_BYTES
        size = self.size_bytes
        tombstones = self.tombstone_count
        for key, value in pairs:
            previous = get(key, ABSENT)
            if previous is ABSENT:
                note_new(key)
            elif previous is None:
                size -= len(key) + overhead
                tombstones -= 1
            else:
                size -= len(key) + len(previous) + overhead
            entries[key] = value
            if value is None:
                size += len(key) + overhead
                tombstones += 1
            else:
                size += len(key) + len(value) + overhead
        self.size_bytes = size
        self.tombstone_count = tombstones

    def get(self, key: bytes) -> bytes | Literal[Absent.ABSENT] | None:
        return self.entries.get(key, ABSENT)

    def _ordered_keys(self) -> SortedList:
        """Every key, in order: the pending new keys merged in first (see the module doc)."""
        if self._unordered:
            with self._order_lock:
                unordered = self._unordered
                if unordered:
                    # SortedList.update: a C sort of the keys given, then a bulk rebuild (a C
                    # merge) when they are a quarter or more of the total, else an insert per
                    # key. In chunks, so that no single C call holds the GIL for long.
                    order = self._order
                    for start in range(0, len(unordered), _ORDER_CHUNK_KEYS):
                        order.update(unordered[start : start + _ORDER_CHUNK_KEYS])
                    # Emptied only once the order holds them: a reader that sees the list
                    # empty without the lock is then sure the order is complete.
                    self._unordered = []
        return self._order

    def iter_range(
        self, start: bytes | None, end: bytes | None, reverse: bool = False
    ) -> Iterator[tuple[bytes, bytes | None]]:
        """Entries with start <= key < end; only for a memtable no one writes any more."""
        entries = self.entries
        for key in self._ordered_keys().irange(
            start, end, inclusive=(True, False), reverse=reverse
        ):
            yield key, entries[key]

    def iter_chunks(
        self,
        start: bytes | None,
        end: bytes | None,
        reverse: bool = False,
        chunk_keys: int = _CHUNK_KEYS,
    ) -> Iterator[tuple[list[bytes], list[bytes | None]]]:
        """`iter_range` in (keys, values) chunks of up to `chunk_keys`, ascending within a
        chunk, chunks in scan order (compaction.merge_chunks, and a flush's write_run); only
        for a memtable no one writes any more."""
        entries = self.entries
        keys_in_range = self._ordered_keys().irange(
            start, end, inclusive=(True, False), reverse=reverse
        )
        while True:
            keys = list(islice(keys_in_range, chunk_keys))
            if not keys:
                return
            if reverse:
                keys.reverse()
            yield keys, list(map(entries.__getitem__, keys))

    def copy_range(
        self, start: bytes | None, end: bytes | None, reverse: bool, live_limit: int | None
    ) -> list[tuple[bytes, bytes | None]]:
        """Entries with start <= key < end, stopping after `live_limit` non-tombstones.

        Used on the active memtable under the write lock. Why stopping there is enough for a
        scan with that limit: the memtable is the newest source, so each of its live entries is
        in the result; once `live_limit` of them are taken, no key beyond the last one can
        make it into the first `live_limit` results.
        """
        assert live_limit is None or live_limit >= 0
        items: list[tuple[bytes, bytes | None]] = []
        if live_limit == 0 or not self.entries:
            return items
        entries = self.entries
        live = 0
        for key in self._ordered_keys().irange(
            start, end, inclusive=(True, False), reverse=reverse
        ):
            value = entries[key]
            items.append((key, value))
            if value is not None:
                live += 1
                if live == live_limit:
                    break
        return items
