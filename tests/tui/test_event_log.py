"""The event log keeps its newest line in view when it loses height with nothing new written
(the job panel appearing under it)."""

from __future__ import annotations

import datetime as dt

from textual.app import App, ComposeResult
from textual.containers import Vertical
from textual.widgets import Static

from minikv_tui.dashboard.palette import DARK
from minikv_tui.dashboard.widgets.event_log import EventLog

LINES = 60


class LogApp(App[None]):
    CSS = "#below { height: 0; }"

    def compose(self) -> ComposeResult:
        with Vertical():
            yield EventLog(id="log")
            yield Static("job panel", id="below")


def fill(log: EventLog) -> None:
    for number in range(LINES):
        log.note(f"line {number}", float(number), DARK, dt.UTC)


async def test_shrinking_keeps_the_newest_line_in_view() -> None:
    app = LogApp()
    async with app.run_test(size=(60, 30)) as pilot:
        log = app.query_one(EventLog)
        fill(log)
        await pilot.pause()
        assert log.scroll_y == log.max_scroll_y > 0
        app.query_one("#below").styles.height = 12
        await pilot.pause()
        await pilot.pause()
        assert log.size.height < 30 - 12 + 1
        assert log.scroll_y == log.max_scroll_y
