"""The segment file format: header, frames, names, and the frame reader's stop reasons."""

from __future__ import annotations

import os
import struct
from pathlib import Path

import pytest
from crc32c import crc32c

from minikv_core.storage.errors import WalRecordTooLargeError
from minikv_core.storage.limits import WAL_RECORD_PAYLOAD_BYTES_MAX
from minikv_core.storage.wal_format import (
    FRAME_HEADER_SIZE,
    SEGMENT_HEADER_SIZE,
    FrameReader,
    SegmentHeader,
    StopKind,
    WalFormatError,
    decode_frame_header,
    encode_batch,
    encode_frame,
    frame_crc,
    parse_segment_file_name,
    segment_file_name,
)
from minikv_core.storage.wal_records import RecordType


def test_segment_header_round_trips_and_is_32_bytes() -> None:
    header = SegmentHeader(sequence=7, first_record_ordinal=12345)
    data = header.encode()
    assert len(data) == SEGMENT_HEADER_SIZE == 32
    assert data.startswith(b"MINIKVWL")
    assert SegmentHeader.decode(data) == header


@pytest.mark.parametrize("offset", range(SEGMENT_HEADER_SIZE))
def test_any_flipped_header_byte_is_detected(offset: int) -> None:
    data = bytearray(SegmentHeader(sequence=3, first_record_ordinal=99).encode())
    data[offset] ^= 0x01
    with pytest.raises(WalFormatError):
        SegmentHeader.decode(bytes(data))


def test_short_header_is_a_format_error() -> None:
    with pytest.raises(WalFormatError, match="cut short"):
        SegmentHeader.decode(b"MINIKVWL")


def test_segment_names_sort_by_sequence() -> None:
    names = [segment_file_name(s) for s in (1, 2, 10, 9, 100, 11)]
    assert sorted(names) == [segment_file_name(s) for s in (1, 2, 9, 10, 11, 100)]
    assert segment_file_name(1) == "0000000000000001.wal"
    assert parse_segment_file_name("0000000000000042.wal") == 42
    for not_a_segment in ("42.wal", "0000000000000042.wal.tmp", "LOCK", "0000000000000000.wal"):
        assert parse_segment_file_name(not_a_segment) is None


def test_frame_is_length_crc_type_payload_with_crc_over_type_and_payload() -> None:
    payload = b"hello wal"
    frame = encode_frame(RecordType.RAFT_ENTRY, payload)
    length, crc, record_type = struct.unpack_from("<IIB", frame)
    assert (length, record_type) == (len(payload), RecordType.RAFT_ENTRY)
    assert frame[FRAME_HEADER_SIZE:] == payload
    assert crc == crc32c(bytes([RecordType.RAFT_ENTRY]) + payload)
    assert crc == frame_crc(RecordType.RAFT_ENTRY, payload)
    assert decode_frame_header(frame, 0) == (length, crc, record_type)
    # The type is covered: the same payload under another type has another CRC.
    assert crc != frame_crc(RecordType.KV_BATCH, payload)


def test_encode_batch_concatenates_frames() -> None:
    records: list[tuple[int, bytes | bytearray]] = [
        (RecordType.KV_BATCH, b"a"),
        (RecordType.RAFT_SNAPSHOT, b""),
        (2, bytearray(b"c")),
    ]
    batch = encode_batch(records)
    assert batch.count == 3
    assert batch.size == len(batch.data) == 3 * FRAME_HEADER_SIZE + 2
    assert batch.data == b"".join(encode_frame(t, bytes(p)) for t, p in records)


@pytest.mark.parametrize(
    "record",
    [
        (RecordType.KV_BATCH, b"x" * 100),
        (int(RecordType.RAFT_ENTRY), b""),
        (RecordType.KV_BATCH, bytearray(b"copied")),  # not bytes: the general loop
        (RecordType.KV_BATCH, memoryview(b"viewed")),
    ],
)
def test_one_record_frames_as_the_last_of_a_batch_does(record: tuple[int, bytes]) -> None:
    """A one-record list takes a shortcut; its frame must be the general loop's, which a
    record framed after another one still goes through."""
    alone = encode_batch([record])
    after = encode_batch([(RecordType.KV_BATCH, b"first"), record])
    first = FRAME_HEADER_SIZE + len(b"first")
    assert (alone.count, alone.size) == (1, len(alone.data))
    assert alone.data == after.data[first:]


@pytest.mark.parametrize(
    ("record", "error", "message"),
    [
        ((1.0, b"x"), ValueError, "unknown record type 1.0"),
        ((99, b"x"), ValueError, "unknown record type 99"),
        (([1], b"x"), ValueError, "unknown record type"),
        ((RecordType.KV_BATCH, "text"), TypeError, "payload must be bytes, got str"),
        ((RecordType.KV_BATCH,), TypeError, "must be a .record_type, payload. pair"),
        (
            (RecordType.KV_BATCH, bytes(WAL_RECORD_PAYLOAD_BYTES_MAX + 1)),
            WalRecordTooLargeError,
            "exceeds the WAL record limit",
        ),
    ],
)
def test_one_bad_record_gets_the_general_error(
    record: tuple[object, ...], error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        encode_batch([record])  # type: ignore[list-item]


def test_encode_rejects_oversize_payload_before_framing() -> None:
    with pytest.raises(WalRecordTooLargeError, match=str(WAL_RECORD_PAYLOAD_BYTES_MAX)):
        encode_batch([(RecordType.KV_BATCH, bytes(WAL_RECORD_PAYLOAD_BYTES_MAX + 1))])


def _reader_over(tmp_path: Path, data: bytes) -> tuple[list[tuple[int, int, bytes]], FrameReader]:
    path = tmp_path / "frames"
    path.write_bytes(data)
    fd = os.open(path, os.O_RDONLY)
    try:
        reader = FrameReader(fd, 0, len(data))
        frames = [(offset, t, bytes(p)) for offset, t, p in reader]
    finally:
        os.close(fd)
    return frames, reader


def test_reader_stops_at_end_of_data(tmp_path: Path) -> None:
    data = encode_frame(1, b"one") + encode_frame(2, b"two")
    frames, reader = _reader_over(tmp_path, data)
    assert frames == [(0, 1, b"one"), (12, 2, b"two")]
    assert reader.stop is not None
    assert (reader.stop.kind, reader.stop.offset) == (StopKind.END, len(data))


def test_reader_stops_at_zeroed_frame_header(tmp_path: Path) -> None:
    data = encode_frame(1, b"one") + bytes(100)
    frames, reader = _reader_over(tmp_path, data)
    assert len(frames) == 1
    assert reader.stop is not None
    assert (reader.stop.kind, reader.stop.offset) == (StopKind.ZEROS, 12)


def test_reader_reports_a_frame_cut_by_the_end_of_the_file(tmp_path: Path) -> None:
    data = encode_frame(1, b"one") + encode_frame(2, b"two-long-payload")[:-3]
    _, reader = _reader_over(tmp_path, data)
    assert reader.stop is not None
    assert (reader.stop.kind, reader.stop.offset) == (StopKind.BAD, 12)
    assert "runs past the end" in reader.stop.reason
    assert not reader.stop.complete


def test_reader_handles_records_larger_than_its_read_chunk(tmp_path: Path) -> None:
    big = os.urandom(3 * 1024 * 1024)
    data = encode_frame(1, b"x") + encode_frame(2, big) + encode_frame(3, b"y")
    frames, reader = _reader_over(tmp_path, data)
    assert [(t, len(p)) for _, t, p in frames] == [(1, 1), (2, len(big)), (3, 1)]
    assert frames[1][2] == big
    assert reader.stop is not None and reader.stop.kind is StopKind.END
