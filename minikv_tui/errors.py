"""The one way the CLI tells a person that something went wrong.

Every failure a user can cause or meet ends as one red line saying what was wrong and what to
do next, and a non-zero exit status, never a traceback (DESIGN: "No traceback ever reaches a
user of the CLI, REPL or TUI").
"""

from __future__ import annotations

import errno
import re
from typing import Final

from rich.console import Console

# Exit statuses, after sysexits.h where one fits.
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_UNAVAILABLE = 69  # EX_UNAVAILABLE: the cluster did not answer (no leader, timed out)
EXIT_INTERNAL = 70  # EX_SOFTWARE: a bug in minikv, not in the user's input
EXIT_OUTCOME_UNKNOWN = 75  # EX_TEMPFAIL: a write may or may not have applied; read, then retry

WRITE_ERRNOS: Final = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EIO})
"""Errors of writing the output (`minikv get k > /dev/full`): the machine's trouble, not a bug
in minikv, so they are told as such rather than as an internal error."""

_GRPC_SIZE_REFUSAL: Final = re.compile(
    r"(?:SERVER|CLIENT): (?:Received|Sent) message larger than max \((\d+) vs\. (\d+)\)"
)


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


def too_large_message(text: str) -> str:
    """A TooLargeError's text, in the node's terms. A request over a gRPC message bound is
    refused by gRPC itself, before any node code reads it, in gRPC's words ("SERVER: Received
    message larger than max (5000035 vs. 4194304)"): that names neither the value nor the
    limit a user can act on. Other texts (the node's own, which name the limit) pass as they
    are."""
    match = _GRPC_SIZE_REFUSAL.search(text)
    if match is None:
        return text
    size, bound = match.groups()
    return (
        f"the request is {size} bytes, over the {bound}-byte bound of one gRPC message; "
        "values are at most the nodes' value limit (1 MiB unless configured otherwise)"
    )


def is_output_error(error: BaseException) -> bool:
    """The reader went away (`| head`) or the output cannot be written (a full disk)."""
    return isinstance(error, BrokenPipeError) or (
        isinstance(error, OSError) and error.errno in WRITE_ERRNOS
    )
