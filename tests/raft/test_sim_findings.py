"""Core bugs the simulator found, each pinned by a focused, scripted scenario.

A fixed bug stays here as a regression test. A bug still open is marked
`xfail(strict=True)`: when the core is fixed the test passes, the strict xfail then fails,
and whoever fixed it removes the marker.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import replace

from minikv_core.raft.node import Config, RawNode
from minikv_core.raft.storage import MemoryStorage
from minikv_core.raft.types import (
    ConfChange,
    ConfChangeType,
    ConfState,
    Message,
    MessageType,
    ProgressState,
    Role,
)

ROUNDS_MAX = 2_000


class _Cluster:
    """The smallest faithful host loop: persist, send, advance; FIFO delivery; cut links."""

    def __init__(self, storages: dict[int, MemoryStorage], config: Config | None = None) -> None:
        self.storages = storages
        self._config = config or Config(node_id=1)
        self.nodes = {node_id: self._new_node(node_id) for node_id in sorted(storages)}
        self.cut: set[tuple[int, int]] = set()
        self.deliver: Callable[[Message], bool] = lambda message: True
        self.applied: dict[int, int] = dict.fromkeys(storages, 0)

    def _new_node(self, node_id: int) -> RawNode:
        config = replace(self._config, node_id=node_id)
        return RawNode(config, self.storages[node_id], random.Random(node_id))

    def restart(self, node_id: int) -> None:
        """Crash and restart from the storage (which holds exactly what Readies persisted)."""
        self.nodes[node_id] = self._new_node(node_id)

    def isolate(self, node_id: int) -> None:
        for other in self.nodes:
            if other != node_id:
                self.cut |= {(node_id, other), (other, node_id)}

    def settle(self, ticks: int = 0) -> None:
        """Deliver until quiet; then tick everyone once and settle again, `ticks` times.

        Bounded: after ROUNDS_MAX delivery rounds it returns anyway (a message loop between
        two nodes is then visible in the state the test asserts on, not as a hang)."""
        for _ in range(ROUNDS_MAX):
            outbox: list[Message] = []
            for node_id, node in sorted(self.nodes.items()):
                while node.has_ready():
                    ready = node.ready()
                    self.storages[node_id].persist(ready)
                    outbox.extend(ready.messages)
                    if ready.committed_entries:
                        self.applied[node_id] = ready.committed_entries[-1].index
                    if not ready.snapshot.is_empty:
                        self.applied[node_id] = ready.snapshot.metadata.index
                    node.advance(ready)
            outbox = [
                m
                for m in outbox
                if (m.sender, m.to) not in self.cut and m.to in self.nodes and self.deliver(m)
            ]
            for message in outbox:
                self.nodes[message.to].step(message)
            if outbox:
                continue
            if ticks == 0:
                return
            ticks -= 1
            for node in self.nodes.values():
                node.tick()


def _group_with_empty_conf_joiner() -> _Cluster:
    """Voters 1, 2, 3 from the bootstrap ConfState; node 4 started with an empty ConfState
    (its membership unknown until a snapshot), then added as learner and promoted."""
    bootstrap = ConfState(voters=(1, 2, 3))
    storages = {node_id: MemoryStorage(bootstrap) for node_id in (1, 2, 3)}
    storages[4] = MemoryStorage(ConfState())
    cluster = _Cluster(storages)
    leader = cluster.nodes[1]
    leader.campaign()
    cluster.settle(ticks=3)
    assert leader.role == Role.LEADER
    leader.propose_conf_change(ConfChange(ConfChangeType.ADD_LEARNER, 4))
    cluster.settle(ticks=5)
    leader.propose_conf_change(ConfChange(ConfChangeType.ADD_VOTER, 4))
    cluster.settle(ticks=5)
    assert leader.status().conf_state == ConfState(voters=(1, 2, 3, 4))
    return cluster


def test_isolated_joiner_started_with_empty_conf_never_becomes_leader() -> None:
    """Raft §5.2 (election safety). Found by the simulator (with --joiners-start-empty,
    before the core's fix): the joiner replayed the log from index 1
    without the bootstrap voters kept at index 0, counted itself the only voter after its
    promotion, and won an election alone: two leaders committing different entries."""
    cluster = _group_with_empty_conf_joiner()
    joiner = cluster.nodes[4]
    cluster.isolate(4)
    joiner.campaign()
    cluster.settle(ticks=30)
    assert joiner.role != Role.LEADER, "an isolated voter of a 4-voter group became leader"


def test_group_elects_a_leader_when_the_empty_conf_joiner_has_the_longest_log() -> None:
    """Raft §5.4.1: only a voter with an up-to-date log can win, so that voter must be able
    to campaign. Voters end as {2, 4}; node 4 holds an entry node 2 lacks.

    Found by the simulator (with --joiners-start-empty, before the core's fix): a promoted
    joiner whose membership was unknown never campaigned and nobody taught it the
    membership; holding the longest log of the remaining voters, it blocked every election.
    With the bootstrap ConfState the same scenario always elected node 4."""
    cluster = _group_with_empty_conf_joiner()
    leader = cluster.nodes[1]
    leader.propose_conf_change(ConfChange(ConfChangeType.REMOVE_NODE, 3))
    cluster.settle(ticks=5)
    del cluster.nodes[3]  # the operator stops the removed node
    cluster.isolate(2)
    leader.propose(b"committed by nodes 1 and 4 while node 2 is cut off")
    cluster.settle(ticks=2)
    leader.propose_conf_change(ConfChange(ConfChangeType.REMOVE_NODE, 1))
    cluster.settle(ticks=5)
    assert cluster.nodes[4].status().commit > cluster.nodes[2].status().last_index
    del cluster.nodes[1]
    cluster.cut.clear()
    cluster.settle(ticks=200)  # 20 election timeouts
    roles = {node_id: node.role.name for node_id, node in sorted(cluster.nodes.items())}
    assert Role.LEADER in {node.role for node in cluster.nodes.values()}, roles


def test_follower_restart_during_chunked_snapshot_transfer_still_catches_up() -> None:
    """Raft §7: InstallSnapshot in chunks. A follower keeps a partial snapshot in memory only,
    so after a restart it holds nothing; the leader must then start over from offset 0.

    Found by the simulator (5 nodes, 8-byte snapshot chunks, before the core's fix): the
    leader ignored rejections below its acked offset and resent from there forever; a stale
    chunk of an older snapshot could wipe the follower's partial copy the same way."""
    bootstrap = ConfState(voters=(1, 2, 3))
    storages = {node_id: MemoryStorage(bootstrap) for node_id in (1, 2, 3)}
    config = Config(node_id=1, snapshot_chunk_bytes_max=8, snapshot_chunks_in_flight_max=1)
    cluster = _Cluster(storages, config)
    leader = cluster.nodes[1]
    leader.campaign()
    cluster.settle(ticks=3)
    assert leader.role == Role.LEADER
    cluster.isolate(3)
    for number in range(5):
        leader.propose(f"command {number}".encode())
    cluster.settle(ticks=2)
    applied = cluster.applied[1]
    leader.compact(applied, b"state machine image at %d bytes long" % applied)
    # Heal, but let only the first two chunks of the snapshot reach node 3, then restart it.
    cluster.cut.clear()
    chunks_delivered = 0

    def first_chunks_only(message: Message) -> bool:
        nonlocal chunks_delivered
        if message.type == MessageType.SNAPSHOT:
            chunks_delivered += 1
            return chunks_delivered <= 2
        return True

    cluster.deliver = first_chunks_only
    cluster.settle(ticks=3)
    assert chunks_delivered > 2, "the snapshot was not sent in chunks"
    cluster.restart(3)
    cluster.deliver = lambda message: True
    cluster.settle(ticks=100)
    assert cluster.applied[3] >= applied, (
        f"node 3 applied {cluster.applied[3]}, leader compacted at {applied}"
    )


def test_follower_catches_up_when_leader_compacts_past_the_snapshot_it_is_sending() -> None:
    """Raft §7. Found by the simulator (5 nodes, before the core's fix): the follower
    installed snapshot S, its answer was lost, the leader compacted again past S and kept
    resending S forever, each time told "I already have it"."""
    bootstrap = ConfState(voters=(1, 2, 3))
    storages = {node_id: MemoryStorage(bootstrap) for node_id in (1, 2, 3)}
    cluster = _Cluster(storages)
    leader = cluster.nodes[1]
    leader.campaign()
    cluster.settle(ticks=3)
    cluster.isolate(3)
    for number in range(3):
        leader.propose(f"before the first snapshot {number}".encode())
    cluster.settle(ticks=2)
    first = cluster.applied[1]
    leader.compact(first, b"image one")
    cluster.cut.clear()
    answers_lost = 0

    def lose_snapshot_acknowledgements(message: Message) -> bool:
        nonlocal answers_lost
        acknowledges_snapshot = (
            message.sender == 3
            and message.type == MessageType.APPEND_RESPONSE
            and not message.reject
            and message.index >= first
        )
        answers_lost += acknowledges_snapshot
        return not acknowledges_snapshot

    cluster.deliver = lose_snapshot_acknowledgements
    cluster.settle(ticks=5)  # node 3 installs the snapshot; the leader never hears of it
    assert cluster.applied[3] == first and answers_lost > 0
    for number in range(3):
        leader.propose(f"after the first snapshot {number}".encode())
    cluster.settle()
    second = cluster.applied[1]
    leader.compact(second, b"image two")
    view_of_3 = next(peer for peer in leader.status().peers if peer.node_id == 3)
    # The precondition of the bug: the leader still thinks it is sending the first snapshot.
    assert (view_of_3.state, view_of_3.pending_snapshot_index) == (ProgressState.SNAPSHOT, first)
    cluster.deliver = lambda message: True
    cluster.settle(ticks=50)
    assert cluster.applied[3] == cluster.applied[1] >= second
