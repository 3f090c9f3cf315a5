"""`minikv sstable inspect` through Typer's CliRunner."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from minikv_core.storage.sstable import TableWriter
from minikv_tui.commands.sstable import app
from minikv_tui.errors import EXIT_FAILURE, EXIT_USAGE, UserError

ENTRIES = 500


def invoke(*args: str) -> Result:
    result = CliRunner().invoke(app, list(args))
    assert "Traceback" not in result.output
    return result


def user_error(result: Result) -> UserError:
    assert isinstance(result.exception, UserError), result.exception
    return result.exception


@pytest.fixture
def table_path(tmp_path: Path) -> Path:
    writer = TableWriter(tmp_path / "000007.sst", block_size_bytes=512)
    for i in range(ENTRIES):
        writer.add(b"user:%05d" % i, None if i % 10 == 0 else b"v" * 30)
    return writer.finish().path


def test_inspect_json_reports_counts_bloom_and_every_block(table_path: Path) -> None:
    result = invoke("inspect", str(table_path), "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["entry_count"] == ENTRIES
    assert report["tombstone_count"] == ENTRIES // 10
    assert bytes.fromhex(report["smallest_key_hex"]) == b"user:00000"
    assert bytes.fromhex(report["largest_key_hex"]) == b"user:%05d" % (ENTRIES - 1)
    assert report["bloom"]["bits_per_key_configured"] == 12
    assert 12 <= report["bloom"]["bits_per_key_actual"] < 12.2
    assert report["bloom"]["probes"] == 5
    assert report["block_count"] == len(report["blocks"]) > 10
    assert report["bad_block_count"] == 0
    assert all(block["crc_ok"] for block in report["blocks"])
    assert sum(block["entry_count"] for block in report["blocks"]) == ENTRIES


def test_inspect_table_lists_summary_and_first_blocks(table_path: Path) -> None:
    result = invoke("inspect", str(table_path))
    assert result.exit_code == 0, result.output
    assert "user:00000 .. user:00499" in result.output
    assert "(50 tombstones)" in result.output
    assert "--all-blocks for all" in result.output
    assert "ok" in result.output


def test_inspect_damaged_block_prints_report_and_exits_1(table_path: Path) -> None:
    blocks = json.loads(invoke("inspect", str(table_path), "--json").stdout)["blocks"]
    victim = blocks[3]
    data = bytearray(table_path.read_bytes())
    data[victim["offset"] + 10] ^= 0x40
    table_path.write_bytes(bytes(data))
    result = invoke("inspect", str(table_path), "--json")
    error = user_error(result)
    assert error.exit_code == EXIT_FAILURE
    assert f"block 3 at byte offset {victim['offset']}" in error.message
    report = json.loads(result.stdout)
    assert [b["number"] for b in report["blocks"] if not b["crc_ok"]] == [3]
    assert "CRC mismatch" in report["blocks"][3]["error"]
    # The hint names commands to run, not "re-sync the shard".
    assert "`minikv cluster repair`" in error.hint
    # The human-readable report lists the damaged block even beyond the first rows.
    text = invoke("inspect", str(table_path))
    assert "BAD" in text.output


def test_inspect_file_that_is_not_an_sstable_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("definitely not a table\n" * 10)
    error = user_error(invoke("inspect", str(path)))
    assert error.exit_code == EXIT_FAILURE
    assert "is not a readable minikv SSTable" in error.message
    assert "bad magic" in error.message


def test_inspect_truncated_table_is_a_clear_error(table_path: Path) -> None:
    data = table_path.read_bytes()
    table_path.write_bytes(data[: len(data) // 2])
    error = user_error(invoke("inspect", str(table_path)))
    assert "is not a readable minikv SSTable" in error.message
    assert "`minikv cluster repair" in error.hint


def test_inspect_missing_file_is_a_usage_error(tmp_path: Path) -> None:
    error = user_error(invoke("inspect", str(tmp_path / "nope.sst")))
    assert error.exit_code == EXIT_USAGE
    assert "no such file" in error.message


def test_inspect_directory_is_a_usage_error(tmp_path: Path) -> None:
    error = user_error(invoke("inspect", str(tmp_path)))
    assert error.exit_code == EXIT_USAGE
