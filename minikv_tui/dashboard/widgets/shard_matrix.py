"""Shards x nodes: who leads what, in which term, how far behind — an election as it happens.

A cell whose role changed flashes for `FLASH_S` of cluster time (measured on the frames' own
clock, so a replayed recording flashes exactly as the live run did).
"""

from __future__ import annotations

from rich.text import Text
from textual.widgets import DataTable

from minikv_tui.cluster_status import ClusterSnapshot, ShardStatus
from minikv_tui.dashboard.palette import ROLE_LETTERS, Palette, role_style
from minikv_tui.dashboard.widgets.table_sync import TableSync

FLASH_S = 1.0
CELL_WIDTH = 12
LAG_WARN_ENTRIES = 1
"""A follower this many entries behind the leader shows its lag."""


class ShardMatrix(DataTable[Text]):
    DEFAULT_CSS = """
    ShardMatrix { height: 1fr; }
    """

    def __init__(self, *, id: str | None = None, classes: str | None = None) -> None:
        super().__init__(id=id, classes=classes, cursor_type="row", zebra_stripes=False)
        self._sync = TableSync(self, ())
        self._node_ids: tuple[int, ...] | None = None
        self._roles: dict[tuple[int, int], str] = {}
        self._changed_at: dict[tuple[int, int], float] = {}
        self.border_title = "shards x nodes"

    @property
    def selected_shard(self) -> int | None:
        if not self.row_count:
            return None
        row_key, _ = self.coordinate_to_cell_key(self.cursor_coordinate)
        return int(str(row_key.value)) if row_key.value is not None else None

    def show(self, snapshot: ClusterSnapshot, palette: Palette) -> None:
        node_ids = tuple(node.node_id for node in snapshot.nodes)
        if node_ids != self._node_ids:
            self._node_ids = node_ids
            self._sync.reset([("#", 3), ("ldr", 4), *((f"n{n}", CELL_WIDTH) for n in node_ids)])
        now = snapshot.taken_at
        reachable = {node.node_id for node in snapshot.nodes if node.reachable}
        rows = {}
        for shard in snapshot.shards:
            cells = [Text(f"s{shard.shard}", "bold"), self._leader_cell(shard, reachable, palette)]
            for node_id in node_ids:
                cells.append(self._cell(shard, node_id, node_id in reachable, now, palette))
            rows[shard.shard] = cells
        self._sync.sync(rows)

    def _leader_cell(self, shard: ShardStatus, reachable: set[int], palette: Palette) -> Text:
        if shard.leader is None:
            return Text("none", palette.candidate)
        if shard.leader not in reachable:
            # Followers still name a leader that is gone until their election timeout fires.
            return Text(f"{shard.leader}?", palette.down)
        return Text(str(shard.leader), palette.leader)

    def _cell(
        self, shard: ShardStatus, node_id: int, reachable: bool, now: float, palette: Palette
    ) -> Text:
        key = (shard.shard, node_id)
        replica = shard.replica_status.get(node_id)
        role = replica.role if replica is not None else ("none" if reachable else "down")
        if self._roles.get(key, role) != role:
            self._changed_at[key] = now
        self._roles[key] = role
        flashing = now - self._changed_at.get(key, -FLASH_S) < FLASH_S
        if replica is None:
            if node_id in shard.replicas and not reachable:
                text = Text("down", palette.down)
            else:
                text = Text("·", palette.dim)
        else:
            letter = ROLE_LETTERS.get(replica.role, "?")
            text = Text.assemble(
                (letter, role_style(palette, replica.role)), (f" t{replica.term} ", palette.dim)
            )
            if replica.lag >= LAG_WARN_ENTRIES and replica.role != "leader":
                # Behind the leader: how far, rather than where (the leader's cell says that).
                text.append(f"-{replica.lag}", palette.lag)
            else:
                text.append(str(replica.last_index))
        if flashing:
            text.stylize(palette.flash)
        return text
