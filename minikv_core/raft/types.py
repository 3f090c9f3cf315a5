"""Value types of the Raft core: entries, messages, states, the Ready batch and status.

Every type is a frozen, slotted dataclass (`minikv_core.frozen`: frozen for the type checker,
cheap to build) or an enum holding plain values (ints, bools, bytes, tuples), so that
`minikv_core.net` can map each one field for field to protobuf and back, and so that the
deterministic simulator can copy, compare, duplicate and reorder them freely.

Node ids are positive ints; `NONE` (0) means "no node" (no vote, no known leader).
"""

from __future__ import annotations

import enum
import struct
from dataclasses import field

from minikv_core.frozen import frozen

NONE = 0
"""The absent node id: no vote cast, no leader known."""


class RaftError(Exception):
    """Base class of the errors the core raises to its host."""


class NotLeaderError(RaftError):
    """A request that only the leader can serve was made on a follower or candidate.

    The core never forwards proposals (the host does: it knows its transport and deadlines),
    so the exception carries the leader hint the host needs. `leader_id` is `NONE` when no
    leader is known (an election is in progress); the host should retry later.
    """

    def __init__(self, node_id: int, leader_id: int, term: int) -> None:
        self.node_id = node_id
        self.leader_id = leader_id
        self.term = term
        hint = f"leader is {leader_id}" if leader_id != NONE else "no leader known"
        super().__init__(f"node {node_id} is not the leader in term {term} ({hint})")


class ProposalDroppedError(RaftError):
    """The leader refused a proposal for a reason other than not being leader.

    Examples: a leadership transfer is in progress (Raft thesis §3.10), a configuration change
    is still uncommitted (thesis §4.1: one change at a time), the uncommitted log is over its
    byte bound, or the change itself is invalid (removing the last voter).
    """


class ConfigError(RaftError):
    """The core's Config is inconsistent (for example lease reads without check-quorum)."""


class Role(enum.IntEnum):
    """The role of a node in its current term (Raft §5.1 plus pre-vote, thesis §9.6)."""

    FOLLOWER = 0
    PRE_CANDIDATE = 1
    CANDIDATE = 2
    LEADER = 3


class EntryType(enum.IntEnum):
    NORMAL = 0
    """A host command (`data` is opaque), or the empty no-op a new leader appends (Raft §8)."""
    CONF_CHANGE = 1
    """A single-server membership change: `data` is `ConfChange.encode()`."""


class MessageType(enum.IntEnum):
    """Messages exchanged between peers. Local inputs are methods of RawNode, not messages."""

    APPEND = 1
    """AppendEntries (Raft §5.3): index/log_term = the entry preceding `entries`."""
    APPEND_RESPONSE = 2
    """index = the follower's last matching index, or the rejected index with reject=True
    and reject_hint/log_term as the fast-backoff hint (etcd findConflictByTerm)."""
    VOTE = 3
    """RequestVote (Raft §5.2); index/log_term = candidate's last entry (§5.4.1)."""
    VOTE_RESPONSE = 4
    PRE_VOTE = 5
    """Pre-vote (thesis §9.6): `term` is the term the sender *would* campaign in."""
    PRE_VOTE_RESPONSE = 6
    HEARTBEAT = 7
    """Empty AppendEntries carrying commit (capped at the follower's match) and in log_term
    the term of the entry at commit (the follower commits only if it holds that entry), the
    read-index round in `context`, in `index` the leader's tick stamp for leases (both echoed
    in the response), and in `snapshot` the leader's log base (metadata of its latest
    snapshot) from which a node with unknown membership can rebuild it."""
    HEARTBEAT_RESPONSE = 8
    """Echoes index and context; reject_hint/log_term = the follower's last index and its
    term, commit = its commit index; reject=True when it did not hold the entry at the
    heartbeat's commit (it lost acknowledged entries: the leader lowers its match)."""
    SNAPSHOT = 9
    """One chunk of InstallSnapshot (Raft §7): snapshot metadata, chunk_offset, chunk_data,
    chunk_done on the last chunk."""
    SNAPSHOT_RESPONSE = 10
    """index = snapshot index, chunk_offset = bytes the follower holds contiguously (the next
    offset it wants); reject=True when the chunk left a gap and must be resent."""
    TIMEOUT_NOW = 11
    """Leadership transfer (thesis §3.10): the recipient campaigns at once, bypassing leases."""
    READ_INDEX = 12
    """A follower forwards a read-index request (`context`) to the leader (thesis §6.4)."""
    READ_INDEX_RESPONSE = 13
    """The leader's answer: index = the read index for `context`."""
    TRANSFER_LEADER = 14
    """A follower forwards a transfer_leader request; `index` holds the transferee id."""
    PROPOSE = 15
    """A follower forwards client commands to the leader (etcd's MsgProp; thesis §6.2):
    `entries` carry them (only their data counts: the leader gives them its term and the next
    indexes). Sent in the follower's term and dropped by anyone not leading that term, so a
    command never lands in a log through a stale view; the proposer learns the outcome by
    applying the committed entry, matched by the request ids inside the commands. Unlike
    every other type it is not idempotent: the transport must not duplicate it (peer
    transport: at most once)."""


class ConfChangeType(enum.IntEnum):
    ADD_LEARNER = 0
    """Add a new non-voting member (thesis §4.2.1: new servers catch up as learners)."""
    ADD_VOTER = 1
    """Promote a learner to voter (or add a new voter directly)."""
    REMOVE_NODE = 2
    """Remove a voter or a learner."""


_CONF_CHANGE_STRUCT = struct.Struct(">BQ")


@frozen
class ConfChange:
    """One single-server membership change (Raft thesis §4.1)."""

    type: ConfChangeType
    node_id: int

    def encode(self) -> bytes:
        return _CONF_CHANGE_STRUCT.pack(int(self.type), self.node_id)

    @staticmethod
    def decode(data: bytes) -> ConfChange:
        """Decode `encode()` output; raises ValueError naming the problem on bad input."""
        if len(data) != _CONF_CHANGE_STRUCT.size:
            raise ValueError(
                f"conf change payload is {len(data)} bytes, expected {_CONF_CHANGE_STRUCT.size}"
            )
        kind, node_id = _CONF_CHANGE_STRUCT.unpack(data)
        try:
            change_type = ConfChangeType(kind)
        except ValueError:
            raise ValueError(f"conf change payload has unknown type {kind}") from None
        return ConfChange(change_type, node_id)


@frozen
class ConfState:
    """The membership: sorted voter ids and sorted learner ids (disjoint sets)."""

    voters: tuple[int, ...] = ()
    learners: tuple[int, ...] = ()


@frozen
class Entry:
    """One log entry. `index` starts at 1; `term` is the leader term that created it."""

    term: int
    index: int
    type: EntryType = EntryType.NORMAL
    data: bytes = b""


@frozen
class HardState:
    """What must be durable before a node answers anyone (Raft Figure 2, "persistent state").

    `commit` is persisted too (as etcd does) so a restarted node can re-apply without waiting
    for a leader; losing it would be safe, only slower.
    """

    term: int = 0
    vote: int = NONE
    commit: int = 0


@frozen
class SoftState:
    """Volatile state the host shows and routes by: who leads, and this node's role."""

    leader_id: int
    role: Role


@frozen
class SnapshotMetadata:
    index: int = 0
    term: int = 0
    conf_state: ConfState = field(default_factory=ConfState)


@frozen
class Snapshot:
    """A state machine image up to `metadata.index` (Raft §7). `data` is opaque to the core."""

    metadata: SnapshotMetadata = field(default_factory=SnapshotMetadata)
    data: bytes = b""

    @property
    def is_empty(self) -> bool:
        return self.metadata.index == 0


EMPTY_SNAPSHOT = Snapshot()


@frozen
class Message:
    """A peer-to-peer message. Fields unused by a type keep their zero default.

    Field meanings per type are documented on MessageType.
    """

    type: MessageType
    to: int
    sender: int
    term: int
    log_term: int = 0
    index: int = 0
    entries: tuple[Entry, ...] = ()
    commit: int = 0
    reject: bool = False
    reject_hint: int = 0
    context: bytes = b""
    snapshot: SnapshotMetadata | None = None
    chunk_offset: int = 0
    chunk_data: bytes = b""
    chunk_done: bool = False


@frozen
class ReadState:
    """A linearizable read may be served once the host's applied index >= `index`.

    `context` is the opaque request id the host passed to `read_index()` (thesis §6.4).
    """

    index: int
    context: bytes


class ProgressState(enum.IntEnum):
    """How the leader replicates to one follower (etcd tracker/progress.go)."""

    PROBE = 0
    """One append per heartbeat interval until the match index is found."""
    REPLICATE = 1
    """Optimistic pipelining: next advances on send, bounded by in-flight messages."""
    SNAPSHOT = 2
    """The follower needs entries that are compacted: InstallSnapshot chunks are in flight."""


class ReadOnlyMode(enum.IntEnum):
    SAFE = 0
    """ReadIndex confirmed by a heartbeat round to a quorum (thesis §6.4)."""
    LEASE_BASED = 1
    """Leader lease (thesis §6.4.1): needs check-quorum; answered without a round trip."""


@frozen
class Ready:
    """What the host must do, in this order, before calling `RawNode.advance(ready)`.

    1. `snapshot`, `entries` and `hard_state`: make durable (write + fsync), then make them
       visible through the Storage the core reads (MemoryStorage.persist(ready) does that).
    2. `messages`: send only after step 1 completed, so that no vote is granted, nor an append
       acknowledged, before it survives a crash (Raft Figure 2). One exception: a leader's
       APPEND and HEARTBEAT messages (from a Ready that changes neither term nor vote) may be
       sent before its own entries are durable (thesis §10.2.1, as etcd does): they promise
       nothing about the leader's disk, and the leader counts its own log toward a commit
       only at `advance()`. minikv's host does so (cluster/host.py).
    3. `committed_entries`: apply to the state machine, in order, after step 1 (they are
       committed on a quorum, and this node's own copy is durable from this or an earlier
       Ready). `read_states`: answer each read once applied index >= its index.
    4. `advance(ready)`.
    """

    soft_state: SoftState | None
    """Set when leader or role changed since the previous Ready; nothing to persist."""
    hard_state: HardState | None
    """Set when term, vote or commit changed: persist before sending `messages`."""
    entries: tuple[Entry, ...]
    """New log entries: persist before sending `messages`. The first one may overwrite a
    suffix of the stored log (truncate from its index, Raft §5.3)."""
    snapshot: Snapshot
    """A snapshot received from the leader (EMPTY_SNAPSHOT if none): persist and install it
    (it replaces the state machine and the log before it) before sending `messages`."""
    committed_entries: tuple[Entry, ...]
    """Entries to apply in order, after step 1. Conf changes among them take effect in the
    core when `advance(ready)` is called (etcd's "on apply" rule)."""
    messages: tuple[Message, ...]
    """Messages to send after step 1 is durable. Loss, duplication and reordering are fine."""
    read_states: tuple[ReadState, ...]
    """Linearizable read answers: serve each once applied index >= ReadState.index."""
    must_sync: bool
    """True when hard_state's term/vote or any entry changed, or a conf change is among
    `committed_entries`: fsync is required. Otherwise only the commit index changed, and it
    may be written without fsync (or not at all: it is volatile state, Raft Figure 2).
    Why a committed conf change forces it: a restarted node replays the conf changes up to
    its *stored* commit index only, so one that applied a membership change must find it in
    effect after a restart. Otherwise, after a full restart, members could fall back to a
    configuration whose removed voters have already deleted their replicas, and never get
    a quorum again (seen: shard 1's members {4, 6, 7} came back as {2, 3, 4, 6}, with 2
    decommissioned and 3's replica gone)."""


@frozen
class PeerStatus:
    """The leader's view of one peer (for the dashboard)."""

    node_id: int
    is_learner: bool
    match: int
    next: int
    state: ProgressState
    recent_active: bool
    inflight_messages: int
    pending_snapshot_index: int


@frozen
class Status:
    """A consistent picture of one node for the dashboard and admin API."""

    node_id: int
    role: Role
    is_learner: bool
    term: int
    vote: int
    leader_id: int
    commit: int
    applied: int
    first_index: int
    last_index: int
    conf_state: ConfState
    lead_transferee: int
    peers: tuple[PeerStatus, ...]
    """Empty unless this node is the leader."""
