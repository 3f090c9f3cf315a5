"""SVG snapshots of every screen and dialog, at 80x24 and 160x48, replaying a recording of a
real cluster (tests/tui/snapshots/demo_recording.json, made by `tools/screenshots.py
--record`): times come from the frames and are shown in UTC, so the pictures never change
unless the dashboard does. Update with `--snapshot-update` after checking the report.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from textual.pilot import Pilot
from textual.screen import Screen
from textual.widgets import Input

from minikv_tui.dashboard.app import DashboardApp, DashboardOptions
from minikv_tui.dashboard.screens.confirm import ConfirmScreen
from minikv_tui.dashboard.screens.help import HelpScreen
from minikv_tui.dashboard.screens.kv import KvScreen
from minikv_tui.dashboard.screens.partition import PartitionScreen
from minikv_tui.dashboard.screens.quit import QuitScreen
from minikv_tui.dashboard.session import RecordedSession
from minikv_tui.dashboard.source import recorded_frames

RECORDING = Path(__file__).parent / "snapshots" / "demo_recording.json"
REPLAY_TIMEOUT_S = 20.0
SIZES = {"80x24": (80, 24), "160x48": (160, 48)}

SnapCompare = Callable[..., bool]


def replay(scenario: str, theme: str = "dark") -> DashboardApp:
    frames = recorded_frames(RECORDING, end=scenario)
    return DashboardApp(
        RecordedSession(frames, title="demo"), DashboardOptions(tz=dt.UTC, theme=theme)
    )


def settled(
    screen: Callable[[], Screen[Any]] | None = None,
) -> Callable[[Pilot[str | None]], object]:
    """Waits for the whole replay to be on screen (then opens a dialog, if any)."""

    async def run_before(pilot: Pilot[str | None]) -> None:
        app = pilot.app
        assert isinstance(app, DashboardApp)
        deadline = time.monotonic() + REPLAY_TIMEOUT_S
        while not app.replay_finished:
            assert time.monotonic() < deadline, f"replay stuck at frame {app.frames_applied}"
            await pilot.pause(0.02)
        await pilot.pause()
        if screen is not None:
            await app.push_screen(screen())
            for field in app.screen.query(Input):
                field.cursor_blink = False  # a blinking cursor is a clock in the picture
            await pilot.pause()

    return run_before


async def _noop(_: str, __: bytes, ___: bytes) -> str:
    raise AssertionError("a snapshot never runs the action")


DIALOGS: dict[str, Callable[[], Screen[Any]]] = {
    "help": HelpScreen,
    "confirm": lambda: ConfirmScreen("Kill node 2 (SIGKILL)?", yes="Kill node 2"),
    "partition": lambda: PartitionScreen(selected_node=2, selected_shard=1),
    "kv": lambda: KvScreen(_noop),
    "quit": lambda: QuitScreen("demo"),
}


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("scenario", ["steady", "partitioned", "leader-killed", "recovering"])
def test_main_screen(snap_compare: SnapCompare, scenario: str, size: str) -> None:
    assert snap_compare(replay(scenario), terminal_size=SIZES[size], run_before=settled())


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("dialog", DIALOGS)
def test_dialog(snap_compare: SnapCompare, dialog: str, size: str) -> None:
    app = replay("leader-killed")
    assert snap_compare(app, terminal_size=SIZES[size], run_before=settled(DIALOGS[dialog]))


@pytest.mark.parametrize("panel", ["2", "3", "4"])
def test_narrow_panels_switch_by_number(snap_compare: SnapCompare, panel: str) -> None:
    """At 80 columns one panel shows beside the event log: 2 map, 3 WAL & tables, 4 load."""
    assert snap_compare(
        replay("leader-killed"), press=[panel], terminal_size=(80, 24), run_before=settled()
    )


@pytest.mark.parametrize("theme", ["light", "high-contrast"])
def test_themes(snap_compare: SnapCompare, theme: str) -> None:
    assert snap_compare(replay("partitioned", theme), terminal_size=(100, 30), run_before=settled())
