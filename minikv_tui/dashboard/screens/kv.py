"""Quick put / get: prove the cluster still serves while it is being broken."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import ClassVar

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label, Static

KvAction = Callable[[str, bytes, bytes], Awaitable[str]]
"""(operation "put" | "get", key, value) -> one line of result; raises on failure (`KvError`
when the message is already phrased for a person)."""


class KvError(Exception):
    """A failure that says what failed already ("put failed: no leader answered…"): shown as
    is, not as "put failed: put failed: …"."""


class KvScreen(ModalScreen[None]):
    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "close", "close")]

    def __init__(self, action: KvAction) -> None:
        super().__init__(classes="dialog-screen")
        self._action = action

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog", id="kv-dialog"):
            yield Static("[b]Put / get[/b]", classes="dialog-question")
            yield Input(placeholder="key", id="kv-key")
            yield Input(placeholder="value (for put)", id="kv-value")
            with Horizontal(classes="dialog-buttons"):
                yield Button("Put", variant="primary", id="put")
                yield Button("Get", id="get")
                yield Button("Close", id="close")
            yield Label("", id="kv-result")

    def on_mount(self) -> None:
        self.query_one("#kv-key", Input).focus()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        value = self.query_one("#kv-value", Input).value
        self._run("put" if event.input.id == "kv-value" and value else "get")

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id in ("put", "get"):
            self._run(event.button.id)
        else:
            self.dismiss(None)

    def action_close(self) -> None:
        self.dismiss(None)

    def _run(self, operation: str) -> None:
        key = self.query_one("#kv-key", Input).value
        if not key:
            self.query_one("#kv-result", Label).update(Text("type a key first", style="red"))
            return
        value = self.query_one("#kv-value", Input).value
        self.query_one("#kv-result", Label).update(Text(f"{operation} {key!r}…"))
        self._call(operation, key.encode(), value.encode())

    @work(exclusive=True, group="kv")
    async def _call(self, operation: str, key: bytes, value: bytes) -> None:
        label = self.query_one("#kv-result", Label)
        try:
            result = await self._action(operation, key, value)
        except KvError as error:
            label.update(Text(str(error), style="red"))
            return
        except Exception as error:  # shown in the dialog: never a traceback
            label.update(Text(f"{operation} failed: {error}", style="red"))
            return
        label.update(Text(result))
