"""The dashboard's dialogs on odd input, without a cluster: what a person types by mistake must
come back as a line in the dialog, never as an exception that ends the dashboard."""

from __future__ import annotations

import pytest
from textual.app import App, ComposeResult
from textual.widgets import Input, Label, Static

from minikv_tui.dashboard.screens.partition import (
    PartitionParseError,
    PartitionRequest,
    PartitionScreen,
    parse_request,
)

NOT_ASCII_DIGITS = ("²", "1,²", "³ | 1", "①", "₂")
"""`str.isdigit()` says yes to these, `int()` says no: superscripts are AltGr+2 and AltGr+3
on many European keyboards."""


@pytest.mark.parametrize(
    ("mode", "argument"),
    [
        *(("isolate-node", text) for text in NOT_ASCII_DIGITS),
        *(("isolate-shard-leader", text) for text in NOT_ASCII_DIGITS),
        *(("groups", text) for text in NOT_ASCII_DIGITS),
        ("one-way", "1 > ²"),
        ("one-way", "² > 1"),
    ],
)
def test_digits_int_cannot_read_are_a_parse_error(mode: str, argument: str) -> None:
    with pytest.raises(PartitionParseError):
        parse_request(mode, argument)


def test_full_width_digits_still_read_as_numbers() -> None:
    """Every character `str.isdecimal()` accepts, `int()` reads: nothing valid is refused."""
    assert parse_request("isolate-node", "\uff12") == PartitionRequest("isolate-node", node=2)


class _Host(App[None]):
    """Just enough of an app to show the dialog; records what it was dismissed with."""

    def __init__(self) -> None:
        super().__init__()
        self.results: list[PartitionRequest | None] = []

    def compose(self) -> ComposeResult:
        yield Static("host")

    def on_mount(self) -> None:
        screen = PartitionScreen(selected_node=None, selected_shard=None)
        self.push_screen(screen, self.results.append)


@pytest.mark.parametrize("button", [False, True])
async def test_a_superscript_node_id_is_an_error_line_not_a_crash(button: bool) -> None:
    app = _Host()
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        await pilot.click("#mode-isolate-node")
        field = app.screen.query_one("#partition-argument", Input)
        field.value = "²"
        if button:
            await pilot.click("#cut")
        else:
            field.focus()
            await pilot.press("enter")
        await pilot.pause()
        assert app.is_running
        assert isinstance(app.screen, PartitionScreen)
        error = str(app.screen.query_one("#partition-error", Label).content)
        assert "type a node id" in error, error
        assert app.results == []
        field.value = "2"
        field.focus()
        await pilot.press("enter")  # not a second click: a Button ignores one within 0.2 s
        for _ in range(50):  # the dismissal's callback runs a few turns of the loop later
            if app.results:
                break
            await pilot.pause(0.02)
        assert app.results == [PartitionRequest("isolate-node", node=2)]
