"""Shards x nodes: who leads what, in which term, how far behind — an election as it happens.

Every node gets a column, whatever the panel's width: the cells shrink instead ("L t3 1.2k",
then "L 1.2k", "L 12k", and the role letter alone), and the leader column goes before the
term does. A cell whose role changed flashes for `FLASH_S` of cluster time (measured on the
frames' own clock, so a replayed recording flashes exactly as the live run did).
"""

from __future__ import annotations

from dataclasses import dataclass

from rich.text import Text
from textual.events import Resize
from textual.widgets import DataTable

from minikv_tui.cluster_status import ClusterSnapshot, NodeStatus, ReplicaStatus, ShardStatus
from minikv_tui.dashboard.palette import ROLE_LETTERS, Palette, role_style
from minikv_tui.dashboard.widgets import compact
from minikv_tui.dashboard.widgets.fit import (
    Column,
    flash,
    layout,
    spread,
    total_width,
    usable_width,
)
from minikv_tui.dashboard.widgets.table_sync import TableSync

FLASH_S = 1.0
LAG_WARN_ENTRIES = 1
"""A follower this many entries behind the leader shows its lag."""
LEADER_COLUMN = Column("leader", "ldr", 4)
"""The shard's leader as the cluster believes it: "1?" when that node is gone, "none"."""
DOWN = "down"
DOWN_SHORT = "\u00d7"  # a multiplication sign: "gone", in one character
PAUSED = "paused"
PAUSED_SHORT = "||"
"""A paused (SIGSTOPped) node's replicas: still there, frozen; "down" would say they are gone."""
CANDIDATE_ROLES = ("candidate", "pre-candidate")


@dataclass(frozen=True)
class CellFormat:
    width: int
    """Characters per cell."""
    term: bool
    """Show each replica's term ("L t3 1.2k"); without it only candidates show theirs (the
    number an election is about), in place of their index."""
    index: bool
    """Show the last index, or the lag behind the leader ("-12")."""


FORMATS = (
    CellFormat(10, term=True, index=True),
    CellFormat(6, term=False, index=True),
    CellFormat(5, term=False, index=True),
    CellFormat(2, term=False, index=False),
)
"""Richest first; the first that fits the panel is used."""


@dataclass(frozen=True)
class _Layout:
    cell: CellFormat
    columns: tuple[Column, ...]


class ShardMatrix(DataTable[Text]):
    DEFAULT_CSS = """
    ShardMatrix { height: 1fr; }
    """

    def __init__(self, *, id: str | None = None, classes: str | None = None) -> None:
        super().__init__(
            id=id, classes=classes, cursor_type="row", zebra_stripes=False, cell_padding=0
        )
        self._sync = TableSync(self, ())
        self._layout: _Layout | None = None
        self._shown: tuple[ClusterSnapshot, Palette] | None = None
        self._roles: dict[tuple[int, int], str] = {}
        self._changed_at: dict[tuple[int, int], float] = {}
        self.border_title = "shards x nodes"

    @property
    def selected_shard(self) -> int | None:
        if not self.row_count:
            return None
        row_key, _ = self.coordinate_to_cell_key(self.cursor_coordinate)
        return int(str(row_key.value)) if row_key.value is not None else None

    @property
    def cell_width(self) -> int:
        """Characters per node cell in the current layout (0 before the first frame)."""
        return self._layout.cell.width if self._layout is not None else 0

    def show(self, snapshot: ClusterSnapshot, palette: Palette) -> None:
        now = snapshot.taken_at
        for shard in snapshot.shards:
            for node in snapshot.nodes:
                key = (shard.shard, node.node_id)
                role = _role(shard.replica_status.get(node.node_id), node.reachable)
                if self._roles.get(key, role) != role:
                    self._changed_at[key] = now
                self._roles[key] = role
        self._shown = (snapshot, palette)
        self._redraw()

    def on_resize(self, event: Resize) -> None:
        if self._shown is not None:
            self._redraw()

    def _redraw(self) -> None:
        assert self._shown is not None
        snapshot, palette = self._shown
        chosen = self._choose(snapshot)
        if chosen != self._layout:
            self._layout = chosen
            self._sync.reset(layout(chosen.columns))
        with_leader = LEADER_COLUMN.key in {column.key for column in chosen.columns}
        reachable = {node.node_id for node in snapshot.nodes if node.reachable}
        rows = {}
        for shard in snapshot.shards:
            cells = [Text(f"s{shard.shard}", "bold")]
            if with_leader:
                cells.append(_leader_cell(shard, reachable, palette))
            node_columns = chosen.columns[-len(snapshot.nodes) :] if snapshot.nodes else ()
            for node, column in zip(snapshot.nodes, node_columns, strict=True):
                cell = self._cell(shard, node, chosen.cell, palette)
                key = (shard.shard, node.node_id)
                if self._flashing(key):
                    cell = flash(cell, column.width, _flash_style(self._roles[key], palette))
                cells.append(cell)
            rows[shard.shard] = cells
        self._sync.sync(rows)

    def _choose(self, snapshot: ClusterSnapshot) -> _Layout:
        """The richest cell format, with the leader column if possible, that shows every
        node without scrolling sideways."""
        available = usable_width(self, len(snapshot.shards))
        last_shard = max((shard.shard for shard in snapshot.shards), default=0)
        label = len(f"s{last_shard}")
        node_keys = [f"n{node.node_id}" for node in snapshot.nodes]
        columns: tuple[Column, ...] = ()
        for cell in FORMATS:
            nodes = [Column(key, key, max(cell.width, len(key))) for key in node_keys]
            for leader in ([LEADER_COLUMN], []):
                columns = (Column("shard", "#", label), *leader, *nodes)
                if total_width(columns) <= available:
                    return _Layout(cell, spread(columns, available))
        return _Layout(FORMATS[-1], columns)

    def _cell(
        self, shard: ShardStatus, node: NodeStatus, cell: CellFormat, palette: Palette
    ) -> Text:
        replica = shard.replica_status.get(node.node_id)
        if replica is not None:
            return _replica_text(replica, cell, palette)
        if node.node_id in shard.replicas and not node.reachable:
            if node.process == "paused":
                return Text(PAUSED if cell.width >= len(PAUSED) else PAUSED_SHORT, palette.paused)
            return Text(DOWN if cell.width >= len(DOWN) else DOWN_SHORT, palette.down)
        return Text("·", palette.dim)

    def _flashing(self, key: tuple[int, int]) -> bool:
        now = self._shown[0].taken_at if self._shown is not None else 0.0
        return now - self._changed_at.get(key, -FLASH_S) < FLASH_S


def _flash_style(role: str, palette: Palette) -> str:
    """A changed cell flashes in its new role's colour: a green block is a new leader."""
    if role == "down":
        return f"{palette.down} reverse"
    if role == "none":
        return palette.flash
    return f"{role_style(palette, role)} bold reverse"


def _role(replica: ReplicaStatus | None, reachable: bool) -> str:
    if replica is not None:
        return replica.role
    return "none" if reachable else "down"


def _leader_cell(shard: ShardStatus, reachable: set[int], palette: Palette) -> Text:
    if shard.leader is None:
        return Text("none", palette.candidate)
    if shard.leader not in reachable:
        # Followers still name a leader that is gone until their election timeout fires.
        return Text(f"{shard.leader}?", palette.down)
    return Text(str(shard.leader), palette.leader)


def _replica_text(replica: ReplicaStatus, cell: CellFormat, palette: Palette) -> Text:
    letter = ROLE_LETTERS.get(replica.role, "?")
    text = Text.assemble((letter, role_style(palette, replica.role)))  # a span: not the base
    lagging = replica.lag >= LAG_WARN_ENTRIES and replica.role != "leader"
    if not cell.index:
        if lagging:
            text.append("-", palette.lag)
        return text
    if cell.term or replica.role in CANDIDATE_ROLES:
        text.append(f" t{replica.term}", palette.dim)
        if not cell.term:
            return text
    room = cell.width - len(text) - 1
    if lagging:
        # Behind the leader: how far, rather than where (the leader's cell says that).
        text.append(" ")
        text.append(compact.signed_lag(replica.lag, room), palette.lag)
    else:
        text.append(" ")
        text.append(compact.count(replica.last_index, max(1, room)))
    return text
