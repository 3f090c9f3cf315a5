"""Fixtures for the terminal tools: a private minikv home, and real local clusters in it.

Everything a test starts through the launcher lives under its own `MINIKV_HOME` (a temporary
directory), so teardown can find every process by its command line, whatever state the test
left the registry in, and kill it. On failure the nodes' log tails are in the captured output.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from minikv_tui.launcher import Launcher
from minikv_tui.node_process import log_tail

CLUSTER_NAME = "t"
TEARDOWN_GRACE_S = 5.0
KILL_DEADLINE_S = 10.0


def processes_under(home: Path) -> list[int]:
    """Pids of live processes whose command line mentions `home` (every node started there
    has its data directory under it)."""
    needle = str(home).encode()
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        state = stat[stat.rfind(")") + 2 :].split()[0]
        if needle in cmdline and b"minikv_core.server" in cmdline and state not in ("Z", "X"):
            pids.append(int(entry.name))
    return pids


def kill_everything_under(home: Path) -> list[int]:
    """SIGCONT + SIGKILL every node process started under `home`; wait until they are gone."""
    found = processes_under(home)
    for pid in found:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + KILL_DEADLINE_S
    while processes_under(home) and time.monotonic() < deadline:
        time.sleep(0.05)
    return found


def print_logs(home: Path) -> None:
    for log in sorted(home.rglob("node*.log")):
        print(f"--- {log} (tail):")
        print("\n".join(log_tail(log, 40)))


@pytest.fixture
def minikv_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """MINIKV_HOME set to a fresh directory (MINIKV_CLUSTER unset). Teardown stops whatever
    was started in it: registered clusters by `down`, anything left by SIGKILL."""
    home = tmp_path / "home"
    monkeypatch.setenv("MINIKV_HOME", str(home))
    monkeypatch.delenv("MINIKV_CLUSTER", raising=False)
    try:
        yield home
    finally:
        try:
            if (home / "registry.sqlite3").exists():
                views = asyncio.run(Launcher.list_clusters(home))
                for view in views:
                    with contextlib.suppress(Exception):
                        asyncio.run(Launcher(view.name, home=home).down(grace_s=TEARDOWN_GRACE_S))
        finally:
            print_logs(home)
            kill_everything_under(home)


@pytest.fixture
def local_cluster(minikv_home: Path) -> Launcher:
    """A running, ready cluster "t": 3 nodes, 2 shards of 3 replicas (stopped by
    `minikv_home`'s teardown). A plain fixture, so sync tests (CliRunner) can use it too."""
    launcher = Launcher(CLUSTER_NAME, home=minikv_home)
    asyncio.run(launcher.up(nodes=3, shards=2, replicas=3))
    return launcher
