"""How the dashboard reaches a cluster: a local one (through the launcher), one it attached to
by endpoints, or a recording.

A session is opened inside the app (in a worker), so starting a cluster shows its progress on
screen instead of blocking before the first frame. It hands the app a `StatusSource`, the
`ClusterControl` for the keys, the event journal and the load generator, and closes them all
on exit — stopping the cluster only when the person chose that.

The first frame is due within a second of the cluster being ready, and while it is being
prepared the app's first layout and render compete for the same event loop: every await costs
a turn of that loop. So a local session opens the registry once (it keeps it for the journal
and the polls) and reads what it needs from it together, instead of going through the
launcher's reads, each of which opens and closes the registry again.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Protocol

from minikv_core.client import AsyncClient, ClientError, ShardRouting
from minikv_tui.cluster_status import NodeTarget, Poller
from minikv_tui.dashboard.control import ClusterControl
from minikv_tui.dashboard.journal import EventJournal, MemoryJournal, RegistryJournal
from minikv_tui.dashboard.source import Frame, LiveSource, RecordedSource, StatusSource
from minikv_tui.errors import EXIT_USAGE, UserError
from minikv_tui.launcher import DEFAULT_NAME, Launcher, NodeView, node_process_state
from minikv_tui.loadgen import LoadGenerator
from minikv_tui.registry import NodeRecord, Registry
from minikv_tui.target import parse_endpoints

Progress = Callable[[str], None]

LOAD_CLIENTS = 4
LOAD_KEYS = 1000
LOAD_TIMEOUT_S = 2.0
DISCOVER_TIMEOUT_S = 5.0


def poll_timeout_s(refresh_hz: float) -> float:
    """A node that does not answer within two refresh periods is shown as unreachable: a
    paused node appears as such on the next frame or the one after, never freezing the view.
    Bounded below so a busy (not dead) node on a loaded laptop is not called unreachable."""
    return min(1.0, max(0.3, 2.0 / refresh_hz))


def detail_every(refresh_hz: float) -> int:
    """WAL/SSTable documents about once a second: they change slower than roles do."""
    return max(1, round(refresh_hz))


class Session(Protocol):
    @property
    def title(self) -> str: ...

    @property
    def manages_processes(self) -> bool:
        """True when the cluster's processes are ours to stop on exit."""
        ...

    source: StatusSource | None
    control: ClusterControl | None
    journal: EventJournal
    loadgen: LoadGenerator | None

    async def connect(self, progress: Progress) -> None: ...

    async def close(self, *, stop_cluster: bool) -> str | None: ...


class LocalSession:
    """A local cluster: the named one, else the only one running, else `local`, created (or
    started) with the given size when it is not running."""

    def __init__(
        self,
        name: str | None,
        *,
        nodes: int | None = None,
        shards: int | None = None,
        home: Path | None = None,
        refresh_hz: float = 4.0,
    ) -> None:
        self._name = name
        self._nodes = nodes
        self._shards = shards
        self._home = home
        self._refresh_hz = refresh_hz
        self.source: StatusSource | None = None
        self.control: ClusterControl | None = None
        self.journal: EventJournal = MemoryJournal()
        self.loadgen: LoadGenerator | None = None
        self._registry: Registry | None = None
        self._clients: list[AsyncClient] = []
        self._views: tuple[NodeView, ...] = ()
        self._views_fresh = False
        self._cluster: str | None = name

    @property
    def title(self) -> str:
        return self._cluster or "local cluster"

    @property
    def manages_processes(self) -> bool:
        return True

    async def connect(self, progress: Progress) -> None:
        registry = await Registry.open(self._home)
        try:
            records = await self._find_or_start(registry, progress)
        except BaseException:
            await registry.close()
            raise
        self._registry = registry
        name = self._cluster
        assert name is not None
        self._views = tuple(NodeView(record, node_process_state(record)) for record in records)
        self._views_fresh = True
        endpoints = [view.grpc for view in self._views]
        launcher = Launcher(name, home=self._home, progress=lambda step: progress(step.message))
        client = AsyncClient(endpoints)
        self._clients.append(client)
        poller = Poller(client, name=name, timeout_s=poll_timeout_s(self._refresh_hz))
        self.source = LiveSource(poller, self._targets, detail_every=detail_every(self._refresh_hz))
        journal = RegistryJournal(registry, name)
        self.journal = journal
        self.control = ClusterControl(
            client,
            self._addresses,
            launcher=launcher,
            journal=lambda kind, detail, node: journal.record(kind, detail, node, 0.0),
        )
        load_client = AsyncClient(endpoints, timeout_s=LOAD_TIMEOUT_S)
        self._clients.append(load_client)
        self.loadgen = LoadGenerator(load_client, clients=LOAD_CLIENTS, keys=LOAD_KEYS, seed=0)

    async def _find_or_start(self, registry: Registry, progress: Progress) -> list[NodeRecord]:
        """The cluster's node records, once it runs: attached to as it is when it runs and no
        size was asked for, else started (and created) by the launcher."""
        name = self._name or await self._running_or_default(registry)
        self._cluster = name
        record, records = await asyncio.gather(registry.cluster(name), registry.nodes(name))
        running = any(node_process_state(node) in ("up", "paused") for node in records)
        if record is not None and running and self._nodes is None and self._shards is None:
            progress(f"attaching to cluster {name}")
            return records
        progress(f"starting cluster {name}")
        launcher = Launcher(name, home=self._home, progress=lambda step: progress(step.message))
        await launcher.up(nodes=self._nodes, shards=self._shards)
        return await registry.nodes(name)

    async def _running_or_default(self, registry: Registry) -> str:
        clusters = await registry.clusters()
        members = await asyncio.gather(*(registry.nodes(c.name) for c in clusters))
        running = [
            cluster.name
            for cluster, nodes in zip(clusters, members, strict=True)
            if any(node_process_state(node) in ("up", "paused") for node in nodes)
        ]
        if len(running) > 1:
            raise UserError(
                f"several local clusters are running ({', '.join(running)}): which one?",
                hint="Pass --cluster NAME.",
                exit_code=EXIT_USAGE,
            )
        return running[0] if running else DEFAULT_NAME

    async def _targets(self) -> Sequence[NodeTarget]:
        """Process states re-read every poll (a kill from another terminal shows at once);
        the records from the registry, which a restart changes (new pid)."""
        assert self._registry is not None and self._cluster is not None
        if self._views_fresh:  # records read by `connect` a moment ago: no second read
            self._views_fresh = False
            records = [view.record for view in self._views]
        else:
            records = await self._registry.nodes(self._cluster)
            if not records and await self._registry.cluster(self._cluster) is None:
                # Destroyed from another terminal: an empty frame would read "0/0 up".
                raise UserError(
                    f"cluster {self._cluster} no longer exists (destroyed elsewhere?)",
                    hint="Press q to leave; `minikv tui` starts a new cluster.",
                )
        self._views = tuple(NodeView(record, node_process_state(record)) for record in records)
        endpoints = [view.grpc for view in self._views]
        for client in self._clients:
            if endpoints and set(client.endpoints) != set(endpoints):
                # The cluster was made again on other ports (destroyed, then `up`): quick
                # put/get and the load generator would go on asking the old nodes.
                client.reseed(endpoints)
        return [view.target() for view in self._views]

    def _addresses(self) -> Mapping[int, str]:
        return {view.node_id: view.grpc for view in self._views}

    async def close(self, *, stop_cluster: bool) -> str | None:
        message = None
        if self.loadgen is not None:
            await self.loadgen.stop()
        if stop_cluster and self.control is not None:
            message = await self.control.stop_cluster()
        for client in self._clients:
            await client.close()
        await self.journal.close()
        return message


class EndpointsSession:
    """A cluster started elsewhere: nodes found from the shard map of the endpoints given;
    fault injection works, process actions do not."""

    def __init__(self, endpoints: str, *, refresh_hz: float = 4.0) -> None:
        self._endpoints = parse_endpoints(endpoints)
        self._refresh_hz = refresh_hz
        self.source: StatusSource | None = None
        self.control: ClusterControl | None = None
        self.journal: EventJournal = MemoryJournal()
        self.loadgen: LoadGenerator | None = None
        self._clients: list[AsyncClient] = []
        self._targets_found: list[NodeTarget] = []

    @property
    def title(self) -> str:
        extra = f" (+{len(self._endpoints) - 1})" if len(self._endpoints) > 1 else ""
        return f"{self._endpoints[0]}{extra}"

    @property
    def manages_processes(self) -> bool:
        return False

    async def connect(self, progress: Progress) -> None:
        progress(f"asking {', '.join(self._endpoints)} for the shard map")
        client = AsyncClient(self._endpoints)
        self._clients.append(client)
        try:
            routing = ShardRouting.from_document(
                await client.shard_map(timeout_s=DISCOVER_TIMEOUT_S)
            )
        except (ClientError, ValueError) as error:
            raise UserError(
                f"no node at {', '.join(self._endpoints)} answered with a shard map: {error}",
                hint="Check the addresses (gRPC host:port) and that the nodes are running.",
            ) from None
        self._targets_found = [
            NodeTarget(node_id, address) for node_id, address in sorted(routing.addresses.items())
        ]
        progress(f"found nodes {', '.join(str(t.node_id) for t in self._targets_found)}")
        poller = Poller(client, name=None, timeout_s=poll_timeout_s(self._refresh_hz))
        self.source = LiveSource(poller, self._targets, detail_every=detail_every(self._refresh_hz))
        journal = MemoryJournal()
        self.journal = journal
        self.control = ClusterControl(
            client,
            lambda: {t.node_id: t.grpc for t in self._targets_found},
            journal=lambda kind, detail, node: journal.record(kind, detail, node, time.time()),
        )
        load_client = AsyncClient(self._endpoints, timeout_s=LOAD_TIMEOUT_S)
        self._clients.append(load_client)
        self.loadgen = LoadGenerator(load_client, clients=LOAD_CLIENTS, keys=LOAD_KEYS, seed=0)

    async def _targets(self) -> Sequence[NodeTarget]:
        return self._targets_found

    async def close(self, *, stop_cluster: bool) -> str | None:
        if self.loadgen is not None:
            await self.loadgen.stop()
        for client in self._clients:
            await client.close()
        return None


class RecordedSession:
    """Replays frames: for snapshot tests and screenshots. Read-only: no control, no load."""

    def __init__(self, frames: Sequence[Frame], *, title: str = "recording") -> None:
        self._frames = list(frames)
        self._title = title
        self.source: StatusSource | None = None
        self.control: ClusterControl | None = None
        self.journal: EventJournal = MemoryJournal()
        self.loadgen: LoadGenerator | None = None

    @property
    def title(self) -> str:
        return self._title

    @property
    def manages_processes(self) -> bool:
        return False

    async def connect(self, progress: Progress) -> None:
        self.source = RecordedSource(self._frames)

    async def close(self, *, stop_cluster: bool) -> str | None:
        return None
