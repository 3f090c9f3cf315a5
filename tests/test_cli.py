"""The `minikv` console script, run as a real subprocess the way a user runs it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from minikv_core import __version__


def run_minikv(*args: str) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("minikv", path=str(__import__("pathlib").Path(sys.executable).parent))
    assert exe is not None, "the minikv console script is not installed in this environment"
    return subprocess.run([exe, *args], capture_output=True, text=True, timeout=60, check=False)


def test_version_prints_package_version() -> None:
    result = run_minikv("--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"minikv {__version__}"


def test_help_lists_every_command() -> None:
    result = run_minikv("--help")
    assert result.returncode == 0, result.stderr
    assert "Usage: minikv" in result.stdout
    for command in ("serve", "cluster", "tui", "repl", "get", "put", "txn", "bench", "wal"):
        assert f" {command} " in result.stdout, command


def test_no_arguments_shows_help() -> None:
    result = run_minikv()
    assert "Usage: minikv" in result.stdout + result.stderr


def test_unknown_command_is_one_clear_error_without_traceback() -> None:
    result = run_minikv("frobnicate")
    assert result.returncode == 2
    assert "No such command" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout


def test_dashboard_bad_flags_are_one_line_and_exit_2() -> None:
    result = run_minikv("tui", "--refresh", "0")
    assert result.returncode == 2, result.stdout + result.stderr
    assert "refresh" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout


def _minikv_exe() -> str:
    exe = shutil.which("minikv", path=str(Path(sys.executable).parent))
    assert exe is not None, "the minikv console script is not installed in this environment"
    return exe


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs Linux's /dev/full")
def test_output_that_cannot_be_written_is_one_line_not_a_bug_report() -> None:
    """`minikv get k > file` on a full disk: the disk's trouble, told as such (exit 1)."""
    with open("/dev/full", "w") as full:
        result = subprocess.run(
            [_minikv_exe(), "--version"],
            stdout=full,
            stderr=subprocess.PIPE,
            text=True,
            timeout=60,
            check=False,
        )
    assert result.returncode == 1
    assert result.stderr.strip() == "error: cannot write the output: No space left on device"


def test_a_join_the_data_directory_refuses_is_told_as_a_join(tmp_path: Path) -> None:
    """A refused --join said "The node refused to open its data directory as it is", which
    points at the wrong thing when the cluster refused it."""
    from minikv_core.cluster.config import NodeIdentity

    data = tmp_path / "n"
    data.mkdir()
    stored = NodeIdentity(1, "c", {1: "127.0.0.1:1"}, 8, 3, bootstrapped=True)
    (data / "identity.json").write_bytes(stored.encode())
    result = run_minikv(
        "serve",
        "--id",
        "2",
        "--data-dir",
        str(data),
        "--http",
        "127.0.0.1:0",
        "--grpc",
        "127.0.0.1:0",
        "--join",
        "127.0.0.1:1",
    )
    assert result.returncode == 1, result.stdout + result.stderr
    told = " ".join(result.stderr.split())  # the console wraps long lines
    assert "belongs to node 1" in told, told
    assert "could not join the cluster at --join" in told, told
    assert "Traceback" not in result.stderr + result.stdout


def _closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_no_answer_exits_69_not_1_which_means_absent() -> None:
    """A script must tell "the key is absent" (1) from "the cluster did not answer" (69)."""
    endpoint = f"127.0.0.1:{_closed_port()}"
    for args in (("get", "k"), ("put", "k", "v"), ("delete", "k")):
        result = run_minikv(*args, "--endpoints", endpoint, "--timeout", "1")
        assert result.returncode == 69, (args, result.returncode, result.stderr)
        assert "did not answer in time" in result.stderr and "Traceback" not in result.stderr
