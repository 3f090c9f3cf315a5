"""An in-process cluster of real `Node`s for the host tests: real peer transports (gRPC on
loopback ports the OS picked), real WALs with fsync, real engines, one event loop.

Forwarding between nodes uses `DirectForwarder`, which calls the target node's `local_*`
methods after consulting both nodes' fault filters exactly as the gRPC forwarder does (the
real gRPC forwarder belongs to `minikv_core.net` and is tested there). It is the only part
that is not the production path.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import TypeVar

from minikv_core.cluster.config import NodeConfig
from minikv_core.cluster.node_service import Forwarder, Node
from minikv_core.cluster.service import (
    Consistency,
    ScanRequest,
    ScanResult,
    UnavailableError,
    VersionedValue,
)
from minikv_core.cluster.sessions import WriteSession
from minikv_core.net.fault import FaultFilter, OutboundAction
from minikv_core.storage.engine import EngineOptions
from minikv_tui.node_process import free_ports

T = TypeVar("T")

TICK_MS = 20
SEGMENT_BYTES = 64 * 1024


class DirectForwarder:
    """Forwarder calling the target Node in this process, through both fault filters."""

    def __init__(self, cluster: Cluster, node_id: int, fault_filter: FaultFilter) -> None:
        self._cluster = cluster
        self._node_id = node_id
        self._fault = fault_filter
        self.closed = False
        self.calls = 0

    def _target(self, node_id: int) -> Node:
        """The node to call; its refusals, like the gRPC forwarder's before a call is sent,
        cannot have applied anything (`unapplied`)."""
        self.calls += 1
        if self.closed:
            raise UnavailableError(
                f"node {self._node_id} is stopping", leader_hint=node_id, unapplied=True
            )
        if self._fault.outbound(node_id).action is not OutboundAction.DELIVER:
            raise UnavailableError(
                f"node {node_id} unreachable (fault)", leader_hint=node_id, unapplied=True
            )
        node = self._cluster.nodes.get(node_id)
        if node is None:
            raise UnavailableError(f"node {node_id} is down", leader_hint=node_id, unapplied=True)
        transport = node.host.transport_or_none
        if transport is None or not transport.fault_filter.inbound(self._node_id):
            raise UnavailableError(
                f"node {node_id} unreachable (fault)", leader_hint=node_id, unapplied=True
            )
        return node

    async def forward_get(
        self, node_id: int, key: bytes, consistency: Consistency, deadline: float
    ) -> VersionedValue:
        return await self._target(node_id).local_get(key, consistency, deadline)

    async def forward_put(
        self,
        node_id: int,
        key: bytes,
        value: bytes,
        deadline: float,
        session: WriteSession | None = None,
    ) -> int:
        return await self._target(node_id).local_put(key, value, deadline, session)

    async def forward_delete(
        self, node_id: int, key: bytes, deadline: float, session: WriteSession | None = None
    ) -> bool:
        return await self._target(node_id).local_delete(key, deadline, session)

    async def forward_scan_shard(
        self, node_id: int, shard: int, request: ScanRequest, deadline: float
    ) -> ScanResult:
        return await self._target(node_id).local_scan_shard(shard, request, deadline)

    async def close(self) -> None:
        self.closed = True


class Cluster:
    """N nodes in tmp_path; `nodes` holds the running ones."""

    def __init__(
        self,
        root: Path,
        size: int = 3,
        *,
        shards: int = 4,
        replicas: int = 3,
        seed: int = 1,
        snapshot_entries_threshold: int = 10_000,
        segment_bytes: int = SEGMENT_BYTES,
        tick_ms: int = TICK_MS,
    ) -> None:
        ports = free_ports(size)
        self.peers = {i + 1: f"127.0.0.1:{port}" for i, port in enumerate(ports)}
        self.root = root
        self.shards = shards
        self.replicas = replicas
        self.seed = seed
        self.snapshot_entries_threshold = snapshot_entries_threshold
        self.segment_bytes = segment_bytes
        self.tick_ms = tick_ms
        self.nodes: dict[int, Node] = {}
        self.engine_options: dict[int, EngineOptions] = {}
        """Per node engine options (default: the node's own)."""

    def config(self, node_id: int, **overrides: object) -> NodeConfig:
        values: dict[str, object] = {
            "node_id": node_id,
            "data_dir": self.root / f"node{node_id}",
            "grpc_address": self.peers[node_id],
            "http_address": "127.0.0.1:0",
            "peers": self.peers,
            "shards": self.shards,
            "replicas": self.replicas,
            "tick_ms": self.tick_ms,
            "request_timeout_ms": 3000,
            "wal_segment_size_bytes": self.segment_bytes,
            "snapshot_entries_threshold": self.snapshot_entries_threshold,
            "seed": self.seed * 1000 + node_id,
        }
        values.update(overrides)
        return NodeConfig(**values)  # type: ignore[arg-type]

    def make_node(self, node_id: int, **overrides: object) -> Node:
        def forwarder(config: NodeConfig, fault_filter: FaultFilter) -> Forwarder:
            return DirectForwarder(self, config.node_id, fault_filter)

        return Node(
            self.config(node_id, **overrides),
            forwarder_factory=forwarder,
            engine_options=self.engine_options.get(node_id),
        )

    async def start_node(self, node_id: int) -> Node:
        node = self.make_node(node_id)
        await node.start()
        self.nodes[node_id] = node
        return node

    async def start(self) -> None:
        await asyncio.gather(*(self.start_node(node_id) for node_id in self.peers))

    async def stop_node(self, node_id: int) -> None:
        node = self.nodes.pop(node_id)
        await node.stop()

    async def stop(self) -> None:
        nodes = list(self.nodes)
        for node_id in nodes:
            await self.stop_node(node_id)

    async def wait_ready(self, timeout_s: float = 15.0, nodes: list[int] | None = None) -> None:
        """Until every (chosen) node reports ready: every local group knows a leader."""
        chosen = nodes if nodes is not None else list(self.nodes)

        def reasons() -> list[str]:
            return [
                f"node {n}: {self.nodes[n].readiness().reason}"
                for n in chosen
                if not self.nodes[n].readiness().ready
            ]

        await wait_for(lambda: not reasons(), timeout_s, lambda: "; ".join(reasons()))


@contextlib.asynccontextmanager
async def started_cluster(
    root: Path, size: int, shards: int, tick_ms: int = TICK_MS
) -> AsyncIterator[Cluster]:
    """A started, ready in-process cluster, stopped on the way out whatever happened."""
    nodes = Cluster(root, size, shards=shards, tick_ms=tick_ms)
    try:
        await nodes.start()
        await nodes.wait_ready()
        yield nodes
    finally:
        await nodes.stop()


async def wait_for(
    condition: Callable[[], bool],
    timeout_s: float,
    describe: Callable[[], str] = lambda: "",
) -> None:
    """Poll `condition` every tick (a real condition, not a fixed sleep) up to `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout_s} s: {describe()}")
        await asyncio.sleep(TICK_MS / 1000.0)


async def retry_unavailable(
    call: Callable[[float], Awaitable[T]], timeout_s: float = 10.0, attempt_s: float = 2.0
) -> T:
    """Call `call(deadline)` until it does not raise UnavailableError (leader elections and
    transfers answer 503-style errors that a client retries), within `timeout_s`."""
    give_up = time.monotonic() + timeout_s
    while True:
        try:
            return await call(min(give_up, time.monotonic() + attempt_s))
        except UnavailableError as error:
            if time.monotonic() > give_up:
                raise AssertionError(f"still unavailable after {timeout_s} s: {error}") from error
            await asyncio.sleep(error.retry_after_s / 20)


def leaders_seen(cluster: Cluster) -> dict[int, set[int]]:
    """Shard -> the leader ids the running nodes report."""
    seen: dict[int, set[int]] = {}
    for node in cluster.nodes.values():
        for shard, group in node.host.shard_groups.items():
            seen.setdefault(shard, set()).add(group.leader_id)
    return seen


async def shard_leader_and_another(cluster: Cluster, shard: int) -> tuple[int, int]:
    """Once every group has one leader: `shard`'s leader and another node of the three."""
    await wait_for(
        lambda: all(len(ids) == 1 and 0 not in ids for ids in leaders_seen(cluster).values()),
        10,
    )
    current = next(iter(leaders_seen(cluster)[shard]))
    return current, 1 + current % 3
