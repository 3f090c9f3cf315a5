"""The multi-raft host: every Raft group of one node, driven by one loop over one WAL.

DESIGN "A write, end to end", step 3, is this module's driver loop. Each iteration:

1. tick every group once if a tick is due (the ticker task marks it every `tick_ms`);
2. apply queued log compactions (snapshot marks) and truncate the WAL when possible;
3. collect the Ready of every group that may have one: only groups that got an input since
   they were last asked (a frame, a proposal, a read) or had a Ready last round, and every
   group after a tick (asking costs a leader a walk over its followers' progress);
4. send a leader's appends and heartbeats at once, before its own fsync (thesis §10.2.1;
   `_route_messages` says why that is safe); apply right away the committed entries that
   were durable before this round (all of them on a leader; see Group.apply_entries), so
   their clients do not wait for this fsync. In a round with no new leader entry (the one
   that learns a commit) the apply comes first: woken tasks run in order, so the clients'
   answers then leave before the commit broadcast's peer writes;
5. persist ALL Readies with ONE `NodeRaftLog.persist_async` (one write + one fdatasync) - on
   the WAL's thread when a leader's new entries are in the round, so client writes keep
   arriving meanwhile and form the next batch; otherwise right here, blocking the loop for
   the sync, which costs less than the two thread hand-offs. A Ready whose only change is
   its commit index writes nothing (raft_log.py, "Sync policy");
6. send the other messages, batched per peer: ONE `PeerTransport.send(peer, [(group, msg),
   ...])` per peer, so the heartbeats of every group this node leads reach a peer in one frame;
7. apply the remaining committed entries, answer proposals and read states, `advance`.

The loop sleeps until something happens: a tick, an inbound frame (stepped into its group on
arrival), a proposal or a read. So a write waits for one fsync, not for the next tick. While
one round's fsync is in flight, new proposals and messages accumulate in the cores and form
the next round: that is the group commit.

Leader leases (`lease_read_index`): a leader whose heartbeats a quorum acknowledged recently
enough, by its own monotonic clock, serves linearizable reads, its own and those its
followers forward (READ_INDEX), without a heartbeat round. The clock assumption and why it
is safe are on `lease_read_index`; a restarted node's part is `_ignores_vote`.

Storage layout (`NodeConfig`): data_dir/identity.json, data_dir/peer_incarnations.json
(the fence against a peer that lost its data, peer_incarnations.py), data_dir/wal/ (NodeRaftLog),
data_dir/shards/<n>/ (shard n's Engine), data_dir/meta.snap (meta group state),
data_dir/shards/<n>.snapshot/ (a snapshot received, durable until installed).

Start: a fresh directory is bootstrapped from the configuration (identity written first with
bootstrapped=false, each founding group created with its placement ConfState, then
bootstrapped=true); a used one is recovered from itself alone. Each shard engine reopens at
its durable applied index and Raft re-applies the committed entries above it: the Raft log is
the engine's WAL.

Compaction (maintenance task, every `MAINTENANCE_TICKS` ticks): a group whose durable applied
index is `snapshot_entries_threshold` past its snapshot, or whose oldest live entry pins a
sealed WAL segment, is compacted: engine flush (a thread), then in the loop
`RawNode.compact` + `record_compactions_async`, then `truncate_async` deletes the segments no
group needs any more (DESIGN Storage: "Segments are deleted once every group's applied state
covering them is flushed").
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Final

from minikv_core.cluster.config import IdentityError, NodeConfig, NodeIdentity
from minikv_core.cluster.group import (
    INCOMING_SUFFIX,
    PENDING_SUFFIX,
    Group,
    MetaGroup,
    ShardGroup,
    install_snapshot_dir,
)
from minikv_core.cluster.meta import (
    MetaDecodeError,
    MetaSnapshot,
    MetaStateMachine,
    encode_set_shard_map,
)
from minikv_core.cluster.peer_incarnations import PeerIncarnations
from minikv_core.cluster.placement import place_meta
from minikv_core.cluster.raft_log import (
    GroupStorage,
    NodeRaftLog,
    RaftLogError,
    RaftLogFailedError,
)
from minikv_core.cluster.service import ServiceError, UnavailableError
from minikv_core.cluster.shard_map import (
    META_GROUP_ID,
    ShardMap,
    group_of_shard,
    shard_of_group,
)
from minikv_core.cluster.state_machine import ShardStateMachine
from minikv_core.net.peer_transport import REFUSAL_RETIRED, FrameHandler, PeerTransport
from minikv_core.raft import (
    CAMPAIGN_TRANSFER_CONTEXT,
    NONE,
    CompactedError,
    CompactionError,
    Config,
    ConfState,
    Message,
    MessageType,
    NotLeaderError,
    ProposalDroppedError,
    RaftError,
    RawNode,
    Ready,
    Snapshot,
    SnapshotMetadata,
)
from minikv_core.raft import UnavailableError as RaftUnavailableError
from minikv_core.storage.block_cache import BlockCache
from minikv_core.storage.engine import Engine, EngineLockedError, EngineOptions
from minikv_core.storage.errors import StorageError, WalLockedError
from minikv_core.storage.lsm_limits import LSM_BLOCK_CACHE_BYTES_DEFAULT

logger = logging.getLogger(__name__)

RECONCILE_TIMEOUT_S: Final = 60.0
"""How long the maintenance loop waits for the driver to create or drop replicas."""
MAINTENANCE_TICKS: Final = 10
"""Compaction checks, preferred-leader transfers and the epoch-1 proposal run this often, and
at once when the applied shard map changes (`_round`)."""
BLOCK_CACHE_BYTES: Final = 4 * LSM_BLOCK_CACHE_BYTES_DEFAULT
"""One block cache shared by every shard engine of the node."""

_TIMEOUT_NOW: Final = MessageType.TIMEOUT_NOW


LEASE_CLOCK_RATE_ERROR_MAX: Final = 0.10
"""Lease reads assume no node's clock runs more than 10% faster or slower than another's
(see `MultiRaftHost.lease_read_index`)."""
LEASE_HEARTBEATS_REMEMBERED_MAX: Final = 64
"""Heartbeat send times a leader keeps per group to credit acknowledgements with (one per
tick is sent, so this covers several lease lengths)."""

_HEARTBEAT: Final = MessageType.HEARTBEAT
_READ_INDEX: Final = MessageType.READ_INDEX
_HEARTBEAT_RESPONSE: Final = MessageType.HEARTBEAT_RESPONSE
_VOTE_REQUESTS: Final = frozenset((MessageType.VOTE, MessageType.PRE_VOTE))
_EARLY_TYPES: Final = frozenset((MessageType.APPEND, MessageType.HEARTBEAT))
"""What a leader may send before its round's persist (see `MultiRaftHost._route_messages`)."""

_Batches = dict[int, list[tuple[int, Message]]]
"""Messages per peer: (group id, message) in the order the groups produced them."""


def _group_id(group: Group) -> int:
    return group.group_id


def _keeps_term_and_vote(group: Group, ready: Ready) -> bool:
    hard_state = ready.hard_state
    if hard_state is None:
        return True
    stored = group.storage.hard_state()
    return hard_state.term == stored.term and hard_state.vote == stored.vote


TransportFactory = Callable[[NodeConfig, FrameHandler, random.Random], PeerTransport]
"""Builds the node's peer transport (unstarted) for `on_frame`; the host starts and stops it."""


def _remove_shard_files(directory: Path) -> None:
    """Delete a shard replica's engine and any snapshot being received for it (blocking)."""
    for path in (
        directory,
        directory.with_name(directory.name + PENDING_SUFFIX),
        directory.with_name(directory.name + INCOMING_SUFFIX),
    ):
        shutil.rmtree(path, ignore_errors=True)


def split_address(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


def default_transport_factory(
    config: NodeConfig, on_frame: FrameHandler, rng: random.Random
) -> PeerTransport:
    """A transport with its own gRPC server on `config.grpc_address` (tests, embedders).
    `minikv serve` passes a factory sharing the node's one gRPC server instead."""
    host, port = split_address(config.grpc_address)
    return PeerTransport(
        config.node_id,
        config.peers,
        on_frame,
        rng=rng,
        host=host,
        port=port,
        cluster_id=config.cluster_id,
    )


class NodeStartError(Exception):
    """The node refuses its data directory (corrupt WAL, inconsistent state, unreadable
    identity); the message names the file and the problem. Exit status 1."""


@dataclass(slots=True)
class _Compaction:
    group_id: int
    index: int
    data: bytes


@dataclass(slots=True)
class _Lease:
    """A leader's lease on one group for one term: when its heartbeats were handed to the
    transport, and, per peer, the hand-off time of the latest one that peer answered."""

    term: int
    sent_at_s: dict[int, float]
    """Heartbeat stamp (the leader's tick count, echoed in the answer) -> first hand-off."""
    acked_at_s: dict[int, float]
    revoked: bool = False
    """A TimeoutNow went out: its target's election ignores leases (thesis §3.10)."""


@dataclass(slots=True)
class HostCounters:
    rounds: int = 0
    readies: int = 0
    frames_received: int = 0
    messages_received: int = 0
    messages_unknown_group: int = 0
    messages_failed: int = 0
    messages_sent: int = 0
    early_applies: int = 0
    compactions: int = 0
    truncations: int = 0
    segments_deleted: int = 0
    transfers_started: int = 0
    maintenance_runs: int = 0
    snapshots_received: int = 0
    lease_reads: int = 0
    votes_ignored_after_restart: int = 0
    replicas_created: int = 0
    replicas_dropped: int = 0


class MultiRaftHost:
    """Every Raft group of one node. Construct, `await start()`, use, `await stop()`."""

    def __init__(
        self,
        config: NodeConfig,
        *,
        transport_factory: TransportFactory | None = None,
        engine_options: EngineOptions | None = None,
        join_map: ShardMap | None = None,
    ) -> None:
        """`join_map`: this node joins a running cluster (`minikv serve --join`) whose meta
        leader answered with this map (it lists this node): the node starts with an empty
        meta replica that the meta leader catches up, instead of founding groups."""
        self.config = config
        self._join_map = join_map
        self._transport_factory = transport_factory or default_transport_factory
        cache = BlockCache(BLOCK_CACHE_BYTES)
        if engine_options is None:
            engine_options = EngineOptions(block_cache=cache)
        self._engine_options = engine_options
        seed = config.seed if config.seed is not None else random.SystemRandom().getrandbits(64)
        self._rng = random.Random(seed)
        self.groups: dict[int, Group] = {}
        self.shard_groups: dict[int, ShardGroup] = {}
        self.meta: MetaGroup | None = None
        self._group_list: list[Group] = []
        self._log: NodeRaftLog | None = None
        self._engines: list[Engine] = []
        self._transport: PeerTransport | None = None
        self.bootstrap_map = ShardMap.bootstrap(config.peers, config.shards, config.replicas)
        self.counters = HostCounters()
        self.started_at = 0.0
        self.failure: str | None = None
        """Set when the driver loop failed (a WAL write error): the node serves nothing."""
        self._wake_event = asyncio.Event()
        self._dirty: set[Group] = set()
        """Groups whose core got an input since their last Ready check (see `_round`)."""
        self._all_dirty = True
        self._tick_due = False
        self._ticks = 0
        self._compactions: list[_Compaction] = []
        self._queued_groups: set[ShardGroup] = set()
        self._force_truncate = False
        self._tasks: list[asyncio.Task[None]] = []
        self._driver: asyncio.Task[None] | None = None
        self._running = False
        self._stopped = False
        self._stop_event = asyncio.Event()
        self._maintenance_wake = asyncio.Event()
        """Set by `stop()` and when the applied shard map changes: a replica the map adds
        here is created at once, not at the next maintenance period (every move of a
        repair, add-node or remove-node waits for its new replica: ~0.5 s each on average)."""
        self._map_seen: tuple[int, ConfState] | None = None
        self._idle_rounds: list[asyncio.Future[None]] = []
        self._compaction_waiters: list[asyncio.Future[None]] = []
        self._planning = asyncio.Lock()
        self._connected_peers: set[int] | None = None
        self._leases: dict[int, _Lease] = {}
        tick_s = config.tick_ms / 1000.0
        self._lease_s = (
            (config.election_timeout_ticks - 2) * tick_s * (1.0 - LEASE_CLOCK_RATE_ERROR_MAX)
        )
        """How long a heartbeat acknowledged by a quorum keeps this node's lease (see
        `lease_read_index`); 0 or less disables lease reads."""
        self._votes_ignored_until = 0.0
        self._restarted_groups: set[int] = set()
        """Groups that had a term before this start: for one election timeout, they ignore
        vote requests (see `_on_frame`)."""
        self._barriers = 0
        self._packing: dict[int, asyncio.Task[None]] = {}
        """Groups whose snapshot data is being packed in a thread (`_pack_snapshot`)."""
        self._background: set[asyncio.Task[None]] = set()
        self._replica_changes: list[tuple[int, bool, asyncio.Future[None]]] = []
        """(shard, create?, done) for the driver loop: replicas come and go between rounds."""
        self._peer_map: dict[int, str] = dict(config.peers)
        self.decommissioned = asyncio.Event()
        """Set when the applied shard map no longer lists this node (`remove-node` finished),
        or a peer refused it as removed (its map retires this id): the server stops."""
        self.decommissioned_reason = ""
        """Why, when a peer said so (empty when this node applied the map itself)."""
        self.fenced = asyncio.Event()
        """Set when a peer refused this node's incarnation: its data directory is not the
        one the cluster knew (lost, replaced), so it must not take part; or when peers that
        make a majority of its cluster refused it as a node of another cluster
        (`REFUSAL_FOREIGN`: started with other founding flags than theirs). The server
        stops with `fenced_reason` (peer_incarnations.py)."""
        self.fenced_reason = ""
        self.segment_entries: dict[int, dict[int, tuple[int, int]]] = {}
        """WAL segment -> group -> (first, last) entry index written to it during this run
        (for the admin WAL view; segments replayed at start are not described)."""

    # ----------------------------------------------------------------------- accessors

    @property
    def log(self) -> NodeRaftLog:
        assert self._log is not None, "host not started"
        return self._log

    @property
    def transport(self) -> PeerTransport:
        assert self._transport is not None, "host not started"
        return self._transport

    @property
    def transport_or_none(self) -> PeerTransport | None:
        return self._transport

    @property
    def log_or_none(self) -> NodeRaftLog | None:
        return self._log

    @property
    def running(self) -> bool:
        return self._running and self.failure is None

    @property
    def shard_map(self) -> ShardMap:
        """The meta group's applied map, or the bootstrap map until epoch 1 is applied."""
        if self.meta is not None and self.meta.state_machine.shard_map.epoch > 0:
            return self.meta.state_machine.shard_map
        return self.bootstrap_map

    @property
    def lease_duration_s(self) -> float:
        """How long after its hand-off a heartbeat acknowledged by a quorum keeps this node's
        leader lease (`lease_read_index`); 0 or less: no lease reads."""
        return self._lease_s

    def wake(self) -> None:
        """Something may have changed in any group: the next round looks at every group."""
        self._all_dirty = True
        self._wake_event.set()

    def wake_group(self, group: Group) -> None:
        """`group`'s core got an input (a read, a transfer): the next round looks at it."""
        self._dirty.add(group)
        self._wake_event.set()

    def note_queued(self, group: ShardGroup) -> None:
        """A client write was queued on `group`: propose it in the next loop iteration."""
        self._queued_groups.add(group)
        self._wake_event.set()

    # ------------------------------------------------------------------------- start

    async def start(self) -> None:
        """Open (or bootstrap) the data directory, start the transport and the loops.

        Raises IdentityMismatchError (flags contradict the stored identity), WalLockedError
        or EngineLockedError (another process has the directory open), NodeStartError (the
        data directory cannot be used: corrupt WAL or engine, inconsistent state; the cause
        is chained) or TransportError (the address cannot be bound).
        """
        assert not self._running and not self._stopped, "start() called twice"
        config = self.config
        try:
            config.shards_dir.mkdir(parents=True, exist_ok=True)
            identity = NodeIdentity.load(config.identity_path)
        except IdentityError as error:
            raise NodeStartError(str(error)) from None
        except OSError as error:
            raise NodeStartError(
                f"cannot use data directory {config.data_dir}: {error.strerror or error}"
            ) from None
        if identity is None:
            if config.wal_dir.exists() and any(config.wal_dir.iterdir()):
                raise NodeStartError(
                    f"data directory {config.data_dir} has a WAL but no identity file "
                    f"({config.identity_path.name}); refusing to guess which node it belongs to"
                )
            identity = NodeIdentity.of(
                config, bootstrapped=False, incarnation=NodeIdentity.new_incarnation()
            )
            await asyncio.to_thread(identity.store, config.identity_path)
        else:
            identity.check(config, config.identity_path)
            if not identity.incarnation:  # written before incarnations existed
                identity = replace(identity, incarnation=NodeIdentity.new_incarnation())
                await asyncio.to_thread(identity.store, config.identity_path)
        try:
            incarnations = PeerIncarnations.open(config.peer_incarnations_path, config.node_id)
        except IdentityError as error:
            raise NodeStartError(str(error)) from None
        try:
            self._log = await asyncio.to_thread(
                NodeRaftLog.open, config.wal_dir, segment_size_bytes=config.wal_segment_size_bytes
            )
        except WalLockedError:
            raise  # another process runs on this directory: the caller says so plainly
        except (StorageError, OSError) as error:
            raise NodeStartError(
                f"cannot open the Raft log in {config.wal_dir}: {error}"
            ) from error
        try:
            if not identity.bootstrapped and self._join_map is not None:
                await self._join_as_learner(self._join_map)
                identity = NodeIdentity.of(
                    config, bootstrapped=True, incarnation=identity.incarnation
                )
                await asyncio.to_thread(identity.store, config.identity_path)
            elif not identity.bootstrapped:
                await self._bootstrap()
                identity = NodeIdentity.of(
                    config, bootstrapped=True, incarnation=identity.incarnation
                )
                await asyncio.to_thread(identity.store, config.identity_path)
            await self._open_groups()
            self._transport = self._transport_factory(config, self._on_frame, self._rng)
            self._transport.fence(identity.incarnation, incarnations.admit, self._on_refused)
            await self._transport.start()
        except BaseException:
            await self._close_storage()
            raise
        self.started_at = time.monotonic()
        self._votes_ignored_until = self.started_at + config.election_timeout_s
        self._running = True
        self._campaign_preferred_fresh_groups()
        loop = asyncio.get_running_loop()
        self._driver = loop.create_task(self._drive(), name=f"node{config.node_id}-driver")
        self._tasks = [
            loop.create_task(self._tick_loop(), name=f"node{config.node_id}-ticker"),
            loop.create_task(self._maintenance_loop(), name=f"node{config.node_id}-maintenance"),
        ]
        self.wake()

    async def _bootstrap(self) -> None:
        """Create the founding groups this node belongs to (idempotent: a crash in the middle
        leaves identity bootstrapped=false and the next start finishes)."""
        log = self.log
        existing = set(log.groups())
        node_id = self.config.node_id
        meta = self.bootstrap_map
        meta_placement = place_meta(self.config.peers, self.config.shards, self.config.replicas)
        if META_GROUP_ID not in existing:
            await log.bootstrap_group_async(
                META_GROUP_ID, ConfState(meta_placement.voters, meta_placement.learners)
            )
        for assignment in meta.shards:
            group_id = group_of_shard(assignment.shard)
            if node_id in assignment.replicas and group_id not in existing:
                voters = tuple(sorted(assignment.replicas))
                await log.bootstrap_group_async(group_id, ConfState(voters, ()))

    async def _join_as_learner(self, join_map: ShardMap) -> None:
        """Create the empty meta replica of a node joining a running cluster, and record the
        map the meta leader answered with, so a restart before the first snapshot arrives
        still knows its peers (the meta group's applied state replaces it as it catches up)."""
        log = self.log
        if META_GROUP_ID not in log.groups():
            await log.create_group_async(META_GROUP_ID)
        state = MetaStateMachine(self.config.data_dir, self.bootstrap_map)
        if state.applied_index == 0:
            await asyncio.to_thread(state.persist, MetaSnapshot(0, join_map))

    def _raft_config(self, applied_index: int) -> Config:
        return Config(
            node_id=self.config.node_id,
            election_timeout_ticks=self.config.election_timeout_ticks,
            heartbeat_interval_ticks=self.config.heartbeat_interval_ticks,
            pre_vote=True,
            check_quorum=True,
            applied_index=applied_index,
            # A peer frame costs ~100 us of CPU at each end: followers learn commits with
            # the next append or heartbeat, except a proposer (docs/architecture.md).
            lazy_commit=True,
        )

    async def _open_groups(self) -> None:
        log = self.log
        config = self.config
        meta_placement = place_meta(config.peers, config.shards, config.replicas)
        for group_id in log.groups():
            storage = log.storage(group_id)
            hard_state = storage.hard_state()
            if hard_state.term > 0:
                self._restarted_groups.add(group_id)
            snapshot_index = storage.snapshot_metadata().index
            committed = max(hard_state.commit, snapshot_index)
            rng = random.Random(self._rng.getrandbits(64))
            if group_id == META_GROUP_ID:
                try:
                    state = MetaStateMachine(config.data_dir, self.bootstrap_map)
                except (MetaDecodeError, OSError) as error:
                    raise NodeStartError(f"meta group state: {error}") from None
                if state.applied_index < snapshot_index:
                    raise NodeStartError(
                        f"meta group: the log is compacted to index {snapshot_index} but "
                        f"{config.data_dir / 'meta.snap'} holds index {state.applied_index}"
                    )
                applied = min(state.applied_index, committed)
                raw = self._raw_node(group_id, applied, storage, rng)
                meta = MetaGroup(raw, storage, state)
                meta.preferred_leader = meta_placement.preferred_leader
                storage.snapshot_data_source = meta.snapshot_data()
                self.meta = meta
                self.groups[group_id] = meta
                continue
            shard = shard_of_group(group_id)
            if not 0 <= shard < config.shards:
                raise NodeStartError(
                    f"the Raft log holds group {group_id}, but the cluster has {config.shards} "
                    "shards"
                )
            await self._open_shard_group(shard, storage, snapshot_index, committed, rng)
        if self.meta is None:
            raise NodeStartError(f"the Raft log in {config.wal_dir} has no meta group (group 0)")
        self._group_list = [self.groups[g] for g in sorted(self.groups)]
        # A replica dropped by a run that crashed before deleting its files (the log's
        # REMOVED mark is written first): nothing can use those files any more.
        for shard in range(config.shards):
            if shard not in self.shard_groups:
                await asyncio.to_thread(_remove_shard_files, config.shard_dir(shard))

    async def _open_shard_group(
        self,
        shard: int,
        storage: GroupStorage,
        snapshot_index: int,
        committed: int,
        rng: random.Random,
    ) -> ShardGroup:
        config = self.config
        group_id = group_of_shard(shard)
        state_machine = await asyncio.to_thread(self._open_shard, shard, snapshot_index)
        self._engines.append(state_machine.engine)
        applied = min(state_machine.applied_index, committed)
        try:
            raw = self._raw_node(group_id, applied, storage, rng)
        except BaseException:
            self._engines.remove(state_machine.engine)
            await asyncio.to_thread(state_machine.engine.close)
            raise
        pending = config.shard_dir(shard).with_name(f"{shard}{PENDING_SUFFIX}")
        group = ShardGroup(group_id, shard, raw, storage, state_machine, pending)
        group.preferred_leader = self.shard_map.shards[shard].preferred_leader
        storage.snapshot_data_source = group.snapshot_data(config.shards_dir)
        storage.pack_in_background = lambda metadata: self._pack_snapshot(group, metadata)
        self.groups[group_id] = group
        self.shard_groups[shard] = group
        return group

    def _raw_node(
        self, group_id: int, applied: int, storage: GroupStorage, rng: random.Random
    ) -> RawNode:
        try:
            return RawNode(self._raft_config(applied), storage, rng)
        except RaftError as error:
            raise NodeStartError(
                f"group {group_id}: the Raft state in {self.config.wal_dir} is inconsistent: "
                f"{error}"
            ) from error

    def _open_shard(self, shard: int, snapshot_index: int) -> ShardStateMachine:
        """Open shard `shard`'s engine and finish a snapshot install a crash interrupted."""
        config = self.config
        directory = config.shard_dir(shard)
        pending = directory.with_name(directory.name + PENDING_SUFFIX)
        incoming = directory.with_name(directory.name + INCOMING_SUFFIX)
        shutil.rmtree(incoming, ignore_errors=True)
        try:
            engine = Engine.open(directory, self._engine_options)
        except EngineLockedError:
            raise
        except (StorageError, OSError) as error:
            raise NodeStartError(f"shard {shard}: cannot open its engine: {error}") from error
        state_machine = ShardStateMachine(engine)
        try:
            if state_machine.applied_index < snapshot_index:
                if not pending.is_dir():
                    raise NodeStartError(
                        f"shard {shard}: the Raft log starts after a snapshot at index "
                        f"{snapshot_index} but the engine in {directory} is at index "
                        f"{state_machine.applied_index} and no received snapshot is waiting "
                        f"in {pending}; repair this replica from its peers"
                    )
                install_snapshot_dir(state_machine, pending, shard)
                if state_machine.applied_index < snapshot_index:
                    raise NodeStartError(
                        f"shard {shard}: the received snapshot in {pending} is at index "
                        f"{state_machine.applied_index}, below the log's snapshot "
                        f"{snapshot_index}"
                    )
            elif pending.exists():
                shutil.rmtree(pending)  # installed before the crash, or never persisted
        except BaseException:
            engine.close()
            raise
        return state_machine

    def _campaign_preferred_fresh_groups(self) -> None:
        """A founding node campaigns at once for the groups it should lead: the first
        elections then take one round trip, and leaders start spread as placed."""
        node_id = self.config.node_id
        for group in self._group_list:
            if group.preferred_leader == node_id and group.raw.term == 0:
                group.raw.campaign()

    # ---------------------------------------------------------------------- inbound

    def _on_frame(self, from_node: int, messages: list[tuple[int, Message]]) -> None:
        counters = self.counters
        counters.frames_received += 1
        counters.messages_received += len(messages)
        groups = self.groups
        dirty = self._dirty
        for group_id, message in messages:
            group = groups.get(group_id)
            if group is None:
                counters.messages_unknown_group += 1
                continue
            kind = message.type
            if kind is _HEARTBEAT_RESPONSE:
                self._note_heartbeat_ack(group, message)
            elif kind is _READ_INDEX and self._answer_read_index_by_lease(group, message):
                continue
            elif kind in _VOTE_REQUESTS and self._ignores_vote(group, message):
                counters.votes_ignored_after_restart += 1
                continue
            dirty.add(group)
            if message.type is _TIMEOUT_NOW:
                # Leadership is being handed to us on purpose (an admin transfer, or a
                # rebalance toward us): do not hand it back automatically.
                group.rebalance_wanted = False
            try:
                group.raw.step(message)
            except Exception:
                # A core invariant broke on this message: loud in the log, counted, and
                # confined to this message, so the other groups of the frame still run.
                counters.messages_failed += 1
                logger.exception(
                    "node %d: group %d failed to step a %s from node %d",
                    self.config.node_id,
                    group_id,
                    message.type.name,
                    from_node,
                )
        self._wake_event.set()

    def _ignores_vote(self, group: Group, message: Message) -> bool:
        """A restarted node ignores (pre-)vote requests for one election timeout after
        start, as if it still heard from the leader it had before the restart (thesis
        §6.4.1): that leader may hold a lease counting an acknowledgement this node sent just
        before it went down, and the memory of it (the core's election timer) did not
        survive. Without this, the lease would rest on a vote this node could now give."""
        return (
            group.group_id in self._restarted_groups
            and message.term > group.raw.term
            and message.context != CAMPAIGN_TRANSFER_CONTEXT
            and time.monotonic() < self._votes_ignored_until
        )

    # ------------------------------------------------------------------------ leases

    def lease_read_index(self, group: Group) -> int | None:
        """The index a linearizable read of `group` on this node can be served at without a
        heartbeat round (wait until applied >= it, then read local state), or None when this
        node holds no valid lease (use ReadIndex).

        Leader lease (Raft thesis §6.4.1): a follower that hears a heartbeat resets its
        election timer and, with check-quorum, neither campaigns nor votes for anyone else
        (pre-vote included) for an election timeout, unless it is told to by a TimeoutNow.
        So from the moment a heartbeat that a quorum acknowledged was *handed to the
        transport* (before any follower received it), no other leader can be elected for
        (election timeout - 1 tick) - that is what the tick-driven timers guarantee - and
        this node's commit index covers every write acknowledged anywhere. The lease lasts
        `(election_timeout_ticks - 2) * tick_ms * (1 - LEASE_CLOCK_RATE_ERROR_MAX)`: one
        more tick of margin, and the clock assumption: **no node's clock (the monotonic
        clock, which drives the tick timers too) runs more than 10% faster or slower than
        another's**, and every node runs with the same `tick_ms` and
        `election_timeout_ticks` (as the Raft core's Config already requires). The lease is
        measured on this node's monotonic clock, not in ticks, so a paused or blocked leader
        (SIGSTOP, a long GC) finds it expired when it resumes; pauses elsewhere only slow
        followers' timers (safe). A restarted follower honours what it acknowledged before
        the restart (`_ignores_vote`).

        Also required: this node leads in the lease's term and has committed an entry of
        that term (before that its commit index may trail the previous leader's, thesis
        §6.4), and no transfer is under way.
        """
        if self._lease_s <= 0 or not group.is_leader:
            return None
        raw = group.raw
        lease = self._leases.get(group.group_id)
        if lease is None or lease.term != raw.term or lease.revoked:
            return None
        voters = raw.conf_state.voters
        node_id = self.config.node_id
        if node_id not in voters:
            return None
        horizon = time.monotonic() - self._lease_s
        acked = lease.acked_at_s
        holders = 1 + sum(
            1 for voter in voters if voter != node_id and acked.get(voter, -1.0) > horizon
        )
        if holders <= len(voters) // 2:
            return None
        if raw.lead_transferee != NONE:
            return None
        commit = raw.commit
        try:
            if group.storage.term(commit) != lease.term:
                return None
        except (CompactedError, RaftUnavailableError):
            return None
        self.counters.lease_reads += 1
        return commit

    def _answer_read_index_by_lease(self, group: Group, message: Message) -> bool:
        """A follower forwarded a read (READ_INDEX): if this leader holds a lease, answer it
        now with the read index, as the core would after a heartbeat round (thesis §6.4.1:
        with a lease, no round is needed). The answer promises nothing about this node's
        disk (the commit index is durable on a quorum), so it needs no persist first."""
        if message.term != group.raw.term:
            return False
        index = self.lease_read_index(group)
        if index is None:
            return False
        answer = group.raw.read_index_answer(message.sender, index, message.context)
        self.counters.messages_sent += 1
        self.transport.send(message.sender, [(group.group_id, answer)])
        return True

    def _note_heartbeats_sent(self, taken: list[tuple[Group, Ready]], now_s: float) -> None:
        for group, ready in taken:
            if not group.is_leader:
                continue
            lease: _Lease | None = None
            for message in ready.messages:
                kind = message.type
                if kind is _HEARTBEAT:
                    if lease is None:
                        lease = self._lease_of(group)
                    sent = lease.sent_at_s
                    if message.index not in sent:
                        sent[message.index] = now_s
                        if len(sent) > LEASE_HEARTBEATS_REMEMBERED_MAX:
                            del sent[min(sent)]
                elif kind is _TIMEOUT_NOW:
                    if lease is None:
                        lease = self._lease_of(group)
                    lease.revoked = True

    def _lease_of(self, group: Group) -> _Lease:
        term = group.raw.term
        lease = self._leases.get(group.group_id)
        if lease is None or lease.term != term:
            lease = self._leases[group.group_id] = _Lease(term, {}, {})
        return lease

    def _note_heartbeat_ack(self, group: Group, message: Message) -> None:
        lease = self._leases.get(group.group_id)
        if lease is None or lease.term != message.term or not group.is_leader:
            return
        sent = lease.sent_at_s.get(message.index)
        if sent is not None and sent > lease.acked_at_s.get(message.sender, -1.0):
            lease.acked_at_s[message.sender] = sent

    # ------------------------------------------------------------------------ loops

    async def _tick_loop(self) -> None:
        interval_s = self.config.tick_ms / 1000.0
        next_tick = time.monotonic() + interval_s
        while True:
            await asyncio.sleep(max(0.0, next_tick - time.monotonic()))
            now = time.monotonic()
            next_tick += interval_s
            if next_tick < now:
                # The loop was blocked for more than a tick: do not fire a burst of ticks
                # (that would time out elections on messages not yet read); time just slows.
                next_tick = now + interval_s
            self._tick_due = True
            self._wake_event.set()

    async def _drive(self) -> None:
        try:
            while True:
                await self._wake_event.wait()
                self._wake_event.clear()
                if not self._running:
                    return
                if self._tick_due:
                    self._tick_due = False
                    self._ticks += 1
                    self._all_dirty = True
                    for group in self._group_list:
                        group.tick()
                if self._compactions or self._force_truncate:
                    self._all_dirty = True
                    await self._apply_compactions()
                if self._replica_changes:
                    self._all_dirty = True
                    await self._apply_replica_changes()
                if self._queued_groups:
                    queued, self._queued_groups = self._queued_groups, set()
                    self._dirty.update(queued)
                    for group in queued:
                        group.propose_queued()
                if await self._round():
                    self._wake_event.set()  # advance() left more work
                elif self._idle_rounds and not self._wake_event.is_set():
                    for waiter in self._idle_rounds:
                        if not waiter.done():
                            waiter.set_result(None)
                    self._idle_rounds.clear()
        except Exception as error:
            self.failure = f"{type(error).__name__}: {error}"
            logger.critical(
                "node %d: the driver loop failed; the node stops serving: %s",
                self.config.node_id,
                self.failure,
                exc_info=True,
            )
            failed = UnavailableError(f"node {self.config.node_id} failed: {self.failure}")
            for group in self._group_list:
                group.fail_all(failed)
            for _, _, future in self._replica_changes:
                if not future.done():
                    future.set_exception(failed)
            self._replica_changes.clear()

    async def _round(self) -> bool:
        """One persist + send + apply round over every group with a Ready; True when a
        group is known to have more work right away.

        Only groups that may have one are asked (`has_ready` walks a leader's progress, so
        asking all of them costs a node with many groups more than the round itself): those
        whose core got an input since they were last asked (a frame, a proposal, a read via
        `wake_group`), those that had a Ready last round (`advance` may leave more work), and
        every group after a tick or a plain `wake()`.
        """
        if self._all_dirty:
            self._all_dirty = False
            self._dirty.clear()
            candidates = self._group_list
        else:
            candidates = sorted(self._dirty, key=_group_id)
            self._dirty.clear()
        taken: list[tuple[Group, Ready]] = []
        for group in candidates:
            ready = group.take_ready()
            if ready is not None:
                taken.append((group, ready))
        if not taken:
            return False
        counters = self.counters
        counters.rounds += 1
        counters.readies += len(taken)
        # Persist only when some Ready has something durable; inline (blocking the loop for
        # the fsync, see Wal.append) unless a leader's new entries are in the round: while a
        # leader's fsync runs, client writes must keep arriving to form its next batch.
        persist = any(
            ready.entries or ready.hard_state is not None or not ready.snapshot.is_empty
            for _, ready in taken
        )
        inline = not any(ready.entries and group.is_leader for group, ready in taken)
        early, late = self._route_messages(taken)
        self._note_heartbeats_sent(taken, time.monotonic())
        try:
            if inline:
                # No leader entry to replicate: answer the clients first. Applying resolves
                # their futures before the peer senders are woken, so the loop writes the
                # answers before the frames (a leader's commit broadcast: a gRPC write of
                # ~100 us per peer).
                self._apply_early(taken)
            if early:
                self._send_batches(early)  # a leader's appends and heartbeats: before its fsync
                if inline and any(ready.must_sync for _, ready in taken):
                    await asyncio.sleep(0)  # the peer senders start their writes before we block
            if not inline:
                self._apply_early(taken)
            for group, ready in taken:
                if not ready.snapshot.is_empty:
                    counters.snapshots_received += 1
                    await asyncio.to_thread(group.prepare_snapshot, ready)
            if persist:
                await self.log.persist_async(
                    [(group.group_id, ready) for group, ready in taken], inline=inline
                )
                self._note_segment(taken)
        except BaseException:
            for group, _ in taken:
                group.abandon_ready()
            raise
        self._send_batches(late)
        more = False
        for group, ready in taken:
            group.finish_ready(ready)
            founding = group.raw.take_learned_founding()
            if founding is not None:
                await self.log.record_founding_async(group.group_id, founding)
            # advance() may leave work behind (more committed entries, reissued reads):
            # look again in the next round, without a loop iteration when there is none.
            if group.raw.has_ready():
                self._dirty.add(group)
                more = True
        meta = self.meta
        if meta is not None:
            # Reconcile as soon as the map or the meta configuration changes: a peer
            # retires a leaving node only once it left both (see reconcile_replicas).
            seen = (meta.state_machine.shard_map.epoch, meta.raw.conf_state)
            if seen != self._map_seen:
                self._map_seen = seen
                self._maintenance_wake.set()
        return more

    def _apply_early(self, taken: list[tuple[Group, Ready]]) -> None:
        """Apply now the committed entries that were durable before this round (no snapshot,
        all of them before the Ready's new entries: see Group.apply_entries), so their
        clients do not wait for this round's fsync."""
        for group, ready in taken:
            if (
                ready.committed_entries
                and ready.snapshot.is_empty
                and (
                    not ready.entries or ready.committed_entries[-1].index < ready.entries[0].index
                )
            ):
                group.apply_entries(ready)
                self.counters.early_applies += 1

    @staticmethod
    def _route_messages(taken: list[tuple[Group, Ready]]) -> tuple[_Batches, _Batches]:
        """Split the round's messages, batched per peer, into those that may leave before
        the round's persist and those that must wait for it (the Ready contract, step 2).

        A leader may send its appends and heartbeats before its own entries are durable
        (Raft thesis §10.2.1; etcd does the same): the core counts the leader's own log
        toward a commit only at `advance()`, after the persist, so an entry still commits
        only once a quorum holds it durably, and nothing is acknowledged earlier. It saves
        the leader's fsync on every write's critical path. Everything else waits: a
        follower's acknowledgement or vote promises durable state, and a Ready that changes
        the term or vote (a leader that just stepped down) sends nothing early.
        """
        early: _Batches = {}
        late: _Batches = {}
        for group, ready in taken:
            group_id = group.group_id
            may_send_early = group.is_leader and _keeps_term_and_vote(group, ready)
            for message in ready.messages:
                if message.type is _TIMEOUT_NOW:
                    group.rebalance_wanted = False  # this leader hands over on purpose
                batches = early if may_send_early and message.type in _EARLY_TYPES else late
                batch = batches.get(message.to)
                if batch is None:
                    batch = batches[message.to] = []
                batch.append((group_id, message))
        return early, late

    def _send_batches(self, batches: _Batches) -> None:
        transport = self.transport
        counters = self.counters
        for peer, batch in batches.items():
            counters.messages_sent += len(batch)
            transport.send(peer, batch)

    def _note_segment(self, taken: list[tuple[Group, Ready]]) -> None:
        segment = self.log.wal.end_position.segment
        described = self.segment_entries.get(segment)
        for group, ready in taken:
            if not ready.entries:
                continue
            if described is None:
                described = self.segment_entries[segment] = {}
            first, last = ready.entries[0].index, ready.entries[-1].index
            known = described.get(group.group_id)
            if known is not None:
                first = min(first, known[0])
                last = max(last, known[1])
            described[group.group_id] = (first, last)

    async def wait_idle_round(self) -> None:
        """Wait until the driver loop finds nothing to do (for admin calls and stop)."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._idle_rounds.append(future)
        self.wake()
        await future

    # ------------------------------------------------------------------ maintenance

    async def _maintenance_loop(self) -> None:
        period_s = MAINTENANCE_TICKS * self.config.tick_ms / 1000.0
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._maintenance_wake.wait(), period_s)
            self._maintenance_wake.clear()
            if self._stop_event.is_set() or self.failure is not None:
                return
            self.counters.maintenance_runs += 1
            try:
                self._propose_bootstrap_epoch()
                await self.reconcile_replicas()
                self._hand_off_corrupt_leaderships()
                self._transfer_to_preferred_leaders()
                await self.plan_compactions(force_shards=None)
            except (StorageError, RaftError, OSError, ServiceError) as error:
                logger.error("node %d: maintenance failed: %s", self.config.node_id, error)

    def _propose_bootstrap_epoch(self) -> None:
        """The meta leader records the bootstrap map as epoch 1 (once per term at most; the
        state machine ignores duplicates)."""
        meta = self.meta
        if meta is None or not meta.is_leader or meta.state_machine.shard_map.epoch > 0:
            return
        term = meta.raw.term
        if meta.epoch_proposed_term == term:
            return
        try:
            meta.raw.propose(encode_set_shard_map(self.bootstrap_map.with_epoch(1)))
        except (NotLeaderError, ProposalDroppedError):
            return
        meta.epoch_proposed_term = term
        self.wake()

    def hand_off_leadership(self, group: ShardGroup) -> int:
        """Start moving `group`'s leadership from this node to the most caught-up live voter
        (a transfer stops the group's writes until the target caught up, thesis §3.10, so a
        lagging one would stall them); answers the node to ask instead: the transfer's
        target, or the leader as this replica knows it."""
        hint = group.raw.lead_transferee or group.leader_id
        if not group.is_leader or group.raw.lead_transferee != NONE:
            return hint
        status = group.raw.status()
        voters = set(status.conf_state.voters)
        node_id = self.config.node_id
        peers = [p for p in status.peers if p.node_id in voters and p.node_id != node_id]
        live = [p for p in peers if p.recent_active] or peers
        if not live:
            return hint
        target = max(live, key=lambda p: (p.match, -p.node_id)).node_id
        with contextlib.suppress(NotLeaderError, ProposalDroppedError):
            group.raw.transfer_leader(target)
        self.wake_group(group)
        return target

    def _hand_off_corrupt_leaderships(self) -> None:
        """A replica a read found corrupt hands its leadership away at once (node_service
        `_corrupt_replica`); if that transfer was abandoned (the target did not win within
        an election timeout), or this node was elected again, it tries again here."""
        for group in self.shard_groups.values():
            if group.corrupt and group.is_leader:
                self.hand_off_leadership(group)

    def _transfer_to_preferred_leaders(self) -> None:
        """Move each group's leadership to its preferred leader, so leaders stay spread as
        placed (placement.py) after cold starts, restarts and failovers.

        A group wants rebalancing from this node's start, and again whenever its preferred
        node (re)connects to this node after its first maintenance run. The wish ends once
        the preferred node is seen leading, or when leadership is handed over on purpose (a
        TimeoutNow sent or received for the group: an admin transfer sticks). At most one
        attempt per group per term, and only to a preferred node that is caught up (match ==
        last index, recently active), so a transfer never stalls writes behind a lagging
        node."""
        node_id = self.config.node_id
        transport = self.transport
        connected = {
            peer for peer in self._peer_map if peer != node_id and transport.is_connected(peer)
        }
        joined = connected - self._connected_peers if self._connected_peers is not None else set()
        self._connected_peers = connected
        for group in self._group_list:
            preferred = group.preferred_leader
            if preferred in joined:
                group.rebalance_wanted = True
            if group.leader_id == preferred:
                group.rebalance_wanted = False
                continue
            if not group.rebalance_wanted or preferred in (NONE, node_id) or not group.is_leader:
                continue
            if group is self.meta and self.meta.state_machine.shard_map.job is not None:
                # Not while a maintenance job runs here: the job stops with the meta
                # leadership, and the next leader resumes it only after a grace period (a
                # start's move to the preferred meta leader once cost a remove-node 10 s).
                # The job's end changes the map, which runs this again at once.
                continue
            term = group.raw.term
            if group.transfer_attempted_term == term or preferred not in connected:
                continue
            status = group.raw.status()
            if preferred not in status.conf_state.voters:
                continue
            progress = next((p for p in status.peers if p.node_id == preferred), None)
            if progress is None or not progress.recent_active:
                continue
            if progress.match != status.last_index:
                continue
            group.transfer_attempted_term = term
            try:
                group.raw.transfer_leader(preferred)
            except (NotLeaderError, ProposalDroppedError):
                continue
            self.counters.transfers_started += 1
            self.wake()

    def _pack_snapshot(self, group: ShardGroup, metadata: SnapshotMetadata) -> None:
        """Build a snapshot's data (engine flush + table links + tar) in a thread: done on
        the event loop it stalled every group's heartbeats for as long as it took."""
        if group.group_id in self._packing:
            return
        source = group.storage.snapshot_data_source
        assert source is not None

        async def pack() -> None:
            try:
                data = await asyncio.to_thread(source, metadata)
                group.storage.set_packed(Snapshot(metadata, data))
            except Exception as error:
                logger.warning(
                    "shard %d: packing snapshot %d: %s", group.shard, metadata.index, error
                )
            finally:
                if self._packing.get(group.group_id) is task:
                    del self._packing[group.group_id]
                if self.groups.get(group.group_id) is group:
                    self.wake_group(group)  # the core asks again, and gets the data

        task = asyncio.get_running_loop().create_task(pack())
        self._packing[group.group_id] = task
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # ---------------------------------------------------------------- replicas (#10)

    def _on_refused(self, kind: str, reason: str) -> None:
        if kind == REFUSAL_RETIRED:
            if not self.decommissioned.is_set():
                self.decommissioned_reason = reason
                self.decommissioned.set()
        elif not self.fenced.is_set():
            self.fenced_reason = reason
            self.fenced.set()

    async def reconcile_replicas(self) -> None:
        """Make this node's replicas and peers match the meta group's applied shard map.

        The map is the desired state and the maintenance executor keeps the invariant
        "every member of a group's Raft configuration is listed in the map" (a replica is
        listed before it is added, and unlisted only after its removal committed): so a
        listed shard without a local replica gets an empty one (it joins as a learner and
        is caught up by its leader), and a local replica the map no longer lists was removed
        from its group and is deleted. A node the map no longer lists at all was
        decommissioned: `decommissioned` is set and the server stops."""
        meta = self.meta
        if meta is None or self.failure is not None or not self._running:
            return
        shard_map = meta.state_machine.shard_map
        if shard_map.epoch == 0:
            return  # the bootstrap map: the founding groups already match it
        # A leaving node is unlisted from the map before its removal from the meta group
        # (so that it learns it left); until that removal commits its acknowledgement may
        # be needed (a group of two voters needs both, Raft §4.1: the old configuration
        # decides). So its address is kept, and it is refused, only once it left both.
        members = _meta_members(meta)
        peers = dict(shard_map.nodes)
        for node in members - peers.keys():
            if node in self._peer_map:
                peers[node] = self._peer_map[node]
        if peers != self._peer_map:
            self._peer_map = peers
            self.transport.set_peers(peers)
        self.transport.retire(n for n in shard_map.retired if n not in members)
        node_id = self.config.node_id
        if node_id not in shard_map.nodes:
            # No barrier needed: every map this replica can apply lists it from the moment
            # it joined until it is removed, since a map applies only at the next epoch and
            # ids are never reused. But a meta voter stays until it left the meta group
            # too: its removal from a group of two voters needs its acknowledgement (the old
            # configuration decides, Raft §4.1). If it never learns that removal committed
            # (the leader stops sending to it), it campaigns, its peers refuse it (retired)
            # and it stops. A learner's acknowledgement is never needed (and a learner never
            # campaigns, so nothing would tell it): it stops now.
            if node_id not in meta.raw.conf_state.voters:
                self.decommissioned.set()
            return
        if not self._replica_changes_for(shard_map):
            return
        # Act only on the current map: after a restart this replica's copy can be old (the
        # commit index is not persisted, see MustSync, and the node may have been down while
        # the map changed), and an old map would delete replicas their groups still count.
        # A ReadIndex on the meta group (thesis §6.4) makes what we read current.
        if not await self._meta_read_barrier(meta):
            return
        shard_map = meta.state_machine.shard_map
        if node_id not in shard_map.nodes:
            if node_id not in meta.raw.conf_state.voters:  # as above
                self.decommissioned.set()
            return
        changes = self._replica_changes_for(shard_map)
        if not changes:
            return
        async with self._planning:
            loop = asyncio.get_running_loop()
            waiters = []
            for shard, create in changes:
                future: asyncio.Future[None] = loop.create_future()
                self._replica_changes.append((shard, create, future))
                waiters.append(future)
            self.wake()
            # Bounded: a driver that failed meanwhile fails these futures, but a stuck disk
            # must not hold the maintenance loop (and with it stop()) forever.
            async with asyncio.timeout(RECONCILE_TIMEOUT_S):
                await asyncio.gather(*waiters)

    def _replica_changes_for(self, shard_map: ShardMap) -> list[tuple[int, bool]]:
        """(shard, create?) to make this node's replicas match `shard_map`."""
        node_id = self.config.node_id
        for shard, group in self.shard_groups.items():
            group.preferred_leader = shard_map.shards[shard].preferred_leader
        wanted = shard_map.hosted_by(node_id)
        changes = [(shard, True) for shard in sorted(wanted - set(self.shard_groups))]
        for shard, group in sorted(self.shard_groups.items()):
            # Never drop a replica this node leads (the executor moves leadership first; a
            # map lagging this group's log must not take a working leader down).
            if shard not in wanted and not group.is_leader:
                changes.append((shard, False))
        return changes

    async def _meta_read_barrier(self, meta: MetaGroup) -> bool:
        """True once this node's meta replica has applied everything committed before the
        call (a linearizable read of the map); False when that cannot be learned now."""
        self._barriers += 1
        context = b"reconcile" + self._barriers.to_bytes(8, "big") + self._rng.randbytes(8)
        try:
            future = meta.read_index(context)
        except UnavailableError:
            return False
        self.wake_group(meta)
        timeout_s = self.config.election_timeout_s
        try:
            async with asyncio.timeout(timeout_s):
                index = await future
                applied = meta.wait_applied(index)
                if applied is not None:
                    await applied
        except (TimeoutError, UnavailableError):
            return False
        finally:
            meta.forget_read(context)
        return True

    async def _apply_replica_changes(self) -> None:
        """In the driver loop (no Ready outstanding): create and drop replicas."""
        queued, self._replica_changes = self._replica_changes, []
        try:
            for shard, create, future in queued:
                # Checked again here, not when planned: the map or leadership may have moved
                # while the change waited for this point of the loop.
                wanted = shard in self._current_map().hosted_by(self.config.node_id)
                try:
                    if create and wanted and shard not in self.shard_groups:
                        await self._create_replica(shard)
                    elif (
                        not create
                        and not wanted
                        and shard in self.shard_groups
                        and not self.shard_groups[shard].is_leader
                    ):
                        await self._drop_replica(shard)
                except RaftLogFailedError:
                    raise  # the WAL refuses writes: the node cannot go on (driver fails)
                except (StorageError, OSError, NodeStartError) as error:
                    # One replica that cannot be created or dropped must not take the other
                    # shards down: report it, the next reconcile tries again.
                    logger.error(
                        "node %d: %s replica of shard %d failed: %s",
                        self.config.node_id,
                        "creating" if create else "dropping",
                        shard,
                        error,
                    )
                    if not future.done():
                        future.set_exception(UnavailableError(f"shard {shard}: {error}"))
                if not future.done():
                    future.set_result(None)
        finally:
            for _, _, future in queued:
                if not future.done():
                    future.set_exception(UnavailableError("replica change interrupted"))
        self._group_list = [self.groups[g] for g in sorted(self.groups)]

    def _current_map(self) -> ShardMap:
        meta = self.meta
        assert meta is not None
        return meta.state_machine.shard_map

    async def _create_replica(self, shard: int) -> None:
        await asyncio.to_thread(_remove_shard_files, self.config.shard_dir(shard))
        group_id = group_of_shard(shard)
        storage = await self.log.create_group_async(group_id)
        rng = random.Random(self._rng.getrandbits(64))
        try:
            await self._open_shard_group(shard, storage, 0, 0, rng)
        except BaseException:
            await self.log.remove_group_async(group_id)  # no half-made replica left behind
            raise
        self.counters.replicas_created += 1
        logger.info("node %d: created an empty replica of shard %d", self.config.node_id, shard)

    async def _drop_replica(self, shard: int) -> None:
        group = self.shard_groups.pop(shard)
        del self.groups[group.group_id]
        self._dirty.discard(group)
        self._queued_groups.discard(group)
        self._leases.pop(group.group_id, None)
        group.fail_all(
            UnavailableError(
                f"shard {shard}'s replica left node {self.config.node_id}",
                leader_hint=group.leader_id,
                retry_after_s=0.05,
            )
        )
        await self.log.remove_group_async(group.group_id)
        packing = self._packing.pop(group.group_id, None)
        if packing is not None:
            # A packing thread reads this engine: let it finish before the engine closes.
            await asyncio.gather(packing, return_exceptions=True)
        engine = group.state_machine.engine
        self._engines.remove(engine)
        try:
            await asyncio.to_thread(engine.close)
        except (StorageError, OSError) as error:
            logger.warning("shard %d: closing the dropped replica's engine: %s", shard, error)
        await asyncio.to_thread(_remove_shard_files, self.config.shard_dir(shard))
        self.counters.replicas_dropped += 1
        logger.info("node %d: dropped its replica of shard %d", self.config.node_id, shard)

    async def compact_logs(self, shards: list[int]) -> list[tuple[int, int]]:
        """Admin "snapshot": flush the given shards' engines, compact their logs to their
        durable applied index, truncate the WAL; returns (shard, snapshot index) pairs."""
        await self.plan_compactions(force_shards=shards)
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._compaction_waiters.append(waiter)
        self._force_truncate = True
        self.wake()
        await waiter
        return [(shard, self.shard_groups[shard].snapshot_index) for shard in shards]

    async def plan_compactions(self, force_shards: list[int] | None) -> list[_Compaction]:
        """Queue compactions for groups past the threshold or pinning an old WAL segment
        (`force_shards`: compact these shards regardless, for the admin snapshot call).
        Returns what was queued; the driver loop applies them. Serialized: the maintenance
        task and admin calls never write meta.snap or flush the same engine at once."""
        async with self._planning:
            return await self._plan_compactions(force_shards)

    async def _plan_compactions(self, force_shards: list[int] | None) -> list[_Compaction]:
        log = self.log
        threshold = self.config.snapshot_entries_threshold
        active_segment = log.wal.end_position.segment
        oldest_segments = {info.group_id: info.oldest_entry_segment for info in log.describe()}
        planned: list[_Compaction] = []
        for group in list(self._group_list):
            forced = (
                force_shards is not None
                and isinstance(group, ShardGroup)
                and group.shard in force_shards
            )
            if group.compaction_pending and not forced:
                continue
            oldest = oldest_segments.get(group.group_id)
            pins = oldest is not None and oldest < active_segment
            snapshot_index = group.snapshot_index
            if group.applied_index <= snapshot_index:
                continue
            if isinstance(group, MetaGroup):
                if not (pins or group.applied_index - snapshot_index >= threshold):
                    continue
                snapshot = group.state_machine.snapshot()
                await asyncio.to_thread(group.state_machine.persist, snapshot)
                planned.append(_Compaction(group.group_id, snapshot.applied_index, b""))
                continue
            assert isinstance(group, ShardGroup)
            durable = group.state_machine.durable_applied_index
            if not (forced or pins or durable - snapshot_index >= threshold):
                continue
            if durable <= snapshot_index or forced:
                durable = await asyncio.to_thread(group.state_machine.engine.flush)
            if durable > snapshot_index:
                planned.append(_Compaction(group.group_id, durable, b""))
        for compaction in planned:
            self.groups[compaction.group_id].compaction_pending = True
        self._compactions.extend(planned)
        if planned:
            self.wake()
        return planned

    async def _apply_compactions(self) -> None:
        """In the driver loop (between rounds: no Ready outstanding): compact each group's
        log, make the marks durable in one append, then truncate the WAL."""
        queued, self._compactions = self._compactions, []
        self._force_truncate = False
        # One mark per group per append (NodeRaftLog refuses two): the highest index wins
        # when the maintenance task and an admin call both planned a group.
        highest: dict[int, _Compaction] = {}
        for compaction in queued:
            known = highest.get(compaction.group_id)
            if known is None or compaction.index > known.index:
                highest[compaction.group_id] = compaction
        marks = []
        for compaction in highest.values():
            group = self.groups.get(compaction.group_id)
            if group is None:
                continue  # the replica was dropped since the compaction was planned
            group.compaction_pending = False
            if compaction.index <= group.snapshot_index:
                continue
            try:
                snapshot = group.raw.compact(compaction.index, compaction.data)
            except CompactionError as error:
                logger.warning("group %d: compaction skipped: %s", group.group_id, error)
                continue
            marks.append((group.group_id, snapshot.metadata))
        log = self.log
        waiters, self._compaction_waiters = self._compaction_waiters, []
        try:
            if marks:
                await log.record_compactions_async(marks)
                self.counters.compactions += len(marks)
            if log.truncatable_position().segment > log.wal.first_position.segment:
                result = await log.truncate_async()
                self.counters.truncations += 1
                self.counters.segments_deleted += len(result.deleted)
                first = log.wal.first_position.segment
                for segment in [s for s in self.segment_entries if s < first]:
                    del self.segment_entries[segment]
        finally:
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(None)

    # -------------------------------------------------------------------------- stop

    async def stop(self) -> None:
        """Stop the loops (the round in flight finishes: a persist is never cancelled), fail
        remaining waiters, stop the transport, close the engines (they flush) and the WAL.
        Idempotent; leaves no task running."""
        if self._stopped:
            return
        self._stopped = True
        self._stop_event.set()
        self._maintenance_wake.set()
        for task in self._tasks:
            if task.get_name().endswith("ticker"):
                task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._running = False
        self._wake_event.set()
        if self._driver is not None:
            await self._driver
        stopping = UnavailableError(f"node {self.config.node_id} is stopping")
        for group in self._group_list:
            group.fail_all(stopping)
        for waiter in (*self._idle_rounds, *self._compaction_waiters):
            if not waiter.done():
                waiter.set_exception(stopping)
        if self._transport is not None:
            await self._transport.stop()
        if self._background:
            # A packing thread reads an engine: let it finish before the engines close.
            await asyncio.gather(*self._background, return_exceptions=True)
        await self._close_storage()

    async def _close_storage(self) -> None:
        errors: list[str] = []
        engines, self._engines = self._engines, []
        for engine in engines:
            try:
                await asyncio.to_thread(engine.close)
            except (StorageError, OSError) as error:
                errors.append(f"engine {engine.path}: {error}")
        if self._log is not None:
            try:
                await self._log.aclose()
            except (RaftLogError, StorageError, OSError) as error:
                errors.append(f"WAL: {error}")
        for problem in errors:
            logger.error("node %d: closing: %s", self.config.node_id, problem)


def _meta_members(meta: MetaGroup) -> set[int]:
    """The voters and learners of the meta group's configuration as this replica applied it."""
    conf = meta.raw.conf_state
    return {*conf.voters, *conf.learners}
