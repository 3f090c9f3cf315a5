"""One table: each `ServiceError` subclass to its HTTP status, gRPC code and wire name.

Both client APIs and both directions (a server answering, the forwarder and the client reading
an answer back) go through this table, so an outcome means the same on every path: a 503 over
HTTP is an UNAVAILABLE over gRPC is an `UnavailableError` in Python, with the same leader hint.

Leader hints and retry delays travel as metadata (gRPC trailing metadata, HTTP headers):
`x-minikv-leader` (node id of the last known leader, absent when unknown) and, over gRPC,
`x-minikv-retry-after-ms` (HTTP uses the standard `Retry-After`, in whole seconds).
`x-minikv-unapplied: 1` marks an UnavailableError whose request cannot take effect (safe to
send again, writes included); without it a write's outcome is unknown.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Final

import grpc

from minikv_core.cluster.service import (
    DeadlineExceededError,
    InvalidRequestError,
    NotFoundError,
    ServiceError,
    SessionExpiredError,
    TooLargeError,
    UnavailableError,
)

LEADER_HINT_KEY: Final = "x-minikv-leader"
RETRY_AFTER_MS_KEY: Final = "x-minikv-retry-after-ms"
UNAPPLIED_KEY: Final = "x-minikv-unapplied"
VERSION_HEADER: Final = "x-minikv-version"


@dataclass(frozen=True, slots=True)
class ErrorMapping:
    http_status: int
    grpc_code: grpc.StatusCode
    name: str
    """The `error` field of an HTTP JSON error body."""


ERROR_TABLE: Final[Mapping[type[ServiceError], ErrorMapping]] = {
    InvalidRequestError: ErrorMapping(400, grpc.StatusCode.INVALID_ARGUMENT, "invalid_request"),
    TooLargeError: ErrorMapping(413, grpc.StatusCode.RESOURCE_EXHAUSTED, "too_large"),
    NotFoundError: ErrorMapping(404, grpc.StatusCode.NOT_FOUND, "not_found"),
    UnavailableError: ErrorMapping(503, grpc.StatusCode.UNAVAILABLE, "unavailable"),
    DeadlineExceededError: ErrorMapping(
        504, grpc.StatusCode.DEADLINE_EXCEEDED, "deadline_exceeded"
    ),
    SessionExpiredError: ErrorMapping(409, grpc.StatusCode.FAILED_PRECONDITION, "session_expired"),
}

INTERNAL: Final = ErrorMapping(500, grpc.StatusCode.INTERNAL, "internal")
"""A bare `ServiceError` (or a subclass this table does not know): a bug, not a client error."""

_BY_GRPC_CODE: Final = {mapping.grpc_code: error for error, mapping in ERROR_TABLE.items()}

assert len(_BY_GRPC_CODE) == len(ERROR_TABLE), "two errors share a gRPC code"
assert len({m.http_status for m in ERROR_TABLE.values()}) == len(ERROR_TABLE), (
    "two errors share an HTTP status"
)


def unexpected_error_detail(error: BaseException) -> str:
    """What a client is told of an exception no layer expected (a bug; logged where caught)."""
    return f"{type(error).__name__}: {error}"


def internal_error_document(error: BaseException) -> dict[str, str]:
    """The JSON body of an HTTP 500 for `error`."""
    return {"error": INTERNAL.name, "detail": unexpected_error_detail(error)}


def mapping_for(error: ServiceError) -> ErrorMapping:
    """The row of `error`'s class, or of its nearest mapped base class."""
    for cls in type(error).__mro__:
        mapping = ERROR_TABLE.get(cls)
        if mapping is not None:
            return mapping
    return INTERNAL


def hint_metadata(error: ServiceError) -> tuple[tuple[str, str], ...]:
    """gRPC trailing metadata for `error`: the leader hint and retry delay of an
    UnavailableError, nothing for the others."""
    if not isinstance(error, UnavailableError):
        return ()
    pairs: list[tuple[str, str]] = []
    if error.leader_hint > 0:
        pairs.append((LEADER_HINT_KEY, str(error.leader_hint)))
    pairs.append((RETRY_AFTER_MS_KEY, str(max(0, math.ceil(error.retry_after_s * 1000)))))
    if error.unapplied:
        pairs.append((UNAPPLIED_KEY, "1"))
    return tuple(pairs)


def retry_after_header_s(error: UnavailableError) -> str:
    """HTTP `Retry-After` in whole seconds (RFC 9110 allows no fraction), at least 1."""
    return str(max(1, math.ceil(error.retry_after_s)))


def _positive_int(text: str | bytes | None) -> int:
    if isinstance(text, bytes):
        text = text.decode("ascii", "replace")
    if text is None or not text.isdigit():
        return 0
    return int(text)


def never_sent(details: str) -> bool:
    """gRPC's own UNAVAILABLE for a channel that never connected: the call was not sent.
    (A connection that broke mid-call says otherwise: "Socket closed", "Connection reset".)"""
    return "failed to connect to all addresses" in details.lower()


def error_from_grpc(
    code: grpc.StatusCode, details: str | None, metadata: Iterable[tuple[str, str | bytes]] | None
) -> ServiceError:
    """The ServiceError an RPC failure with `code` stands for (the inverse of the table).

    Codes outside the table are transport failures from the caller's point of view (a peer
    that is down, a connection reset, a server bug): UnavailableError, so that callers retry
    or report "no leader reachable" rather than crash.
    """
    text = details or code.name
    if code == grpc.StatusCode.UNIMPLEMENTED:
        # Not a transient failure: the node runs a minikv without this RPC (one started
        # before an upgrade). Retrying until the deadline would only hide that.
        return InvalidRequestError(
            f"the node does not implement this call ({text}): it runs an older minikv; "
            "restart it with this version (`minikv cluster down` then `up`)"
        )
    error_type = _BY_GRPC_CODE.get(code)
    if error_type is None or error_type is UnavailableError:
        hints = dict(metadata or ())
        leader = _positive_int(hints.get(LEADER_HINT_KEY))
        retry_ms = _positive_int(hints.get(RETRY_AFTER_MS_KEY))
        retry_after_s = retry_ms / 1000.0 if retry_ms else 1.0
        if error_type is None:
            text = f"{code.name}: {text}"
        unapplied = error_type is UnavailableError and _positive_int(hints.get(UNAPPLIED_KEY)) == 1
        if code == grpc.StatusCode.UNAVAILABLE and not hints and never_sent(text):
            unapplied = True
        return UnavailableError(
            text, leader_hint=leader, retry_after_s=retry_after_s, unapplied=unapplied
        )
    return error_type(text)
