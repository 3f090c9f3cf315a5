"""`minikv txn FILE|-`: one atomic multi-key transaction from a JSON document."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add `txn` to the root app."""
