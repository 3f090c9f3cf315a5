"""Linearizable reads: ReadIndex (thesis §6.4) and leader leases (thesis §6.4.1)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from minikv_core.raft.node import Config
from minikv_core.raft.types import (
    ConfigError,
    Message,
    MessageType,
    NotLeaderError,
    ProposalDroppedError,
    ReadOnlyMode,
    ReadState,
)
from tests.raft.harness import Network

ELECTION_TICKS = Config(node_id=1).election_timeout_ticks
LEASE_TICKS = Config(node_id=1).lease_ticks


def lease_based(config: Config) -> Config:
    return replace(config, read_only_mode=ReadOnlyMode.LEASE_BASED)


def test_read_index_is_answered_with_the_commit_index_after_a_quorum_round() -> None:
    """Thesis §6.4: record the commit index, confirm leadership with a heartbeat round
    acknowledged by a quorum, then answer."""
    net = Network([1, 2, 3])
    net.campaign(1)
    net.propose(1, b"x")
    net.node(1).read_index(b"req-1")
    net.settle()
    assert net.peers[1].read_states == [ReadState(2, b"req-1")]


def test_new_leader_serves_no_read_until_an_entry_of_its_term_commits() -> None:
    """Thesis §6.4 step 1: a new leader's commit index may trail its predecessor's until it
    commits an entry of its own term, so reads wait for its no-op to commit."""
    net = Network([1, 2, 3])
    net.message_filter = lambda m: m.type != MessageType.APPEND
    net.campaign(1)
    leader = net.node(1)
    assert leader.status().commit == 0
    leader.read_index(b"early")
    net.tick([1], ticks=2)  # heartbeat rounds are acknowledged, but the no-op is stuck
    assert net.peers[1].read_states == []
    net.message_filter = None
    net.tick([1], ticks=2)
    assert leader.status().commit == 1
    assert net.peers[1].read_states == [ReadState(1, b"early")]


def test_read_index_waits_while_the_leader_cannot_reach_a_quorum() -> None:
    """Thesis §6.4 step 3: without a quorum's acknowledgement a deposed leader could serve a
    stale read, so it answers nothing."""
    net = Network([1, 2, 3])
    net.campaign(1)
    net.isolate(1)
    net.node(1).read_index(b"cut-off")
    net.tick([1], ticks=ELECTION_TICKS // 2)
    assert net.peers[1].read_states == []
    net.heal()
    net.tick([1], ticks=1)
    assert net.peers[1].read_states == [ReadState(1, b"cut-off")]


def test_many_reads_share_one_heartbeat_round() -> None:
    """Batching: all requests registered before a round is broadcast are confirmed by it."""
    net = Network([1, 2, 3])
    net.campaign(1)
    net.delivered.clear()
    contexts = [f"r{i}".encode() for i in range(100)]
    for context in contexts:
        net.node(1).read_index(context)
    net.settle()
    assert len(net.sent(MessageType.HEARTBEAT, sender=1)) == 2  # one per follower
    assert net.peers[1].read_states == [ReadState(1, context) for context in contexts]


def test_follower_read_index_is_forwarded_to_the_leader_and_answered() -> None:
    net = Network([1, 2, 3])
    net.campaign(1)
    net.propose(1, b"x")
    net.node(2).read_index(b"from-follower")
    net.settle()
    assert net.peers[2].read_states == [ReadState(2, b"from-follower")]
    assert [m.to for m in net.sent(MessageType.READ_INDEX, sender=2)] == [1]


def test_read_index_without_a_known_leader_raises_not_leader() -> None:
    net = Network([1, 2, 3])
    with pytest.raises(NotLeaderError):
        net.node(2).read_index(b"nobody")


def test_pending_reads_are_bounded() -> None:
    net = Network([1, 2, 3], configure=lambda c: replace(c, pending_read_index_max=3))
    net.campaign(1)
    net.isolate(1)
    for index in range(3):
        net.node(1).read_index(f"r{index}".encode())
    with pytest.raises(ProposalDroppedError, match="pending"):
        net.node(1).read_index(b"one-too-many")


def test_lease_read_is_answered_without_a_round_trip() -> None:
    """Thesis §6.4.1: within its lease the leader answers from its commit index at once."""
    net = Network([1, 2, 3], configure=lease_based)
    net.campaign(1)
    net.tick([1], ticks=1)  # a heartbeat round acknowledged: the lease starts
    leader = net.node(1)
    leader.read_index(b"lease")
    assert net.process_ready(1)
    ready = net.peers[1].readies[-1]
    assert ready.read_states == (ReadState(1, b"lease"),)
    assert not [m for m in ready.messages if m.type == MessageType.HEARTBEAT]


def test_safe_mode_read_is_not_answered_without_a_round_trip() -> None:
    """Contrast for the lease test: SAFE mode always waits for a heartbeat round."""
    net = Network([1, 2, 3])
    net.campaign(1)
    net.tick([1], ticks=1)
    leader = net.node(1)
    leader.read_index(b"safe")
    assert net.process_ready(1)
    ready = net.peers[1].readies[-1]
    assert ready.read_states == ()
    assert len([m for m in ready.messages if m.type == MessageType.HEARTBEAT]) == 2


def test_lease_expires_when_the_quorum_stops_answering() -> None:
    """Thesis §6.4.1: the lease runs from the send time of the last acknowledged heartbeat
    and is shorter than the election timeout; once it lapses reads need a round trip."""
    net = Network([1, 2, 3], configure=lease_based)
    net.campaign(1)
    net.tick([1], ticks=1)
    net.isolate(1)
    net.tick([1], ticks=LEASE_TICKS)
    leader = net.node(1)
    leader.read_index(b"expired")
    assert net.process_ready(1)
    ready = net.peers[1].readies[-1]
    assert ready.read_states == ()


def test_lease_read_refused_without_check_quorum() -> None:
    """Thesis §6.4.1: leases are only safe if followers refuse votes while they hear from a
    leader, i.e. with check-quorum; the combination is a configuration error."""
    with pytest.raises(ConfigError, match="check_quorum"):
        Network([1, 2, 3], configure=lambda c: replace(lease_based(c), check_quorum=False))


def test_lease_must_be_shorter_than_the_election_timeout() -> None:
    with pytest.raises(ConfigError, match="lease_ticks"):
        Network(
            [1, 2, 3],
            configure=lambda c: replace(lease_based(c), lease_ticks=c.election_timeout_ticks),
        )


def test_lease_is_not_trusted_after_a_leadership_transfer_started() -> None:
    """TimeoutNow makes the target's election ignore leases (thesis §3.10), so a leader that
    sent it falls back to quorum rounds for the rest of its term."""
    net = Network([1, 2, 3], configure=lease_based)
    net.campaign(1)
    net.tick([1], ticks=1)
    net.cut(1, 2)  # the TimeoutNow to 2 is lost: 1 stays leader
    net.node(1).transfer_leader(2)
    net.settle()
    net.heal()
    net.tick([1], ticks=ELECTION_TICKS)  # the transfer is abandoned
    assert net.node(1).status().lead_transferee == 0
    leader = net.node(1)
    leader.read_index(b"after-transfer")
    assert net.process_ready(1)
    ready = net.peers[1].readies[-1]
    assert ready.read_states == ()
    net.settle()
    assert net.peers[1].read_states[-1].context == b"after-transfer"


def test_restarted_follower_honours_the_lease_it_may_have_granted() -> None:
    """Thesis §6.4.1: a follower that acknowledged a heartbeat and then restarted no longer
    knows the leader; if it voted at once, a new leader could be elected inside the old
    leader's lease. In LEASE_BASED mode it refuses votes for one election timeout."""
    net = Network([1, 2, 3], configure=lease_based)
    net.campaign(1)
    net.tick([1], ticks=1)
    net.restart(2)
    restarted = net.node(2)
    vote_request = Message(MessageType.VOTE, 2, 3, term=2, log_term=1, index=1)
    restarted.step(vote_request)
    assert restarted.term == 1
    for _ in range(ELECTION_TICKS):
        restarted.tick()
    restarted.step(vote_request)
    assert restarted.term == 2
    assert restarted.status().vote == 3
