"""The nodes: one row each, the cursor row is the node the keys act on."""

from __future__ import annotations

from rich.text import Text
from textual.widgets import DataTable

from minikv_tui.cluster_status import ClusterSnapshot, NodeStatus
from minikv_tui.dashboard import format as fmt
from minikv_tui.dashboard.palette import Palette, role_style, state_style
from minikv_tui.dashboard.widgets.table_sync import TableSync

NARROW_COLUMNS = (
    ("id", 2),
    ("state", 11),
    ("meta", 12),
    ("commit/appl/last", 16),
    ("ldrs", 4),
    ("WAL", 6),
    ("CPU", 4),
    ("mem", 6),
)
WIDE_COLUMNS = (
    ("id", 3),
    ("address", 21),
    ("pid", 7),
    ("state", 11),
    ("meta role", 13),
    ("term", 5),
    ("commit", 8),
    ("applied", 8),
    ("last", 8),
    ("leaders", 7),
    ("WAL", 7),
    ("CPU", 5),
    ("mem", 7),
    ("cut off from", 12),
)
SHORT_ROLES = {"pre-candidate": "pre-cand"}


class NodesTable(DataTable[Text]):
    DEFAULT_CSS = """
    NodesTable { height: auto; max-height: 12; }
    """

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id, cursor_type="row", zebra_stripes=False, show_cursor=True)
        self._sync = TableSync(self, NARROW_COLUMNS)
        self._wide: bool | None = None
        self._usage: dict[int, tuple[Text, Text]] = {}

    @property
    def selected_node(self) -> int | None:
        if not self.row_count:
            return None
        row_key, _ = self.coordinate_to_cell_key(self.cursor_coordinate)
        return int(str(row_key.value)) if row_key.value is not None else None

    def select_node(self, node_id: int) -> None:
        for index in range(self.row_count):
            row_key, _ = self.coordinate_to_cell_key((index, 0))  # type: ignore[arg-type]
            if row_key.value == str(node_id):
                self.move_cursor(row=index)
                return

    def show(
        self, snapshot: ClusterSnapshot, palette: Palette, *, wide: bool, detailed: bool = True
    ) -> None:
        """`detailed` False: keep the CPU and memory figures shown. They change on every poll,
        and any changed cell costs a repaint of the whole table: once a second is plenty to
        read them, and keeps the dashboard itself off the CPU chart."""
        if detailed or not self._usage:
            self._usage = {
                n.node_id: (Text(fmt.percent(n.cpu_percent)), Text(fmt.size(n.rss_bytes)))
                for n in snapshot.nodes
            }
        if wide != self._wide:
            cursor = self.cursor_row
            self._wide = wide
            self._sync.reset(WIDE_COLUMNS if wide else NARROW_COLUMNS)
            self._sync.sync({n.node_id: self._cells(n, snapshot, palette) for n in snapshot.nodes})
            if self.row_count:
                self.move_cursor(row=min(cursor, self.row_count - 1))
            return
        self._sync.sync({n.node_id: self._cells(n, snapshot, palette) for n in snapshot.nodes})

    def _cells(self, node: NodeStatus, snapshot: ClusterSnapshot, palette: Palette) -> list[Text]:
        state = node.state
        alive = node.reachable
        dim = palette.dim
        role = Text(node.meta_role if alive else fmt.UNKNOWN, role_style(palette, node.meta_role))
        state_text = Text(state, state_style(palette, state))
        if not alive and node.error and state == "unreachable":
            state_text.stylize("underline")
        leaders = Text(
            str(node.shard_leaders) if alive else fmt.UNKNOWN, palette.leader if alive else dim
        )
        wal = Text(fmt.size(node.wal_bytes), "" if alive else dim)
        cpu, mem = self._usage.get(
            node.node_id, (Text(fmt.percent(node.cpu_percent)), Text(fmt.size(node.rss_bytes)))
        )
        if not alive:
            cpu, mem = Text(fmt.UNKNOWN), Text(fmt.UNKNOWN)
        node_id = Text(str(node.node_id), "bold")
        if not self._wide:
            short = Text(
                SHORT_ROLES.get(role.plain, role.plain), role_style(palette, node.meta_role)
            )
            meta = Text.assemble(short, (f" t{node.meta_term}" if alive else "", dim))
            indexes = Text(
                f"{node.commit}/{node.applied}/{node.last_index}" if alive else fmt.UNKNOWN,
                "" if alive else dim,
            )
            return [node_id, state_text, meta, indexes, leaders, wal, cpu, mem]
        cut = ",".join(str(peer) for peer in node.cut_off_from)
        return [
            node_id,
            Text(node.grpc, dim),
            Text(fmt.who(node.pid), dim),
            state_text,
            role,
            Text(str(node.meta_term) if alive else fmt.UNKNOWN),
            Text(str(node.commit) if alive else fmt.UNKNOWN),
            Text(str(node.applied) if alive else fmt.UNKNOWN),
            Text(str(node.last_index) if alive else fmt.UNKNOWN),
            leaders,
            wal,
            cpu,
            mem,
            Text(cut or "", palette.partitioned),
        ]
