"""`minikv cluster …`: create, watch and break local clusters (the launcher does the work)."""

from __future__ import annotations

import typer

app = typer.Typer(
    help="Local clusters: up, status, ls, down, destroy, and faults (kill, pause, partition …).",
    no_args_is_help=True,
)
