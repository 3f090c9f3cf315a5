"""How a failed REPL command is told: one line saying what went wrong and one hint saying
what to do next, whatever failed (the input, the file system, the cluster or minikv itself).

A `ReplError` never ends the session: the REPL prints it and carries on, and scripted runs
count it towards a non-zero exit status.
"""

from __future__ import annotations

from minikv_core.client import (
    ClientError,
    DeadlineExceededError,
    InvalidRequestError,
    NotFoundError,
    OutcomeUnknownError,
    PermissionDeniedError,
    TooLargeError,
    UnavailableError,
)
from minikv_tui.errors import too_large_message


class ReplError(Exception):
    """A command that could not be done; `hint` tells the user how to get on."""

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint


class ParseError(ReplError):
    """The input is not a valid command; `column` (1-based) points at the culprit when known."""

    def __init__(self, message: str, hint: str = "", column: int | None = None) -> None:
        super().__init__(message, hint)
        self.column = column


STATUS_HINT = "STATUS shows which nodes are up and which shards have a leader."


DOWN_HINT = (
    "Check that the cluster is running (`minikv cluster status`); the REPL reconnects by "
    "itself as soon as a node answers."
)


def from_client_error(error: ClientError, what: str, *, cluster_down: bool = False) -> ReplError:
    """Translate a client error met while doing `what` ("GET user/1"). `cluster_down`: no
    node answered lately, so a failure to reach one is about the cluster, not one shard."""
    if isinstance(error, OutcomeUnknownError):
        return ReplError(
            f"{what}: the node went away mid-write; it may or may not have been applied",
            "GET the key to see which (the write was not sent again: a repeat could land "
            f"after later writes). {STATUS_HINT}",
        )
    if cluster_down and isinstance(error, UnavailableError | DeadlineExceededError):
        return ReplError(f"{what}: the cluster does not answer", DOWN_HINT)
    if isinstance(error, NotFoundError):
        return ReplError(
            f"{what}: not found",
            "SCAN <prefix> lists existing keys; EXISTS tests a key without failing.",
        )
    if isinstance(error, UnavailableError):
        return ReplError(
            f"{what}: no leader reachable ({error})",
            "The shard may be electing a leader or too many nodes are down; retry in a "
            f"moment. {STATUS_HINT}",
        )
    if isinstance(error, DeadlineExceededError):
        return ReplError(
            f"{what}: timed out ({error}); a write may or may not have been applied",
            f"Retry (a PUT is safe to repeat), or raise --timeout. {STATUS_HINT}",
        )
    if isinstance(error, TooLargeError):
        return ReplError(
            f"{what}: too large ({too_large_message(str(error))})",
            "Keys are at most 4 KiB; split big values.",
        )
    if isinstance(error, InvalidRequestError):
        return ReplError(f"{what}: refused ({error})", "HELP <command> shows what it accepts.")
    if isinstance(error, PermissionDeniedError):
        return ReplError(
            f"{what}: refused ({error})",
            "Admin calls are answered to clients on the node's own machine; run the REPL there.",
        )
    return ReplError(f"{what}: {error}", STATUS_HINT)


def from_txn_error(error: ClientError, what: str, *, cluster_down: bool = False) -> ReplError:
    """`from_client_error` for EXEC: an UNAVAILABLE transaction is usually one that kept
    meeting other transactions' locks until its deadline, and then nothing of it applied."""
    if isinstance(error, UnavailableError) and not isinstance(error, OutcomeUnknownError):
        if cluster_down:
            return from_client_error(error, what, cluster_down=True)
        return ReplError(
            f"{what}: the transaction did not commit ({error})",
            "Its keys stayed locked by other transactions, or a shard had no leader, until the "
            "deadline; nothing was applied. Run it again. "
            f"{STATUS_HINT}",
        )
    return from_client_error(error, what, cluster_down=cluster_down)
