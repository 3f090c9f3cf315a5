"""The dashboard driven by keys against a real local cluster (launcher, real processes).

Each test starts a 3-node cluster in its own MINIKV_HOME under tmp_path and brings it down in
teardown, whatever happened. Waits poll the app's applied frames with a deadline.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from textual.pilot import Pilot
from textual.widgets import Input

from minikv_tui.cluster_status import ClusterSnapshot
from minikv_tui.dashboard.app import DashboardApp, DashboardOptions
from minikv_tui.dashboard.screens.partition import PartitionScreen
from minikv_tui.dashboard.screens.quit import QuitScreen
from minikv_tui.dashboard.session import LocalSession
from minikv_tui.dashboard.widgets.load_panel import LoadPanel
from minikv_tui.dashboard.widgets.nodes_table import NodesTable
from minikv_tui.launcher import Launcher
from minikv_tui.registry import Registry

pytestmark = pytest.mark.integration

CLUSTER = "pilot"
READY_S = 60.0
"""Three node processes start and elect on a loaded 2-core machine."""
CHANGE_S = 30.0
"""Election timeouts, a kill's wait, a frame or two."""


@pytest.fixture
async def home(tmp_path: Path) -> AsyncIterator[Path]:
    home = tmp_path / "home"
    try:
        yield home
    finally:
        launcher = Launcher(CLUSTER, home=home)
        with contextlib.suppress(Exception):
            if await launcher.exists():
                await launcher.down(grace_s=2.0)


def make_app(home: Path, **options: object) -> DashboardApp:
    session = LocalSession(CLUSTER, nodes=3, shards=2, home=home)
    settings = {"confirm": False, "on_exit": "keep", "tz": dt.UTC, **options}
    return DashboardApp(session, DashboardOptions(**settings))  # type: ignore[arg-type]


async def until(
    pilot: Pilot[str | None],
    app: DashboardApp,
    predicate: Callable[[ClusterSnapshot], bool],
    what: str,
    timeout_s: float,
) -> ClusterSnapshot:
    deadline = time.monotonic() + timeout_s
    while True:
        snapshot = app.snapshot
        if snapshot is not None and predicate(snapshot):
            return snapshot
        if app.failure is not None:
            raise AssertionError(f"the dashboard could not connect: {app.failure}")
        if time.monotonic() >= deadline:
            raise AssertionError(
                f"timed out after {timeout_s}s waiting for {what}; last frame: {describe(snapshot)}"
            )
        await pilot.pause(0.05)


def describe(snapshot: ClusterSnapshot | None) -> str:
    if snapshot is None:
        return "none"
    nodes = ", ".join(f"{n.node_id}:{n.state}/{n.meta_role}" for n in snapshot.nodes)
    return f"meta leader {snapshot.meta_leader} term {snapshot.meta_term}; {nodes}"


def healthy(snapshot: ClusterSnapshot) -> bool:
    return (
        len(snapshot.nodes) == 3
        and all(node.state == "up" for node in snapshot.nodes)
        and snapshot.meta_leader is not None
        and all(shard.leader is not None for shard in snapshot.shards)
    )


async def journal_kinds(home: Path) -> list[str]:
    async with await Registry.open(home) as registry:
        return [event.kind for event in await registry.events(CLUSTER)]


async def test_kill_key_on_the_leaders_node_shows_it_down_and_a_new_leader(home: Path) -> None:
    app = make_app(home)
    async with app.run_test(size=(120, 40)) as pilot:
        snapshot = await until(pilot, app, healthy, "a healthy cluster", READY_S)
        leader = snapshot.meta_leader
        assert leader is not None
        table = app.query_one(NodesTable)
        table.select_node(leader)
        assert table.selected_node == leader
        await pilot.press("k")
        after = await until(
            pilot,
            app,
            lambda s: (
                (node := s.node(leader)) is not None
                and node.state == "down"
                and s.meta_leader not in (None, leader)
            ),
            f"node {leader} down and another meta leader",
            CHANGE_S,
        )
        assert table.get_cell(str(leader), "state").plain == "down"
        assert after.meta_leader != leader
        kinds = await journal_kinds(home)
        assert "kill" in kinds
        assert "meta-leader-change" in kinds, kinds  # observed by the dashboard, journalled
        await pilot.press("u")  # start it again: the dashboard must show it back up
        await until(
            pilot,
            app,
            lambda s: (node := s.node(leader)) is not None and node.state == "up",
            f"node {leader} up again",
            READY_S,
        )


async def test_partition_dialog_cuts_a_node_off_and_heal_reconnects_it(home: Path) -> None:
    app = make_app(home)
    async with app.run_test(size=(80, 24)) as pilot:
        snapshot = await until(pilot, app, healthy, "a healthy cluster", READY_S)
        victim = next(n.node_id for n in snapshot.nodes if n.node_id != snapshot.meta_leader)
        await pilot.press("n")
        assert isinstance(app.screen, PartitionScreen)
        await pilot.click("#mode-isolate-node")
        app.screen.query_one("#partition-argument", Input).value = str(victim)
        await pilot.click("#cut")
        others = {n.node_id for n in snapshot.nodes} - {victim}
        await until(
            pilot,
            app,
            lambda s: (
                (node := s.node(victim)) is not None
                and node.state == "partitioned"
                and set(node.cut_off_from) == others
            ),
            f"node {victim} partitioned from {others}",
            CHANGE_S,
        )
        table = app.query_one(NodesTable)
        assert table.get_cell(str(victim), "state").plain == "partitioned"
        await pilot.press("h")
        await until(
            pilot,
            app,
            lambda s: all(not n.cut_off_from for n in s.nodes) and healthy(s),
            "every node reconnected",
            CHANGE_S,
        )
        kinds = await journal_kinds(home)
        assert "isolate" in kinds and "heal" in kinds, kinds


async def test_isolating_the_meta_leader_moves_leadership(home: Path) -> None:
    app = make_app(home)
    async with app.run_test(size=(80, 24)) as pilot:
        snapshot = await until(pilot, app, healthy, "a healthy cluster", READY_S)
        leader = snapshot.meta_leader
        await pilot.press("i")
        await until(
            pilot,
            app,
            lambda s: (
                s.meta_leader not in (None, leader)
                and (node := s.node(leader or 0)) is not None
                and node.state == "partitioned"
            ),
            f"meta leadership away from the isolated node {leader}",
            CHANGE_S,
        )
        await pilot.press("h")
        await until(
            pilot, app, lambda s: all(not n.cut_off_from for n in s.nodes), "heal", CHANGE_S
        )


async def test_load_toggle_feeds_the_sparklines_and_quit_stops_the_cluster(home: Path) -> None:
    app = make_app(home, on_exit="ask")
    async with app.run_test(size=(160, 48)) as pilot:
        await until(pilot, app, healthy, "a healthy cluster", READY_S)
        await pilot.press("l")
        panel = app.query_one(LoadPanel)
        await until(
            pilot,
            app,
            lambda s: app.load_on and panel.samples > 2 and panel.last_ops_per_s > 0,
            "load generator samples with throughput",
            CHANGE_S,
        )
        await until(
            pilot, app, lambda s: (s.write_rate or 0) > 0, "nodes reporting writes", CHANGE_S
        )
        await pilot.press("l")
        await until(pilot, app, lambda s: not app.load_on, "load generator off", CHANGE_S)
        await pilot.press("q")
        assert isinstance(app.screen, QuitScreen)
        await pilot.press("s")
        deadline = time.monotonic() + CHANGE_S
        while app.is_running and time.monotonic() < deadline:
            await pilot.pause(0.05)
        assert not app.is_running
    view = await Launcher(CLUSTER, home=home).view()
    assert view.running == 0, [(n.node_id, n.process) for n in view.nodes]
    assert app.return_value is not None and "stopped" in app.return_value
