"""Recovery on open, verify and repair: torn tails are cut, everything else is reported.

The rule under test (wal.py): a bad frame is a torn tail only in the last segment and only if
no valid record follows it; then it is cut silently (and logged). Any other damage raises
WalCorruptionError naming the file and the byte offset of the first bad record. Reading back
never returns bytes that were not written.
"""

from __future__ import annotations

import itertools
import logging
import os
import random
import shutil
import struct
from dataclasses import dataclass
from pathlib import Path

import pytest
from crc32c import crc32c

from minikv_core.storage.errors import WalCorruptionError, WalLockedError
from minikv_core.storage.wal import FindingKind, Position, Wal, repair, verify
from minikv_core.storage.wal_format import SEGMENT_HEADER_SIZE
from minikv_core.storage.wal_records import RecordType
from tests.storage.wal_support import (
    SMALL_SEGMENT_BYTES,
    TEST_SEGMENT_BYTES,
    segment_paths,
    write_records,
)

Written = list[tuple[Position, RecordType, bytes]]


@dataclass(frozen=True)
class Frame:
    index: int  # in the whole log
    segment: int
    offset: int
    end: int


def frames_of(written: Written) -> list[Frame]:
    return [
        Frame(i, p.segment, p.offset, p.offset + 9 + len(payload))
        for i, (p, _, payload) in enumerate(written)
    ]


class Builder:
    """Builds each distinct test WAL once per module and copies it into each test's directory.

    Writing a WAL costs one fdatasync per batch; copying the finished files costs none, and
    the copy is byte-identical, so each test still damages its own private WAL.
    """

    def __init__(self, cache: Path) -> None:
        self._cache = cache
        self._built: dict[tuple[int, int, bool], tuple[Path, Written]] = {}

    def __call__(
        self, directory: Path, count: int = 250, seed: int = 0, *, preallocate: bool = True
    ) -> Written:
        key = (count, seed, preallocate)
        if key not in self._built:
            source = self._cache / f"wal-{count}-{seed}-{preallocate}"
            with Wal.open(
                source, segment_size_bytes=SMALL_SEGMENT_BYTES, preallocate=preallocate
            ) as wal:
                written = write_records(wal, count, seed, batch_max=3, size_max=150)
                assert len(wal.segments()) >= 6, "the tests need several sealed segments"
            self._built[key] = (source, written)
        source, written = self._built[key]
        shutil.copytree(source, directory, dirs_exist_ok=True)
        (directory / "LOCK").unlink()
        return written


@pytest.fixture(scope="module")
def build(tmp_path_factory: pytest.TempPathFactory) -> Builder:
    return Builder(tmp_path_factory.mktemp("wal-cache"))


def read_all(directory: Path, segment_size_bytes: int = SMALL_SEGMENT_BYTES) -> Written:
    with Wal.open(directory, segment_size_bytes=segment_size_bytes) as wal:
        return [(e.position, e.record_type, e.payload) for e in wal.read()]


def patch(path: Path, offset: int, data: bytes) -> None:
    with path.open("r+b") as file:
        file.seek(offset)
        file.write(data)


def flip(path: Path, offset: int) -> None:
    with path.open("r+b") as file:
        file.seek(offset)
        byte = file.read(1)[0]
        file.seek(offset)
        file.write(bytes([byte ^ 0x5A]))


def segment_file(directory: Path, sequence: int) -> Path:
    return directory / f"{sequence:016d}.wal"


# ------------------------------------------------------------------------ torn tails


def test_torn_tail_partial_last_record_is_truncated(tmp_path: Path, build: Builder) -> None:
    written = build(tmp_path)
    last = frames_of(written)[-1]
    # Only the first half of the last record reached the disk; the rest is still zeros.
    path = segment_file(tmp_path, last.segment)
    middle = (last.offset + last.end) // 2
    patch(path, middle, bytes(last.end - middle))
    assert read_all(tmp_path) == written[:-1]


def test_torn_tail_partial_last_record_without_preallocation_is_truncated(
    tmp_path: Path, build: Builder
) -> None:
    written = build(tmp_path, preallocate=False)
    last = frames_of(written)[-1]
    path = segment_file(tmp_path, last.segment)
    os.truncate(path, last.offset + 5)  # even the frame header is cut
    with Wal.open(tmp_path, segment_size_bytes=SMALL_SEGMENT_BYTES, preallocate=False) as wal:
        assert [(e.position, e.record_type, e.payload) for e in wal.read()] == written[:-1]
    assert path.stat().st_size == last.offset


def test_torn_tail_with_bad_crc_reaching_end_of_data_is_truncated(
    tmp_path: Path, build: Builder
) -> None:
    written = build(tmp_path)
    last = frames_of(written)[-1]
    flip(segment_file(tmp_path, last.segment), last.end - 1)
    assert read_all(tmp_path) == written[:-1]


def test_zeroed_preallocated_space_is_the_end_of_the_log(tmp_path: Path, build: Builder) -> None:
    written = build(tmp_path)
    active = segment_file(tmp_path, frames_of(written)[-1].segment)
    assert active.stat().st_size == SMALL_SEGMENT_BYTES
    assert active.read_bytes().endswith(bytes(64))
    assert read_all(tmp_path) == written
    assert verify(tmp_path).findings == ()


def test_torn_tail_is_logged_with_file_and_offset(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, build: Builder
) -> None:
    written = build(tmp_path)
    last = frames_of(written)[-1]
    flip(segment_file(tmp_path, last.segment), last.offset + 9)
    with caplog.at_level(logging.WARNING, logger="minikv_core.storage.wal"):
        read_all(tmp_path)
    messages = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(f"torn tail at byte {last.offset}" in m for m in messages), messages


def test_torn_bytes_are_erased_so_later_appends_cannot_resurrect_them(
    tmp_path: Path, build: Builder
) -> None:
    written = build(tmp_path)
    last = frames_of(written)[-1]
    path = segment_file(tmp_path, last.segment)
    flip(path, last.offset + 9)
    with Wal.open(tmp_path, segment_size_bytes=SMALL_SEGMENT_BYTES) as wal:
        end = wal.end_position
        assert end == Position(last.segment, last.offset)
    data = path.read_bytes()
    assert data[end.offset :] == bytes(len(data) - end.offset)
    with Wal.open(tmp_path, segment_size_bytes=SMALL_SEGMENT_BYTES) as wal:
        wal.append_sync([(RecordType.KV_BATCH, b"new")])
    assert read_all(tmp_path) == [*written[:-1], (end, RecordType.KV_BATCH, b"new")]


def test_garbage_in_the_zeroed_space_after_the_last_record_is_cut(
    tmp_path: Path, build: Builder
) -> None:
    written = build(tmp_path)
    last = frames_of(written)[-1]
    patch(segment_file(tmp_path, last.segment), last.end + 100, b"\x07garbage")
    assert read_all(tmp_path) == written


def test_last_record_of_a_single_record_log_torn(tmp_path: Path) -> None:
    with Wal.open(tmp_path, segment_size_bytes=TEST_SEGMENT_BYTES) as wal:
        wal.append_sync([(RecordType.KV_BATCH, b"only")])
    flip(segment_file(tmp_path, 1), SEGMENT_HEADER_SIZE + 9)
    with Wal.open(tmp_path, segment_size_bytes=TEST_SEGMENT_BYTES) as wal:
        assert list(wal.read()) == []
        assert wal.end_position == Position(1, SEGMENT_HEADER_SIZE)


# ------------------------------------------------------------------------ corruption


def test_bad_record_mid_segment_is_reported(tmp_path: Path, build: Builder) -> None:
    written = build(tmp_path)
    frames = frames_of(written)
    active = frames[-1].segment
    victim = [f for f in frames if f.segment == active][1]  # valid records follow it
    path = segment_file(tmp_path, active)
    flip(path, victim.end - 1)
    with pytest.raises(WalCorruptionError) as caught:
        read_all(tmp_path)
    assert (caught.value.path, caught.value.offset) == (path, victim.offset)
    assert "checksum mismatch" in caught.value.reason
    assert "a valid record follows" in caught.value.reason
    assert f"{path}: corruption at byte offset {victim.offset}" in str(caught.value)


def test_bad_record_type_mid_segment_is_reported(tmp_path: Path, build: Builder) -> None:
    written = build(tmp_path)
    frames = frames_of(written)
    victim = frames[-3]
    path = segment_file(tmp_path, victim.segment)
    payload = written[victim.index][2]
    # A frame with an unknown type and a CRC that is valid for it: not a torn write.
    patch(path, victim.offset + 4, struct.pack("<IB", crc32c(payload, crc32c(b"\x63")), 0x63))
    with pytest.raises(WalCorruptionError, match="unknown record type 99") as caught:
        read_all(tmp_path)
    assert (caught.value.path, caught.value.offset) == (path, victim.offset)


def test_unknown_type_with_valid_crc_at_the_tail_is_not_dropped_silently(
    tmp_path: Path, build: Builder
) -> None:
    written = build(tmp_path)
    last = frames_of(written)[-1]
    path = segment_file(tmp_path, last.segment)
    payload = written[-1][2]
    patch(path, last.offset + 4, struct.pack("<IB", crc32c(payload, crc32c(b"\xc8")), 0xC8))
    with pytest.raises(WalCorruptionError, match="checksum is valid") as caught:
        read_all(tmp_path)
    assert caught.value.offset == last.offset


def test_bad_record_at_the_end_of_a_sealed_segment_is_reported(
    tmp_path: Path, build: Builder
) -> None:
    written = build(tmp_path)
    frames = frames_of(written)
    victim = next(f for f, g in itertools.pairwise(frames) if g.segment != f.segment)
    path = segment_file(tmp_path, victim.segment)
    flip(path, victim.end - 1)
    with pytest.raises(WalCorruptionError, match="in a sealed segment") as caught:
        read_all(tmp_path)
    assert (caught.value.path, caught.value.offset) == (path, victim.offset)


def test_sealed_segment_cut_at_a_record_boundary_is_reported(
    tmp_path: Path, build: Builder
) -> None:
    written = build(tmp_path)
    frames = frames_of(written)
    victim = next(f for f, g in itertools.pairwise(frames) if g.segment != f.segment)
    os.truncate(segment_file(tmp_path, victim.segment), victim.offset)
    with pytest.raises(WalCorruptionError, match="records are missing") as caught:
        read_all(tmp_path)
    assert (caught.value.path, caught.value.offset) == (
        segment_file(tmp_path, victim.segment + 1),
        0,
    )


def test_missing_middle_segment_is_reported(tmp_path: Path, build: Builder) -> None:
    build(tmp_path)
    segment_file(tmp_path, 3).unlink()
    with pytest.raises(WalCorruptionError, match="segment 3 before this one is missing") as caught:
        read_all(tmp_path)
    assert (caught.value.path, caught.value.offset) == (segment_file(tmp_path, 4), 0)


def test_corrupt_segment_header_is_reported_even_in_the_last_segment(
    tmp_path: Path, build: Builder
) -> None:
    written = build(tmp_path)
    last_segment = frames_of(written)[-1].segment
    flip(segment_file(tmp_path, last_segment), 20)
    with pytest.raises(WalCorruptionError, match="segment header checksum mismatch") as caught:
        read_all(tmp_path)
    assert caught.value.offset == 0


def test_file_that_is_not_a_segment_is_reported_by_magic(tmp_path: Path, build: Builder) -> None:
    build(tmp_path)
    patch(segment_file(tmp_path, 2), 0, b"NOTAWAL!")
    with pytest.raises(WalCorruptionError, match="not a minikv WAL segment"):
        read_all(tmp_path)


def test_zeroed_record_header_followed_by_valid_records_is_reported(
    tmp_path: Path, build: Builder
) -> None:
    """A hole before valid records (e.g. a lost page) could be hiding acknowledged records."""
    written = build(tmp_path)
    frames = frames_of(written)
    active = frames[-1].segment
    victim = next(f for f in frames if f.segment == active)
    patch(segment_file(tmp_path, active), victim.offset, bytes(victim.end - victim.offset))
    with pytest.raises(WalCorruptionError, match="zeroed record header") as caught:
        read_all(tmp_path)
    assert caught.value.offset == victim.offset


def test_huge_length_mid_segment_is_reported_not_mistaken_for_a_torn_tail(
    tmp_path: Path, build: Builder
) -> None:
    written = build(tmp_path)
    frames = frames_of(written)
    active = frames[-1].segment
    victim = next(f for f in frames if f.segment == active)
    patch(segment_file(tmp_path, active), victim.offset, struct.pack("<I", 0xFFFF0000))
    with pytest.raises(WalCorruptionError, match="exceeds the record limit") as caught:
        read_all(tmp_path)
    assert caught.value.offset == victim.offset


# ----------------------------------------------------- seeded random damage, many cases


def check_outcome(directory: Path, written: Written, segment: int, offset: int, seed: int) -> None:
    """Damage at (segment, offset): open recovers a correct prefix or names the bad record."""
    frames = frames_of(written)
    last_segment = frames[-1].segment
    try:
        recovered = read_all(directory)
    except WalCorruptionError as exc:
        boundaries = {(f.segment, f.offset) for f in frames} | {
            (s, 0) for s in range(1, last_segment + 1)
        }
        sequence = int(exc.path.name.split(".")[0])
        assert (sequence, exc.offset) in boundaries, f"seed={seed}: {exc}"
        assert (sequence, exc.offset) <= (segment, offset) or exc.offset == 0, f"seed={seed}"
        return
    # Recovered: only the active segment may lose anything, and only its last record.
    assert recovered == written[: len(recovered)], f"seed={seed}: wrong data read back"
    assert segment == last_segment, f"seed={seed}: damage in sealed segment {segment} accepted"
    damaged = [f for f in frames if f.segment == segment and f.offset <= offset < f.end]
    if damaged:
        assert len(recovered) >= damaged[0].index, f"seed={seed}: lost records before damage"
    assert len(recovered) >= len(written) - 1, f"seed={seed}: dropped more than a torn tail"


def test_random_byte_flips_recover_a_prefix_or_name_the_bad_record(
    tmp_path: Path, build: Builder
) -> None:
    base = tmp_path / "base"
    written = build(base, seed=21)
    sizes = {int(p.name.split(".")[0]): p.stat().st_size for p in segment_paths(base)}
    for seed in range(200):
        rng = random.Random(seed)
        case = tmp_path / f"case{seed}"
        shutil.copytree(base, case)
        segment = rng.choice(sorted(sizes))
        # Half the time aim at the last records, where torn tails and their limits live.
        if rng.random() < 0.5:
            segment = max(sizes)
            used = max(f.end for f in frames_of(written) if f.segment == segment)
            offset = rng.randrange(max(SEGMENT_HEADER_SIZE, used - 300), used + 64)
        else:
            offset = rng.randrange(sizes[segment])
        flip(segment_file(case, segment), offset)
        check_outcome(case, written, segment, offset, seed)
        shutil.rmtree(case)


def test_random_truncations_recover_a_prefix_or_name_the_bad_record(
    tmp_path: Path, build: Builder
) -> None:
    base = tmp_path / "base"
    written = build(base, seed=22)
    frames = frames_of(written)
    sizes = {int(p.name.split(".")[0]): p.stat().st_size for p in segment_paths(base)}
    last_segment = max(sizes)
    for seed in range(120):
        rng = random.Random(seed)
        case = tmp_path / f"case{seed}"
        shutil.copytree(base, case)
        segment = rng.choice(sorted(sizes))
        cut = rng.randrange(sizes[segment])
        os.truncate(segment_file(case, segment), cut)
        if segment == last_segment and cut >= SEGMENT_HEADER_SIZE:
            # The active segment cut anywhere after its header: exactly the whole records
            # before the cut survive (a cut can only ever look like a torn tail).
            expected = [
                w
                for w, f in zip(written, frames, strict=True)
                if f.segment < segment or f.end <= cut
            ]
            assert read_all(case) == expected, f"seed={seed}: cut at {cut}"
        else:
            with pytest.raises(WalCorruptionError) as caught:
                read_all(case)
            assert caught.value.offset <= cut, f"seed={seed}"
            check_outcome(case, written, segment, cut, seed)
        shutil.rmtree(case)


# ------------------------------------------------------------------------ verify, repair


def test_verify_reports_findings_without_changing_any_file(tmp_path: Path, build: Builder) -> None:
    written = build(tmp_path)
    frames = frames_of(written)
    victim = frames[5]
    path = segment_file(tmp_path, victim.segment)
    flip(path, victim.offset + 10)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    report = verify(tmp_path)
    assert not report.ok
    assert [(f.kind, f.path, f.offset) for f in report.findings] == [
        (FindingKind.CORRUPTION, path, victim.offset)
    ]
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_verify_calls_back_for_every_valid_record(tmp_path: Path, build: Builder) -> None:
    written = build(tmp_path)
    seen: list[tuple[Position, int, bytes]] = []
    verify(tmp_path, lambda p, t, payload: seen.append((p, t, bytes(payload))))
    assert seen == [(p, int(t), payload) for p, t, payload in written]


def test_verify_reports_a_torn_tail_as_ok_and_does_not_cut_it(
    tmp_path: Path, build: Builder
) -> None:
    written = build(tmp_path)
    last = frames_of(written)[-1]
    path = segment_file(tmp_path, last.segment)
    flip(path, last.end - 1)
    before = path.read_bytes()
    report = verify(tmp_path)
    assert report.ok
    assert [(f.kind, f.offset) for f in report.findings] == [(FindingKind.TORN_TAIL, last.offset)]
    assert path.read_bytes() == before


def test_repair_cuts_at_the_first_bad_record_and_removes_later_segments(
    tmp_path: Path, build: Builder
) -> None:
    written = build(tmp_path)
    frames = frames_of(written)
    victim = next(f for f in frames if f.segment == 3 and f.offset > SEGMENT_HEADER_SIZE)
    path = segment_file(tmp_path, 3)
    flip(path, victim.offset + 12)
    later = [p for p in segment_paths(tmp_path) if int(p.name.split(".")[0]) > 3]
    later_records = sum(1 for f in frames if f.segment > 3)
    with pytest.raises(WalCorruptionError):
        read_all(tmp_path)

    plan = repair(tmp_path, dry_run=True)
    assert plan.dry_run and plan.changed
    assert plan.truncated is not None
    assert (plan.truncated.path, plan.truncated.offset) == (path, victim.offset)
    # A sealed segment ends at its last record: everything from the bad one on is dropped.
    assert plan.truncated.bytes_dropped == path.stat().st_size - victim.offset
    assert [r.path for r in plan.removed_segments] == later
    assert sum(r.records_readable for r in plan.removed_segments) == later_records
    assert all(p.exists() for p in later), "a dry run changes nothing"

    done = repair(tmp_path)
    assert done.truncated == plan.truncated
    assert done.removed_segments == plan.removed_segments
    assert not any(p.exists() for p in later)
    assert path.stat().st_size == victim.offset
    assert read_all(tmp_path) == written[: victim.index]
    assert repair(tmp_path).changed is False


def test_repair_of_a_bad_header_removes_that_whole_segment(tmp_path: Path, build: Builder) -> None:
    written = build(tmp_path)
    frames = frames_of(written)
    flip(segment_file(tmp_path, 2), 3)
    report = repair(tmp_path)
    assert report.truncated is None
    assert next(r.path.name for r in report.removed_segments) == "0000000000000002.wal"
    assert read_all(tmp_path) == [w for w, f in zip(written, frames, strict=True) if f.segment == 1]
    # The log continues after the repair.
    with Wal.open(tmp_path, segment_size_bytes=SMALL_SEGMENT_BYTES) as wal:
        position = wal.append_sync([(RecordType.KV_BATCH, b"after repair")])
        assert position.segment == 1


def test_repair_refuses_a_directory_in_use(tmp_path: Path) -> None:
    with Wal.open(tmp_path, segment_size_bytes=TEST_SEGMENT_BYTES) as wal:
        wal.append_sync([(RecordType.KV_BATCH, b"x")])
        with pytest.raises(WalLockedError):
            repair(tmp_path)


def test_power_loss_during_the_last_write_costs_at_most_that_write(tmp_path: Path) -> None:
    """After a power cut, any 512-byte sector of the last (unsynced) write may be missing.

    Recovery keeps every earlier record and a prefix of the last batch; or, when a lost
    sector lies before sectors that did persist (valid records after a hole), it refuses to
    guess and reports the offset, and repair then drops only bytes of that last write.
    """
    base = tmp_path / "base"
    segment_size = 64 * 1024
    with Wal.open(base, segment_size_bytes=segment_size) as wal:
        before = write_records(wal, 60, seed=31, batch_max=4, size_max=150)
        last_batch = [(RecordType.RAFT_ENTRY, bytes([1 + i % 250]) * 300) for i in range(25)]
        start = wal.append_sync(last_batch)
    batch_end = start.offset + sum(9 + len(p) for _, p in last_batch)
    path_name = segment_file(base, start.segment).name
    outcomes = {"recovered": 0, "reported": 0}
    for seed in range(60):
        rng = random.Random(seed)
        case = tmp_path / f"case{seed}"
        shutil.copytree(base, case)
        path = case / path_name
        sectors = range(start.offset // 512, (batch_end - 1) // 512 + 1)
        if seed % 2:
            # Written back in order, cut short: a suffix of the sectors is lost.
            cut = rng.choice(sectors)
            lost = [s for s in sectors if s >= cut]
        else:
            # Written back in any order: any subset is lost.
            lost = [s for s in sectors if rng.random() < 0.3]
        for sector in lost:
            lo, hi = max(sector * 512, start.offset), min((sector + 1) * 512, batch_end)
            patch(path, lo, bytes(hi - lo))
        try:
            recovered = read_all(case, segment_size)
        except WalCorruptionError as exc:
            outcomes["reported"] += 1
            assert start.offset <= exc.offset < batch_end, f"seed={seed}: {exc}"
            repair(case)
            recovered = read_all(case, segment_size)
        else:
            outcomes["recovered"] += 1
        assert recovered[: len(before)] == before, f"seed={seed}: an earlier record was lost"
        tail = [(t, p) for _, t, p in recovered[len(before) :]]
        assert tail == last_batch[: len(tail)], f"seed={seed}: not a prefix of the last batch"
        shutil.rmtree(case)
    assert outcomes["recovered"] and outcomes["reported"], outcomes
