"""The REPL's error lines stay one readable line whatever the command carried. Nothing here
reaches a node: the client points at a closed port, so each command fails (no leader)
after the client's short deadline."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path
from typing import cast

import pytest
from rich.console import Console

from minikv_core.client import Client, ScanItem, ScanResult
from minikv_tui.repl_commands import VALUE_FILE_BYTES_MAX, WHAT_CHARS_MAX, Executor, Outcome
from minikv_tui.repl_keys import KeyIndex
from minikv_tui.repl_parser import parse
from minikv_tui.repl_render import Renderer
from minikv_tui.repl_state import SessionState
from tests.integration.conftest import reserve_ports


@pytest.fixture(scope="module")
def client() -> Iterator[Client]:
    (closed_port,) = reserve_ports(1)
    with Client([f"127.0.0.1:{closed_port}"], timeout_s=0.5) as made:
        yield made


def run(client: Client, text: str) -> tuple[list[Outcome], str]:
    """Run `text` in a scripted session; the outcomes and what went to stderr."""
    err = io.StringIO()
    renderer = Renderer(
        Console(file=io.StringIO(), width=300),
        Console(file=err, width=100_000),
        interactive=False,
        raw=False,
    )
    state = SessionState(label="t", endpoints=("t",))
    executor = Executor(client, state, renderer, KeyIndex(None))
    return [executor.run(statement) for statement in parse(text)], err.getvalue()


@pytest.mark.parametrize("command", ["GET", "PUT"])
def test_an_over_long_key_is_cut_short_in_the_error(client: Client, command: str) -> None:
    """A 5000-byte key was echoed whole before the reason ("PUT kkkk…kkk: too large (the key
    is 5000 bytes; …)" from a node): 5 KB of k's on screen for one line of news."""
    key = "k" * 5000
    value = " v" if command == "PUT" else ""
    outcomes, err = run(client, f"{command} {key}{value}")
    assert outcomes == [Outcome.FAILED]
    assert err.startswith(f"error: {command} {'k' * (WHAT_CHARS_MAX - len(command) - 2)}… (")
    assert "… (5004 characters): " in err  # the command and its key, not the value
    assert len(err) < 1000, err  # 5000 before the fix


class _ClosedPipe(io.StringIO):
    """stdout whose reader went away (`minikv repl < commands | head -1`)."""

    def write(self, text: str) -> int:
        raise BrokenPipeError(32, "Broken pipe")


class _OneKey:
    """A client whose scans answer one key: SCAN output is written straight to the file
    (tabs intact), not through Rich, which would handle the broken pipe on its own."""

    def scan_paged(self, **_: object) -> ScanResult:
        return ScanResult(items=(ScanItem(b"a", b"1", 1),), more=False)


def test_an_output_that_went_away_ends_the_session() -> None:
    """Each later command printed "internal error: BrokenPipeError ... This is a bug in
    minikv" and the session went on; the error now ends it (Click then exits 1 quietly)."""
    renderer = Renderer(
        Console(file=_ClosedPipe(), width=100),
        Console(file=io.StringIO(), width=100),
        interactive=False,
        raw=False,
    )
    state = SessionState(label="t", endpoints=("t",))
    executor = Executor(cast(Client, _OneKey()), state, renderer, KeyIndex(None))
    (statement,) = parse("SCAN")
    with pytest.raises(BrokenPipeError):
        executor.run(statement)


def test_a_file_too_big_to_send_names_the_value_limit(client: Client, tmp_path: Path) -> None:
    """It said "a value can be at most 16777216 bytes", while nodes refuse values over 1 MiB
    (by default): a 2 MiB file would pass that check and be refused anyway."""
    big = tmp_path / "big"
    with big.open("wb") as sparse:
        sparse.truncate(VALUE_FILE_BYTES_MAX + 1)
    outcomes, err = run(client, f"PUT k @{big}")
    assert outcomes == [Outcome.FAILED]
    assert "a value can be at most" not in err
    assert f"is {VALUE_FILE_BYTES_MAX + 1} bytes, more than one request can carry" in err
    assert "value limit (1 MiB unless configured otherwise)" in err
