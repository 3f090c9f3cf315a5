"""The WAL's ordinary life: append, rotate, read back, truncate, reopen, and bad input."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest

from minikv_core.storage import limits
from minikv_core.storage.errors import (
    WalClosedError,
    WalCorruptionError,
    WalDirectoryError,
    WalLockedError,
    WalPositionError,
    WalRecordTooLargeError,
)
from minikv_core.storage.wal import Position, Wal, verify
from minikv_core.storage.wal_format import SEGMENT_HEADER_SIZE, SegmentHeader
from minikv_core.storage.wal_records import RecordType
from tests.storage.wal_support import (
    SMALL_SEGMENT_BYTES,
    TEST_SEGMENT_BYTES,
    payload_for,
    segment_paths,
    write_records,
)


def test_round_trip_across_rotation_preserves_every_record_in_order(tmp_path: Path) -> None:
    with Wal.open(tmp_path, segment_size_bytes=SMALL_SEGMENT_BYTES) as wal:
        written = write_records(wal, 400, seed=1)
        assert wal.stats.rotations >= 10, "the test must cross many segment boundaries"
        read = [(e.position, e.record_type, e.payload) for e in wal.read()]
    assert read == written
    assert len(segment_paths(tmp_path)) == wal.stats.rotations + 1


def test_reopen_reads_everything_back_and_continues_after_the_last_record(
    tmp_path: Path,
) -> None:
    with Wal.open(tmp_path, segment_size_bytes=SMALL_SEGMENT_BYTES) as wal:
        first = write_records(wal, 150, seed=2)
        end_before = wal.end_position
    with Wal.open(tmp_path, segment_size_bytes=SMALL_SEGMENT_BYTES) as wal:
        assert wal.end_position == end_before
        position = wal.append_sync([(RecordType.KV_BATCH, b"after reopen")])
        assert position == end_before
        read = [(e.position, e.record_type, e.payload) for e in wal.read()]
    assert read[:-1] == first
    assert read[-1] == (end_before, RecordType.KV_BATCH, b"after reopen")


def test_batch_position_is_its_first_record_and_batches_never_span_segments(
    tmp_path: Path,
) -> None:
    with Wal.open(tmp_path, segment_size_bytes=SMALL_SEGMENT_BYTES) as wal:
        positions = [
            wal.append_sync(
                [(RecordType.RAFT_ENTRY, payload_for(i * 10 + k, 150)) for k in range(7)]
            )
            for i in range(30)
        ]
        entries = list(wal.read())
    by_batch = [entries[i * 7 : i * 7 + 7] for i in range(30)]
    for position, batch in zip(positions, by_batch, strict=True):
        assert batch[0].position == position
        assert {entry.position.segment for entry in batch} == {position.segment}
    assert positions == sorted(positions)


def test_read_from_arbitrary_positions_yields_the_suffix(tmp_path: Path) -> None:
    with Wal.open(tmp_path, segment_size_bytes=SMALL_SEGMENT_BYTES) as wal:
        written = write_records(wal, 300, seed=3)
        for index in (0, 1, 57, 123, 298, 299):
            suffix = [(e.position, e.record_type, e.payload) for e in wal.read(written[index][0])]
            assert suffix == written[index:], f"reading from record {index}"
        # The end of the log is a valid start: nothing to read.
        assert list(wal.read(wal.end_position)) == []


def test_read_from_a_position_that_is_not_a_record_boundary_is_an_error(
    tmp_path: Path,
) -> None:
    with Wal.open(tmp_path, segment_size_bytes=TEST_SEGMENT_BYTES) as wal:
        position = wal.append_sync([(RecordType.KV_BATCH, payload_for(1, 100))])
        wal.append_sync([(RecordType.KV_BATCH, payload_for(2, 100))])
        with pytest.raises(WalCorruptionError, match="record boundary"):
            list(wal.read(Position(position.segment, position.offset + 3)))


def test_read_from_outside_the_log_names_the_problem(tmp_path: Path) -> None:
    with Wal.open(tmp_path, segment_size_bytes=TEST_SEGMENT_BYTES) as wal:
        wal.append_sync([(RecordType.KV_BATCH, b"x")])
        with pytest.raises(WalPositionError, match="past the end"):
            wal.read(Position(9, SEGMENT_HEADER_SIZE))
        with pytest.raises(WalPositionError, match="offset must be in"):
            wal.read(Position(1, 10**6))
        with pytest.raises(WalPositionError, match="offset must be in"):
            wal.read(Position(1, 0))


def test_read_does_not_see_appends_made_after_the_call(tmp_path: Path) -> None:
    with Wal.open(tmp_path, segment_size_bytes=TEST_SEGMENT_BYTES) as wal:
        wal.append_sync([(RecordType.KV_BATCH, b"one")])
        reader = wal.read()
        wal.append_sync([(RecordType.KV_BATCH, b"two")])
        assert [e.payload for e in reader] == [b"one"]


def test_truncate_before_deletes_only_whole_segments_before_the_position(
    tmp_path: Path,
) -> None:
    with Wal.open(tmp_path, segment_size_bytes=SMALL_SEGMENT_BYTES) as wal:
        written = write_records(wal, 300, seed=4)
        segments = wal.segments()
        assert len(segments) >= 6
        # A position in the middle of the 4th segment: segments 1-3 go, the 4th stays whole.
        target = next(p for p, _, _ in written if p.segment == segments[3].sequence)
        middle = [p for p, _, _ in written if p.segment == target.segment][2]
        deleted = wal.truncate_before(middle)
        assert deleted == [s.path for s in segments[:3]]
        assert [p.name for p in segment_paths(tmp_path)] == [s.name for s in segments[3:]]
        assert wal.first_position == Position(segments[3].sequence, SEGMENT_HEADER_SIZE)
        remaining = [(e.position, e.record_type, e.payload) for e in wal.read()]
        assert remaining == [w for w in written if w[0].segment >= segments[3].sequence]
        # Reading from a deleted segment is a clear error.
        with pytest.raises(WalPositionError, match="deleted"):
            wal.read(written[0][0])
        # Truncating again below the watermark changes nothing.
        assert wal.truncate_before(written[0][0]) == []


def test_truncate_before_never_deletes_the_active_segment(tmp_path: Path) -> None:
    with Wal.open(tmp_path, segment_size_bytes=SMALL_SEGMENT_BYTES) as wal:
        write_records(wal, 100, seed=5)
        active = wal.segments()[-1]
        wal.truncate_before(wal.end_position)
        assert [s.sequence for s in wal.segments()] == [active.sequence]
        with pytest.raises(WalPositionError, match="past the end"):
            wal.truncate_before(Position(active.sequence + 1, SEGMENT_HEADER_SIZE))
    with Wal.open(tmp_path, segment_size_bytes=SMALL_SEGMENT_BYTES) as wal:
        assert [s.sequence for s in wal.segments()] == [active.sequence]


def test_seal_moves_on_to_a_new_segment_so_the_old_one_can_be_truncated(tmp_path: Path) -> None:
    with Wal.open(tmp_path, segment_size_bytes=TEST_SEGMENT_BYTES) as wal:
        assert wal.seal() is False, "an empty active segment has nothing to seal"
        write_records(wal, 20, seed=9)
        (only,) = wal.segments()
        assert wal.seal() is True
        sealed, active = wal.segments()
        assert (sealed.sequence, sealed.active, sealed.record_count) == (only.sequence, False, 20)
        assert (active.sequence, active.active, active.record_count) == (only.sequence + 1, True, 0)
        assert wal.seal() is False
        wal.append_sync([(int(RecordType.RAFT_ENTRY), b"after")])
        wal.truncate_before(wal.end_position)
        assert [s.sequence for s in wal.segments()] == [active.sequence]
        assert [entry.payload for entry in wal.read()] == [b"after"]
    assert verify(tmp_path).ok
    with Wal.open(tmp_path, segment_size_bytes=TEST_SEGMENT_BYTES) as wal:
        assert [entry.payload for entry in wal.read()] == [b"after"]


def test_segments_report_counts_sizes_and_the_active_one(tmp_path: Path) -> None:
    with Wal.open(tmp_path, segment_size_bytes=SMALL_SEGMENT_BYTES) as wal:
        written = write_records(wal, 200, seed=6)
        infos = wal.segments()
        assert [i.active for i in infos] == [False] * (len(infos) - 1) + [True]
        assert sum(i.record_count for i in infos) == len(written)
        assert [i.sequence for i in infos] == list(range(1, len(infos) + 1))
        for info in infos[:-1]:
            # Sealed segments are cut to their last record.
            assert info.size_bytes == info.used_bytes == info.path.stat().st_size
        active = infos[-1]
        # The active segment is preallocated to the full segment size.
        assert active.size_bytes == SMALL_SEGMENT_BYTES == active.path.stat().st_size
        ordinal = 0
        for info in infos:
            assert info.first_record_ordinal == ordinal
            assert info.name == f"{info.sequence:016d}.wal"
            ordinal += info.record_count
    report = verify(tmp_path)
    assert report.ok
    assert [(s.name, s.record_count) for s in report.segments] == [
        (i.name, i.record_count) for i in infos
    ]


def test_segment_files_start_with_a_header_naming_their_sequence(tmp_path: Path) -> None:
    with Wal.open(tmp_path, segment_size_bytes=SMALL_SEGMENT_BYTES) as wal:
        write_records(wal, 100, seed=7)
    for number, path in enumerate(segment_paths(tmp_path), start=1):
        header = SegmentHeader.decode(path.read_bytes()[:SEGMENT_HEADER_SIZE])
        assert header.sequence == number


def test_without_preallocation_files_grow_with_their_records(tmp_path: Path) -> None:
    with Wal.open(tmp_path, preallocate=False) as wal:
        wal.append_sync([(RecordType.KV_BATCH, b"x" * 100)])
        assert wal.segments()[0].path.stat().st_size == SEGMENT_HEADER_SIZE + 9 + 100
    with Wal.open(tmp_path, preallocate=False) as wal:
        assert [e.payload for e in wal.read()] == [b"x" * 100]


def test_preallocated_segment_switches_to_unpreallocated_on_reopen(tmp_path: Path) -> None:
    with Wal.open(tmp_path, segment_size_bytes=SMALL_SEGMENT_BYTES) as wal:
        wal.append_sync([(RecordType.KV_BATCH, b"a")])
    with Wal.open(tmp_path, segment_size_bytes=SMALL_SEGMENT_BYTES, preallocate=False) as wal:
        assert wal.segments()[0].path.stat().st_size == SEGMENT_HEADER_SIZE + 10
        wal.append_sync([(RecordType.KV_BATCH, b"b")])
    with Wal.open(tmp_path, segment_size_bytes=SMALL_SEGMENT_BYTES) as wal:
        assert [e.payload for e in wal.read()] == [b"a", b"b"]


def test_stats_count_real_writes_and_syncs(tmp_path: Path) -> None:
    with Wal.open(tmp_path, segment_size_bytes=TEST_SEGMENT_BYTES) as wal:
        created = wal.stats  # creating segment 1 made its header durable: one sync
        assert (created.syncs, created.directory_syncs, created.appends) == (1, 1, 0)
        for i in range(5):
            wal.append_sync([(RecordType.KV_BATCH, b"r")] * (i + 1))
        stats = wal.stats
    assert (stats.appends, stats.records, stats.writes, stats.syncs - created.syncs) == (
        5,
        15,
        5,
        5,
    )
    assert stats.bytes_written == 15 * 10
    assert stats.sync_seconds_total > 0


# ---------------------------------------------------------------------------- bad input


def test_non_bytes_payload_is_a_type_error_naming_the_record(tmp_path: Path) -> None:
    with Wal.open(tmp_path, segment_size_bytes=TEST_SEGMENT_BYTES) as wal:
        with pytest.raises(TypeError, match="record 1: payload must be bytes, got str"):
            wal.append_sync([(RecordType.KV_BATCH, b"ok"), (RecordType.KV_BATCH, "text")])  # type: ignore[list-item]
        with pytest.raises(TypeError, match="pair"):
            wal.append_sync([RecordType.KV_BATCH])  # type: ignore[list-item]
        with pytest.raises(TypeError, match="iterable of"):
            wal.append_sync(b"raw bytes")  # type: ignore[arg-type]
        # Nothing of a rejected batch reached the file.
        assert list(wal.read()) == []
        assert wal.stats.writes == 0


def test_unknown_record_type_and_empty_batch_are_value_errors(tmp_path: Path) -> None:
    with Wal.open(tmp_path, segment_size_bytes=TEST_SEGMENT_BYTES) as wal:
        with pytest.raises(ValueError, match="unknown record type 0"):
            wal.append_sync([(0, b"x")])
        with pytest.raises(ValueError, match="unknown record type 99"):
            wal.append_sync([(99, b"x")])
        with pytest.raises(ValueError, match="at least one record"):
            wal.append_sync([])


def test_record_over_the_record_limit_is_rejected_with_the_limit(tmp_path: Path) -> None:
    with Wal.open(tmp_path, segment_size_bytes=TEST_SEGMENT_BYTES) as wal:
        too_big = bytes(limits.WAL_RECORD_PAYLOAD_BYTES_MAX + 1)
        with pytest.raises(WalRecordTooLargeError, match="exceeds the WAL record limit"):
            wal.append_sync([(RecordType.RAFT_ENTRY, too_big)])


def test_record_larger_than_a_segment_is_rejected_clearly(tmp_path: Path) -> None:
    with Wal.open(tmp_path, segment_size_bytes=SMALL_SEGMENT_BYTES) as wal:
        with pytest.raises(WalRecordTooLargeError, match="cannot fit in one segment"):
            wal.append_sync([(RecordType.RAFT_ENTRY, bytes(SMALL_SEGMENT_BYTES))])
        with pytest.raises(WalRecordTooLargeError, match="a batch of 3 records"):
            wal.append_sync([(RecordType.RAFT_ENTRY, bytes(1500))] * 3)
        # A record that fits exactly in an empty segment is accepted.
        exact = SMALL_SEGMENT_BYTES - SEGMENT_HEADER_SIZE - 9
        wal.append_sync([(RecordType.RAFT_ENTRY, b"a")])
        position = wal.append_sync([(RecordType.RAFT_ENTRY, bytes(exact))])
        assert position == Position(2, SEGMENT_HEADER_SIZE)
        assert [len(e.payload) for e in wal.read()] == [1, exact]


def test_largest_record_fits_a_default_segment(tmp_path: Path) -> None:
    with Wal.open(tmp_path, preallocate=False) as wal:
        payload = bytes(limits.WAL_RECORD_PAYLOAD_BYTES_MAX)
        wal.append_sync([(RecordType.RAFT_ENTRY, payload)])
        assert [len(e.payload) for e in wal.read()] == [len(payload)]


def test_bad_segment_size_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="segment_size_bytes must be in"):
        Wal.open(tmp_path, segment_size_bytes=100)


def test_missing_directory_without_create_is_a_directory_error(tmp_path: Path) -> None:
    with pytest.raises(WalDirectoryError, match="does not exist"):
        Wal.open(tmp_path / "nope", create=False)


def test_directory_that_is_a_file_is_a_directory_error(tmp_path: Path) -> None:
    file_path = tmp_path / "file"
    file_path.write_bytes(b"")
    with pytest.raises(WalDirectoryError, match="not a directory"):
        Wal.open(file_path)


def test_missing_directory_is_created_with_its_parents(tmp_path: Path) -> None:
    with Wal.open(tmp_path / "a" / "b", segment_size_bytes=TEST_SEGMENT_BYTES) as wal:
        wal.append_sync([(RecordType.KV_BATCH, b"x")])
    assert [p.name for p in segment_paths(tmp_path / "a" / "b")] == ["0000000000000001.wal"]


def test_second_open_of_the_same_directory_is_refused(tmp_path: Path) -> None:
    with (
        Wal.open(tmp_path, segment_size_bytes=TEST_SEGMENT_BYTES),
        pytest.raises(WalLockedError, match="in use"),
    ):
        Wal.open(tmp_path, segment_size_bytes=TEST_SEGMENT_BYTES)
    # Released on close.
    Wal.open(tmp_path, segment_size_bytes=TEST_SEGMENT_BYTES).close()


def test_closed_wal_refuses_appends_and_reads(tmp_path: Path) -> None:
    wal = Wal.open(tmp_path, segment_size_bytes=TEST_SEGMENT_BYTES)
    wal.close()
    wal.close()  # idempotent
    with pytest.raises(WalClosedError):
        wal.append_sync([(RecordType.KV_BATCH, b"x")])
    with pytest.raises(WalClosedError):
        wal.read()


def test_append_sync_inside_an_event_loop_is_refused(tmp_path: Path) -> None:
    async def main() -> None:
        with (
            Wal.open(tmp_path, segment_size_bytes=TEST_SEGMENT_BYTES) as wal,
            pytest.raises(RuntimeError, match=r"await wal\.append"),
        ):
            wal.append_sync([(RecordType.KV_BATCH, b"x")])

    asyncio.run(main())


def test_unfinished_segment_temp_file_is_removed_on_open(tmp_path: Path) -> None:
    with Wal.open(tmp_path, segment_size_bytes=TEST_SEGMENT_BYTES) as wal:
        wal.append_sync([(RecordType.KV_BATCH, b"x")])
    temp = tmp_path / "0000000000000002.wal.tmp"
    temp.write_bytes(os.urandom(100))
    with Wal.open(tmp_path, segment_size_bytes=TEST_SEGMENT_BYTES) as wal:
        assert [e.payload for e in wal.read()] == [b"x"]
    assert not temp.exists()


FAILING_WRITER = """
import resource, signal, sys
from minikv_core.storage.errors import WalFailedError
from minikv_core.storage.wal import Wal
from minikv_core.storage.wal_records import RecordType

signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # get EFBIG from write(), not a signal
wal = Wal.open(sys.argv[1], preallocate=False)
resource.setrlimit(resource.RLIMIT_FSIZE, (8192, resource.RLIM_INFINITY))
acknowledged = 0
try:
    while True:
        wal.append_sync([(RecordType.KV_BATCH, b"x" * 1000)])
        acknowledged += 1
except WalFailedError as exc:
    print("failed", acknowledged, exc)
try:
    wal.append_sync([(RecordType.KV_BATCH, b"y")])
    print("accepted after failure")
except WalFailedError:
    print("refused after failure")
wal.close()
"""


def test_failed_write_poisons_the_wal_until_reopen(tmp_path: Path) -> None:
    """A real write error (EFBIG from RLIMIT_FSIZE) in a child process: the Wal refuses all
    later appends, and a reopen keeps exactly the acknowledged records."""
    result = subprocess.run(
        [sys.executable, "-c", FAILING_WRITER, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("failed "), result.stdout
    assert "reopen it to continue" in lines[0]
    assert lines[1] == "refused after failure"
    acknowledged = int(lines[0].split()[1])
    assert acknowledged > 0
    with Wal.open(tmp_path, preallocate=False) as wal:
        assert [e.payload for e in wal.read()] == [b"x" * 1000] * acknowledged
