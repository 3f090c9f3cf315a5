"""WAL segments per node and SSTables per shard: rotations, flushes and compactions made
visible (what changed flashes for a moment, on the frames' own clock).

Compact on purpose: a segment is its sequence number ("3", not "0000000000000003.wal"), A or S
for active or sealed, sizes like "87K"; the node id is written once per node. When the panel
is too narrow even so, the record count goes first, then the table's total size.
"""

from __future__ import annotations

from collections.abc import Collection

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.events import Resize
from textual.widgets import DataTable

from minikv_tui.cluster_status import ClusterSnapshot, ShardStatus, WalSegment
from minikv_tui.dashboard import format as fmt
from minikv_tui.dashboard.palette import Palette
from minikv_tui.dashboard.widgets import compact
from minikv_tui.dashboard.widgets.fit import GAP, Column, fit, flash, layout, spread, usable_width
from minikv_tui.dashboard.widgets.table_sync import TableSync

FLASH_S = 1.0
INDEX_CHARS = 4
"""Per end of an index range: "1.2k..3.4k"."""
WAL_COLUMNS = (
    Column("node", "node", 4),
    Column("segment", "seg", 3),
    Column("state", "A/S", 3),
    Column("used", "used", 2 * compact.SIZE_CHARS_MAX + 1),
    Column("indexes", "indexes", 2 * INDEX_CHARS + 2),
    Column("records", "recs", 4, drop=0),
)
"""`used` is "87K/64M" while a segment is active, its final size once sealed."""
LEVELS = 3
"""L0, L1 and everything older as L2+: the runs of a shard's LSM, newest first."""
TABLE_COLUMNS = (
    Column("shard", "#", 3),
    *(
        Column(f"L{level}", f"L{level}{'+' if level == LEVELS - 1 else ''}", 7)
        for level in range(LEVELS)
    ),
    Column("bytes", "size", compact.SIZE_CHARS_MAX, drop=0),
)
"""A level cell is "2·8.5M": two tables holding 8.5 MiB."""


class StoragePanel(Vertical):
    DEFAULT_CSS = """
    StoragePanel { height: 1fr; }
    StoragePanel > DataTable { height: 1fr; }
    StoragePanel > #wal-table { max-height: 50%; }
    """

    def __init__(self, *, id: str | None = None, classes: str | None = None) -> None:
        super().__init__(id=id, classes=classes)
        self.border_title = "WAL & tables"
        self._wal = _FittedTable(WAL_COLUMNS, id="wal-table")
        self._tables = _FittedTable(TABLE_COLUMNS, id="sstable-table")
        self._seen: dict[object, tuple[object, ...]] = {}
        self._changed_at: dict[object, float] = {}
        self._shown: tuple[ClusterSnapshot, Palette] | None = None
        self._wal_lines = 0

    def compose(self) -> ComposeResult:
        yield self._wal
        yield self._tables

    def show(self, snapshot: ClusterSnapshot, palette: Palette, *, detailed: bool) -> None:
        if not detailed:
            return  # this refresh skipped the WAL/SSTable documents: keep the last ones
        now = snapshot.taken_at
        first = self._shown is None
        for node in snapshot.nodes:
            for segment in node.wal_segments if node.reachable else ():
                self._note((node.node_id, segment.name), (segment.state,), now, first)
        for shard in snapshot.shards:
            names = tuple(sorted(table.name for table in shard.tables))
            self._note(("shard", shard.shard), names, now, first)
        self._shown = (snapshot, palette)
        self._redraw()

    def _note(self, key: object, value: tuple[object, ...], now: float, first: bool) -> None:
        before = self._seen.get(key)
        self._seen[key] = value
        if before is not None and before != value:
            self._changed_at[key] = now
        elif before is None and not first:
            self._changed_at[key] = now  # appeared after the first frame: a rotation

    def _flashing(self, key: object, now: float) -> bool:
        return now - self._changed_at.get(key, -FLASH_S) < FLASH_S

    def _redraw(self) -> None:
        assert self._shown is not None
        snapshot, palette = self._shown
        now = snapshot.taken_at
        wal_rows: dict[object, dict[str, Text]] = {}
        for node in snapshot.nodes:
            if not node.reachable:
                wal_rows[(node.node_id, "")] = {
                    "node": Text(str(node.node_id), "bold"),
                    "indexes": Text("no answer", palette.down),
                }
                continue
            for position, segment in enumerate(node.wal_segments):
                key = (node.node_id, segment.name)
                cells = _segment_cells(segment, palette)
                cells["node"] = Text(str(node.node_id) if position == 0 else "", "bold")
                wal_rows[key] = cells
        flashing = {key for key in wal_rows if self._flashing(key, now)}
        self._wal.show(wal_rows, flashing, palette.flash)
        # As tall as its rows (and header), the rest for the tables. Set here rather than
        # `height: auto`: DataTable measures its rows when idle, so an auto height would
        # depend on timing (seen as a flaky snapshot).
        if self._wal_lines != len(wal_rows) + 1:
            self._wal_lines = len(wal_rows) + 1
            self._wal.styles.height = self._wal_lines
        table_rows: dict[object, dict[str, Text]] = {}
        table_flashing: set[object] = set()
        for shard in snapshot.shards:
            table_rows[shard.shard] = _shard_cells(shard, palette)
            if shard.leader is not None and self._flashing(("shard", shard.shard), now):
                table_flashing.add(shard.shard)
        self._tables.show(table_rows, table_flashing, palette.flash)


class _FittedTable(DataTable[Text]):
    """One of the panel's tables: its columns fitted to its own width, which changes without
    the panel's when the other table gains or loses rows."""

    def __init__(self, columns: tuple[Column, ...], *, id: str) -> None:
        super().__init__(id=id, cursor_type="none", cell_padding=0)
        self._columns = columns
        self._sync = TableSync(self, ())
        self._chosen: tuple[Column, ...] | None = None
        self._rows: dict[object, dict[str, Text]] = {}
        self._flashing: Collection[object] = ()
        self._style = ""

    def show(
        self, rows: dict[object, dict[str, Text]], flashing: Collection[object], style: str
    ) -> None:
        """`rows` (a cell a row does not name is blank), those in `flashing` as one bar in
        `style`."""
        self._rows, self._flashing, self._style = rows, flashing, style
        self._redraw()

    def on_resize(self, event: Resize) -> None:
        self._redraw()

    def _redraw(self) -> None:
        available = usable_width(self, len(self._rows))
        chosen = spread(fit(self._columns, available), available)
        if chosen != self._chosen:
            self._chosen = chosen
            self._sync.reset(layout(chosen))
        shown = {}
        for key, cells in self._rows.items():
            row = [cells.get(column.key) or Text("") for column in chosen]
            if key in self._flashing:
                row = [
                    flash(cell, column.width + GAP, self._style)
                    for cell, column in zip(row, chosen, strict=True)
                ]
            shown[key] = row
        self._sync.sync(shown)


def _segment_cells(segment: WalSegment, palette: Palette) -> dict[str, Text]:
    active = segment.state == "active"
    if segment.first_index is not None and segment.last_index is not None:
        first = compact.count(segment.first_index, INDEX_CHARS)
        indexes = f"{first}..{compact.count(segment.last_index, INDEX_CHARS)}"
    else:
        indexes = fmt.UNKNOWN
    used = compact.size(segment.used_bytes)
    return {
        "segment": Text(_sequence(segment.name)),
        "state": Text("A" if active else "S", palette.leader if active else palette.dim),
        "used": Text(f"{used}/{compact.size(segment.size_bytes)}" if active else used),
        "indexes": Text(indexes),
        "records": Text(compact.count(segment.records, 4)),
    }


def _sequence(name: str) -> str:
    """ "0000000000000003.wal" -> "3"; any other name as it is (the column crops it)."""
    stem, _, suffix = name.partition(".")
    return str(int(stem)) if stem.isdigit() and suffix == "wal" else name


def _shard_cells(shard: ShardStatus, palette: Palette) -> dict[str, Text]:
    levels: dict[int, list[int]] = {}
    for table in shard.tables:
        bucket = levels.setdefault(min(table.level, LEVELS - 1), [0, 0])
        bucket[0] += 1
        bucket[1] += table.bytes
    unknown = shard.leader is None

    def level(number: int) -> Text:
        if unknown:
            return Text(fmt.UNKNOWN, palette.dim)
        count, size = levels.get(number, [0, 0])
        if not count:
            return Text("·", palette.dim)
        return Text(f"{compact.count(count, 2)}·{compact.size(size)}")

    cells = {f"L{number}": level(number) for number in range(LEVELS)}
    cells["shard"] = Text(f"s{shard.shard}", "bold")
    cells["bytes"] = Text(compact.size(shard.bytes))
    return cells
