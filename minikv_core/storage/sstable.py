"""SSTable writer and reader (format: sstable_format.py).

The writer streams sorted entries into blocks, then appends the bloom, index and meta blocks
and the footer, and fdatasyncs the file before `finish()` returns: a table that `finish()`
returned for is durable, and only then may a manifest name it.

The reader keeps only the footer, the meta block, the block index and the bloom filter in
memory (for 1M keys of 17 B with 100 B values: ~8 MiB of index, 1.5 MiB of filter; an engine
holding them reopens in ~10 ms at ~30 MiB RSS), and reads data blocks on demand (from the OS
page cache, once warm), with `os.pread` or, for an engine's tables, by copying them out of a
read-only memory map (`_map_file`): reopening an engine never reads its data. Every block read
from disk has its CRC-32C checked before it is decoded, searched or cached; a mismatch raises
`CorruptionError` naming the file and the block's offset, so a read returns the stored value or
fails, never wrong data. Decoded blocks may be kept in a `BlockCache` (block_cache.py); a point
get that the cache does not want searches the block's bytes without decoding it
(sstable_format.search_data_block).

File handles: a reader's descriptor is closed when the reader is garbage (a `weakref.finalize`,
run by CPython as soon as the last reference goes) or by `close()`. The engine unlinks an
obsolete table right after the manifest that drops it is durable; readers still holding the old
version keep reading through their open descriptor (POSIX keeps an unlinked inode alive while
it is open), so no reader ever waits for compaction and no reader sees a file vanish.
"""

from __future__ import annotations

import itertools
import mmap
import operator
import os
import weakref
from array import array
from bisect import bisect_left
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Final, Literal, NoReturn, cast

import crc32c

from minikv_core.storage.block_cache import BlockCache, new_table_base
from minikv_core.storage.bloom import (
    build_words,
    extend_hashes,
    word_count_for,
    words_from_bytes,
    words_to_bytes,
)
from minikv_core.storage.errors import CorruptionError
from minikv_core.storage.lsm_limits import (
    LSM_BLOCK_SIZE_BYTES_MIN,
    LSM_BLOCK_SIZE_BYTES_TARGET,
    LSM_BLOOM_BITS_PER_KEY,
    LSM_BLOOM_PROBES,
)
from minikv_core.storage.sstable_format import (
    ABSENT,
    CRC_RESIDUE,
    CRC_TRAILER,
    CRC_TRAILER_SIZE_BYTES,
    FOOTER_SIZE_BYTES,
    KIND_TOMBSTONE,
    NEEDS_DECODE,
    VALUE_SPAN,
    Absent,
    BlockIndex,
    DecodedBlock,
    Footer,
    FormatError,
    TableProperties,
    block_values,
    decode_bloom_block,
    decode_data_block,
    decode_footer,
    decode_index_block,
    decode_meta_block,
    encode_bloom_block,
    encode_data_block,
    encode_footer,
    encode_index_block,
    encode_meta_block,
    search_data_block,
    value_offsets_position,
)

__all__ = ["ABSENT", "Absent", "BlockCheck", "Lookup", "TableReader", "TableWriter", "WrittenTable"]

_WRITE_BUFFER_BYTES: Final = 1024 * 1024
# Entries per chunk of `iter_chunks` (a merge round of a scan).
_CHUNK_ENTRIES: Final = 128
# Per-entry bytes a block spends besides key and value: a value offset, maybe a key offset
# and a kind byte. Used only to decide when a block is full.
_ENTRY_FRAMING_BYTES: Final = 9


Lookup = bytes | None | Literal[Absent.ABSENT]


def _fdatasync(fd: int) -> None:
    # fdatasync also persists the file size, which is all a reader needs; macOS lacks it.
    sync = getattr(os, "fdatasync", os.fsync)
    sync(fd)


@dataclass(frozen=True, slots=True)
class WrittenTable:
    path: Path
    size_bytes: int
    properties: TableProperties
    block_count: int


class TableWriter:
    """Streams strictly increasing keys into a new table file at `path` (must not exist)."""

    def __init__(
        self,
        path: Path,
        block_size_bytes: int = LSM_BLOCK_SIZE_BYTES_TARGET,
        bloom_bits_per_key: int = LSM_BLOOM_BITS_PER_KEY,
    ) -> None:
        assert block_size_bytes >= LSM_BLOCK_SIZE_BYTES_MIN
        assert bloom_bits_per_key >= LSM_BLOOM_PROBES
        self.path = path
        self._block_size_bytes = block_size_bytes
        self._bloom_bits_per_key = bloom_bits_per_key
        # "xb": a table file is written once; an existing file of that name is a bug.
        self._file: BinaryIO | None = open(path, "xb", buffering=_WRITE_BUFFER_BYTES)  # noqa: SIM115
        self._offset = 0
        self._block_keys: list[bytes] = []
        self._block_values: list[bytes | None] = []
        self._block_bytes = 0
        self._index_keys: list[bytes] = []
        self._index_offsets: list[int] = []
        self._index_sizes: list[int] = []
        self._word_hashes = array("I")
        self._bit_hashes = array("I")
        self._entry_count = 0
        self._tombstone_count = 0
        self._smallest: bytes | None = None
        self._last_key: bytes | None = None

    @property
    def entry_count(self) -> int:
        return self._entry_count

    @property
    def size_bytes_estimate(self) -> int:
        """Bytes written so far plus the open block: for splitting compaction output."""
        return self._offset + self._block_bytes

    def add(self, key: bytes, value: bytes | None) -> None:
        """Append one entry; `value is None` writes a tombstone."""
        self.add_chunk((key,), (value,))

    def add_chunk(
        self,
        keys: Sequence[bytes],
        values: Sequence[bytes | None],
        table_bytes_target: int | None = None,
    ) -> int:
        """Append entries in order (keys strictly increasing and above every key added
        before; a `None` value is a tombstone); return how many were taken: all of them,
        unless `size_bytes_estimate` reaches `table_bytes_target` first, in which case the
        entries up to and including the one that reached it (the caller then finishes this
        table and gives the rest to the next).

        Blocks are cut exactly where adding one entry at a time would cut them: after the
        entry that brings the open block to the block size. Why in bulk: a memtable flush runs
        on a thread, and every microsecond it holds the GIL is one the foreground writer may
        wait for when its fsync returns (docs/benchmarks.md, "flush"). Per entry, this costs
        a few C-speed builtins (`map`, `accumulate`, the filter's two hashes by `map`) instead
        of a Python call with its bookkeeping; the block cuts are bisections.
        """
        assert self._file is not None, "writer already finished"
        count = len(keys)
        assert count == len(values)
        if count == 0:
            return 0
        assert self._last_key is None or keys[0] > self._last_key, "keys must strictly increase"
        assert all(map(operator.lt, keys, itertools.islice(keys, 1, None))), (
            "keys must strictly increase"
        )
        tombstones = values.count(None)
        value_lengths = (
            map(len, cast(Sequence[bytes], values))
            if tombstones == 0
            else [0 if value is None else len(value) for value in values]
        )
        # reach[i]: the bytes entries [0, i) bring to a block (key, value and framing):
        # increasing in i, so each cut is a C bisection.
        entry_bytes = map(operator.add, map(len, keys), value_lengths)
        framed = map(operator.add, entry_bytes, itertools.repeat(_ENTRY_FRAMING_BYTES))
        reach: list[int] = list(itertools.accumulate(framed, initial=0))
        taken = count
        start = 0
        while start < count:
            # The open block holds _block_bytes; with entries [start, i) it holds reach[i] - base.
            base = reach[start] - self._block_bytes
            cut = bisect_left(reach, self._block_size_bytes + base, start + 1)
            if table_bytes_target is not None:
                stop = bisect_left(reach, table_bytes_target - self._offset + base, start + 1)
                if stop < cut:  # the table is full before this block is
                    self._extend_block(keys, values, start, stop, reach[stop] - base)
                    taken = stop
                    break
            end = min(cut, count)
            self._extend_block(keys, values, start, end, reach[end] - base)
            start = end
            if cut <= count:
                self._finish_block()
                if table_bytes_target is not None and self._offset >= table_bytes_target:
                    taken = cut
                    break
        taken_keys = keys if taken == count else keys[:taken]
        extend_hashes(self._word_hashes, self._bit_hashes, taken_keys)
        self._entry_count += taken
        if tombstones:
            self._tombstone_count += (values if taken == count else values[:taken]).count(None)
        if self._smallest is None:
            self._smallest = keys[0]
        self._last_key = keys[taken - 1]
        return taken

    def _extend_block(
        self,
        keys: Sequence[bytes],
        values: Sequence[bytes | None],
        start: int,
        end: int,
        block_bytes: int,
    ) -> None:
        self._block_keys.extend(keys[start:end])
        self._block_values.extend(values[start:end])
        self._block_bytes = block_bytes

    def _write_block(self, payload: bytes) -> tuple[int, int]:
        assert self._file is not None
        offset = self._offset
        self._file.write(payload)
        self._file.write(CRC_TRAILER.pack(crc32c.crc32c(payload)))
        self._offset += len(payload) + CRC_TRAILER_SIZE_BYTES
        return offset, len(payload)

    def _finish_block(self) -> None:
        if not self._block_keys:
            return
        offset, size = self._write_block(encode_data_block(self._block_keys, self._block_values))
        self._index_keys.append(self._block_keys[-1])
        self._index_offsets.append(offset)
        self._index_sizes.append(size)
        self._block_keys = []
        self._block_values = []
        self._block_bytes = 0

    def finish(self) -> WrittenTable:
        """Write the bloom, index, meta blocks and footer; fdatasync; close. Durable on return."""
        assert self._file is not None, "writer already finished"
        assert self._entry_count > 0, "an SSTable holds at least one entry"
        assert self._smallest is not None and self._last_key is not None
        self._finish_block()
        words = build_words(
            self._word_hashes,
            self._bit_hashes,
            word_count_for(self._entry_count, self._bloom_bits_per_key),
        )
        bloom_offset, bloom_size = self._write_block(
            encode_bloom_block(words_to_bytes(words), LSM_BLOOM_PROBES, self._bloom_bits_per_key)
        )
        index_offset, index_size = self._write_block(
            encode_index_block(self._index_keys, self._index_offsets, self._index_sizes)
        )
        properties = TableProperties(
            entry_count=self._entry_count,
            tombstone_count=self._tombstone_count,
            smallest=self._smallest,
            largest=self._last_key,
        )
        meta_offset, meta_size = self._write_block(encode_meta_block(properties))
        footer = encode_footer(
            Footer(bloom_offset, bloom_size, index_offset, index_size, meta_offset, meta_size)
        )
        self._file.write(footer)
        self._offset += len(footer)
        self._file.flush()
        _fdatasync(self._file.fileno())
        self._file.close()
        self._file = None
        return WrittenTable(self.path, self._offset, properties, len(self._index_keys))

    def abandon(self) -> None:
        """Close and delete the partial file (compaction cancelled or failed)."""
        if self._file is not None:
            self._file.close()
            self._file = None
        self.path.unlink(missing_ok=True)


@dataclass(frozen=True, slots=True)
class BlockCheck:
    """One data block as `TableReader.check_blocks` found it (for `minikv sstable inspect`)."""

    number: int
    offset: int
    size_bytes: int
    entry_count: int
    tombstone_count: int
    first_key: bytes | None
    last_key: bytes
    error: str | None  # None: CRC and structure are good


def _lookup_decoded(block: DecodedBlock, key: bytes) -> Lookup:
    keys, kinds, data = block
    position = bisect_left(keys, key)
    if position < len(keys) and keys[position] == key:
        if kinds is not None and kinds[position] == KIND_TOMBSTONE:
            return None
        start, stop = VALUE_SPAN.unpack_from(data, value_offsets_position(position))
        return data[start:stop]
    return ABSENT


def _map_file(fd: int, size: int) -> mmap.mmap:
    """A read-only shared mapping of a whole table file of `size` bytes.

    Why: a point get reads one ~2 KiB block, and copying it out of a mapping costs ~0.7 us
    where `os.pread` costs ~1.6 us (a system call, and the GIL released and re-taken), on a
    ~6 us get. Tables are immutable and never truncated by minikv, and an unlinked table stays
    mapped for as long as a reader holds it, as its descriptor does. The trade-off, the one
    LevelDB and bbolt make: an I/O error (or a file truncated behind the engine's back) under
    a mapped read is a SIGBUS that stops the process, where `pread` would raise `OSError`;
    a block that reads back wrong is still caught by its CRC. So `verify.py` and compaction
    workers, which read every block, keep `pread`. Also, the pages a process has touched
    through the mapping count in its RSS (as `RssFile`: page cache that `pread` used as well,
    reclaimable, just not charged to the process before).
    """
    return mmap.mmap(fd, size, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ)


def _release(fd: int, mapped: mmap.mmap | None) -> None:
    if mapped is not None:
        mapped.close()
    os.close(fd)


def _read_exact(fd: int, path: Path, offset: int, size: int, what: str) -> bytes:
    data = os.pread(fd, size, offset)
    if len(data) != size:
        raise CorruptionError(
            path, offset, f"{what} truncated: wanted {size} bytes, file ends after {len(data)}"
        )
    return data


def _read_checked(fd: int, path: Path, offset: int, size: int, what: str) -> bytes:
    """Read a block and its CRC trailer; return the payload or raise `CorruptionError`."""
    data = _read_exact(fd, path, offset, size + CRC_TRAILER_SIZE_BYTES, what)
    (stored,) = CRC_TRAILER.unpack_from(data, size)
    payload = data[:size]
    computed = crc32c.crc32c(payload)
    if computed != stored:
        raise CorruptionError(
            path, offset, f"{what} CRC mismatch (stored {stored:#010x}, computed {computed:#010x})"
        )
    return payload


class TableReader:
    """An open, immutable table: point gets, range iteration, verification."""

    __slots__ = (
        "__weakref__",
        "_cache",
        "_cache_base",
        "_fd",
        "_finalizer",
        "_last_keys",
        "_map",
        "_offsets",
        "_sizes",
        "bloom_bits_per_key",
        "bloom_probes",
        "bloom_word_count",
        "bloom_words",
        "file_size_bytes",
        "format_version",
        "largest",
        "path",
        "properties",
        "smallest",
    )

    def __init__(
        self,
        path: Path,
        *,
        fd: int,
        file_size_bytes: int,
        properties: TableProperties,
        index: BlockIndex,
        bloom: array[int],
        bloom_bits_per_key: int,
        cache: BlockCache | None,
        format_version: int,
        mapped: mmap.mmap | None = None,
    ) -> None:
        self.path = path
        self._fd = fd
        self._map = mapped
        self._finalizer = weakref.finalize(self, _release, fd, mapped)
        self.file_size_bytes = file_size_bytes
        self.properties = properties
        self.smallest = properties.smallest
        self.largest = properties.largest
        self._last_keys = index.last_keys
        self._offsets = index.offsets
        self._sizes = index.sizes
        self.bloom_words = bloom
        self.bloom_word_count = len(bloom)
        self.bloom_bits_per_key = bloom_bits_per_key
        self.bloom_probes = LSM_BLOOM_PROBES
        self.format_version = format_version
        self._cache = cache
        self._cache_base = new_table_base()

    @classmethod
    def open(
        cls, path: Path, cache: BlockCache | None = None, *, mapped: bool = False
    ) -> TableReader:
        """Open and validate footer, meta, index and bloom; data blocks are read on demand.

        `mapped`: read data blocks by copying them out of a read-only memory map of the file
        instead of one `pread` each (see `_map_file` for the why and the trade-off).
        """
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        try:
            return cls._open_fd(path, fd, cache, mapped)
        except BaseException:
            os.close(fd)
            raise

    @classmethod
    def _open_fd(cls, path: Path, fd: int, cache: BlockCache | None, mapped: bool) -> TableReader:
        size = os.fstat(fd).st_size
        if size < FOOTER_SIZE_BYTES:
            raise CorruptionError(
                path,
                0,
                f"file is {size} bytes, smaller than an SSTable footer ({FOOTER_SIZE_BYTES} "
                "bytes): not a minikv SSTable, or truncated",
            )
        footer_offset = size - FOOTER_SIZE_BYTES
        try:
            footer = decode_footer(
                _read_exact(fd, path, footer_offset, FOOTER_SIZE_BYTES, "footer")
            )
        except FormatError as exc:
            raise CorruptionError(path, footer_offset, exc.reason) from None
        trailer = CRC_TRAILER_SIZE_BYTES
        if not (
            footer.bloom_offset + footer.bloom_size + trailer == footer.index_offset
            and footer.index_offset + footer.index_size + trailer == footer.meta_offset
            and footer.meta_offset + footer.meta_size + trailer == footer_offset
        ):
            raise CorruptionError(
                path, footer_offset, "footer offsets do not tile bloom, index and meta blocks"
            )

        def checked(offset: int, block_size: int, what: str) -> bytes:
            return _read_checked(fd, path, offset, block_size, what)

        meta_payload = checked(footer.meta_offset, footer.meta_size, "meta block")
        index_payload = checked(footer.index_offset, footer.index_size, "index block")
        bloom_payload = checked(footer.bloom_offset, footer.bloom_size, "bloom block")
        try:
            properties = decode_meta_block(meta_payload)
        except FormatError as exc:
            raise CorruptionError(path, footer.meta_offset, exc.reason) from None
        try:
            index = decode_index_block(index_payload, footer.bloom_offset)
        except FormatError as exc:
            raise CorruptionError(path, footer.index_offset, exc.reason) from None
        try:
            words_le, probes, bits_per_key = decode_bloom_block(bloom_payload)
        except FormatError as exc:
            raise CorruptionError(path, footer.bloom_offset, exc.reason) from None
        if probes != LSM_BLOOM_PROBES:
            raise CorruptionError(
                path,
                footer.bloom_offset,
                f"bloom filter uses {probes} probes; this build reads {LSM_BLOOM_PROBES}",
            )
        if not index.last_keys or index.last_keys[-1] != properties.largest:
            raise CorruptionError(
                path, footer.index_offset, "index does not end at the table's largest key"
            )
        return cls(
            path,
            fd=fd,
            file_size_bytes=size,
            properties=properties,
            index=index,
            bloom=words_from_bytes(words_le),
            bloom_bits_per_key=bits_per_key,
            cache=cache,
            format_version=footer.format_version,
            mapped=_map_file(fd, size) if mapped else None,
        )

    # --- reads -------------------------------------------------------------------------------

    @property
    def block_count(self) -> int:
        return len(self._last_keys)

    @property
    def bloom_size_bytes(self) -> int:
        return self.bloom_word_count * 8

    def close(self) -> None:
        """Close the descriptor and the mapping now (idempotent); later reads fail (OSError,
        or ValueError from a closed mapping)."""
        self._finalizer()

    def read_block(self, number: int) -> DecodedBlock:
        """Read, CRC-check and decode data block `number` from disk (bypassing the cache)."""
        return self._decode_block(number, self._read_payload(number))

    def _read_payload(self, number: int) -> bytes:
        """Data block `number` as read from disk, trailer included, CRC checked: one copy
        (`pread` or out of the mapping) and one CRC call over the bytes as read (see
        CRC_RESIDUE). On the point-get path for every cache miss."""
        size = self._sizes[number]
        mapped = self._map
        if mapped is None:
            data = os.pread(self._fd, size + CRC_TRAILER_SIZE_BYTES, self._offsets[number])
        else:  # short at the mapping's end exactly as pread is at the end of the file
            offset = self._offsets[number]
            data = mapped[offset : offset + size + CRC_TRAILER_SIZE_BYTES]
        if len(data) != size + CRC_TRAILER_SIZE_BYTES or crc32c.crc32c(data) != CRC_RESIDUE:
            self._raise_bad_block(number, data)
        return data

    def _decode_block(self, number: int, data: bytes) -> DecodedBlock:
        try:
            block = decode_data_block(data, self._sizes[number])
        except FormatError as exc:
            raise self._bad_block(number, exc) from None
        keys = block[0]
        # The same property on both sides of the boundary: the index said this block ends at
        # last_keys[number]; the block must agree (and be sorted, checked at its two ends).
        last_keys = self._last_keys
        if keys[-1] != last_keys[number] or (number and keys[0] <= last_keys[number - 1]):
            raise CorruptionError(
                self.path,
                self._offsets[number],
                f"data block {number} keys disagree with the block index",
            )
        return block

    def _bad_block(self, number: int, exc: FormatError) -> CorruptionError:
        return CorruptionError(
            self.path, self._offsets[number], f"data block {number}: {exc.reason}"
        )

    def _raise_bad_block(self, number: int, data: bytes) -> NoReturn:
        offset = self._offsets[number]
        size = self._sizes[number]
        if len(data) != size + CRC_TRAILER_SIZE_BYTES:
            raise CorruptionError(
                self.path,
                offset,
                f"data block {number} truncated: wanted {size + CRC_TRAILER_SIZE_BYTES} bytes, "
                f"file ends after {len(data)}",
            )
        (stored,) = CRC_TRAILER.unpack_from(data, size)
        computed = crc32c.crc32c(data[:size])
        raise CorruptionError(
            self.path,
            offset,
            f"data block {number} CRC mismatch (stored {stored:#010x}, computed {computed:#010x})",
        )

    def _block(self, number: int, fill_cache: bool = True) -> DecodedBlock:
        """Block `number` through the cache (the scan path; `find` inlines the same steps)."""
        cache = self._cache
        if cache is None:
            return self.read_block(number)
        entry = cache.peek(self._cache_base + number)
        if entry is not None:
            cache.hit(self._cache_base + number)
            return entry[0]
        block = self.read_block(number)
        if not fill_cache:
            pass
        elif cache.offer_skip:  # a dormant cache samples its misses
            cache.offer_skip -= 1
        else:
            cache.offer(self._cache_base + number, block)
        return block

    def may_contain(self, key: bytes, word_hash: int, mask: int) -> bool:
        """False if the table certainly has no entry for `key` (range and bloom filter)."""
        return (
            self.smallest <= key <= self.largest
            and self.bloom_words[word_hash % self.bloom_word_count] & mask == mask
        )

    def get(self, key: bytes, word_hash: int, mask: int) -> Lookup:
        """The value of `key`, None for a tombstone, ABSENT if the table has no entry.

        `word_hash, mask = bloom.key_hashes(key)`, computed once by the caller for all tables.
        """
        if not self.may_contain(key, word_hash, mask):
            return ABSENT
        return self.find(key)

    def find(self, key: bytes) -> Lookup:
        """`get` without the range and bloom checks (the engine inlines those).

        The engine's hottest path: every step is a C call or a comparison. A miss that the
        block cache will not look at (a dormant cache samples 1 miss in 16) is searched in
        the block's bytes, never decoded (sstable_format.search_data_block).
        """
        last_keys = self._last_keys
        number = bisect_left(last_keys, key)
        if number == len(last_keys):
            return ABSENT
        cache = self._cache
        if cache is not None:
            entry = cache.peek(self._cache_base + number)
            if entry is not None:
                cache.hit(self._cache_base + number)
                return _lookup_decoded(entry[0], key)
            if not cache.offer_skip:  # the cache wants this miss (a dormant one samples)
                block = self.read_block(number)
                cache.offer(self._cache_base + number, block)
                return _lookup_decoded(block, key)
            cache.offer_skip -= 1
        mapped = self._map
        if mapped is None:
            data = self._read_payload(number)
        else:  # _read_payload, inlined
            offset = self._offsets[number]
            size = self._sizes[number] + CRC_TRAILER_SIZE_BYTES
            data = mapped[offset : offset + size]
            if len(data) != size or crc32c.crc32c(data) != CRC_RESIDUE:
                self._raise_bad_block(number, data)
        try:
            found = search_data_block(
                data,
                self._sizes[number],
                key,
                last_keys[number],
                last_keys[number - 1] if number else None,
            )
        except FormatError as exc:
            raise self._bad_block(number, exc) from None
        if found is NEEDS_DECODE:  # keys of other lengths: bisect the decoded block
            return _lookup_decoded(self._decode_block(number, data), key)
        return found

    def iter_range(
        self,
        start: bytes | None = None,
        end: bytes | None = None,
        reverse: bool = False,
        fill_cache: bool = True,
    ) -> Iterator[tuple[bytes, bytes | None]]:
        """Entries with start <= key < end (None: unbounded), tombstones as None values.

        `fill_cache=False` for compaction and verification: a scan over the whole table must
        not evict the blocks point gets are using (LevelDB's ReadOptions.fill_cache).
        """
        last_keys = self._last_keys
        if start is not None and start > self.largest:
            return
        if end is not None and end <= self.smallest:
            return
        first = 0 if start is None else bisect_left(last_keys, start)
        last = len(last_keys) - 1
        if end is not None:
            last = min(last, bisect_left(last_keys, end))
        numbers = range(last, first - 1, -1) if reverse else range(first, last + 1)
        for number in numbers:
            block = self._block(number, fill_cache)
            keys = block[0]
            low = 0 if start is None else bisect_left(keys, start)
            high = len(keys) if end is None else bisect_left(keys, end)
            if low >= high:
                continue
            values = block_values(block, low, high)
            if reverse:
                yield from zip(reversed(keys[low:high]), reversed(values), strict=True)
            else:
                yield from zip(keys[low:high], values, strict=True)

    def iter_chunks(
        self,
        start: bytes | None = None,
        end: bytes | None = None,
        reverse: bool = False,
        fill_cache: bool = True,
    ) -> Iterator[tuple[Sequence[bytes], list[bytes | None]]]:
        """Like `iter_range`, one (keys, values) chunk per block, keys ascending within a
        chunk; blocks in descending order if `reverse` (compaction.merge_chunks)."""
        last_keys = self._last_keys
        if start is not None and start > self.largest:
            return
        if end is not None and end <= self.smallest:
            return
        first = 0 if start is None else bisect_left(last_keys, start)
        last = len(last_keys) - 1
        if end is not None:
            last = min(last, bisect_left(last_keys, end))
        numbers = range(last, first - 1, -1) if reverse else range(first, last + 1)
        # Several blocks per chunk: each chunk is a round of the merge, whose fixed cost is
        # then shared by ~_CHUNK_ENTRIES entries rather than one block's ~16.
        chunk_keys: list[bytes] = []
        chunk_values: list[bytes | None] = []
        for number in numbers:
            block = self._block(number, fill_cache)
            keys = block[0]
            low = 0 if start is None else bisect_left(keys, start)
            high = len(keys) if end is None else bisect_left(keys, end)
            if low >= high:
                continue
            if reverse:  # blocks arrive in descending order; a chunk stays ascending
                chunk_keys[:0] = keys[low:high]
                chunk_values[:0] = block_values(block, low, high)
            else:
                chunk_keys.extend(keys[low:high])
                chunk_values.extend(block_values(block, low, high))
            if len(chunk_keys) >= _CHUNK_ENTRIES:
                yield chunk_keys, chunk_values
                chunk_keys, chunk_values = [], []
        if chunk_keys:
            yield chunk_keys, chunk_values

    def check_blocks(self) -> Iterator[BlockCheck]:
        """Every data block read from disk with its CRC and structure checked; never raises
        `CorruptionError` (the finding is in `BlockCheck.error`)."""
        for number, last_key in enumerate(self._last_keys):
            offset = self._offsets[number]
            try:
                keys, kinds, _data = self.read_block(number)
            except CorruptionError as exc:
                yield BlockCheck(
                    number, offset, self._sizes[number], 0, 0, None, last_key, exc.reason
                )
                continue
            tombstones = 0 if kinds is None else kinds.count(KIND_TOMBSTONE)
            yield BlockCheck(
                number, offset, self._sizes[number], len(keys), tombstones, keys[0], keys[-1], None
            )

    def verify(self) -> int:
        """Read every data block from disk, checking CRCs, order and counts; return the number
        of entries. Raises `CorruptionError` at the first problem."""
        entries = 0
        tombstones = 0
        for number in range(len(self._last_keys)):
            keys, kinds, _data = self.read_block(number)
            entries += len(keys)
            if kinds is not None:
                tombstones += kinds.count(KIND_TOMBSTONE)
            if any(a >= b for a, b in itertools.pairwise(keys)):
                raise CorruptionError(
                    self.path, self._offsets[number], f"data block {number} keys out of order"
                )
        if self._last_keys and self.read_block(0)[0][0] != self.smallest:
            raise CorruptionError(self.path, 0, "first key differs from the meta block's smallest")
        if (entries, tombstones) != (
            self.properties.entry_count,
            self.properties.tombstone_count,
        ):
            raise CorruptionError(
                self.path,
                0,
                f"blocks hold {entries} entries ({tombstones} tombstones), the meta block says "
                f"{self.properties.entry_count} ({self.properties.tombstone_count})",
            )
        return entries
