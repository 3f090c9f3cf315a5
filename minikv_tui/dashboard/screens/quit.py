"""On quit: leave the local cluster running for the next session, or stop it."""

from __future__ import annotations

from typing import ClassVar, Literal

from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Static

QuitChoice = Literal["keep", "stop", "cancel"]


class QuitScreen(ModalScreen[QuitChoice]):
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("k", "choose('keep')", "keep running"),
        Binding("s", "choose('stop')", "stop it"),
        Binding("escape,c", "choose('cancel')", "cancel"),
    ]

    def __init__(self, cluster: str) -> None:
        super().__init__(classes="dialog-screen")
        self._cluster = cluster

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog", id="quit-dialog"):
            yield Static(
                f"Leave cluster [b]{self._cluster}[/b] running after the dashboard exits?",
                classes="dialog-question",
            )
            with Horizontal(classes="dialog-buttons"):
                yield Button("Keep running (k)", variant="primary", id="keep")
                yield Button("Stop it (s)", variant="error", id="stop")
                yield Button("Cancel", id="cancel")

    def on_mount(self) -> None:
        self.query_one("#keep", Button).focus()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        choice: QuitChoice = "keep" if event.button.id == "keep" else "cancel"
        if event.button.id == "stop":
            choice = "stop"
        self.dismiss(choice)

    def action_choose(self, choice: QuitChoice) -> None:
        self.dismiss(choice)
