"""The story of the demo: what the launcher did and what the cluster did in response.

RichLog wraps a line once, at the width it has when the line is written; the log's width
changes after that (the screen's layout settles on its first frames, the job panel comes and
goes, the terminal is resized), and lines wrapped for another width then stick out behind a
horizontal scrollbar. So the log keeps its entries and wraps them again when its width
changes, always leaving room for the vertical scrollbar.
"""

from __future__ import annotations

import datetime as dt
from collections import deque

from rich.text import Text
from textual.events import Resize
from textual.widgets import RichLog

from minikv_tui.dashboard import format as fmt
from minikv_tui.dashboard.journal import LogEvent
from minikv_tui.dashboard.palette import Palette

MAX_LINES = 500

_ACTIONS = {
    "kill",
    "stop",
    "pause",
    "partition",
    "isolate",
    "destroy",
    "down",
    "failed",
    "maintenance-failed",
    "corrupt",
}
_RECOVERIES = {"start", "resume", "heal", "up", "node-up", "repair", "rebalance"}
_ELECTIONS = {"leader-change", "meta-leader-change", "term-change", "role-change"}
_JOBS = {"repair", "rebalance", "verify", "remove_node", "maintenance-failed", "corrupt"}
"""Maintenance jobs, journalled by the dashboard (`job_watch.py`) or the CLI: the detail
names the job ("repair 1-3 (dead: node 4) started")."""
_SELF_DESCRIBED = _ELECTIONS | _JOBS | {"node-down", "node-up"}


class EventLog(RichLog):
    DEFAULT_CSS = """
    EventLog { height: 1fr; }
    """

    def __init__(self, *, id: str | None = None, classes: str | None = None) -> None:
        super().__init__(
            id=id,
            classes=classes,
            max_lines=MAX_LINES,
            wrap=True,
            min_width=20,
            markup=False,
            auto_scroll=True,
        )
        self.border_title = "events"
        self._entries: deque[Text] = deque(maxlen=MAX_LINES)
        self._wrap_width = 0
        """The width the lines on screen are wrapped at (0: none written at a known size)."""

    def on_mount(self) -> None:
        # Anchored, the log stays at its end through every layout, not only its own resizes:
        # the job panel appearing takes lines after the last write, and a scroll_end queued
        # by on_resize could run before that layout settled (seen on a busy CI machine: the
        # newest lines hidden until the next event). A user scrolling up releases it.
        self.anchor()

    def on_resize(self, event: Resize) -> None:
        """Rewraps every entry for the new width. Textual runs RichLog's own handler after
        this one: on the first resize it renders the writes deferred until the size was
        known, which `clear` has replaced with the same entries at the right width. The job
        panel appearing takes lines from the log: the newest stay in view (RichLog scrolls to
        the end only when it writes)."""
        shown = self.size.width
        width = max(self.min_width, shown - self.styles.scrollbar_size_vertical)
        if shown and width != self._wrap_width:
            self._wrap_width = width
            self.clear()
            for entry in self._entries:
                self.write(entry, width=width, scroll_end=False)
        if self.auto_scroll:
            self.scroll_end(animate=False)

    def _append(self, line: Text) -> None:
        self._entries.append(line)
        self.write(line, width=self._wrap_width or None)

    def add(self, event: LogEvent, palette: Palette, tz: dt.tzinfo | None) -> None:
        style = palette.dim
        if event.kind in _ACTIONS or event.kind == "node-down":
            style = palette.down
        elif event.kind in _RECOVERIES:
            style = palette.up
        elif event.kind in _ELECTIONS:
            style = palette.candidate
        if event.kind in _SELF_DESCRIBED:
            # Observed changes already say what happened: "shard 3: leader 1 -> 2 (term 4)".
            body = Text(event.detail, style)
        else:
            subject = f" node {event.node}" if event.node is not None else ""
            body = Text.assemble((f"{event.kind}{subject}", style), f" {event.detail}")
        self._append(Text.assemble((fmt.clock(event.at, tz), palette.dim), " ", body))

    def note(self, message: str, at: float, palette: Palette, tz: dt.tzinfo | None) -> None:
        """A line of the dashboard's own (progress while starting a cluster)."""
        self._append(Text.assemble((fmt.clock(at, tz), palette.dim), " ", (message, palette.dim)))
