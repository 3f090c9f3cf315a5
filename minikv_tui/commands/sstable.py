"""`minikv sstable …`: look inside one SSTable file of the LSM engine.

`inspect` only reads (tables are immutable, so it is safe on a running node's files). It
reads every data block from disk and checks its CRC-32C, so a damaged table is reported block
by block; the report is printed even then, and the exit status is 1 (a finding).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from minikv_core.storage.errors import CorruptionError
from minikv_core.storage.sstable import BlockCheck, TableReader
from minikv_tui.errors import EXIT_FAILURE, EXIT_USAGE, UserError

app = typer.Typer(
    help="Look inside the SSTable files of a minikv LSM engine.",
    no_args_is_help=True,
)


@app.callback()
def _group() -> None:
    """Look inside the SSTable files of a minikv LSM engine."""
    # A callback keeps `inspect` a sub-command: Typer would otherwise collapse a one-command
    # app into that command, and `minikv sstable inspect FILE` would not parse.


TableFile = Annotated[Path, typer.Argument(help="An SSTable file (e.g. 000012.sst).")]
AsJson = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")]
AllBlocks = Annotated[
    bool,
    typer.Option("--all-blocks", help="List every data block, not only the first ones."),
]

# What to do, as commands: "re-sync the shard" named no command a person could run.
_REBUILD_HINT = (
    "While its node runs, `minikv cluster verify` marks this replica corrupt and "
    "`minikv cluster repair` rebuilds it from its peers; a stopped node that cannot open "
    "the table is retired with `minikv cluster remove-node NODE`."
)

# Without --all-blocks, this many good blocks are listed (damaged ones always are).
BLOCK_ROWS_DEFAULT = 20
KEY_PREVIEW_CHARS = 40


def _key_text(key: bytes | None) -> str:
    """A key for a person: printable ASCII as is, other bytes escaped, long keys cut."""
    if key is None:
        return "-"
    text = "".join(chr(b) if 0x20 <= b < 0x7F and b != 0x5C else f"\\x{b:02x}" for b in key)
    if len(text) > KEY_PREVIEW_CHARS:
        text = text[: KEY_PREVIEW_CHARS - 1] + "…"
    return text


@dataclass(frozen=True)
class _Report:
    path: Path
    table: TableReader
    blocks: list[BlockCheck]

    @property
    def bad_blocks(self) -> list[BlockCheck]:
        return [block for block in self.blocks if block.error is not None]

    def to_json(self) -> dict[str, Any]:
        table = self.table
        properties = table.properties
        return {
            "path": str(self.path),
            "size_bytes": table.file_size_bytes,
            "format_version": table.format_version,
            "entry_count": properties.entry_count,
            "tombstone_count": properties.tombstone_count,
            "smallest_key_hex": properties.smallest.hex(),
            "largest_key_hex": properties.largest.hex(),
            "block_count": table.block_count,
            "bad_block_count": len(self.bad_blocks),
            "bloom": {
                "size_bytes": table.bloom_size_bytes,
                "bits_per_key_configured": table.bloom_bits_per_key,
                "bits_per_key_actual": round(
                    table.bloom_size_bytes * 8 / properties.entry_count, 3
                ),
                "probes": table.bloom_probes,
            },
            "blocks": [
                {
                    "number": block.number,
                    "offset": block.offset,
                    "size_bytes": block.size_bytes,
                    "entry_count": block.entry_count,
                    "tombstone_count": block.tombstone_count,
                    "first_key_hex": None if block.first_key is None else block.first_key.hex(),
                    "last_key_hex": block.last_key.hex(),
                    "crc_ok": block.error is None,
                    "error": block.error,
                }
                for block in self.blocks
            ],
        }


def _open(path: Path) -> TableReader:
    if not path.exists():
        raise UserError(f"{path}: no such file", exit_code=EXIT_USAGE)
    if not path.is_file():
        raise UserError(f"{path} is not a file", hint="Pass one .sst file.", exit_code=EXIT_USAGE)
    try:
        return TableReader.open(path)
    except CorruptionError as exc:
        raise UserError(
            f"{path} is not a readable minikv SSTable: {exc.reason} (byte offset {exc.offset})",
            hint=_REBUILD_HINT,
            exit_code=EXIT_FAILURE,
        ) from None
    except OSError as exc:
        raise UserError(f"{path}: {exc.strerror or exc}", exit_code=EXIT_USAGE) from None


def _summary_table(report: _Report) -> Table:
    table = report.table
    properties = table.properties
    summary = Table(title=f"SSTable {report.path.name}", show_header=False)
    summary.add_column("field", style="bold")
    summary.add_column("value")
    bits_actual = table.bloom_size_bytes * 8 / properties.entry_count
    rows = [
        ("file", str(report.path)),
        ("size", f"{table.file_size_bytes:,} bytes"),
        ("format version", str(table.format_version)),
        ("entries", f"{properties.entry_count:,} ({properties.tombstone_count:,} tombstones)"),
        ("key range", f"{_key_text(properties.smallest)} .. {_key_text(properties.largest)}"),
        ("data blocks", f"{table.block_count:,}"),
        (
            "bloom filter",
            f"{table.bloom_size_bytes:,} bytes, {bits_actual:.1f} bits/key "
            f"(configured {table.bloom_bits_per_key}), {table.bloom_probes} probes",
        ),
        (
            "block CRCs",
            f"[green]all {table.block_count:,} ok[/]"
            if not report.bad_blocks
            else f"[red]{len(report.bad_blocks):,} of {table.block_count:,} bad[/]",
        ),
    ]
    for name, value in rows:
        summary.add_row(name, value)
    return summary


def _blocks_table(report: _Report, all_blocks: bool) -> Table:
    listed = [
        block
        for block in report.blocks
        if all_blocks or block.error is not None or block.number < BLOCK_ROWS_DEFAULT
    ]
    title = "data blocks"
    if len(listed) < len(report.blocks):
        title += f" (first {BLOCK_ROWS_DEFAULT} and any damaged; --all-blocks for all)"
    blocks = Table(title=title)
    for column in ("#", "offset", "bytes", "entries", "first key", "last key", "CRC"):
        blocks.add_column(column, justify="right" if column in ("#", "offset", "bytes") else "left")
    for block in listed:
        blocks.add_row(
            str(block.number),
            f"{block.offset:,}",
            f"{block.size_bytes:,}",
            "-" if block.error else f"{block.entry_count:,}",
            _key_text(block.first_key),
            _key_text(block.last_key),
            "[green]ok[/]" if block.error is None else f"[red]BAD[/] {block.error}",
        )
    return blocks


@app.command("inspect")
def inspect(file: TableFile, as_json: AsJson = False, all_blocks: AllBlocks = False) -> None:
    """Blocks, key count, bloom filter size and bits/key, key range, per-block CRC status."""
    table = _open(file)
    try:
        report = _Report(file, table, list(table.check_blocks()))
    finally:
        table.close()
    if as_json:
        print(json.dumps(report.to_json(), indent=2))
    else:
        console = Console()
        console.print(_summary_table(report))
        console.print(_blocks_table(report, all_blocks))
    if report.bad_blocks:
        first = report.bad_blocks[0]
        raise UserError(
            f"{file}: {len(report.bad_blocks)} of {table.block_count} data blocks are damaged "
            f"(first: block {first.number} at byte offset {first.offset}: {first.error})",
            hint="A node refuses to serve this table's damaged blocks. " + _REBUILD_HINT,
            exit_code=EXIT_FAILURE,
        )
