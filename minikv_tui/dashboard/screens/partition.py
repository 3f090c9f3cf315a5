"""The partition dialog: isolate a leader (of the meta group or of a shard), isolate a node,
split the nodes into groups, or cut one direction only."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label, RadioButton, RadioSet, Static

from minikv_tui.dashboard.control import PartitionPlan

RequestKind = Literal["isolate-meta-leader", "isolate-shard-leader", "isolate-node", "plan"]


@dataclass(frozen=True)
class PartitionRequest:
    kind: RequestKind
    shard: int | None = None
    node: int | None = None
    plan: PartitionPlan | None = None


_MODES: tuple[tuple[str, str, str], ...] = (
    ("isolate-meta-leader", "Isolate the meta group's leader", ""),
    ("isolate-shard-leader", "Isolate the leader of shard…", "shard number, e.g. 3"),
    ("isolate-node", "Isolate node…", "node id, e.g. 2"),
    ("groups", "Split into groups…", "groups, e.g. 1,2 | 3"),
    ("one-way", "One-way cut…", "from > to, e.g. 1 > 2,3"),
)


class PartitionParseError(ValueError):
    pass


def _is_number(text: str) -> bool:
    """Digits `int()` reads. Not `str.isdigit()`: that accepts superscripts ("²", AltGr+2 on
    many keyboards), which `int()` rejects: a typo must be an error line, not a crash."""
    return text.isdecimal()


def _ids(text: str, what: str) -> tuple[int, ...]:
    parts = [p for p in text.replace(",", " ").split() if p]
    if not parts or not all(_is_number(p) for p in parts):
        raise PartitionParseError(f"{what}: expected node ids like 1,2, got {text.strip()!r}")
    return tuple(int(p) for p in parts)


def parse_request(mode: str, argument: str) -> PartitionRequest:
    """The dialog's fields to a request; PartitionParseError says what to type instead."""
    text = argument.strip()
    if mode == "isolate-meta-leader":
        return PartitionRequest("isolate-meta-leader")
    if mode == "isolate-shard-leader":
        if not _is_number(text):
            raise PartitionParseError("type a shard number, e.g. 3")
        return PartitionRequest("isolate-shard-leader", shard=int(text))
    if mode == "isolate-node":
        if not _is_number(text):
            raise PartitionParseError("type a node id, e.g. 2")
        return PartitionRequest("isolate-node", node=int(text))
    if mode == "groups":
        groups = tuple(_ids(part, "group") for part in text.split("|") if part.strip())
        if len(groups) < 1:
            raise PartitionParseError("type groups separated by |, e.g. 1,2 | 3")
        return PartitionRequest("plan", plan=PartitionPlan(groups=groups))
    if mode == "one-way":
        source, sep, sink = text.partition(">")
        if not sep:
            raise PartitionParseError("type from > to, e.g. 1 > 2,3")
        one_way = (_ids(source, "from"), _ids(sink, "to"))
        return PartitionRequest("plan", plan=PartitionPlan(one_way=one_way))
    raise PartitionParseError(f"unknown mode {mode!r}")


class PartitionScreen(ModalScreen[PartitionRequest | None]):
    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "cancel", "cancel")]

    def __init__(self, *, selected_node: int | None, selected_shard: int | None) -> None:
        super().__init__(classes="dialog-screen")
        self._defaults = {
            "isolate-node": "" if selected_node is None else str(selected_node),
            "isolate-shard-leader": "" if selected_shard is None else str(selected_shard),
        }
        self._mode = "isolate-meta-leader"

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog", id="partition-dialog"):
            yield Static("[b]Partition the network[/b]", classes="dialog-question")
            with RadioSet(id="partition-mode"):
                for index, (mode, label, _) in enumerate(_MODES):
                    yield RadioButton(label, value=index == 0, id=f"mode-{mode}")
            yield Input(placeholder="", id="partition-argument", disabled=True)
            yield Label("", id="partition-error")
            with Horizontal(classes="dialog-buttons"):
                yield Button("Cut", variant="error", id="cut")
                yield Button("Cancel", id="cancel")

    def on_mount(self) -> None:
        self.query_one(RadioSet).focus()

    def on_radio_set_changed(self, event: RadioSet.Changed) -> None:
        mode = _MODES[event.index][0]
        self._mode = mode
        field = self.query_one("#partition-argument", Input)
        field.placeholder = _MODES[event.index][2]
        field.disabled = mode == "isolate-meta-leader"
        field.value = self._defaults.get(mode, "")
        self.query_one("#partition-error", Label).update("")

    def on_input_submitted(self, event: Input.Submitted) -> None:
        self._submit()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "cut":
            self._submit()
        else:
            self.dismiss(None)

    def action_cancel(self) -> None:
        self.dismiss(None)

    def _submit(self) -> None:
        argument = self.query_one("#partition-argument", Input).value
        try:
            request = parse_request(self._mode, argument)
        except PartitionParseError as error:
            self.query_one("#partition-error", Label).update(Text(str(error), style="red"))
            return
        self.dismiss(request)
