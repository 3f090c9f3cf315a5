"""Seeded random faults over the scenario harness, checking Raft's safety properties
(Figure 3) after every step. A failure prints the seed and the step that broke.

This is a quick in-suite guard; the deterministic simulator (minikv_core/raft/sim) is the
thorough version with virtual time, latency and crash timing.
"""

from __future__ import annotations

import contextlib
import random
from dataclasses import replace

import pytest

from minikv_core.raft.node import Config
from minikv_core.raft.types import Message, ProposalDroppedError, Role
from tests.raft.harness import Network

STEPS = 400
SEEDS = range(1, 41)


class SafetyChecker:
    """Election Safety, State Machine Safety (§5.4.3) and Leader Completeness (§5.4)."""

    def __init__(self, net: Network, seed: int) -> None:
        self.net = net
        self.seed = seed
        self.leader_of_term: dict[int, int] = {}
        self.applied_at: dict[int, tuple[int, bytes]] = {}
        self.term_when_applied: dict[int, int] = {}
        """Highest term any node had when the index was first applied: the entry was
        committed in a term <= this, so every leader of a later term must hold it."""
        self.ready_cursor: dict[int, int] = dict.fromkeys(net.peers, 0)

    def check(self, step: int) -> None:
        where = f"seed {self.seed} step {step}"
        highest_term = max(peer.node.term for peer in self.net.peers.values())
        for node_id, peer in self.net.peers.items():
            node = peer.node
            if node.role == Role.LEADER:
                first = self.leader_of_term.setdefault(node.term, node_id)
                assert first == node_id, f"{where}: two leaders in term {node.term}"
            readies = peer.readies
            for ready in readies[self.ready_cursor[node_id] :]:
                for entry in ready.committed_entries:
                    seen = self.applied_at.setdefault(entry.index, (entry.term, entry.data))
                    self.term_when_applied.setdefault(entry.index, highest_term)
                    assert seen == (entry.term, entry.data), (
                        f"{where}: node {node_id} applied {entry} but {seen} was applied at "
                        f"index {entry.index}"
                    )
            self.ready_cursor[node_id] = len(readies)
        for node_id, peer in self.net.peers.items():
            if peer.node.role != Role.LEADER:
                continue
            status = peer.node.status()
            storage = peer.storage
            for index, (term, _) in self.applied_at.items():
                if self.term_when_applied[index] >= status.term:
                    continue  # this leader may predate the commit
                assert status.last_index >= index, (
                    f"{where}: leader {node_id} (term {status.term}) lacks applied entry {index}"
                )
                if storage.first_index() <= index <= storage.last_index():
                    assert storage.term(index) == term, (
                        f"{where}: leader {node_id} lacks applied entry {index}/{term}"
                    )


def random_run(seed: int) -> None:
    rng = random.Random(seed)
    net = Network(
        [1, 2, 3, 4, 5],
        seed=seed,
        configure=lambda c: replace(
            c, snapshot_chunk_bytes_max=16, snapshot_chunks_in_flight_max=2
        ),
    )
    checker = SafetyChecker(net, seed)
    drop_rate = 0.1

    def lossy(message: Message) -> bool:
        return rng.random() >= drop_rate

    net.message_filter = lossy
    proposal = 0
    for step in range(STEPS):
        action = rng.random()
        node_id = rng.randint(1, 5)
        if action < 0.45:
            net.tick()
        elif action < 0.70:
            for leader in net.leader_ids():
                proposal += 1
                with contextlib.suppress(ProposalDroppedError):  # e.g. during a transfer
                    net.node(leader).propose(f"s{seed}p{proposal}".encode())
            net.settle()
        elif action < 0.78:
            net.isolate(node_id)
        elif action < 0.86:
            net.heal()
        elif action < 0.90:
            net.restart(node_id)
        elif action < 0.94:
            status = net.node(node_id).status()
            if status.applied >= status.first_index:
                image = f"image-{node_id}-{status.applied}".encode() * 4
                net.node(node_id).compact(status.applied, image)
        elif action < 0.97 and net.queue:
            net.queue.append(rng.choice(net.queue))  # duplicate
            rng.shuffle(net.queue)  # and reorder
            net.settle()
        else:
            net.node(node_id).campaign()
            net.settle()
        checker.check(step)
    # Liveness once faults stop: everyone converges on one leader and the same commit.
    net.message_filter = None
    net.heal()
    net.tick(ticks=8 * Config(node_id=1).election_timeout_ticks)
    checker.check(STEPS)
    leaders = net.leader_ids()
    assert len(leaders) == 1, f"seed {seed}: leaders {leaders} after healing"
    commits = {net.node(n).status().commit for n in net.peers}
    assert len(commits) == 1, f"seed {seed}: commit indexes {commits} after healing"


@pytest.mark.parametrize("seed", SEEDS)
def test_random_faults_keep_raft_safety_properties(seed: int) -> None:
    random_run(seed)
