"""`minikv wal inspect | verify | repair | bench` through Typer's CliRunner."""

from __future__ import annotations

import fcntl
import json
import os
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from minikv_core.storage.wal import Wal
from minikv_core.storage.wal_records import (
    KvBatch,
    KvOp,
    OpKind,
    RaftEntry,
    RaftHardState,
    encode_record,
)
from minikv_tui.commands.wal import app
from minikv_tui.errors import UserError

SEGMENT_BYTES = 4096


def invoke(*args: str, input: str | None = None) -> Result:
    result = CliRunner().invoke(app, list(args), input=input)
    assert "Traceback" not in result.output
    return result


def user_error(result: Result) -> UserError:
    assert isinstance(result.exception, UserError), result.exception
    return result.exception


@pytest.fixture(scope="module")
def built_wal(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A WAL of several segments holding Raft entries of groups 1 and 2 and other records."""
    directory = tmp_path_factory.mktemp("cli") / "wal"
    with Wal.open(directory, segment_size_bytes=SEGMENT_BYTES) as wal:
        for index in range(1, 101):
            wal.append_sync(
                [
                    encode_record(RaftEntry(1, 1, index, 0, b"a" * 40)),
                    encode_record(RaftEntry(2, 3, index + 1000, 0, b"b" * 20)),
                    encode_record(RaftHardState(1, 1, 0, index)),
                ]
            )
        wal.append_sync([encode_record(KvBatch(1, (KvOp(OpKind.PUT, b"k", b"v"),)))])
    return directory


@pytest.fixture
def wal_dir(built_wal: Path, tmp_path: Path) -> Path:
    """A private, byte-identical copy of `built_wal` for a test to read or damage."""
    directory = tmp_path / "wal"
    shutil.copytree(built_wal, directory)
    return directory


def corrupt_middle(directory: Path) -> tuple[Path, int]:
    """Flip a payload byte of the second record of segment 2; return (file, record offset)."""
    path = directory / "0000000000000002.wal"
    data = bytearray(path.read_bytes())
    first_length = int.from_bytes(data[32:36], "little")
    second = 32 + 9 + first_length
    data[second + 9 + 5] ^= 0xFF
    path.write_bytes(bytes(data))
    return path, second


def test_inspect_shows_a_table_of_segments_and_raft_ranges(wal_dir: Path) -> None:
    result = invoke("inspect", str(wal_dir))
    assert result.exit_code == 0, result.output
    assert "0000000000000001.wal" in result.output
    assert "active" in result.output and "sealed" in result.output
    assert "1: 1-" in result.output  # group 1 starts at index 1
    assert "301 records" in result.output.replace(",", "")
    assert "ok" in result.output


def test_inspect_json_has_per_group_index_ranges(wal_dir: Path) -> None:
    result = invoke("inspect", str(wal_dir), "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["ok"] is True
    assert report["record_count"] == 301
    segments = report["segments"]
    assert [s["state"] for s in segments] == ["sealed"] * (len(segments) - 1) + ["active"]
    assert all(s["crc"] == "ok" for s in segments)
    first = segments[0]["raft_groups"]
    assert first["1"]["first_index"] == 1
    assert first["2"]["first_index"] == 1001
    last = segments[-1]["raft_groups"]
    assert last["1"]["last_index"] == 100
    assert last["2"]["last_index"] == 1100
    assert segments[-1]["record_types"]["KV_BATCH"] == 1
    entries = sum(s["raft_groups"]["1"]["entries"] for s in segments if "1" in s["raft_groups"])
    assert entries == 100


def test_inspect_marks_a_corrupt_segment(wal_dir: Path) -> None:
    path, offset = corrupt_middle(wal_dir)
    result = invoke("inspect", str(wal_dir), "--json")
    assert result.exit_code == 0
    report = json.loads(result.output)
    assert report["ok"] is False
    bad = next(s for s in report["segments"] if s["name"] == path.name)
    assert bad["crc"] == "corrupt"
    assert bad["findings"][0]["offset"] == offset
    table = invoke("inspect", str(wal_dir))
    assert f"CORRUPT @ {offset}" in table.output


def test_verify_clean_wal_prints_one_ok_line(wal_dir: Path) -> None:
    result = invoke("verify", str(wal_dir))
    assert result.exit_code == 0, result.output
    assert result.output.startswith("ok: ")
    assert len(result.output.strip().splitlines()) == 1
    assert "301 records" in result.output


def test_verify_corrupt_wal_exits_1_naming_file_and_offset(wal_dir: Path) -> None:
    path, offset = corrupt_middle(wal_dir)
    result = invoke("verify", str(wal_dir))
    error = user_error(result)
    assert error.exit_code == 1
    assert str(path) in error.message
    assert f"byte offset {offset}" in error.message
    assert "minikv wal repair" in error.hint


def test_verify_does_not_cut_a_torn_tail(wal_dir: Path) -> None:
    active = sorted(wal_dir.glob("*.wal"))[-1]
    data = bytearray(active.read_bytes())
    end = len(data.rstrip(b"\0"))
    data[end - 1] ^= 0xFF  # the last record's last byte
    active.write_bytes(bytes(data))
    result = invoke("verify", str(wal_dir))
    assert result.exit_code == 0, result.output
    assert "torn tail" in result.output
    assert active.read_bytes() == bytes(data)


def test_repair_with_yes_truncates_and_removes_later_segments(wal_dir: Path) -> None:
    path, offset = corrupt_middle(wal_dir)
    segments_before = sorted(p.name for p in wal_dir.glob("*.wal"))
    result = invoke("repair", str(wal_dir), "--yes")
    assert result.exit_code == 0, result.output
    assert "Would drop" in result.output
    assert "repaired" in result.output
    assert path.stat().st_size == offset
    assert sorted(p.name for p in wal_dir.glob("*.wal")) == segments_before[:2]
    assert invoke("verify", str(wal_dir)).exit_code == 0
    with Wal.open(wal_dir, segment_size_bytes=SEGMENT_BYTES) as wal:
        assert len(list(wal.read())) > 0


def test_repair_declined_changes_nothing(wal_dir: Path) -> None:
    corrupt_middle(wal_dir)
    before = {p.name: p.read_bytes() for p in wal_dir.iterdir()}
    result = invoke("repair", str(wal_dir), input="n\n")
    error = user_error(result)
    assert "declined" in error.message
    assert error.exit_code == 1
    assert {p.name: p.read_bytes() for p in wal_dir.iterdir()} == before


def test_repair_confirmed_interactively(wal_dir: Path) -> None:
    path, offset = corrupt_middle(wal_dir)
    result = invoke("repair", str(wal_dir), input="y\n")
    assert result.exit_code == 0, result.output
    assert path.stat().st_size == offset


def test_repair_of_a_healthy_wal_does_nothing(wal_dir: Path) -> None:
    result = invoke("repair", str(wal_dir), "--yes")
    assert result.exit_code == 0
    assert "nothing to repair" in result.output


def test_repair_refuses_while_the_wal_is_open(wal_dir: Path) -> None:
    corrupt_middle(wal_dir)
    # A node holds this lock while it runs (`Wal.open` would refuse this corrupt WAL, so the
    # lock is taken the way `Wal.open` takes it).
    fd = os.open(wal_dir / "LOCK", os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        error = user_error(invoke("repair", str(wal_dir), "--yes"))
        assert "in use" in error.message
        assert "Stop the node" in error.hint
    finally:
        os.close(fd)


def test_repair_of_a_running_nodes_wal_refuses_before_asking(wal_dir: Path) -> None:
    """Without --yes, repair showed the plan and asked "Drop these bytes?" for a WAL a node
    holds, and only then refused: a person confirmed a repair that could not happen."""
    corrupt_middle(wal_dir)
    fd = os.open(wal_dir / "LOCK", os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        result = invoke("repair", str(wal_dir), input="y\n")
        error = user_error(result)
        assert "in use" in error.message
        assert "Drop these bytes" not in result.output
        assert "Would drop" not in result.output
    finally:
        os.close(fd)


def test_repair_that_would_empty_the_wal_warns_first(wal_dir: Path) -> None:
    """Damage in the first segment's header cuts the whole log; a node left without one
    refuses to start, so the plan says so before asking."""
    first = sorted(wal_dir.glob("*.wal"))[0]
    data = bytearray(first.read_bytes())
    data[0] ^= 0xFF  # the magic
    first.write_bytes(bytes(data))
    result = invoke("repair", str(wal_dir), input="n\n")
    assert "deletes every segment" in result.output
    assert "remove-node" in result.output
    assert first.read_bytes() == bytes(data), "declined: nothing changed"


def test_repair_that_keeps_part_of_the_log_does_not_warn(wal_dir: Path) -> None:
    corrupt_middle(wal_dir)
    result = invoke("repair", str(wal_dir), "--yes")
    assert result.exit_code == 0, result.output
    assert "deletes every segment" not in result.output


def test_verify_hint_covers_a_running_node(wal_dir: Path) -> None:
    """verify is lock-free and is run on live nodes' WALs; `wal repair` refuses those, so
    the hint also names what works while the node runs."""
    corrupt_middle(wal_dir)
    error = user_error(invoke("verify", str(wal_dir)))
    assert "minikv cluster repair" in error.hint


def test_repair_leaves_no_lock_file_in_a_directory_without_segments(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("not a wal")
    assert user_error(invoke("repair", str(tmp_path))).exit_code == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


@pytest.mark.parametrize("command", ["inspect", "verify", "repair"])
def test_missing_directory_is_a_usage_error(tmp_path: Path, command: str) -> None:
    error = user_error(invoke(command, str(tmp_path / "missing")))
    assert error.exit_code == 2
    assert "does not exist" in error.message


@pytest.mark.parametrize("command", ["inspect", "verify", "repair"])
def test_directory_without_segments_is_a_usage_error(tmp_path: Path, command: str) -> None:
    (tmp_path / "notes.txt").write_text("not a wal")
    error = user_error(invoke(command, str(tmp_path)))
    assert error.exit_code == 2
    assert "holds no WAL segments" in error.message


def test_inspect_and_verify_leave_a_running_wal_alone(tmp_path: Path) -> None:
    directory = tmp_path / "wal"
    with Wal.open(directory, segment_size_bytes=SEGMENT_BYTES) as wal:
        wal.append_sync([encode_record(RaftEntry(1, 1, 1, 0, b"x"))])
        before = {p.name: p.read_bytes() for p in directory.iterdir()}
        assert invoke("inspect", str(directory)).exit_code == 0
        assert invoke("verify", str(directory)).exit_code == 0
        assert {p.name: p.read_bytes() for p in directory.iterdir()} == before
        wal.append_sync([encode_record(RaftEntry(1, 1, 2, 0, b"y"))])


def test_bench_reports_durable_appends_as_json(tmp_path: Path) -> None:
    result = invoke("bench", "--appends", "64", "--dir", str(tmp_path), "--json")
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.output.splitlines()]
    assert {(r["mode"], r["preallocate"], r["records_per_append"]) for r in rows} == {
        ("append_sync", True, 1),
        ("append_sync", True, 64),
        ("append x64 tasks", True, 1),
        ("append_sync", False, 1),
        ("append_sync", False, 64),
        ("append x64 tasks", False, 1),
    }
    for row in rows:
        assert row["appends_per_s"] > 0
        if row["mode"] == "append_sync":
            assert row["syncs"] >= row["appends"]  # one fdatasync per durable append
        else:
            assert row["syncs"] < row["appends"]  # group commit shares them
    assert list(tmp_path.iterdir()) == []
