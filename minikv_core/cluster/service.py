"""The seam between a node's cluster logic and its client-facing APIs.

`minikv_core.net` (HTTP and gRPC servers) serves requests by calling a `NodeService`; the
multi-raft host implements it. Keeping this seam as plain dataclasses and typed errors lets
each API map every outcome to its own status codes in one table, and lets both APIs promise
exactly the same semantics.

Every call takes an absolute `deadline` (a `time.monotonic()` value): a request never outlives
it (DESIGN: "a request never hangs past its deadline") and `DeadlineExceededError` is raised
instead.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from minikv_core.cluster.sessions import WriteSession
    from minikv_core.cluster.txn import TxnRequest, TxnResponse


class Consistency(enum.Enum):
    LINEARIZABLE = "linearizable"
    """Served by the shard leader after ReadIndex (or within its lease): sees every write
    acknowledged before the read began."""
    STALE = "stale"
    """This replica's applied state: fast, possibly behind."""


# ---------------------------------------------------------------------------------- errors


class ServiceError(Exception):
    """Base of the outcomes a client may see; each API maps each subclass to one status."""


class InvalidRequestError(ServiceError):
    """Malformed input (empty key, bad JSON, bad parameter): HTTP 400, INVALID_ARGUMENT."""


class TooLargeError(ServiceError):
    """A key or value over its limit (the message names the limit): 413, RESOURCE_EXHAUSTED."""


class NotFoundError(ServiceError):
    """The key does not exist: 404, NOT_FOUND."""


class UnavailableError(ServiceError):
    """No leader is reachable for the shard right now: 503 + Retry-After, UNAVAILABLE.

    `leader_hint` is the node id of the last known leader (0 if none), for clients that
    route directly (`x-minikv-leader`).

    `unapplied`: the request cannot take effect, now or later — refused before it was
    proposed, or its entry lost to another at its index — so sending it again cannot apply
    a write twice. False (the default) when that is not known: a write may have been
    proposed and may still commit (a leader died mid-request, a forwarded call broke).
    Why it matters: a write retried after it did apply lands again *after* writes that
    followed it, and a reader sees a value come back (the anomaly tests/integration/
    test_register_histories.py found). Clients retry writes only on `unapplied`."""

    def __init__(
        self,
        message: str,
        leader_hint: int = 0,
        retry_after_s: float = 1.0,
        *,
        unapplied: bool = False,
    ) -> None:
        super().__init__(message)
        self.leader_hint = leader_hint
        self.retry_after_s = retry_after_s
        self.unapplied = unapplied


class SessionExpiredError(ServiceError):
    """A write sent again with its client session, which the shard no longer remembers
    (sessions.py): it may or may not have applied, and applying it now could land it after
    later writes, so it was not: 409, FAILED_PRECONDITION. Read the key to learn the outcome."""


class DeadlineExceededError(ServiceError):
    """The request's deadline passed before it was committed or served: 504,
    DEADLINE_EXCEEDED. The write may still commit later (its outcome is unknown)."""


# ---------------------------------------------------------------------------------- results


@dataclass(frozen=True, slots=True)
class VersionedValue:
    value: bytes
    version: int
    """Increases with every write to the key (the Raft index of the write's entry)."""


@dataclass(frozen=True, slots=True)
class ScanItem:
    key: bytes
    value: bytes
    version: int


@dataclass(frozen=True, slots=True)
class ScanResult:
    items: tuple[ScanItem, ...]
    more: bool
    """True when `limit` cut the result short; resume from the last key + b"\\x00"."""


@dataclass(frozen=True, slots=True)
class ScanRequest:
    prefix: bytes = b""
    start: bytes = b""
    """Inclusive; empty = unbounded."""
    end: bytes = b""
    """Exclusive; empty = unbounded."""
    limit: int = 1000
    consistency: Consistency = Consistency.LINEARIZABLE


@dataclass(frozen=True, slots=True)
class FaultSpec:
    drop_to: frozenset[int] = frozenset()
    drop_from: frozenset[int] = frozenset()
    delay_ms: int = 0
    loss: float = 0.0


@dataclass(frozen=True, slots=True)
class ReadinessReport:
    ready: bool
    reason: str = ""
    """Why not ready, e.g. "shard 3 has no known leader"."""


@dataclass(frozen=True, slots=True)
class AdminDocument:
    """A JSON-ready admin answer (status, shard map, WAL, sstables): plain dicts, lists,
    strings and numbers, the same for HTTP and gRPC (which carries it as JSON)."""

    body: Mapping[str, Any] = field(default_factory=dict)


class NodeService(Protocol):
    """What a node offers its client APIs. All methods are called on the node's event loop."""

    # --- data
    async def get(self, key: bytes, consistency: Consistency, deadline: float) -> VersionedValue:
        """Raises NotFoundError if absent."""
        ...

    async def put(
        self, key: bytes, value: bytes, deadline: float, session: WriteSession | None = None
    ) -> int:
        """Returns once committed on a quorum and applied; the result is the new version.
        With a `session`, a write sent again applies at most once (sessions.py)."""
        ...

    async def delete(
        self, key: bytes, deadline: float, session: WriteSession | None = None
    ) -> bool:
        """Returns whether the key existed."""
        ...

    async def scan(self, request: ScanRequest, deadline: float) -> ScanResult:
        """Across all shards in key order."""
        ...

    async def txn(self, request: TxnRequest, deadline: float) -> TxnResponse:
        """Atomically: if every compare holds, the success ops, else the failure ops."""
        ...

    # --- admin
    def status(self) -> AdminDocument: ...
    def shard_map(self) -> AdminDocument: ...
    def wal(self) -> AdminDocument: ...
    def sstables(self) -> AdminDocument: ...
    def readiness(self) -> ReadinessReport: ...
    def set_fault(self, fault: FaultSpec) -> None: ...
    def clear_fault(self) -> None: ...
    async def transfer_leader(self, shard: int, target_node: int, deadline: float) -> None: ...
    async def snapshot(self, shards: Sequence[int] | None, deadline: float) -> AdminDocument: ...
    async def compact(self, shards: Sequence[int] | None, deadline: float) -> AdminDocument: ...


class TxnConflictError(UnavailableError):
    """A transaction kept meeting other transactions' locks until its deadline: nothing of it
    was applied; retry it (503 + Retry-After, UNAVAILABLE: a conflict is transient). Always
    `unapplied`, so clients may send it again."""

    def __init__(self, message: str, leader_hint: int = 0, retry_after_s: float = 1.0) -> None:
        super().__init__(message, leader_hint, retry_after_s, unapplied=True)
