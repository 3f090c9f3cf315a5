"""The `minikv` console script, run as a real subprocess the way a user runs it."""

from __future__ import annotations

import shutil
import subprocess
import sys

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
