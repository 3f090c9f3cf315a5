"""Every dashboard action the kill/partition/load/quit/maintenance pilot tests do not press.

Same ground rules as `test_dashboard_pilot.py`, whose helpers these reuse: a real 3-node,
2-shard cluster per test in its own MINIKV_HOME (`minikv_home` stops whatever is left there,
even on failure), keys pressed through Pilot, and waits that poll the applied frames with a
deadline. Every notification is collected: a waiting test fails at once, with the toast's
text, when an action reports an error instead of timing out with a vague "last frame".
"""

from __future__ import annotations

import datetime as dt
import time
from pathlib import Path

import pytest
from textual.coordinate import Coordinate
from textual.message import Message
from textual.notifications import Notification, Notify
from textual.pilot import Pilot
from textual.widgets import Input, Label

from minikv_core.client import AsyncClient
from minikv_tui.cluster_status import ClusterSnapshot, ShardStatus
from minikv_tui.dashboard.app import DashboardApp, DashboardOptions
from minikv_tui.dashboard.screens.confirm import ConfirmScreen
from minikv_tui.dashboard.screens.kv import KvScreen
from minikv_tui.dashboard.screens.partition import PartitionScreen
from minikv_tui.dashboard.screens.quit import QuitScreen
from minikv_tui.dashboard.session import EndpointsSession
from minikv_tui.dashboard.widgets.event_log import EventLog
from minikv_tui.dashboard.widgets.nodes_table import NodesTable
from minikv_tui.dashboard.widgets.shard_matrix import ShardMatrix
from minikv_tui.launcher import Launcher
from tests.tui.conftest import processes_under
from tests.tui.test_dashboard_pilot import (
    CHANGE_S,
    CLUSTER,
    READY_S,
    healthy,
    journal_kinds,
    make_app,
    settled,
    until,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

SIZE = (120, 40)
"""Wide enough for every panel at once (the event log included)."""
KEYS_PER_FLUSH = 40
"""Enough keys that both shards of the test cluster get some (hashing is fixed)."""
EXIT_S = 15.0
"""A quit that stops three nodes (SIGTERM, then a wait for each)."""


class Notes:
    """Every toast the app raised, in order; `hook` goes to `run_test(message_hook=...)`."""

    def __init__(self) -> None:
        self.all: list[Notification] = []

    def hook(self, message: Message) -> None:
        if isinstance(message, Notify):
            self.all.append(message.notification)

    @property
    def mark(self) -> int:
        return len(self.all)

    def told(self, text: str, since: int = 0) -> bool:
        return any(text in str(note.message) for note in self.all[since:])

    def errors(self, since: int = 0) -> list[Notification]:
        return [note for note in self.all[since:] if note.severity == "error"]

    def clean(self, since: int = 0) -> bool:
        """True, or the red toasts as the failure (for use inside a wait's predicate)."""
        errors = self.errors(since)
        assert not errors, [f"{note.title}: {note.message}" for note in errors]
        return True


def others(snapshot: ClusterSnapshot, *nodes: int) -> tuple[int, ...]:
    return tuple(sorted(n.node_id for n in snapshot.nodes if n.node_id not in nodes))


def cut_off(snapshot: ClusterSnapshot) -> dict[int, tuple[int, ...]]:
    return {n.node_id: n.cut_off_from for n in snapshot.nodes}


def shard_of(snapshot: ClusterSnapshot, shard: int) -> ShardStatus:
    return next(s for s in snapshot.shards if s.shard == shard)


def state_cell(app: DashboardApp, node: int) -> str:
    return app.query_one(NodesTable).get_cell(str(node), "state").plain


def event_log_text(app: DashboardApp) -> str:
    """The log's lines as one string, whitespace collapsed: a long entry wraps in a narrow
    panel, and a phrase split over two lines must still be found."""
    return " ".join(" ".join(strip.text for strip in app.query_one(EventLog).lines).split())


def select_shard(app: DashboardApp, shard: int) -> None:
    matrix = app.query_one(ShardMatrix)
    for row in range(matrix.row_count):
        row_key, _ = matrix.coordinate_to_cell_key(Coordinate(row, 0))
        if row_key.value == str(shard):
            matrix.move_cursor(row=row)
            break
    assert matrix.selected_shard == shard, f"shard {shard} not in the matrix"


def select_node(app: DashboardApp, node: int) -> None:
    table = app.query_one(NodesTable)
    table.select_node(node)
    assert table.selected_node == node, f"node {node} not in the nodes table"


async def put_keys(snapshot: ClusterSnapshot, prefix: str, count: int) -> None:
    client = AsyncClient([n.grpc for n in snapshot.nodes])
    try:
        for index in range(count):
            await client.put(f"{prefix}-{index:03d}".encode(), b"v" * 32, timeout_s=5.0)
    finally:
        await client.close()


async def fault_rules(snapshot: ClusterSnapshot) -> dict[int, tuple[list[int], list[int]]]:
    """Node -> (drop_to, drop_from), as each node reports its own fault rules."""
    client = AsyncClient([n.grpc for n in snapshot.nodes])
    rules = {}
    try:
        for node in snapshot.nodes:
            fault = (await client.status(node.grpc, timeout_s=2.0)).get("fault") or {}
            rules[node.node_id] = (
                sorted(int(n) for n in fault.get("drop_to", [])),
                sorted(int(n) for n in fault.get("drop_from", [])),
            )
    finally:
        await client.close()
    return rules


async def choose_partition(
    pilot: Pilot[str | None], app: DashboardApp, mode: str, arg: str
) -> None:
    """Open the dialog, pick `mode`, type `arg`, press Cut; the dialog must close (a parse
    error would keep it open with a red line)."""
    await pilot.press("n")
    assert isinstance(app.screen, PartitionScreen)
    await pilot.click(f"#mode-{mode}")
    app.screen.query_one("#partition-argument", Input).value = arg
    await pilot.click("#cut")
    assert not isinstance(app.screen, PartitionScreen), "the dialog refused the input"


async def heal(pilot: Pilot[str | None], app: DashboardApp, notes: Notes) -> None:
    mark = notes.mark
    await pilot.press("h")
    await until(
        pilot,
        app,
        lambda s: notes.clean(mark) and all(not n.cut_off_from for n in s.nodes) and healthy(s),
        "every node reconnected and healthy",
        CHANGE_S,
    )


async def exited(pilot: Pilot[str | None], app: DashboardApp) -> None:
    deadline = time.monotonic() + EXIT_S
    while app.is_running and time.monotonic() < deadline:
        await pilot.pause(0.05)
    assert not app.is_running, "the dashboard did not exit"


# --- processes ------------------------------------------------------------------------------


async def node_state(
    pilot: Pilot[str | None],
    app: DashboardApp,
    notes: Notes,
    node: int,
    state: str,
    *,
    told: str = "",
    timeout_s: float = CHANGE_S,
) -> ClusterSnapshot:
    """Until the action's toast said `told` (if given), no error toast came, and the frame
    and the nodes table both show `node` in `state`."""
    snapshot = await until(
        pilot,
        app,
        lambda s: (
            notes.clean()
            and (not told or notes.told(told))
            and (n := s.node(node)) is not None
            and n.state == state
        ),
        f"node {node} {state}",
        timeout_s,
    )
    assert state_cell(app, node) == state
    return snapshot


async def test_stop_asks_then_shows_stopped_and_start_brings_it_back_up(minikv_home: Path) -> None:
    app = make_app(minikv_home, confirm=True)
    notes = Notes()
    async with app.run_test(size=SIZE, message_hook=notes.hook) as pilot:
        snapshot = await until(pilot, app, settled, "a settled cluster", READY_S)
        node = max(others(snapshot, snapshot.meta_leader or 0))
        select_node(app, node)
        await pilot.press("s")
        assert isinstance(app.screen, ConfirmScreen), "stop did not ask first"
        await pilot.press("y")
        await node_state(pilot, app, notes, node, "stopped", told=f"node {node} stopped")
        await pilot.press("u")
        # The toast comes after the journal entry: the node can show up before either.
        await node_state(
            pilot, app, notes, node, "up", told=f"node {node} started", timeout_s=READY_S
        )
        kinds = await journal_kinds(minikv_home)
        assert "stop" in kinds and "start" in kinds, kinds


async def test_pause_shows_paused_then_the_same_key_resumes_it(minikv_home: Path) -> None:
    app = make_app(minikv_home)
    notes = Notes()
    async with app.run_test(size=SIZE, message_hook=notes.hook) as pilot:
        snapshot = await until(pilot, app, settled, "a settled cluster", READY_S)
        node = min(others(snapshot, snapshot.meta_leader or 0))
        pid = next(n.pid for n in snapshot.nodes if n.node_id == node)
        select_node(app, node)
        await pilot.press("p")
        await node_state(pilot, app, notes, node, "paused", told=f"node {node} paused")
        await pilot.press("p")
        after = await node_state(pilot, app, notes, node, "up", told=f"node {node} resumed")
        resumed = after.node(node)
        assert resumed is not None and resumed.pid == pid  # the same process, continued
        kinds = await journal_kinds(minikv_home)
        assert "pause" in kinds and "resume" in kinds, kinds


# --- leadership and storage -------------------------------------------------------------------


async def test_transfer_hands_the_selected_shard_to_the_selected_node(minikv_home: Path) -> None:
    app = make_app(minikv_home)
    notes = Notes()
    async with app.run_test(size=SIZE, message_hook=notes.hook) as pilot:
        snapshot = await until(pilot, app, settled, "a settled cluster", READY_S)
        shard = shard_of(snapshot, 1)
        target = max(n for n in shard.replicas if n != shard.leader)
        select_shard(app, shard.shard)
        select_node(app, target)
        await pilot.press("t")
        await until(
            pilot,
            app,
            lambda s: (
                notes.clean()
                and notes.told(f"node {target} now leads shard {shard.shard}")
                and shard_of(s, shard.shard).leader == target
            ),
            f"node {target} leading shard {shard.shard}",
            CHANGE_S,
        )
        await until(
            pilot,
            app,
            lambda s: (
                f"shard {shard.shard}: leader {shard.leader} -> {target}" in event_log_text(app)
            ),
            "the leader change in the event log",
            CHANGE_S,
        )
        assert "transfer-leader" in await journal_kinds(minikv_home)


async def test_snapshot_flushes_the_leaders_tables_and_compact_merges_them(
    minikv_home: Path,
) -> None:
    """Two snapshots with writes between leave two flushed tables on the shard's leader; a
    full compaction merges them into one new table holding the same keys."""
    app = make_app(minikv_home)
    notes = Notes()
    async with app.run_test(size=SIZE, message_hook=notes.hook) as pilot:
        snapshot = await until(pilot, app, settled, "a settled cluster", READY_S)
        shard_id = 0
        leader = shard_of(snapshot, shard_id).leader
        assert leader is not None
        select_node(app, leader)

        def led(s: ClusterSnapshot) -> ShardStatus | None:
            shard = shard_of(s, shard_id)
            return shard if shard.leader == leader and shard.keys is not None else None

        def memtable_holds_keys(s: ClusterSnapshot) -> bool:
            shard = led(s)
            return shard is not None and (shard.keys or 0) > sum(t.keys for t in shard.tables)

        async def snapshot_round(number: int, before: set[str]) -> ShardStatus:
            """Write, press `a`: one more table, holding what the memtable held."""
            await put_keys(snapshot, f"round{number}", KEYS_PER_FLUSH)
            await until(pilot, app, memtable_holds_keys, "keys in the memtable", CHANGE_S)
            mark = notes.mark
            await pilot.press("a")
            flushed = await until(
                pilot,
                app,
                lambda s: (
                    notes.clean(mark)
                    and notes.told(f"node {leader}: replicas flushed and snapshotted", mark)
                    and (shard := led(s)) is not None
                    and len(shard.tables) == number
                    and before < {t.name for t in shard.tables}
                    and not memtable_holds_keys(s)
                ),
                f"flush number {number} of shard {shard_id} on node {leader}",
                CHANGE_S,
            )
            return shard_of(flushed, shard_id)

        first = await snapshot_round(1, set())
        second = await snapshot_round(2, {t.name for t in first.tables})
        names = {t.name for t in second.tables}
        keys = sum(t.keys for t in second.tables)

        mark = notes.mark
        await pilot.press("c")
        compacted = await until(
            pilot,
            app,
            lambda s: (
                notes.clean(mark)
                and notes.told(f"node {leader}: replicas compacted", mark)
                and (shard := led(s)) is not None
                and len(shard.tables) == 1
                and shard.tables[0].name not in names
            ),
            f"one merged table for shard {shard_id}",
            CHANGE_S,
        )
        assert sum(t.keys for t in shard_of(compacted, shard_id).tables) == keys
        await until(
            pilot,
            app,
            lambda s: (
                f"snapshot node {leader}" in (text := event_log_text(app))
                and f"compact node {leader}" in text
            ),
            "snapshot and compact in the event log",
            CHANGE_S,
        )
        kinds = await journal_kinds(minikv_home)
        assert kinds.count("snapshot") == 2 and kinds.count("compact") == 1, kinds


# --- data and screen ------------------------------------------------------------------------


async def test_put_get_box_writes_a_key_and_reads_it_back(minikv_home: Path) -> None:
    app = make_app(minikv_home)
    async with app.run_test(size=SIZE) as pilot:
        snapshot = await until(pilot, app, settled, "a settled cluster", READY_S)
        await pilot.press("g")
        screen = app.screen
        assert isinstance(screen, KvScreen)
        result = screen.query_one("#kv-result", Label)
        screen.query_one("#kv-key", Input).value = "demo-key"
        screen.query_one("#kv-value", Input).value = "hello, projector"
        await pilot.click("#put")
        await until(
            pilot,
            app,
            lambda s: "put b'demo-key': version" in str(result.content),
            "the put's answer in the box",
            CHANGE_S,
        )
        screen.query_one("#kv-value", Input).value = ""
        await pilot.click("#get")
        await until(
            pilot,
            app,
            lambda s: "=" in str(result.content),
            "the get's answer in the box",
            CHANGE_S,
        )
        assert str(result.content) == "b'demo-key' = b'hello, projector'"
        key_field = screen.query_one("#kv-key", Input)
        key_field.value = "never-written"
        key_field.focus()
        await pilot.press("enter")  # Enter in the key field gets it
        await until(
            pilot,
            app,
            lambda s: "not found" in str(result.content),
            "a missing key's answer",
            CHANGE_S,
        )
        await pilot.press("escape")
        assert not isinstance(app.screen, KvScreen)
    client = AsyncClient([n.grpc for n in snapshot.nodes])
    try:  # written to the cluster, not only shown
        assert await client.get(b"demo-key", timeout_s=5.0) == b"hello, projector"
    finally:
        await client.close()


async def test_ctrl_s_saves_an_svg_where_the_notification_says(
    minikv_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As `minikv tui` runs it (no screenshot directory chosen): into the working directory,
    which the toast names."""
    workdir = tmp_path / "cwd"
    workdir.mkdir()
    monkeypatch.chdir(workdir)
    app = make_app(minikv_home)
    notes = Notes()
    async with app.run_test(size=SIZE, message_hook=notes.hook) as pilot:
        await until(pilot, app, settled, "a settled cluster", READY_S)
        await pilot.press("ctrl+s")
        await until(
            pilot,
            app,
            lambda s: notes.clean() and notes.told("saved "),
            "the screenshot toast",
            CHANGE_S,
        )
        # A directory that cannot take the file (here: removed under our feet) is a red
        # toast saying what to do, not a traceback.
        gone = tmp_path / "gone"
        gone.mkdir()
        monkeypatch.chdir(gone)
        gone.rmdir()
        await pilot.press("ctrl+s")
        await until(pilot, app, lambda s: bool(notes.errors()), "the failure toast", CHANGE_S)
        (failure,) = notes.errors()
        assert failure.title == "screenshot failed"
        assert "writable" in str(failure.message)
        assert app.is_running
    said = next(str(n.message) for n in notes.all if str(n.message).startswith("saved "))
    path = (workdir / said.removeprefix("saved ")).resolve()
    assert path.parent == workdir.resolve() and path.suffix == ".svg", said
    content = path.read_text(encoding="utf-8")
    assert content.lstrip().startswith("<svg") and "</svg>" in content
    assert "nodes" in content  # the dashboard, not an empty screen
    assert [p.name for p in workdir.iterdir()] == [path.name]


# --- the partition dialog ------------------------------------------------------------------


async def test_partition_dialog_groups_splits_the_cluster_and_heal_rejoins_it(
    minikv_home: Path,
) -> None:
    app = make_app(minikv_home)
    notes = Notes()
    async with app.run_test(size=SIZE, message_hook=notes.hook) as pilot:
        snapshot = await until(pilot, app, settled, "a settled cluster", READY_S)
        first, second, third = sorted(n.node_id for n in snapshot.nodes)
        await choose_partition(pilot, app, "groups", f"{first},{second} | {third}")
        expected = {first: (third,), second: (third,), third: (first, second)}
        await until(
            pilot,
            app,
            lambda s: (
                notes.clean()
                and notes.told(f"partitioned: {first},{second} | {third}")
                and cut_off(s) == expected
            ),
            f"groups {first},{second} | {third}",
            CHANGE_S,
        )
        await until(
            pilot,
            app,
            lambda s: (
                s.meta_leader in (first, second)
                and all(shard.leader in (first, second) for shard in s.shards)
            ),
            "the meta group and every shard led from the majority side",
            CHANGE_S,
        )
        await heal(pilot, app, notes)
        kinds = await journal_kinds(minikv_home)
        assert "partition" in kinds and "heal" in kinds, kinds


async def test_partition_dialog_isolates_a_shards_leader_and_another_replica_takes_over(
    minikv_home: Path,
) -> None:
    app = make_app(minikv_home)
    notes = Notes()
    async with app.run_test(size=SIZE, message_hook=notes.hook) as pilot:
        snapshot = await until(pilot, app, settled, "a settled cluster", READY_S)
        shard_id = 1
        leader = shard_of(snapshot, shard_id).leader
        assert leader is not None
        rest = others(snapshot, leader)
        await choose_partition(pilot, app, "isolate-shard-leader", str(shard_id))
        await until(
            pilot,
            app,
            lambda s: (
                notes.clean()
                and (node := s.node(leader)) is not None
                and node.state == "partitioned"
                and node.cut_off_from == rest
                and shard_of(s, shard_id).leader in rest
            ),
            f"node {leader} cut off and shard {shard_id} led by one of {rest}",
            CHANGE_S,
        )
        assert state_cell(app, leader) == "partitioned"
        await heal(pilot, app, notes)
        assert "isolate" in await journal_kinds(minikv_home)


async def test_partition_dialog_one_way_cut_drops_one_direction_only(minikv_home: Path) -> None:
    """`a > b`: a drops what it sends to b and b drops what it hears from a; b's messages to
    a still flow, and the third node is untouched (read from the nodes' own fault rules)."""
    app = make_app(minikv_home)
    notes = Notes()
    async with app.run_test(size=SIZE, message_hook=notes.hook) as pilot:
        snapshot = await until(pilot, app, settled, "a settled cluster", READY_S)
        source, sink, bystander = sorted(n.node_id for n in snapshot.nodes)
        await choose_partition(pilot, app, "one-way", f"{source} > {sink}")
        await until(
            pilot,
            app,
            lambda s: (
                notes.clean()
                and notes.told(f"cut {source} -> {sink} dropped (one way)")
                and cut_off(s) == {source: (sink,), sink: (source,), bystander: ()}
            ),
            f"a one-way cut {source} -> {sink}",
            CHANGE_S,
        )
        assert await fault_rules(snapshot) == {
            source: ([sink], []),
            sink: ([], [source]),
            bystander: ([], []),
        }
        await until(
            pilot,
            app,
            lambda s: f"{source} -> {sink} dropped (one way)" in event_log_text(app),
            "the one-way cut in the event log",
            CHANGE_S,
        )
        await heal(pilot, app, notes)
        assert await fault_rules(snapshot) == {n: ([], []) for n in (source, sink, bystander)}


# --- attached by endpoints -------------------------------------------------------------------


async def test_endpoints_session_refuses_kill_but_partitions_and_heals(minikv_home: Path) -> None:
    launcher = Launcher(CLUSTER, home=minikv_home)
    view = (await launcher.up(nodes=3, shards=2, replicas=3)).view
    pids = sorted(processes_under(minikv_home))
    assert len(pids) == 3, pids
    session = EndpointsSession(",".join(view.endpoints()))
    # Confirmations on: a process action is refused at once, not after asking.
    app = DashboardApp(session, DashboardOptions(confirm=True, on_exit="ask", tz=dt.UTC))
    notes = Notes()
    async with app.run_test(size=SIZE, message_hook=notes.hook) as pilot:
        snapshot = await until(pilot, app, settled, "a settled cluster", READY_S)
        victim = max(others(snapshot, snapshot.meta_leader or 0))
        select_node(app, victim)
        await pilot.press("k")
        await until(pilot, app, lambda s: bool(notes.errors()), "the kill refused", CHANGE_S)
        assert not isinstance(app.screen, ConfirmScreen)
        (refusal,) = notes.errors()
        assert refusal.title == f"kill node {victim} refused"
        assert "process actions need a cluster started by minikv" in str(refusal.message)
        assert "--endpoints" in str(refusal.message)
        assert sorted(processes_under(minikv_home)) == pids  # nothing was signalled

        mark = notes.mark
        await choose_partition(pilot, app, "isolate-node", str(victim))
        rest = others(snapshot, victim)
        await until(
            pilot,
            app,
            lambda s: (
                notes.clean(mark)
                and (node := s.node(victim)) is not None
                and node.state == "partitioned"
                and node.cut_off_from == rest
                and all(cut == (victim,) for n, cut in cut_off(s).items() if n != victim)
            ),
            f"node {victim} partitioned from {rest}",
            CHANGE_S,
        )
        await heal(pilot, app, notes)
        await pilot.press("q")  # not ours to stop: no question, the nodes stay
        await exited(pilot, app)
    assert app.return_value is None
    assert sorted(processes_under(minikv_home)) == pids


# --- quitting --------------------------------------------------------------------------------


async def test_quit_keep_leaves_the_nodes_running_and_quit_stop_leaves_none(
    minikv_home: Path,
) -> None:
    app = make_app(minikv_home, on_exit="ask")
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, app, settled, "a settled cluster", READY_S)
        pids = sorted(processes_under(minikv_home))
        assert len(pids) == 3, pids
        await pilot.press("q")
        assert isinstance(app.screen, QuitScreen)
        await pilot.press("k")
        await exited(pilot, app)
    assert app.return_value is not None and "left running" in app.return_value
    assert sorted(processes_under(minikv_home)) == pids  # the same processes, still there
    assert (await Launcher(CLUSTER, home=minikv_home).view()).running == 3

    again = make_app(minikv_home, on_exit="ask")  # attaches to the running cluster
    async with again.run_test(size=SIZE) as pilot:
        await until(pilot, again, healthy, "the cluster, attached again", READY_S)
        await pilot.press("q")
        assert isinstance(again.screen, QuitScreen)
        await pilot.press("s")
        await exited(pilot, again)
    assert again.return_value is not None and "stopped" in again.return_value
    assert processes_under(minikv_home) == []
