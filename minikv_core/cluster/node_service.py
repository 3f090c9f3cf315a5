"""`Node`: one minikv node in-process — the multi-raft host behind the `NodeService` seam.

Data path (every call bounded by its absolute `deadline`, a `time.monotonic()` value):

- put / delete: validated here (TooLargeError names the limit, InvalidRequestError), then
  proposed to the shard's group if this node leads it, and answered from the apply result
  (version / existed) once committed on a quorum and applied. A follower of the shard hands
  the write to the leader in a Raft PROPOSE message on the peer stream and answers once its
  own replica applies it (group.py says how a lost PROPOSE is answered). A node holding no
  replica of the shard, or cut from its leader by the fault filter, forwards the request to
  the leader through the injected `Forwarder`.
- get / scan, linearizable: ReadIndex (Raft thesis §6.4) on this node's replica of the shard,
  leader or follower (a follower's request travels to the leader inside the Raft stream, so
  the fault filter covers it), then wait for applied >= read index and read locally. A node
  that holds no replica of the shard forwards. Stale: the local replica's state as is.
- scan: every shard is scanned concurrently (each up to `limit` items, in key order), and the
  results are merged in key order by `merge_shard_scans`, which stops at the smallest last key
  of the parts that came back cut short (by `limit` or by a forwarded answer's byte bound), so
  a client resuming after the last key returned never skips the rest of a short shard.

Forwarding rule: a forwarded request is served by the receiver with the `local_*` methods,
which never forward again (they raise UnavailableError with the leader hint), so a request
cannot bounce between two nodes with different views of the leader. The forwarding node
follows one hint.

Transactions: `txn` runs the coordinator (txn_coordinator.py) on this node; each shard's
part is a transaction command run on that shard's leader by `run_txn_command` (proposed here
when this node leads the shard, else forwarded with `forward_txn_command` and served there by
`local_txn_command`, which never forwards again). A put or delete whose key is locked by a
prepared transaction gets a CONFLICT apply result: it waits the lock out (or resolves it once
expired, txn_resolver.py) and is proposed again. A linearizable get or scan that finds a
write-locked key waits the same way before answering: that transaction may already be
committed on its home shard, and answering the old value would then be a stale read.

Errors: UnavailableError(leader_hint) when no leader is known or reachable, and
DeadlineExceededError when the deadline passes; nothing waits longer than its deadline. A
replica that knows no leader (an election, a transfer) first waits up to one election timeout
for one (`_await_leader`), so brief elections do not reach clients as 503s.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import logging
import random
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from typing import Any, Final, Protocol, TypeVar, runtime_checkable

from minikv_core.cluster import limits as cluster_limits
from minikv_core.cluster.commands import DeleteCommand, PutCommand, TxnCommand
from minikv_core.cluster.config import NodeConfig
from minikv_core.cluster.group import ShardGroup
from minikv_core.cluster.host import MultiRaftHost, TransportFactory
from minikv_core.cluster.leadership import hand_over
from minikv_core.cluster.maintenance import Maintenance
from minikv_core.cluster.service import (
    AdminDocument,
    Consistency,
    DeadlineExceededError,
    FaultSpec,
    InvalidRequestError,
    NotFoundError,
    ReadinessReport,
    ScanItem,
    ScanRequest,
    ScanResult,
    ServiceError,
    SessionExpiredError,
    TooLargeError,
    UnavailableError,
    VersionedValue,
)
from minikv_core.cluster.sessions import WriteSession
from minikv_core.cluster.shard_map import META_GROUP_ID, ShardMap, shard_for_key
from minikv_core.cluster.state_machine import ApplyResult, ResultKind
from minikv_core.cluster.txn import SYSTEM_KEY_PREFIX, TxnRequest, TxnResponse, validate
from minikv_core.cluster.txn_codec import (
    Blocker,
    Conflict,
    TxnBody,
    TxnCodecError,
    TxnResult,
    decode_body,
    decode_result,
    encode_body,
    encode_result,
)
from minikv_core.cluster.txn_coordinator import TxnCoordinator, fault_from_env
from minikv_core.cluster.txn_locks import TxnLockTable
from minikv_core.cluster.txn_record_gc import RecordCollector
from minikv_core.cluster.txn_resolver import wait_out
from minikv_core.net.fault import FaultFilter, FaultRules, FaultRulesError
from minikv_core.net.peer_transport import FEATURE_PROPOSE
from minikv_core.raft import NONE, NotLeaderError, ProposalDroppedError, Role
from minikv_core.storage.engine import EngineOptions
from minikv_core.storage.errors import CorruptionError, StorageError

logger = logging.getLogger(__name__)

T = TypeVar("T")

SCAN_LIMIT_MAX: Final = 10_000
"""Items one scan may ask for (the API cuts pages by bytes too)."""
STOP_GRACE_S_MAX: Final = 10.0
"""`stop()` waits at most this long for requests in flight to finish."""
LEADER_POLL_S: Final = 0.01
"""How often a request waiting for its shard to have a leader looks again (`_await_leader`;
only while none is known: an election takes a few hundred milliseconds)."""


def _leaderless(group: ShardGroup, *, writes: bool) -> bool:
    """No leader known here, or (for a write) this leader refusing proposals while it hands
    leadership over (thesis §3.10; reads are still served then)."""
    if group.leader_id == NONE:
        return True
    return writes and group.raw.lead_transferee != NONE


class Forwarder(Protocol):
    """Sends a request for a shard this node does not lead to the node that does.

    Implemented over gRPC by `minikv_core.net` (the KV service of the target node, which
    serves it with `Node.local_*`). Every method must:
    - consult the node's fault filter (a partitioned node cannot forward: UnavailableError);
    - give up by `deadline` (DeadlineExceededError);
    - raise the target's ServiceError as is (NotFoundError for a missing key on get,
      UnavailableError with the leader hint the target gave, ...).
    """

    async def forward_get(
        self, node_id: int, key: bytes, consistency: Consistency, deadline: float
    ) -> VersionedValue: ...

    async def forward_put(
        self,
        node_id: int,
        key: bytes,
        value: bytes,
        deadline: float,
        session: WriteSession | None = None,
    ) -> int: ...

    async def forward_delete(
        self, node_id: int, key: bytes, deadline: float, session: WriteSession | None = None
    ) -> bool: ...

    async def forward_scan_shard(
        self, node_id: int, shard: int, request: ScanRequest, deadline: float
    ) -> ScanResult:
        """One shard's items (at most request.limit) in key order; `more` if cut."""
        ...

    async def close(self) -> None: ...


@runtime_checkable
class TxnForwarder(Protocol):
    """A Forwarder that can also carry a shard's transaction command to its leader (the gRPC
    forwarder does; a forwarder without it makes cross-node transactions unavailable)."""

    async def forward_txn_command(
        self, node_id: int, shard: int, body: bytes, deadline: float
    ) -> bytes:
        """The encoded `TxnResult` of the encoded `TxnBody`, applied on `node_id`'s shard."""
        ...


ForwarderFactory = Callable[[NodeConfig, FaultFilter], Forwarder]
"""Builds the forwarder once the transport exists (it needs the transport's fault filter)."""


class Node:
    """One node: `Node(config, ...)`, `await start()`, serve `NodeService`, `await stop()`.

    All methods run on the event loop that started the node.
    """

    def __init__(
        self,
        config: NodeConfig,
        *,
        transport_factory: TransportFactory | None = None,
        forwarder_factory: ForwarderFactory | None = None,
        engine_options: EngineOptions | None = None,
        join_map: ShardMap | None = None,
    ) -> None:
        """`join_map`: the node joins a running cluster (MultiRaftHost explains)."""
        self.config = config
        self.host = MultiRaftHost(
            config,
            transport_factory=transport_factory,
            engine_options=engine_options,
            join_map=join_map,
        )
        self._forwarder_factory = forwarder_factory
        self.forwarder: Forwarder | None = None
        self._accepting = False
        self._stopped = False
        self._in_flight = 0
        # Client-facing requests accepted (forwarded halves are not counted again), so a
        # dashboard summing every node's numbers sees the cluster's read and write rate.
        self._reads = 0
        self._writes = 0
        self._drained = asyncio.Event()
        self._drained.set()
        # A leader's own proposals are matched by (term, index) first, but writes a follower
        # forwards in a PROPOSE are matched by request id alone (group.py), so ids are unique
        # across nodes: the node id above 44 bits of counter (from a random start, which
        # makes logs easier to read; 2^43 ids after it before a carry, never in practice).
        self._request_ids = itertools.count(
            (config.node_id << cluster_limits.REQUEST_ID_NODE_SHIFT)
            | random.SystemRandom().getrandbits(cluster_limits.REQUEST_ID_NODE_SHIFT - 1)
        )
        # ReadIndex contexts: a random incarnation prefix, then a counter. Unique across
        # restarts, so a late answer to a read of a previous incarnation (an older read
        # index) can never complete a read of this one (that would be a stale read).
        self._read_incarnation = random.SystemRandom().getrandbits(64).to_bytes(8, "big")
        self._read_contexts = itertools.count(1)
        self._leader_hints: dict[int, int] = {}
        """Shard -> last leader learned by forwarding (for shards this node does not hold)."""
        self._txn_rng = random.Random(random.SystemRandom().getrandbits(64))
        self.txn_coordinator = TxnCoordinator(self, self._shard_of, self._txn_rng, fault_from_env())
        self.record_collector = RecordCollector(
            self, self._led_txn_tables, self._all_shards, config.txn_record_gc_s
        )
        self._collector_task: asyncio.Task[None] | None = None
        self.wal_damage: list[str] = []
        """Damaged WAL records found by the last `verify` (wal_health.check_wal), cleared by a
        clean check; repair rewrites the WAL of a node that reports some."""
        self.maintenance = Maintenance(self)

    def next_request_id(self) -> int:
        """A fresh id for a command this node proposes (see `_request_ids`)."""
        return next(self._request_ids)

    @property
    def node_id(self) -> int:
        return self.config.node_id

    # --------------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        """Open the data directory (bootstrap or recover), start Raft, transport, forwarder.

        Raises IdentityMismatchError, NodeStartError, TransportError (see MultiRaftHost)."""
        await self.host.start()
        if self._forwarder_factory is not None:
            try:
                self.forwarder = self._forwarder_factory(
                    self.config, self.host.transport.fault_filter
                )
            except BaseException:
                await self.host.stop()
                raise
        self.maintenance.start()
        self._collector_task = asyncio.get_running_loop().create_task(
            self.record_collector.run(), name=f"node{self.node_id}-txn-record-gc"
        )
        self._accepting = True

    async def stop(self) -> None:
        """Stop accepting requests, let those in flight finish (bounded), then stop Raft,
        the transport and the forwarder, flush the engines and close the WAL. Idempotent."""
        if self._stopped:
            return
        self._stopped = True
        self._accepting = False
        if self._in_flight:
            grace_s = min(STOP_GRACE_S_MAX, self.config.request_timeout_s)
            try:
                await asyncio.wait_for(self._drained.wait(), grace_s)
            except TimeoutError:
                logger.warning(
                    "node %d: %d request(s) still in flight after %.1f s; stopping anyway",
                    self.node_id,
                    self._in_flight,
                    grace_s,
                )
        try:
            await self.maintenance.stop()
            if self._collector_task is not None:
                self._collector_task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._collector_task
            await self.txn_coordinator.close()
            await self.host.stop()
        finally:
            if self.forwarder is not None:
                await self.forwarder.close()

    # ------------------------------------------------------------------ plumbing

    async def _serve(self, deadline: float, work: Callable[[], Awaitable[T]]) -> T:
        """Run one request: refuse it while stopped, count it in flight, bound it."""
        if not self._accepting:
            raise UnavailableError(
                f"node {self.node_id} is not serving (starting or stopping)", unapplied=True
            )
        failure = self.host.failure
        if failure is not None:
            raise UnavailableError(f"node {self.node_id} failed: {failure}", unapplied=True)
        if deadline - time.monotonic() <= 0:
            raise DeadlineExceededError("the deadline passed before the request started")
        self._in_flight += 1
        self._drained.clear()
        try:
            return await work()
        finally:
            self._in_flight -= 1
            if not self._in_flight:
                self._drained.set()

    @staticmethod
    async def _wait(future: Awaitable[T], deadline: float, what: str) -> T:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise DeadlineExceededError(f"{what}: the deadline passed")
        try:
            async with asyncio.timeout(remaining):
                return await future
        except TimeoutError:
            raise DeadlineExceededError(f"{what}: the deadline passed") from None

    def _check_key(self, key: bytes, what: str = "key") -> None:
        if not isinstance(key, bytes):
            raise InvalidRequestError(f"the {what} must be bytes")
        if not key:
            raise InvalidRequestError(f"the {what} is empty")
        limit = self.config.key_size_bytes_max
        if len(key) > limit:
            raise TooLargeError(f"the {what} is {len(key)} bytes; the limit is {limit} bytes")
        if key.startswith(SYSTEM_KEY_PREFIX):
            raise InvalidRequestError(
                f"the {what} starts with {SYSTEM_KEY_PREFIX!r}, which is reserved for transactions"
            )

    def _check_value(self, value: bytes) -> None:
        if not isinstance(value, bytes):
            raise InvalidRequestError("the value must be bytes")
        limit = self.config.value_size_bytes_max
        if len(value) > limit:
            raise TooLargeError(f"the value is {len(value)} bytes; the limit is {limit} bytes")

    def _check_scan(self, request: ScanRequest) -> None:
        if isinstance(request.limit, bool) or not isinstance(request.limit, int):
            raise InvalidRequestError("scan limit must be an integer")
        if not 1 <= request.limit <= SCAN_LIMIT_MAX:
            raise InvalidRequestError(f"scan limit must be in 1..{SCAN_LIMIT_MAX}")
        for name in ("prefix", "start", "end"):
            bound = getattr(request, name)
            if not isinstance(bound, bytes):
                raise InvalidRequestError(f"scan {name} must be bytes")
            if len(bound) > self.config.key_size_bytes_max:
                raise TooLargeError(
                    f"scan {name} is {len(bound)} bytes; the key limit is "
                    f"{self.config.key_size_bytes_max} bytes"
                )

    def _shard_of(self, key: bytes) -> int:
        return shard_for_key(key, self.config.shards)

    async def _await_leader(
        self, group: ShardGroup | None, deadline: float, *, writes: bool
    ) -> None:
        """Wait, briefly, until this replica of the shard knows a leader that can serve.

        Elections, leadership transfers and restarts leave a replica without a leader for a
        few hundred milliseconds. Answering 503 then would show every one of them to a curl
        user or a client that does not retry; waiting up to one election timeout (within
        the deadline) hides them. A replica cut off from a majority learns no leader at all
        and still answers 503, one election timeout later. The request goes on either way:
        what it meets then (a leader, or still none) decides its answer."""
        if group is None or not _leaderless(group, writes=writes):
            return
        until = min(deadline, time.monotonic() + self.config.election_timeout_s)
        while _leaderless(group, writes=writes) and time.monotonic() + LEADER_POLL_S < until:
            await asyncio.sleep(LEADER_POLL_S)

    def _leader_target(self, shard: int) -> int:
        """Where to forward a request for a shard this node does not lead."""
        group = self.host.shard_groups.get(shard)
        if group is not None:
            leader = group.leader_id
            if leader == NONE:
                raise UnavailableError(
                    f"shard {shard} has no known leader", leader_hint=0, unapplied=True
                )
            return leader
        hint = self._leader_hints.get(shard)
        if hint:
            return hint
        return self.host.shard_map.shards[shard].preferred_leader

    async def _forward(
        self, shard: int, call: Callable[[Forwarder, int], Awaitable[T]], deadline: float
    ) -> T:
        target = self._leader_target(shard)
        forwarder = self.forwarder
        if target == self.node_id:
            # This node's view changed between the caller's check and now (it just won or
            # lost an election): let the client retry rather than forward to itself.
            raise UnavailableError(
                f"shard {shard}: leadership is changing on node {self.node_id}",
                leader_hint=0,
                retry_after_s=0.05,
                unapplied=True,
            )
        if forwarder is None:
            raise UnavailableError(
                f"node {self.node_id} does not lead shard {shard} and cannot forward",
                leader_hint=target,
                unapplied=True,
            )
        tried = {target}
        first: UnavailableError | None = None
        while True:
            try:
                result = await call(forwarder, target)
                break
            except UnavailableError as error:
                if not error.unapplied or deadline - time.monotonic() <= 0:
                    raise  # the call may have taken effect there: sent again, it could land twice
                first = first or error  # what the leader's own failure said: the clearest
                hint = error.leader_hint
                if hint in (0, target):
                    # `target` is unreachable or knows no leader. A hint naming it is stale:
                    # it was served in this node's shard map, so clients kept dialling a dead
                    # leader for a minute after the shard had elected another (a chaos run).
                    # A replica of the shard knows the leader, or is it.
                    if self._leader_hints.get(shard) == target:
                        del self._leader_hints[shard]
                    hint = self._untried_replica(shard, tried)
                if hint in (0, self.node_id) or hint in tried:
                    raise first from None
                tried.add(hint)
                target = hint
        if shard not in self.host.shard_groups:
            self._leader_hints[shard] = target
        return result

    def _untried_replica(self, shard: int, tried: set[int]) -> int:
        """Another replica of `shard` to forward to (0: none left)."""
        replicas = self.host.shard_map.shards[shard].replicas
        return next((r for r in replicas if r not in tried and r != self.node_id), 0)

    def _writes_here(self, group: ShardGroup | None, shard: int, *, local: bool) -> bool:
        """Whether this node proposes the write (else it forwards it in a unary call).

        A write forwarded here by a peer (`local`) is served only by the leader: a follower
        would hand it on in a PROPOSE, and a lost one could hold the peer's call to its
        deadline where the peer can follow the leader hint at once."""
        if not local:
            return self._proposes_here(group)
        if group is not None and not group.is_leader:
            raise UnavailableError(
                f"node {self.node_id} does not lead shard {shard}",
                leader_hint=group.leader_id,
                unapplied=True,
            )
        return True

    def _proposes_here(self, group: ShardGroup | None) -> bool:
        """Whether a write goes through this node's replica of its shard: as the leader, or as
        a follower that hands it to the leader in a Raft PROPOSE message and answers once it
        applies it (group.py) — one message on the peer stream instead of a unary call to the
        leader and back, which cost each side more CPU than the write itself.

        Not when the leader did not advertise PROPOSE at the stream handshake (an older node
        would drop the frame), nor when the fault filter cuts this node from the leader in
        either direction or drops a share of what it sends: the unary path then refuses at
        once (drop_to, a lost call) or still answers (drop_from), where a PROPOSE would be
        lost or its commit never seen, and the client would wait out its deadline (a PROPOSE
        is never resent: a duplicate could apply after a later write to the same key)."""
        if group is None:
            return False
        if group.is_leader:
            return True
        leader = group.leader_id
        if leader == NONE:
            return False
        transport = self.host.transport
        if not transport.peer_supports(leader, FEATURE_PROPOSE):
            return False  # an older leader, or no stream to it yet: the unary call works
        rules = transport.fault_filter.rules
        return not rules.loss and leader not in rules.drop_to and leader not in rules.drop_from

    def _shard_group(self, shard: int) -> ShardGroup:
        group = self.host.shard_groups.get(shard)
        if group is None:
            hint = (
                self._leader_hints.get(shard) or self.host.shard_map.shards[shard].preferred_leader
            )
            raise UnavailableError(
                f"node {self.node_id} holds no replica of shard {shard}",
                leader_hint=hint,
                unapplied=True,
            )
        return group

    # ------------------------------------------------------------------------ writes

    async def put(
        self, key: bytes, value: bytes, deadline: float, session: WriteSession | None = None
    ) -> int:
        self._check_key(key)
        self._check_value(value)
        self._writes += 1
        return await self._serve(
            deadline, lambda: self._put(key, value, deadline, session, local=False)
        )

    async def local_put(
        self, key: bytes, value: bytes, deadline: float, session: WriteSession | None = None
    ) -> int:
        """A put forwarded by another node: served here or refused with the leader hint."""
        self._check_key(key)
        self._check_value(value)
        return await self._serve(
            deadline, lambda: self._put(key, value, deadline, session, local=True)
        )

    async def _put(
        self,
        key: bytes,
        value: bytes,
        deadline: float,
        session: WriteSession | None,
        *,
        local: bool,
    ) -> int:
        shard = self._shard_of(key)
        group = self.host.shard_groups.get(shard)
        await self._await_leader(group, deadline, writes=True)
        if self._writes_here(group, shard, local=local):
            command = PutCommand(key, value, next(self._request_ids), session)
            result = await self._propose(self._shard_group(shard), command, deadline)
            return result.version
        return await self._forward(
            shard, lambda f, node: f.forward_put(node, key, value, deadline, session), deadline
        )

    async def delete(
        self, key: bytes, deadline: float, session: WriteSession | None = None
    ) -> bool:
        self._check_key(key)
        self._writes += 1
        return await self._serve(
            deadline, lambda: self._delete(key, deadline, session, local=False)
        )

    async def local_delete(
        self, key: bytes, deadline: float, session: WriteSession | None = None
    ) -> bool:
        """A delete forwarded by another node: served here or refused with the leader hint."""
        self._check_key(key)
        return await self._serve(deadline, lambda: self._delete(key, deadline, session, local=True))

    async def _delete(
        self, key: bytes, deadline: float, session: WriteSession | None, *, local: bool
    ) -> bool:
        shard = self._shard_of(key)
        group = self.host.shard_groups.get(shard)
        await self._await_leader(group, deadline, writes=True)
        if self._writes_here(group, shard, local=local):
            command = DeleteCommand(key, next(self._request_ids), session)
            result = await self._propose(self._shard_group(shard), command, deadline)
            return result.existed
        return await self._forward(
            shard, lambda f, node: f.forward_delete(node, key, deadline, session), deadline
        )

    async def _propose(
        self, group: ShardGroup, command: PutCommand | DeleteCommand, deadline: float
    ) -> ApplyResult:
        """Propose a plain write; when it meets a transaction's lock (CONFLICT, nothing
        applied), wait the lock out or resolve it, and propose it again (a new request id:
        the refused entry is done with)."""
        attempt = 0
        while True:
            result = await self._propose_once(group, command, deadline)
            if result.kind is ResultKind.REJECTED:
                raise InvalidRequestError(f"the write was rejected: {result.error}")
            if result.kind is ResultKind.EXPIRED:
                raise SessionExpiredError(f"shard {group.shard}: {result.error}")
            if result.kind is not ResultKind.CONFLICT:
                assert result.kind in (ResultKind.PUT, ResultKind.DELETE), result
                return result
            assert isinstance(result.txn, Conflict), result
            await self._wait_out(result.txn.blockers, group.shard, deadline, attempt)
            attempt += 1
            if isinstance(command, PutCommand):
                command = PutCommand(
                    command.key, command.value, next(self._request_ids), command.session
                )
            else:
                command = DeleteCommand(command.key, next(self._request_ids), command.session)

    async def _propose_once(
        self, group: ShardGroup, command: PutCommand | DeleteCommand | TxnCommand, deadline: float
    ) -> ApplyResult:
        future = group.enqueue(command)
        self.host.note_queued(group)
        try:
            return await self._wait(future, deadline, f"write to shard {group.shard}")
        except DeadlineExceededError:
            group.forget_proposals()
            raise

    async def _wait_out(
        self, blockers: Sequence[Blocker], shard: int, deadline: float, attempt: int
    ) -> None:
        await wait_out(blockers, shard, self, deadline, attempt=attempt, rng=self._txn_rng)

    # ------------------------------------------------------------------- transactions

    async def txn(self, request: TxnRequest, deadline: float) -> TxnResponse:
        validate(
            request,
            key_size_bytes_max=self.config.key_size_bytes_max,
            value_size_bytes_max=self.config.value_size_bytes_max,
        )
        self._writes += 1
        # No FINISH may be proposed after the records it could overtake are forgotten
        # (txn_record_gc.py): the transaction ends within half the collector's age.
        deadline = min(deadline, time.monotonic() + self.config.txn_record_gc_s / 2)
        return await self._serve(deadline, lambda: self.txn_coordinator.execute(request, deadline))

    def _led_txn_tables(self) -> dict[int, TxnLockTable]:
        return {
            shard: group.state_machine.txn
            for shard, group in self.host.shard_groups.items()
            if group.is_leader
        }

    def _all_shards(self) -> list[int]:
        return [assignment.shard for assignment in self.host.shard_map.shards]

    async def run_txn_command(self, shard: int, body: TxnBody, deadline: float) -> TxnResult:
        """Apply one transaction command on shard `shard` through its leader (txn_resolver's
        ShardRunner): proposed here when this node leads it, else forwarded."""
        group = self.host.shard_groups.get(shard)
        await self._await_leader(group, deadline, writes=True)
        if group is not None and group.is_leader:
            return await self._propose_txn(group, body, deadline)
        forwarder = self.forwarder
        if not isinstance(forwarder, TxnForwarder):
            raise UnavailableError(
                f"node {self.node_id} does not lead shard {shard} and cannot forward "
                "transaction commands",
                unapplied=True,
            )
        data = encode_body(body)

        async def call(_: Forwarder, node: int) -> bytes:
            return await forwarder.forward_txn_command(node, shard, data, deadline)

        answer = await self._forward(shard, call, deadline)
        try:
            return decode_result(answer)
        except TxnCodecError as error:
            raise UnavailableError(f"shard {shard} answered a malformed result: {error}") from None

    async def local_txn_command(self, shard: int, data: bytes, deadline: float) -> bytes:
        """A transaction command forwarded by another node: proposed on this node's replica
        (refused with the leader hint when it does not lead), never forwarded again."""
        if isinstance(shard, bool) or not 0 <= shard < self.config.shards:
            raise InvalidRequestError(f"shard must be in 0..{self.config.shards - 1}")
        try:
            body = decode_body(data)
        except TxnCodecError as error:
            raise InvalidRequestError(f"malformed transaction command: {error}") from None

        async def work() -> bytes:
            return encode_result(await self._propose_txn(self._shard_group(shard), body, deadline))

        return await self._serve(deadline, work)

    async def _propose_txn(self, group: ShardGroup, body: TxnBody, deadline: float) -> TxnResult:
        result = await self._propose_once(
            group, TxnCommand(body, next(self._request_ids)), deadline
        )
        assert result.kind is ResultKind.TXN and result.txn is not None, result
        return result.txn

    # ------------------------------------------------------------------------- reads

    async def get(self, key: bytes, consistency: Consistency, deadline: float) -> VersionedValue:
        self._check_key(key)
        self._reads += 1
        return await self._serve(deadline, lambda: self._get(key, consistency, deadline, False))

    async def local_get(
        self, key: bytes, consistency: Consistency, deadline: float
    ) -> VersionedValue:
        """A get forwarded by another node: served from this node's replica."""
        self._check_key(key)
        return await self._serve(deadline, lambda: self._get(key, consistency, deadline, True))

    async def _get(
        self, key: bytes, consistency: Consistency, deadline: float, local: bool
    ) -> VersionedValue:
        shard = self._shard_of(key)
        group = self.host.shard_groups.get(shard)
        if group is None and not local:
            return await self._forward(
                shard, lambda f, node: f.forward_get(node, key, consistency, deadline), deadline
            )
        group = self._shard_group(shard)
        if consistency is Consistency.LINEARIZABLE:
            await self._read_barrier(group, deadline)
            attempt = 0
            while (blocker := group.state_machine.txn.read_blocker(key)) is not None:
                await self._wait_out([blocker], shard, deadline, attempt)
                attempt += 1
        try:
            found = group.state_machine.get(key)
        except CorruptionError as error:
            raise self._corrupt_replica(group, error) from None
        if found is None:
            raise NotFoundError("the key does not exist")
        return VersionedValue(found.value, found.version)

    def _corrupt_replica(self, group: ShardGroup, error: CorruptionError) -> UnavailableError:
        """A read found this replica's data damaged (a table block failing its CRC): mark the
        replica corrupt, as `verify` would (status shows it, `repair` rebuilds it), hand the
        leadership to another voter if it leads, and answer UnavailableError naming the
        cause, so that a client sends the read elsewhere. Before, the error was INTERNAL on
        every attempt at the same leader until the deadline, the client then advised a longer
        timeout, and nothing changed until someone ran verify."""
        shard = group.shard
        if not group.corrupt:
            group.corrupt = f"a read failed: {error}"[:500]
            logger.error(
                "node %d: shard %d's replica is corrupt (%s); `minikv cluster repair` rebuilds "
                "it from the others",
                self.node_id,
                shard,
                error,
            )
        hint = self.host.hand_off_leadership(group)
        return UnavailableError(
            f"shard {shard}'s replica on node {self.node_id} is corrupt ({error}); ask another "
            "replica, and run `minikv cluster repair` to rebuild this one",
            leader_hint=hint if hint != self.node_id else 0,
            retry_after_s=0.2,
            unapplied=True,
        )

    async def _read_barrier(self, group: ShardGroup, deadline: float) -> None:
        """ReadIndex (thesis §6.4): learn the leader's commit index once it has confirmed its
        leadership with a quorum, then wait until this replica has applied it. After this,
        the local state reflects every write acknowledged before the read began. A leader
        holding a lease knows that index without a heartbeat round (thesis §6.4.1; the
        clock assumption is on MultiRaftHost.lease_read_index)."""
        index = self.host.lease_read_index(group)
        if index is None:
            await self._await_leader(group, deadline, writes=False)
            context = self._read_incarnation + next(self._read_contexts).to_bytes(8, "big")
            future = group.read_index(context)
            self.host.wake_group(group)
            try:
                index = await self._wait(future, deadline, f"read index of shard {group.shard}")
            finally:
                group.forget_read(context)
        applied = group.wait_applied(index)
        if applied is not None:
            await self._wait(applied, deadline, f"apply of shard {group.shard}")

    async def scan(self, request: ScanRequest, deadline: float) -> ScanResult:
        self._check_scan(request)
        self._reads += 1
        return await self._serve(deadline, lambda: self._scan(request, deadline))

    async def local_scan_shard(
        self, shard: int, request: ScanRequest, deadline: float
    ) -> ScanResult:
        """One shard's part of a scan, forwarded by another node: served from this replica."""
        self._check_scan(request)
        if isinstance(shard, bool) or not 0 <= shard < self.config.shards:
            raise InvalidRequestError(f"shard must be in 0..{self.config.shards - 1}")
        return await self._serve(deadline, lambda: self._scan_shard(shard, request, deadline, True))

    async def _scan(self, request: ScanRequest, deadline: float) -> ScanResult:
        parts: list[ScanResult] = []
        try:
            async with asyncio.TaskGroup() as tasks:
                running = [
                    tasks.create_task(self._scan_shard(shard, request, deadline, False))
                    for shard in range(self.config.shards)
                ]
        except BaseExceptionGroup as group:
            raise _first_service_error(group) from None
        parts = [task.result() for task in running]
        for shard, part in enumerate(parts):
            if part.more and not part.items:
                # A part cut before its first item gives no resume point: merging it would
                # either skip that shard or answer an empty page with `more` forever.
                raise UnavailableError(
                    f"shard {shard} answered a scan part cut short with no items; retry"
                )
        return merge_shard_scans(parts, request.limit)

    async def _scan_shard(
        self, shard: int, request: ScanRequest, deadline: float, local: bool
    ) -> ScanResult:
        group = self.host.shard_groups.get(shard)
        if group is None and not local:
            return await self._forward(
                shard,
                lambda f, node: f.forward_scan_shard(node, shard, request, deadline),
                deadline,
            )
        group = self._shard_group(shard)
        linearizable = request.consistency is Consistency.LINEARIZABLE
        if linearizable:
            await self._read_barrier(group, deadline)
        attempt = 0
        while True:
            try:
                rows = group.state_machine.scan(
                    request.start or None,
                    request.end or None,
                    request.prefix or None,
                    request.limit + 1,
                )
            except CorruptionError as error:
                raise self._corrupt_replica(group, error) from None
            if not linearizable or not group.state_machine.txn.write_locks:
                break
            last = rows[request.limit - 1].key if len(rows) > request.limit else None
            blockers = [
                blocker
                for key, blocker in group.state_machine.txn.write_locked_keys()
                if _in_scan(key, request, last)
            ]
            if not blockers:
                break
            await self._wait_out(blockers, shard, deadline, attempt)
            attempt += 1
        items = tuple(ScanItem(row.key, row.value, row.version) for row in rows[: request.limit])
        return ScanResult(items, len(rows) > request.limit)

    # ------------------------------------------------------------------------- admin

    def status(self) -> AdminDocument:
        host = self.host
        transport = host.transport_or_none
        groups: list[dict[str, Any]] = []
        for group_id in sorted(host.groups):
            group = host.groups[group_id]
            document = group.status()
            document["shard"] = None if group_id == META_GROUP_ID else group_id - 1
            status = group.raw.status()
            if status.role == Role.LEADER:
                document["peers"] = [
                    {
                        "node_id": peer.node_id,
                        "match": peer.match,
                        "next": peer.next,
                        "state": peer.state.name.lower(),
                        "learner": peer.is_learner,
                        "recent_active": peer.recent_active,
                        "reachable": peer.node_id == self.node_id
                        or (transport is not None and transport.is_connected(peer.node_id)),
                    }
                    for peer in status.peers
                ]
            groups.append(document)
        wal: dict[str, Any] = {}
        if host.log_or_none is not None:
            stats = host.log.stats
            segments = host.log.wal.segments()
            wal = {
                "directory": str(self.config.wal_dir),
                "damage": list(self.wal_damage),
                "segments": len(segments),
                "bytes": sum(segment.size_bytes for segment in segments),
                "used_bytes": sum(segment.used_bytes for segment in segments),
                "appends": stats.appends,
                "records": stats.records,
                "bytes_written": stats.bytes_written,
                "syncs": stats.syncs,
                "sync_seconds_total": stats.sync_seconds_total,
                "sync_seconds_max": stats.sync_seconds_max,
                "rotations": stats.rotations,
            }
        counters = host.counters
        readiness = self.readiness()
        body: dict[str, Any] = {
            "node_id": self.node_id,
            "cluster_id": self.config.cluster_id,
            "grpc_address": self.config.grpc_address,
            "http_address": self.config.http_address,
            "uptime_s": time.monotonic() - host.started_at if host.started_at else 0.0,
            "ready": readiness.ready,
            "not_ready_reason": readiness.reason,
            "failure": host.failure,
            "shards": self.config.shards,
            "replicas": self.config.replicas,
            "epoch": host.shard_map.epoch,
            "groups": groups,
            "wal": wal,
            "host": {
                "rounds": counters.rounds,
                "readies": counters.readies,
                "early_applies": counters.early_applies,
                "frames_received": counters.frames_received,
                "messages_received": counters.messages_received,
                "messages_unknown_group": counters.messages_unknown_group,
                "messages_failed": counters.messages_failed,
                "messages_sent": counters.messages_sent,
                "compactions": counters.compactions,
                "truncations": counters.truncations,
                "segments_deleted": counters.segments_deleted,
                "transfers_started": counters.transfers_started,
                "maintenance_runs": counters.maintenance_runs,
                "snapshots_received": counters.snapshots_received,
                "lease_reads": counters.lease_reads,
                "votes_ignored_after_restart": counters.votes_ignored_after_restart,
                "replicas_created": counters.replicas_created,
                "replicas_dropped": counters.replicas_dropped,
                "requests_in_flight": self._in_flight,
            },
            "requests": {"reads": self._reads, "writes": self._writes},
            "txn": {
                "coordinator": self.txn_coordinator.stats.document(),
                "record_collector": self.record_collector.document(),
                "shards": {
                    str(shard): group.state_machine.txn.status()
                    for shard, group in sorted(host.shard_groups.items())
                },
            },
            "fault": transport.fault_filter.rules.to_dict() if transport is not None else {},
        }
        return AdminDocument(body)

    def _leaders(self) -> dict[int, int]:
        leaders = dict(self._leader_hints)
        for shard, group in self.host.shard_groups.items():
            leaders[shard] = group.leader_id
        return leaders

    def shard_map(self) -> AdminDocument:
        return AdminDocument(self.host.shard_map.document(self._leaders()))

    def wal(self) -> AdminDocument:
        host = self.host
        if host.log_or_none is None:
            return AdminDocument({"segments": []})
        segments = []
        for segment in host.log.wal.segments():
            described = host.segment_entries.get(segment.sequence)
            groups = (
                {
                    str(group_id): {"first_index": first, "last_index": last}
                    for group_id, (first, last) in sorted(described.items())
                }
                if described is not None
                else None
            )
            firsts = [first for first, _ in described.values()] if described else []
            lasts = [last for _, last in described.values()] if described else []
            segments.append(
                {
                    "name": segment.name,
                    "sequence": segment.sequence,
                    "size_bytes": segment.size_bytes,
                    "used_bytes": segment.used_bytes,
                    "records": segment.record_count,
                    "state": "active" if segment.active else "sealed",
                    "first_index": min(firsts) if firsts else None,
                    "last_index": max(lasts) if lasts else None,
                    "groups": groups,
                }
            )
        stats = host.log.stats
        return AdminDocument(
            {
                "directory": str(self.config.wal_dir),
                "segments": segments,
                "syncs": stats.syncs,
                "appends": stats.appends,
                "bytes_written": stats.bytes_written,
                "note": "first/last index per group are known for entries written since "
                "this node started (null: written before)",
            }
        )

    def sstables(self) -> AdminDocument:
        shards = []
        for shard, group in sorted(self.host.shard_groups.items()):
            engine = group.state_machine.engine
            try:
                stats = engine.stats()
                tables = engine.tables()
            except StorageError as error:
                shards.append({"shard": shard, "error": str(error)})
                continue
            shards.append(
                {
                    "shard": shard,
                    "applied_index": stats.applied_index,
                    "durable_applied_index": stats.durable_applied_index,
                    "memtable_entries": stats.memtable_entries,
                    "memtable_bytes": stats.memtable_bytes,
                    # Live records of the shard's own state (transactions, client sessions)
                    # among the entries: not client keys, so a key count leaves them out.
                    "system_records": group.state_machine.system_records(),
                    "runs": stats.runs,
                    "table_bytes": stats.table_bytes,
                    "compactions": stats.compactions,
                    "write_amplification": stats.write_amplification,
                    "tables": [
                        {
                            "name": table.name,
                            "level": table.level,
                            "size_bytes": table.size_bytes,
                            "keys": table.key_count,
                            "tombstones": table.tombstone_count,
                            "smallest": table.smallest.decode("utf-8", "backslashreplace"),
                            "largest": table.largest.decode("utf-8", "backslashreplace"),
                        }
                        for table in tables
                    ],
                }
            )
        return AdminDocument({"shards": shards})

    def readiness(self) -> ReadinessReport:
        host = self.host
        if host.failure is not None:
            return ReadinessReport(False, f"the node failed: {host.failure}")
        if not self._accepting or not host.running:
            return ReadinessReport(False, "the node is starting or stopping")
        for group_id in sorted(host.groups):
            if host.groups[group_id].leader_id == NONE:
                what = "the meta group" if group_id == META_GROUP_ID else f"shard {group_id - 1}"
                return ReadinessReport(False, f"{what} has no known leader")
        return ReadinessReport(True)

    def set_fault(self, fault: FaultSpec) -> None:
        try:
            rules = FaultRules(
                drop_to=fault.drop_to,
                drop_from=fault.drop_from,
                delay_ms=fault.delay_ms,
                loss=fault.loss,
            )
        except FaultRulesError as error:
            raise InvalidRequestError(str(error)) from None
        # A typo (`drop_to: [4]` on a 3-node cluster) would cut nothing and look like a
        # partition that does not work. Nodes that left stay allowed: a tool's list of
        # nodes may still hold one, and a rule for it is harmless.
        shard_map = self.host.shard_map
        members = set(shard_map.nodes)
        unknown = sorted({*fault.drop_to, *fault.drop_from} - members - set(shard_map.retired))
        if unknown:
            raise InvalidRequestError(
                f"node {', '.join(map(str, unknown))}: not a member of this cluster "
                f"(members: {', '.join(map(str, sorted(members)))}); a rule for it cuts nothing"
            )
        self.host.transport.fault_filter.set(rules)

    def clear_fault(self) -> None:
        self.host.transport.fault_filter.clear()

    def _check_shards(self, shards: Sequence[int] | None) -> list[int]:
        if shards is None:
            return sorted(self.host.shard_groups)
        checked = []
        for shard in shards:
            if isinstance(shard, bool) or not isinstance(shard, int):
                raise InvalidRequestError(f"shard must be an integer, got {shard!r}")
            if not 0 <= shard < self.config.shards:
                raise InvalidRequestError(
                    f"shard {shard} does not exist (shards are 0..{self.config.shards - 1})"
                )
            if shard not in self.host.shard_groups:
                raise InvalidRequestError(f"node {self.node_id} holds no replica of shard {shard}")
            checked.append(shard)
        return sorted(set(checked))

    async def transfer_leader(self, shard: int, target_node: int, deadline: float) -> None:
        """Move shard `shard`'s leadership to `target_node` (thesis §3.10) and wait until it
        leads (as this node sees it)."""
        (shard,) = self._check_shards([shard])
        group = self.host.shard_groups[shard]
        if target_node not in group.raw.conf_state.voters:
            raise InvalidRequestError(
                f"node {target_node} is not a voter of shard {shard} "
                f"(voters: {list(group.raw.conf_state.voters)})"
            )

        async def work() -> None:
            try:
                await hand_over(
                    group,
                    target_node,
                    wake=self.host.wake,
                    tick_s=self.config.tick_ms / 1000.0,
                    retry_s=self.config.election_timeout_s,
                    deadline=deadline,
                    what=f"shard {shard}",
                )
            except NotLeaderError:
                raise UnavailableError(
                    f"shard {shard} has no known leader", leader_hint=0
                ) from None
            except ProposalDroppedError as error:
                raise InvalidRequestError(str(error)) from None

        await self._serve(deadline, work)
        # The transfer sticks across restarts only once the map prefers the new leader.
        self.maintenance.record_preferred_leader(shard, target_node)

    async def snapshot(self, shards: Sequence[int] | None, deadline: float) -> AdminDocument:
        """Compact the given shards' logs now (engine flush, log snapshot, WAL truncation)."""
        chosen = self._check_shards(shards)

        async def work() -> AdminDocument:
            done = await self._wait(
                self.host.compact_logs(chosen), deadline, "snapshot of the shard logs"
            )
            return AdminDocument(
                {
                    "snapshots": [{"shard": s, "index": index} for s, index in done],
                    "wal_segments": len(self.host.log.wal.segments()),
                }
            )

        return await self._serve(deadline, work)

    async def compact(self, shards: Sequence[int] | None, deadline: float) -> AdminDocument:
        """Merge every sorted run of the given shards' engines into one (a thread each)."""
        chosen = self._check_shards(shards)

        async def work() -> AdminDocument:
            results = []
            for shard in chosen:
                engine = self.host.shard_groups[shard].state_machine.engine
                before = len(engine.tables())
                await self._wait(asyncio.to_thread(engine.compact), deadline, f"compact {shard}")
                results.append(
                    {"shard": shard, "tables_before": before, "tables_after": len(engine.tables())}
                )
            return AdminDocument({"compacted": results})

        return await self._serve(deadline, work)


def _in_scan(key: bytes, request: ScanRequest, last: bytes | None) -> bool:
    """Whether a scan page ending at `last` (None: the whole range) covers `key`."""
    if request.prefix and not key.startswith(request.prefix):
        return False
    if request.start and key < request.start:
        return False
    if request.end and key >= request.end:
        return False
    return last is None or key <= last


def merge_shard_scans(
    parts: Sequence[ScanResult], limit: int, *, reverse: bool = False
) -> ScanResult:
    """Merge per-shard scan parts (each in key order) into one page of at most `limit` items.

    Why the cut: a part marked `more` holds only a prefix of its shard's range, ending at its
    last key L. Keys of other shards past L may be returned only if the short shard's keys up
    to them were returned too, which is unknown past L. So the page stops at the smallest L
    among the cut parts (the largest for `reverse`, whose parts run in descending order).
    Invariant protected: every key <= the page's last key (>= for `reverse`) in every shard
    is in the page, so resuming from last key + b"\\x00" (reverse: end = last key) sees each
    key exactly once.

    `more` is set when any part was cut or the merge exceeded `limit`. A cut part must hold at
    least one item (ValueError otherwise): it is the only resume point that part gives.
    """
    if limit < 1:
        raise ValueError(f"scan limit must be at least 1, got {limit}")
    bound: bytes | None = None
    for index, part in enumerate(parts):
        if not part.more:
            continue
        if not part.items:
            raise ValueError(f"scan part {index} is cut short (`more`) but holds no items")
        last = part.items[-1].key
        if bound is None or (last > bound if reverse else last < bound):
            bound = last
    merged_all: Iterator[ScanItem] = heapq.merge(
        *(part.items for part in parts), key=lambda item: item.key, reverse=reverse
    )
    if bound is not None:
        stop = bound
        merged_all = itertools.takewhile(
            (lambda item: item.key >= stop) if reverse else (lambda item: item.key <= stop),
            merged_all,
        )
    merged = list(itertools.islice(merged_all, limit + 1))
    more = bound is not None or len(merged) > limit
    return ScanResult(tuple(merged[:limit]), more)


def _first_service_error(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The error a scan reports when shards failed: the first service error (deadline and
    unavailability first, as the most actionable), else the first error."""
    errors: list[BaseException] = []

    def flatten(exception: BaseException) -> None:
        if isinstance(exception, BaseExceptionGroup):
            for inner in exception.exceptions:
                flatten(inner)
        else:
            errors.append(exception)

    flatten(group)
    for kind in (DeadlineExceededError, UnavailableError, ServiceError):
        for error in errors:
            if isinstance(error, kind):
                return error
    return errors[0]
