"""`minikv bench …`: benchmarks that print comparable numbers, side by side with a peer."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from minikv_core.storage.bench import BenchConfig, WorkloadResult, run
from minikv_tui.errors import EXIT_USAGE, UserError

app = typer.Typer(
    help="Benchmarks: each prints minikv and a peer measured in the same run, as a ratio.",
    no_args_is_help=True,
)


@app.command("engine")
def engine(
    keys: Annotated[int, typer.Option(help="Keys in the data set for gets, scans, reopen.")] = (
        1_000_000
    ),
    value_size: Annotated[int, typer.Option("--value-size", help="Value size in bytes.")] = 100,
    gets: Annotated[int, typer.Option(help="Random point gets to time.")] = 200_000,
    directory: Annotated[
        Path | None,
        typer.Option("--dir", help="Where to put the data (default: a temporary directory)."),
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="One JSON object per line, no table.")
    ] = False,
) -> None:
    """The storage engine (WAL + LSM `Store`) against sqlite3 (WAL, synchronous=FULL).

    Workloads: durable puts in batches of 1 and 64, random point gets after reopen, prefix
    scans of 1,000 keys, and the reopen time and memory of the loaded data set.
    """
    if keys < 1_000 or value_size < 1 or gets < 1:
        raise UserError(
            "--keys must be >= 1000, --value-size and --gets >= 1.", exit_code=EXIT_USAGE
        )
    config = BenchConfig(keys=keys, value_size_bytes=value_size, gets=gets)
    stdout = Console()
    stderr = Console(stderr=True)
    if directory is not None:
        directory.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="minikv-bench-", dir=directory) as tmp:
        results: list[WorkloadResult] = []
        with stderr.status("starting") as status:
            for result in run(config, Path(tmp), status.update):
                results.append(result)
                if as_json:
                    print(result.to_json(), flush=True)
    if not as_json:
        stdout.print(results_table(results))


def results_table(results: list[WorkloadResult]) -> Table:
    table = Table(title="minikv engine vs sqlite3 (same run)")
    for column in (
        "workload",
        "minikv ops/s",
        "sqlite ops/s",
        "ratio",
        "minikv p50/p99 µs",
        "sqlite p50/p99 µs",
    ):
        table.add_column(column, justify="left" if column == "workload" else "right")
    by_key = {(r.workload, r.system): r for r in results}
    for workload in dict.fromkeys(r.workload for r in results):
        ours, peer = by_key.get((workload, "minikv")), by_key.get((workload, "sqlite"))
        if ours is None or peer is None:
            continue
        name = workload
        if ours.rss_mib is not None and peer.rss_mib is not None:
            name += f" (rss {ours.rss_mib:.0f} / {peer.rss_mib:.0f} MiB)"
        table.add_row(
            name,
            f"{ours.ops_per_s:,.1f}",
            f"{peer.ops_per_s:,.1f}",
            f"{ours.ops_per_s / peer.ops_per_s:.2f}x",
            f"{ours.p50_us:,.0f} / {ours.p99_us:,.0f}",
            f"{peer.p50_us:,.0f} / {peer.p99_us:,.0f}",
        )
    return table
