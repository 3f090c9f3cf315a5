"""A small deterministic in-test network for Raft scenario tests (after etcd's `network`).

Every node is a RawNode over a MemoryStorage, driven exactly as the Ready contract says:
persist (MemoryStorage.persist), then queue the messages, then apply, then advance. Messages
wait in one FIFO queue until `settle()` delivers them; links can be cut in either direction,
and a per-message filter can drop or inspect traffic. Nothing here reads a clock: time is
`tick()`; the only randomness is a `random.Random(seed)` per node.

The randomized fault simulator is minikv_core/raft/sim; this harness is for hand-written
scenarios where each step is chosen by the test.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace

from minikv_core.raft.node import Config, RawNode
from minikv_core.raft.storage import MemoryStorage
from minikv_core.raft.types import (
    NONE,
    ConfState,
    Entry,
    EntryType,
    HardState,
    Message,
    MessageType,
    ReadState,
    Ready,
    Role,
    Snapshot,
)


def storage_with_log(
    conf_state: ConfState, terms: Iterable[int], hard_state: HardState | None = None
) -> MemoryStorage:
    """A MemoryStorage holding entries 1..n with the given terms (data b"t<term>i<index>"),
    as if persisted before a crash; the hard state defaults to the last term, no vote."""
    storage = MemoryStorage(conf_state)
    term_list = list(terms)
    storage.append(
        [
            Entry(term, index, EntryType.NORMAL, f"t{term}i{index}".encode())
            for index, term in enumerate(term_list, 1)
        ]
    )
    last_term = term_list[-1] if term_list else 0
    storage.set_hard_state(hard_state or HardState(term=last_term))
    return storage


MessageFilter = Callable[[Message], bool]
"""Returns True to deliver the message, False to drop it."""

SETTLE_ROUNDS_MAX = 10_000
SETTLE_DELIVERIES_MAX = 200_000
"""Messages one settle() may deliver: two nodes answering each other forever fail fast."""


@dataclass
class Peer:
    """One node of the harness and what its host observed."""

    node: RawNode
    storage: MemoryStorage
    config: Config
    applied: list[Entry] = field(default_factory=list)
    read_states: list[ReadState] = field(default_factory=list)
    installed_snapshots: list[Snapshot] = field(default_factory=list)
    readies: list[Ready] = field(default_factory=list)
    """Every Ready this node produced, in order (for per-Ready assertions)."""
    state_machine_image: bytes = b""
    """The latest snapshot data installed (tests use it to check snapshot contents)."""


class Network:
    """Nodes plus an in-memory FIFO message queue with cuttable links."""

    def __init__(
        self,
        voters: Iterable[int],
        learners: Iterable[int] = (),
        *,
        seed: int = 1,
        configure: Callable[[Config], Config] | None = None,
        members: Iterable[int] | None = None,
        storages: dict[int, MemoryStorage] | None = None,
    ) -> None:
        """Create a group. `members` (default voters + learners) are the nodes started;
        all start with ConfState(voters, learners) at index 0, or from `storages[id]` (a
        log prepared by the test, see `storage_with_log`)."""
        self.seed = seed
        self.conf_state = ConfState(tuple(sorted(voters)), tuple(sorted(learners)))
        self._configure = configure or (lambda config: config)
        self.peers: dict[int, Peer] = {}
        self.queue: list[Message] = []
        self.cut_links: set[tuple[int, int]] = set()
        self.down: set[int] = set()
        self.message_filter: MessageFilter | None = None
        self.delivered: list[Message] = []
        node_ids = members if members is not None else (*self.conf_state.voters, *learners)
        prepared = storages or {}
        for node_id in sorted(node_ids):
            self.add_node(node_id, self.conf_state, prepared.get(node_id))

    # -- membership of the harness ------------------------------------------------------------

    def add_node(
        self,
        node_id: int,
        conf_state: ConfState | None = None,
        storage: MemoryStorage | None = None,
    ) -> Peer:
        """Start a node on `storage`, or on a fresh log knowing `conf_state`: a joiner gets
        the group's bootstrap ConfState; with an empty one its membership stays unknown (it
        never campaigns) until it installs a snapshot from the leader."""
        if storage is None:
            storage = MemoryStorage(conf_state or ConfState())
        config = self._configure(Config(node_id=node_id))
        node = RawNode(config, storage, random.Random(self.seed * 1000 + node_id))
        peer = Peer(node, storage, config)
        self.peers[node_id] = peer
        return peer

    def node(self, node_id: int) -> RawNode:
        return self.peers[node_id].node

    def restart(self, node_id: int) -> None:
        """Crash and restart from persisted state (MemoryStorage holds exactly what a Ready
        made durable; the applied index is the host's, kept across the restart)."""
        peer = self.peers[node_id]
        applied_index = peer.node.status().applied
        config = replace(peer.config, applied_index=applied_index)
        peer.node = RawNode(config, peer.storage, random.Random(self.seed * 7 + node_id))
        self.queue = [m for m in self.queue if m.to != node_id]

    def restart_with_lost_tail(self, node_id: int, count: int) -> None:
        """Crash `node_id`; its disk comes back without its newest `count` entries although
        they were durable and acknowledged (a damaged last WAL record cut as a torn tail),
        with the commit index of a hard state written before them; then restart it."""
        old = self.peers[node_id].storage
        snapshot = old.snapshot()
        storage = MemoryStorage(snapshot.metadata.conf_state)
        if not snapshot.is_empty:
            storage.apply_snapshot(snapshot)
        last = old.last_index() - count
        assert last >= old.first_index() - 1, "cannot lose entries covered by the snapshot"
        low = old.first_index()
        while low <= last:
            entries = old.entries(low, last + 1, 1 << 30)
            storage.append(entries)
            low = entries[-1].index + 1
        hard, _ = old.initial_state()
        storage.set_hard_state(replace(hard, commit=min(hard.commit, last)))
        self.restart_from(node_id, storage)

    def restart_from(self, node_id: int, storage: MemoryStorage) -> None:
        """Crash `node_id` and restart it on `storage` (a disk the test damaged). Its state
        machine restarts from its last durable image, never past the stored commit index (a
        host that applied beyond it could not start: RaftLog refuses)."""
        peer = self.peers[node_id]
        hard, _ = storage.initial_state()
        applied_index = min(peer.node.status().applied, hard.commit)
        peer.applied = [entry for entry in peer.applied if entry.index <= applied_index]
        peer.storage = storage
        config = replace(peer.config, applied_index=applied_index)
        peer.node = RawNode(config, storage, random.Random(self.seed * 7 + node_id))
        self.queue = [m for m in self.queue if m.to != node_id]

    # -- faults -------------------------------------------------------------------------------

    def isolate(self, node_id: int) -> None:
        for other in self.peers:
            if other != node_id:
                self.cut(node_id, other)
                self.cut(other, node_id)

    def cut(self, sender: int, to: int) -> None:
        self.cut_links.add((sender, to))

    def heal(self) -> None:
        self.cut_links.clear()

    # -- driving ------------------------------------------------------------------------------

    def process_ready(self, node_id: int) -> bool:
        """Run one Ready cycle of `node_id` by the contract; False if nothing was ready."""
        peer = self.peers[node_id]
        node = peer.node
        if not node.has_ready():
            return False
        ready = node.ready()
        peer.readies.append(ready)
        peer.storage.persist(ready)  # 1. durable before anything is sent
        self.queue.extend(ready.messages)  # 2. send
        if not ready.snapshot.is_empty:  # 3. install, apply, answer reads
            peer.installed_snapshots.append(ready.snapshot)
            peer.state_machine_image = ready.snapshot.data
            peer.applied = [e for e in peer.applied if e.index <= ready.snapshot.metadata.index]
        peer.applied.extend(ready.committed_entries)
        peer.read_states.extend(ready.read_states)
        node.advance(ready)  # 4.
        return True

    def deliver_one(self) -> bool:
        if not self.queue:
            return False
        message = self.queue.pop(0)
        if (message.sender, message.to) in self.cut_links or message.to in self.down:
            return True
        if self.message_filter is not None and not self.message_filter(message):
            return True
        target = self.peers.get(message.to)
        if target is not None:
            self.delivered.append(message)
            target.node.step(message)
        return True

    def settle(self) -> None:
        """Run Ready cycles and deliver messages until nothing moves."""
        deliveries = 0
        for _ in range(SETTLE_ROUNDS_MAX):
            moved = False
            for node_id in sorted(self.peers):
                if node_id not in self.down and self.process_ready(node_id):
                    moved = True
            while self.deliver_one():
                moved = True
                deliveries += 1
                if deliveries > SETTLE_DELIVERIES_MAX:
                    last = self.delivered[-1] if self.delivered else None
                    raise AssertionError(
                        f"network did not settle: a message loop (seed {self.seed}, last "
                        f"delivered {last})"
                    )
                for node_id in sorted(self.peers):
                    if node_id not in self.down:
                        self.process_ready(node_id)
            if not moved:
                return
        raise AssertionError(f"network did not settle (seed {self.seed})")

    def tick(self, node_ids: Iterable[int] | None = None, ticks: int = 1) -> None:
        """Tick the given nodes (default all up nodes) `ticks` times, settling after each."""
        ids = sorted(node_ids) if node_ids is not None else sorted(self.peers)
        for _ in range(ticks):
            for node_id in ids:
                if node_id not in self.down:
                    self.peers[node_id].node.tick()
            self.settle()

    def campaign(self, node_id: int) -> None:
        self.node(node_id).campaign()
        self.settle()

    def propose(self, node_id: int, command: bytes) -> tuple[int, int]:
        result = self.node(node_id).propose(command)
        self.settle()
        return result

    # -- observations -------------------------------------------------------------------------

    def leader_ids(self) -> list[int]:
        return [
            node_id
            for node_id, peer in sorted(self.peers.items())
            if peer.node.role == Role.LEADER and node_id not in self.down
        ]

    def applied_commands(self, node_id: int) -> list[bytes]:
        """Data of applied NORMAL entries, skipping leaders' empty no-ops."""
        return [
            entry.data
            for entry in self.peers[node_id].applied
            if entry.type == EntryType.NORMAL and entry.data
        ]

    def log_terms(self, node_id: int) -> list[int]:
        """Terms of node's stored log from its first index (after settle: all persisted)."""
        storage = self.peers[node_id].storage
        return [
            storage.term(index) for index in range(storage.first_index(), storage.last_index() + 1)
        ]

    def sent(self, kind: MessageType, sender: int = NONE) -> list[Message]:
        return [m for m in self.delivered if m.type == kind and sender in (NONE, m.sender)]
