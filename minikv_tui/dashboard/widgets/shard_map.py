"""The shard map as the meta group keeps it: replicas, leader, size, epoch."""

from __future__ import annotations

from rich.text import Text
from textual.widgets import DataTable

from minikv_tui.cluster_status import ClusterSnapshot
from minikv_tui.dashboard import format as fmt
from minikv_tui.dashboard.palette import Palette
from minikv_tui.dashboard.widgets.table_sync import TableSync

COLUMNS = (
    ("#", 3),
    ("replicas", 6),
    ("leader", 6),
    ("term", 4),
    ("keys", 6),
    ("size", 6),
    ("epoch", 5),
)


class ShardMap(DataTable[Text]):
    DEFAULT_CSS = """
    ShardMap { height: 1fr; }
    """

    def __init__(self, *, id: str | None = None, classes: str | None = None) -> None:
        super().__init__(id=id, classes=classes, cursor_type="none", zebra_stripes=True)
        self._sync = TableSync(self, COLUMNS)
        self._known: dict[int, tuple[int | None, int | None]] = {}
        self.border_title = "shard map"

    def on_mount(self) -> None:
        self._sync.reset(COLUMNS)

    def show(self, snapshot: ClusterSnapshot, palette: Palette, *, detailed: bool) -> None:
        reachable = {node.node_id for node in snapshot.nodes if node.reachable}
        rows = {}
        for shard in snapshot.shards:
            if detailed or shard.shard not in self._known:
                self._known[shard.shard] = (shard.keys, shard.bytes)
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
            rows[shard.shard] = [
                Text(f"s{shard.shard}", "bold"),
                replicas,
                leader,
                Text(str(shard.term)),
                Text(fmt.UNKNOWN if keys is None else str(keys)),
                Text(fmt.size(size)),
                Text(str(snapshot.epoch), palette.dim),
            ]
        self._sync.sync(rows)
