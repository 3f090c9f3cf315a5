"""What the dashboard says when the cluster changes under it from elsewhere: it must never keep
showing what is no longer there.

Same ground rules as `test_dashboard_actions.py`: a real 3-node, 2-shard cluster per test in its
own MINIKV_HOME (`minikv_home` stops whatever is left there, even on failure), waits that poll
the app with a deadline.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest
from textual.pilot import Pilot

from minikv_tui.dashboard.app import DashboardApp
from minikv_tui.dashboard.widgets.header import ClusterHeader
from minikv_tui.dashboard.widgets.nodes_table import NodesTable
from minikv_tui.dashboard.widgets.shard_matrix import ShardMatrix
from minikv_tui.launcher import Launcher
from tests.tui.test_dashboard_actions import SIZE, Notes
from tests.tui.test_dashboard_pilot import CHANGE_S, CLUSTER, READY_S, healthy, make_app, until

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]

POLLS_S = 3.0
"""Long enough for several polls (4 Hz, a second's back-off after a failed one)."""


async def wait_for(
    pilot: Pilot[str | None], check: Callable[[], bool], what: str, timeout_s: float
) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, f"timed out after {timeout_s}s waiting for {what}"
        await pilot.pause(0.05)


def header_text(app: DashboardApp) -> str:
    shown = app.query_one(ClusterHeader)._last
    return shown.plain if shown is not None else ""


async def test_a_cluster_destroyed_elsewhere_is_said_gone_not_shown_empty(
    minikv_home: Path,
) -> None:
    """`minikv cluster destroy` from another terminal: the nodes and shards it had are no
    longer shown (not a stale "up" row, not "0/0 up" in green), the header says the cluster
    is gone, and a person is told so once, with what to do, not on every poll; q then leaves
    without asking whether to keep it running."""
    notes = Notes()
    app = make_app(minikv_home, on_exit="ask")
    async with app.run_test(size=SIZE, message_hook=notes.hook) as pilot:
        await until(pilot, app, healthy, "a healthy cluster", READY_S)
        await Launcher(CLUSTER, home=minikv_home).destroy(grace_s=2.0)
        await wait_for(
            pilot, lambda: "no longer exists" in header_text(app), "the header to say", CHANGE_S
        )
        assert "0/0 up" not in header_text(app)
        assert app.query_one(NodesTable).row_count == 0
        assert app.query_one(ShardMatrix).row_count == 0
        await pilot.pause(POLLS_S)
        gone = [note for note in notes.all if note.title == "cluster gone"]
        assert len(gone) == 1, [(n.title, n.message) for n in notes.all]
        assert f"cluster {CLUSTER} no longer exists" in str(gone[0].message)
        assert "Press q" in str(gone[0].message)
        assert not [n for n in notes.all if n.title == "poll failed"]
        assert "no longer exists" in header_text(app)  # frames did not overwrite it
        assert app.is_running
        # Nothing left to keep running or stop: q leaves without asking, and without
        # saying the cluster was "left running".
        await pilot.press("q")
        await wait_for(pilot, lambda: not app.is_running, "the dashboard to exit", CHANGE_S)
    assert app.return_value is None, app.return_value


@pytest.mark.parametrize("key", ["a", "c"])
async def test_snapshot_of_a_paused_node_is_refused_at_once_with_what_to_do(
    minikv_home: Path, key: str
) -> None:
    """A paused node never answers: asked to snapshot or compact, the dashboard said nothing
    for the call's 30 s timeout, then "Deadline Exceeded". It knows the node is paused, so it
    says so at once, and which key resumes it."""
    notes = Notes()
    app = make_app(minikv_home)
    launcher = Launcher(CLUSTER, home=minikv_home)
    async with app.run_test(size=SIZE, message_hook=notes.hook) as pilot:
        snapshot = await until(pilot, app, healthy, "a healthy cluster", READY_S)
        victim = snapshot.nodes[-1].node_id
        await launcher.pause(victim)
        try:
            await until(
                pilot,
                app,
                lambda s: (n := s.node(victim)) is not None and n.state == "paused",
                f"node {victim} paused",
                CHANGE_S,
            )
            app.query_one(NodesTable).select_node(victim)
            mark = notes.mark
            await pilot.press(key)
            await wait_for(pilot, lambda: notes.mark > mark, "an answer", 2.0)
            note = notes.all[mark]
            assert note.severity == "warning", (note.title, note.message)
            assert f"node {victim} is paused: press p to resume it" in str(note.message)
        finally:
            await launcher.resume(victim)


async def test_quick_put_works_on_a_cluster_made_again_on_other_ports(minikv_home: Path) -> None:
    """Destroyed, then `up` again while the dashboard runs: the panels came back, but quick
    put/get and the load generator kept asking the old nodes' ports (connection refused)."""
    app = make_app(minikv_home)
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, app, healthy, "a healthy cluster", READY_S)
        launcher = Launcher(CLUSTER, home=minikv_home)
        await launcher.destroy(grace_s=2.0)
        await wait_for(
            pilot, lambda: "no longer exists" in header_text(app), "the header to say", CHANGE_S
        )
        await launcher.up(nodes=3, shards=2)
        await until(pilot, app, healthy, "the new cluster, healthy", READY_S)
        control = app._session.control
        assert control is not None
        answer = await control.put(b"again", b"yes")
        assert "version" in answer, answer
        assert "yes" in await control.get(b"again")
