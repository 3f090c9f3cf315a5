"""Proposals forwarded by followers (thesis §6.2, etcd's MsgProp): the leader appends them in
its own term, refuses them while it could not take its own, and a PROPOSE from a stale term
never lands in a log."""

from __future__ import annotations

import pytest

from minikv_core.raft.types import Entry, EntryType, Message, MessageType, NotLeaderError
from tests.raft.harness import Network


def test_a_follower_forwards_commands_and_every_node_applies_them_in_the_leaders_term() -> None:
    net = Network([1, 2, 3])
    net.campaign(1)
    follower = net.node(2)
    assert follower.forward_proposal([b"a", b"b"]) == 1
    net.settle()
    (sent,) = net.sent(MessageType.PROPOSE, sender=2)
    assert sent.to == 1 and sent.term == follower.term
    for node_id in (1, 2, 3):
        assert net.applied_commands(node_id) == [b"a", b"b"]
    leader_term = net.node(1).term
    appended = [e for e in net.peers[2].applied if e.data]
    assert [e.term for e in appended] == [leader_term, leader_term]
    assert [e.index for e in appended] == [2, 3]  # after the leader's no-op at 1


def test_only_a_follower_that_knows_a_leader_forwards() -> None:
    net = Network([1, 2, 3])
    with pytest.raises(NotLeaderError):
        net.node(2).forward_proposal([b"x"])  # no leader yet
    net.campaign(1)
    with pytest.raises(NotLeaderError):
        net.node(1).forward_proposal([b"x"])  # the leader proposes instead


def test_the_leader_drops_forwarded_commands_during_a_transfer() -> None:
    net = Network([1, 2, 3])
    net.campaign(1)
    leader = net.node(1)
    net.cut(1, 3)  # the transferee cannot catch up: the transfer stays pending
    net.propose(1, b"before")
    leader.transfer_leader(3)
    net.settle()
    net.node(2).forward_proposal([b"during"])
    net.settle()
    assert leader.forwarded_proposals_dropped == 1
    assert b"during" not in net.applied_commands(1)


def test_a_propose_from_another_term_is_ignored() -> None:
    net = Network([1, 2, 3])
    net.campaign(1)
    leader = net.node(1)
    log_before = net.log_terms(1)
    stale = Message(
        MessageType.PROPOSE,
        1,
        2,
        leader.term - 1,
        entries=(Entry(0, 0, EntryType.NORMAL, b"stale"),),
    )
    leader.step(stale)
    net.settle()
    assert b"stale" not in net.applied_commands(1)
    assert leader.forwarded_proposals_dropped == 0  # not refused: never considered
    assert net.log_terms(1) == log_before
