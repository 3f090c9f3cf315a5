"""`minikv repl`: the interactive shell (minikv_tui.repl does the work).

Which cluster: `minikv_tui.target` decides (--endpoints, else --cluster or $MINIKV_CLUSTER,
else the only running local cluster), as for every command. It and the REPL are imported
inside the command, so `minikv --help` and the other commands do not pay for loading
prompt-toolkit and Pygments.
"""

from __future__ import annotations

import sys
from typing import Annotated

import typer

EndpointsOption = Annotated[
    str | None,
    typer.Option(
        "--endpoints",
        "-e",
        help="The nodes' gRPC addresses, host:port[,host:port...] (default: the current "
        "local cluster).",
        show_default=False,
    ),
]
ClusterOption = Annotated[
    str | None,
    typer.Option(
        "--cluster",
        help="A local cluster by name (default: $MINIKV_CLUSTER, else the only one running).",
        show_default=False,
    ),
]
CommandOption = Annotated[
    str | None,
    typer.Option(
        "-c",
        "--command",
        help='Run these commands and exit, e.g. -c "PUT a 1; GET a" (non-zero exit if any fails).',
        show_default=False,
    ),
]
RawOption = Annotated[
    bool, typer.Option("--raw", help="Print values as raw bytes instead of escaped text.")
]
TimeoutOption = Annotated[
    float,
    typer.Option("--timeout", help="Seconds each request may take, retries included."),
]


def register(app: typer.Typer) -> None:
    """Add `repl` to the root app."""

    @app.command(rich_help_panel="Interactive")
    def repl(
        endpoints: EndpointsOption = None,
        cluster: ClusterOption = None,
        command: CommandOption = None,
        raw: RawOption = False,
        timeout: TimeoutOption = 5.0,
    ) -> None:
        """A shell for get/put sessions: completion, history, live cluster toolbar.

        Piped stdin runs one command per line, non-interactively.
        """
        from minikv_tui.repl import run_repl
        from minikv_tui.target import resolve_target

        target = resolve_target(endpoints, cluster)
        code = run_repl(
            target.endpoints,
            target.name,
            command=command,
            raw=raw,
            timeout_s=timeout,
            stdin=sys.stdin,
        )
        if code:
            raise typer.Exit(code)
