"""The engine benchmark's put rows on all three systems (a few batches: these check that the
numbers are produced and labelled, not their values), and the fsync floor writing what it
was given, durably, at the offsets it says."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console

from minikv_core.storage.bench import (
    SUSTAINED_WORKLOAD,
    SYSTEMS,
    BenchConfig,
    SyncFloorSystem,
    run,
)
from minikv_tui.commands.bench import results_table


def test_put_rows_come_from_every_system_with_a_floor_column(tmp_path: Path) -> None:
    config = BenchConfig(
        puts_only=True, put_batches_of_1=4, put_batches_of_64=3, put_batches_sustained=5
    )
    results = list(run(config, tmp_path, lambda _message: None))
    batches = {"put_batch_1": 4, "put_batch_64": 3 * 64, SUSTAINED_WORKLOAD: 5 * 64}
    assert {(r.workload, r.system) for r in results} == {
        (workload, system) for workload in batches for system in SYSTEMS
    }
    for result in results:
        assert result.ops == batches[result.workload]
        assert result.ops_per_s > 0 and 0 < result.p50_us <= result.p99_us
    console = Console(width=200, record=True)
    console.print(results_table(results))
    text = console.export_text()
    assert "fsync floor" in text
    assert text.count(" µs, ") == 3  # the floor's p50 and ratio on every put row
    assert list(tmp_path.iterdir()) == []  # every system's files removed


def test_the_floor_writes_each_batch_in_place(tmp_path: Path) -> None:
    floor = SyncFloorSystem(tmp_path / "floor")
    floor.open()
    try:
        floor.put_batch([(b"k1", b"v1"), (b"k2", b"v22")])
        floor.put_batch([(b"k3", b"v3")])
    finally:
        floor.close()
    data = (tmp_path / "floor" / "floor.bin").read_bytes()
    assert len(data) == SyncFloorSystem.FILE_BYTES  # preallocated: writes never extend it
    assert data.startswith(b"k1v1k2v22k3v3\0")


def test_a_full_run_reports_every_row_and_cleans_up(tmp_path: Path) -> None:
    """The read rows too (interleaved, on both loaded data sets), on a small data set."""
    config = BenchConfig(
        keys=2_000,
        gets=300,
        scans=4,
        put_batches_of_1=3,
        put_batches_of_64=2,
        put_batches_sustained=2,
    )
    results = list(run(config, tmp_path, lambda _message: None))
    rows = {(r.workload, r.system): r for r in results}
    for workload, ops in (("get_random", 300), ("scan_prefix_1000", 4), ("reopen", 1)):
        for system in ("minikv", "sqlite"):
            assert rows[workload, system].ops == ops
            assert rows[workload, system].ops_per_s > 0
    assert rows["reopen", "minikv"].rss_mib is not None
    assert len(results) == 3 * 3 + 2 * 3  # three put rows of three systems, three read rows
    assert list(tmp_path.iterdir()) == []
