"""`minikv bench …`: benchmarks that print comparable numbers.

`minikv bench --endpoints …` (no sub-command) puts closed-loop load on a running cluster and
reports throughput and latency percentiles (`--workload txn` / `txn1`: transactions of two
puts on two shards / on one shard, each counted as one op); `minikv bench engine` measures the
storage engine against sqlite3 in the same run. The side-by-side run against etcd is
`bench/cluster_vs_etcd.py`, which drives both systems with the same generator
(`minikv_tui.loadgen`).
"""

from __future__ import annotations

import asyncio
import json
import tempfile
import time
from collections.abc import Coroutine
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Final, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from minikv_core.storage import speedups
from minikv_core.storage.bench import BenchConfig, SyncFloorSystem, WorkloadResult, run
from minikv_tui.errors import EXIT_USAGE, UserError
from minikv_tui.loadgen import CLIENTS_MAX, TXN_WORKLOADS, LoadGenerator, LoadSummary

T = TypeVar("T")

KEY_PREFIX: Final = b"bench/"
VALUE_SIZE_MAX: Final = 1 << 20
"""The node's default value limit: larger values would only measure refusals."""
DURATION_S_MAX: Final = 24 * 3600.0
CONNECT_TIMEOUT_S: Final = 5.0

app = typer.Typer(
    help=(
        "Benchmarks. Without a sub-command: closed-loop load on a running cluster "
        "(`minikv bench --endpoints 127.0.0.1:9001 --clients 64 --duration 10 --workload put`), "
        "throughput and p50/p90/p99/max latency; --workload txn / txn1 times transactions. "
        "`minikv bench engine`: the storage engine "
        "against sqlite3."
    ),
    invoke_without_command=True,
    no_args_is_help=False,
    subcommand_metavar="[engine …]",
)


class WorkloadChoice(StrEnum):
    put = "put"
    get = "get"
    mixed = "mixed"
    txn = "txn"
    txn1 = "txn1"


PRELOADED: Final = frozenset({WorkloadChoice.get, WorkloadChoice.mixed})


@app.callback(invoke_without_command=True)
def cluster(
    ctx: typer.Context,
    *,
    endpoints: Annotated[
        str | None,
        typer.Option(
            "--endpoints",
            "-e",
            help="gRPC addresses host:port[,host:port…] of the cluster's nodes.",
        ),
    ] = None,
    cluster_name: Annotated[
        str | None,
        typer.Option(
            "--cluster",
            help="A local cluster by name (default: $MINIKV_CLUSTER, else the only one running).",
        ),
    ] = None,
    clients: Annotated[
        int, typer.Option(help="Concurrent closed-loop clients (one request in flight each).")
    ] = 64,
    duration: Annotated[float, typer.Option(help="Measured seconds (after the warm-up).")] = 10.0,
    workload: Annotated[
        WorkloadChoice,
        typer.Option(
            help="put, get (linearizable, keys preloaded), mixed (50/50), txn (transactions "
            "putting 2 keys on 2 different shards) or txn1 (2 keys on one shard)."
        ),
    ] = WorkloadChoice.mixed,
    value_size: Annotated[int, typer.Option("--value-size", help="Value size in bytes.")] = 100,
    keys: Annotated[
        int, typer.Option(help="Key space, under the prefix bench/ (preloaded for get, mixed).")
    ] = 10_000,
    warmup: Annotated[float, typer.Option(help="Unmeasured seconds of load first.")] = 1.0,
    seed: Annotated[int, typer.Option(help="Seed of the key and operation choices.")] = 0,
    as_json: Annotated[
        bool, typer.Option("--json", help="One JSON object with the results, no table.")
    ] = False,
) -> None:
    """Load a running cluster and report throughput and latency.

    Writes go to keys under `bench/` in the cluster, overwriting what is there.
    """
    if ctx.invoked_subcommand is not None:
        return
    _check_arguments(clients, duration, value_size, keys, warmup)
    from minikv_tui.target import resolve_target  # the registry only when a run needs it

    target = resolve_target(endpoints, cluster_name)
    summary = _run(
        _measure(
            target.endpoints,
            workload=workload.value,
            clients=clients,
            duration_s=duration,
            warmup_s=warmup,
            value_size=value_size,
            keys=keys,
            seed=seed,
        )
    )
    if as_json:
        document: dict[str, Any] = {**summary.__dict__}
        document.update(endpoints=target.endpoints, value_size=value_size, keys=keys, seed=seed)
        print(json.dumps(document), flush=True)
    else:
        Console().print(summary_table(summary, target.describe(), value_size))
    if summary.ops == 0:
        raise UserError(
            f"no request succeeded in {summary.seconds:.1f} s"
            + (f": {summary.last_error}" if summary.last_error else ""),
            hint="Check that the cluster is up and ready (`minikv cluster status`).",
        )


def _check_arguments(
    clients: int, duration: float, value_size: int, keys: int, warmup: float
) -> None:
    problems = []
    if not 1 <= clients <= CLIENTS_MAX:
        problems.append(f"--clients must be in 1..{CLIENTS_MAX} (got {clients})")
    if not 0 < duration <= DURATION_S_MAX:
        problems.append(f"--duration must be > 0 seconds and at most a day (got {duration})")
    if not 0 <= value_size <= VALUE_SIZE_MAX:
        problems.append(f"--value-size must be in 0..{VALUE_SIZE_MAX} bytes (got {value_size})")
    if keys < 1:
        problems.append(f"--keys must be >= 1 (got {keys})")
    if not 0 <= warmup <= DURATION_S_MAX:
        problems.append(f"--warmup must be >= 0 seconds (got {warmup})")
    if problems:
        raise UserError(
            "; ".join(problems),
            hint="See `minikv bench --help`.",
            exit_code=EXIT_USAGE,
        )


def _run(coroutine: Coroutine[Any, Any, T]) -> T:
    """On uvloop when installed, as the nodes run: the client's own loop should not be the
    bottleneck being measured."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coroutine)
    result: T = uvloop.run(coroutine)
    return result


async def _measure(
    endpoints: list[str],
    *,
    workload: str,
    clients: int,
    duration_s: float,
    warmup_s: float,
    value_size: int,
    keys: int,
    seed: int,
) -> LoadSummary:
    from minikv_core.client import AsyncClient, ClientError, ShardRouting

    stderr = Console(stderr=True)
    try:
        client = AsyncClient(endpoints)
    except ClientError as error:
        raise UserError(f"--endpoints: {error}", exit_code=EXIT_USAGE) from None
    async with client:
        try:
            document = await client.shard_map(timeout_s=CONNECT_TIMEOUT_S)
        except ClientError as error:
            raise UserError(
                f"cannot reach the cluster at {', '.join(endpoints)}: {error}",
                hint="Is it running? Check the addresses (gRPC ports) given to --endpoints.",
            ) from None
        try:
            shard_count = ShardRouting.from_document(document).shard_count
        except ValueError as error:
            raise UserError(f"the cluster answered a bad shard map: {error}") from None
        if workload == WorkloadChoice.txn and shard_count < 2:
            raise UserError(
                "the txn workload puts keys on two shards, and this cluster has one",
                hint="Use --workload txn1 (two keys on one shard).",
                exit_code=EXIT_USAGE,
            )
        try:
            generator = LoadGenerator(
                client,
                workload=workload,  # type: ignore[arg-type]  # checked by WorkloadChoice
                clients=clients,
                keys=keys,
                value_size=value_size,
                seed=seed,
                prefix=KEY_PREFIX,
                shard_count=shard_count,
            )
        except ValueError as error:  # too few keys to place transactions as asked
            raise UserError(str(error), hint="Raise --keys.", exit_code=EXIT_USAGE) from None
        with stderr.status("starting") as status:
            if workload in PRELOADED:
                status.update(f"preloading {keys:,} keys")
                try:
                    await generator.preload()
                except ClientError as error:
                    raise UserError(
                        f"preloading the key space failed: {error}",
                        hint="Check that the cluster is ready (`minikv cluster status`).",
                    ) from None
            generator.start()
            try:
                await _progress(generator, warmup_s, "warming up", status.update)
                generator.reset_totals()
                await _progress(generator, duration_s, workload, status.update)
                summary = generator.totals()
            finally:
                await generator.stop()
    return summary


async def _progress(generator: LoadGenerator, seconds: float, what: str, update: Any) -> None:
    """Let the load run for `seconds` (the measured interval itself), showing each second's
    throughput so a stalled cluster is visible while it happens."""
    started = time.monotonic()
    generator.take_window()
    while (elapsed := time.monotonic() - started) < seconds:
        await asyncio.sleep(min(1.0, seconds - elapsed))
        window = generator.take_window()
        errors = f", {window.errors} errors" if window.errors else ""
        update(
            f"{what}: {min(time.monotonic() - started, seconds):.0f}/{seconds:.0f} s, "
            f"{window.ops_per_s:,.0f} ops/s{errors}"
        )


def summary_table(summary: LoadSummary, target: str, value_size: int) -> Table:
    table = Table(
        title=f"minikv bench: {summary.workload}, {summary.clients} clients, {value_size} B values",
        caption=f"cluster {target}, {summary.seconds:.1f} s measured",
    )
    for column in ("ops/s", "ops", "p50 ms", "p90 ms", "p99 ms", "max ms", "errors"):
        table.add_column(column, justify="right")

    def ms(value: float | None) -> str:
        return "-" if value is None else f"{value:.2f}"

    table.add_row(
        f"{summary.ops_per_s:,.0f}",
        f"{summary.ops:,}",
        ms(summary.p50_ms),
        ms(summary.p90_ms),
        ms(summary.p99_ms),
        ms(summary.max_ms),
        f"{summary.errors:,}",
    )
    if summary.workload in TXN_WORKLOADS:
        where = "2 shards" if summary.workload == "txn" else "one shard"
        table.caption = f"{table.caption}; one op = one transaction of 2 puts on {where}"
    if summary.misses:
        table.caption = f"{table.caption}; {summary.misses:,} reads found no key"
    if summary.last_error:
        table.caption = f"{table.caption}; last error: {summary.last_error}"
    return table


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

    Workloads: durable puts in batches of 1 and 64, then 3,000 batches of 64 in a row (long
    enough for memtable flushes and WAL checkpoints to land inside the timing), random point
    gets after reopen, prefix scans of 1,000 keys, and the reopen time and memory of the
    loaded data set. The puts also run on an fsync floor (one pwrite + fdatasync per batch, no
    store): the best ratio to sqlite any store syncing once per batch could reach on this disk.
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


LOOPS = {"c": "C", "python": "Python (C not built, or MINIKV_PURE_PYTHON=1)"}


def results_table(results: list[WorkloadResult]) -> Table:
    table = Table(title="minikv engine vs sqlite3 (same run)")
    for column in (
        "workload",
        "minikv ops/s",
        "sqlite ops/s",
        "ratio",
        "minikv p50/p99 µs",
        "sqlite p50/p99 µs",
        "fsync floor",
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
        floor = by_key.get((workload, SyncFloorSystem.name))
        table.add_row(
            name,
            f"{ours.ops_per_s:,.1f}",
            f"{peer.ops_per_s:,.1f}",
            f"{ours.ops_per_s / peer.ops_per_s:.2f}x",
            f"{ours.p50_us:,.0f} / {ours.p99_us:,.0f}",
            f"{peer.p50_us:,.0f} / {peer.p99_us:,.0f}",
            ""
            if floor is None
            else f"{floor.p50_us:,.0f} µs, {floor.ops_per_s / peer.ops_per_s:.2f}x",
        )
    table.caption = (
        "fsync floor: one pwrite + fdatasync of each batch's bytes and nothing else, its p50 and "
        "the best ratio to sqlite any store syncing once per batch could reach on this disk; "
        f"minikv's per-key loops in {LOOPS[speedups.IMPLEMENTATION]}"
    )
    return table
