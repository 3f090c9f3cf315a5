"""The dashboard driven by keys against a real local cluster (launcher, real processes).

Each test starts a cluster (3 nodes; 4 for maintenance) in its own MINIKV_HOME under tmp_path
and brings it down in teardown, whatever happened. Waits poll the app's applied frames with a
deadline.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import re
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from textual.message import Message
from textual.notifications import Notification, Notify
from textual.pilot import Pilot
from textual.widgets import Input, Static

from minikv_core.client import AsyncClient
from minikv_core.cluster.placement import place_meta, place_shards
from minikv_tui.cluster_status import ClusterSnapshot
from minikv_tui.dashboard.app import DashboardApp, DashboardOptions
from minikv_tui.dashboard.job_watch import JobStatus
from minikv_tui.dashboard.screens.confirm import ConfirmScreen
from minikv_tui.dashboard.screens.partition import PartitionScreen
from minikv_tui.dashboard.screens.quit import QuitScreen
from minikv_tui.dashboard.session import EndpointsSession, LocalSession
from minikv_tui.dashboard.widgets.job_panel import JobPanel
from minikv_tui.dashboard.widgets.load_panel import LoadPanel
from minikv_tui.dashboard.widgets.nodes_table import NodesTable
from minikv_tui.launcher import Launcher
from minikv_tui.maintenance_jobs import Job as JobView
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


def settled(snapshot: ClusterSnapshot) -> bool:
    """Healthy, and every group led by its preferred node (placement.py). A fresh cluster
    moves leadership there a few seconds after electing, so a test that picks a shard's
    leader before this can see it move away mid-test (a flush waited for on node 2 while
    node 1 had taken over)."""
    if not healthy(snapshot) or not snapshot.shards:
        return False
    ids = [node.node_id for node in snapshot.nodes]
    replicas = len(snapshot.shards[0].replicas)
    placements = place_shards(ids, len(snapshot.shards), replicas)
    return snapshot.meta_leader == place_meta(
        ids, len(snapshot.shards), replicas
    ).preferred_leader and all(
        shard.leader == placements[shard.shard].preferred_leader for shard in snapshot.shards
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


# --- maintenance: repair, verify ------------------------------------------------------------

INTERNAL_ERROR = re.compile(r"Traceback|^[A-Za-z]*(Error|Exception): ")
"""What a notification looks like when an exception escaped the actions' own handling."""
MAINTENANCE_CLUSTER_NODES = 4
MAINTENANCE_SHARDS = 4
JOB_S = 30.0
"""A repair of a dead node's replicas (learners catching up) on a loaded machine."""
JOB_ATTEMPTS = 3
"""A job ends with its meta leader (a slow heartbeat on a loaded 2-core machine can move it):
the panel then says "lost — press r to re-plan", and the test does what it says."""


class Operator:
    """Presses a maintenance key, answers the dialog, waits for the job's end; when the job
    is lost or failed (as the panel says), or the key was refused (a red notification saying
    to try again), presses the key again, as a person would."""

    def __init__(
        self, pilot: Pilot[str | None], app: DashboardApp, notes: list[Notification]
    ) -> None:
        self.pilot = pilot
        self.app = app
        self.notes = notes
        self.dialogs: list[str] = []
        self.outcomes: list[str] = []

    def told(self, text: str, since: int = 0) -> bool:
        return any(text in str(note.message) for note in self.notes[since:])

    def refused(self, since: int) -> bool:
        return any(note.severity == "error" for note in self.notes[since:])

    async def run(self, key: str, kind: str) -> JobView | None:
        """The job that ended done, or None if the plan had nothing to do."""
        for _ in range(JOB_ATTEMPTS):
            status = await self._attempt(key, kind)
            if status is None:
                return None
            if status.job is not None and status.job.state == "done" and not status.lost:
                return status.job
            await until(
                self.pilot, self.app, lambda s: s.meta_leader is not None, "a meta leader", CHANGE_S
            )
        raise AssertionError(
            f"no {kind} job ended done in {JOB_ATTEMPTS} attempts: {self.outcomes}"
        )

    async def _attempt(self, key: str, kind: str) -> JobStatus | None:
        app = self.app
        previous = app.job_status.job
        seen = len(self.notes)
        await self.pilot.press(key)
        await until(
            self.pilot,
            app,
            lambda s: (
                isinstance(app.screen, ConfirmScreen)
                or self.told("nothing to", seen)
                or self.refused(seen)
            ),
            f"the {kind} dialog",
            CHANGE_S,
        )
        if self.refused(seen):
            self.outcomes.append(f"refused: {[n.message for n in self.notes[seen:]]}")
            return JobStatus(None, 0.0)  # no job: try again
        if not isinstance(app.screen, ConfirmScreen):
            return None
        self.dialogs.append(str(app.screen.query_one(".dialog-question", Static).content))
        await self.pilot.press("y")

        def ended(_: ClusterSnapshot) -> bool:
            status = app.job_status
            job = status.job
            # The panel too: the watcher learns of the end while polling, and the panel shows
            # it only when that poll's frame is applied.
            shown = app.query_one(JobPanel).status
            return (
                job is not None
                and job != previous
                and (status.lost or not job.running)
                and shown is not None
                and (shown.job, shown.lost) == (job, status.lost)
            )

        await until(self.pilot, app, ended, f"the {kind} job's end", JOB_S)
        status = app.job_status
        assert status.job is not None and status.job.kind == kind, status
        self.outcomes.append(app.query_one(JobPanel).text)
        return status


async def leaders_voters(addresses: list[str]) -> dict[int, list[int]]:
    """Shard -> voters, as each shard's leader reports them (asked of every address given)."""
    voters: dict[int, list[int]] = {}
    client = AsyncClient(addresses)
    try:
        for address in addresses:
            status = await client.status(address, timeout_s=2.0)
            for group in status["groups"]:
                if group.get("shard") is not None and group["role"] == "leader":
                    voters[int(group["shard"])] = sorted(int(n) for n in group["voters"])
    finally:
        await client.close()
    return voters


def healthy_four(snapshot: ClusterSnapshot) -> bool:
    return (
        len(snapshot.nodes) == MAINTENANCE_CLUSTER_NODES
        and all(n.state == "up" for n in snapshot.nodes)
        and snapshot.meta_leader is not None
        and len(snapshot.shards) == MAINTENANCE_SHARDS
        and all(shard.leader is not None for shard in snapshot.shards)
    )


async def test_repair_with_a_killed_node_declared_dead_then_verify(minikv_home: Path) -> None:
    """Kill a node from the dashboard, press R on it, read the plan, confirm: the job panel
    follows the repair to its end, every shard is back on three voters none of which is the
    dead node, and a verify finds every shard consistent — from the local dashboard, then
    from one attached by endpoints. Every notification is collected: none may be an error."""
    session = LocalSession(
        CLUSTER, nodes=MAINTENANCE_CLUSTER_NODES, shards=MAINTENANCE_SHARDS, home=minikv_home
    )
    app = DashboardApp(session, DashboardOptions(confirm=True, on_exit="keep", tz=dt.UTC))
    notes: list[Notification] = []

    def hook(message: Message) -> None:
        if isinstance(message, Notify):
            notes.append(message.notification)

    async with app.run_test(size=(120, 40), message_hook=hook) as pilot:
        operator = Operator(pilot, app, notes)
        snapshot = await until(pilot, app, healthy_four, "a healthy 4-node cluster", READY_S)
        # Nothing to repair yet: told so, no dialog, no job.
        assert await operator.run("r", "repair") is None
        assert operator.told("nothing to repair") and app.job_status.job is None

        victim = max(n.node_id for n in snapshot.nodes if n.node_id != snapshot.meta_leader)
        app.query_one(NodesTable).select_node(victim)
        await pilot.press("k")
        assert isinstance(app.screen, ConfirmScreen)
        await pilot.press("y")
        await until(
            pilot,
            app,
            lambda s: (node := s.node(victim)) is not None and node.state == "down",
            f"node {victim} down",
            CHANGE_S,
        )
        job = await operator.run("R", "repair")
        first = operator.dialogs[0]
        assert f"node {victim} declared dead" in first, first
        assert "The plan (" in first and "add a replica" in first, first
        if job is not None:  # None: a lost attempt had done it all (the re-plan said so)
            assert job.dead == (victim,)
            assert "replicas moved" in operator.outcomes[-1], operator.outcomes

        live = [n.grpc for n in snapshot.nodes if n.node_id != victim]
        deadline = time.monotonic() + CHANGE_S
        while True:
            voters = await leaders_voters(live)
            if len(voters) == MAINTENANCE_SHARDS and all(
                len(v) == 3 and victim not in v for v in voters.values()
            ):
                break
            assert time.monotonic() < deadline, f"shards not on 3 live voters: {voters}"
            await pilot.pause(0.1)

        verified = await operator.run("v", "verify")
        assert verified is not None and verified.succeeded
        assert f"all {MAINTENANCE_SHARDS} shards consistent" in operator.outcomes[-1]
        kinds = await journal_kinds(minikv_home)
        # Started and finished, each journalled once per job (two jobs at least).
        assert kinds.count("repair") >= 2 and kinds.count("verify") >= 2, kinds

    # Attached by endpoints (no launcher): the last job is shown, and verify runs in demo
    # mode (no dialog: the key starts it).
    endpoints = ",".join(live)
    attached = DashboardApp(EndpointsSession(endpoints), DashboardOptions(confirm=False, tz=dt.UTC))
    async with attached.run_test(size=(80, 24), message_hook=hook) as pilot:
        await until(
            pilot,
            attached,
            lambda s: (job := attached.job_status.job) is not None and job.kind == "verify",
            "the last job shown",
            CHANGE_S,
        )
        last = attached.job_status.job
        await pilot.press("v")
        await until(
            pilot,
            attached,
            lambda s: (
                (job := attached.job_status.job) is not None
                and job != last
                and (attached.job_status.lost or not job.running)
            ),
            "a second verify's end",
            JOB_S,
        )
        status = attached.job_status
        if not status.lost:  # lost with its meta leader: nothing this dashboard can tell
            assert (
                f"all {MAINTENANCE_SHARDS} shards consistent" in attached.query_one(JobPanel).text
            )
    internal = [n for n in notes if INTERNAL_ERROR.search(str(n.message))]
    assert not internal, [(n.title, n.message) for n in internal]
