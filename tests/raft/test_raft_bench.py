"""The throughput benchmark's entry point runs the real replication loop to completion."""

from __future__ import annotations

import json

import pytest

from minikv_core.raft import bench


def test_bench_commits_every_entry_on_all_nodes() -> None:
    result = bench.run(3000, 250, 100, 1000)
    assert result.entries == 3000
    assert result.ready_cycles > 3000 // 250  # at least one cycle per batch on the leader
    assert result.messages > 0
    assert result.entries_per_second > 0


def test_bench_one_by_one_mode_uses_single_proposals() -> None:
    result = bench.run(1000, 100, 10, 500, one_by_one=True)
    assert result.one_by_one
    assert result.entries == 1000


def test_bench_json_output_is_machine_readable(capsys: pytest.CaptureFixture[str]) -> None:
    assert bench.main(["--entries", "2000", "--batch", "200", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["benchmark"] == "raft_core_3_nodes_in_memory"
    assert report["entries"] == 2000
    assert report["entries_per_second"] > 0


def test_bench_rejects_nonsense_arguments() -> None:
    with pytest.raises(SystemExit):
        bench.main(["--entries", "0"])
