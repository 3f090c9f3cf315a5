"""Leadership transfer with TimeoutNow (Raft thesis §3.10)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from minikv_core.raft.node import Config
from minikv_core.raft.types import (
    ConfChange,
    ConfChangeType,
    ConfState,
    Message,
    MessageType,
    NotLeaderError,
    ProposalDroppedError,
    Role,
)
from tests.raft.harness import Network

ELECTION_TICKS = Config(node_id=1).election_timeout_ticks


def test_transfer_to_an_up_to_date_follower_makes_it_leader_at_once() -> None:
    """Thesis §3.10: the leader sends TimeoutNow; the target campaigns immediately and, its
    log being current, wins the next term (past pre-vote and check-quorum leases)."""
    net = Network([1, 2, 3])
    net.campaign(1)
    net.propose(1, b"x")
    net.node(1).transfer_leader(2)
    net.settle()
    assert net.leader_ids() == [2]
    assert net.node(2).term == 2
    assert net.node(1).role == Role.FOLLOWER
    assert [m.to for m in net.sent(MessageType.TIMEOUT_NOW, sender=1)] == [2]
    net.propose(2, b"y")
    assert net.applied_commands(1) == [b"x", b"y"]


def test_transfer_to_a_lagging_follower_first_brings_it_up_to_date() -> None:
    """Thesis §3.10 step 2: the leader replicates to the target before TimeoutNow, so the
    target can win; meanwhile new proposals are refused (step 1)."""
    net = Network([1, 2, 3])
    net.campaign(1)
    net.cut(1, 3)
    for index in range(10):
        net.node(1).propose(f"lag{index}".encode())
    net.settle()
    assert net.node(3).status().last_index == 1
    net.heal()
    net.delivered.clear()
    net.node(1).transfer_leader(3)
    with pytest.raises(ProposalDroppedError, match="transferred"):
        net.node(1).propose(b"refused")
    net.settle()
    kinds = [(m.type, m.sender, m.index, m.reject) for m in net.delivered]
    caught_up = kinds.index((MessageType.APPEND_RESPONSE, 3, 11, False))
    timeout_now = kinds.index((MessageType.TIMEOUT_NOW, 1, 0, False))
    assert caught_up < timeout_now, "TimeoutNow sent before the target had the whole log"
    assert net.leader_ids() == [3]
    assert len(net.applied_commands(3)) == 10
    assert b"refused" not in net.applied_commands(3)


def test_transfer_is_abandoned_after_an_election_timeout() -> None:
    """Thesis §3.10: if the transfer does not complete within an election timeout the
    leader aborts it and accepts proposals again."""
    net = Network([1, 2, 3])
    net.campaign(1)
    net.isolate(3)
    net.node(1).transfer_leader(3)
    with pytest.raises(ProposalDroppedError):
        net.node(1).propose(b"during")
    net.tick([1, 2], ticks=ELECTION_TICKS)
    assert net.node(1).status().lead_transferee == 0
    assert net.leader_ids() == [1]
    net.propose(1, b"after-abort")
    assert b"after-abort" in net.applied_commands(2)


def test_transfer_requested_on_a_follower_is_forwarded_to_the_leader() -> None:
    net = Network([1, 2, 3])
    net.campaign(1)
    net.node(2).transfer_leader(3)
    net.settle()
    assert net.leader_ids() == [3]


def test_transfer_to_a_learner_or_stranger_is_refused() -> None:
    net = Network([1, 2], learners=[3])
    net.campaign(1)
    with pytest.raises(ProposalDroppedError, match="not a voter"):
        net.node(1).transfer_leader(3)
    with pytest.raises(ProposalDroppedError, match="not a voter"):
        net.node(1).transfer_leader(9)


def test_transfer_without_a_known_leader_raises_not_leader() -> None:
    net = Network([1, 2, 3])
    with pytest.raises(NotLeaderError):
        net.node(2).transfer_leader(3)


def test_timeout_now_is_ignored_by_a_learner() -> None:
    """Only voters may campaign, even when told to."""
    net = Network([1, 2], learners=[3])
    net.campaign(1)
    learner = net.node(3)
    learner.step(Message(MessageType.TIMEOUT_NOW, 3, 1, term=1))
    assert learner.role == Role.FOLLOWER
    assert learner.term == 1


def test_transfer_to_a_just_promoted_voter_tells_it_the_commit_first() -> None:
    """With lazy_commit a promoted learner holds the promotion entry without knowing it
    committed, so it is still a learner in its own eyes and ignores TimeoutNow (a move's
    promote-then-transfer then waited out an election timeout). The leader tells it the
    commit first; the transfer completes at once."""
    net = Network([1, 2, 3], configure=lambda c: replace(c, lazy_commit=True))
    net.campaign(1)
    net.add_node(4, ConfState(voters=(1, 2, 3)))
    net.node(1).propose_conf_change(ConfChange(ConfChangeType.ADD_LEARNER, 4))
    net.settle()
    net.propose(1, b"x")  # the learner catches up on it
    net.node(1).propose_conf_change(ConfChange(ConfChangeType.ADD_VOTER, 4))
    net.settle()
    assert net.node(1).conf_state == ConfState(voters=(1, 2, 3, 4))
    assert net.node(4).conf_state != net.node(1).conf_state, "moot: node 4 knew the commit"
    net.delivered.clear()
    net.node(1).transfer_leader(4)
    net.settle()
    assert net.leader_ids() == [4]
    kinds = [(m.type, m.sender, m.to) for m in net.delivered]
    assert kinds.index((MessageType.APPEND, 1, 4)) < kinds.index((MessageType.TIMEOUT_NOW, 1, 4))
