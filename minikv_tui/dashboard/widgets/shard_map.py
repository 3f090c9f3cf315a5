"""The shard map as the meta group keeps it: replicas, leader, term, keys, size.

The map's epoch is the same for every shard, so it sits in the panel's title rather than in a
column of identical numbers.
"""

from __future__ import annotations

from rich.text import Text
from textual.events import Resize
from textual.widgets import DataTable

from minikv_tui.cluster_status import ClusterSnapshot
from minikv_tui.dashboard import format as fmt
from minikv_tui.dashboard.palette import Palette
from minikv_tui.dashboard.widgets import compact
from minikv_tui.dashboard.widgets.fit import Column, fit, layout, spread, usable_width
from minikv_tui.dashboard.widgets.table_sync import TableSync

TITLE = "shard map"
COUNT_CHARS = 4


class ShardMap(DataTable[Text]):
    DEFAULT_CSS = """
    ShardMap { height: 1fr; }
    """

    def __init__(self, *, id: str | None = None, classes: str | None = None) -> None:
        super().__init__(
            id=id, classes=classes, cursor_type="none", zebra_stripes=True, cell_padding=0
        )
        self._sync = TableSync(self, ())
        self._columns: tuple[Column, ...] | None = None
        self._known: dict[int, tuple[int | None, int | None]] = {}
        self._shown: tuple[ClusterSnapshot, Palette] | None = None
        self.border_title = TITLE

    def show(self, snapshot: ClusterSnapshot, palette: Palette, *, detailed: bool) -> None:
        for shard in snapshot.shards:
            if detailed or shard.shard not in self._known:
                self._known[shard.shard] = (shard.keys, shard.bytes)
        title = f"{TITLE} · epoch {snapshot.epoch}"
        if self.border_title != title:
            self.border_title = title
        self._shown = (snapshot, palette)
        self._redraw()

    def on_resize(self, event: Resize) -> None:
        if self._shown is not None:
            self._redraw()

    def _redraw(self) -> None:
        assert self._shown is not None
        snapshot, palette = self._shown
        available = usable_width(self, len(snapshot.shards))
        chosen = spread(fit(_columns(snapshot), available), available)
        if chosen != self._columns:
            self._columns = chosen
            self._sync.reset(layout(chosen))
        keys_of = [column.key for column in chosen]
        reachable = {node.node_id for node in snapshot.nodes if node.reachable}
        rows = {}
        for shard in snapshot.shards:
            keys, size = self._known[shard.shard]
            replicas = Text()
            for index, node in enumerate(shard.replicas):
                if index:
                    replicas.append(",")
                replicas.append(str(node), "" if node in reachable else palette.down)
            if shard.leader is None:
                leader = Text("none", palette.candidate)
            else:
                alive = shard.leader in reachable
                leader = Text(str(shard.leader), palette.leader if alive else palette.down)
            cells = {
                "shard": Text(f"s{shard.shard}", "bold"),
                "replicas": replicas,
                "leader": leader,
                "term": Text(str(shard.term)),
                "keys": Text(fmt.UNKNOWN if keys is None else compact.count(keys, COUNT_CHARS)),
                "size": Text(compact.size(size)),
            }
            rows[shard.shard] = [cells[key] for key in keys_of]
        self._sync.sync(rows)


def _columns(snapshot: ClusterSnapshot) -> tuple[Column, ...]:
    """Widths from what the cluster holds (node ids of two digits make longer replica lists),
    so a column is as wide as its widest value and no wider."""
    last_shard = max((shard.shard for shard in snapshot.shards), default=0)
    replicas = max((len(",".join(map(str, s.replicas))) for s in snapshot.shards), default=0)
    term = max((len(str(shard.term)) for shard in snapshot.shards), default=0)
    return (
        Column("shard", "#", len(f"s{last_shard}")),
        Column("replicas", "nodes", max(5, replicas)),
        Column("leader", "ldr", 4),
        Column("term", "term", max(4, term)),
        Column("keys", "keys", COUNT_CHARS, drop=1),
        Column("size", "size", compact.SIZE_CHARS_MAX, drop=0),
    )
