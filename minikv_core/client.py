"""minikv's client: `AsyncClient` (asyncio) and `Client` (blocking), over gRPC.

    async with AsyncClient(["127.0.0.1:9001", "127.0.0.1:9002"]) as kv:
        version = await kv.put(b"user/1", b"ada")
        value = await kv.get(b"user/1")

    with Client(["127.0.0.1:9001"]) as kv:
        kv.put(b"k", b"v")

What it does for the caller:

- **Routing.** It fetches the shard map (`KV.ShardMap`) from any endpoint, maps each key to
  its shard with the node's own shard function (`cluster.shard_map.shard_for_key`), and sends
  the request to that shard's leader at its gRPC address. A node that does not lead the shard
  would forward the request anyway; routing directly saves that hop.
- **Leader cache.** Leaders are cached per shard. An UNAVAILABLE answer naming a leader
  (`x-minikv-leader`) updates the cache and the request is retried there at once; one naming
  no leader backs off (50 ms doubling to 1 s, jittered), refreshes the shard map and retries,
  until the request's deadline (default 5 s).
- **Typed errors.** `NotFoundError`, `InvalidRequestError`, `TooLargeError`,
  `UnavailableError` (no leader reachable before the deadline, with the last hint),
  `OutcomeUnknownError` (an `UnavailableError`: a write failed after it may have applied),
  `DeadlineExceededError` (the deadline passed; a write's outcome is then unknown), and
  `PermissionDeniedError` (admin calls from a non-loopback client), all `ClientError`s.

Transactions: `txn(compare=[...], success=[...], failure=[...])` with `Compare` and `TxnOp`
(or `txn_document(json_document)`) returns a `TxnResponse`; the call goes to the leader of
the first key's shard, so a transaction on one shard needs no forwarding. The node retries
conflicts until the deadline; UnavailableError then means nothing was applied (but
OutcomeUnknownError that it may have been).

Retried writes. A write sent blindly a second time after it did apply lands again *after*
later writes to the key, bringing back an overwritten value (a linearizability violation
tests/integration/test_register_histories.py caught). So:

- Puts and deletes carry the client's session (`WriteSession`: a random client id, the
  write's number, and the number below which every write is answered; sessions.py): the
  shard applies each at most once and answers a repeat with what the first one answered.
  They are retried on any unavailability, like reads. They fail with `OutcomeUnknownError`
  only when the shard can no longer match a repeat (its session forgotten), or when the
  deadline passes after a send that may have applied.
- A writing transaction is sent again only when the node said it cannot have taken effect
  (`x-minikv-unapplied`: refused before it was proposed, or its entry lost to another) or the
  connection never opened; any other failure raises `OutcomeUnknownError` (an
  `UnavailableError`): it may have been applied.

`Client` runs an `AsyncClient` on a private event loop in a daemon thread, so it works from
plain scripts and from threads that run their own loop alike.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import threading
import time
from collections.abc import (
    Awaitable,
    Callable,
    Collection,
    Coroutine,
    Iterator,
    Mapping,
    Sequence,
)
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, Final, Self, TypeVar

import grpc
import grpc.aio

from minikv_core.cluster import limits as cluster_limits
from minikv_core.cluster import service
from minikv_core.cluster.service import Consistency, ScanItem, ScanResult, VersionedValue
from minikv_core.cluster.shard_map import shard_for_key
from minikv_core.cluster.txn import (
    Compare,
    CompareOp,
    CompareTarget,
    OpKind,
    OpResult,
    TxnOp,
    TxnRequest,
    TxnResponse,
    parse_document,
    request_document,
    response_document,
    validate,
)
from minikv_core.net import api, limits, maintenance_rpc
from minikv_core.net.errors_map import error_from_grpc, never_sent
from minikv_core.net.proto import admin_pb2, admin_pb2_grpc, kv_pb2, kv_pb2_grpc

T = TypeVar("T")

__all__ = [
    "AsyncClient",
    "Client",
    "ClientError",
    "Compare",
    "CompareOp",
    "CompareTarget",
    "Consistency",
    "DeadlineExceededError",
    "InvalidRequestError",
    "NotFoundError",
    "OpKind",
    "OpResult",
    "OutcomeUnknownError",
    "PermissionDeniedError",
    "ScanItem",
    "ScanResult",
    "TooLargeError",
    "TxnOp",
    "TxnRequest",
    "TxnResponse",
    "UnavailableError",
    "VersionedValue",
    "parse_txn_document",
    "txn_request_document",
    "txn_response_document",
]


def parse_txn_document(document: object) -> TxnRequest:
    """A transaction from its JSON document (cluster/txn.py); InvalidRequestError or
    TooLargeError name what is wrong."""
    try:
        return parse_document(document)
    except service.ServiceError as error:
        raise _client_error(error) from None


def txn_request_document(request: TxnRequest) -> dict[str, Any]:
    """The JSON document of a transaction (the inverse of `parse_txn_document`)."""
    return request_document(request)


def txn_response_document(response: TxnResponse) -> dict[str, Any]:
    """The JSON answer of a transaction, as `POST /txn` gives it."""
    return response_document(response)


TIMEOUT_S_DEFAULT: Final = limits.REQUEST_TIMEOUT_MS_DEFAULT / 1000.0
BACKOFF_INITIAL_S: Final = 0.05
BACKOFF_MAX_S: Final = 1.0

# ------------------------------------------------------------------------------------ errors


class ClientError(Exception):
    """Base of every error the client raises."""


class NotFoundError(ClientError):
    """The key does not exist."""


class InvalidRequestError(ClientError):
    """The request was malformed (empty key, bad parameter, bad endpoint)."""


class TooLargeError(ClientError):
    """A key or value over the node's limit (the message names it)."""


class UnavailableError(ClientError):
    """No leader of the key's shard answered before the deadline.

    `unapplied`: the node said the request cannot take effect (it was refused before being
    proposed), so sending it again is safe, writes included."""

    def __init__(self, message: str, leader_hint: int = 0, *, unapplied: bool = False) -> None:
        super().__init__(message)
        self.leader_hint = leader_hint
        self.unapplied = unapplied


class OutcomeUnknownError(UnavailableError):
    """A write failed in a way that leaves its outcome unknown (its leader died or the
    connection broke after it was sent): it may have been applied. It is not sent again,
    because a retry of a write that did apply lands a second time after later writes, and a
    reader sees an overwritten value come back. Read the key to learn what happened."""


class DeadlineExceededError(ClientError):
    """The deadline passed; a write may or may not have been applied."""


class PermissionDeniedError(ClientError):
    """An admin call refused: the node answers admin calls from loopback clients only."""


def _client_error(error: service.ServiceError) -> ClientError:
    if isinstance(error, service.NotFoundError):
        return NotFoundError(str(error))
    if isinstance(error, service.InvalidRequestError):
        return InvalidRequestError(str(error))
    if isinstance(error, service.TooLargeError):
        return TooLargeError(str(error))
    if isinstance(error, service.DeadlineExceededError):
        return DeadlineExceededError(str(error))
    if isinstance(error, service.SessionExpiredError):
        return OutcomeUnknownError(
            f"{error}; it was not applied again: read the key to learn its outcome"
        )
    if isinstance(error, service.UnavailableError):
        return UnavailableError(str(error), error.leader_hint, unapplied=error.unapplied)
    return ClientError(str(error))


# ----------------------------------------------------------------------------------- sessions


class _WriteNumbers:
    """This client's session (sessions.py): its random id, the next write number, and the
    numbers still in flight, whose smallest is the `acked` every write reports (all below it
    are answered or given up, so shards may forget them).

    Why the id comes from `os.urandom` and not the client's rng: two clients seeded alike (a
    test, a benchmark) would share a session and answer each other's writes."""

    __slots__ = ("_client_id", "_in_flight", "_next", "repeats_sent")

    def __init__(self) -> None:
        self._client_id = os.urandom(cluster_limits.SESSION_CLIENT_ID_BYTES)
        self._next = 1
        self._in_flight: set[int] = set()
        self.repeats_sent = 0
        """Sends marked `retry`: writes sent again after an earlier send may have applied."""

    @contextlib.contextmanager
    def numbered(self) -> Iterator[_NumberedWrite]:
        """A number for one write, in flight until the block ends (answered or given up)."""
        seq = self._next
        self._next += 1
        self._in_flight.add(seq)
        try:
            yield _NumberedWrite(self, seq)
        finally:
            self._in_flight.discard(seq)

    def acked(self) -> int:
        return min(self._in_flight, default=self._next)


class _NumberedWrite:
    """One numbered write across its sends. A send is a `retry` once an earlier one may have
    applied; one the node refused before proposing (`unapplied`) does not count. Why it
    matters: a shard that has forgotten sessions refuses a retry from a client it does not
    know, so a fresh client's write refused during an election would fail as of unknown
    outcome if its next send said `retry`."""

    __slots__ = ("_maybe_applied", "_maybe_applied_before", "_numbers", "_seq")

    def __init__(self, numbers: _WriteNumbers, seq: int) -> None:
        self._numbers = numbers
        self._seq = seq
        self._maybe_applied = False
        self._maybe_applied_before = False

    def next_send(self) -> kv_pb2.WriteSession:
        """The session of this write's next send."""
        retry = self._maybe_applied
        self._maybe_applied_before, self._maybe_applied = retry, True
        self._numbers.repeats_sent += retry
        return kv_pb2.WriteSession(
            client_id=self._numbers._client_id,
            seq=self._seq,
            acked=self._numbers.acked(),
            retry=retry,
        )

    def not_applied(self) -> None:
        """The last send cannot have applied (the node said so)."""
        self._maybe_applied = self._maybe_applied_before

    @property
    def may_have_applied(self) -> bool:
        """Whether a send so far may have applied (what a failure must then admit)."""
        return self._maybe_applied


# ----------------------------------------------------------------------------------- routing


@dataclass(frozen=True, slots=True)
class ShardRouting:
    """What a client needs of the shard map: the shard count, each node's gRPC address and
    each shard's replicas and leader hint."""

    epoch: int
    shard_count: int
    addresses: Mapping[int, str]
    """Node id to gRPC `host:port`."""
    leaders: Mapping[int, int]
    """Shard to the node id of its leader hint (absent when unknown)."""
    replicas: Mapping[int, tuple[int, ...]]

    @classmethod
    def from_document(cls, document: Mapping[str, Any]) -> ShardRouting:
        """Parse the node's shard map document (`KV.ShardMap`, `GET /admin/shards`).

        Raises ValueError naming what is missing: a client must not route by a map it
        misread.
        """
        try:
            epoch = int(document.get("epoch", 0))
            shard_count = int(document["shard_count"])
            addresses: dict[int, str] = {}
            nodes = document["nodes"]
            entries = nodes.items() if isinstance(nodes, Mapping) else enumerate(nodes)
            for key, node in entries:
                if isinstance(node, Mapping):
                    node_id = int(node.get("id", node.get("node_id", key)))
                    address = node.get("grpc") or node.get("grpc_address") or node.get("address")
                else:
                    node_id, address = int(key), node
                if not isinstance(address, str) or not address:
                    raise ValueError(f"node {node_id} has no gRPC address")
                addresses[node_id] = address
            leaders: dict[int, int] = {}
            replicas: dict[int, tuple[int, ...]] = {}
            for position, shard in enumerate(document["shards"]):
                number = int(shard.get("shard", position))
                replicas[number] = tuple(int(r) for r in shard.get("replicas", ()))
                leader = int(shard.get("leader") or 0)
                if leader:
                    leaders[number] = leader
        except (KeyError, TypeError, AttributeError, ValueError) as error:
            raise ValueError(f"malformed shard map: {type(error).__name__}: {error}") from None
        if shard_count <= 0:
            raise ValueError(f"malformed shard map: shard_count {shard_count}")
        return cls(epoch, shard_count, addresses, leaders, replicas)


class _Router:
    """Shard map + leader cache. Pure: no I/O (the client feeds it what it learns)."""

    def __init__(self, seeds: Sequence[str], rng: random.Random) -> None:
        self.seeds = list(seeds)
        self.routing: ShardRouting | None = None
        self.leaders: dict[int, int] = {}
        self._rng = rng

    def install(self, routing: ShardRouting) -> None:
        if self.routing is not None and routing.epoch < self.routing.epoch:
            return
        self.routing = routing
        # Fresh hints from the map replace cached ones only where the map knows a leader.
        self.leaders.update(routing.leaders)

    def shard_of(self, key: bytes) -> int | None:
        if self.routing is None:
            return None
        return shard_for_key(key, self.routing.shard_count)

    def learn_leader(self, shard: int | None, leader: int) -> bool:
        """Record a hint; True when it names a node we can reach (worth an instant retry)."""
        if shard is None or leader <= 0 or self.routing is None:
            return False
        if leader not in self.routing.addresses:
            return False
        changed = self.leaders.get(shard) != leader
        self.leaders[shard] = leader
        return changed

    def forget_leader(self, shard: int | None) -> None:
        if shard is not None:
            self.leaders.pop(shard, None)

    def target(self, shard: int | None, attempt: int, avoid: Collection[str] = ()) -> str:
        """The address to send a request for `shard` to: its cached leader, else a replica
        or any known node (it forwards), rotating with the attempt number. Addresses in
        `avoid` (this request could not connect to them) are passed over while another
        replica remains: a map can go on naming a dead leader, and a fresh map put the
        hint back after every failure, so a request dialled the dead node to its deadline
        while the shard's new leader was a replica away (a chaos run: a minute of exit 69)."""
        routing = self.routing
        if routing is not None and shard is not None:
            leader = self.leaders.get(shard)
            if leader is not None and routing.addresses.get(leader) not in (None, *avoid):
                return routing.addresses[leader]
            replicas = [r for r in routing.replicas.get(shard, ()) if r in routing.addresses]
            reachable = [r for r in replicas if routing.addresses[r] not in avoid] or replicas
            if reachable:
                return routing.addresses[reachable[attempt % len(reachable)]]
        return self.any_endpoint(attempt)

    def any_endpoint(self, attempt: int) -> str:
        candidates = list(self.seeds)
        if self.routing is not None:
            candidates += [a for a in self.routing.addresses.values() if a not in candidates]
        if attempt == 0:
            return candidates[0]
        return candidates[self._rng.randrange(len(candidates))]


# ------------------------------------------------------------------------------ async client


_CHANNEL_OPTIONS: Final = (
    ("grpc.max_send_message_length", limits.CLIENT_MESSAGE_BYTES_MAX),
    ("grpc.max_receive_message_length", limits.CLIENT_MESSAGE_BYTES_MAX),
    ("grpc.keepalive_time_ms", limits.KEEPALIVE_TIME_MS),
    ("grpc.keepalive_timeout_ms", limits.KEEPALIVE_TIMEOUT_MS),
    ("grpc.enable_retries", 0),
    # A restarted node must be reachable again within about one election, not after gRPC's
    # default reconnect backoff (up to 120 s); a private subchannel pool keeps one client's
    # backoff from leaking into another's.
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
    ("grpc.use_local_subchannel_pool", 1),
)

HINTS_FOLLOWED_MAX: Final = 3
"""Leader hints followed in a row without a pause: two nodes that name each other during an
election must not make the client spin; after this many it backs off like any failure."""
SHARD_MAP_ATTEMPT_S_MAX: Final = 1.0
"""One shard-map request to one endpoint: a stopped or partitioned node must not eat the
whole deadline of the request that needed the map."""


def _check_endpoint(endpoint: object) -> str:
    if not isinstance(endpoint, str):
        raise InvalidRequestError(f"endpoints are 'host:port' strings, got {endpoint!r}")
    host, sep, port = endpoint.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise InvalidRequestError(f"endpoint must be 'host:port', got {endpoint!r}")
    return endpoint


class AsyncClient:
    """The asyncio client. Use as `async with AsyncClient(endpoints) as kv:` or call
    `close()`. All methods take `timeout_s` (default 5 s): the whole call, retries included."""

    def __init__(
        self,
        endpoints: Sequence[str] | str,
        *,
        timeout_s: float = TIMEOUT_S_DEFAULT,
        rng: random.Random | None = None,
    ) -> None:
        seeds = [endpoints] if isinstance(endpoints, str) else list(endpoints)
        if not seeds:
            raise InvalidRequestError("at least one endpoint ('host:port') is needed")
        if not 0 < timeout_s <= limits.REQUEST_TIMEOUT_MS_MAX / 1000.0:
            raise InvalidRequestError(
                f"timeout_s must be in (0, {limits.REQUEST_TIMEOUT_MS_MAX / 1000.0}], "
                f"got {timeout_s}"
            )
        self._timeout_s = timeout_s
        self._rng = rng if rng is not None else random.Random()
        self._router = _Router([_check_endpoint(e) for e in seeds], self._rng)
        self._writes = _WriteNumbers()
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._closing: set[asyncio.Task[None]] = set()
        self._closed = False

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    @property
    def endpoints(self) -> tuple[str, ...]:
        """The addresses given (or `reseed`), which the client falls back on."""
        return tuple(self._router.seeds)

    def reseed(self, endpoints: Sequence[str]) -> None:
        """Start over from `endpoints`, forgetting the shard map and the leaders learned.

        For a tool that outlives a cluster (the dashboard, whose cluster is destroyed and
        created again on other ports): no old address answers any more, and the old map's
        epoch would outrank the new cluster's, so a refresh alone could never recover."""
        seeds = [_check_endpoint(e) for e in endpoints]
        if not seeds:
            raise InvalidRequestError("at least one endpoint ('host:port') is needed")
        self._router = _Router(seeds, self._rng)

    @property
    def writes_repeated(self) -> int:
        """Puts and deletes sent again after a send that may have applied (each such send
        counts): the shards apply them once, thanks to the client session."""
        return self._writes.repeats_sent

    async def close(self) -> None:
        self._closed = True
        channels, self._channels = list(self._channels.values()), {}
        await asyncio.gather(
            *(channel.close(grace=None) for channel in channels), *list(self._closing)
        )

    # --- data -------------------------------------------------------------------------------

    async def get(
        self,
        key: bytes,
        *,
        consistency: Consistency = Consistency.LINEARIZABLE,
        timeout_s: float | None = None,
    ) -> bytes:
        """The value of `key`; raises NotFoundError when it does not exist."""
        return (await self.get_versioned(key, consistency=consistency, timeout_s=timeout_s)).value

    async def get_versioned(
        self,
        key: bytes,
        *,
        consistency: Consistency = Consistency.LINEARIZABLE,
        timeout_s: float | None = None,
    ) -> VersionedValue:
        request = kv_pb2.GetRequest(
            key=_bytes(key, "key"),
            consistency=kv_pb2.CONSISTENCY_STALE
            if consistency is Consistency.STALE
            else kv_pb2.CONSISTENCY_LINEARIZABLE,
        )

        async def call(channel: grpc.aio.Channel, timeout: float) -> VersionedValue:
            answer = await kv_pb2_grpc.KVStub(channel).Get(request, timeout=timeout)
            return VersionedValue(answer.value, answer.version)

        return await self._routed(key, call, timeout_s)

    async def put(self, key: bytes, value: bytes, *, timeout_s: float | None = None) -> int:
        """Write `value`; returns once committed on a quorum and applied, with the new
        version of the key."""
        request = kv_pb2.PutRequest(key=_bytes(key, "key"), value=_bytes(value, "value"))
        with self._writes.numbered() as write:

            async def call(channel: grpc.aio.Channel, timeout: float) -> int:
                request.session.CopyFrom(write.next_send())
                answer = await kv_pb2_grpc.KVStub(channel).Put(request, timeout=timeout)
                return int(answer.version)

            return await self._routed(key, call, timeout_s, idempotent=write)

    async def delete(self, key: bytes, *, timeout_s: float | None = None) -> bool:
        """Delete `key`; returns whether it existed."""
        request = kv_pb2.DeleteRequest(key=_bytes(key, "key"))
        with self._writes.numbered() as write:

            async def call(channel: grpc.aio.Channel, timeout: float) -> bool:
                request.session.CopyFrom(write.next_send())
                try:
                    await kv_pb2_grpc.KVStub(channel).Delete(request, timeout=timeout)
                except grpc.aio.AioRpcError as error:
                    if error.code() == grpc.StatusCode.NOT_FOUND:
                        return False
                    raise
                return True

            return await self._routed(key, call, timeout_s, idempotent=write)

    async def txn(
        self,
        compare: Sequence[Compare] = (),
        success: Sequence[TxnOp] = (),
        failure: Sequence[TxnOp] = (),
        *,
        timeout_s: float | None = None,
    ) -> TxnResponse:
        """If every compare holds, run the success ops, else the failure ops, atomically;
        compares and gets read the state before the transaction."""
        request = TxnRequest(tuple(compare), tuple(success), tuple(failure))
        try:
            validate(request)
        except service.ServiceError as error:
            raise _client_error(error) from None
        return await self.txn_request(request, timeout_s=timeout_s)

    async def txn_request(
        self, request: TxnRequest, *, timeout_s: float | None = None
    ) -> TxnResponse:
        """`txn` for a request built already (e.g. by `parse_txn_document`)."""
        keys = request.keys
        if not keys:
            raise InvalidRequestError("the transaction is empty")
        message = api.txn_request_to_proto(request)

        async def call(channel: grpc.aio.Channel, timeout: float) -> TxnResponse:
            answer = await kv_pb2_grpc.KVStub(channel).Txn(message, timeout=timeout)
            return api.txn_response_from_proto(answer)

        # To the leader of the home shard (the coordinator's choice: the smallest shard of
        # the transaction), whose PREPARE and DECIDE are then local: one forward less.
        routing = self._router.routing
        home_key = keys[0]
        if routing is not None:
            home_key = min(keys, key=lambda key: shard_for_key(key, routing.shard_count))
        writes = any(op.kind is not OpKind.GET for op in (*request.success, *request.failure))
        return await self._routed(home_key, call, timeout_s, write=writes)

    async def scan(
        self,
        *,
        prefix: bytes = b"",
        start: bytes = b"",
        end: bytes = b"",
        limit: int = limits.SCAN_LIMIT_DEFAULT,
        consistency: Consistency = Consistency.LINEARIZABLE,
        timeout_s: float | None = None,
    ) -> ScanResult:
        """One page of keys in order across all shards; `more` means resume with
        `start=items[-1].key + b"\\x00"`."""
        request = kv_pb2.ScanRequest(
            prefix=_bytes(prefix, "prefix"),
            start=_bytes(start, "start"),
            end=_bytes(end, "end"),
            limit=limit,
            consistency=kv_pb2.CONSISTENCY_STALE
            if consistency is Consistency.STALE
            else kv_pb2.CONSISTENCY_LINEARIZABLE,
        )
        if not 1 <= limit <= limits.SCAN_LIMIT_MAX:
            raise InvalidRequestError(f"limit must be in [1, {limits.SCAN_LIMIT_MAX}]")

        async def call(channel: grpc.aio.Channel, timeout: float) -> ScanResult:
            answer = await kv_pb2_grpc.KVStub(channel).Scan(request, timeout=timeout)
            return ScanResult(
                items=tuple(ScanItem(i.key, i.value, i.version) for i in answer.items),
                more=answer.more,
            )

        return await self._routed(None, call, timeout_s)

    async def scan_paged(
        self,
        *,
        prefix: bytes = b"",
        start: bytes = b"",
        end: bytes = b"",
        limit: int = limits.SCAN_LIMIT_DEFAULT,
        consistency: Consistency = Consistency.LINEARIZABLE,
        timeout_s: float | None = None,
    ) -> ScanResult:
        """Up to `limit` keys, page after page: a node ends one answer at
        SCAN_RESPONSE_BYTES_MAX of keys and values (four 1 MiB values fill it) and sets `more`
        however few keys it holds, so one page is not "the first `limit` keys". Each page is
        a read of its own, not one snapshot; `timeout_s` bounds them all. `more` in the
        result means keys past `limit` exist."""
        started = time.monotonic()
        deadline = self._deadline(timeout_s)
        items: list[ScanItem] = []
        while True:
            remaining_s = deadline - time.monotonic()
            if remaining_s <= 0:
                raise DeadlineExceededError(
                    f"the scan's pages took longer than {deadline - started:.3g} s"
                )
            page = await self.scan(
                prefix=prefix,
                start=start,
                end=end,
                limit=limit - len(items),
                consistency=consistency,
                timeout_s=remaining_s,
            )
            items.extend(page.items)
            if not page.more or not page.items or len(items) >= limit:
                return ScanResult(items=tuple(items), more=page.more)
            start = page.items[-1].key + b"\x00"

    # --- cluster ----------------------------------------------------------------------------

    async def shard_map(self, *, timeout_s: float | None = None) -> dict[str, Any]:
        """The shard map document, fresh from a node (it also refreshes the routing)."""
        return await self._refresh(self._deadline(timeout_s))

    async def status(
        self, endpoint: str | None = None, *, timeout_s: float | None = None
    ) -> dict[str, Any]:
        """`Admin.Status` of `endpoint` (default: the first endpoint given). Admin calls are
        answered to loopback clients only unless the node allows remote admin."""
        return await self._admin(endpoint, "Status", admin_pb2.AdminRequest(), timeout_s)

    async def wal(
        self, endpoint: str | None = None, *, timeout_s: float | None = None
    ) -> dict[str, Any]:
        """`Admin.Wal`: the node's WAL segments (name, size, records, index range, state)."""
        return await self._admin(endpoint, "Wal", admin_pb2.AdminRequest(), timeout_s)

    async def sstables(
        self, endpoint: str | None = None, *, timeout_s: float | None = None
    ) -> dict[str, Any]:
        """`Admin.SSTables`: per shard replica on the node, its memtable and table files."""
        return await self._admin(endpoint, "SSTables", admin_pb2.AdminRequest(), timeout_s)

    async def set_fault(
        self,
        endpoint: str,
        *,
        drop_to: Sequence[int] = (),
        drop_from: Sequence[int] = (),
        delay_ms: int = 0,
        loss: float = 0.0,
        timeout_s: float | None = None,
    ) -> dict[str, Any]:
        """Replace the node's fault rules: traffic to/from the listed peers is dropped, the
        rest delayed by `delay_ms` and lost with probability `loss`. Partitions are built from
        this, one node at a time (a symmetric cut sets both directions on both sides)."""
        request = admin_pb2.FaultRequest(
            drop_to=list(drop_to), drop_from=list(drop_from), delay_ms=delay_ms, loss=loss
        )
        return await self._admin(endpoint, "Fault", request, timeout_s)

    async def clear_fault(self, endpoint: str, *, timeout_s: float | None = None) -> dict[str, Any]:
        """Remove every fault rule of the node (heal its side of any partition)."""
        return await self._admin(endpoint, "ClearFault", admin_pb2.AdminRequest(), timeout_s)

    async def transfer_leader(
        self, endpoint: str, shard: int, node: int, *, timeout_s: float | None = None
    ) -> dict[str, Any]:
        """Ask the node (which should lead `shard`, or forwards) to hand leadership to `node`."""
        request = admin_pb2.TransferLeaderRequest(shard=shard, node=node)
        return await self._admin(endpoint, "TransferLeader", request, timeout_s)

    async def snapshot(
        self, endpoint: str, shards: Sequence[int] = (), *, timeout_s: float | None = None
    ) -> dict[str, Any]:
        """Flush and snapshot the node's replicas of `shards` (all when empty)."""
        request = admin_pb2.ShardsRequest(shards=list(shards))
        return await self._admin(endpoint, "Snapshot", request, timeout_s)

    async def compact(
        self, endpoint: str, shards: Sequence[int] = (), *, timeout_s: float | None = None
    ) -> dict[str, Any]:
        """Run a full compaction of the node's replicas of `shards` (all when empty)."""
        request = admin_pb2.ShardsRequest(shards=list(shards))
        return await self._admin(endpoint, "Compact", request, timeout_s)

    async def maintain(
        self,
        operation: str,
        args: Mapping[str, Any] | None = None,
        *,
        endpoint: str | None = None,
        timeout_s: float | None = None,
    ) -> dict[str, Any]:
        """Cluster maintenance (`minikv.v1.Cluster/Operate`, forwarded to the meta leader):
        "repair" {dry_run, dead}, "rebalance" {dry_run}, "remove_node" {node, dry_run},
        "verify" {} start a job and answer its document ({"id", "state", "steps": [...]});
        "job" {id?} reads one; "wait": true waits for the job up to the timeout."""
        address = _check_endpoint(endpoint) if endpoint is not None else self._router.seeds[0]
        deadline = self._deadline(timeout_s)
        channel = self._channel(address)
        rpc = channel.unary_unary(
            f"/{maintenance_rpc.SERVICE}/{maintenance_rpc.OPERATE_METHOD}",
            request_serializer=None,
            response_deserializer=None,
        )
        try:
            raw = await rpc(
                maintenance_rpc.encode_request(operation, dict(args or {})),
                timeout=max(0.0, deadline - time.monotonic()),
            )
        except grpc.aio.AioRpcError as error:
            raise _from_rpc(error) from None
        return _json_object(raw.decode("utf-8", errors="replace"), f"{operation} of {address}")

    async def _admin(
        self, endpoint: str | None, method: str, request: Any, timeout_s: float | None
    ) -> dict[str, Any]:
        """One admin RPC to one node: admin calls are about that node, so they are never
        routed or retried elsewhere."""
        address = _check_endpoint(endpoint) if endpoint is not None else self._router.seeds[0]
        deadline = self._deadline(timeout_s)
        stub = admin_pb2_grpc.AdminStub(self._channel(address))
        try:
            answer = await getattr(stub, method)(
                request, timeout=max(0.0, deadline - time.monotonic())
            )
        except grpc.aio.AioRpcError as error:
            raise _from_rpc(error) from None
        return _json_object(answer.json, f"{method} of {address}")

    # --- machinery --------------------------------------------------------------------------

    def _deadline(self, timeout_s: float | None) -> float:
        timeout = self._timeout_s if timeout_s is None else timeout_s
        if not 0 < timeout <= limits.REQUEST_TIMEOUT_MS_MAX / 1000.0:
            raise InvalidRequestError(
                f"timeout_s must be in (0, {limits.REQUEST_TIMEOUT_MS_MAX / 1000.0}], got {timeout}"
            )
        return time.monotonic() + timeout

    def _channel(self, address: str) -> grpc.aio.Channel:
        if self._closed:
            raise ClientError("the client is closed")
        channel = self._channels.get(address)
        if channel is None:
            if len(self._channels) >= limits.CLIENT_CHANNELS_MAX:
                # Bounded cache: drop the oldest (dict order) before adding another address.
                oldest = next(iter(self._channels))
                old = self._channels.pop(oldest)
                task = asyncio.get_running_loop().create_task(old.close(grace=None))
                self._closing.add(task)
                task.add_done_callback(self._closing.discard)
            channel = grpc.aio.insecure_channel(address, options=_CHANNEL_OPTIONS)
            self._channels[address] = channel
        return channel

    async def _refresh(self, deadline: float) -> dict[str, Any]:
        """Fetch the shard map from the endpoints in turn until one answers."""
        last: ClientError = UnavailableError("no endpoint answered the shard map request")
        candidates = list(
            dict.fromkeys(
                self._router.seeds
                + (list(self._router.routing.addresses.values()) if self._router.routing else [])
            )
        )
        for address in candidates:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                answer = await kv_pb2_grpc.KVStub(self._channel(address)).ShardMap(
                    kv_pb2.ShardMapRequest(), timeout=min(remaining, SHARD_MAP_ATTEMPT_S_MAX)
                )
            except grpc.aio.AioRpcError as error:
                last = _from_rpc(error)
                continue
            document = _json_object(answer.json, f"shard map of {address}")
            try:
                self._router.install(ShardRouting.from_document(document))
            except ValueError as error:
                last = ClientError(f"{address}: {error}")
                continue
            return document
        if time.monotonic() >= deadline:
            raise DeadlineExceededError(f"shard map not fetched before the deadline: {last}")
        raise last

    async def _routed(
        self,
        key: bytes | None,
        call: Callable[[grpc.aio.Channel, float], Awaitable[T]],
        timeout_s: float | None,
        *,
        write: bool = False,
        idempotent: _NumberedWrite | None = None,
    ) -> T:
        """Send to the key's leader, following hints and backing off until the deadline. A
        `write` is sent again only after a failure that says it cannot have applied; an
        `idempotent` one (it carries its session) and a read after any unavailability."""
        deadline = self._deadline(timeout_s)
        router = self._router
        backoff_s = BACKOFF_INITIAL_S
        attempt = 0
        hints_followed = 0
        last: UnavailableError | None = None
        unreachable: set[str] = set()
        while True:
            if router.routing is None:
                with contextlib.suppress(ClientError):
                    await self._refresh(deadline)
            shard = router.shard_of(key) if key is not None else None
            address = (
                router.target(shard, attempt, unreachable)
                if key is not None
                else (router.any_endpoint(attempt))
            )
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                return await call(self._channel(address), remaining)
            except grpc.aio.AioRpcError as error:
                failure = _from_rpc(error)
                if error.code() == grpc.StatusCode.UNAVAILABLE and never_sent(
                    error.details() or ""
                ):
                    unreachable.add(address)
            attempt += 1
            if (
                isinstance(failure, DeadlineExceededError)
                and last is not None
                and (idempotent is not None or not write)
            ):
                # Out of time after sends that met no leader: the last one came too late
                # ("the deadline passed before the request started"), which alone would hide
                # what the others met. A plain write's timeout stays what it is: unknown.
                break
            if not isinstance(failure, UnavailableError) or isinstance(
                failure, OutcomeUnknownError
            ):
                raise failure  # OutcomeUnknownError: the shard cannot match the repeat
            if idempotent is not None and failure.unapplied:
                idempotent.not_applied()
            if write and idempotent is None and not failure.unapplied:
                raise OutcomeUnknownError(
                    f"{failure}; the write may have been applied, so it was not sent again "
                    "(a retry could land it after later writes): read the key to learn its "
                    "outcome",
                    failure.leader_hint,
                )
            last = failure
            learned = router.learn_leader(shard, failure.leader_hint)
            if learned and hints_followed < HINTS_FOLLOWED_MAX:
                hints_followed += 1
                continue  # a new leader named: go there at once
            hints_followed = 0
            if not learned:
                router.forget_leader(shard)
            pause = min(backoff_s, max(0.0, deadline - time.monotonic()))
            await asyncio.sleep(pause * (0.5 + 0.5 * self._rng.random()))
            backoff_s = min(BACKOFF_MAX_S, backoff_s * 2)
            with contextlib.suppress(ClientError):
                await self._refresh(deadline)
        if last is not None:
            if idempotent is not None and idempotent.may_have_applied:
                raise OutcomeUnknownError(
                    f"no leader answered before the deadline; last error: {last}; a send "
                    "may have been applied: read the key to learn its outcome",
                    last.leader_hint,
                )
            raise UnavailableError(
                f"no leader answered before the deadline; last error: {last}", last.leader_hint
            )
        raise DeadlineExceededError("the deadline passed before the request was sent")


def _bytes(value: object, name: str) -> bytes:
    if isinstance(value, bytearray | memoryview):
        return bytes(value)
    if not isinstance(value, bytes):
        raise InvalidRequestError(f"{name} must be bytes, got {type(value).__name__}")
    return value


def _json_object(text: str, what: str) -> dict[str, Any]:
    try:
        document = json.loads(text)
    except ValueError as error:
        raise ClientError(f"{what} is not JSON: {error}") from None
    if not isinstance(document, dict):
        raise ClientError(f"{what} is not a JSON object")
    return document


def _from_rpc(error: grpc.aio.AioRpcError) -> ClientError:
    code = error.code()
    if code == grpc.StatusCode.PERMISSION_DENIED:
        return PermissionDeniedError(error.details() or "permission denied")
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return DeadlineExceededError(error.details() or "deadline exceeded")
    return _client_error(error_from_grpc(code, error.details(), error.trailing_metadata()))


# ------------------------------------------------------------------------------- sync client


class Client:
    """The blocking client: an `AsyncClient` on a private loop in a daemon thread.

    Same methods and errors as AsyncClient. Use as `with Client(endpoints) as kv:` or call
    `close()`; it is safe to use from several threads.
    """

    def __init__(
        self,
        endpoints: Sequence[str] | str,
        *,
        timeout_s: float = TIMEOUT_S_DEFAULT,
        rng: random.Random | None = None,
    ) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="minikv-client", daemon=True
        )
        self._thread.start()
        self._closed = False
        try:
            self._async = self._run(_make_async(endpoints, timeout_s, rng))
        except BaseException:
            self._stop_loop()
            raise

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self._run(self._async.close())
        finally:
            self._stop_loop()

    def _stop_loop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()

    def _run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        future: Future[T] = asyncio.run_coroutine_threadsafe(coroutine, self._loop)
        return future.result()

    def get(
        self,
        key: bytes,
        *,
        consistency: Consistency = Consistency.LINEARIZABLE,
        timeout_s: float | None = None,
    ) -> bytes:
        return self._run(self._async.get(key, consistency=consistency, timeout_s=timeout_s))

    def get_versioned(
        self,
        key: bytes,
        *,
        consistency: Consistency = Consistency.LINEARIZABLE,
        timeout_s: float | None = None,
    ) -> VersionedValue:
        return self._run(
            self._async.get_versioned(key, consistency=consistency, timeout_s=timeout_s)
        )

    def put(self, key: bytes, value: bytes, *, timeout_s: float | None = None) -> int:
        return self._run(self._async.put(key, value, timeout_s=timeout_s))

    def delete(self, key: bytes, *, timeout_s: float | None = None) -> bool:
        return self._run(self._async.delete(key, timeout_s=timeout_s))

    def txn(
        self,
        compare: Sequence[Compare] = (),
        success: Sequence[TxnOp] = (),
        failure: Sequence[TxnOp] = (),
        *,
        timeout_s: float | None = None,
    ) -> TxnResponse:
        return self._run(self._async.txn(compare, success, failure, timeout_s=timeout_s))

    def txn_request(self, request: TxnRequest, *, timeout_s: float | None = None) -> TxnResponse:
        return self._run(self._async.txn_request(request, timeout_s=timeout_s))

    def scan(
        self,
        *,
        prefix: bytes = b"",
        start: bytes = b"",
        end: bytes = b"",
        limit: int = limits.SCAN_LIMIT_DEFAULT,
        consistency: Consistency = Consistency.LINEARIZABLE,
        timeout_s: float | None = None,
    ) -> ScanResult:
        return self._run(
            self._async.scan(
                prefix=prefix,
                start=start,
                end=end,
                limit=limit,
                consistency=consistency,
                timeout_s=timeout_s,
            )
        )

    def scan_paged(
        self,
        *,
        prefix: bytes = b"",
        start: bytes = b"",
        end: bytes = b"",
        limit: int = limits.SCAN_LIMIT_DEFAULT,
        consistency: Consistency = Consistency.LINEARIZABLE,
        timeout_s: float | None = None,
    ) -> ScanResult:
        return self._run(
            self._async.scan_paged(
                prefix=prefix,
                start=start,
                end=end,
                limit=limit,
                consistency=consistency,
                timeout_s=timeout_s,
            )
        )

    def shard_map(self, *, timeout_s: float | None = None) -> dict[str, Any]:
        return self._run(self._async.shard_map(timeout_s=timeout_s))

    def status(
        self, endpoint: str | None = None, *, timeout_s: float | None = None
    ) -> dict[str, Any]:
        return self._run(self._async.status(endpoint, timeout_s=timeout_s))

    def wal(self, endpoint: str | None = None, *, timeout_s: float | None = None) -> dict[str, Any]:
        return self._run(self._async.wal(endpoint, timeout_s=timeout_s))

    def sstables(
        self, endpoint: str | None = None, *, timeout_s: float | None = None
    ) -> dict[str, Any]:
        return self._run(self._async.sstables(endpoint, timeout_s=timeout_s))

    def set_fault(
        self,
        endpoint: str,
        *,
        drop_to: Sequence[int] = (),
        drop_from: Sequence[int] = (),
        delay_ms: int = 0,
        loss: float = 0.0,
        timeout_s: float | None = None,
    ) -> dict[str, Any]:
        return self._run(
            self._async.set_fault(
                endpoint,
                drop_to=drop_to,
                drop_from=drop_from,
                delay_ms=delay_ms,
                loss=loss,
                timeout_s=timeout_s,
            )
        )

    def clear_fault(self, endpoint: str, *, timeout_s: float | None = None) -> dict[str, Any]:
        return self._run(self._async.clear_fault(endpoint, timeout_s=timeout_s))

    def transfer_leader(
        self, endpoint: str, shard: int, node: int, *, timeout_s: float | None = None
    ) -> dict[str, Any]:
        return self._run(self._async.transfer_leader(endpoint, shard, node, timeout_s=timeout_s))

    def snapshot(
        self, endpoint: str, shards: Sequence[int] = (), *, timeout_s: float | None = None
    ) -> dict[str, Any]:
        return self._run(self._async.snapshot(endpoint, shards, timeout_s=timeout_s))

    def compact(
        self, endpoint: str, shards: Sequence[int] = (), *, timeout_s: float | None = None
    ) -> dict[str, Any]:
        return self._run(self._async.compact(endpoint, shards, timeout_s=timeout_s))

    def maintain(
        self,
        operation: str,
        args: Mapping[str, Any] | None = None,
        *,
        endpoint: str | None = None,
        timeout_s: float | None = None,
    ) -> dict[str, Any]:
        return self._run(
            self._async.maintain(operation, args, endpoint=endpoint, timeout_s=timeout_s)
        )


async def _make_async(
    endpoints: Sequence[str] | str, timeout_s: float, rng: random.Random | None
) -> AsyncClient:
    """Built on the client's own loop: gRPC aio objects belong to the loop that made them."""
    return AsyncClient(endpoints, timeout_s=timeout_s, rng=rng)
