"""The dashboard app: composes the widgets, runs the poll loop, maps keys to actions.

One worker owns the session: it connects (creating or starting a local cluster with visible
progress), then polls in a loop, one poll in flight at a time, sleeping only what is left of
the refresh period, and posts a `FrameFetched` per poll (a recording: one `ReplayFetched` with
all its frames). Handlers apply frames to the widgets, which do no I/O. Actions run in their
own workers and report back as notifications: a failed action is a red toast, never a
traceback.

Maintenance jobs (repair, verify, rebalance) run on the meta leader for seconds or minutes: an
action only starts one (after showing its dry-run plan), and the same session worker reads the
job after each frame (`JobWatcher`), so the job panel moves with the rest of the screen and
job reads never overlap.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

from textual import on, work
from textual.app import App, ComposeResult, SystemCommand
from textual.binding import Binding, BindingType
from textual.containers import Container
from textual.css.query import NoMatches
from textual.message import Message
from textual.notifications import SeverityLevel
from textual.screen import Screen
from textual.widgets import Footer
from textual.worker import Worker

from minikv_tui.cluster_status import ClusterSnapshot, observe_changes
from minikv_tui.dashboard.control import (
    PROCESS_ACTIONS_UNAVAILABLE,
    ActionError,
    ClusterControl,
    PartitionPlan,
)
from minikv_tui.dashboard.job_watch import JobStatus, JobWatcher
from minikv_tui.dashboard.jobs import (
    VERIFY_QUESTION,
    JobDocumentError,
    confirm_text,
    job_title,
    nothing_planned,
    parse_job,
    parse_plan,
)
from minikv_tui.dashboard.journal import LogEvent
from minikv_tui.dashboard.palette import Palette
from minikv_tui.dashboard.screens.confirm import ConfirmScreen
from minikv_tui.dashboard.screens.help import HelpScreen
from minikv_tui.dashboard.screens.kv import KvError, KvScreen
from minikv_tui.dashboard.screens.partition import PartitionRequest, PartitionScreen
from minikv_tui.dashboard.screens.quit import QuitChoice, QuitScreen
from minikv_tui.dashboard.session import Session, detail_every, poll_timeout_s
from minikv_tui.dashboard.source import Frame
from minikv_tui.dashboard.themes import HIGH_CONTRAST_THEME, THEMES, palette_for
from minikv_tui.dashboard.widgets.event_log import EventLog
from minikv_tui.dashboard.widgets.header import ClusterHeader
from minikv_tui.dashboard.widgets.job_panel import JobPanel
from minikv_tui.dashboard.widgets.load_panel import LoadPanel
from minikv_tui.dashboard.widgets.nodes_table import NodesTable
from minikv_tui.dashboard.widgets.shard_map import ShardMap
from minikv_tui.dashboard.widgets.shard_matrix import ShardMatrix
from minikv_tui.dashboard.widgets.storage import StoragePanel
from minikv_tui.errors import UserError
from minikv_tui.loadgen import LoadWindow

WIDE_COLUMNS = 120
"""From here every panel shows at once."""
NODES_DETAIL_COLUMNS = 156
"""From here the nodes table has a column per figure (address, pid, each index)."""
PANELS = ("matrix", "shard-map", "storage", "load")
POLL_FAILURE_BACKOFF_S = 1.0

OnExit = Literal["ask", "keep", "stop"]


@dataclass(frozen=True)
class DashboardOptions:
    refresh_hz: float = 4.0
    confirm: bool = True
    """Ask before destructive actions (False: demo mode)."""
    on_exit: OnExit = "ask"
    """What happens to a local cluster on quit."""
    theme: str = "dark"
    tz: dt.tzinfo | None = None
    """Zone for the times shown (None: local)."""
    clock: Callable[[], float] = time.time
    """For the dashboard's own notes; frames carry their own times."""
    screenshot_dir: Path | None = None


class DashboardApp(App[str | None]):
    """`minikv tui`."""

    CSS_PATH = "dashboard.tcss"
    TITLE = "minikv"
    HORIZONTAL_BREAKPOINTS = [  # noqa: RUF012 (Textual declares it so)
        (0, "-narrow"),
        (WIDE_COLUMNS, "-wide"),
    ]
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("k", "kill", "kill"),
        Binding("s", "stop_node", "stop", show=False),
        Binding("u", "start_node", "start"),
        Binding("p", "pause_resume", "pause"),
        Binding("n", "partition", "partition"),
        Binding("i", "isolate_meta_leader", "isolate", show=False),
        Binding("h", "heal", "heal"),
        Binding("t", "transfer", "transfer", show=False),
        Binding("a", "snapshot", "snapshot", show=False),
        Binding("c", "compact", "compact", show=False),
        Binding("r", "repair", "repair"),
        Binding("R", "repair_dead", "repair, node dead", show=False),
        Binding("v", "verify", "verify", show=False),
        Binding("b", "rebalance", "rebalance", show=False),
        Binding("l", "toggle_load", "load"),
        Binding("g", "kv", "put/get", show=False),
        Binding("1", "panel(0)", "shards", show=False),
        Binding("2", "panel(1)", "map", show=False),
        Binding("3", "panel(2)", "storage", show=False),
        Binding("4", "panel(3)", "load", show=False),
        Binding("ctrl+s", "save_screenshot", "screenshot", show=False),
        Binding("question_mark", "help", "help"),
        Binding("q", "quit", "quit"),
    ]

    class FrameFetched(Message):
        def __init__(
            self,
            frame: Frame,
            events: list[LogEvent],
            load: LoadWindow | None,
            load_on: bool,
            job: JobStatus | None = None,
        ) -> None:
            super().__init__()
            self.frame = frame
            self.events = events
            self.load = load
            self.load_on = load_on
            self.job = job
            """The job panel's new state (None: unchanged)."""

    class ReplayFetched(Message):
        """Every frame of a recording, applied in one batch: only the last is drawn. Posted
        one by one, each was drawn (~0.15 s at 160x48), the bulk of a snapshot test."""

        def __init__(self, frames: list[DashboardApp.FrameFetched]) -> None:
            super().__init__()
            self.frames = frames

    class SessionProgressed(Message):
        def __init__(self, message: str) -> None:
            super().__init__()
            self.message = message

    class SessionFailed(Message):
        def __init__(self, message: str, hint: str) -> None:
            super().__init__()
            self.message = message
            self.hint = hint

    class PollFailed(Message):
        def __init__(self, message: str, hint: str = "") -> None:
            super().__init__()
            self.message = message
            self.hint = hint
            """Set when the session says the cluster itself is gone (not one bad poll)."""

    def __init__(self, session: Session, options: DashboardOptions | None = None) -> None:
        super().__init__()
        self._session = session
        self.options = options or DashboardOptions()
        self._palette: Palette = palette_for("", True)
        self._snapshot: ClusterSnapshot | None = None
        self._frames_applied = 0
        self._connected = False
        self._failure: tuple[str, str] | None = None
        self._load_on = False
        self._panel = 0
        self._poll_worker: Worker[None] | None = None
        self._quitting = False
        self._session_closed = False
        self._jobs = JobWatcher(idle_every=detail_every(self.options.refresh_hz))
        self._maintenance_busy = False
        self._gone: str | None = None
        """Why the cluster is gone, once told (None: it is there)."""

    # --- what tests and tools may read -----------------------------------------------------

    @property
    def frames_applied(self) -> int:
        return self._frames_applied

    @property
    def snapshot(self) -> ClusterSnapshot | None:
        return self._snapshot

    @property
    def replay_finished(self) -> bool:
        """A recorded session has shown its last frame (always False when live)."""
        source = self._session.source
        return (
            source is not None
            and not source.live
            and source.exhausted
            and self._frames_applied == source.frames
        )

    @property
    def connected(self) -> bool:
        return self._connected

    @property
    def failure(self) -> tuple[str, str] | None:
        """Why the session could not connect (message, hint), for the CLI to report."""
        return self._failure

    @property
    def load_on(self) -> bool:
        return self._load_on

    @property
    def job_status(self) -> JobStatus:
        """The maintenance job the panel shows."""
        return self._jobs.status

    # --- composition -----------------------------------------------------------------------

    def compose(self) -> ComposeResult:
        yield ClusterHeader(self._session.title, id="header")
        nodes = NodesTable(id="nodes")
        nodes.border_title = "nodes"
        yield nodes
        with Container(id="panels"):
            yield ShardMatrix(id="matrix", classes="panel -shown")
            yield ShardMap(id="shard-map", classes="panel")
            yield EventLog(id="events")
            yield StoragePanel(id="storage", classes="panel")
            yield LoadPanel(id="load", classes="panel")
        yield JobPanel(id="job")
        yield Footer(show_command_palette=False)

    def notify(
        self,
        message: str,
        *,
        title: str = "",
        severity: SeverityLevel = "information",
        timeout: float | None = None,
        markup: bool = False,
    ) -> None:
        """Toasts are plain text unless a caller asks for markup: their text comes from
        nodes, errors and paths, and a `[/x]` in it would raise MarkupError and end the app."""
        super().notify(message, title=title, severity=severity, timeout=timeout, markup=markup)

    def on_mount(self) -> None:
        self.register_theme(HIGH_CONTRAST_THEME)
        self.theme = THEMES.get(self.options.theme, self.options.theme)
        self._palette = palette_for(self.theme, self.current_theme.dark)
        self.theme_changed_signal.subscribe(self, self._on_theme_changed)
        self.query_one(ClusterHeader).show_status("connecting…")
        self.query_one(NodesTable).focus()
        self._poll_worker = self._run_session()

    def _on_theme_changed(self, _theme: object) -> None:
        self._palette = palette_for(self.theme, self.current_theme.dark)
        if self._snapshot is not None:
            self._show(Frame(self._snapshot, detailed=True), None)
        self._show_job()

    def on_resize(self) -> None:
        if self._snapshot is not None:
            self.query_one(NodesTable).show(self._snapshot, self._palette, wide=self._wide)

    @property
    def _wide(self) -> bool:
        return self.size.width >= NODES_DETAIL_COLUMNS

    # --- the session worker ----------------------------------------------------------------

    @work(exclusive=True, group="session")
    async def _run_session(self) -> None:
        session = self._session

        def progress(message: str) -> None:
            self.post_message(self.SessionProgressed(message))

        try:
            await session.connect(progress)
        except UserError as error:
            self.post_message(self.SessionFailed(error.message, error.hint))
            return
        except Exception as error:  # the session's own failure, shown: never a traceback
            self.post_message(self.SessionFailed(f"{type(error).__name__}: {error}", ""))
            return
        source = session.source
        assert source is not None
        self._connected = True
        interval_s = 1.0 / self.options.refresh_hz if source.live else 0.0
        previous: ClusterSnapshot | None = None
        replayed: list[DashboardApp.FrameFetched] = []
        while True:
            started = time.monotonic()
            try:
                frame = await source.fetch()
                for recorded in frame.events:
                    await session.journal.record(
                        recorded.kind, recorded.detail, recorded.node, recorded.at
                    )
                for change in observe_changes(previous, frame.snapshot):
                    await session.journal.record(
                        change.kind, change.detail, change.node, frame.snapshot.taken_at
                    )
                previous = frame.snapshot
                job = await self._watch_job(session, frame)
                events = await session.journal.new_events()
                load = frame.load
                loadgen = session.loadgen
                load_on = loadgen is not None and loadgen.running
                if load is None and loadgen is not None and (load_on or self._load_on):
                    load = loadgen.take_window()
                fetched = self.FrameFetched(frame, events, load, load_on, job)
                if source.live:
                    self.post_message(fetched)
                else:
                    replayed.append(fetched)
                    if source.exhausted:
                        self.post_message(self.ReplayFetched(replayed))
                        replayed = []
            except asyncio.CancelledError:
                raise
            except UserError as error:  # the cluster is gone: said until it is back
                self.post_message(self.PollFailed(error.message, error.hint))
                previous = None
                await asyncio.sleep(POLL_FAILURE_BACKOFF_S)
            except Exception as error:  # one bad poll must not end the dashboard
                self.post_message(self.PollFailed(f"{type(error).__name__}: {error}"))
                await asyncio.sleep(POLL_FAILURE_BACKOFF_S)
            await asyncio.sleep(max(0.0, interval_s - (time.monotonic() - started)))

    async def _watch_job(self, session: Session, frame: Frame) -> JobStatus | None:
        """After each frame: the job's state (read from the nodes, or from the recording),
        its transitions journalled; the panel's new state, or None if it did not change."""
        watcher = self._jobs
        control = session.control
        at = frame.snapshot.taken_at
        if frame.job is not None:
            watcher.observe(frame.job, at)
        elif control is not None:
            via = maintenance_via(frame.snapshot)
            timeout_s = poll_timeout_s(self.options.refresh_hz)
            await watcher.poll(lambda args: control.read_job(args, via, timeout_s), at)
        for event in watcher.take_events():
            if control is None:
                continue  # a recording brings its own journal events
            if event.foreign and session.journal.shared:
                continue  # the tool that started it journals it there
            await session.journal.record(event.kind, event.detail, None, at)
        return watcher.status if watcher.take_changed() else None

    @on(SessionProgressed)
    def _progressed(self, message: SessionProgressed) -> None:
        self.query_one(ClusterHeader).show_status(message.message)
        self.query_one(EventLog).note(
            message.message, self.options.clock(), self._palette, self.options.tz
        )

    @on(SessionFailed)
    def _session_failed(self, message: SessionFailed) -> None:
        self._failure = (message.message, message.hint)
        self.query_one(ClusterHeader).show_status(f"not connected: {message.message}")
        text = message.message + (f"\n{message.hint}" if message.hint else "")
        self.notify(text, title="cannot reach the cluster", severity="error", timeout=30)
        self.query_one(EventLog).note(
            f"error: {message.message}", self.options.clock(), self._palette, self.options.tz
        )

    @on(PollFailed)
    def _poll_failed(self, message: PollFailed) -> None:
        if not message.hint:
            self.notify(message.message, title="poll failed", severity="warning", timeout=3)
            return
        # The cluster is gone: its last frame would show nodes and leaders that no longer
        # exist. Emptied, with the reason in the header, told once (not every poll).
        if self._snapshot is None or self._snapshot.nodes:
            self._show(Frame(_empty_snapshot(self._session.title), detailed=True), None)
        self.query_one(ClusterHeader).show_status(f"not connected: {message.message}")
        if message.message != self._gone:
            self._gone = message.message
            self.notify(
                f"{message.message}\n{message.hint}",
                title="cluster gone",
                severity="error",
                timeout=30,
                markup=False,
            )

    @on(ReplayFetched)
    def _replay_fetched(self, message: ReplayFetched) -> None:
        with self.batch_update():
            for fetched in message.frames:
                self._frame_fetched(fetched)

    @on(FrameFetched)
    def _frame_fetched(self, message: FrameFetched) -> None:
        self._load_on = message.load_on
        self._gone = None
        try:
            self._show(message.frame, message.load)
            if message.job is not None:
                self._show_job()
            log = self.query_one(EventLog)
        except NoMatches:
            return  # a frame that arrives while the app is quitting: its widgets are gone
        for event in message.events:
            log.add(event, self._palette, self.options.tz)
        self._frames_applied += 1

    def _show(self, frame: Frame, load: LoadWindow | None) -> None:
        snapshot = frame.snapshot
        self._snapshot = snapshot
        palette = self._palette
        self.query_one(ClusterHeader).show(snapshot, palette, self.options.tz, self._load_on)
        self.query_one(NodesTable).show(snapshot, palette, wide=self._wide, detailed=frame.detailed)
        self.query_one(ShardMatrix).show(snapshot, palette)
        self.query_one(ShardMap).show(snapshot, palette, detailed=frame.detailed)
        self.query_one(StoragePanel).show(snapshot, palette, detailed=frame.detailed)
        self.query_one(LoadPanel).show_window(
            load, self._load_on or frame.load is not None, palette
        )

    def _show_job(self) -> None:
        self.query_one(JobPanel).show(self._jobs.status, self._palette, self.options.tz)

    # --- actions ---------------------------------------------------------------------------

    def _control(self) -> ClusterControl | None:
        control = self._session.control
        if control is None:
            reason = "still connecting" if self._failure is None else "not connected"
            if self._connected:
                reason = "this is a recording: nothing to act on"
            self.notify(reason, severity="warning")
        return control

    def _selected_node(self) -> int | None:
        node = self.query_one(NodesTable).selected_node
        if node is None and self._session.control is None:
            self._control()  # says why: still connecting, not connected, a recording
        elif node is None:
            self.notify("no node selected", severity="warning")
        return node

    def _act(
        self,
        label: str,
        action: Callable[[ClusterControl], Awaitable[str]],
        *,
        confirm: str | None = None,
        process: bool = False,
    ) -> None:
        """`process`: the action signals a node process, which only a dashboard that started
        the cluster can do; refused at once instead of after a confirmation."""
        control = self._control()
        if control is None:
            return
        if process and not control.manages_processes:
            self.notify(
                PROCESS_ACTIONS_UNAVAILABLE,
                title=f"{label} refused",
                severity="error",
                timeout=8,
                markup=False,
            )
            return
        if confirm is not None and self.options.confirm:

            def answered(yes: bool | None) -> None:
                if yes:
                    self._run_action(label, control, action)

            self.push_screen(ConfirmScreen(confirm, yes=label.capitalize()), answered)
            return
        self._run_action(label, control, action)

    @work(group="actions")
    async def _run_action(
        self,
        label: str,
        control: ClusterControl,
        action: Callable[[ClusterControl], Awaitable[str]],
    ) -> None:
        self.notify(f"{label}…", timeout=2)
        try:
            result = await action(control)
        except ActionError as error:
            self.notify(str(error), title=f"{label} failed", severity="error", timeout=8)
            return
        except Exception as error:  # reported, never a traceback
            self.notify(
                f"{type(error).__name__}: {error}", title=f"{label} failed", severity="error"
            )
            return
        self.notify(result, title=label, timeout=4)

    def action_kill(self) -> None:
        node = self._selected_node()
        if node is not None and self._has_process(node, "kill"):
            self._act(
                f"kill node {node}",
                lambda c: c.kill(node),
                confirm=f"Kill node {node} (SIGKILL)?",
                process=True,
            )

    def action_stop_node(self) -> None:
        node = self._selected_node()
        if node is not None and self._has_process(node, "stop"):
            self._act(
                f"stop node {node}",
                lambda c: c.stop(node),
                confirm=f"Stop node {node} (SIGTERM)?",
                process=True,
            )

    def action_start_node(self) -> None:
        node = self._selected_node()
        if node is not None:
            self._act(f"start node {node}", lambda c: c.start(node), process=True)

    def action_pause_resume(self) -> None:
        node = self._selected_node()
        if node is None:
            return
        status = self._snapshot.node(node) if self._snapshot is not None else None
        if status is not None and status.process == "paused":
            self._act(f"resume node {node}", lambda c: c.resume(node), process=True)
        elif self._has_process(node, "pause"):
            self._act(
                f"pause node {node}",
                lambda c: c.pause(node),
                confirm=f"Pause node {node} (SIGSTOP)?",
                process=True,
            )

    def action_partition(self) -> None:
        if self._control() is None:
            return
        screen = PartitionScreen(
            selected_node=self.query_one(NodesTable).selected_node,
            selected_shard=self.query_one(ShardMatrix).selected_shard,
        )
        self.push_screen(screen, self._partition_chosen)

    def _partition_chosen(self, request: PartitionRequest | None) -> None:
        if request is None:
            return
        snapshot = self._snapshot
        if request.kind == "isolate-meta-leader":
            self.action_isolate_meta_leader(confirm=False)
        elif request.kind == "isolate-shard-leader":
            shards = snapshot.shards if snapshot else ()
            shard = next((s for s in shards if s.shard == request.shard), None)
            if shard is None:
                known = f"shards {shards[0].shard}..{shards[-1].shard}" if shards else "none seen"
                self.notify(
                    f"no shard {request.shard} in this cluster ({known})", severity="warning"
                )
                return
            leader = shard.leader
            status = snapshot.node(leader) if snapshot and leader is not None else None
            if leader is None:
                self.notify(f"shard {request.shard} has no leader right now", severity="warning")
                return
            if status is not None and not status.reachable:
                # The followers' stale word for a leader that is gone (until their election
                # timeout): cutting that node off would change nothing.
                self.notify(
                    f"shard {request.shard}'s last leader, node {leader}, is {status.state}: "
                    "nothing to isolate until another is elected",
                    severity="warning",
                )
                return
            self._act(f"isolate node {leader}", lambda c: c.isolate(leader))
        elif request.kind == "isolate-node" and request.node is not None:
            node = request.node
            self._act(f"isolate node {node}", lambda c: c.isolate(node))
        elif request.plan is not None:
            plan: PartitionPlan = request.plan
            self._act("partition", lambda c: c.partition(plan))

    def action_isolate_meta_leader(self, confirm: bool = True) -> None:
        leader = self._snapshot.meta_leader if self._snapshot is not None else None
        if leader is None:
            self.notify("the meta group has no leader right now", severity="warning")
            return
        self._act(
            f"isolate node {leader}",
            lambda c: c.isolate(leader),
            confirm=f"Cut the meta leader, node {leader}, off from the others?"
            if confirm
            else None,
        )

    def action_heal(self) -> None:
        self._act("heal", lambda c: c.heal())

    def action_transfer(self) -> None:
        node = self._selected_node()
        shard_id = self.query_one(ShardMatrix).selected_shard
        snapshot = self._snapshot
        if node is None or snapshot is None:
            return
        if shard_id is None:
            self.notify(
                "no shard selected: the shard matrix is empty until a node answers",
                severity="warning",
            )
            return
        shard = next((s for s in snapshot.shards if s.shard == shard_id), None)
        if shard is None or node not in shard.replicas:
            self.notify(
                f"node {node} holds no replica of shard {shard_id}: select one of its replicas",
                severity="warning",
            )
            return
        via = shard.leader
        self._act(
            f"transfer shard {shard_id} to node {node}",
            lambda c: c.transfer_leader(shard_id, node, via),
        )

    def action_snapshot(self) -> None:
        node = self._selected_node()
        if node is not None and self._can_answer(node, "snapshot"):
            self._act(f"snapshot node {node}", lambda c: c.snapshot(node))

    def action_compact(self) -> None:
        node = self._selected_node()
        if node is not None and self._can_answer(node, "compact"):
            self._act(f"compact node {node}", lambda c: c.compact(node))

    def _has_process(self, node: int, what: str) -> bool:
        """False (after saying so) for a node the dashboard shows down or stopped: asking
        "Kill node 3?" of a dead node, then failing with the CLI's hint, helps nobody."""
        status = self._snapshot.node(node) if self._snapshot is not None else None
        if status is None or status.process not in ("down", "stopped"):
            return True
        self.notify(
            f"node {node} is {status.process}: nothing to {what} (press u to start it)",
            title=f"{what} node {node}",
            severity="warning",
            timeout=6,
        )
        return False

    def _can_answer(self, node: int, what: str) -> bool:
        """False (after saying what to do) for a node the dashboard shows down, stopped or
        paused: asked anyway, a paused one says nothing for the call's whole timeout (30 s),
        then "Deadline Exceeded"."""
        status = self._snapshot.node(node) if self._snapshot is not None else None
        if status is None or status.process not in ("down", "stopped", "paused"):
            return True
        fix = "press p to resume it" if status.process == "paused" else "press u to start it"
        self.notify(
            f"node {node} is {status.process}: {fix} first",
            title=f"{what} node {node} refused",
            severity="warning",
            timeout=6,
        )
        return False

    def action_repair(self) -> None:
        self._maintain("repair", ())

    def action_repair_dead(self) -> None:
        node = self._selected_node()
        if node is not None:
            self._maintain("repair", (node,))

    def action_verify(self) -> None:
        self._maintain("verify", ())

    def action_rebalance(self) -> None:
        self._maintain("rebalance", ())

    def _maintain(self, operation: str, dead: tuple[int, ...]) -> None:
        control = self._control()
        if control is None:
            return
        running = self._jobs.running
        if running is not None:
            progress = f"{running.steps_done}/{len(running.steps)} steps"
            self.notify(
                f"{job_title(running)} is running ({progress}): one job at a time, wait for it",
                severity="warning",
                markup=False,
            )
            return
        if self._maintenance_busy:
            self.notify("a maintenance action is already being set up", severity="warning")
            return
        self._maintenance_busy = True
        self._run_maintenance(operation, dead, control)

    @work(group="maintenance")
    async def _run_maintenance(
        self, operation: str, dead: tuple[int, ...], control: ClusterControl
    ) -> None:
        """Dry run -> confirm -> start (the dry run and the dialog only when confirming)."""
        args: dict[str, Any] = {"dead": list(dead)} if dead else {}
        via = maintenance_via(self._snapshot)
        try:
            if self.options.confirm:
                question = await self._maintenance_question(operation, dead, args, via, control)
                if question is None:
                    return
                confirm = ConfirmScreen(question, yes=operation.capitalize())
                if not await self.push_screen_wait(confirm):
                    return
            document = await control.start_job(operation, args, via)
            job = parse_job(document)
            self._jobs.follow(document, self.options.clock())
        except ActionError as error:
            self._failed(operation, str(error))
            return
        except JobDocumentError as error:
            self._failed(operation, f"{error}: is every node running this version of minikv?")
            return
        except Exception as error:  # reported, never a traceback
            self._failed(operation, f"{type(error).__name__}: {error}")
            return
        finally:
            self._maintenance_busy = False
        self._show_job()
        title = job_title(job) if job is not None else operation
        self.notify(
            f"{title} started: the panel below follows it", title=operation, timeout=4, markup=False
        )

    def _failed(self, operation: str, message: str) -> None:
        # Node text may hold brackets: never read as markup.
        self.notify(
            message, title=f"{operation} failed", severity="error", timeout=10, markup=False
        )

    async def _maintenance_question(
        self,
        operation: str,
        dead: tuple[int, ...],
        args: dict[str, Any],
        via: list[int],
        control: ClusterControl,
    ) -> str | None:
        """What the confirm dialog asks; None (after saying why) when there is nothing to do."""
        if operation == "verify":
            return VERIFY_QUESTION
        plan = parse_plan(await control.plan(operation, args, via))
        if not plan.steps:
            self.notify(nothing_planned(plan), title=operation, timeout=8, markup=False)
            return None
        snapshot = self._snapshot
        dead_up = snapshot is not None and any(
            (status := snapshot.node(node)) is not None and status.state == "up" for node in dead
        )
        return confirm_text(operation, plan, dead, dead_up)

    def action_toggle_load(self) -> None:
        loadgen = self._session.loadgen
        if loadgen is None:
            self.notify("no load generator here (a recording)", severity="warning")
            return
        self._toggle_load()

    @work(exclusive=True, group="load")
    async def _toggle_load(self) -> None:
        loadgen = self._session.loadgen
        assert loadgen is not None
        if loadgen.running:
            await loadgen.stop()
            self._load_on = False
            self.notify("load generator stopped", timeout=2)
            await self._session.journal.record("load", "load generator off", None, time.time())
        else:
            loadgen.start()
            self._load_on = True
            detail = f"load generator on: {loadgen.clients} clients, {loadgen.workload}"
            self.notify(detail, timeout=2)
            await self._session.journal.record("load", detail, None, time.time())

    def action_kv(self) -> None:
        control = self._control()
        if control is None:
            return

        async def run(operation: str, key: bytes, value: bytes) -> str:
            try:
                if operation == "put":
                    return await control.put(key, value)
                return await control.get(key)
            except ActionError as error:  # "put failed: …" already
                raise KvError(str(error)) from None

        self.push_screen(KvScreen(run))

    def action_panel(self, index: int) -> None:
        self._panel = index
        for position, panel_id in enumerate(PANELS):
            self.query_one(f"#{panel_id}").set_class(position == index, "-shown")

    def action_save_screenshot(self) -> None:
        directory = self.options.screenshot_dir
        try:
            path = self.save_screenshot(path=str(directory) if directory is not None else None)
        except OSError as error:
            self.notify(
                f"{error}: screenshots go to the current directory; "
                "run minikv tui from a writable one",
                title="screenshot failed",
                severity="error",
                markup=False,
            )
            return
        self.notify(f"saved {path}", title="screenshot", timeout=4)

    def action_help(self) -> None:
        self.push_screen(HelpScreen())

    # --- quitting --------------------------------------------------------------------------

    async def action_quit(self) -> None:
        if self._quitting:
            return
        session = self._session
        if not session.manages_processes or not self._connected or self._gone is not None:
            self._close_and_exit(stop=False)  # a cluster gone has nothing to keep or stop
            return
        if self.options.on_exit != "ask":
            self._close_and_exit(stop=self.options.on_exit == "stop")
            return

        def chosen(choice: QuitChoice | None) -> None:
            if choice in ("keep", "stop"):
                self._close_and_exit(stop=choice == "stop")

        self.push_screen(QuitScreen(session.title), chosen)

    @work(exclusive=True, group="shutdown")
    async def _close_and_exit(self, stop: bool) -> None:
        self._quitting = True
        worker = self._poll_worker
        if worker is not None:
            worker.cancel()
            await asyncio.wait_for(_settled(worker), timeout=5.0)
        self.query_one(ClusterHeader).show_status("stopping the cluster…" if stop else "closing…")
        message: str | None = None
        self._session_closed = True
        try:
            message = await self._session.close(stop_cluster=stop)
        except ActionError as error:
            message = f"could not stop the cluster: {error}"
        except Exception as error:  # reported after exit, never a traceback
            message = f"closing failed: {type(error).__name__}: {error}"
        if (
            message is None
            and self._session.manages_processes
            and self._connected
            and self._gone is None
        ):
            message = f"cluster {self._session.title} left running (`minikv cluster down` stops it)"
        self.exit(message)

    async def on_unmount(self) -> None:
        """Every other way out (an error, a test's end, Ctrl-C): the session's clients, load
        generator and registry connection are still released. The registry's aiosqlite thread
        is not a daemon: left open, it would keep the process alive after the screen is gone.
        The cluster is left running: only an explicit choice stops it."""
        if self._session_closed:
            return
        self._session_closed = True
        with contextlib.suppress(Exception):
            await self._session.close(stop_cluster=False)

    # --- command palette -------------------------------------------------------------------

    def get_system_commands(self, screen: Screen[object]) -> Iterable[SystemCommand]:
        yield from super().get_system_commands(screen)
        commands = (
            ("Kill node", "SIGKILL the selected node", self.action_kill),
            ("Stop node", "SIGTERM the selected node", self.action_stop_node),
            ("Start node", "start the selected node", self.action_start_node),
            (
                "Pause / resume node",
                "SIGSTOP / SIGCONT the selected node",
                self.action_pause_resume,
            ),
            ("Partition…", "cut the network into groups, or one way", self.action_partition),
            (
                "Isolate meta leader",
                "cut the meta group's leader off",
                self.action_isolate_meta_leader,
            ),
            ("Heal", "remove every partition", self.action_heal),
            ("Transfer leadership", "selected shard to the selected node", self.action_transfer),
            ("Snapshot node", "flush and snapshot the selected node", self.action_snapshot),
            ("Compact node", "full compaction on the selected node", self.action_compact),
            ("Repair", "re-create missing replicas (shows the plan first)", self.action_repair),
            (
                "Repair, selected node dead",
                "replace every replica of the selected node",
                self.action_repair_dead,
            ),
            ("Verify", "checksum every shard's replicas", self.action_verify),
            ("Rebalance", "even out replicas and leaders", self.action_rebalance),
            ("Toggle load", "start or stop the load generator", self.action_toggle_load),
            ("Put / get", "the quick key-value box", self.action_kv),
            ("Save screenshot", "write an SVG of the screen", self.action_save_screenshot),
            ("Help", "every key", self.action_help),
        )
        for title, help_text, callback in commands:
            yield SystemCommand(title, help_text, callback)


def maintenance_via(snapshot: ClusterSnapshot | None) -> list[int]:
    """Which nodes to send maintenance calls to, best first: the meta leader (no forwarding
    hop), then nodes that are up, then any that answer. Empty: no frame yet (any node)."""
    if snapshot is None:
        return []
    answering = [n for n in snapshot.nodes if n.reachable and n.process != "paused"]
    up = [n.node_id for n in answering if n.state == "up"]
    rest = [n.node_id for n in answering if n.state != "up"]
    leader = snapshot.meta_leader
    ordered = ([leader] if leader in up else []) + [n for n in up if n != leader] + rest
    return ordered


def _empty_snapshot(name: str) -> ClusterSnapshot:
    return ClusterSnapshot(
        taken_at=time.time(),
        name=name,
        nodes=(),
        shards=(),
        meta_leader=None,
        meta_term=0,
        epoch=0,
    )


async def _settled(worker: Worker[None]) -> None:
    while worker.is_running:
        await asyncio.sleep(0.01)
