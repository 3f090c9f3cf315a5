"""The one way the CLI tells a person that something went wrong.

Every failure a user can cause or meet ends as one red line saying what was wrong and what to
do next, and a non-zero exit status, never a traceback (DESIGN: "No traceback ever reaches a
user of the CLI, REPL or TUI").
"""

from __future__ import annotations

from rich.console import Console

# Exit statuses, after sysexits.h where one fits.
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_INTERNAL = 70  # EX_SOFTWARE: a bug in minikv, not in the user's input


class UserError(Exception):
    """A failure the user can act on; `hint` says how."""

    def __init__(self, message: str, hint: str = "", exit_code: int = EXIT_FAILURE) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.exit_code = exit_code


def report(console: Console, message: str, hint: str = "") -> None:
    console.print(f"[bold red]error:[/] {message}", highlight=False, markup=True)
    if hint:
        console.print(f"[dim]{hint}[/]", highlight=False)
