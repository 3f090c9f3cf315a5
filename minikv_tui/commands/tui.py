"""`minikv tui`: the live cluster dashboard (minikv_tui.dashboard does the work)."""

from __future__ import annotations

import os

import typer

from minikv_tui.errors import EXIT_USAGE, UserError

REFRESH_HZ_MIN = 0.5
REFRESH_HZ_MAX = 20.0


def register(app: typer.Typer) -> None:
    """Add `tui` to the root app."""

    @app.command(rich_help_panel="Interactive")
    def tui(  # noqa: PLR0917 (Typer options are parameters)
        cluster: str | None = typer.Option(
            None,
            "--cluster",
            "-c",
            help=(
                "Local cluster name (default: $MINIKV_CLUSTER, else the one running, else 'local')."
            ),
        ),
        nodes: int | None = typer.Option(
            None, "--nodes", help="Nodes when creating the cluster (default 3)."
        ),
        shards: int | None = typer.Option(
            None, "--shards", help="Shards when creating the cluster (default 8)."
        ),
        endpoints: str | None = typer.Option(
            None,
            "--endpoints",
            "-e",
            help="Attach to nodes started elsewhere (gRPC host:port,…): no process actions.",
        ),
        refresh: float = typer.Option(4.0, "--refresh", help="Refreshes per second (Hz)."),
        no_confirm: bool = typer.Option(
            False, "--no-confirm", help="Demo mode: destructive actions do not ask first."
        ),
        keep_running: bool | None = typer.Option(
            None,
            "--keep-running/--stop-on-exit",
            help="Decide up front what happens to a local cluster on quit (default: ask).",
        ),
        theme: str = typer.Option("dark", "--theme", help="dark, light or high-contrast."),
    ) -> None:
        """The live cluster dashboard: watch elections, kill and partition nodes."""
        from minikv_tui.dashboard.app import DashboardApp, DashboardOptions, OnExit
        from minikv_tui.dashboard.session import EndpointsSession, LocalSession, Session
        from minikv_tui.dashboard.themes import THEMES
        from minikv_tui.target import CLUSTER_ENV

        if not REFRESH_HZ_MIN <= refresh <= REFRESH_HZ_MAX:
            raise UserError(
                f"--refresh must be between {REFRESH_HZ_MIN:g} and {REFRESH_HZ_MAX:g} Hz, "
                f"got {refresh:g}",
                hint="4 is the default; 1 is gentle on a slow machine.",
                exit_code=EXIT_USAGE,
            )
        if theme not in THEMES:
            raise UserError(
                f"--theme {theme!r} is not a theme",
                hint=f"Use one of: {', '.join(THEMES)}.",
                exit_code=EXIT_USAGE,
            )
        session: Session
        if endpoints is not None:
            if cluster is not None or nodes is not None or shards is not None:
                raise UserError(
                    "--endpoints attaches to running nodes: it cannot be combined with "
                    "--cluster, --nodes or --shards",
                    hint="Drop --endpoints to use a local cluster, or the others to attach.",
                    exit_code=EXIT_USAGE,
                )
            session = EndpointsSession(endpoints, refresh_hz=refresh)
        else:
            name = cluster or os.environ.get(CLUSTER_ENV) or None
            session = LocalSession(name, nodes=nodes, shards=shards, refresh_hz=refresh)
        on_exit: OnExit = "ask" if keep_running is None else ("keep" if keep_running else "stop")
        options = DashboardOptions(
            refresh_hz=refresh, confirm=not no_confirm, on_exit=on_exit, theme=theme
        )
        dashboard = DashboardApp(session, options)
        message = dashboard.run()
        if dashboard.failure is not None:
            raise UserError(*dashboard.failure)
        if message:
            typer.echo(message)
