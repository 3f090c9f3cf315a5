"""A local cluster of real `minikv serve` processes for the integration tests.

Each node is `python -m minikv_core.server` with its own temporary data directory. gRPC
ports are fixed for the cluster's lifetime (peers must know them: they are reserved by binding
port 0 and released just before the nodes start); HTTP ports are chosen by each node (port 0)
and read from its `--ready-file`, so a restarted node never races another test for a port.

Every process a test starts is killed in the fixture's teardown, whatever the test did, and
on failure the last lines of each node's log are attached to the report.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest

START_TIMEOUT_S = 30.0
"""A node process: interpreter start, imports, WAL recovery, both listeners."""
READY_TIMEOUT_S = 20.0
"""Every group of the cluster has a known leader (elections take a few hundred ms each)."""
STOP_TIMEOUT_S = 20.0
POLL_S = 0.05
HTTP_TIMEOUT_S = 10.0
LOG_TAIL_LINES = 40
# describe(): how long a node gets to write its stacks and tasks, and how much is shown.
STACK_DUMP_WAIT_S = 0.3
STACK_DUMP_LINES_MAX = 800


def reserve_ports(count: int) -> list[int]:
    """Distinct free ports, all bound at once (so they differ), released on return."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


async def eventually(
    predicate: Callable[[], Any], what: str, timeout_s: float, describe: Callable[[], str] = str
) -> Any:
    """Poll an async-or-sync condition until truthy, bounded; the failure says what and why."""
    deadline = time.monotonic() + timeout_s
    last: object = None
    while True:
        try:
            result = predicate()
            if asyncio.iscoroutine(result):
                result = await result
            if result:
                return result
            last = result
        except (aiohttp.ClientError, OSError, TimeoutError) as error:
            last = error
        if time.monotonic() >= deadline:
            raise AssertionError(
                f"timed out after {timeout_s}s waiting for {what}; last: {last!r}{describe()}"
            )
        await asyncio.sleep(POLL_S)


@dataclass
class NodeProcess:
    node_id: int
    grpc_port: int
    data_dir: Path
    log_path: Path
    ready_file: Path
    process: subprocess.Popen[bytes] | None = None
    http_address: str = ""
    starts: int = 0

    @property
    def grpc_address(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def url(self) -> str:
        return f"http://{self.http_address}"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def log_tail(self, end: int | None = None) -> str:
        """The last LOG_TAIL_LINES lines of the log (of its first `end` bytes, if given)."""
        try:
            text = self.log_path.read_bytes()[:end].decode(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-LOG_TAIL_LINES:])

    def log_size(self) -> int:
        try:
            return self.log_path.stat().st_size
        except OSError:
            return 0

    def log_since(self, offset: int) -> str:
        try:
            return self.log_path.read_bytes()[offset:].decode(errors="replace")
        except OSError:
            return ""


@dataclass
class Cluster:
    """N node processes sharing one peer list; helpers to start, kill, stop and query them."""

    root: Path
    size: int = 3
    shards: int = 4
    replicas: int = 3
    nodes: dict[int, NodeProcess] = field(default_factory=dict)
    session: aiohttp.ClientSession | None = None

    def __post_init__(self) -> None:
        ports = reserve_ports(self.size)
        for node_id, port in enumerate(ports, start=1):
            self.nodes[node_id] = NodeProcess(
                node_id=node_id,
                grpc_port=port,
                data_dir=self.root / f"node{node_id}",
                log_path=self.root / f"node{node_id}.log",
                ready_file=self.root / f"node{node_id}.ready.json",
            )

    @property
    def peers(self) -> str:
        return ",".join(f"{n.node_id}={n.grpc_address}" for n in self.nodes.values())

    @property
    def grpc_endpoints(self) -> list[str]:
        return [n.grpc_address for n in self.nodes.values()]

    def describe(self) -> str:
        """Each node's log tail and, for a running node, where its threads and tasks are:
        SIGUSR1 has the server write every thread's stack to its log (server.run), SIGUSR2
        every asyncio task's chain of awaits (task_dump.py), so a wait that timed out shows
        what a stuck node was doing or waiting for, not only what it last logged."""
        dump_from: dict[int, int] = {}
        for node in self.nodes.values():
            if node.running and node.process is not None:
                dump_from[node.node_id] = node.log_size()
                with contextlib.suppress(ProcessLookupError):
                    os.kill(node.process.pid, signal.SIGUSR1)
                    os.kill(node.process.pid, signal.SIGUSR2)
        if dump_from:
            time.sleep(STACK_DUMP_WAIT_S)
        parts = []
        for node in self.nodes.values():
            state = "running" if node.running else "down"
            end = dump_from.get(node.node_id)
            parts.append(f"\n--- node {node.node_id} ({state}) log tail:\n{node.log_tail(end)}")
            if end is not None:
                dump = node.log_since(end).splitlines()[:STACK_DUMP_LINES_MAX]
                parts.append(f"\n--- node {node.node_id} threads and tasks:\n" + "\n".join(dump))
        return "".join(parts)

    def command(self, node: NodeProcess, *extra: str) -> list[str]:
        return [
            sys.executable,
            "-m",
            "minikv_core.server",
            "--id",
            str(node.node_id),
            "--data-dir",
            str(node.data_dir),
            "--http",
            "127.0.0.1:0",
            "--grpc",
            node.grpc_address,
            "--peers",
            self.peers,
            "--shards",
            str(self.shards),
            "--replicas",
            str(self.replicas),
            "--ready-file",
            str(node.ready_file),
            *extra,
        ]

    def launch(self, node_id: int, *extra: str) -> NodeProcess:
        return self.spawn(self.nodes[node_id], self.command(self.nodes[node_id], *extra))

    def spawn(
        self, node: NodeProcess, command: list[str], env_extra: dict[str, str] | None = None
    ) -> NodeProcess:
        """Start `command` as `node`'s process: own session (killed as a group), output
        appended to its log, no MINIKV_* variables from the test's environment."""
        assert not node.running, f"node {node.node_id} is already running"
        self.nodes[node.node_id] = node
        node.ready_file.unlink(missing_ok=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith("MINIKV_")}
        env.update(env_extra or {}, PYTHONUNBUFFERED="1")
        with node.log_path.open("ab") as log:
            header = f"=== start {node.starts + 1} {env_extra or ''}: {' '.join(command)}\n"
            log.write(header.encode())
            node.process = subprocess.Popen(
                command,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                start_new_session=True,
            )
        node.starts += 1
        return node

    async def wait_started(self, node_id: int) -> NodeProcess:
        node = self.nodes[node_id]

        def started() -> bool:
            if node.process is not None and node.process.poll() is not None:
                raise AssertionError(
                    f"node {node_id} exited with {node.process.returncode} while starting"
                    f"{self.describe()}"
                )
            if not node.ready_file.exists():
                return False
            document = json.loads(node.ready_file.read_text())
            node.http_address = document["http"]
            return True

        await eventually(started, f"node {node_id} to serve", START_TIMEOUT_S, self.describe)
        return node

    async def start(self, *node_ids: int) -> None:
        ids = node_ids or tuple(self.nodes)
        for node_id in ids:
            self.launch(node_id)
        for node_id in ids:
            await self.wait_started(node_id)

    async def wait_ready(self, *node_ids: int, timeout_s: float = READY_TIMEOUT_S) -> None:
        """Every local group of each node knows a leader (`/health/ready` is 200)."""
        for node_id in node_ids or tuple(n for n, p in self.nodes.items() if p.running):

            async def ready(node_id: int = node_id) -> bool:
                status, _, _ = await self.request(node_id, "GET", "/health/ready")
                return status == 200

            await eventually(ready, f"node {node_id} ready", timeout_s, self.describe)

    def kill(self, node_id: int, signum: int = signal.SIGKILL) -> int:
        node = self.nodes[node_id]
        assert node.process is not None
        with contextlib.suppress(ProcessLookupError):
            node.process.send_signal(signum)
        code = node.process.wait(timeout=STOP_TIMEOUT_S)
        return code

    def terminate(self, node_id: int) -> int:
        """SIGTERM and wait: the graceful stop."""
        return self.kill(node_id, signal.SIGTERM)

    async def request(
        self,
        node_id: int,
        method: str,
        path: str,
        body: bytes | None = None,
        *,
        json_body: Any = None,
        timeout_s: float = HTTP_TIMEOUT_S,
    ) -> tuple[int, dict[str, str], bytes]:
        assert self.session is not None
        node = self.nodes[node_id]
        data = json.dumps(json_body).encode() if json_body is not None else body
        async with self.session.request(
            method,
            node.url + path,
            data=data,
            timeout=aiohttp.ClientTimeout(total=timeout_s),
        ) as response:
            payload = await response.read()
            return response.status, dict(response.headers), payload

    async def status(self, node_id: int) -> dict[str, Any]:
        code, _, body = await self.request(node_id, "GET", "/admin/status")
        assert code == 200, body
        document: dict[str, Any] = json.loads(body)
        return document

    def kill_all(self) -> None:
        for node in self.nodes.values():
            if node.process is not None and node.process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(node.process.pid, signal.SIGKILL)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    node.process.wait(timeout=STOP_TIMEOUT_S)


@pytest.fixture
def cluster_factory(
    tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[Callable[..., Cluster]]:
    made: list[Cluster] = []

    def make(size: int = 3, shards: int = 4, replicas: int = 3) -> Cluster:
        cluster = Cluster(tmp_path / f"cluster{len(made)}", size, shards, replicas)
        cluster.root.mkdir(parents=True)
        made.append(cluster)
        return cluster

    try:
        yield make
    finally:
        for cluster in made:
            cluster.kill_all()
        report = getattr(request.node, "rep_call", None)
        if report is not None and report.failed:
            # Shown under "Captured stdout teardown" of the failed test.
            for cluster in made:
                print(cluster.describe())


@pytest.fixture
async def cluster(cluster_factory: Callable[..., Cluster]) -> AsyncIterator[Cluster]:
    """Three nodes, four shards of three replicas, started and ready."""
    made = cluster_factory()
    async with aiohttp.ClientSession() as session:
        made.session = session
        await made.start()
        await made.wait_ready()
        yield made


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report


async def partition(cluster: Cluster, isolated: int) -> None:
    """Cut `isolated` off from every other node, both directions (rules on both sides)."""
    others = [n for n in cluster.nodes if n != isolated]
    rules = {"drop_to": others, "drop_from": others}
    status, _, body = await cluster.request(isolated, "POST", "/admin/fault", json_body=rules)
    assert status == 200, body
    for node_id in others:
        mirror = {"drop_to": [isolated], "drop_from": [isolated]}
        status, _, body = await cluster.request(node_id, "POST", "/admin/fault", json_body=mirror)
        assert status == 200, body


async def heal(cluster: Cluster) -> None:
    for node_id in cluster.nodes:
        status, _, body = await cluster.request(node_id, "DELETE", "/admin/fault")
        assert status == 200, body
