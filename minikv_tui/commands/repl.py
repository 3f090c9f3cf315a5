"""`minikv repl`: the interactive shell (minikv_tui.repl does the work)."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add `repl` to the root app."""
