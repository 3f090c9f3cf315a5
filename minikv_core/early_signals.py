"""SIGTERM and SIGINT noted while a node process is still starting, replayed once it serves.

Why: `python -m minikv_core.server` spends 0.6-0.9 s importing (grpc the slowest) before its
event loop installs the handlers that stop it cleanly. A SIGTERM in that window took the
default action and killed the node with status 143, so `cluster stop` right after `cluster
start` looked like a crash. Noted here instead, the signal stops the node the way a later one
does (exit 0) as soon as the loop can act on it. Only the node's entry points install this
(`python -m minikv_core.server`, and `minikv serve` in minikv_tui/cli.py): importing the server
module from a test or another command must not change their signal handling.
"""

from __future__ import annotations

import signal
from types import FrameType

_noted: list[int] = []


def _note(signum: int, frame: FrameType | None) -> None:
    _noted.append(signum)


def note_until_serving() -> None:
    """Note SIGTERM and SIGINT from now on, until the event loop takes them over."""
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, _note)


def take_noted() -> list[int]:
    """The signals noted so far, in order, forgotten once taken."""
    taken = list(_noted)
    _noted.clear()
    return taken
