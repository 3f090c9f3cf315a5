"""RawNode: the pure Raft state machine of one group member (modelled on etcd-io/raft).

CHANGELOG for the simulator
---------------------------
- Snapshot chunks: the follower's reported offset is now trusted even when it goes down (a
  restarted follower lost its partial snapshot); a stalled transfer is resent from it after
  two heartbeat answers without progress. (Fixes the sim finding "follower restart during
  chunked snapshot transfer".)
- A node whose ConfState has no voters (a joiner started with `ConfState()`) now treats its
  membership as unknown: it applies no conf change and never campaigns until a snapshot or a
  leader heartbeat teaches it the membership. (Fixes the split brain of the sim finding
  "joiner started with empty conf".)
- A new leader now refuses conf changes until its own no-op entry is applied (was: until its
  election-time last index), per the thesis §4.1 erratum.
- Heartbeats now carry the leader's log base in `snapshot` (its storage snapshot metadata:
  index, term, ConfState). A node with unknown membership whose committed log reaches past
  that base rebuilds its membership from it (not persisted; relearned after a restart), so a
  promoted empty-conf joiner can campaign again. (Fixes the sim finding "group elects a leader
  when the empty-conf joiner has the longest log".)
- A follower whose disk lost acknowledged entries (a damaged WAL tail cut on restart) no longer
  trips the "commit beyond last index" assertion on the leader's heartbeat: heartbeats carry
  the term of the entry at their commit, a follower commits only an entry it holds (the
  consistency check of Raft Figure 2), and every heartbeat answer reports the follower's last
  index/term and commit, from which the leader lowers a stale match index and re-probes.
- No signature changed.

The core does no I/O, reads no clock and owns no randomness. Time advances only by `tick()`;
the randomized election timeout draws from the `rng` given to the constructor; storage is read
through the `Storage` protocol. The host drives it:

    node = RawNode(Config(node_id=1), storage, random.Random(seed))
    loop:
        node.tick()                      # every tick interval
        node.step(message)               # for each message received from a peer
        node.propose(command)            # leader only; NotLeaderError carries the leader hint
        if node.has_ready():
            ready = node.ready()
            persist ready.snapshot, ready.entries, ready.hard_state (fsync if must_sync),
                then storage.persist(ready)          # make them readable by the core
            send ready.messages                      # only AFTER the persist above
            apply ready.committed_entries; answer ready.read_states once applied
            node.advance(ready)

The Ready contract (see `Ready`): everything durable in a Ready is made durable before any of
its messages is sent, except a leader's appends and heartbeats, which a host may send in
parallel with its own write (etcd's rule, thesis §10.2.1): they state nothing about the
leader's disk, and the leader counts its own log toward the commit quorum only at `advance()`,
i.e. after its own persist. Every other message (votes, acknowledgements) is a statement
about durable state.

Membership changes take effect when applied (etcd's rule, not the thesis' "when appended"):
the core applies a committed ConfChange inside `advance()` for the Ready that delivered it.
It stays safe with single-server changes (thesis §4.1) because a leader refuses a new change
until the previous one is applied, and a new leader refuses one until every entry up to its
election-time last index is applied (this closes the bug of thesis §4.1's 2015 erratum: a new
leader must commit an entry of its term before changing the configuration).

A group starts from a bootstrap ConfState stored at index 0 (`MemoryStorage(conf_state)`), the
same on every founding member. A node joining later must be started with that same bootstrap
ConfState (it then replays the membership changes from the log like everyone else), or with an
empty one, in which case its membership is *unknown*: it applies no conf change and never
campaigns until it learns the membership, from a snapshot or from the log base that leader
heartbeats carry (once its committed log reaches past that base).

Between `ready()` and `advance()` the host may keep calling step/tick/propose; it must not call
`ready()` again before `advance()`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from operator import attrgetter
from typing import Protocol

from minikv_core.raft import limits
from minikv_core.raft.confchange import ConfChangeError, apply_conf_change
from minikv_core.raft.log import RaftLog, entries_size_bytes
from minikv_core.raft.progress import NEVER, Progress
from minikv_core.raft.quorum import VoteResult, quorum_value, vote_result
from minikv_core.raft.read_only import ReadOnly, ReadRequest, decode_round, encode_round
from minikv_core.raft.storage import (
    CompactedError,
    SnapshotTemporarilyUnavailableError,
    Storage,
    UnavailableError,
)
from minikv_core.raft.types import (
    EMPTY_SNAPSHOT,
    NONE,
    ConfChange,
    ConfigError,
    ConfState,
    Entry,
    EntryType,
    HardState,
    Message,
    MessageType,
    NotLeaderError,
    PeerStatus,
    ProgressState,
    ProposalDroppedError,
    RaftError,
    ReadOnlyMode,
    ReadState,
    Ready,
    Role,
    Snapshot,
    SnapshotMetadata,
    SoftState,
    Status,
)

CAMPAIGN_TRANSFER_CONTEXT = b"minikv-raft:transfer"
"""Vote-request context of an election started by TimeoutNow: voters grant it even while they
believe a leader is alive (thesis §3.10), since that leader asked for it."""

_ENTRY_TYPE = attrgetter("type")
_NORMAL = EntryType.NORMAL
_CONF_CHANGE = EntryType.CONF_CHANGE
_APPEND = MessageType.APPEND
_APPEND_RESPONSE = MessageType.APPEND_RESPONSE
_HEARTBEAT = MessageType.HEARTBEAT
_HEARTBEAT_RESPONSE = MessageType.HEARTBEAT_RESPONSE
_SNAPSHOT = MessageType.SNAPSHOT
_UNBOUNDED_BYTES = 1 << 62
SNAPSHOT_STALL_HEARTBEATS = 2
"""Heartbeat answers without chunk progress before the leader resends from the follower's
offset. Two, not one, so a chunk round trip slightly longer than a heartbeat interval does
not cause duplicate sends."""


class CompactionError(RaftError):
    """`compact()` was asked for an index outside (snapshot index, applied index]."""


class RandomSource(Protocol):
    """The injected randomness: `random.Random` satisfies it."""

    def randrange(self, start: int, stop: int) -> int: ...


@dataclass(frozen=True, slots=True)
class Config:
    """Per-node Raft settings. Defaults come from limits.py; `validate()` checks relations.

    Every member of a group must use the same timeouts, pre_vote and check_quorum settings:
    lease reads rely on *followers* honouring the leader's lease (check-quorum's vote refusal).
    """

    node_id: int
    election_timeout_ticks: int = limits.ELECTION_TIMEOUT_TICKS
    """Randomized timeouts are drawn from [election_timeout_ticks, 2*election_timeout_ticks)."""
    heartbeat_interval_ticks: int = limits.HEARTBEAT_INTERVAL_TICKS
    pre_vote: bool = True
    check_quorum: bool = True
    read_only_mode: ReadOnlyMode = ReadOnlyMode.SAFE
    lease_ticks: int = limits.LEASE_TICKS
    """Lease length for LEASE_BASED reads, counted from the send of an acknowledged
    heartbeat; must be < election_timeout_ticks to leave margin for clock drift."""
    applied_index: int = 0
    """The host's applied index at restart (0 = from the snapshot); committed entries after it
    are handed out again."""
    entries_per_message_max: int = limits.ENTRIES_PER_MESSAGE_MAX
    message_bytes_max: int = limits.MESSAGE_BYTES_MAX
    inflight_messages_max: int = limits.INFLIGHT_MESSAGES_MAX
    snapshot_chunk_bytes_max: int = limits.SNAPSHOT_CHUNK_BYTES_MAX
    snapshot_chunks_in_flight_max: int = limits.SNAPSHOT_CHUNKS_IN_FLIGHT_MAX
    uncommitted_bytes_max: int = limits.UNCOMMITTED_BYTES_MAX
    committed_bytes_per_ready_max: int = limits.COMMITTED_BYTES_PER_READY_MAX
    pending_read_index_max: int = limits.PENDING_READ_INDEX_MAX
    outbox_messages_max: int = limits.OUTBOX_MESSAGES_MAX
    lazy_commit: bool = False
    """Leader: send a commit-only AppendEntries only to a follower that waits for it (one
    whose forwarded proposals the new commit covers); every other follower learns the commit
    from the next append, the next heartbeat (at most heartbeat_interval_ticks later) or the
    answer to its ReadIndex. etcd broadcasts every commit at once, costing each write one
    message and one answer per follower; where a message is expensive (minikv's peer frames
    cost ~100 us of CPU each) that is a quarter of a lone client's write. Safety does not
    depend on it: a follower's commit index only says how far it may apply."""

    def validate(self) -> None:
        """Raise ConfigError naming the first inconsistent setting."""
        if self.node_id <= NONE:
            raise ConfigError(f"node_id must be positive, got {self.node_id}")
        if self.heartbeat_interval_ticks < 1:
            raise ConfigError("heartbeat_interval_ticks must be >= 1")
        if self.election_timeout_ticks <= self.heartbeat_interval_ticks:
            raise ConfigError(
                f"election_timeout_ticks ({self.election_timeout_ticks}) must exceed "
                f"heartbeat_interval_ticks ({self.heartbeat_interval_ticks})"
            )
        if self.read_only_mode == ReadOnlyMode.LEASE_BASED:
            if not self.check_quorum:
                # Thesis §6.4.1: without check-quorum followers grant votes while the old
                # leader still believes its lease, and a lease read could return stale data.
                raise ConfigError("read_only_mode LEASE_BASED requires check_quorum=True")
            if not 0 < self.lease_ticks < self.election_timeout_ticks:
                raise ConfigError(
                    f"lease_ticks ({self.lease_ticks}) must be in "
                    f"(0, election_timeout_ticks={self.election_timeout_ticks})"
                )
        if self.applied_index < 0:
            raise ConfigError("applied_index must be >= 0")
        for name in (
            "entries_per_message_max",
            "message_bytes_max",
            "inflight_messages_max",
            "snapshot_chunk_bytes_max",
            "snapshot_chunks_in_flight_max",
            "uncommitted_bytes_max",
            "committed_bytes_per_ready_max",
            "pending_read_index_max",
            "outbox_messages_max",
        ):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1")


class _SnapshotAssembly:
    """A follower's partially received InstallSnapshot (chunks arrive in offset order)."""

    __slots__ = ("buffer", "metadata")

    def __init__(self, metadata: SnapshotMetadata) -> None:
        self.metadata = metadata
        self.buffer = bytearray()


class RawNode:
    """One member of one Raft group. Not thread-safe: the host serializes all calls."""

    def __init__(self, config: Config, storage: Storage, rng: RandomSource) -> None:
        """Restore from `storage` (hard state, snapshot, log) and start as a follower.

        Raises ConfigError if `config` is inconsistent.
        """
        config.validate()
        self._config = config
        self._id = config.node_id
        self._rng = rng
        hard_state, conf_state = storage.initial_state()
        self._log = RaftLog(storage, config.applied_index)
        self._term = hard_state.term
        self._vote = hard_state.vote
        self._lead = NONE
        self._role = Role.FOLLOWER
        snapshot_index = storage.first_index() - 1
        self._conf = conf_state
        self._conf_history: list[tuple[int, ConfState]] = [(snapshot_index, conf_state)]
        self._conf_index = snapshot_index
        """The configuration reflects the log up to this index: max(applied, snapshot index,
        commit index replayed at restart). Conf changes at or below it are in effect."""
        self._progress: dict[int, Progress] = {}
        self._msgs: list[Message] = []
        self._read_states: list[ReadState] = []
        self._election_elapsed = 0
        self._heartbeat_elapsed = 0
        self._randomized_election_timeout = config.election_timeout_ticks
        self._ticks = 0
        self._restart_lease = (
            config.read_only_mode == ReadOnlyMode.LEASE_BASED and hard_state.term > 0
        )
        """A restarted node may have acknowledged a heartbeat just before crashing; a leader
        may count that toward a lease, so it refuses votes for one election timeout after
        restart, exactly as if it still heard from that leader (thesis §6.4.1)."""
        self._lead_transferee = NONE
        self._lease_revoked = False
        self._learned_founding: ConfState | None = None
        self._pending_conf_index = 0
        self._uncommitted_bytes = 0
        self._committed_in_term = False
        self._votes: dict[int, bool] = {}
        self._read_only = ReadOnly(config.pending_read_index_max)
        self._send_empty_to: set[int] = set()
        self._assembly: _SnapshotAssembly | None = None
        self._ready_outstanding = False
        self._messages_dropped = 0
        self._forwarded_dropped = 0
        self._step_role: Callable[[Message], None] = self._step_follower
        self._tick_role: Callable[[], None] = self._tick_election
        # Conf changes committed before the crash are in effect again at once; otherwise the
        # node could campaign under a configuration the group has already left.
        self._replay_conf_changes(self._log.committed)
        self._sync_progress_with_conf()
        self._become_follower(self._term, NONE)
        self._prev_soft = SoftState(NONE, Role.FOLLOWER)
        self._prev_hard = hard_state

    # -- identity and cheap accessors --------------------------------------------------------

    @property
    def node_id(self) -> int:
        return self._id

    @property
    def term(self) -> int:
        return self._term

    @property
    def role(self) -> Role:
        return self._role

    @property
    def leader_id(self) -> int:
        """The known leader of the current term, or NONE."""
        return self._lead

    @property
    def conf_state(self) -> ConfState:
        """The membership in effect (conf changes applied so far)."""
        return self._conf

    @property
    def commit(self) -> int:
        """The highest log index known committed (what `status().commit` says, without
        building a Status: the lease read asks on every linearizable read)."""
        return self._log.committed

    @property
    def lead_transferee(self) -> int:
        """The target of a leadership transfer under way on this leader, or NONE."""
        return self._lead_transferee

    @property
    def messages_dropped(self) -> int:
        """Messages dropped because the outbox was full (the host is not calling ready())."""
        return self._messages_dropped

    # -- inputs -------------------------------------------------------------------------------

    def tick(self) -> None:
        """Advance logical time by one tick (elections, heartbeats, check-quorum, transfers)."""
        self._ticks += 1
        self._tick_role()

    def step(self, message: Message) -> None:
        """Process one message from a peer. Stale, duplicate and foreign messages are ignored."""
        if message.to != self._id or message.sender in (NONE, self._id):
            return
        kind = message.type
        if message.term > self._term:
            if kind in (MessageType.VOTE, MessageType.PRE_VOTE):
                forced = message.context == CAMPAIGN_TRANSFER_CONTEXT
                election_ticks = self._config.election_timeout_ticks
                in_lease = self._config.check_quorum and (
                    (self._lead != NONE and self._election_elapsed < election_ticks)
                    or (self._restart_lease and self._ticks < election_ticks)
                )
                if in_lease and not forced:
                    # Thesis §4.2.3 / §6.2: a node that heard from a live leader within the
                    # minimum election timeout ignores vote requests (disruptive servers).
                    return
            if kind == MessageType.PRE_VOTE:
                pass  # a pre-vote never changes our term (thesis §9.6)
            elif kind == MessageType.PRE_VOTE_RESPONSE and not message.reject:
                pass  # a granted pre-vote carries the future term we asked for
            elif kind in (_APPEND, _HEARTBEAT, _SNAPSHOT):
                self._become_follower(message.term, message.sender)
            else:
                self._become_follower(message.term, NONE)
        elif message.term < self._term:
            if kind in (_APPEND, _HEARTBEAT) and (
                self._config.check_quorum or self._config.pre_vote
            ):
                # A stale leader cut off from the group would otherwise never learn the new
                # term (its peers ignore it and pre-vote keeps terms low): tell it (etcd).
                self._send(Message(_APPEND_RESPONSE, message.sender, self._id, self._term))
            elif kind == MessageType.PRE_VOTE:
                self._send(
                    Message(
                        MessageType.PRE_VOTE_RESPONSE,
                        message.sender,
                        self._id,
                        self._term,
                        reject=True,
                    )
                )
            return
        if kind in (MessageType.VOTE, MessageType.PRE_VOTE):
            self._handle_vote_request(message)
        else:
            self._step_role(message)

    def campaign(self) -> None:
        """Start an election now (pre-vote first if enabled), as if the timeout had fired."""
        self._hup(transfer=False)

    def propose(self, command: bytes) -> tuple[int, int]:
        """Append a command to the leader's log; returns (term, index) of its entry.

        The proposal is committed iff the entry at `index` commits with term `term`.
        Raises NotLeaderError (with the leader hint) on a non-leader, ProposalDroppedError
        during a leadership transfer or when the uncommitted log is over its byte bound.
        """
        self._check_can_propose(len(command))
        index = self._log.last_index() + 1
        self._append_leader_entries([Entry(self._term, index, _NORMAL, command)], len(command))
        return self._term, index

    def propose_batch(self, commands: Sequence[bytes]) -> tuple[int, int]:
        """Append many commands at once; returns (term, first_index), indexes are consecutive.

        Same errors as `propose`; all or nothing.
        """
        size = sum(map(len, commands))
        self._check_can_propose(size)
        term = self._term
        first = self._log.last_index() + 1
        if commands:
            entries = [
                Entry(term, index, _NORMAL, command)
                for index, command in enumerate(commands, first)
            ]
            self._append_leader_entries(entries, size)
        return term, first

    def forward_proposal(self, commands: Sequence[bytes]) -> int:
        """On a follower: send `commands` to the leader for it to append (thesis §6.2, etcd's
        MsgProp forwarding); returns the leader's id. Nothing says whether they were
        appended: the caller learns the outcome by applying (or never seeing) them, and must
        bound its wait. Raises NotLeaderError when this node leads (propose instead) or knows
        no leader."""
        if self._role == Role.LEADER or self._lead == NONE:
            raise NotLeaderError(self._id, self._lead, self._term)
        entries = tuple(Entry(0, 0, _NORMAL, command) for command in commands)
        self._send(Message(MessageType.PROPOSE, self._lead, self._id, self._term, entries=entries))
        return self._lead

    @property
    def forwarded_proposals_dropped(self) -> int:
        """PROPOSE messages this leader refused (transfer under way, or over the uncommitted
        bound); their proposers time out or see the leadership change."""
        return self._forwarded_dropped

    def propose_conf_change(self, change: ConfChange) -> tuple[int, int]:
        """Propose a single-server membership change; returns (term, index) of its entry.

        Raises NotLeaderError, or ProposalDroppedError if a change is still pending (not yet
        applied), the leader has not yet applied its election-time log, or `change` is invalid.
        """
        data = change.encode()
        self._check_can_propose(len(data))
        if self._pending_conf_index > self._conf_index:
            # Thesis §4.1: one change at a time; and (2015 erratum) a new leader first commits
            # and applies everything up to its election, including its own no-op entry.
            raise ProposalDroppedError(
                f"conf change refused: entry {self._pending_conf_index} (a conf change, or this "
                f"leader's first entry) is not applied yet (applied {self._conf_index})"
            )
        try:
            apply_conf_change(self._conf, change)
        except ConfChangeError as error:
            raise ProposalDroppedError(f"conf change refused: {error}") from None
        index = self._log.last_index() + 1
        self._append_leader_entries([Entry(self._term, index, _CONF_CHANGE, data)], len(data))
        self._pending_conf_index = index
        return self._term, index

    def read_index_answer(self, requester: int, index: int, context: bytes) -> Message:
        """The READ_INDEX_RESPONSE telling `requester` its read may be served at `index`:
        what the core sends after a heartbeat round, and what a host holding a lease sends
        at once. It carries the term of the entry at `index` (0 when compacted away), so a
        follower holding that entry commits up to it instead of waiting for a lazy_commit
        leader's next append or heartbeat."""
        try:
            log_term = self._log.term(index)
        except (CompactedError, UnavailableError):
            log_term = 0
        return Message(
            MessageType.READ_INDEX_RESPONSE,
            requester,
            self._id,
            self._term,
            log_term=log_term,
            index=index,
            context=context,
        )

    def read_index(self, context: bytes) -> None:
        """Request a linearizable read; the answer is a ReadState(index, context) in a Ready.

        On a follower the request is forwarded to the leader. Raises NotLeaderError if no
        leader is known. Requests past the pending bound are refused (ProposalDroppedError).
        """
        if self._role != Role.LEADER:
            if self._lead == NONE:
                raise NotLeaderError(self._id, NONE, self._term)
            self._send(
                Message(MessageType.READ_INDEX, self._lead, self._id, self._term, context=context)
            )
            return
        if not self._leader_read(self._id, context):
            raise ProposalDroppedError(
                f"read index refused: {self._config.pending_read_index_max} reads are pending"
            )

    def transfer_leader(self, target: int) -> None:
        """Hand leadership to `target` (thesis §3.10); a follower forwards it to the leader.

        The leader stops accepting proposals, brings `target` up to date, then sends it
        TimeoutNow; the transfer is abandoned after an election timeout. Raises NotLeaderError
        if no leader is known, ProposalDroppedError if `target` is not a voter.
        """
        if self._role != Role.LEADER:
            if self._lead == NONE:
                raise NotLeaderError(self._id, NONE, self._term)
            self._send(
                Message(MessageType.TRANSFER_LEADER, self._lead, self._id, self._term, index=target)
            )
            return
        if target not in self._conf.voters:
            raise ProposalDroppedError(f"transfer refused: node {target} is not a voter")
        self._leader_transfer(target)

    def report_unreachable(self, peer: int) -> None:
        """The host's transport failed to deliver to `peer`: fall back to probing it."""
        if self._role != Role.LEADER:
            return
        progress = self._progress.get(peer)
        if progress is not None and progress.state == ProgressState.REPLICATE:
            progress.become_probe()

    def compact(self, index: int, snapshot_data: bytes) -> Snapshot:
        """The host's state machine at applied index `index` is `snapshot_data`: record it as a
        snapshot in storage (`Storage.compact`) and drop the log before it. Returns it.

        Requires snapshot index < index <= applied. Followers needing dropped entries then
        receive the snapshot in chunks.
        """
        log = self._log
        first = log.first_index()
        if not first <= index <= log.applied:
            raise CompactionError(
                f"cannot compact to {index}: must be in [{first}, applied {log.applied}]"
            )
        conf_state = self._conf_at(index)
        snapshot = Snapshot(SnapshotMetadata(index, log.term(index), conf_state), snapshot_data)
        log.storage.compact(snapshot)
        history = [(at, conf) for at, conf in self._conf_history if at > index]
        self._conf_history = [(index, conf_state), *history]
        return snapshot

    # -- outputs ------------------------------------------------------------------------------

    def has_ready(self) -> bool:
        """Whether `ready()` would return anything to do."""
        self._flush()
        log = self._log
        prev_soft = self._prev_soft
        prev_hard = self._prev_hard
        return bool(
            self._msgs
            or self._read_states
            or log.has_entries_to_persist()
            or (log.pending_snapshot is not None and not log.snapshot_in_progress)
            or log.has_committed_to_apply()
            or prev_soft.leader_id != self._lead
            or prev_soft.role != self._role
            or prev_hard.term != self._term
            or prev_hard.vote != self._vote
            or prev_hard.commit != log.committed
        )

    def ready(self) -> Ready:
        """Collect the work for the host (see Ready for the ordering contract).

        Must be followed by `advance(ready)` before the next call.
        """
        assert not self._ready_outstanding, "ready() called again before advance()"
        self._flush()
        log = self._log
        soft = SoftState(self._lead, self._role)
        hard = HardState(self._term, self._vote, log.committed)
        prev_hard = self._prev_hard
        entries = log.entries_to_persist() if log.has_entries_to_persist() else ()
        snapshot = EMPTY_SNAPSHOT
        if log.pending_snapshot is not None and not log.snapshot_in_progress:
            snapshot = log.pending_snapshot
        committed = tuple(log.committed_to_apply(self._config.committed_bytes_per_ready_max))
        messages = tuple(self._msgs)
        self._msgs.clear()
        read_states = tuple(self._read_states)
        self._read_states.clear()
        hard_changed = hard != prev_hard
        ready = Ready(
            soft_state=soft if soft != self._prev_soft else None,
            hard_state=hard if hard_changed else None,
            entries=entries,
            snapshot=snapshot,
            committed_entries=committed,
            messages=messages,
            read_states=read_states,
            must_sync=bool(entries)
            or not snapshot.is_empty
            or hard.term != prev_hard.term
            or hard.vote != prev_hard.vote
            or any(entry.type is _CONF_CHANGE for entry in committed),
        )
        log.accept_persisting()
        self._prev_soft = soft
        self._prev_hard = hard
        self._ready_outstanding = True
        return ready

    def advance(self, ready: Ready) -> None:
        """The host has done everything `ready` asked: mark entries stable, entries applied,
        apply conf changes among the committed entries."""
        assert self._ready_outstanding, "advance() without a ready()"
        self._ready_outstanding = False
        log = self._log
        if not ready.snapshot.is_empty:
            index = ready.snapshot.metadata.index
            log.stable_snapshot_to(index)
            log.applied_to(index)
        if ready.entries:
            last = ready.entries[-1]
            log.stable_to(last.index, last.term)
        committed = ready.committed_entries
        if committed:
            if any(map(_ENTRY_TYPE, committed)):  # EntryType.NORMAL is 0: C-speed scan
                for entry in committed:
                    if entry.type == _CONF_CHANGE:
                        self._apply_conf_change_entry(entry)
            last_applied = committed[-1].index
            log.applied_to(last_applied)
            self._conf_index = max(self._conf_index, last_applied)
            if self._role == Role.LEADER:
                self._uncommitted_bytes = max(
                    0, self._uncommitted_bytes - entries_size_bytes(committed)
                )
        if self._role == Role.LEADER:
            # The leader's own vote for its entries counts only once they are durable.
            own = self._progress.get(self._id)
            if own is not None and own.maybe_update(log.persisted_last_index()):
                self._maybe_commit()

    def status(self) -> Status:
        """Role, term, leader, commit, applied, log bounds, membership, per-peer progress."""
        log = self._log
        peers: tuple[PeerStatus, ...] = ()
        if self._role == Role.LEADER:
            peers = tuple(
                PeerStatus(
                    node_id=node_id,
                    is_learner=progress.is_learner,
                    match=progress.match,
                    next=progress.next,
                    state=progress.state,
                    recent_active=progress.recent_active,
                    inflight_messages=len(progress.inflights),
                    pending_snapshot_index=progress.pending_snapshot_index,
                )
                for node_id, progress in sorted(self._progress.items())
            )
        return Status(
            node_id=self._id,
            role=self._role,
            is_learner=self._id in self._conf.learners,
            term=self._term,
            vote=self._vote,
            leader_id=self._lead,
            commit=log.committed,
            applied=log.applied,
            first_index=log.first_index(),
            last_index=log.last_index(),
            conf_state=self._conf,
            lead_transferee=self._lead_transferee,
            peers=peers,
        )

    # -- role transitions ---------------------------------------------------------------------

    def _reset(self, term: int) -> None:
        if self._term != term:
            self._term = term
            self._vote = NONE
        self._lead = NONE
        self._election_elapsed = 0
        self._heartbeat_elapsed = 0
        self._randomized_election_timeout = self._config.election_timeout_ticks + (
            self._rng.randrange(0, self._config.election_timeout_ticks)
        )
        self._lead_transferee = NONE
        self._lease_revoked = False
        self._votes = {}
        next_index = self._log.last_index() + 1
        inflight_max = self._config.inflight_messages_max
        for node_id, old in list(self._progress.items()):
            fresh = Progress(next_index, inflight_max, old.is_learner)
            if node_id == self._id:
                fresh.match = self._log.persisted_last_index()
            self._progress[node_id] = fresh
        self._pending_conf_index = 0
        self._uncommitted_bytes = 0
        self._committed_in_term = False
        self._read_only = ReadOnly(self._config.pending_read_index_max)
        self._send_empty_to.clear()

    def _become_follower(self, term: int, lead: int) -> None:
        self._reset(term)
        self._lead = lead
        self._role = Role.FOLLOWER
        self._step_role = self._step_follower
        self._tick_role = self._tick_election

    def _become_pre_candidate(self) -> None:
        assert self._role != Role.LEADER, "a leader cannot pre-campaign"
        # Pre-vote changes neither term nor vote (thesis §9.6): a partitioned node that
        # keeps failing pre-votes cannot inflate its term and disrupt the group later.
        self._votes = {}
        self._lead = NONE
        self._role = Role.PRE_CANDIDATE
        self._step_role = self._step_candidate
        self._tick_role = self._tick_election

    def _become_candidate(self) -> None:
        assert self._role != Role.LEADER, "a leader cannot campaign"
        self._reset(self._term + 1)
        self._vote = self._id
        self._role = Role.CANDIDATE
        self._step_role = self._step_candidate
        self._tick_role = self._tick_election

    def _become_leader(self) -> None:
        assert self._role != Role.PRE_CANDIDATE, "a pre-candidate cannot lead"
        self._reset(self._term)
        self._lead = self._id
        self._role = Role.LEADER
        self._step_role = self._step_leader
        self._tick_role = self._tick_heartbeat
        own = self._progress.get(self._id)
        if own is not None:
            own.become_replicate()
        # Raft §8: a no-op entry of the new term lets the leader commit (and learn the commit
        # index of) the entries of earlier terms, which it may not commit by counting (§5.4.2).
        index = self._log.last_index() + 1
        self._append_leader_entries([Entry(self._term, index, _NORMAL, b"")], 0)
        # No conf change until the no-op, hence the whole election-time log, is applied: the
        # thesis §4.1 erratum (a leader must commit an entry of its term first), and any conf
        # change still pending in the inherited log has taken effect.
        self._pending_conf_index = index

    def _hup(self, *, transfer: bool) -> None:
        if self._role == Role.LEADER or not self._promotable():
            return
        if self._has_unapplied_conf_change():
            # The configuration in effect may be about to change; campaigning under the old
            # one could elect a leader the new configuration does not support.
            return
        if self._config.pre_vote and not transfer:
            self._campaign(pre_vote=True, transfer=False)
        else:
            self._campaign(pre_vote=False, transfer=transfer)

    def _campaign(self, *, pre_vote: bool, transfer: bool) -> None:
        if pre_vote:
            self._become_pre_candidate()
            kind = MessageType.PRE_VOTE
            term = self._term + 1
        else:
            self._become_candidate()
            kind = MessageType.VOTE
            term = self._term
        self._votes[self._id] = True
        result = vote_result(self._conf.voters, self._votes)
        if result == VoteResult.WON:
            if pre_vote:
                self._campaign(pre_vote=False, transfer=transfer)
            else:
                self._become_leader()
            return
        last_index = self._log.last_index()
        last_term = self._log.last_term()
        context = CAMPAIGN_TRANSFER_CONTEXT if transfer else b""
        for voter in self._conf.voters:
            if voter != self._id:
                self._send(
                    Message(
                        kind,
                        voter,
                        self._id,
                        term,
                        log_term=last_term,
                        index=last_index,
                        context=context,
                    )
                )

    def _promotable(self) -> bool:
        return self._id in self._conf.voters

    def _has_unapplied_conf_change(self) -> bool:
        log = self._log
        if log.committed <= self._conf_index:
            return False
        try:
            pending = log.slice(self._conf_index + 1, log.committed + 1, _UNBOUNDED_BYTES)
        except CompactedError:
            return False
        return any(map(_ENTRY_TYPE, pending))

    # -- ticks --------------------------------------------------------------------------------

    def _tick_election(self) -> None:
        self._election_elapsed += 1
        if self._promotable() and self._election_elapsed >= self._randomized_election_timeout:
            self._election_elapsed = 0
            self._hup(transfer=False)

    def _tick_heartbeat(self) -> None:
        config = self._config
        self._election_elapsed += 1
        if self._election_elapsed >= config.election_timeout_ticks:
            self._election_elapsed = 0
            if config.check_quorum:
                if not self._quorum_active():
                    # Thesis §6.2: a leader that cannot reach a quorum steps down, so clients
                    # stop waiting on it and lease reads stop being served.
                    self._become_follower(self._term, NONE)
                    return
                for node_id, progress in self._progress.items():
                    if node_id != self._id:
                        progress.recent_active = False
            if self._lead_transferee != NONE:
                # Thesis §3.10: abort a transfer that did not complete in an election timeout.
                self._lead_transferee = NONE
        self._heartbeat_elapsed += 1
        if self._heartbeat_elapsed >= config.heartbeat_interval_ticks:
            self._heartbeat_elapsed = 0
            self._broadcast_heartbeat()

    def _quorum_active(self) -> bool:
        active = {
            node_id
            for node_id, progress in self._progress.items()
            if node_id == self._id or progress.recent_active
        }
        return vote_result(self._conf.voters, dict.fromkeys(active, True)) == VoteResult.WON

    # -- votes --------------------------------------------------------------------------------

    def _handle_vote_request(self, message: Message) -> None:
        pre_vote = message.type == MessageType.PRE_VOTE
        response_type = MessageType.PRE_VOTE_RESPONSE if pre_vote else MessageType.VOTE_RESPONSE
        can_vote = (
            self._vote == message.sender
            or (self._vote == NONE and self._lead == NONE)
            or (pre_vote and message.term > self._term)
        )
        # Raft §5.4.1: grant only to a candidate whose log is at least as up-to-date.
        if can_vote and self._log.is_up_to_date(message.index, message.log_term):
            self._send(Message(response_type, message.sender, self._id, message.term))
            if not pre_vote:
                # The vote reaches the Ready's hard state, durable before this response
                # is sent (Raft Figure 2: persist votedFor before responding).
                self._election_elapsed = 0
                self._vote = message.sender
        else:
            self._send(Message(response_type, message.sender, self._id, self._term, reject=True))

    # -- per-role step functions --------------------------------------------------------------

    def _step_follower(self, message: Message) -> None:
        kind = message.type
        if kind == _APPEND:
            self._election_elapsed = 0
            self._lead = message.sender
            self._handle_append(message)
        elif kind == _HEARTBEAT:
            self._election_elapsed = 0
            self._lead = message.sender
            self._handle_heartbeat(message)
        elif kind == _SNAPSHOT:
            self._election_elapsed = 0
            self._lead = message.sender
            self._handle_snapshot_chunk(message)
        elif kind == MessageType.TIMEOUT_NOW:
            # Thesis §3.10: campaign at once, skipping pre-vote, with votes forced past leases.
            self._hup(transfer=True)
        elif kind == MessageType.TRANSFER_LEADER:
            if self._lead != NONE:
                self._send(replace(message, to=self._lead, sender=self._id, term=self._term))
        elif kind == MessageType.READ_INDEX_RESPONSE:
            # The read index is the leader's commit index, and log_term the term of its entry
            # there: holding that very entry, our log equals the leader's up to it (Log
            # Matching, Raft §5.3), so it is committed here too. Without this, a lazy_commit
            # leader's follower would wait for the next append or heartbeat to apply it.
            if message.log_term and self._log.match_term(message.index, message.log_term):
                self._log.commit_to(message.index)
            self._read_states.append(ReadState(message.index, message.context))

    def _step_candidate(self, message: Message) -> None:
        kind = message.type
        if kind == _APPEND:
            self._become_follower(message.term, message.sender)
            self._handle_append(message)
        elif kind == _HEARTBEAT:
            self._become_follower(message.term, message.sender)
            self._handle_heartbeat(message)
        elif kind == _SNAPSHOT:
            self._become_follower(message.term, message.sender)
            self._handle_snapshot_chunk(message)
        elif (kind == MessageType.PRE_VOTE_RESPONSE and self._role == Role.PRE_CANDIDATE) or (
            kind == MessageType.VOTE_RESPONSE and self._role == Role.CANDIDATE
        ):
            if message.sender in self._conf.voters:  # learners' votes never count
                self._votes.setdefault(message.sender, not message.reject)
            result = vote_result(self._conf.voters, self._votes)
            if result == VoteResult.WON:
                if self._role == Role.PRE_CANDIDATE:
                    self._campaign(pre_vote=False, transfer=False)
                else:
                    self._become_leader()
            elif result == VoteResult.LOST:
                self._become_follower(self._term, NONE)

    def _step_leader(self, message: Message) -> None:
        kind = message.type
        progress = self._progress.get(message.sender)
        if kind == MessageType.READ_INDEX:
            self._leader_read(message.sender, message.context)  # dropped when full
            return
        if kind == MessageType.PROPOSE:
            self._append_forwarded(message)
            return
        if progress is None:
            return  # not a member (removed, or not yet added)
        if kind == _APPEND_RESPONSE:
            self._handle_append_response(message, progress)
        elif kind == _HEARTBEAT_RESPONSE:
            self._handle_heartbeat_response(message, progress)
        elif kind == MessageType.SNAPSHOT_RESPONSE:
            self._handle_snapshot_response(message, progress)
        elif kind == MessageType.TRANSFER_LEADER and message.index in self._conf.voters:
            self._leader_transfer(message.index)

    # -- follower handlers --------------------------------------------------------------------

    def _handle_append(self, message: Message) -> None:
        log = self._log
        if message.index < log.committed:
            self._send(
                Message(_APPEND_RESPONSE, message.sender, self._id, self._term, index=log.committed)
            )
            return
        last_new = log.maybe_append(
            message.index, message.log_term, message.commit, message.entries
        )
        if last_new is not None:
            self._send(
                Message(_APPEND_RESPONSE, message.sender, self._id, self._term, index=last_new)
            )
            return
        # Fast backoff (etcd findConflictByTerm): point the leader at our last entry whose
        # term is <= the term it probed with, skipping whole terms it cannot match.
        hint_index, hint_term = log.find_conflict_by_term(
            min(message.index, log.last_index()), message.log_term
        )
        self._send(
            Message(
                _APPEND_RESPONSE,
                message.sender,
                self._id,
                self._term,
                index=message.index,
                reject=True,
                reject_hint=hint_index,
                log_term=hint_term,
            )
        )

    def _handle_heartbeat(self, message: Message) -> None:
        log = self._log
        commit = message.commit
        # The paper's heartbeat is an empty AppendEntries, so its commit only ever applies to a
        # log that passed the consistency check (Raft Figure 2, §5.3). etcd drops the check and
        # caps the commit at the leader's match index instead, trusting that an acknowledged
        # entry is still here; a disk that lost the tail of the log breaks that trust (etcd
        # then panics: "tocommit is out of range ... Was the raft log corrupted, truncated, or
        # lost?"). So the leader sends the term of the entry at `commit`, and we commit only if
        # we hold that very entry: by Log Matching our log then equals the leader's up to it.
        # Otherwise our log lost entries we acknowledged (shorter, or an overwritten suffix
        # back from an older write): commit nothing and let the answer show the leader where
        # our log really ends, so it lowers its match index and re-sends what is missing.
        verified = commit <= log.committed or log.match_term(commit, message.log_term)
        if verified:
            log.commit_to(commit)
        if not self._conf.voters and message.snapshot is not None:
            self._learn_membership(message.snapshot)
        self._send(
            Message(
                _HEARTBEAT_RESPONSE,
                message.sender,
                self._id,
                self._term,
                index=message.index,
                context=message.context,
                reject=not verified,
                reject_hint=log.last_index(),
                log_term=log.last_term(),
                commit=log.committed,
            )
        )

    def _handle_snapshot_chunk(self, message: Message) -> None:
        metadata = message.snapshot
        if metadata is None:
            return
        log = self._log
        if metadata.index <= log.committed:
            # We already have everything it covers: tell the leader where we are.
            self._assembly = None
            self._send(
                Message(_APPEND_RESPONSE, message.sender, self._id, self._term, index=log.committed)
            )
            return
        assembly = self._assembly
        if assembly is None or assembly.metadata != metadata:
            if message.chunk_offset != 0:
                self._send_snapshot_response(message, metadata, held_bytes=0, reject=True)
                return
            assembly = self._assembly = _SnapshotAssembly(metadata)
        buffer = assembly.buffer
        held = len(buffer)
        start = message.chunk_offset
        data = message.chunk_data
        if start > held:
            # A chunk before this one was lost or reordered: ask for a resend from `held`.
            self._send_snapshot_response(message, metadata, held_bytes=held, reject=True)
            return
        end = start + len(data)
        if end > held:
            buffer += data[held - start :]
        if not (message.chunk_done and end == len(buffer)):
            self._send_snapshot_response(message, metadata, held_bytes=len(buffer), reject=False)
            return
        self._assembly = None
        snapshot = Snapshot(metadata, bytes(buffer))
        self._restore(snapshot)
        self._send(
            Message(_APPEND_RESPONSE, message.sender, self._id, self._term, index=log.last_index())
        )

    def _learn_membership(self, leader_base: SnapshotMetadata) -> None:
        """Rebuild an unknown membership from the leader's log base (its snapshot metadata,
        carried by heartbeats) plus our own committed entries after it.

        Entries up to our conf index are committed, hence identical to the leader's (Log
        Matching), so replaying their conf changes onto the leader's configuration at its base
        yields exactly the configuration every member has at our conf index. A founding
        membership (the leader's base is index 0, as ours) is handed to the host to make
        durable (`take_learned_founding`); one learned from a later base is not persisted, and
        a restarted node is then unknown again (so never campaigns) until the next heartbeat.
        """
        base_index = leader_base.index
        own_base = self._log.first_index() - 1
        if not own_base <= base_index <= self._conf_index or not leader_base.conf_state.voters:
            return  # we lack the entries after its base: a snapshot or appends will come
        conf = leader_base.conf_state
        history: list[tuple[int, ConfState]] = [(own_base, ConfState()), (base_index, conf)]
        low = base_index + 1
        while low <= self._conf_index:
            entries = self._log.slice(low, self._conf_index + 1, self._config.message_bytes_max)
            for entry in entries:
                if entry.type == _CONF_CHANGE:
                    try:
                        conf = apply_conf_change(conf, ConfChange.decode(entry.data))
                    except (ValueError, ConfChangeError):
                        continue  # skipped by every member alike
                    history.append((entry.index, conf))
            low = entries[-1].index + 1
        self._conf_history = history
        self._set_conf(conf)
        if base_index == own_base == 0:
            # The group's founding membership: the host makes it durable (take_learned_
            # founding), so that a restart does not make this replica unknown again.
            self._learned_founding = leader_base.conf_state

    def take_learned_founding(self) -> ConfState | None:
        """The founding membership (at index 0) this replica, started empty, learned from a
        leader's heartbeat since the last call, else None. Why the host persists it: the
        learned membership is otherwise lost at a restart, and a group whose voters all
        joined after the bootstrap would then have no member able to campaign, so it never
        elects again (seen after a repair, a rebalance and a remove-node, then `cluster down`
        and `up`: two shards without a leader)."""
        founding, self._learned_founding = self._learned_founding, None
        return founding

    def _send_snapshot_response(
        self, message: Message, metadata: SnapshotMetadata, *, held_bytes: int, reject: bool
    ) -> None:
        self._send(
            Message(
                MessageType.SNAPSHOT_RESPONSE,
                message.sender,
                self._id,
                self._term,
                index=metadata.index,
                chunk_offset=held_bytes,
                reject=reject,
            )
        )

    def _restore(self, snapshot: Snapshot) -> None:
        """Install a complete snapshot from the leader (Raft §7)."""
        metadata = snapshot.metadata
        log = self._log
        if log.match_term(metadata.index, metadata.term):
            # Our log already contains the snapshot's last entry: keep the entries after it
            # (Raft §7: "retain log entries following it") and just advance the commit.
            log.commit_to(metadata.index)
            return
        log.restore(snapshot)
        self._conf_index = metadata.index
        self._conf_history = [(metadata.index, metadata.conf_state)]
        self._set_conf(metadata.conf_state)

    # -- leader handlers ----------------------------------------------------------------------

    def _handle_append_response(self, message: Message, progress: Progress) -> None:
        if message.index == 0 and not message.reject:
            return  # "your term is stale" answer to an append of an earlier term of ours
        progress.recent_active = True
        log = self._log
        if message.reject:
            next_probe = message.reject_hint
            if message.log_term > 0:
                next_probe, _ = log.find_conflict_by_term(message.reject_hint, message.log_term)
            decreased = progress.maybe_decrease_to(message.index, next_probe)
            if decreased and progress.state == ProgressState.REPLICATE:
                progress.become_probe()
            return
        advanced = progress.maybe_update(message.index)
        if advanced:
            progress.match_tick = self._ticks
        state = progress.state
        if state == ProgressState.SNAPSHOT:
            if progress.match >= progress.pending_snapshot_index:
                # Installed (or no longer needed). If we compacted past it meanwhile, the
                # probe finds the gap and starts a newer snapshot.
                progress.become_probe()
                if progress.match + 1 >= log.first_index():
                    progress.become_replicate()
        elif state == ProgressState.PROBE:
            if advanced or progress.match == message.index:
                progress.become_replicate()
        else:
            progress.inflights.free_up_to(message.index)
        if advanced:
            self._maybe_commit()
        if message.sender == self._lead_transferee and progress.match == log.last_index():
            self._transfer_when_promotable(message.sender, progress)

    def _handle_heartbeat_response(self, message: Message, progress: Progress) -> None:
        progress.recent_active = True
        if message.reject or message.reject_hint < progress.match:
            self._handle_lost_entries(message, progress)
        progress.probe_sent = False
        if progress.state == ProgressState.REPLICATE and progress.inflights.full:
            progress.inflights.free_first()
        if progress.state == ProgressState.SNAPSHOT:
            progress.snapshot_stalled_rounds += 1
            if progress.snapshot_stalled_rounds >= SNAPSHOT_STALL_HEARTBEATS:
                # No chunk progress across heartbeat rounds: chunks or answers were lost.
                progress.resend_snapshot_from(progress.snapshot_acked_offset)
                self._send_snapshot_chunks(message.sender, progress)
        elif progress.match < self._log.last_index():
            self._send_empty_to.add(message.sender)
        if message.index <= self._ticks:
            progress.lease_stamp = max(progress.lease_stamp, message.index)
        acked_round = decode_round(message.context)
        if acked_round > progress.acked_round:
            progress.acked_round = acked_round
            self._release_confirmed_reads()

    def _handle_lost_entries(self, message: Message, progress: Progress) -> None:
        """A heartbeat answer says the follower no longer holds entries it acknowledged: its
        last entry is below our match index for it, or it could not find the entry at the
        commit index we sent (which is at most that match). Its disk lost them (a torn or
        damaged WAL tail cut on restart). Lower match to what it provably holds and probe.

        Evidence only counts from a heartbeat sent after match last went up: every ack we had
        received by then was sent by the follower before it got that heartbeat, so without
        data loss its log still held those entries when it answered. An older heartbeat's
        answer may simply have been overtaken by the ack (reordering), so it is ignored; the
        next heartbeat brings fresh evidence if the entries really are gone.

        Lowering match is the one place it goes down. It is safe for the commit rule (Raft
        §5.4.2): our commit index never goes down, and a smaller match can only make the
        quorum value smaller. What it cannot undo is the past: an entry committed with this
        follower's acknowledgement is now on one server fewer until we re-send it. Raft's
        safety argument (§5.4.3) needs every committed entry on a majority, so recovering
        from peers is only sound while the servers that lost acknowledged entries are few
        enough that each committed entry is still on a majority of voters (a minority losing
        data, re-replicated before further losses). A server that lost its vote record could
        also vote twice in a term (§5.2); that is the host's to prevent, not fixable here.
        """
        stamp = message.index
        if not progress.match_tick < stamp <= self._ticks:
            return  # not after the last ack (or not one of our heartbeats): no evidence
        log = self._log
        last, last_term = message.reject_hint, message.log_term
        # Same entry at its last index: identical logs up to it (Log Matching). Otherwise:
        # its committed entries are in every later leader's log (Leader Completeness, §5.4),
        # so it holds ours up to its commit index.
        held = last if log.match_term(last, last_term) else message.commit
        if held >= progress.match:
            return  # it holds everything we thought: the refusal came from something else
        progress.lower_match_to(held)
        if progress.state == ProgressState.PROBE:
            # Fast backoff as for a rejected append (etcd findConflictByTerm): above `probe`
            # our terms exceed its last term, so it cannot hold those entries.
            probe = last if held == last else log.find_conflict_by_term(last, last_term)[0]
            progress.next = max(held, probe) + 1

    def _handle_snapshot_response(self, message: Message, progress: Progress) -> None:
        progress.recent_active = True
        snapshot = progress.snapshot
        if (
            progress.state != ProgressState.SNAPSHOT
            or snapshot is None
            or snapshot.metadata.index != message.index
        ):
            return
        held = min(message.chunk_offset, len(snapshot.data))
        if held > progress.snapshot_acked_offset:
            progress.snapshot_stalled_rounds = 0
        progress.snapshot_acked_offset = held  # the follower's word, even if lower (restart)
        if message.reject and held != progress.snapshot_reset_offset:
            # A gap at `held`: resend from there, once per gap (the later chunks in flight
            # will be refused for the same gap).
            progress.resend_snapshot_from(held)
        else:
            progress.snapshot_chunks_in_flight = max(0, progress.snapshot_chunks_in_flight - 1)
            if not message.reject and held > progress.snapshot_sent_offset:
                progress.snapshot_sent_offset = held  # the follower kept an earlier transfer
        self._send_snapshot_chunks(message.sender, progress)

    def _leader_read(self, requester: int, context: bytes) -> bool:
        """Register a read-index request; False if the pending bound is reached."""
        read_only = self._read_only
        if read_only.full:
            return False
        if not self._committed_in_term:
            # Thesis §6.4 step 1: until an entry of this term commits, our commit index may
            # trail the previous leader's, so no safe read index exists yet.
            read_only.add_awaiting_commit(requester, context)
            return True
        commit = self._log.committed
        if self._config.read_only_mode == ReadOnlyMode.LEASE_BASED and self._lease_valid():
            self._answer_read(ReadRequest(requester, context, commit))
            return True
        read_only.add(requester, context, commit)
        return True

    def _lease_valid(self) -> bool:
        """Thesis §6.4.1: a quorum acknowledged a heartbeat sent less than lease_ticks ago.

        Each such follower reset its election timer on receipt, so it neither campaigns nor
        (check-quorum) grants votes for another election timeout > lease_ticks.
        """
        if not self._config.check_quorum or self._lease_revoked:
            return False
        if self._lead_transferee != NONE:
            return False
        now = self._ticks
        stamps = [
            now if voter == self._id else self._progress[voter].lease_stamp
            for voter in self._conf.voters
        ]
        oldest = quorum_value(stamps)
        return oldest != NEVER and now - oldest < self._config.lease_ticks

    def _answer_read(self, request: ReadRequest) -> None:
        if request.requester == self._id:
            self._read_states.append(ReadState(request.index, request.context))
            return
        self._send(self.read_index_answer(request.requester, request.index, request.context))

    def _release_confirmed_reads(self) -> None:
        read_only = self._read_only
        if not read_only.pending:
            return
        rounds = [
            read_only.round if voter == self._id else self._progress[voter].acked_round
            for voter in self._conf.voters
        ]
        for request in read_only.confirmed(quorum_value(rounds)):
            self._answer_read(request)

    def _leader_transfer(self, target: int) -> None:
        if self._lead_transferee != NONE:
            if self._lead_transferee == target:
                return
            self._lead_transferee = NONE
        if target == self._id:
            return
        progress = self._progress.get(target)
        if progress is None or progress.is_learner:
            return
        self._election_elapsed = 0  # the abort timer (thesis §3.10)
        self._lead_transferee = target
        if progress.match == self._log.last_index():
            self._transfer_when_promotable(target, progress)
        else:
            self._send_empty_to.add(target)

    def _transfer_when_promotable(self, target: int, progress: Progress) -> None:
        """TimeoutNow to a caught-up target, once it was told the commit of our latest
        configuration: a voter just promoted holds that entry but, with lazy_commit, may
        not know it committed, and campaigns only once it applied it (`_hup`). Sent before,
        TimeoutNow was ignored and the transfer waited out its election timeout (a move's
        promote-then-transfer took a second). Else tell it first (a commit-only append);
        its answer brings us back here."""
        if progress.sent_commit >= self._conf_history[-1][0]:
            self._send_timeout_now(target)
        else:
            self._send_empty_to.add(target)

    def _send_timeout_now(self, target: int) -> None:
        # The target's election ignores leases (forced votes), so our lease can no longer be
        # trusted for the rest of this term, even if the transfer is later abandoned.
        self._lease_revoked = True
        self._send(Message(MessageType.TIMEOUT_NOW, target, self._id, self._term))

    # -- leader replication -------------------------------------------------------------------

    def _check_can_propose(self, size_bytes: int) -> None:
        if self._role != Role.LEADER:
            raise NotLeaderError(self._id, self._lead, self._term)
        if self._lead_transferee != NONE:
            raise ProposalDroppedError(
                f"proposal refused: leadership is being transferred to {self._lead_transferee}"
            )
        if (
            self._uncommitted_bytes > 0
            and self._uncommitted_bytes + size_bytes > self._config.uncommitted_bytes_max
        ):
            raise ProposalDroppedError(
                f"proposal refused: {self._uncommitted_bytes} uncommitted bytes, bound is "
                f"{self._config.uncommitted_bytes_max}"
            )

    def _append_forwarded(self, message: Message) -> None:
        """A follower's PROPOSE in this leader's term (step() dropped other terms): append
        its commands as if proposed here, all or none, or drop them (counted)."""
        commands = [entry.data for entry in message.entries]
        if not commands:
            return
        size = sum(map(len, commands))
        try:
            self._check_can_propose(size)
        except ProposalDroppedError:
            self._forwarded_dropped += 1
            return
        first = self._log.last_index() + 1
        entries = [
            Entry(self._term, index, _NORMAL, command)
            for index, command in enumerate(commands, first)
        ]
        self._append_leader_entries(entries, size)
        progress = self._progress.get(message.sender)
        if progress is not None:
            # The proposer answers its clients when it applies these: with lazy_commit, it
            # is the follower told of their commit at once.
            progress.commit_wanted = max(progress.commit_wanted, entries[-1].index)

    def _append_leader_entries(self, entries: list[Entry], size_bytes: int) -> None:
        self._log.append(entries)
        self._uncommitted_bytes += size_bytes
        # Replication to followers happens at the next ready()/has_ready() (batching).

    def _maybe_commit(self) -> bool:
        log = self._log
        candidate = quorum_value([self._progress[voter].match for voter in self._conf.voters])
        # Raft §5.4.2 (Figure 8): only an entry of the current term is committed by counting
        # replicas; earlier entries commit indirectly through it.
        if candidate <= log.committed or log.term(candidate) != self._term:
            return False
        log.commit_to(candidate)
        if not self._committed_in_term:
            self._committed_in_term = True
            self._read_only.release_awaiting_commit(candidate)
        return True

    def _flush(self) -> None:
        """Leader: send what flow control allows to every follower (batches many proposals)."""
        if self._role != Role.LEADER:
            return
        if self._read_only.broadcast_needed:
            self._broadcast_heartbeat()
        log = self._log
        last = log.last_index()
        commit = log.committed
        send_empty = self._send_empty_to
        lazy = self._config.lazy_commit
        for node_id, progress in self._progress.items():
            if node_id == self._id or progress.state == ProgressState.SNAPSHOT:
                continue
            sent = False
            while not progress.paused and progress.next <= last:
                if not self._send_append(node_id, progress, send_if_empty=False):
                    break
                sent = True
            if sent or progress.paused:
                continue
            if node_id in send_empty or (
                progress.sent_commit < min(commit, progress.next - 1)
                and (not lazy or progress.sent_commit < progress.commit_wanted)
            ):
                self._send_append(node_id, progress, send_if_empty=True)
        send_empty.clear()

    def _send_append(self, to: int, progress: Progress, *, send_if_empty: bool) -> bool:
        log = self._log
        previous_index = progress.next - 1
        try:
            previous_term = log.term(previous_index)
        except CompactedError:
            return self._start_snapshot(to, progress)
        except UnavailableError:
            # next ran past our log (it only moves past last_index on stale acks); re-probe.
            progress.become_probe()
            return False
        last = log.last_index()
        entries: list[Entry] = []
        if progress.next <= last:
            high = min(last + 1, progress.next + self._config.entries_per_message_max)
            try:
                entries = log.slice(progress.next, high, self._config.message_bytes_max)
            except CompactedError:
                return self._start_snapshot(to, progress)
        if not entries and not send_if_empty:
            return False
        commit = log.committed
        self._send(
            Message(
                _APPEND,
                to,
                self._id,
                self._term,
                log_term=previous_term,
                index=previous_index,
                entries=tuple(entries),
                commit=commit,
            )
        )
        if entries:
            progress.sent_entries(entries[-1].index)
        elif progress.state == ProgressState.PROBE:
            progress.probe_sent = True
        progress.sent_commit = max(progress.sent_commit, commit)
        return True

    def _start_snapshot(self, to: int, progress: Progress) -> bool:
        if not progress.recent_active:
            return False  # do not ship a snapshot to a node that may be down
        try:
            snapshot = self._log.storage.snapshot()
        except SnapshotTemporarilyUnavailableError:
            return False  # the host is packing it; the next heartbeat response retries
        assert not snapshot.is_empty, "entries are compacted but storage has no snapshot"
        progress.become_snapshot(snapshot)
        self._send_snapshot_chunks(to, progress)
        return True

    def _send_snapshot_chunks(self, to: int, progress: Progress) -> None:
        """Send InstallSnapshot chunks up to the in-flight bound (Raft §7, chunked)."""
        snapshot = progress.snapshot
        assert snapshot is not None
        data = snapshot.data
        total = len(data)
        chunk_max = self._config.snapshot_chunk_bytes_max
        in_flight_max = self._config.snapshot_chunks_in_flight_max
        # snapshot_sent_offset == total + 1 marks "last chunk sent".
        while (
            progress.snapshot_chunks_in_flight < in_flight_max
            and progress.snapshot_sent_offset <= total
        ):
            start = progress.snapshot_sent_offset
            end = min(start + chunk_max, total)
            self._send(
                Message(
                    _SNAPSHOT,
                    to,
                    self._id,
                    self._term,
                    snapshot=snapshot.metadata,
                    chunk_offset=start,
                    chunk_data=data[start:end],
                    chunk_done=end == total,
                )
            )
            progress.snapshot_chunks_in_flight += 1
            progress.snapshot_sent_offset = end if end < total else total + 1

    def _broadcast_heartbeat(self) -> None:
        context = encode_round(self._read_only.next_round())
        stamp = self._ticks
        log = self._log
        commit = log.committed
        # Our log base (index, term, membership): lets a joiner started without the bootstrap
        # membership learn it (see _learn_membership). A shared reference, a few ints on the
        # wire, once per heartbeat interval.
        base = log.storage.snapshot_metadata()
        for node_id, progress in self._progress.items():
            if node_id == self._id:
                continue
            # Never tell a follower to commit past what it is known to hold (etcd), and send
            # the term of that entry so it can check it still holds it (_handle_heartbeat).
            follower_commit = min(progress.match, commit)
            try:
                follower_commit_term = log.term(follower_commit)
            except CompactedError:
                # It acknowledged less than our snapshot: no checkable commit to give; the
                # snapshot or the appends it needs carry the commit index.
                follower_commit = follower_commit_term = 0
            self._send(
                Message(
                    _HEARTBEAT,
                    node_id,
                    self._id,
                    self._term,
                    log_term=follower_commit_term,
                    index=stamp,
                    commit=follower_commit,
                    context=context,
                    snapshot=base,
                )
            )
        self._release_confirmed_reads()  # a single-voter group confirms its own rounds

    # -- membership ---------------------------------------------------------------------------

    def _apply_conf_change_entry(self, entry: Entry) -> None:
        if entry.index <= self._conf_index:
            return  # already in effect (replayed at restart)
        self._conf_index = entry.index
        if not self._conf.voters:
            # Unknown membership: a joiner started without the group's bootstrap ConfState.
            # Changes applied to an empty base would invent one (after its promotion it would
            # be the only voter: split brain). It stays unknown, so it never campaigns, until
            # a snapshot from the leader brings the real membership.
            return
        try:
            new_conf = apply_conf_change(self._conf, ConfChange.decode(entry.data))
        except (ValueError, ConfChangeError):
            # Every member applies the same committed log, so every member skips it alike.
            return
        self._conf_history.append((entry.index, new_conf))
        self._set_conf(new_conf)
        if self._role != Role.LEADER:
            return
        if self._id not in new_conf.voters:
            # The leader committed its own removal (it counted itself, thesis §4.2.2); it now
            # steps down so the remaining voters elect a leader among themselves.
            self._become_follower(self._term, NONE)
            return
        if self._lead_transferee not in (NONE, *new_conf.voters):
            self._lead_transferee = NONE
        self._maybe_commit()  # a smaller quorum may commit more
        self._release_confirmed_reads()

    def _set_conf(self, conf: ConfState) -> None:
        self._conf = conf
        self._sync_progress_with_conf()

    def _sync_progress_with_conf(self) -> None:
        conf = self._conf
        learners = set(conf.learners)
        members = set(conf.voters) | learners
        for node_id in list(self._progress):
            if node_id not in members:
                del self._progress[node_id]
        next_index = self._log.last_index() + 1
        for node_id in sorted(members):
            progress = self._progress.get(node_id)
            if progress is None:
                progress = Progress(next_index, self._config.inflight_messages_max, False)
                if node_id == self._id:
                    progress.match = self._log.persisted_last_index()
                self._progress[node_id] = progress
            progress.is_learner = node_id in learners

    def _replay_conf_changes(self, up_to: int) -> None:
        log = self._log
        low = self._conf_index + 1
        while low <= up_to:
            entries = log.slice(low, up_to + 1, self._config.message_bytes_max)
            for entry in entries:
                if entry.type == _CONF_CHANGE:
                    self._conf_index = entry.index - 1
                    self._apply_conf_change_entry(entry)
            low = entries[-1].index + 1
        self._conf_index = max(self._conf_index, up_to)

    def _conf_at(self, index: int) -> ConfState:
        conf = ConfState()  # below the first entry of the history: unknown
        for at, candidate in self._conf_history:
            if at > index:
                break
            conf = candidate
        return conf

    # -- output plumbing ----------------------------------------------------------------------

    def _send(self, message: Message) -> None:
        if len(self._msgs) >= self._config.outbox_messages_max:
            self._messages_dropped += 1  # Raft tolerates loss; heartbeats and probes resend
            return
        self._msgs.append(message)
