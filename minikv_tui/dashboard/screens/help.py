"""`?`: every key, grouped the way a demo uses them."""

from __future__ import annotations

from typing import ClassVar

from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Static

HELP_SECTIONS: tuple[tuple[str, tuple[tuple[str, str], ...]], ...] = (
    (
        "Nodes (the selected row of the nodes table)",
        (
            ("↑ ↓", "select a node"),
            ("k", "kill the node (SIGKILL)"),
            ("s", "stop the node (SIGTERM)"),
            ("u", "start the node"),
            ("p", "pause / resume the node (SIGSTOP / SIGCONT)"),
            ("a", "snapshot the node's replicas"),
            ("c", "compact the node's replicas"),
        ),
    ),
    (
        "Network and leadership",
        (
            ("n", "partition… (groups, isolate a leader, one-way cut)"),
            ("i", "isolate the meta group's leader"),
            ("h", "heal every partition"),
            ("t", "move the selected shard's leadership to the selected node"),
        ),
    ),
    (
        "Maintenance (jobs run by the meta leader)",
        (
            ("r", "repair: re-create missing replicas (shows the plan first)"),
            ("R", "repair with the selected node declared dead"),
            ("v", "verify: checksum every shard's replicas"),
            ("b", "rebalance: even out replicas and leaders"),
        ),
    ),
    (
        "Data and views",
        (
            ("l", "toggle the load generator"),
            ("g", "quick put / get"),
            ("1-4", "panel: shards, shard map, WAL & tables, load (narrow screens)"),
            ("tab", "move focus between tables"),
            ("ctrl+s", "save a screenshot (SVG)"),
            ("ctrl+p", "command palette: every action by name"),
            ("?", "this help"),
            ("q", "quit"),
        ),
    ),
)


class HelpScreen(ModalScreen[None]):
    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape,q,question_mark", "close", "close")]

    def __init__(self) -> None:
        super().__init__(classes="dialog-screen")

    def compose(self) -> ComposeResult:
        table = Table.grid(padding=(0, 2))
        table.add_column(style="bold", no_wrap=True)
        table.add_column()
        for index, (title, keys) in enumerate(HELP_SECTIONS):
            if index:
                table.add_row("", "")
            table.add_row(Text(title, style="bold underline"), "")
            for key, what in keys:
                table.add_row(key, what)
        with VerticalScroll(classes="dialog", id="help-dialog"):
            yield Static(table)
            yield Static(Text("esc closes", style="italic"), classes="dialog-hint")

    def action_close(self) -> None:
        self.dismiss(None)
