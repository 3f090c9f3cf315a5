"""In-process nodes for the API tests: real `NodeServer`s (real Node, sockets and files).

Not a fake: each is exactly what `minikv serve` runs, minus the process and its signals, so
the HTTP and gRPC layers are tested against the node they serve in production.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

from minikv_core.cluster.node_service import Node
from minikv_core.server import NodeServer, ServerConfig, resolve
from minikv_tui.node_process import free_ports

WAIT_S = 20.0


def configs(
    root: Path,
    count: int,
    *,
    shards: int = 2,
    replicas: int | None = None,
    value_size_max: int | None = None,
    peers_count: int | None = None,
    http_host: str = "127.0.0.1",
    grpc_host: str = "127.0.0.1",
) -> list[ServerConfig]:
    """Configs of the first `count` nodes of a cluster of `peers_count` (default `count`),
    built the way `minikv serve` builds them (flags through `resolve`)."""
    total = peers_count or count
    ports = free_ports(total)
    peers = ",".join(f"{node_id}=127.0.0.1:{port}" for node_id, port in enumerate(ports, 1))
    return [
        resolve(
            {
                "id": node_id,
                "data_dir": str(root / f"node{node_id}"),
                "http": f"{http_host}:0",
                "grpc": f"{grpc_host}:{ports[node_id - 1]}",
                "peers": peers,
                "shards": shards,
                "replicas": replicas if replicas is not None else min(3, total),
                "value_size_max": value_size_max,
            },
            env={},
        )
        for node_id in range(1, count + 1)
    ]


async def eventually(predicate: Callable[[], bool], what: str, timeout_s: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        await asyncio.sleep(0.02)


@contextlib.asynccontextmanager
async def running(
    server_configs: list[ServerConfig], *, wait_ready: bool = True
) -> AsyncIterator[list[NodeServer]]:
    """Start the nodes, wait until every one is ready (a leader known for each of its groups),
    and stop them all on the way out, whatever happened."""
    servers = [NodeServer(config) for config in server_configs]
    try:
        await asyncio.gather(*(server.start() for server in servers))
        if wait_ready:
            for server in servers:
                await eventually(
                    lambda server=server: bool(server.node.readiness().ready),  # type: ignore[misc]
                    f"node {server.config.node_id} ready",
                )
        yield servers
    finally:
        await asyncio.gather(*(server.stop() for server in servers), return_exceptions=True)


def non_loopback_ip() -> str | None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("10.255.255.255", 1))
        except OSError:
            return None
        address: str = probe.getsockname()[0]
    return None if address.startswith("127.") else address


def node_of(server: NodeServer) -> Node:
    """The started server's Node (NodeServer.node is None before start and after stop)."""
    assert server.node is not None, "the server is not started"
    return server.node
