"""`bench/wal_append_cost.py` at a tiny size: both systems measured, numbers consistent."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.wal_append_cost import main


def test_a_tiny_run_reports_both_systems_and_leaves_nothing_behind(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([str(tmp_path), "--appends", "20", "--payload-bytes", "512", "--json"]) == 0
    rows = {row["system"]: row for row in map(json.loads, capsys.readouterr().out.splitlines())}
    assert set(rows) == {"wal", "floor"}
    for row in rows.values():
        assert row["appends"] == 20 and row["payload_bytes"] == 512
        assert 0 < row["sync_mean_us"] <= row["mean_us"]
        assert row["outside_sync_mean_us"] == pytest.approx(
            row["mean_us"] - row["sync_mean_us"], abs=0.2
        )
    assert list(tmp_path.iterdir()) == []  # the scratch directory is removed


def test_bad_arguments_are_refused_with_a_reason(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([str(tmp_path / "missing")])
    assert exit_info.value.code == 2
    assert "is not a directory" in capsys.readouterr().err
