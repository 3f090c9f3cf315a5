"""`@frozen` (minikv_core/frozen.py): value semantics at runtime, immutability from mypy."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest

from minikv_core.frozen import frozen
from minikv_core.raft.types import Entry, EntryType, Message, MessageType

ROOT = Path(__file__).resolve().parent.parent


@frozen
class _Point:
    x: int
    y: int = 0
    tags: tuple[str, ...] = dataclasses.field(default=())


def test_a_frozen_class_compares_hashes_and_replaces_by_value() -> None:
    a, b = _Point(1, 2), _Point(1, 2)
    assert a == b and hash(a) == hash(b) and len({a, b}) == 1
    assert dataclasses.replace(a, y=3) == _Point(1, 3)
    assert _Point(4).tags == ()
    assert not hasattr(a, "__dict__"), "slotted: no per-instance dict"
    assert Entry(1, 2, EntryType.NORMAL, b"d") == Entry(1, 2, EntryType.NORMAL, b"d")
    assert hash(Message(MessageType.APPEND, 1, 2, 3)) == hash(Message(MessageType.APPEND, 1, 2, 3))


@pytest.mark.timeout(180)
def test_mypy_refuses_an_assignment_to_a_field(tmp_path: Path) -> None:
    """The guarantee that replaced the runtime's FrozenInstanceError."""
    snippet = (
        "from minikv_core.raft.types import Entry, EntryType\n"
        "entry = Entry(1, 2, EntryType.NORMAL, b'')\n"
        "entry.data = b'changed'\n"
    )
    config = tmp_path / "mypy.ini"
    config.write_text("[mypy]\n")  # not the project's: it names the files to check
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            f"--config-file={config}",
            "--cache-dir=" + str(tmp_path / "cache"),
            "--follow-imports=silent",
            "--ignore-missing-imports",
            "-c",
            snippet,
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=170,
        check=False,
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert 'Property "data" defined in "Entry" is read-only' in result.stdout, result.stdout
