"""`minikv tui`: the live cluster dashboard (minikv_tui.dashboard does the work)."""

from __future__ import annotations

import typer

from minikv_tui.errors import UserError


def register(app: typer.Typer) -> None:
    """Add `tui` to the root app."""

    @app.command(hidden=True, rich_help_panel="Interactive")
    def tui() -> None:
        """The live cluster dashboard (not built yet)."""
        # Hidden from --help until it exists, so the help never advertises what is not there;
        # `make tui` lands here and must say so plainly rather than fail with "No such command".
        raise UserError(
            "the dashboard (`minikv tui`) is not built yet.",
            hint="See README.md, 'What works today', for what you can run now.",
        )
