"""Throughput and latency of the built-in load generator, as sparklines: the audience sees
writes stall during an election and resume when a new leader is up."""

from __future__ import annotations

from collections import deque

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widgets import Sparkline, Static

from minikv_tui.dashboard import format as fmt
from minikv_tui.dashboard.palette import Palette
from minikv_tui.loadgen import LoadWindow

HISTORY_WINDOWS = 120
"""Samples kept: 30 s at 4 Hz."""


class LoadPanel(Vertical):
    DEFAULT_CSS = """
    LoadPanel { height: 1fr; }
    LoadPanel > Static { height: 1; }
    LoadPanel > Sparkline { height: 1fr; min-height: 1; }
    """

    def __init__(self, *, id: str | None = None, classes: str | None = None) -> None:
        super().__init__(id=id, classes=classes)
        self.border_title = "load"
        self._throughput: deque[float] = deque(maxlen=HISTORY_WINDOWS)
        self._latency: deque[float] = deque(maxlen=HISTORY_WINDOWS)
        self._ops_label = Static(id="load-ops")
        self._latency_label = Static(id="load-latency")
        self._ops_line = Sparkline([], id="load-ops-spark")
        self._latency_line = Sparkline([], id="load-latency-spark")

    @property
    def samples(self) -> int:
        return len(self._throughput)

    @property
    def last_ops_per_s(self) -> float:
        return self._throughput[-1] if self._throughput else 0.0

    def compose(self) -> ComposeResult:
        yield self._ops_label
        yield self._ops_line
        yield self._latency_label
        yield self._latency_line

    def on_mount(self) -> None:
        self._ops_label.update(Text("load generator off — press l", "italic"))
        self._latency_label.update("")
        self._ops_line.display = False
        self._latency_line.display = False

    def show_window(self, window: LoadWindow | None, running: bool, palette: Palette) -> None:
        if window is None or (not running and window.ops == 0 and not self._throughput):
            return  # off, and nothing measured yet: the "press l" hint stays
        self._throughput.append(window.ops_per_s)
        self._latency.append(window.p99_ms or 0.0)
        state = "" if running else "  (stopped)"
        errors = f"  {window.errors} errors" if window.errors else ""
        self._ops_label.update(
            layout=False,
            content=Text.assemble(
                ("ops/s ", palette.dim),
                (fmt.rate(window.ops_per_s), "bold"),
                (errors, palette.down),
                (state, palette.dim),
            ),
        )
        self._latency_label.update(
            layout=False,
            content=Text.assemble(
                ("p50 ", palette.dim),
                fmt.milliseconds(window.p50_ms),
                ("  p99 ", palette.dim),
                (fmt.milliseconds(window.p99_ms), "bold"),
            ),
        )
        self._ops_line.display = True
        self._latency_line.display = True
        self._ops_line.data = list(self._throughput)
        self._latency_line.data = list(self._latency)
