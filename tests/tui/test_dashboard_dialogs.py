"""The dashboard's dialogs and actions on odd input, without a cluster: what a person types by
mistake, or asks of a cluster that cannot do it, must come back as a line that says why, never
as an exception that ends the dashboard, nor as silence."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Callable
from typing import cast

import pytest
from textual.app import App, ComposeResult
from textual.message import Message
from textual.notifications import Notification, Notify
from textual.pilot import Pilot
from textual.widgets import Input, Label, Static

from minikv_core.client import AsyncClient, InvalidRequestError, UnavailableError
from minikv_tui.cluster_status import ClusterSnapshot, NodeStatus, ReplicaStatus, ShardStatus
from minikv_tui.dashboard.app import DashboardApp, DashboardOptions
from minikv_tui.dashboard.control import ClusterControl
from minikv_tui.dashboard.screens.confirm import ConfirmScreen
from minikv_tui.dashboard.screens.kv import KvScreen
from minikv_tui.dashboard.screens.partition import (
    PartitionParseError,
    PartitionRequest,
    PartitionScreen,
    parse_request,
)
from minikv_tui.dashboard.session import RecordedSession
from minikv_tui.dashboard.source import Frame
from minikv_tui.dashboard.widgets.nodes_table import NodesTable

ADDRESSES = {1: "127.0.0.1:1001", 2: "127.0.0.1:1002", 3: "127.0.0.1:1003"}
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


# --- actions that stop before the cluster: what they say -------------------------------------


def _node(node_id: int, reachable: bool) -> NodeStatus:
    return NodeStatus(
        node_id=node_id,
        grpc=ADDRESSES[node_id],
        http=None,
        pid=None,
        process="up" if reachable else "down",
        reachable=reachable,
    )


def _shard(shard: int, leader: int | None, live: tuple[int, ...]) -> ShardStatus:
    replicas = {
        n: ReplicaStatus(n, "leader" if n == leader else "follower", 1, 1, 1, 1) for n in live
    }
    return ShardStatus(shard, shard + 1, (1, 2, 3), leader, 1, replicas)


def _frame(nodes: tuple[NodeStatus, ...], shards: tuple[ShardStatus, ...]) -> Frame:
    snapshot = ClusterSnapshot(
        taken_at=0.0, name="t", nodes=nodes, shards=shards, meta_leader=None, meta_term=1, epoch=1
    )
    return Frame(snapshot, detailed=True)


class _NoJobs:
    """The only admin call the dashboard makes unasked: the job panel's read, answered as
    by a cluster that never ran a job."""

    async def maintain(self, operation: str, args: object, **_: object) -> dict[str, object]:
        raise InvalidRequestError("no job has run yet")

    async def put(self, key: bytes, value: bytes, **_: object) -> int:
        raise UnavailableError("no leader answered before the deadline")

    async def get(self, key: bytes, **_: object) -> bytes:
        raise UnavailableError("no leader answered before the deadline")


def _app(frame: Frame, *, confirm: bool = False) -> tuple[DashboardApp, list[Notification]]:
    """The dashboard on one hand-made frame, with a control that answers only the job
    panel's read (the actions under test must stop before any admin call)."""
    session = RecordedSession([frame], title="t")
    session.control = ClusterControl(cast(AsyncClient, _NoJobs()), lambda: ADDRESSES)
    return DashboardApp(session, DashboardOptions(confirm=confirm, tz=dt.UTC)), []


async def _shown(app: DashboardApp, pilot: Pilot[str | None]) -> None:
    for _ in range(100):
        if app.replay_finished:
            return
        await pilot.pause(0.02)
    raise AssertionError(f"the frame was never shown: {app.frames_applied}, {app.failure}")


def _hook(notes: list[Notification]) -> Callable[[Message], None]:
    def hook(message: Message) -> None:
        if isinstance(message, Notify):
            notes.append(message.notification)

    return hook


async def test_transfer_with_no_shard_to_select_says_so() -> None:
    """Every node down: the matrix has no rows, and `t` did nothing at all."""
    down = tuple(_node(n, reachable=False) for n in ADDRESSES)
    app, notes = _app(_frame(down, ()))
    async with app.run_test(size=(100, 30), message_hook=_hook(notes)) as pilot:
        await _shown(app, pilot)
        await pilot.press("t")
        await pilot.pause()
        assert [str(n.message) for n in notes] == [
            "no shard selected: the shard matrix is empty until a node answers"
        ]


@pytest.mark.parametrize(
    ("shard", "told"),
    [
        ("9", "no shard 9 in this cluster (shards 0..1)"),
        ("0", "shard 0's last leader, node 3, is down: nothing to isolate until"),
        ("1", "shard 1 has no leader right now"),
    ],
)
async def test_isolating_a_shard_leader_that_is_not_there_says_why(shard: str, told: str) -> None:
    """Shard 9 does not exist (it was "has no known leader"); shard 0's followers still name
    node 3, killed a moment ago (isolating it would change nothing): neither is attempted."""
    nodes = (_node(1, True), _node(2, True), _node(3, False))
    app, notes = _app(_frame(nodes, (_shard(0, 3, (1, 2)), _shard(1, None, (1, 2)))))
    async with app.run_test(size=(100, 30), message_hook=_hook(notes)) as pilot:
        await _shown(app, pilot)
        await pilot.press("n")
        await pilot.pause()
        await pilot.click("#mode-isolate-shard-leader")
        field = app.screen.query_one("#partition-argument", Input)
        field.value = shard
        field.focus()
        await pilot.press("enter")
        for _ in range(50):
            if notes:
                break
            await pilot.pause(0.02)
        assert [n.severity for n in notes] == ["warning"], [n.message for n in notes]
        assert told in str(notes[0].message), notes[0].message


@pytest.mark.parametrize(("key", "verb"), [("k", "kill"), ("s", "stop"), ("p", "pause")])
async def test_kill_stop_or_pause_of_a_down_node_says_so_without_asking(
    key: str, verb: str
) -> None:
    """The nodes table says node 3 is down: "Kill node 3 (SIGKILL)?" was asked anyway, and
    answered yes, failed with the CLI's hint ("minikv cluster start 3")."""
    nodes = (_node(1, True), _node(2, True), _node(3, False))
    app, notes = _app(_frame(nodes, (_shard(0, 1, (1, 2)),)), confirm=True)
    async with app.run_test(size=(100, 30), message_hook=_hook(notes)) as pilot:
        await _shown(app, pilot)
        app.query_one(NodesTable).select_node(3)
        await pilot.press(key)
        await pilot.pause()
        assert not isinstance(app.screen, ConfirmScreen)
        assert [str(n.message) for n in notes] == [
            f"node 3 is down: nothing to {verb} (press u to start it)"
        ]


@pytest.mark.parametrize(
    ("button", "told"),
    [
        ("#put", "put failed: no leader answered before the deadline"),
        ("#get", "get b'k' failed: no leader answered before the deadline"),
    ],
)
async def test_a_failed_put_or_get_is_said_once(button: str, told: str) -> None:
    """The control's message already says what failed; the box said it twice ("put failed:
    put failed: …")."""
    nodes = (_node(1, True), _node(2, True), _node(3, True))
    app, notes = _app(_frame(nodes, (_shard(0, 1, (1, 2, 3)),)))
    async with app.run_test(size=(100, 30), message_hook=_hook(notes)) as pilot:
        await _shown(app, pilot)
        await pilot.press("g")
        await pilot.pause()
        screen = app.screen
        assert isinstance(screen, KvScreen)
        screen.query_one("#kv-key", Input).value = "k"
        screen.query_one("#kv-value", Input).value = "v"
        await pilot.click(button)
        result = screen.query_one("#kv-result", Label)
        for _ in range(100):
            if "failed" in str(result.content):
                break
            await pilot.pause(0.02)
        assert str(result.content) == told


class _Connecting(RecordedSession):
    """A session still starting its cluster (the launcher's progress on screen)."""

    async def connect(self, progress: Callable[[str], None]) -> None:
        progress("starting cluster t")
        await asyncio.Event().wait()


@pytest.mark.parametrize("key", ["k", "s", "u", "p", "a", "c", "t", "R"])
async def test_a_node_key_while_connecting_says_still_connecting(key: str) -> None:
    """Pressed while the cluster starts, the node keys said "no node selected", as if a
    row were missing rather than the whole cluster."""
    app = DashboardApp(_Connecting([], title="t"), DashboardOptions(confirm=False, tz=dt.UTC))
    notes: list[Notification] = []
    async with app.run_test(size=(100, 30), message_hook=_hook(notes)) as pilot:
        await pilot.pause()
        await pilot.press(key)
        await pilot.pause()
        assert [str(n.message) for n in notes] == ["still connecting"]


async def test_toasts_are_plain_text_unless_a_caller_asks_for_markup() -> None:
    """Toast text comes from nodes, errors and paths: read as markup, a closing tag such as
    `[/x]` in it makes the toast's render raise MarkupError (Content.from_markup), and
    `[bold]` in a key would vanish from what the person reads."""
    app, notes = _app(_frame(tuple(_node(n, reachable=True) for n in ADDRESSES), ()))
    async with app.run_test(size=(100, 30), message_hook=_hook(notes)) as pilot:
        await _shown(app, pilot)
        app.notify("node said: [/x] [bold]not markup[/bold]", title="poll failed")
        app.notify("[b]asked for[/b]", markup=True)
        await pilot.pause(0.1)
        assert app.is_running
    plain, marked = notes[-2:]
    assert (plain.message, plain.markup) == ("node said: [/x] [bold]not markup[/bold]", False)
    assert marked.markup
