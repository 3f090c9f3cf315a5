"""Local clusters on this machine: ports, data directories, and the node processes themselves.

The launcher is the only code that starts, signals or stops `minikv serve` processes. The CLI
(`minikv cluster …`, via `asyncio.run`) and the dashboard (from Textual workers) share it, so
everything here is async and never holds the event loop: waiting is polling with short sleeps,
and the registry is aiosqlite.

Why it is shaped this way:

- **Detached nodes.** Each node runs in its own session (`start_new_session`), with its output
  appended to `node<i>.log` in the cluster directory, so it outlives the command that started
  it and a Ctrl-C in the terminal does not reach it. Its process group is its pid, which is
  what we signal.
- **Pids are not trusted.** The registry keeps each node's pid *and* the process start time
  (`/proc/<pid>/stat` field 22). A pid counts as the node only while both match and its command
  line is `minikv_core.server` on the node's data directory: a dead node whose pid was reused
  is never signalled.
- **One command at a time per cluster.** Every mutating operation holds an exclusive `flock` on
  `<home>/.locks/<name>.lock`. Two racing `up`s serialise: the second finds the nodes running
  and reports that, so a node is never started twice on one data directory.
- **Ports are chosen once.** At creation the OS picks free loopback ports (bind port 0) for
  every node's gRPC and HTTP listeners; they are stored and reused on every restart because
  peers address each other by them. If one is taken later, `up`/`start` say which and by whom
  before touching anything.
- **Partitions survive restarts.** Fault rules live in the node's memory, so the current
  network faults (a symmetric partition and any one-way cuts) are also written to
  `partition.json` in the cluster directory and re-applied to a node when it starts or
  resumes; `heal` and `down` remove them.
- **Membership changes.** `add_node` starts a node that joins the running cluster and
  `mark_removed` retires one the cluster let go; how founding and joined nodes are started
  differs, see `launcher_membership`.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import re
import signal
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from minikv_core.client import (
    AsyncClient,
    ClientError,
    DeadlineExceededError,
    UnavailableError,
)
from minikv_tui.cluster_status import NodeTarget
from minikv_tui.errors import EXIT_FAILURE, EXIT_USAGE, UserError
from minikv_tui.launcher_membership import (
    grpc_address,
    lost_its_data,
    new_node,
    node_command,
    ready_file,
)
from minikv_tui.node_process import (
    CHILDREN,
    LOOPBACK,
    START_MARK,
    ProcessState,
    cmdline,
    free_ports,
    log_tail,
    node_pid,
    node_process_state,
    port_in_use,
    process_start_ticks,
    signal_group,
)
from minikv_tui.registry import (
    ClusterRecord,
    ClusterSettings,
    NodeRecord,
    NodeState,
    Registry,
    RegistryError,
    default_home,
)

__all__ = [  # the public API, and node_process_state re-exported for the dashboard
    "DEFAULT_NAME",
    "ClusterView",
    "Launcher",
    "LauncherError",
    "NetworkFaults",
    "NodeStartFailedError",
    "NodeView",
    "OneWayCut",
    "Step",
    "UpResult",
    "check_name",
    "node_process_state",
]

DEFAULT_NAME: Final = "local"
NAME_PATTERN: Final = re.compile(r"[a-z0-9][a-z0-9_-]{0,39}")

NODES_DEFAULT: Final = 3
SHARDS_DEFAULT: Final = 8
REPLICAS_DEFAULT: Final = 3
NODES_MAX: Final = 9
"""A local cluster is for one machine; more processes than this only thrash it."""
SHARDS_MAX: Final = 256

SPAWN_TIMEOUT_S: Final = 45.0
"""Interpreter start, imports, WAL recovery and both listeners, on a busy 2-core machine."""
READY_TIMEOUT_S: Final = 45.0
"""Every group of the cluster has a leader after the nodes serve."""
STOP_GRACE_S: Final = 10.0
"""SIGTERM lets a node finish requests in flight and flush (the server allows 10 s)."""
REMOVED_EXIT_WAIT_S: Final = 30.0
"""A removed node stops itself once it learns it left (the meta leader waits up to 5 s for it
to learn); more on a loaded machine. Then it is terminated."""
KILL_WAIT_S: Final = 5.0
EXEC_WAIT_S: Final = 5.0
LOCK_TIMEOUT_S: Final = 180.0
"""Longer than any other command holds the lock (an `up` that waits for readiness)."""
ADMIN_TIMEOUT_S: Final = 2.0
TRANSFER_TIMEOUT_S: Final = 10.0
POLL_S: Final = 0.05
PARTITION_FILE: Final = "partition.json"


class LauncherError(UserError):
    """A launcher operation that could not be done; message and hint are for a person."""


class NodeStartFailedError(LauncherError):
    """A node exited or never served while starting; the message carries its log tail."""

    def __init__(self, node_id: int, message: str, hint: str) -> None:
        super().__init__(message, hint=hint, exit_code=EXIT_FAILURE)
        self.node_id = node_id


# ----------------------------------------------------------------------------- processes


async def _wait_gone(node: NodeRecord, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while node_pid(node) is not None:
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(POLL_S)
    return True


async def _terminate(node: NodeRecord, grace_s: float) -> None:
    """SIGCONT (a paused node cannot act on SIGTERM), SIGTERM, then SIGKILL after `grace_s`."""
    pid = node_pid(node)
    if pid is None:
        return
    signal_group(pid, signal.SIGCONT)
    signal_group(pid, signal.SIGTERM)
    if await _wait_gone(node, grace_s):
        return
    signal_group(pid, signal.SIGKILL)
    if not await _wait_gone(node, KILL_WAIT_S):
        raise LauncherError(
            f"node {node.node_id} (pid {pid}) did not exit after SIGKILL",
            hint="Check `ps` for the process; it may be stuck in the kernel (D state).",
        )


# ---------------------------------------------------------------------------------- views


@dataclass(frozen=True)
class Step:
    """One progress report: what is happening, and how far along (`total` 0: unknown)."""

    message: str
    done: int = 0
    total: int = 0


Progress = Callable[[Step], None]


@dataclass(frozen=True)
class NodeView:
    """A node's registry record with its process state observed now."""

    record: NodeRecord
    process: ProcessState

    @property
    def node_id(self) -> int:
        return self.record.node_id

    @property
    def grpc(self) -> str:
        return f"{LOOPBACK}:{self.record.grpc_port}"

    @property
    def http(self) -> str:
        return f"{LOOPBACK}:{self.record.http_port}"

    @property
    def pid(self) -> int | None:
        """The live process's pid (None when it is not running)."""
        return self.record.pid if self.process in ("up", "paused") else None

    def target(self) -> NodeTarget:
        """What `cluster_status.Poller` polls for this node."""
        return NodeTarget(self.node_id, self.grpc, self.http, self.pid, self.process)


@dataclass(frozen=True)
class OneWayCut:
    """Traffic from every node of `source` to every node of `sink` is dropped; the reverse
    still flows (a leader that can send but not hear, which check-quorum must catch)."""

    source: tuple[int, ...]
    sink: tuple[int, ...]

    def describe(self) -> str:
        return f"{','.join(map(str, self.source))} -> {','.join(map(str, self.sink))}"


@dataclass(frozen=True)
class NetworkFaults:
    """What `partition.json` holds: the network faults the launcher put in place, from which
    every node's fault rules are derived (a node's rules are replaced whole, so they must be
    computed from everything in force, not patched one cut at a time)."""

    groups: tuple[tuple[int, ...], ...] = ()
    """A symmetric partition, complete (every node in one group), or empty."""
    one_way: tuple[OneWayCut, ...] = ()

    @property
    def empty(self) -> bool:
        return not self.groups and not self.one_way

    def rules(self, node_id: int) -> tuple[list[int], list[int]]:
        """(drop_to, drop_from) for the node. Both sides of a one-way cut drop it (the source
        on sending, the sink on receiving), so either one restarting alone keeps the cut."""
        drop_to: set[int] = set()
        drop_from: set[int] = set()
        group = next((g for g in self.groups if node_id in g), None)
        if group is not None:
            others = {n for g in self.groups for n in g} - set(group)
            drop_to |= others
            drop_from |= others
        for cut in self.one_way:
            if node_id in cut.source:
                drop_to.update(cut.sink)
            if node_id in cut.sink:
                drop_from.update(cut.source)
        return sorted(drop_to), sorted(drop_from)


@dataclass(frozen=True)
class ClusterView:
    record: ClusterRecord
    nodes: tuple[NodeView, ...]
    partition: tuple[tuple[int, ...], ...] = ()
    """The partition the launcher put in place (empty: none)."""
    one_way: tuple[OneWayCut, ...] = ()
    """One-way cuts the launcher put in place, on top of the partition."""

    @property
    def name(self) -> str:
        return self.record.name

    @property
    def running(self) -> int:
        """Nodes whose process is alive (paused ones included)."""
        return sum(1 for node in self.nodes if node.process in ("up", "paused"))

    @property
    def state(self) -> str:
        """ "running" (every node alive), "degraded" (some), "stopped" (none)."""
        if self.running == len(self.nodes):
            return "running"
        return "degraded" if self.running else "stopped"

    def endpoints(self) -> list[str]:
        return [node.grpc for node in self.nodes]

    def targets(self) -> list[NodeTarget]:
        return [node.target() for node in self.nodes]

    def node(self, node_id: int) -> NodeView | None:
        return next((n for n in self.nodes if n.node_id == node_id), None)


@dataclass(frozen=True)
class UpResult:
    view: ClusterView
    created: bool
    started: tuple[int, ...]
    """Nodes this call started (empty: the cluster was already up)."""

    @property
    def already_up(self) -> bool:
        return not self.started


# ------------------------------------------------------------------------------- launcher


def check_name(name: str) -> str:
    if not NAME_PATTERN.fullmatch(name):
        raise LauncherError(
            f"invalid cluster name {name!r}",
            hint="Use 1-40 characters: lowercase letters, digits, '-' and '_', "
            "starting with a letter or digit.",
            exit_code=EXIT_USAGE,
        )
    return name


def check_settings(settings: ClusterSettings) -> ClusterSettings:
    def bad(message: str) -> LauncherError:
        return LauncherError(message, hint="See `minikv cluster up --help`.", exit_code=EXIT_USAGE)

    if not 1 <= settings.nodes <= NODES_MAX:
        raise bad(f"--nodes must be between 1 and {NODES_MAX}, got {settings.nodes}")
    if not 1 <= settings.shards <= SHARDS_MAX:
        raise bad(f"--shards must be between 1 and {SHARDS_MAX}, got {settings.shards}")
    if not 1 <= settings.replicas <= settings.nodes:
        raise bad(
            f"--replicas must be between 1 and --nodes ({settings.nodes}), got {settings.replicas}"
        )
    return settings


class Launcher:
    """Creates and drives one named local cluster. Cheap to construct; every call opens the
    registry, does its work under the cluster's lock when it changes anything, and closes it.

    `progress` receives a `Step` for every visible stage (the CLI shows them with Rich, the
    dashboard in its log)."""

    def __init__(
        self,
        name: str = DEFAULT_NAME,
        *,
        home: Path | None = None,
        progress: Progress | None = None,
    ) -> None:
        self.name = check_name(name)
        self.home = home if home is not None else default_home()
        self._progress = progress

    # --- reading ---------------------------------------------------------------------------

    @staticmethod
    async def list_clusters(home: Path | None = None) -> list[ClusterView]:
        """Every registered cluster with its nodes' observed states, by name."""
        async with _open_registry(home) as registry:
            return [await _view(registry, record) for record in await registry.clusters()]

    async def exists(self) -> bool:
        async with _open_registry(self.home) as registry:
            return await registry.cluster(self.name) is not None

    async def view(self) -> ClusterView:
        """The cluster and its nodes now; LauncherError if there is no such cluster."""
        async with _open_registry(self.home) as registry:
            return await _view(registry, await self._record(registry))

    async def endpoints(self) -> list[str]:
        """Every node's gRPC address (for `AsyncClient`)."""
        return (await self.view()).endpoints()

    # --- up / down -------------------------------------------------------------------------

    async def up(
        self,
        *,
        nodes: int | None = None,
        shards: int | None = None,
        replicas: int | None = None,
        directory: Path | None = None,
        wait_ready: bool = True,
        ready_timeout_s: float = READY_TIMEOUT_S,
    ) -> UpResult:
        """Create the cluster (settings default to 3 nodes, 8 shards, 3 replicas) or start the
        nodes of an existing one that are not running, then wait until every group has a
        leader. Idempotent: a cluster that is up is only reported."""
        async with self._locked(), _open_registry(self.home) as registry:
            record = await registry.cluster(self.name)
            created = record is None
            if record is None:
                record = await self._create(registry, nodes, shards, replicas, directory)
            else:
                self._check_same(record, nodes, shards, replicas, directory)
            records = await registry.nodes(self.name)
            to_start = [n for n in records if node_process_state(n) not in ("up", "paused")]
            if to_start:
                await self._spawn(registry, record, to_start)
                ids = ", ".join(str(n.node_id) for n in to_start)
                await registry.record_event(self.name, "up", f"started nodes {ids}")
            else:
                self._report(f"cluster {self.name} is already up")
            if wait_ready:
                await self._wait_ready(registry, ready_timeout_s)
            view = await _view(registry, record)
            return UpResult(view, created, tuple(n.node_id for n in to_start))

    async def create(
        self,
        *,
        nodes: int | None = None,
        shards: int | None = None,
        replicas: int | None = None,
        directory: Path | None = None,
    ) -> ClusterView:
        """Register the cluster and pick its ports without starting anything (`up` starts
        it). LauncherError if the name is taken."""
        async with self._locked(), _open_registry(self.home) as registry:
            if await registry.cluster(self.name) is not None:
                raise LauncherError(
                    f"cluster {self.name} already exists",
                    hint=f"Start it with `minikv cluster up --name {self.name}`, or pick "
                    "another name.",
                    exit_code=EXIT_USAGE,
                )
            record = await self._create(registry, nodes, shards, replicas, directory)
            return await _view(registry, record)

    async def wait_ready(self, timeout_s: float = READY_TIMEOUT_S) -> None:
        """Until every running node reports every one of its groups with a known leader."""
        async with _open_registry(self.home) as registry:
            await self._wait_ready(registry, timeout_s)

    async def down(self, *, grace_s: float = STOP_GRACE_S) -> list[int]:
        """Stop every node (SIGCONT, SIGTERM, SIGKILL after `grace_s`); returns the node ids
        that were running. The partition is forgotten: fault rules die with the processes."""
        async with self._locked(), _open_registry(self.home) as registry:
            return await self._stop_all(registry, await self._record(registry), grace_s)

    async def destroy(self, *, grace_s: float = STOP_GRACE_S) -> None:
        """Down, then delete what the launcher created in the cluster directory (node data,
        logs, ready files) and the registry entry, all under one hold of the lock (a racing
        `up` must not start nodes on data being deleted). Files it did not create are left
        alone, so a `--dir` pointed at the wrong place loses nothing else."""
        async with self._locked(), _open_registry(self.home) as registry:
            record = await self._record(registry)
            await self._stop_all(registry, record, grace_s)
            records = await registry.nodes(self.name, include_removed=True)
            self._report(f"deleting {record.directory}")
            await asyncio.to_thread(_delete_cluster_files, record, records)
            await registry.remove_cluster(self.name)

    async def _stop_all(
        self, registry: Registry, record: ClusterRecord, grace_s: float
    ) -> list[int]:
        # Removed nodes too: one whose exit was not waited for must not outlive a `down`.
        records = await registry.nodes(self.name, include_removed=True)
        alive = [n for n in records if node_pid(n) is not None]
        self._report(f"stopping {len(alive)} node(s) of {self.name}", 0, len(alive))
        done = 0

        async def stop_one(node: NodeRecord) -> None:
            nonlocal done
            await _terminate(node, grace_s)
            done += 1
            self._report(f"node {node.node_id} stopped", done, len(alive))

        try:
            await asyncio.gather(*(stop_one(node) for node in alive))
        finally:
            for node in records:
                if node_pid(node) is None:
                    await registry.update_node(
                        self.name, node.node_id, state="stopped", pid=None, pid_start=None
                    )
        (record.directory / PARTITION_FILE).unlink(missing_ok=True)
        stopped = [n.node_id for n in alive]
        await registry.record_event(
            self.name, "down", f"stopped nodes {_ids(stopped)}" if stopped else "nothing ran"
        )
        return stopped

    # --- one node --------------------------------------------------------------------------

    async def start(self, node_id: int) -> str:
        """Start a node that is not running (with its data and ports)."""
        async with self._locked(), _open_registry(self.home) as registry:
            record = await self._record(registry)
            node = await self._node(registry, node_id)
            state = node_process_state(node)
            if state in ("up", "paused"):
                return f"node {node_id} is already running ({state}, pid {node.pid})"
            await self._spawn(registry, record, [node])
            started = await self._node(registry, node_id)
            await registry.record_event(self.name, "start", f"pid {started.pid}", node_id)
            return f"node {node_id} started (pid {started.pid})"

    async def stop(self, node_id: int, *, grace_s: float = STOP_GRACE_S) -> str:
        """Stop a node gracefully (SIGTERM, SIGKILL after `grace_s`)."""
        async with self._locked(), _open_registry(self.home) as registry:
            await self._record(registry)
            node = await self._node(registry, node_id)
            pid = node_pid(node)
            if pid is None:
                return f"node {node_id} is not running"
            self._report(f"stopping node {node_id} (pid {pid})")
            await _terminate(node, grace_s)
            await registry.update_node(
                self.name, node_id, state="stopped", pid=None, pid_start=None
            )
            await registry.record_event(self.name, "stop", f"pid {pid}", node_id)
            return f"node {node_id} stopped"

    async def kill(self, node_id: int) -> str:
        """SIGKILL: a crash, no flush, no goodbye."""
        async with self._locked(), _open_registry(self.home) as registry:
            await self._record(registry)
            node = await self._node(registry, node_id)
            pid = self._require_alive(node)
            signal_group(pid, signal.SIGKILL)
            if not await _wait_gone(node, KILL_WAIT_S):
                raise LauncherError(f"node {node_id} (pid {pid}) did not die after SIGKILL")
            await registry.update_node(self.name, node_id, state="killed", pid=None, pid_start=None)
            await registry.record_event(self.name, "kill", f"SIGKILL pid {pid}", node_id)
            return f"node {node_id} killed (pid {pid})"

    async def pause(self, node_id: int) -> str:
        """SIGSTOP: the process stays, but answers nothing (a GC pause, a stalled VM)."""
        async with self._locked(), _open_registry(self.home) as registry:
            await self._record(registry)
            node = await self._node(registry, node_id)
            pid = self._require_alive(node)
            if node_process_state(node) == "paused":
                return f"node {node_id} is already paused"
            signal_group(pid, signal.SIGSTOP)
            deadline = time.monotonic() + KILL_WAIT_S
            while node_process_state(node) != "paused":
                if time.monotonic() >= deadline:
                    raise LauncherError(f"node {node_id} (pid {pid}) did not stop on SIGSTOP")
                await asyncio.sleep(POLL_S)
            await registry.update_node(
                self.name, node_id, state="paused", pid=pid, pid_start=node.pid_start
            )
            await registry.record_event(self.name, "pause", f"SIGSTOP pid {pid}", node_id)
            return f"node {node_id} paused (pid {pid})"

    async def resume(self, node_id: int) -> str:
        """SIGCONT, then re-apply the current partition (it may have changed meanwhile)."""
        async with self._locked(), _open_registry(self.home) as registry:
            record = await self._record(registry)
            node = await self._node(registry, node_id)
            pid = self._require_alive(node)
            if node_process_state(node) != "paused":
                return f"node {node_id} is not paused"
            signal_group(pid, signal.SIGCONT)
            await registry.update_node(
                self.name, node_id, state="running", pid=pid, pid_start=node.pid_start
            )
            await registry.record_event(self.name, "resume", f"SIGCONT pid {pid}", node_id)
            records = await registry.nodes(self.name)
            if not read_faults(record.directory).empty:
                await self._apply_partition(record, records, only={node_id})
            else:
                # A heal while it was paused could not reach it: it still holds the old rules.
                async with AsyncClient([grpc_address(node)], timeout_s=ADMIN_TIMEOUT_S) as client:
                    try:
                        await client.clear_fault(grpc_address(node))
                    except ClientError as error:
                        raise LauncherError(
                            f"node {node_id} resumed but did not clear its fault rules: {error}",
                            hint="Run `minikv cluster heal` once it answers again.",
                        ) from None
            return f"node {node_id} resumed (pid {pid})"

    # --- membership --------------------------------------------------------------------------

    async def add_node(self, *, ready_timeout_s: float = READY_TIMEOUT_S) -> int:
        """Start one more node that joins the running cluster through a running member
        (`minikv serve --join`), record it, and wait until it serves and knows the meta
        leader; returns its id. It holds no replica until a rebalance moves some to it.

        A node that fails to start is recorded as removed (its id may already be in the
        cluster's map, so it is never handed out again) and its log tail is raised."""
        async with self._locked(), _open_registry(self.home) as registry:
            record = await self._record(registry)
            everyone = await registry.nodes(self.name, include_removed=True)
            members = [n for n in everyone if not n.removed]
            if len(members) >= NODES_MAX:
                raise LauncherError(
                    f"cluster {self.name} has {len(members)} nodes, the most a local cluster "
                    "may have",
                    hint="Remove one first (`minikv cluster remove-node NODE`).",
                )
            if read_partition(record.directory):
                raise LauncherError(
                    f"cluster {self.name} is partitioned: a new node would land on no side",
                    hint="Run `minikv cluster heal` first.",
                )
            running = [n for n in members if node_process_state(n) == "up"]
            if not running:
                raise LauncherError(
                    f"no node of cluster {self.name} is running: a new node joins through a "
                    "running one",
                    hint=f"Start the cluster first (`minikv cluster up --name {self.name}`).",
                )
            try:
                node = new_node(record, everyone)
            except RuntimeError as error:
                raise LauncherError(f"cannot pick ports for a new node: {error}") from None
            await registry.add_node(node)
            self._report(
                f"node {node.node_id} joins through node {running[0].node_id} "
                f"(gRPC {grpc_address(node)})"
            )
            try:
                await self._spawn(registry, record, [node])
                await self._wait_ready(registry, ready_timeout_s)
            except BaseException as failure:
                await self._abandon(registry, node.node_id, failure)
                if isinstance(failure, LauncherError):
                    raise LauncherError(
                        failure.message,
                        hint=f"Node {node.node_id} was stopped and is not used again. Fix the "
                        "cause above, then run `minikv cluster add-node` again.",
                    ) from None
                raise
            started = await self._node(registry, node.node_id)
            await registry.record_event(
                self.name,
                "add-node",
                f"joined through node {running[0].node_id} (pid {started.pid})",
                node.node_id,
            )
            return node.node_id

    async def _abandon(self, registry: Registry, node_id: int, failure: BaseException) -> None:
        """A node that failed to join: stopped, and recorded as removed rather than deleted
        (the cluster's map may list it already, so its id must never name another node)."""
        current = await self._node(registry, node_id)
        with contextlib.suppress(LauncherError):
            await _terminate(current, STOP_GRACE_S)
        await registry.update_node(self.name, node_id, state="failed", pid=None, pid_start=None)
        await registry.mark_removed(self.name, node_id)
        lines = (failure.message if isinstance(failure, UserError) else str(failure)).splitlines()
        await registry.record_event(
            self.name,
            "add-node",
            f"failed: {lines[0] if lines else type(failure).__name__} (id {node_id} is not "
            "used again)",
            node_id,
        )

    async def mark_removed(
        self,
        node_id: int,
        *,
        exit_wait_s: float = REMOVED_EXIT_WAIT_S,
        grace_s: float = STOP_GRACE_S,
    ) -> str:
        """Retire a node the cluster let go (a finished remove_node job): recorded as removed
        (never started again, `up` skips it), then its process is given `exit_wait_s` to stop
        by itself, as a removed node does, before SIGTERM and SIGKILL. The record comes
        first: from the moment the job ended the node is no member, whatever happens to this
        command while it waits."""
        async with self._locked(), _open_registry(self.home) as registry:
            await self._record(registry)
            await self._node(registry, node_id, removed_ok=True)
            node = await registry.mark_removed(self.name, node_id)
            pid = node_pid(node)
            if pid is None:
                how = "was not running"
            else:
                self._report(f"waiting for node {node_id} (pid {pid}) to stop by itself")
                if await _wait_gone(node, exit_wait_s):
                    how = "stopped by itself"
                else:
                    self._report(f"node {node_id} is still running: stopping it")
                    await _terminate(node, grace_s)
                    how = f"did not stop within {exit_wait_s:.0f} s and was terminated"
            await registry.update_node(
                self.name, node_id, state="stopped", pid=None, pid_start=None
            )
            await registry.record_event(
                self.name, "remove-node", f"left the cluster; its process {how}", node_id
            )
            return f"node {node_id} removed from cluster {self.name}; its process {how}"

    async def record_event(self, kind: str, detail: str, node: int | None = None) -> None:
        """Append to the cluster's journal (what maintenance jobs did, for the event log).
        No lock: the registry serialises writers itself."""
        async with _open_registry(self.home) as registry:
            await registry.record_event(self.name, kind, detail, node)

    # --- network faults --------------------------------------------------------------------

    async def partition(self, groups: Sequence[Sequence[int]]) -> tuple[tuple[int, ...], ...]:
        """Cut the cluster into groups that can talk only within themselves. Nodes not listed
        form one more group together. Replaces the faults in force (one-way cuts included):
        the groups describe the whole network. Returns the groups in force."""
        async with self._locked(), _open_registry(self.home) as registry:
            record = await self._record(registry)
            records = await registry.nodes(self.name)
            full = _complete_groups(groups, [n.node_id for n in records])
            _write_faults(record.directory, NetworkFaults(groups=full))
            detail = " | ".join(",".join(str(n) for n in group) for group in full)
            await registry.record_event(self.name, "partition", detail)
            await self._apply_partition(record, records)
            return full

    async def isolate(self, node_id: int) -> tuple[tuple[int, ...], ...]:
        """Cut one node off from all others (both directions)."""
        async with self._locked(), _open_registry(self.home) as registry:
            record = await self._record(registry)
            records = await registry.nodes(self.name)
            await self._node(registry, node_id)
            full = _complete_groups([[node_id]], [n.node_id for n in records])
            _write_faults(record.directory, NetworkFaults(groups=full))
            await registry.record_event(self.name, "isolate", f"node {node_id} cut off", node_id)
            await self._apply_partition(record, records)
            return full

    async def cut_one_way(self, source: Sequence[int], sink: Sequence[int]) -> NetworkFaults:
        """Drop traffic from the `source` nodes to the `sink` nodes, the reverse still flowing.
        Added to the faults in force (a partition stays) and kept in partition.json, so a node
        that restarts or resumes gets it back; `heal` removes it. Returns the faults in force.
        """
        async with self._locked(), _open_registry(self.home) as registry:
            record = await self._record(registry)
            records = await registry.nodes(self.name)
            cut = _check_cut(source, sink, [n.node_id for n in records])
            faults = read_faults(record.directory)
            if cut not in faults.one_way:
                faults = NetworkFaults(faults.groups, (*faults.one_way, cut))
            _write_faults(record.directory, faults)
            await registry.record_event(
                self.name, "partition", f"{cut.describe()} dropped (one way)"
            )
            await self._apply_partition(record, records, only={*cut.source, *cut.sink})
            return faults

    async def heal(self) -> list[int]:
        """Remove every fault rule on every running node; returns the nodes cleared."""
        async with self._locked(), _open_registry(self.home) as registry:
            record = await self._record(registry)
            records = await registry.nodes(self.name)
            (record.directory / PARTITION_FILE).unlink(missing_ok=True)
            cleared: list[int] = []
            skipped: list[int] = []
            async with AsyncClient([grpc_address(records[0])], timeout_s=ADMIN_TIMEOUT_S) as client:
                for node in records:
                    if node_process_state(node) != "up":
                        skipped.append(node.node_id)
                        continue
                    try:
                        await client.clear_fault(grpc_address(node))
                    except ClientError as error:
                        raise LauncherError(
                            f"node {node.node_id} did not clear its fault rules: {error}"
                        ) from None
                    cleared.append(node.node_id)
            if skipped:
                self._report(
                    f"{_nodes_are(skipped)} down or paused: cleared when started or resumed"
                )
            await registry.record_event(self.name, "heal", f"cleared nodes {_ids(cleared)}")
            return cleared

    async def transfer_leader(
        self, shard: int, node_id: int, *, timeout_s: float = TRANSFER_TIMEOUT_S
    ) -> str:
        """Hand the leadership of `shard` to `node_id` and wait until it leads."""
        async with self._locked(), _open_registry(self.home) as registry:
            record = await self._record(registry)
            node = await self._node(registry, node_id)
            if not 0 <= shard < record.settings.shards:
                raise LauncherError(
                    f"shard {shard} does not exist: cluster {self.name} has shards "
                    f"0..{record.settings.shards - 1}",
                    exit_code=EXIT_USAGE,
                )
            if node_process_state(node) != "up":
                raise LauncherError(
                    f"node {node_id} is {node_process_state(node)}: it cannot take leadership",
                    hint=f"Start or resume it first (`minikv cluster start {node_id}`).",
                )
            records = await registry.nodes(self.name)
            async with AsyncClient([grpc_address(node)], timeout_s=ADMIN_TIMEOUT_S) as client:
                try:
                    group = await _shard_group(client, grpc_address(node), shard)
                except LauncherError:
                    raise LauncherError(
                        f"node {node_id} holds no replica of shard {shard}",
                        hint="Pick one of its replicas (`minikv cluster status` lists them).",
                        exit_code=EXIT_USAGE,
                    ) from None
                voters = [int(v) for v in group.get("voters", [])]
                if node_id not in voters:
                    raise LauncherError(
                        f"node {node_id} holds no replica of shard {shard} "
                        f"(replicas: {_ids(voters)})",
                        hint="Pick one of its replicas.",
                        exit_code=EXIT_USAGE,
                    )
                if group.get("role") == "leader":
                    return f"node {node_id} already leads shard {shard}"
                live = [n for n in records if n.node_id in voters and node_pid(n) is not None]
                before, term = await self._move_leadership(client, live, shard, node_id, timeout_s)
            await registry.record_event(
                self.name,
                "transfer-leader",
                f"shard {shard}: leader {before or '?'} -> {node_id}",
                node_id,
            )
            return f"node {node_id} now leads shard {shard} (term {term})"

    async def _move_leadership(
        self,
        client: AsyncClient,
        replicas: Sequence[NodeRecord],
        shard: int,
        node_id: int,
        timeout_s: float,
    ) -> tuple[int | None, int]:
        """Ask the shard's current leader to hand over, retrying while an election is under
        way (only a leader can transfer); returns (previous leader, new term)."""
        deadline = time.monotonic() + timeout_s
        first_leader: int | None = None
        last_error = "no leader found"
        while time.monotonic() < deadline:
            views: dict[int, dict[str, Any]] = {}
            for replica in replicas:
                with contextlib.suppress(ClientError, LauncherError):
                    views[replica.node_id] = await _shard_group(
                        client, grpc_address(replica), shard
                    )
            target = views.get(node_id, {})
            if target.get("role") == "leader":
                return first_leader, int(target.get("term", 0))
            leader = next((n for n, g in views.items() if g.get("role") == "leader"), None)
            if leader is not None:
                first_leader = first_leader or leader
                self._report(f"asking node {leader} to hand shard {shard} to node {node_id}")
                remaining = deadline - time.monotonic()
                try:
                    await client.transfer_leader(
                        f"{LOOPBACK}:{next(r.grpc_port for r in replicas if r.node_id == leader)}",
                        shard,
                        node_id,
                        timeout_s=max(0.1, remaining),
                    )
                    continue  # the leader answers once the target leads: confirm and return
                except (UnavailableError, DeadlineExceededError) as error:
                    last_error = str(error)  # leadership moved meanwhile, or not yet done
                except ClientError as error:
                    raise LauncherError(
                        f"transfer of shard {shard} to node {node_id} refused: {error}",
                        hint="Leadership moves only to a voter of the shard; "
                        "check `minikv cluster status`.",
                    ) from None
            await asyncio.sleep(POLL_S * 2)
        raise LauncherError(
            f"node {node_id} did not become leader of shard {shard} within {timeout_s:.0f} s "
            f"({last_error})",
            hint="It may be lagging or cut off from the leader; check `minikv cluster status`.",
        )

    # --- machinery -------------------------------------------------------------------------

    def _report(self, message: str, done: int = 0, total: int = 0) -> None:
        if self._progress is not None:
            self._progress(Step(message, done, total))

    @contextlib.asynccontextmanager
    async def _locked(self) -> AsyncIterator[None]:
        """The cluster's cross-process lock (flock; released when the descriptor closes, so
        also when the holder dies). Polled, so waiting never blocks the event loop."""
        locks = self.home / ".locks"  # dotted: no cluster name can collide with it
        locks.mkdir(parents=True, exist_ok=True)
        fd = os.open(locks / f"{self.name}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            deadline = time.monotonic() + LOCK_TIMEOUT_S
            waited = False
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if not waited:
                        self._report(f"waiting for another minikv command on {self.name}")
                        waited = True
                    if time.monotonic() >= deadline:
                        raise LauncherError(
                            f"cluster {self.name} is locked by another minikv command "
                            f"for over {LOCK_TIMEOUT_S:.0f} s",
                            hint="Wait for it to finish, or find it with `pgrep -af minikv`.",
                        ) from None
                    await asyncio.sleep(POLL_S)
            yield
        finally:
            os.close(fd)

    async def _record(self, registry: Registry) -> ClusterRecord:
        record = await registry.cluster(self.name)
        if record is None:
            known = [c.name for c in await registry.clusters()]
            listing = f" (known: {', '.join(known)})" if known else ""
            raise LauncherError(
                f"no local cluster named {self.name!r}{listing}",
                hint=f"Create it with `minikv cluster up --name {self.name}`.",
            )
        return record

    async def _node(
        self, registry: Registry, node_id: int, *, removed_ok: bool = False
    ) -> NodeRecord:
        node = await registry.node(self.name, node_id)
        if node is not None and (removed_ok or not node.removed):
            return node
        ids = _ids(n.node_id for n in await registry.nodes(self.name))
        if node is None:
            raise LauncherError(
                f"cluster {self.name} has no node {node_id} (nodes: {ids})", exit_code=EXIT_USAGE
            )
        raise LauncherError(
            f"node {node_id} was removed from cluster {self.name} (nodes: {ids})",
            hint="A removed node is not started again; `minikv cluster add-node` adds a new one.",
            exit_code=EXIT_USAGE,
        )

    @staticmethod
    def _require_alive(node: NodeRecord) -> int:
        pid = node_pid(node)
        if pid is None:
            raise LauncherError(
                f"node {node.node_id} is not running ({node_process_state(node)})",
                hint=f"Start it with `minikv cluster start {node.node_id}`.",
            )
        return pid

    async def _create(
        self,
        registry: Registry,
        nodes: int | None,
        shards: int | None,
        replicas: int | None,
        directory: Path | None,
    ) -> ClusterRecord:
        settings = check_settings(
            ClusterSettings(
                nodes=NODES_DEFAULT if nodes is None else nodes,
                shards=SHARDS_DEFAULT if shards is None else shards,
                replicas=min(REPLICAS_DEFAULT, nodes or NODES_DEFAULT)
                if replicas is None
                else replicas,
            )
        )
        where = (directory if directory is not None else self.home / self.name).expanduser()
        where = where.absolute()
        if where.exists() and (not where.is_dir() or any(where.iterdir())):
            raise LauncherError(
                f"{where} already exists and is not an empty directory",
                hint="Pick another --dir or --name, or remove it first.",
                exit_code=EXIT_USAGE,
            )
        where.mkdir(parents=True, exist_ok=True)
        ports = free_ports(2 * settings.nodes)
        record = ClusterRecord(
            name=self.name, directory=where, settings=settings, created_at=time.time()
        )
        node_records = [
            NodeRecord(
                cluster=self.name,
                node_id=node_id,
                grpc_port=ports[2 * (node_id - 1)],
                http_port=ports[2 * (node_id - 1) + 1],
                data_dir=where / f"node{node_id}",
                log_path=where / f"node{node_id}.log",
                state="stopped",
            )
            for node_id in range(1, settings.nodes + 1)
        ]
        await registry.add_cluster(record, node_records)
        await registry.record_event(
            self.name,
            "create",
            f"{settings.nodes} nodes, {settings.shards} shards, {settings.replicas} replicas "
            f"in {where}",
        )
        self._report(
            f"created cluster {self.name}: {settings.nodes} nodes, {settings.shards} shards, "
            f"{settings.replicas} replicas in {where}"
        )
        return record

    def _check_same(
        self,
        record: ClusterRecord,
        nodes: int | None,
        shards: int | None,
        replicas: int | None,
        directory: Path | None,
    ) -> None:
        """A restart must not silently ignore settings that differ from the cluster's."""
        differs = [
            f"{what} {wanted} (it has {has})"
            for what, wanted, has in (
                ("--nodes", nodes, record.settings.nodes),
                ("--shards", shards, record.settings.shards),
                ("--replicas", replicas, record.settings.replicas),
            )
            if wanted is not None and wanted != has
        ]
        if directory is not None and directory.expanduser().absolute() != record.directory:
            differs.append(f"--dir {directory} (it is in {record.directory})")
        if differs:
            raise LauncherError(
                f"cluster {self.name} exists with other settings: {', '.join(differs)}",
                hint=f"Omit them to start it as it is, or `minikv cluster destroy {self.name}` "
                "first, or pick another --name.",
                exit_code=EXIT_USAGE,
            )

    async def _spawn(
        self, registry: Registry, record: ClusterRecord, nodes: Sequence[NodeRecord]
    ) -> None:
        """Start `nodes` and wait until each serves. If one fails, show its log tail and stop
        every node this call started: a half-started cluster is worse than none."""
        for node in nodes:
            if lost_its_data(node):
                others = [n.node_id for n in nodes if n.node_id != node.node_id]
                starts = ", ".join(f"`minikv cluster start {n}`" for n in others)
                first = f"start the others ({starts}), then " if others else ""
                raise LauncherError(
                    f"node {node.node_id} served before, but its data directory "
                    f"{node.data_dir} is gone: started empty it would forget its votes and "
                    "its log, which Raft needs kept to never lose an acknowledged write",
                    hint=f"Replace it with a new node: {first}run `minikv cluster add-node`, "
                    f"`minikv cluster repair --dead {node.node_id}` and `minikv cluster "
                    f"remove-node {node.node_id}`.",
                )
            for port, what in ((node.grpc_port, "gRPC"), (node.http_port, "HTTP")):
                if port_in_use(port):
                    raise LauncherError(
                        f"node {node.node_id}'s {what} port {LOOPBACK}:{port} is taken by "
                        "another process",
                        hint=f"Free it (find the holder with `ss -ltnp 'sport = :{port}'`), "
                        f"or `minikv cluster destroy {self.name}` and create it again "
                        "for new ports.",
                    )
        everyone = await registry.nodes(self.name, include_removed=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith("MINIKV_")}
        env["PYTHONUNBUFFERED"] = "1"
        env.setdefault("GRPC_VERBOSITY", "ERROR")
        total = len(nodes)
        started: list[NodeRecord] = []
        try:
            for index, node in enumerate(nodes, start=1):
                self._report(f"starting node {node.node_id}", index - 1, total)
                started.append(await self._launch(registry, record, node, everyone, env))
            done = 0
            pending = {n.node_id: n for n in started}
            deadline = time.monotonic() + SPAWN_TIMEOUT_S
            while pending:
                for node_id, node in list(pending.items()):
                    if ready_file(record, node).exists():
                        del pending[node_id]
                        done += 1
                        self._report(f"node {node_id} serving (pid {node.pid})", done, total)
                    elif node_pid(node) is None:
                        raise self._start_failure(node, self._exit_detail(node))
                if pending and time.monotonic() >= deadline:
                    node = next(iter(pending.values()))
                    raise self._start_failure(node, f"not serving after {SPAWN_TIMEOUT_S:.0f} s")
                await asyncio.sleep(POLL_S)
        except BaseException as failure:
            failed = failure.node_id if isinstance(failure, NodeStartFailedError) else None
            self._report(f"stopping the {len(started)} node(s) this command started")
            with contextlib.suppress(LauncherError):
                await asyncio.gather(*(_terminate(n, STOP_GRACE_S) for n in started))
            for node in started:
                state: NodeState = "failed" if node.node_id == failed else "stopped"
                await registry.update_node(
                    self.name, node.node_id, state=state, pid=None, pid_start=None
                )
            if isinstance(failure, NodeStartFailedError):
                first_line = failure.message.splitlines()[0]
                await registry.record_event(self.name, "start-failed", first_line, failed)
            raise
        fresh = await registry.nodes(self.name)
        await self._apply_partition(record, fresh, only={n.node_id for n in started})

    async def _launch(
        self,
        registry: Registry,
        record: ClusterRecord,
        node: NodeRecord,
        everyone: Sequence[NodeRecord],
        env: dict[str, str],
    ) -> NodeRecord:
        """Spawn one node detached and record its pid at once, so that a launcher that dies
        right after still leaves a registry that can find and stop it."""
        try:
            command = node_command(record, node, everyone)
        except ValueError as error:
            raise LauncherError(
                f"cannot start node {node.node_id}: {error}",
                hint="A joined node restarts through another member; start that one first.",
            ) from None
        ready_file(record, node).unlink(missing_ok=True)
        node.data_dir.parent.mkdir(parents=True, exist_ok=True)
        with node.log_path.open("ab") as log:
            stamp = time.strftime("%Y-%m-%dT%H:%M:%S")
            log.write(f"{START_MARK} {stamp}: {' '.join(command)}\n".encode())
            log.flush()
            child = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=record.directory,
                start_new_session=True,
            )
        CHILDREN[child.pid] = child
        pid_start = process_start_ticks(child.pid)
        # Popen returns when close-on-exec fired, a moment before the kernel publishes the new
        # command line: wait for it, or the node would look like a stranger to `node_pid`.
        deadline = time.monotonic() + EXEC_WAIT_S
        while "minikv_core.server" not in cmdline(child.pid):
            if child.poll() is not None or time.monotonic() >= deadline:
                break
            await asyncio.sleep(0.005)
        return await registry.update_node(
            self.name, node.node_id, state="running", pid=child.pid, pid_start=pid_start
        )

    @staticmethod
    def _exit_detail(node: NodeRecord) -> str:
        child = CHILDREN.get(node.pid) if node.pid is not None else None
        code = child.poll() if child is not None else None
        return f"exited with status {code}" if code is not None else "exited"

    def _start_failure(self, node: NodeRecord, what: str) -> NodeStartFailedError:
        tail = log_tail(node.log_path)
        lines = "\n".join(f"  {line}" for line in tail) if tail else "  (the log is empty)"
        return NodeStartFailedError(
            node.node_id,
            f"node {node.node_id} of {self.name} failed to start: {what}\n"
            f"last lines of {node.log_path}:\n{lines}",
            hint="The nodes this command started were stopped. Fix the cause above, then run "
            f"`minikv cluster up --name {self.name}` again.",
        )

    async def _wait_ready(self, registry: Registry, timeout_s: float) -> None:
        records = await registry.nodes(self.name)
        live = [n for n in records if node_process_state(n) == "up"]
        if not live:
            return
        total = len(live)
        self._report("waiting for every shard to elect a leader", 0, total)
        deadline = time.monotonic() + timeout_s
        ready: set[int] = set()
        reasons: dict[int, str] = {}
        async with AsyncClient([grpc_address(live[0])], timeout_s=ADMIN_TIMEOUT_S) as client:
            while len(ready) < total:
                for node in live:
                    if node.node_id in ready:
                        continue
                    try:
                        document = await client.status(grpc_address(node), timeout_s=1.0)
                    except ClientError as error:
                        reasons[node.node_id] = f"not answering ({error})"
                        continue
                    if document.get("ready"):
                        ready.add(node.node_id)
                        self._report(f"node {node.node_id} ready", len(ready), total)
                    else:
                        reasons[node.node_id] = str(document.get("not_ready_reason") or "")
                if len(ready) < total:
                    if time.monotonic() >= deadline:
                        waiting = "; ".join(
                            f"node {n}: {reasons.get(n, '?')}"
                            for n in sorted({n.node_id for n in live} - ready)
                        )
                        raise LauncherError(
                            f"cluster {self.name} is running but not ready after "
                            f"{timeout_s:.0f} s: {waiting}",
                            hint="The nodes were left running; see `minikv cluster status` "
                            "and their logs.",
                        )
                    await asyncio.sleep(POLL_S * 2)

    async def _apply_partition(
        self,
        record: ClusterRecord,
        records: Sequence[NodeRecord],
        only: Iterable[int] | None = None,
    ) -> None:
        """Set each running node's fault rules from partition.json: it drops traffic to and
        from every node outside its group, and what one-way cuts name it in. Nodes not
        running get theirs when they start or resume."""
        faults = read_faults(record.directory)
        if faults.empty:
            return
        wanted = set(only) if only is not None else {n.node_id for n in records}
        skipped: list[int] = []
        async with AsyncClient([grpc_address(records[0])], timeout_s=ADMIN_TIMEOUT_S) as client:
            for node in records:
                if node.node_id not in wanted:
                    continue
                if node_process_state(node) != "up":
                    skipped.append(node.node_id)
                    continue
                drop_to, drop_from = faults.rules(node.node_id)
                try:
                    await client.set_fault(grpc_address(node), drop_to=drop_to, drop_from=drop_from)
                except ClientError as error:
                    raise LauncherError(
                        f"node {node.node_id} did not take its fault rules: {error}"
                    ) from None
        if skipped:
            self._report(f"{_nodes_are(skipped)} down or paused: cut off when started or resumed")


# ---------------------------------------------------------------------------------- helpers


@contextlib.asynccontextmanager
async def _open_registry(home: Path | None) -> AsyncIterator[Registry]:
    try:
        registry = await Registry.open(home)
    except RegistryError as error:
        raise LauncherError(error.message, error.hint, error.exit_code) from None
    try:
        yield registry
    except RegistryError as error:
        raise LauncherError(error.message, error.hint, error.exit_code) from None
    finally:
        await registry.close()


async def _view(registry: Registry, record: ClusterRecord) -> ClusterView:
    nodes = tuple(
        NodeView(node, node_process_state(node)) for node in await registry.nodes(record.name)
    )
    faults = read_faults(record.directory)
    return ClusterView(record, nodes, faults.groups, faults.one_way)


async def _shard_group(client: AsyncClient, endpoint: str, shard: int) -> dict[str, Any]:
    document = await client.status(endpoint)
    for group in document.get("groups", []):
        if group.get("shard") == shard:
            return dict(group)
    raise LauncherError(f"node at {endpoint} reports no replica of shard {shard}")


def _ids(ids: Iterable[int]) -> str:
    return ", ".join(str(i) for i in ids) or "none"


def _nodes_are(ids: Sequence[int]) -> str:
    return f"node {ids[0]} is" if len(ids) == 1 else f"nodes {_ids(ids)} are"


def _complete_groups(
    groups: Sequence[Sequence[int]], node_ids: Sequence[int]
) -> tuple[tuple[int, ...], ...]:
    """The groups as given plus one of every node left out; refuses overlaps and unknowns."""
    seen: set[int] = set()
    result: list[tuple[int, ...]] = []
    for group in groups:
        members = tuple(sorted(set(group)))
        if not members:
            continue
        unknown = [n for n in members if n not in node_ids]
        if unknown:
            raise LauncherError(
                f"no node {_ids(unknown)} in this cluster (nodes: {_ids(node_ids)})",
                exit_code=EXIT_USAGE,
            )
        twice = seen.intersection(members)
        if twice:
            raise LauncherError(
                f"node {_ids(sorted(twice))} is in two groups",
                hint="Each node belongs to one side of a partition.",
                exit_code=EXIT_USAGE,
            )
        seen.update(members)
        result.append(members)
    rest = tuple(n for n in node_ids if n not in seen)
    if rest:
        result.append(rest)
    if len(result) < 2:
        raise LauncherError(
            "a partition needs at least two groups",
            hint="For example `minikv cluster partition 1,2 3`; nodes not listed form a group.",
            exit_code=EXIT_USAGE,
        )
    return tuple(result)


def _check_cut(source: Sequence[int], sink: Sequence[int], node_ids: Sequence[int]) -> OneWayCut:
    unknown = sorted((set(source) | set(sink)) - set(node_ids))
    if unknown:
        raise LauncherError(
            f"no node {_ids(unknown)} in this cluster (nodes: {_ids(node_ids)})",
            exit_code=EXIT_USAGE,
        )
    if not source or not sink:
        raise LauncherError(
            "a one-way cut needs nodes on both sides",
            hint="Name the nodes whose traffic is dropped and the nodes it no longer reaches.",
            exit_code=EXIT_USAGE,
        )
    both = sorted(set(source) & set(sink))
    if both:
        raise LauncherError(
            f"node {_ids(both)} is on both sides of the one-way cut",
            hint="The two sides of a cut must not share a node.",
            exit_code=EXIT_USAGE,
        )
    return OneWayCut(tuple(sorted(set(source))), tuple(sorted(set(sink))))


def read_faults(directory: Path) -> NetworkFaults:
    """The faults in force (none when there is no file or it is unreadable: then no cut).

    The format: `{"groups": [[1], [2, 3]], "one_way": [{"from": [1], "to": [2]}]}`. Files
    written before one-way cuts were kept hold only `groups`, and still load."""
    try:
        document = json.loads((directory / PARTITION_FILE).read_text())
        groups = tuple(tuple(int(n) for n in group) for group in document.get("groups", ()))
        one_way = tuple(
            OneWayCut(tuple(int(n) for n in cut["from"]), tuple(int(n) for n in cut["to"]))
            for cut in document.get("one_way", ())
        )
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return NetworkFaults()
    return NetworkFaults(groups, one_way)


def read_partition(directory: Path) -> tuple[tuple[int, ...], ...]:
    """The symmetric partition in force (empty when none)."""
    return read_faults(directory).groups


def _write_faults(directory: Path, faults: NetworkFaults) -> None:
    path = directory / PARTITION_FILE
    tmp = path.with_name(f".{PARTITION_FILE}.tmp")
    document = {
        "groups": [list(g) for g in faults.groups],
        "one_way": [{"from": list(c.source), "to": list(c.sink)} for c in faults.one_way],
    }
    tmp.write_text(json.dumps(document))
    tmp.replace(path)


def _delete_cluster_files(record: ClusterRecord, nodes: Sequence[NodeRecord]) -> None:
    import shutil

    for node in nodes:
        if node.data_dir.is_dir():
            shutil.rmtree(node.data_dir)
        node.log_path.unlink(missing_ok=True)
        ready_file(record, node).unlink(missing_ok=True)
    (record.directory / PARTITION_FILE).unlink(missing_ok=True)
    with contextlib.suppress(OSError):
        record.directory.rmdir()  # only when empty: it may hold files we did not create
