"""The suite's own promise: a run stopped with SIGTERM stops the node processes it started.

Nodes lead their own sessions (so a test can signal one's whole group), hence nothing but the
fixtures' finalizers stops them; tests/conftest.py turns SIGTERM into a KeyboardInterrupt so
that those run. Checked on a child pytest that holds a real cluster when it is signalled."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

REPO_ROOT = Path(__file__).resolve().parents[2]

INNER_TEST = """
import asyncio
import os
from pathlib import Path

from tests.integration.conftest import Cluster


async def test_holds_a_cluster(cluster: Cluster) -> None:
    pids = [str(node.process.pid) for node in cluster.nodes.values() if node.process]
    path = Path(os.environ["PIDS_FILE"])
    path.with_suffix(".tmp").write_text(" ".join(pids))
    path.with_suffix(".tmp").rename(path)
    await asyncio.sleep(60)
"""


def alive(pid: int) -> bool:
    """Running (a zombie, reaped by nobody yet, has stopped)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def test_sigterm_to_a_run_stops_its_nodes(tmp_path: Path) -> None:
    test_file = tmp_path / "test_inner.py"
    test_file.write_text(INNER_TEST)
    pids_file = tmp_path / "pids"
    command = [
        sys.executable,
        "-m",
        "pytest",
        "-q",
        "-p",
        "no:cacheprovider",
        "-p",
        "tests.conftest",
        "-p",
        "tests.integration.conftest",
        "-o",
        "addopts=",
        "-o",
        "asyncio_mode=auto",
        "--rootdir",
        str(tmp_path),
        "--basetemp",
        str(tmp_path / "inner"),
        str(test_file),
    ]
    child = subprocess.Popen(
        command,
        cwd=REPO_ROOT,
        env={**os.environ, "PIDS_FILE": str(pids_file)},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    pids: list[int] = []
    try:
        deadline = time.monotonic() + 60
        while not pids_file.exists():
            assert child.poll() is None, child.communicate()[0].decode(errors="replace")
            assert time.monotonic() < deadline, "the inner run never had its cluster up"
            time.sleep(0.1)
        pids = [int(pid) for pid in pids_file.read_text().split()]
        assert len(pids) == 3 and all(alive(pid) for pid in pids)
        child.send_signal(signal.SIGTERM)
        output = child.communicate(timeout=30)[0].decode(errors="replace")
        deadline = time.monotonic() + 10
        while any(alive(pid) for pid in pids) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not [pid for pid in pids if alive(pid)], f"nodes left running:\n{output}"
        assert "KeyboardInterrupt" in output, output
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        for pid in pids:
            if alive(pid):
                os.killpg(pid, signal.SIGKILL)
