"""`minikv wal …`: look into, check, repair and measure a node's write-ahead log.

`inspect` and `verify` only read: they take no lock and never cut a torn tail, so they are
safe on the WAL of a running node (whose last segment may then end in a write in progress,
shown as a torn tail). `repair` takes the WAL's lock, so it refuses to touch a running node.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from minikv_core.storage.errors import StorageError, WalDirectoryError, WalLockedError
from minikv_core.storage.wal import (
    Finding,
    FindingKind,
    Position,
    RepairReport,
    SegmentInfo,
    VerifyReport,
    Wal,
    check_not_in_use,
    repair,
    verify,
)
from minikv_core.storage.wal_format import parse_segment_file_name
from minikv_core.storage.wal_records import RecordType, raft_entry_group_and_index
from minikv_tui.errors import EXIT_FAILURE, EXIT_USAGE, UserError

app = typer.Typer(
    help="Inspect, verify, repair and benchmark a minikv write-ahead log directory.",
    no_args_is_help=True,
)

WalDirectory = Annotated[
    Path, typer.Argument(help="The WAL directory (holding 0000000000000001.wal, ...).")
]
AsJson = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")]


@dataclass
class _GroupRange:
    first_index: int
    last_index: int
    entries: int = 0


@dataclass
class _SegmentContents:
    record_types: dict[str, int] = field(default_factory=dict)
    groups: dict[int, _GroupRange] = field(default_factory=dict)
    undecodable: int = 0


@contextmanager
def _user_errors() -> Iterator[None]:
    """Storage errors a person can meet become one clear line with the right exit code."""
    try:
        yield
    except WalDirectoryError as exc:
        raise UserError(
            str(exc), hint="Pass the WAL directory of a node.", exit_code=EXIT_USAGE
        ) from None
    except WalLockedError as exc:
        raise UserError(str(exc), hint="Stop the node that uses it first.") from None
    except (StorageError, OSError) as exc:
        raise UserError(f"{type(exc).__name__}: {exc}") from None


def _scan(directory: Path) -> tuple[VerifyReport, dict[int, _SegmentContents]]:
    contents: dict[int, _SegmentContents] = {}
    type_names = {int(t): t.name for t in RecordType}

    def on_record(position: Position, record_type: int, payload: memoryview) -> None:
        segment = contents.get(position.segment)
        if segment is None:
            segment = contents[position.segment] = _SegmentContents()
        name = type_names[record_type]
        segment.record_types[name] = segment.record_types.get(name, 0) + 1
        if record_type == RecordType.RAFT_ENTRY:
            try:
                group_id, index = raft_entry_group_and_index(payload)
            except StorageError:
                segment.undecodable += 1
                return
            span = segment.groups.get(group_id)
            if span is None:
                span = segment.groups[group_id] = _GroupRange(index, index)
            span.first_index = min(span.first_index, index)
            span.last_index = max(span.last_index, index)
            span.entries += 1

    with _user_errors():
        report = verify(directory, on_record)
    return report, contents


def _size(size_bytes: int) -> str:
    value = float(size_bytes)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def _findings_by_path(report: VerifyReport) -> dict[Path, list[Finding]]:
    by_path: dict[Path, list[Finding]] = {}
    for finding in report.findings:
        by_path.setdefault(finding.path, []).append(finding)
    return by_path


def _crc_status(findings: list[Finding]) -> str:
    if not findings:
        return "ok"
    if any(f.kind is FindingKind.CORRUPTION for f in findings):
        return "corrupt"
    return "torn_tail"


def _finding_json(finding: Finding) -> dict[str, Any]:
    return {
        "kind": finding.kind.value,
        "path": str(finding.path),
        "offset": finding.offset,
        "reason": finding.reason,
        "bytes_after": finding.bytes_after,
    }


def _segment_json(
    segment: SegmentInfo, contents: _SegmentContents | None, findings: list[Finding]
) -> dict[str, Any]:
    contents = contents or _SegmentContents()
    return {
        "name": segment.name,
        "path": str(segment.path),
        "sequence": segment.sequence,
        "state": "active" if segment.active else "sealed",
        "size_bytes": segment.size_bytes,
        "used_bytes": segment.used_bytes,
        "record_count": segment.record_count,
        "first_record_ordinal": segment.first_record_ordinal,
        "record_types": contents.record_types,
        "raft_groups": {
            str(group_id): {
                "first_index": span.first_index,
                "last_index": span.last_index,
                "entries": span.entries,
            }
            for group_id, span in sorted(contents.groups.items())
        },
        "undecodable_raft_entries": contents.undecodable,
        "crc": _crc_status(findings),
        "findings": [_finding_json(f) for f in findings],
    }


def _report_json(report: VerifyReport, contents: dict[int, _SegmentContents]) -> str:
    by_path = _findings_by_path(report)
    return json.dumps(
        {
            "directory": str(report.directory),
            "ok": report.ok,
            "segment_count": len(report.segments),
            "record_count": report.record_count,
            "segments": [
                _segment_json(s, contents.get(s.sequence), by_path.get(s.path, []))
                for s in report.segments
            ],
            "findings": [_finding_json(f) for f in report.findings],
        },
        indent=2,
    )


def _describe(finding: Finding) -> str:
    return f"{finding.path}: byte offset {finding.offset}: {finding.reason}"


@app.command("inspect")
def inspect_command(
    directory: WalDirectory,
    as_json: AsJson = False,
) -> None:
    """Show the segments of a WAL: size, records, Raft index ranges per group, CRC status.

    Read-only: safe on a running node's WAL (nothing is locked, no torn tail is cut).
    """
    report, contents = _scan(directory)
    if as_json:
        typer.echo(_report_json(report, contents))
        return
    console = Console()
    by_path = _findings_by_path(report)
    table = Table(title=f"WAL {directory}", title_justify="left")
    table.add_column("Segment", no_wrap=True)
    table.add_column("State")
    table.add_column("Used", justify="right", no_wrap=True)
    table.add_column("Records", justify="right")
    table.add_column("Raft entries (group: first-last index)")
    table.add_column("Other records")
    table.add_column("CRC", no_wrap=True)
    short_names = {
        "KV_BATCH": "kv batches",
        "RAFT_HARD_STATE": "hard states",
        "RAFT_SNAPSHOT": "snapshot marks",
    }
    for segment in report.segments:
        seg_contents = contents.get(segment.sequence) or _SegmentContents()
        ranges = ", ".join(
            f"{group_id}: {span.first_index}-{span.last_index}"
            for group_id, span in sorted(seg_contents.groups.items())
        )
        other = ", ".join(
            f"{count} {short_names.get(name, name)}"
            for name, count in sorted(seg_contents.record_types.items())
            if name != "RAFT_ENTRY"
        )
        findings = by_path.get(segment.path, [])
        status = _crc_status(findings)
        if status == "ok":
            crc = "[green]ok[/]"
        elif status == "torn_tail":
            crc = f"[yellow]torn tail @ {findings[0].offset}[/]"
        else:
            bad = next(f for f in findings if f.kind is FindingKind.CORRUPTION)
            crc = f"[bold red]CORRUPT @ {bad.offset}[/]"
        table.add_row(
            segment.name,
            "[cyan]active[/]" if segment.active else "sealed",
            _size(segment.used_bytes),
            f"{segment.record_count:,}",
            ranges or "-",
            other or "-",
            crc,
        )
    console.print(table)
    for finding in report.findings:
        style = "bold red" if finding.kind is FindingKind.CORRUPTION else "yellow"
        label = "corruption" if finding.kind is FindingKind.CORRUPTION else "torn tail"
        console.print(f"[{style}]{label}:[/] {_describe(finding)}", highlight=False)
    console.print(
        f"{len(report.segments)} segment(s), {report.record_count:,} records, "
        + ("[green]ok[/]" if report.ok else "[bold red]corrupt[/]"),
        highlight=False,
    )


@app.command("verify")
def verify_command(
    directory: WalDirectory,
    as_json: AsJson = False,
) -> None:
    """Check every segment header and record CRC. Exit 1 naming file and offset if corrupt.

    Read-only. A torn tail (the unacknowledged end of the last write before a crash) is not
    corruption: the node cuts it when it opens the WAL.
    """
    report, contents = _scan(directory)
    if as_json:
        typer.echo(_report_json(report, contents))
    corruption = [f for f in report.findings if f.kind is FindingKind.CORRUPTION]
    if corruption:
        first = corruption[0]
        more = f" (and {len(corruption) - 1} more)" if len(corruption) > 1 else ""
        raise UserError(
            f"WAL corrupt: {_describe(first)}{more}",
            hint=f"With its node stopped, `minikv wal repair {directory}` cuts the log there "
            "and the node then catches up from its peers; while the node runs, `minikv cluster "
            "repair` has it rewrite its WAL from memory instead.",
            exit_code=EXIT_FAILURE,
        )
    if not as_json:
        torn = [f for f in report.findings if f.kind is FindingKind.TORN_TAIL]
        note = (
            f"; torn tail of {torn[0].bytes_after} bytes at {torn[0].path.name} byte "
            f"{torn[0].offset} (cut when the node opens it)"
            if torn
            else ""
        )
        typer.echo(f"ok: {len(report.segments)} segment(s), {report.record_count} records{note}")


def _print_plan(console: Console, plan: RepairReport) -> None:
    table = Table(title="Would drop" if plan.dry_run else "Dropped", title_justify="left")
    table.add_column("File")
    table.add_column("From byte", justify="right")
    table.add_column("Bytes", justify="right")
    table.add_column("Records", justify="right")
    table.add_column("Why")
    if plan.truncated is not None:
        t = plan.truncated
        table.add_row(
            t.path.name,
            str(t.offset),
            str(t.bytes_dropped),
            "unknown" if t.records_dropped is None else str(t.records_dropped),
            t.reason,
        )
    for removed in plan.removed_segments:
        table.add_row(
            removed.path.name,
            "0 (whole file)",
            str(removed.size_bytes),
            str(removed.records_readable),
            "segment at or after the damage",
        )
    console.print(table)


def _segment_count(directory: Path) -> int:
    return sum(
        1
        for p in directory.iterdir()
        if p.is_file() and parse_segment_file_name(p.name) is not None
    )


@app.command("repair")
def repair_command(
    directory: WalDirectory,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
) -> None:
    """Cut the WAL at its first bad record and delete every later segment.

    Shows what would be dropped and asks first. Refuses while a node holds the WAL. Dropped
    records are lost on this node; in a cluster, the node catches up from its peers.
    """
    console = Console()
    with _user_errors():
        check_not_in_use(directory)  # refuse before showing a plan and asking to confirm it
        plan = repair(directory, dry_run=True)
    if not plan.changed:
        typer.echo(f"nothing to repair: {directory} has no bad record")
        return
    for finding in plan.findings:
        console.print(f"[bold red]{finding.kind.value}:[/] {_describe(finding)}", highlight=False)
    _print_plan(console, plan)
    if plan.truncated is None and len(plan.removed_segments) == _segment_count(directory):
        # Damage in the oldest segment's header: the cut leaves no log at all, and a cluster
        # node without one refuses to start ("no meta group") - a second dead end.
        console.print(
            "[bold yellow]warning:[/] this deletes every segment: the WAL would be empty. A "
            "cluster node cannot start without its log; retire it with `minikv cluster "
            "remove-node NODE` instead.",
            highlight=False,
        )
    if not yes and not typer.confirm("Drop these bytes and segments?", default=False):
        raise UserError("repair declined: nothing was changed.", exit_code=EXIT_FAILURE)
    with _user_errors():
        done = repair(directory)
    if not done.changed:
        typer.echo("nothing to repair any more: the WAL changed since the check")
        return
    cut = (
        f"cut {done.truncated.path.name} at byte {done.truncated.offset} "
        f"({done.truncated.bytes_dropped} bytes)"
        if done.truncated is not None
        else "no segment cut"
    )
    typer.echo(f"repaired: {cut}; removed {len(done.removed_segments)} later segment(s)")


@dataclass(frozen=True)
class _BenchResult:
    mode: str
    preallocate: bool
    records_per_append: int
    appends: int
    seconds: float
    syncs: int

    @property
    def appends_per_s(self) -> float:
        return self.appends / self.seconds

    @property
    def records_per_s(self) -> float:
        return self.appends * self.records_per_append / self.seconds


def _bench_sync(root: Path, preallocate: bool, batch: int, appends: int) -> _BenchResult:
    directory = root / f"sync-{preallocate}-{batch}"
    records = [(RecordType.RAFT_ENTRY, b"p" * 120)] * batch
    with Wal.open(directory, preallocate=preallocate) as wal:
        started = time.perf_counter()
        for _ in range(appends):
            wal.append_sync(records)
        seconds = time.perf_counter() - started
        syncs = wal.stats.syncs
    shutil.rmtree(directory)
    return _BenchResult("append_sync", preallocate, batch, appends, seconds, syncs)


def _bench_async(root: Path, preallocate: bool, producers: int, appends: int) -> _BenchResult:
    directory = root / f"async-{preallocate}-{producers}"
    record = [(RecordType.RAFT_ENTRY, b"p" * 120)]

    async def run() -> tuple[float, int]:
        async with Wal.open(directory, preallocate=preallocate) as wal:

            async def producer() -> None:
                for _ in range(appends // producers):
                    await wal.append(record)

            started = time.perf_counter()
            await asyncio.gather(*(producer() for _ in range(producers)))
            return time.perf_counter() - started, wal.stats.syncs

    seconds, syncs = asyncio.run(run())
    shutil.rmtree(directory)
    total = appends // producers * producers
    return _BenchResult(f"append x{producers} tasks", preallocate, 1, total, seconds, syncs)


@app.command("bench")
def bench_command(
    appends: Annotated[int, typer.Option(help="Appends per measurement.")] = 2000,
    directory: Annotated[
        Path | None,
        typer.Option("--dir", help="Where to write (default: a temporary directory)."),
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="One JSON object per line, no table.")
    ] = False,
) -> None:
    """Durable append throughput, with and without preallocated segments.

    Batches of 1 and 64 records of 120 B through `append_sync`, and single-record `append`s
    from 64 concurrent producers (group commit).
    Every append is durable (fdatasync) before the next starts; `syncs` is the real count.
    """
    if appends < 64:
        raise UserError("--appends must be >= 64.", exit_code=EXIT_USAGE)
    if directory is not None and not directory.is_dir():
        raise UserError(f"--dir {directory} is not a directory.", exit_code=EXIT_USAGE)
    with tempfile.TemporaryDirectory(prefix="minikv-wal-bench-", dir=directory) as temp:
        root = Path(temp)
        results: list[_BenchResult] = []
        with _user_errors():
            for preallocate in (True, False):
                results.append(_bench_sync(root, preallocate, 1, appends))
                results.append(_bench_sync(root, preallocate, 64, appends))
                results.append(_bench_async(root, preallocate, 64, appends * 4))
    if as_json:
        for r in results:
            typer.echo(
                json.dumps(
                    {
                        "mode": r.mode,
                        "preallocate": r.preallocate,
                        "records_per_append": r.records_per_append,
                        "appends": r.appends,
                        "seconds": round(r.seconds, 4),
                        "appends_per_s": round(r.appends_per_s),
                        "records_per_s": round(r.records_per_s),
                        "syncs": r.syncs,
                    }
                )
            )
        return
    table = Table(title="WAL durable appends (120-byte records)", title_justify="left")
    for column in ("Mode", "Prealloc", "Rec/append", "Appends/s", "Records/s", "Syncs"):
        table.add_column(column, justify="left" if column == "Mode" else "right")
    for r in results:
        table.add_row(
            r.mode,
            "yes" if r.preallocate else "no",
            str(r.records_per_append),
            f"{r.appends_per_s:,.0f}",
            f"{r.records_per_s:,.0f}",
            f"{r.syncs:,} / {r.appends:,} appends",
        )
    Console().print(table)
