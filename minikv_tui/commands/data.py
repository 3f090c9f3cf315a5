"""`minikv get | put | delete | scan`: one request against a cluster, output that pipes."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add the data commands to the root app (they are top-level: `minikv get KEY`)."""
