"""Which cluster a command talks to: `--endpoints`, `--cluster` / MINIKV_CLUSTER, or the only
running one, and the errors that say what to do when that is ambiguous or empty.

"Running" is decided from /proc (pid, start time, command line, data directory), so the
clusters here are registry entries whose node 1 is a stand-in process with a node's command
line shape that only sleeps: resolution is what is under test, and it costs no cluster start.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from minikv_tui.errors import UserError
from minikv_tui.node_process import process_start_ticks
from minikv_tui.registry import ClusterRecord, ClusterSettings, NodeRecord, Registry
from minikv_tui.target import Target, pick_local_cluster, resolve_target, resolve_target_async

STANDIN_S = 120


@pytest.fixture
def standins() -> Iterator[Callable[[Path], tuple[int, int]]]:
    """Start sleepers whose argv looks like a node on `data_dir`; all killed at teardown."""
    started: list[subprocess.Popen[bytes]] = []

    def start(data_dir: Path) -> tuple[int, int]:
        code = f"import time; time.sleep({STANDIN_S})"
        argv = [sys.executable, "-c", code, "minikv_core.server", "--data-dir", str(data_dir)]
        process = subprocess.Popen(argv)
        started.append(process)
        deadline = time.monotonic() + 10
        while str(data_dir).encode() not in Path(f"/proc/{process.pid}/cmdline").read_bytes():
            assert time.monotonic() < deadline, "the stand-in never showed its command line"
            time.sleep(0.01)
        ticks = process_start_ticks(process.pid)
        assert ticks is not None
        return process.pid, ticks

    try:
        yield start
    finally:
        for process in started:
            process.kill()
            process.wait()


def register(
    home: Path, name: str, running: Callable[[Path], tuple[int, int]] | None = None
) -> list[str]:
    """A 3-node cluster in the registry (node 1 alive when `running` is given); returns its
    gRPC endpoints in node order."""
    directory = home / name

    async def add() -> None:
        nodes = []
        for node_id in (1, 2, 3):
            data_dir = directory / f"node{node_id}"
            pid, ticks = running(data_dir) if running and node_id == 1 else (None, None)
            nodes.append(
                NodeRecord(
                    cluster=name,
                    node_id=node_id,
                    grpc_port=20000 + node_id,
                    http_port=21000 + node_id,
                    data_dir=data_dir,
                    log_path=directory / f"node{node_id}.log",
                    state="running" if pid else "stopped",
                    pid=pid,
                    pid_start=ticks,
                )
            )
        record = ClusterRecord(name, directory, ClusterSettings(3, 2, 3), time.time())
        async with await Registry.open(home) as registry:
            await registry.add_cluster(record, nodes)

    # On a thread of its own: some callers are async tests with a loop already running.
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        pool.submit(asyncio.run, add()).result()
    return [f"127.0.0.1:{20000 + n}" for n in (1, 2, 3)]


def user_error(call: Callable[[], object]) -> UserError:
    with pytest.raises(UserError) as caught:
        call()
    return caught.value


def test_endpoints_win_over_cluster_and_environment(
    minikv_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MINIKV_CLUSTER", "elsewhere")
    target = resolve_target(" 127.0.0.1:9001, 10.0.0.2:9002,127.0.0.1:9001", "other")
    assert target == Target(name=None, endpoints=["127.0.0.1:9001", "10.0.0.2:9002"])
    assert target.describe() == "127.0.0.1:9001 (+1)"


@pytest.mark.parametrize("text", ["localhost", "127.0.0.1:0", "127.0.0.1:99999", ":9001", ","])
def test_malformed_endpoints_are_a_usage_error_naming_them(minikv_home: Path, text: str) -> None:
    error = user_error(lambda: resolve_target(text, None))
    assert error.exit_code == 2
    assert "--endpoints" in error.message
    assert "host:port" in error.message + error.hint


@pytest.mark.parametrize("text", ["", "  "])
def test_empty_endpoints_are_refused_not_replaced_by_the_running_cluster(
    minikv_home: Path, standins: Callable[[Path], tuple[int, int]], text: str
) -> None:
    """`-e "$ENDPOINTS"` with the variable unset must not quietly talk to the local cluster:
    a script's writes would land in a cluster it never named."""
    register(minikv_home, "busy", standins)
    error = user_error(lambda: resolve_target(text, None))
    assert error.message == "--endpoints is empty"
    assert error.exit_code == 2


def test_nothing_running_says_to_start_a_cluster(minikv_home: Path) -> None:
    error = user_error(lambda: resolve_target(None, None))
    assert error.message == "no local cluster is running"
    assert "minikv cluster up" in error.hint and "--endpoints" in error.hint
    register(minikv_home, "idle")
    assert user_error(lambda: resolve_target(None, None)).message == error.message


def test_a_named_cluster_must_exist_and_run(minikv_home: Path) -> None:
    register(minikv_home, "idle")
    unknown = user_error(lambda: resolve_target(None, "nope"))
    assert unknown.message == "--cluster nope: no local cluster named 'nope' (known: idle)"
    assert unknown.exit_code == 2
    stopped = user_error(lambda: resolve_target(None, "idle"))
    assert stopped.message == "cluster 'idle' is not running"
    assert "minikv cluster up --name idle" in stopped.hint


def test_the_only_running_cluster_is_chosen_with_live_nodes_first(
    minikv_home: Path, standins: Callable[[Path], tuple[int, int]]
) -> None:
    register(minikv_home, "idle")
    endpoints = register(minikv_home, "busy", standins)
    target = resolve_target(None, None)
    assert target.name == "busy"
    assert target.endpoints == endpoints  # node 1 is the live one and already first
    assert [node.node_id for node in target.nodes] == [1, 2, 3]
    assert target.describe() == "busy"


def test_several_running_clusters_need_a_choice(
    minikv_home: Path, standins: Callable[[Path], tuple[int, int]], monkeypatch: pytest.MonkeyPatch
) -> None:
    register(minikv_home, "a", standins)
    register(minikv_home, "b", standins)
    error = user_error(lambda: resolve_target(None, None))
    assert error.message == "several local clusters are running (a, b): which one?"
    assert "--cluster" in error.hint and "MINIKV_CLUSTER" in error.hint
    assert error.exit_code == 2
    assert resolve_target(None, "b").name == "b"
    monkeypatch.setenv("MINIKV_CLUSTER", "a")
    assert resolve_target(None, None).name == "a"
    monkeypatch.setenv("MINIKV_CLUSTER", "zzz")
    assert user_error(lambda: resolve_target(None, None)).message.startswith("MINIKV_CLUSTER=zzz")


async def test_resolving_from_a_running_event_loop_works_both_ways(
    minikv_home: Path, standins: Callable[[Path], tuple[int, int]]
) -> None:
    register(minikv_home, "busy", standins)
    assert resolve_target(None, None).name == "busy"  # sync call inside a loop (dashboard)
    assert (await resolve_target_async(None, None)).name == "busy"


async def test_cluster_commands_pick_the_only_cluster_even_when_stopped(
    minikv_home: Path, standins: Callable[[Path], tuple[int, int]]
) -> None:
    with pytest.raises(UserError) as none:
        await pick_local_cluster(None, home=minikv_home)
    assert "minikv cluster up" in none.value.hint
    register(minikv_home, "idle")
    assert await pick_local_cluster(None, home=minikv_home) == "idle"
    register(minikv_home, "idle2")
    with pytest.raises(UserError) as two:
        await pick_local_cluster(None, home=minikv_home)
    assert "idle (stopped), idle2 (stopped)" in two.value.message
    register(minikv_home, "busy", standins)
    assert await pick_local_cluster(None, home=minikv_home) == "busy"
    assert await pick_local_cluster("idle", home=minikv_home) == "idle"
    assert await pick_local_cluster(None, home=minikv_home, env={"MINIKV_CLUSTER": "x"}) == "x"
