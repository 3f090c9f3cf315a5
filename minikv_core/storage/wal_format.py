"""The on-disk format of a WAL segment: constants, the header, record frames, and their reader.

Why one module: the format is a contract with every file already on disk. Keeping all of it
here (LevelDB's `log_format.h` + `log_reader`/`log_writer`) means a change to it is a change
to one file, reviewed as a format change, with FORMAT_VERSION bumped.

A segment file (name: the sequence as 16 decimal digits + ".wal", so names sort by sequence):

    offset 0   segment header, SEGMENT_HEADER_SIZE (32) bytes, little-endian:
                 magic 8s = b"MINIKVWL" | format_version u16 | first_record_offset u16 |
                 header_crc u32 | sequence u64 | first_record_ordinal u64
               header_crc is the CRC32C of the 32 header bytes with the header_crc field zeroed.
               first_record_offset is where the first frame starts (today: 32), so a later
               version may grow the header; first_record_ordinal is the number of records
               appended to this log, since its creation, before this segment (used to count
               records and to check that no segment is missing).
    offset 32  frames, back to back, never spanning segments:
                 length u32 | crc u32 | type u8 | payload (length bytes)
               length counts the payload only. The CRC is CRC32C (Castagnoli, hardware
               accelerated by the `crc32c` package) and COVERS THE TYPE BYTE AND THE PAYLOAD,
               not the length: a corrupted length is caught because the CRC then runs over the
               wrong bytes. Type 0 is never a record, so a zeroed frame header (9 zero bytes)
               unambiguously marks the unwritten, preallocated space after the last record.
    then       zeros up to the preallocated size (active segment) or nothing (a sealed segment
               is truncated to its last record when sealed).

This module only frames and checks; deciding whether a bad frame is a torn tail or corruption
is recovery policy and lives in `wal.py`.
"""

from __future__ import annotations

import enum
import os
import re
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from crc32c import crc32c

from minikv_core.storage import limits
from minikv_core.storage.errors import WalRecordTooLargeError
from minikv_core.storage.wal_records import RecordType

FORMAT_VERSION = 1
SEGMENT_MAGIC = b"MINIKVWL"
SEGMENT_SUFFIX = ".wal"
# A segment being created (header written, space zero-filled) before its atomic rename.
SEGMENT_TEMP_SUFFIX = ".wal.tmp"
SEGMENT_NAME_DIGITS = 16

_SEGMENT_HEADER = struct.Struct("<8sHHIQQ")
SEGMENT_HEADER_SIZE = _SEGMENT_HEADER.size
_HEADER_CRC_OFFSET = 12  # after magic (8), version (2), first_record_offset (2)

_FRAME_HEADER = struct.Struct("<IIB")
FRAME_HEADER_SIZE = _FRAME_HEADER.size
_ZERO_FRAME_HEADER = bytes(FRAME_HEADER_SIZE)

assert SEGMENT_HEADER_SIZE == 32
assert FRAME_HEADER_SIZE == 9
assert SEGMENT_HEADER_SIZE + FRAME_HEADER_SIZE <= limits.WAL_FRAMING_BYTES_MAX
assert 0 not in {int(t) for t in RecordType}, "type 0 must stay free: it marks zeroed space"
assert all(0 < int(t) < 256 for t in RecordType), "the type is one byte"

# CRC32C of the single type byte, the seed from which each payload's CRC continues.
_TYPE_CRC_SEED: dict[int, int] = {int(t): crc32c(bytes([t])) for t in RecordType}
_SEGMENT_NAME = re.compile(rf"^(\d{{{SEGMENT_NAME_DIGITS}}})\.wal$")
# Any byte that could be the type byte of a frame; used to find frame candidates in C.
_TYPE_BYTE = re.compile(b"[" + b"".join(re.escape(bytes([t])) for t in RecordType) + b"]")


class WalFormatError(ValueError):
    """Bytes that do not follow this format; the caller adds the file name."""

    def __init__(self, offset: int, reason: str) -> None:
        super().__init__(f"at byte offset {offset}: {reason}")
        self.offset = offset
        self.reason = reason


def segment_file_name(sequence: int) -> str:
    assert 0 < sequence < 10**SEGMENT_NAME_DIGITS, sequence
    return f"{sequence:0{SEGMENT_NAME_DIGITS}d}{SEGMENT_SUFFIX}"


def parse_segment_file_name(name: str) -> int | None:
    """The sequence of a segment file name, or None if `name` is not one."""
    match = _SEGMENT_NAME.match(name)
    if match is None:
        return None
    sequence = int(match.group(1))
    return sequence if sequence > 0 else None


@dataclass(frozen=True, slots=True)
class SegmentHeader:
    sequence: int
    first_record_ordinal: int
    format_version: int = FORMAT_VERSION
    first_record_offset: int = SEGMENT_HEADER_SIZE

    def encode(self) -> bytes:
        assert self.sequence > 0 and self.first_record_ordinal >= 0
        unsealed = _SEGMENT_HEADER.pack(
            SEGMENT_MAGIC,
            self.format_version,
            self.first_record_offset,
            0,
            self.sequence,
            self.first_record_ordinal,
        )
        crc = crc32c(unsealed)
        header = _SEGMENT_HEADER.pack(
            SEGMENT_MAGIC,
            self.format_version,
            self.first_record_offset,
            crc,
            self.sequence,
            self.first_record_ordinal,
        )
        assert len(header) == SEGMENT_HEADER_SIZE
        return header

    @classmethod
    def decode(cls, data: bytes) -> SegmentHeader:
        if len(data) < SEGMENT_HEADER_SIZE:
            raise WalFormatError(
                len(data), f"segment header cut short: {len(data)} of {SEGMENT_HEADER_SIZE} bytes"
            )
        magic, version, first_offset, crc, sequence, ordinal = _SEGMENT_HEADER.unpack_from(data)
        if magic != SEGMENT_MAGIC:
            raise WalFormatError(0, f"bad magic {magic!r}: not a minikv WAL segment")
        zeroed = bytearray(data[:SEGMENT_HEADER_SIZE])
        zeroed[_HEADER_CRC_OFFSET : _HEADER_CRC_OFFSET + 4] = bytes(4)
        if crc32c(zeroed) != crc:
            raise WalFormatError(0, "segment header checksum mismatch")
        if version != FORMAT_VERSION:
            raise WalFormatError(
                0, f"format version {version} (this minikv reads version {FORMAT_VERSION})"
            )
        if first_offset != SEGMENT_HEADER_SIZE:
            raise WalFormatError(0, f"first record offset {first_offset} is not supported")
        if sequence == 0:
            raise WalFormatError(0, "segment sequence 0 is invalid")
        return cls(sequence, ordinal, version, first_offset)


# A record's payload as `Wal.append` accepts it (bytearray and memoryview are copied once).
Payload = bytes | bytearray | memoryview


@dataclass(frozen=True, slots=True)
class EncodedBatch:
    """Frames of one caller's batch, ready for one write; `size` == len(data)."""

    data: bytes
    size: int
    count: int


def frame_crc(record_type: int, payload: bytes | memoryview) -> int:
    """CRC32C over the type byte then the payload (see the module docstring)."""
    return int(crc32c(payload, _TYPE_CRC_SEED[record_type]))


def encode_frame(record_type: int, payload: Payload) -> bytes:
    return encode_batch([(record_type, payload)]).data


def encode_batch(records: Iterable[tuple[int, Payload]]) -> EncodedBatch:
    """Frame `(record_type, payload)` pairs, checking each (type known, bytes, size limit).

    Checked here, before anything reaches the file, so a bad record fails its own caller and
    never a group commit it would have shared with others.
    """
    if type(records) is list and len(records) == 1:
        # One bytes record of a known type (every Store batch, most node rounds): the loop
        # below, unrolled; anything else falls through to it and its errors.
        item = records[0]
        if type(item) is tuple and len(item) == 2:
            record_type, payload = item
            if type(payload) is bytes and isinstance(record_type, int):
                seed = _TYPE_CRC_SEED.get(record_type)
                length = len(payload)
            else:
                seed, length = None, 0
            if seed is not None and length <= limits.WAL_RECORD_PAYLOAD_BYTES_MAX:
                header = _FRAME_HEADER.pack(length, crc32c(payload, seed), record_type)
                return EncodedBatch(header + payload, FRAME_HEADER_SIZE + length, 1)
    parts: list[bytes] = []
    append = parts.append
    pack = _FRAME_HEADER.pack
    seeds = _TYPE_CRC_SEED
    payload_max = limits.WAL_RECORD_PAYLOAD_BYTES_MAX
    size = 0
    count = 0
    for item in records:
        try:
            record_type, payload = item
        except (TypeError, ValueError) as exc:
            raise TypeError(
                f"record {count} must be a (record_type, payload) pair, got {type(item).__name__}"
            ) from exc
        if type(payload) is not bytes:
            if not isinstance(payload, bytes | bytearray | memoryview):
                raise TypeError(
                    f"record {count}: payload must be bytes, got {type(payload).__name__}"
                )
            payload = bytes(payload)
        seed = seeds.get(record_type) if isinstance(record_type, int) else None
        if seed is None:
            raise ValueError(
                f"record {count}: unknown record type {record_type!r} "
                f"(known: {', '.join(t.name for t in RecordType)})"
            )
        length = len(payload)
        if length > payload_max:
            raise WalRecordTooLargeError(
                f"record {count}: payload of {length} bytes exceeds the WAL record limit of "
                f"{payload_max} bytes (limits.WAL_RECORD_PAYLOAD_BYTES_MAX)"
            )
        append(pack(length, crc32c(payload, seed), record_type))
        append(payload)
        size += FRAME_HEADER_SIZE + length
        count += 1
    data = b"".join(parts)
    assert len(data) == size
    return EncodedBatch(data, size, count)


def decode_frame_header(data: bytes | memoryview, offset: int) -> tuple[int, int, int]:
    """(payload length, crc, type) of the frame header at `offset` (no checks)."""
    length, crc, record_type = _FRAME_HEADER.unpack_from(data, offset)
    return int(length), int(crc), int(record_type)


def is_known_record_type(record_type: int) -> bool:
    return record_type in _TYPE_CRC_SEED


# ---------------------------------------------------------------------------- the reader


def pread_exact(fd: int, size: int, offset: int) -> bytes:
    """Up to `size` bytes at `offset`; fewer only at end of file (pread may return short)."""
    chunks: list[bytes] = []
    remaining = size
    while remaining > 0:
        chunk = os.pread(fd, remaining, offset)
        if not chunk:
            break
        chunks.append(chunk)
        offset += len(chunk)
        remaining -= len(chunk)
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def data_end(fd: int, start: int, end: int) -> int:
    """The offset just past the last non-zero byte in [start, end), or `start` if all zero.

    Read backwards in chunks so the common case (a few KiB of torn bytes before megabytes of
    preallocated zeros) costs one pass over the zeros at C speed.
    """
    chunk_size = limits.WAL_READ_CHUNK_BYTES
    position = end
    while position > start:
        chunk_start = max(start, position - chunk_size)
        chunk = pread_exact(fd, position - chunk_start, chunk_start)
        stripped = len(chunk.rstrip(b"\0"))
        if stripped:
            return chunk_start + stripped
        position = chunk_start
    return start


class StopKind(enum.Enum):
    END = "end"  # the data ended exactly at a frame boundary
    ZEROS = "zeros"  # an all-zero frame header: unwritten (preallocated) space starts here
    BAD = "bad"  # a frame that is not a valid record


@dataclass(frozen=True, slots=True)
class FrameStop:
    """Why a FrameReader stopped, and where.

    For BAD: `claimed_end` is where the bad frame would end if its length field were right
    (the end of its header when the length is impossible), and `complete` says the frame is
    whole and its CRC matches (so it is not a torn write: e.g. an unknown record type).
    """

    kind: StopKind
    offset: int
    reason: str = ""
    claimed_end: int = 0
    complete: bool = False


class FrameReader:
    """Iterate the frames of one segment file between two offsets, checking each CRC.

    Yields `(offset, record_type, payload)` where `payload` is a memoryview into a read
    buffer: valid until the next iteration step (copy it with `bytes()` to keep it). When the
    iteration ends, `stop` says why (end of data, zeroed space, or a bad frame).
    """

    def __init__(self, fd: int, start: int, end: int) -> None:
        assert 0 <= start <= end
        self._fd = fd
        self._start = start
        self._end = end
        self.stop: FrameStop | None = None

    def __iter__(self) -> Iterator[tuple[int, int, memoryview]]:
        fd = self._fd
        end = self._end
        position = self._start
        chunk_size = limits.WAL_READ_CHUNK_BYTES
        payload_max = limits.WAL_RECORD_PAYLOAD_BYTES_MAX
        header_size = FRAME_HEADER_SIZE
        unpack = _FRAME_HEADER.unpack_from
        seeds = _TYPE_CRC_SEED
        buffer = b""
        view = memoryview(buffer)
        base = position  # file offset of buffer[0]
        while True:
            relative = position - base
            if relative + header_size > len(buffer):
                if position >= end:
                    self.stop = FrameStop(StopKind.END, position)
                    return
                buffer = pread_exact(fd, min(chunk_size, end - position), position)
                view = memoryview(buffer)
                base = position
                relative = 0
                if len(buffer) < header_size:
                    if buffer == _ZERO_FRAME_HEADER[: len(buffer)]:
                        # Fewer zero bytes than a header at the very end: unwritten space.
                        self.stop = FrameStop(StopKind.ZEROS, position)
                    else:
                        self.stop = FrameStop(
                            StopKind.BAD,
                            position,
                            f"record header cut short: {len(buffer)} of {header_size} bytes "
                            "before the end of the data",
                            claimed_end=end + 1,
                        )
                    return
            length, crc, record_type = unpack(buffer, relative)
            if length == 0 and crc == 0 and record_type == 0:
                self.stop = FrameStop(StopKind.ZEROS, position)
                return
            if length > payload_max:
                self.stop = FrameStop(
                    StopKind.BAD,
                    position,
                    f"record length {length} exceeds the record limit of {payload_max} bytes",
                    claimed_end=position + header_size,
                )
                return
            frame_end = position + header_size + length
            if frame_end > end:
                self.stop = FrameStop(
                    StopKind.BAD,
                    position,
                    f"record of {length} bytes runs past the end of the data at {end}",
                    claimed_end=frame_end,
                )
                return
            if relative + header_size + length > len(buffer):
                buffer = pread_exact(fd, max(chunk_size, header_size + length), position)
                buffer = buffer[: end - position]
                view = memoryview(buffer)
                base = position
                relative = 0
                if header_size + length > len(buffer):
                    self.stop = FrameStop(
                        StopKind.BAD,
                        position,
                        f"record of {length} bytes runs past the end of the file",
                        claimed_end=frame_end,
                    )
                    return
            payload = view[relative + header_size : relative + header_size + length]
            seed = seeds.get(record_type)
            if seed is None:
                complete = crc32c(payload, crc32c(bytes([record_type]))) == crc
                self.stop = FrameStop(
                    StopKind.BAD,
                    position,
                    f"unknown record type {record_type}"
                    + (" (its checksum is valid: written by a newer minikv?)" if complete else ""),
                    claimed_end=frame_end,
                    complete=complete,
                )
                return
            if crc32c(payload, seed) != crc:
                self.stop = FrameStop(
                    StopKind.BAD,
                    position,
                    f"checksum mismatch in a {length}-byte record of type {record_type}",
                    claimed_end=frame_end,
                )
                return
            yield position, record_type, payload
            position = frame_end


def find_valid_frame(fd: int, start: int, candidates_end: int, end: int) -> int | None:
    """The offset of the first whole, CRC-valid frame starting in [start, candidates_end)
    and ending by `end`, or None.

    Used to tell a torn tail (nothing recognizable after the bad spot) from corruption in the
    middle of the log (a valid record follows it). Candidates are found in C (a regex for a
    known type byte), then checked by length and CRC; only a damaged segment pays this.
    """
    if candidates_end - start < 1:
        return None
    data = pread_exact(fd, min(end, candidates_end + FRAME_HEADER_SIZE) - start, start)
    payload_max = limits.WAL_RECORD_PAYLOAD_BYTES_MAX
    for match in _TYPE_BYTE.finditer(data, FRAME_HEADER_SIZE - 1):
        candidate = start + match.start() - (FRAME_HEADER_SIZE - 1)
        if candidate >= candidates_end:
            break
        length, crc, record_type = _FRAME_HEADER.unpack_from(data, candidate - start)
        frame_end = candidate + FRAME_HEADER_SIZE + length
        if length > payload_max or frame_end > end:
            continue
        payload = pread_exact(fd, length, candidate + FRAME_HEADER_SIZE)
        if len(payload) == length and crc32c(payload, _TYPE_CRC_SEED[record_type]) == crc:
            return candidate
    return None
