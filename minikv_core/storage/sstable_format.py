"""The SSTable on-disk format: its constants and the encoders/decoders of each block.

One module holds the whole format (LevelDB's `table/format.h`), so a reader of this file can
check a hex dump against it. All integers are little-endian. A table file is:

    data block 0   | crc32c u32      sorted entries, ~LSM_BLOCK_SIZE_BYTES_TARGET each
    ...
    data block n-1 | crc32c u32
    bloom block    | crc32c u32      blocked Bloom filter over every key (bloom.py)
    index block    | crc32c u32      last key, offset and size of each data block
    meta block     | crc32c u32      entry and tombstone counts, smallest and largest key
    footer                           fixed size; ends with MAGIC

Every block's CRC-32C covers its payload and is checked on every read from disk; the footer
carries its own CRC. Sizes recorded for blocks exclude the 4-byte CRC trailer.

Data block payload (why this layout: decoding must run at C speed; with fixed-length keys, the
common case, all keys come out of one `struct.unpack_from`, and values are sliced lazily, only
for the entry a get returns):

    u32 entry_count n (>= 1) | u32 fixed_key_length L (0: keys differ in length) |
    u32 fixed_value_length V (meaningful only with flag FIXED_VALUE_LENGTH) | u32 flags
    u32 value_offsets[n + 1]      absolute in the payload; value i = [vo[i], vo[i+1])
    u32 key_offsets[n + 1]        only if L == 0; key i = [ko[i], ko[i+1])
    u8  kinds[n]                  only if flags & HAS_TOMBSTONES; 1 = tombstone (empty value)
    keys, concatenated            strictly increasing
    values, concatenated          vo[0] = end of keys, vo[n] = payload length

Flags: HAS_TOMBSTONES (1) says the kinds array is present; FIXED_VALUE_LENGTH (2) says every
entry is a put of a V-byte value, so a scan slices all values with one `struct.unpack_from`
(fixed-size records are common, and slicing values one by one was a third of a scan's cost).

Index block payload: u32 n | u32 key_offsets[n + 1] | u64 block_offsets[n] |
u32 block_sizes[n] | the last key of each block, concatenated.

Bloom block payload: u32 word_count | u8 probes | u8 bits_per_key | 2 zero bytes |
u64 words[word_count].

Meta block payload: u64 entry_count | u64 tombstone_count | u32 smallest length | smallest |
u32 largest length | largest.
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import accumulate, pairwise
from typing import Final, Literal, cast

import crc32c

from minikv_core.storage.lsm_limits import LSM_BLOCK_PAYLOAD_BYTES_MAX, LSM_KEY_SIZE_BYTES_MAX
from minikv_core.storage.speedups import encode_data_block as _c_encode_data_block

MAGIC: Final = b"MKVSST\x00\x01"
FORMAT_VERSION: Final = 1
FILE_SUFFIX: Final = ".sst"

CRC_TRAILER: Final = struct.Struct("<I")
CRC_TRAILER_SIZE_BYTES: Final = CRC_TRAILER.size
# CRC-32C of a payload followed by its own CRC-32C (little-endian) is this constant, whatever
# the payload (the CRC "residue"). So a block is verified with one CRC call over the bytes as
# read, trailer included, with no slicing: equivalent to comparing the stored and computed
# CRCs (tests/storage/test_sstable.py checks the identity).
CRC_RESIDUE: Final = 0x48674BC7

# Footer: bloom offset/size, index offset/size, meta offset/size, format version, CRC-32C of
# the preceding footer bytes, magic.
FOOTER: Final = struct.Struct("<QIQIQII")
FOOTER_CRC: Final = struct.Struct("<I")
FOOTER_SIZE_BYTES: Final = FOOTER.size + FOOTER_CRC.size + len(MAGIC)

DATA_HEADER: Final = struct.Struct("<IIII")
FLAG_HAS_TOMBSTONES: Final = 1
FLAG_FIXED_VALUE_LENGTH: Final = 2
FLAGS_KNOWN: Final = FLAG_HAS_TOMBSTONES | FLAG_FIXED_VALUE_LENGTH
KIND_PUT: Final = 0
KIND_TOMBSTONE: Final = 1

U32: Final = struct.Struct("<I")
U64: Final = struct.Struct("<Q")
BLOOM_HEADER: Final = struct.Struct("<IBB2x")
META_COUNTS: Final = struct.Struct("<QQ")

assert len(MAGIC) == 8
assert FOOTER_SIZE_BYTES == 52, "changing the footer changes FORMAT_VERSION"


class FormatError(Exception):
    """A block decoded from bytes whose CRC matched is malformed (writer bug or format drift).

    Internal: the table reader turns it into a `CorruptionError` naming the file and offset.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


# Compiled `struct`s by shape. The shapes seen in practice are few (one per entry count and
# key length), but a crafted file could present many, so the caches are cleared when full.
_STRUCT_CACHE_MAX = 4096
_u32_arrays: dict[int, struct.Struct] = {}
_fixed_keys: dict[int, struct.Struct] = {}


def _u32_array(count: int) -> struct.Struct:
    compiled = _u32_arrays.get(count)
    if compiled is None:
        if len(_u32_arrays) >= _STRUCT_CACHE_MAX:
            _u32_arrays.clear()
        compiled = _u32_arrays[count] = struct.Struct(f"<{count}I")
    return compiled


def _fixed_key_struct(key_length: int, count: int) -> struct.Struct:
    """`count` strings of `key_length` bytes (keys, or values of fixed length)."""
    shape = key_length << 32 | count  # an int key: no tuple to build on the get path
    compiled = _fixed_keys.get(shape)
    if compiled is None:
        if len(_fixed_keys) >= _STRUCT_CACHE_MAX:
            _fixed_keys.clear()
        compiled = _fixed_keys[shape] = struct.Struct(f"{key_length}s" * count)
    return compiled


# A decoded data block, as a tuple because the get path indexes it on every lookup:
# (keys, kinds or None, data). `data` is the buffer read from disk: the payload, possibly
# followed by its CRC trailer. Entry i's value offsets are the u32 pair at
# `value_offsets_position(i)` (unpacked only for the entry a get returns: a block decode
# creates the key objects and nothing else); it is a tombstone iff kinds[i] == KIND_TOMBSTONE.
DecodedBlock = tuple[Sequence[bytes], bytes | None, bytes]

VALUE_SPAN: Final = struct.Struct("<II")


class Absent(enum.Enum):
    """A lookup found no entry for the key (distinct from a tombstone, `None`)."""

    ABSENT = 0


ABSENT: Final = Absent.ABSENT


class NeedsDecode(enum.Enum):
    """`search_data_block` cannot search this block without decoding it."""

    NEEDS_DECODE = 0


NEEDS_DECODE: Final = NeedsDecode.NEEDS_DECODE

BlockSearch = bytes | None | Literal[Absent.ABSENT, NeedsDecode.NEEDS_DECODE]
_HEADER_AND_VALUES_START: Final = struct.Struct("<IIIII")  # DATA_HEADER + value_offsets[0]


def value_offsets_position(entry: int) -> int:
    return DATA_HEADER.size + U32.size * entry


def encode_data_block(keys: Sequence[bytes], values: Sequence[bytes | None]) -> bytes:
    """The payload of one data block; `values[i] is None` marks a tombstone. In C when it is
    built (`speedups`) and given the lists a table writer keeps, else
    `encode_data_block_python`: every flush and merge encodes all its entries here."""
    if _c_encode_data_block is not None and type(keys) is list and type(values) is list:
        payload = _c_encode_data_block(keys, values, LSM_BLOCK_PAYLOAD_BYTES_MAX)
        if payload is not None:
            return payload
    return encode_data_block_python(keys, values)


def encode_data_block_python(keys: Sequence[bytes], values: Sequence[bytes | None]) -> bytes:
    """`encode_data_block` in Python: the layout's definition, and what runs without C."""
    count = len(keys)
    assert count >= 1 and count == len(values)
    # Lengths once, in C (map, min, max): this runs for every block a flush or merge writes.
    key_lengths = list(map(len, keys))
    fixed_key_length = key_lengths[0] if min(key_lengths) == max(key_lengths) else 0
    has_tombstones = None in values
    stored_values = (
        [b"" if value is None else value for value in values]
        if has_tombstones
        else cast(Sequence[bytes], values)
    )
    value_lengths = list(map(len, stored_values))
    fixed_value_length = (
        -1 if has_tombstones or min(value_lengths) != max(value_lengths) else value_lengths[0]
    )
    key_region = b"".join(keys)
    header_size = DATA_HEADER.size + U32.size * (count + 1)
    if fixed_key_length == 0:
        header_size += U32.size * (count + 1)
    if has_tombstones:
        header_size += count
    value_offsets = list(accumulate(value_lengths, initial=header_size + len(key_region)))
    offsets = _u32_array(count + 1)
    parts = [
        DATA_HEADER.pack(
            count,
            fixed_key_length,
            max(fixed_value_length, 0),
            (FLAG_HAS_TOMBSTONES if has_tombstones else 0)
            | (FLAG_FIXED_VALUE_LENGTH if fixed_value_length >= 0 else 0),
        ),
        offsets.pack(*value_offsets),
    ]
    if fixed_key_length == 0:
        parts.append(offsets.pack(*accumulate(key_lengths, initial=header_size)))
    if has_tombstones:
        parts.append(bytes(KIND_TOMBSTONE if value is None else KIND_PUT for value in values))
    parts.append(key_region)
    parts.extend(stored_values)
    payload = b"".join(parts)
    assert len(payload) == value_offsets[-1]
    assert len(payload) <= LSM_BLOCK_PAYLOAD_BYTES_MAX
    return payload


def _data_block_layout(data: bytes, payload_size: int) -> tuple[int, int, int, int, int]:
    """(count, fixed_key_length, flags, values_start, kinds_start) of a data block payload
    whose CRC has been checked, after checking the header against the payload; raises
    `FormatError`. kinds_start is where the kinds array (or, without one, the keys) begins."""
    try:
        # The header and the first value offset in one unpack: this runs on every cache miss.
        count, fixed_key_length, fixed_value_length, flags, values_start = (
            _HEADER_AND_VALUES_START.unpack_from(data, 0)
        )
        kinds_start = DATA_HEADER.size + U32.size * (count + 1)
        (values_end,) = U32.unpack_from(data, kinds_start - U32.size)
    except struct.error as exc:
        raise FormatError(f"data block is truncated: {exc}") from None
    if not count or flags & ~FLAGS_KNOWN or values_end != payload_size or values_start > values_end:
        raise FormatError(
            f"data block header is inconsistent: {count} entries, flags {flags:#x}, value "
            f"region [{values_start}, {values_end}), payload {payload_size} bytes"
        )
    if flags & FLAG_FIXED_VALUE_LENGTH and (
        flags & FLAG_HAS_TOMBSTONES or values_start + fixed_value_length * count != values_end
    ):
        raise FormatError("data block fixed value length does not match its value region")
    return count, fixed_key_length, flags, values_start, kinds_start


def decode_data_block(data: bytes, payload_size: int) -> DecodedBlock:
    """Parse the data block payload `data[:payload_size]`, whose CRC has been checked.

    Raises `FormatError`. Checks the structure a reader relies on (the regions tile the
    payload); the order of keys is checked by the reader against its index.
    """
    count, fixed_key_length, flags, values_start, position = _data_block_layout(data, payload_size)
    has_tombstones = flags & FLAG_HAS_TOMBSTONES
    try:
        keys: Sequence[bytes]
        if fixed_key_length:
            key_start = position + count if has_tombstones else position
            if key_start + fixed_key_length * count != values_start:
                raise FormatError("data block key region does not end where values start")
            compiled = _fixed_keys.get(fixed_key_length << 32 | count)
            if compiled is None:
                compiled = _fixed_key_struct(fixed_key_length, count)
            keys = compiled.unpack_from(data, key_start)
        else:
            key_offsets = _u32_array(count + 1).unpack_from(data, position)
            position += U32.size * (count + 1)
            if key_offsets[-1] != values_start:
                raise FormatError("data block key region does not end where values start")
            keys = [data[a:b] for a, b in pairwise(key_offsets)]
        kinds = data[position : position + count] if has_tombstones else None
    except struct.error as exc:
        raise FormatError(f"data block is truncated: {exc}") from None
    return keys, kinds, data


def search_data_block(
    data: bytes, payload_size: int, key: bytes, last_key: bytes, previous_last_key: bytes | None
) -> BlockSearch:
    """The entry for `key` in the data block payload `data[:payload_size]` (CRC checked),
    found without decoding the block: its value, None for a tombstone, ABSENT if the block
    has none; NEEDS_DECODE if the block's keys are not all `len(key)` bytes long (the caller
    then decodes it). Raises `FormatError`.

    Why: a point get that misses the block cache only wants one entry, yet decoding a block
    makes an object of every key (~16) to bisect them once. With keys of one length the key
    region is an array, so one C-speed `bytes.find` over it, a match counting only at an
    entry boundary, finds the entry. The header is checked against the payload as in
    `decode_data_block` (inlined: this runs on most gets). An answer of ABSENT is given only
    once the block's first and last keys agree with the index (`last_key` of this block,
    `previous_last_key` of the one before it, None for block 0), since a misplaced block
    would hide the key; a key found is this table's entry whichever block it sits in.
    """
    try:
        count, key_length, value_length, flags, values_start = _HEADER_AND_VALUES_START.unpack_from(
            data, 0
        )
        position = DATA_HEADER.size + U32.size * (count + 1)  # kinds, or keys without them
        (values_end,) = U32.unpack_from(data, position - U32.size)
    except struct.error:
        return NEEDS_DECODE  # decode_data_block names what is wrong
    if (
        key_length != len(key)
        or not count
        or flags & ~FLAGS_KNOWN
        or values_end != payload_size
        or values_start > values_end
        or (
            flags & FLAG_FIXED_VALUE_LENGTH
            and (flags & FLAG_HAS_TOMBSTONES or values_start + value_length * count != values_end)
        )
    ):
        return NEEDS_DECODE  # other key lengths; or malformed: decode_data_block says how
    key_start = position + count if flags & FLAG_HAS_TOMBSTONES else position
    if key_start + key_length * count != values_start:
        return NEEDS_DECODE
    found = data.find(key, key_start, values_start)
    while found >= 0 and (found - key_start) % key_length:  # straddles two keys: look on
        found = data.find(key, found + 1, values_start)
    if found < 0:
        if not (
            len(last_key) == key_length and data.startswith(last_key, values_start - key_length)
        ) or (
            previous_last_key is not None
            and data[key_start : key_start + key_length] <= previous_last_key
        ):
            raise FormatError("keys disagree with the block index")
        return ABSENT
    entry = (found - key_start) // key_length
    if flags & FLAG_HAS_TOMBSTONES and data[position + entry] == KIND_TOMBSTONE:
        return None
    start, stop = VALUE_SPAN.unpack_from(data, DATA_HEADER.size + U32.size * entry)
    return data[start:stop]


def block_values(block: DecodedBlock, low: int, high: int) -> list[bytes | None]:
    """The values of entries low..high-1 of a decoded block (None for tombstones)."""
    assert 0 <= low <= high <= len(block[0])
    _keys, kinds, data = block
    if low == high:
        return []
    _count, _key_length, value_length, flags = DATA_HEADER.unpack_from(data, 0)
    if flags & FLAG_FIXED_VALUE_LENGTH:
        (values_start,) = U32.unpack_from(data, DATA_HEADER.size)
        values_fixed = _fixed_key_struct(value_length, high - low).unpack_from(
            data, values_start + low * value_length
        )
        return list(values_fixed)
    offsets = _u32_array(high - low + 1).unpack_from(data, value_offsets_position(low))
    values: list[bytes | None] = [data[a:b] for a, b in pairwise(offsets)]
    if kinds is not None:
        for i in range(low, high):
            if kinds[i] == KIND_TOMBSTONE:
                values[i - low] = None
    return values


def block_entries(block: DecodedBlock) -> list[tuple[bytes, bytes | None]]:
    """Every (key, value or None for a tombstone) of a decoded block, in key order."""
    keys = block[0]
    return list(zip(keys, block_values(block, 0, len(keys)), strict=True))


@dataclass(frozen=True, slots=True)
class Footer:
    bloom_offset: int
    bloom_size: int
    index_offset: int
    index_size: int
    meta_offset: int
    meta_size: int
    format_version: int = FORMAT_VERSION


def encode_footer(footer: Footer) -> bytes:
    body = FOOTER.pack(
        footer.bloom_offset,
        footer.bloom_size,
        footer.index_offset,
        footer.index_size,
        footer.meta_offset,
        footer.meta_size,
        footer.format_version,
    )
    encoded = body + FOOTER_CRC.pack(crc32c.crc32c(body)) + MAGIC
    assert len(encoded) == FOOTER_SIZE_BYTES
    return encoded


def decode_footer(data: bytes) -> Footer:
    """Parse the last FOOTER_SIZE_BYTES of a file; raises `FormatError` naming what is wrong."""
    assert len(data) == FOOTER_SIZE_BYTES
    magic = data[-len(MAGIC) :]
    if magic != MAGIC:
        raise FormatError(
            f"bad magic {magic.hex()} (expected {MAGIC.hex()}): not a minikv SSTable, "
            "or its end was truncated"
        )
    body = data[: FOOTER.size]
    (stored_crc,) = FOOTER_CRC.unpack_from(data, FOOTER.size)
    if crc32c.crc32c(body) != stored_crc:
        raise FormatError("footer CRC mismatch")
    fields = FOOTER.unpack(body)
    footer = Footer(*fields)
    if footer.format_version != FORMAT_VERSION:
        raise FormatError(
            f"unsupported SSTable format version {footer.format_version} "
            f"(this build reads version {FORMAT_VERSION})"
        )
    return footer


@dataclass(frozen=True, slots=True)
class BlockIndex:
    """Parallel lists: block i holds keys <= last_keys[i], at offsets[i], payload sizes[i]."""

    last_keys: list[bytes]
    offsets: list[int]
    sizes: list[int]


def encode_index_block(
    last_keys: Sequence[bytes], offsets: Sequence[int], sizes: Sequence[int]
) -> bytes:
    count = len(last_keys)
    assert count == len(offsets) == len(sizes)
    header_size = U32.size + U32.size * (count + 1) + U64.size * count + U32.size * count
    key_offsets = list(accumulate(map(len, last_keys), initial=header_size))
    payload = b"".join(
        [
            U32.pack(count),
            _u32_array(count + 1).pack(*key_offsets),
            struct.pack(f"<{count}Q", *offsets),
            _u32_array(count).pack(*sizes),
            *last_keys,
        ]
    )
    assert len(payload) == key_offsets[-1]
    return payload


def decode_index_block(payload: bytes, data_end: int) -> BlockIndex:
    """Parse the index, checking that blocks tile [0, data_end) in order with sorted keys."""
    try:
        (count,) = U32.unpack_from(payload, 0)
        position = U32.size
        key_offsets = _u32_array(count + 1).unpack_from(payload, position)
        position += U32.size * (count + 1)
        offsets = list(struct.unpack_from(f"<{count}Q", payload, position))
        position += U64.size * count
        sizes = list(_u32_array(count).unpack_from(payload, position))
    except struct.error as exc:
        raise FormatError(f"index block is truncated: {exc}") from None
    if key_offsets[-1] != len(payload):
        raise FormatError("index block key region does not end at the payload end")
    last_keys = [payload[a:b] for a, b in pairwise(key_offsets)]
    expected_offset = 0
    for i in range(count):
        if offsets[i] != expected_offset:
            raise FormatError(f"index entry {i} points at {offsets[i]}, expected {expected_offset}")
        if not 0 < len(last_keys[i]) <= LSM_KEY_SIZE_BYTES_MAX:
            raise FormatError(f"index entry {i} has a key of {len(last_keys[i])} bytes")
        if i and last_keys[i] <= last_keys[i - 1]:
            raise FormatError(f"index keys out of order at entry {i}")
        expected_offset += sizes[i] + CRC_TRAILER_SIZE_BYTES
    if expected_offset != data_end:
        raise FormatError(f"data blocks end at {expected_offset}, bloom block starts at {data_end}")
    return BlockIndex(last_keys, offsets, sizes)


def encode_bloom_block(words_le: bytes, probes: int, bits_per_key: int) -> bytes:
    assert len(words_le) % 8 == 0 and words_le
    return BLOOM_HEADER.pack(len(words_le) // 8, probes, bits_per_key) + words_le


def decode_bloom_block(payload: bytes) -> tuple[memoryview, int, int]:
    """(words as little-endian bytes, probes, bits_per_key)."""
    try:
        word_count, probes, bits_per_key = BLOOM_HEADER.unpack_from(payload, 0)
    except struct.error as exc:
        raise FormatError(f"bloom block is truncated: {exc}") from None
    if word_count == 0 or BLOOM_HEADER.size + 8 * word_count != len(payload):
        raise FormatError(f"bloom block of {len(payload)} bytes cannot hold {word_count} words")
    return memoryview(payload)[BLOOM_HEADER.size :], probes, bits_per_key


@dataclass(frozen=True, slots=True)
class TableProperties:
    entry_count: int
    tombstone_count: int
    smallest: bytes
    largest: bytes


def encode_meta_block(properties: TableProperties) -> bytes:
    return b"".join(
        [
            META_COUNTS.pack(properties.entry_count, properties.tombstone_count),
            U32.pack(len(properties.smallest)),
            properties.smallest,
            U32.pack(len(properties.largest)),
            properties.largest,
        ]
    )


def decode_meta_block(payload: bytes) -> TableProperties:
    try:
        entry_count, tombstone_count = META_COUNTS.unpack_from(payload, 0)
        position = META_COUNTS.size
        (smallest_length,) = U32.unpack_from(payload, position)
        position += U32.size
        smallest = payload[position : position + smallest_length]
        position += smallest_length
        (largest_length,) = U32.unpack_from(payload, position)
        position += U32.size
        largest = payload[position : position + largest_length]
        position += largest_length
    except struct.error as exc:
        raise FormatError(f"meta block is truncated: {exc}") from None
    if position != len(payload) or len(smallest) != smallest_length:
        raise FormatError("meta block length does not match its fields")
    if entry_count == 0 or tombstone_count > entry_count or smallest > largest:
        raise FormatError("meta block counts or key range are inconsistent")
    return TableProperties(entry_count, tombstone_count, smallest, largest)


def table_file_name(file_number: int) -> str:
    assert file_number >= 1
    return f"{file_number:06d}{FILE_SUFFIX}"


def parse_table_file_name(name: str) -> int | None:
    """The file number of a table file name, or None if `name` is not one."""
    if not name.endswith(FILE_SUFFIX):
        return None
    stem = name[: -len(FILE_SUFFIX)]
    if not stem.isdigit() or not stem.isascii():
        return None
    number = int(stem)
    return number if number >= 1 else None
