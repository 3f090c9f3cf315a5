"""WAL segments per node and SSTables per shard: rotations, flushes and compactions made
visible (what changed flashes for a moment, on the frames' own clock)."""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widgets import DataTable

from minikv_tui.cluster_status import ClusterSnapshot, ShardStatus, WalSegment
from minikv_tui.dashboard import format as fmt
from minikv_tui.dashboard.palette import Palette
from minikv_tui.dashboard.widgets.table_sync import TableSync

FLASH_S = 1.0
WAL_COLUMNS = (
    ("node", 4),
    ("segment", 20),
    ("used", 12),
    ("records", 8),
    ("indexes", 12),
    ("state", 6),
)
TABLE_COLUMNS = (("shard", 5), ("L0", 9), ("L1", 9), ("L2+", 9), ("tables", 6), ("bytes", 7))


class StoragePanel(Vertical):
    DEFAULT_CSS = """
    StoragePanel { height: 1fr; }
    StoragePanel > DataTable { height: 1fr; }
    """

    def __init__(self, *, id: str | None = None, classes: str | None = None) -> None:
        super().__init__(id=id, classes=classes)
        self.border_title = "WAL & tables"
        self._wal: DataTable[Text] = DataTable(id="wal-table", cursor_type="none")
        self._tables: DataTable[Text] = DataTable(id="sstable-table", cursor_type="none")
        self._wal_sync = TableSync(self._wal, WAL_COLUMNS)
        self._table_sync = TableSync(self._tables, TABLE_COLUMNS)
        self._seen: dict[object, tuple[object, ...]] = {}
        self._changed_at: dict[object, float] = {}
        self._shown = False

    def compose(self) -> ComposeResult:
        yield self._wal
        yield self._tables

    def on_mount(self) -> None:
        self._wal_sync.reset(WAL_COLUMNS)
        self._table_sync.reset(TABLE_COLUMNS)

    def show(self, snapshot: ClusterSnapshot, palette: Palette, *, detailed: bool) -> None:
        if not detailed:
            return  # this refresh skipped the WAL/SSTable documents: keep the last ones
        now = snapshot.taken_at
        wal_rows: dict[object, list[Text]] = {}
        for node in snapshot.nodes:
            if not node.reachable:
                wal_rows[(node.node_id, "")] = [
                    Text(str(node.node_id), "bold"),
                    Text("(no answer)", palette.down),
                    *(Text("") for _ in WAL_COLUMNS[2:]),
                ]
                continue
            for segment in node.wal_segments:
                segment_key: object = (node.node_id, segment.name)
                flash = self._changed(segment_key, (segment.state,), now)
                wal_rows[segment_key] = self._segment_cells(node.node_id, segment, palette, flash)
        self._wal_sync.sync(wal_rows)
        table_rows: dict[object, list[Text]] = {}
        for shard in snapshot.shards:
            names = tuple(sorted(table.name for table in shard.tables))
            flash = self._changed(("shard", shard.shard), names, now) and shard.leader is not None
            table_rows[shard.shard] = self._shard_cells(shard, palette, flash)
        self._table_sync.sync(table_rows)
        self._shown = True

    def _changed(self, key: object, value: tuple[object, ...], now: float) -> bool:
        before = self._seen.get(key)
        self._seen[key] = value
        if before is not None and before != value:
            self._changed_at[key] = now
        elif before is None and self._shown:
            self._changed_at[key] = now  # appeared after the first frame: a rotation
        return now - self._changed_at.get(key, -FLASH_S) < FLASH_S

    def _segment_cells(
        self, node_id: int, segment: WalSegment, palette: Palette, flash: bool
    ) -> list[Text]:
        active = segment.state == "active"
        indexes = (
            f"{segment.first_index}..{segment.last_index}"
            if segment.first_index is not None
            else fmt.UNKNOWN
        )
        cells = [
            Text(str(node_id), "bold"),
            Text(segment.name),
            Text(f"{fmt.size(segment.used_bytes)}/{fmt.size(segment.size_bytes)}"),
            Text(str(segment.records)),
            Text(indexes),
            Text(segment.state, palette.leader if active else palette.dim),
        ]
        if flash:
            for cell in cells:
                cell.stylize(palette.flash)
        return cells

    def _shard_cells(self, shard: ShardStatus, palette: Palette, flash: bool) -> list[Text]:
        levels: dict[int, list[int]] = {}
        for table in shard.tables:
            bucket = levels.setdefault(min(table.level, 2), [0, 0])
            bucket[0] += 1
            bucket[1] += table.bytes

        unknown = shard.leader is None

        def level(number: int) -> Text:
            if unknown:
                return Text(fmt.UNKNOWN, palette.dim)
            count, size = levels.get(number, [0, 0])
            return Text(f"{count}·{fmt.size(size)}" if count else "·", "" if count else palette.dim)

        cells = [
            Text(f"s{shard.shard}", "bold"),
            level(0),
            level(1),
            level(2),
            Text(fmt.UNKNOWN if unknown else str(len(shard.tables))),
            Text(fmt.size(shard.bytes)),
        ]
        if flash:
            for cell in cells:
                cell.stylize(palette.flash)
        return cells
