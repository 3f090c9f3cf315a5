"""One line that answers "is my cluster healthy?" from across the room."""

from __future__ import annotations

import datetime as dt

from rich.text import Text
from textual.widgets import Static

from minikv_tui.cluster_status import ClusterSnapshot
from minikv_tui.dashboard import format as fmt
from minikv_tui.dashboard.palette import Palette


class ClusterHeader(Static):
    DEFAULT_CSS = """
    ClusterHeader { height: 1; background: $panel; color: $foreground; padding: 0 1; }
    """

    def __init__(self, title: str, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self._title = title
        self._status = "connecting…"
        self._last: Text | None = None

    def show_status(self, message: str) -> None:
        """Before the first frame: what is happening (starting nodes, discovering)."""
        self._status = message
        self._render_text(Text.assemble((" minikv ", "bold reverse"), f" {self._title}  ", message))

    def show(
        self,
        snapshot: ClusterSnapshot,
        palette: Palette,
        tz: dt.tzinfo | None,
        load_on: bool,
    ) -> None:
        nodes_total = len(snapshot.nodes)
        nodes_up = snapshot.nodes_up
        up_style = palette.up if nodes_up == nodes_total else palette.down
        leader = Text.assemble(("meta ", palette.dim), _leader(snapshot, palette))
        text = Text.assemble(
            (" minikv ", "bold reverse"),
            " ",
            (snapshot.name or self._title, "bold"),
            "  ",
            (f"{nodes_up}/{nodes_total} up", up_style),
            "  ",
            leader,
            (f" t{snapshot.meta_term}", palette.dim),
            "  ",
            ("w ", palette.dim),
            f"{fmt.rate(snapshot.write_rate)}/s",
            ("  r ", palette.dim),
            f"{fmt.rate(snapshot.read_rate)}/s",
            "  ",
            ("load on" if load_on else "", palette.candidate),
            ("  " if load_on else ""),
            (fmt.clock(snapshot.taken_at, tz), palette.dim),
        )
        self._render_text(text)

    def _render_text(self, text: Text) -> None:
        if self._last is not None and (text.plain, text.spans) == (
            self._last.plain,
            self._last.spans,
        ):
            return
        self._last = text
        # A fixed one-line widget: repaint it, never re-layout the screen (that re-renders
        # every widget, and the header changes on every frame).
        self.update(text, layout=False)


def _leader(snapshot: ClusterSnapshot, palette: Palette) -> tuple[str, str]:
    """As the shard matrix's leader column: followers name a killed or cut-off leader until
    their election timeout fires; "L3" then would claim a node shown down leads."""
    leader = snapshot.meta_leader
    if leader is None:
        return "no leader", palette.candidate
    node = snapshot.node(leader)
    if node is not None and not node.reachable:
        return f"L{leader}?", palette.down
    return f"L{leader}", palette.leader
