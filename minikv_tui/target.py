"""Which cluster a command talks to: `--endpoints`, else a named local cluster, else the one
running.

Shared by the data commands, the REPL and the dashboard so that "the current cluster" means the
same everywhere: explicit endpoints win (a cluster we did not start), then `--cluster NAME` or
`MINIKV_CLUSTER`, then the only local cluster with a live node. Guessing between several running
clusters would send writes to the wrong one, so that is an error that lists them.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
from collections.abc import Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, TypeVar

from minikv_tui.errors import EXIT_USAGE, UserError
from minikv_tui.launcher import Launcher, check_name
from minikv_tui.node_process import node_process_state
from minikv_tui.registry import NodeRecord, Registry, RegistryError

CLUSTER_ENV: Final = "MINIKV_CLUSTER"
LOOPBACK: Final = "127.0.0.1"

T = TypeVar("T")


@dataclass(frozen=True)
class Target:
    """A cluster to talk to: its gRPC endpoints (live nodes first, so the client's first try
    usually answers), and for a local cluster its name and node records."""

    name: str | None
    endpoints: list[str]
    nodes: tuple[NodeRecord, ...] = field(default=())

    def describe(self) -> str:
        """For prompts and titles: the cluster's name, else its first endpoint."""
        if self.name is not None:
            return self.name
        extra = f" (+{len(self.endpoints) - 1})" if len(self.endpoints) > 1 else ""
        return f"{self.endpoints[0]}{extra}"


def parse_endpoints(text: str) -> list[str]:
    """`host:port[,host:port…]` to a list, refusing anything a gRPC channel would choke on
    later with a less helpful message."""
    endpoints: list[str] = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        host, sep, port = part.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise UserError(
                f"--endpoints: {part!r} is not host:port",
                hint="Give gRPC addresses host:port, like 127.0.0.1:9001,127.0.0.1:9002.",
                exit_code=EXIT_USAGE,
            )
        if part not in endpoints:
            endpoints.append(part)
    if not endpoints:
        raise UserError(
            "--endpoints is empty",
            hint="Give gRPC addresses host:port, like 127.0.0.1:9001,127.0.0.1:9002.",
            exit_code=EXIT_USAGE,
        )
    return endpoints


def _node_endpoints(nodes: Sequence[NodeRecord]) -> list[str]:
    alive = [n for n in nodes if node_process_state(n) in ("up", "paused")]
    rest = [n for n in nodes if n not in alive]
    return [f"{LOOPBACK}:{n.grpc_port}" for n in alive + rest]


def _running(nodes: Sequence[NodeRecord]) -> bool:
    return any(node_process_state(n) == "up" for n in nodes)


async def resolve_target_async(
    endpoints: str | None,
    cluster: str | None,
    *,
    home: Path | None = None,
    env: Mapping[str, str] | None = None,
) -> Target:
    """The async form of `resolve_target`, for callers already on an event loop."""
    if endpoints is not None:
        # Given but empty (`-e "$UNSET"`) is an error, not "no --endpoints": falling back to
        # the local cluster would send a script's writes to a cluster it never named.
        return Target(name=None, endpoints=parse_endpoints(endpoints))
    environment = os.environ if env is None else env
    name = cluster or environment.get(CLUSTER_ENV) or None
    try:
        async with await Registry.open(home) as registry:
            if name is not None:
                return await _named(registry, name, from_env=cluster is None)
            return await _only_running(registry)
    except RegistryError as error:
        raise UserError(str(error)) from None


async def _named(registry: Registry, name: str, *, from_env: bool) -> Target:
    record = await registry.cluster(name)
    source = f"{CLUSTER_ENV}={name}" if from_env else f"--cluster {name}"
    if record is None:
        known = [c.name for c in await registry.clusters()]
        listing = f" (known: {', '.join(known)})" if known else " (there are none yet)"
        raise UserError(
            f"{source}: no local cluster named {name!r}{listing}",
            hint=f"Create it with `minikv cluster up --name {name}`, "
            "or pass --endpoints HOST:PORT for a cluster started elsewhere.",
            exit_code=EXIT_USAGE,
        )
    nodes = tuple(await registry.nodes(name))
    if not _running(nodes):
        raise UserError(
            f"cluster {name!r} is not running",
            hint=f"Start it with `minikv cluster up --name {name}`.",
        )
    return Target(name=name, endpoints=_node_endpoints(nodes), nodes=nodes)


async def _only_running(registry: Registry) -> Target:
    running: list[tuple[str, tuple[NodeRecord, ...]]] = []
    for record in await registry.clusters():
        nodes = tuple(await registry.nodes(record.name))
        if _running(nodes):
            running.append((record.name, nodes))
    if not running:
        raise UserError(
            "no local cluster is running",
            hint="Start one with `minikv cluster up`, or pass --endpoints HOST:PORT "
            "for a cluster started elsewhere.",
        )
    if len(running) > 1:
        names = ", ".join(name for name, _ in running)
        raise UserError(
            f"several local clusters are running ({names}): which one?",
            hint=f"Pass --cluster NAME (or set {CLUSTER_ENV}).",
            exit_code=EXIT_USAGE,
        )
    name, nodes = running[0]
    return Target(name=name, endpoints=_node_endpoints(nodes), nodes=nodes)


async def pick_local_cluster(
    name: str | None, *, home: Path | None = None, env: Mapping[str, str] | None = None
) -> str:
    """The local cluster a `minikv cluster …` command is about, running or not: `name`, else
    $MINIKV_CLUSTER, else the only cluster there is, else the only one running."""
    environment = os.environ if env is None else env
    chosen = name or environment.get(CLUSTER_ENV) or None
    if chosen is not None:
        return check_name(chosen)
    views = await Launcher.list_clusters(home)
    if not views:
        raise UserError(
            "there are no local clusters yet",
            hint="Create one with `minikv cluster up`.",
        )
    if len(views) == 1:
        return views[0].name
    running = [view for view in views if view.running]
    if len(running) == 1:
        return running[0].name
    listing = ", ".join(f"{view.name} ({view.state})" for view in views)
    raise UserError(
        f"several local clusters exist ({listing}): which one?",
        hint=f"Name it (an argument or --cluster NAME), or set {CLUSTER_ENV}.",
        exit_code=EXIT_USAGE,
    )


def resolve_target(endpoints: str | None, cluster: str | None) -> Target:
    """The cluster a command talks to: `endpoints` ("host:port,…") win, then `cluster` or
    $MINIKV_CLUSTER, then the only running local cluster. Raises UserError saying what to do
    when there is none, or several.

    Callable from plain code and from a running event loop alike (the registry is read on a
    private loop in a worker thread then; it is one small SQLite read)."""
    return _run_sync(resolve_target_async(endpoints, cluster))


def _run_sync(coroutine: Coroutine[Any, Any, T]) -> T:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coroutine)
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coroutine).result()
