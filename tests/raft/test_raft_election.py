"""Leader election: randomized timeouts, votes, pre-vote, check-quorum, learners (Raft §5.2)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from minikv_core.raft.node import Config
from minikv_core.raft.types import (
    NONE,
    ConfState,
    HardState,
    Message,
    MessageType,
    Role,
)
from tests.raft.harness import Network, storage_with_log

ELECTION_TICKS = Config(node_id=1).election_timeout_ticks


def plain(config: Config) -> Config:
    """The Raft paper's algorithm: no pre-vote, no check-quorum (etcd tests' default)."""
    return replace(config, pre_vote=False, check_quorum=False)


def pre_vote_only(config: Config) -> Config:
    return replace(config, pre_vote=True, check_quorum=False)


def check_quorum_only(config: Config) -> Config:
    return replace(config, pre_vote=False, check_quorum=True)


def test_single_leader_elected_and_its_noop_entry_committed() -> None:
    """Raft §5.2 (election) and §8 (a new leader commits a no-op entry of its term)."""
    net = Network([1, 2, 3])
    net.campaign(1)
    assert net.leader_ids() == [1]
    for node_id in (1, 2, 3):
        status = net.node(node_id).status()
        assert status.term == 1
        assert status.leader_id == 1
        assert status.commit == 1
        assert net.peers[node_id].applied[0].data == b""  # the no-op


@pytest.mark.parametrize("seed", range(1, 31))
def test_randomized_election_timeout_is_in_one_to_two_election_timeouts(seed: int) -> None:
    """Raft §5.2: followers wait a random time in [T, 2T) before campaigning."""
    net = Network([1, 2, 3], seed=seed, configure=plain)
    node = net.node(1)
    ticks = 0
    while node.role == Role.FOLLOWER:
        node.tick()
        ticks += 1
        assert ticks < 2 * ELECTION_TICKS, f"no campaign after {ticks} ticks (seed {seed})"
    assert ticks >= ELECTION_TICKS, f"campaigned after {ticks} ticks (seed {seed})"
    assert node.role == Role.CANDIDATE


def test_election_timeouts_differ_between_nodes() -> None:
    """Raft §5.2: randomization is what breaks split votes; the injected RNG must be used."""
    first_campaign_ticks = set()
    for seed in range(1, 21):
        net = Network([1, 2, 3], seed=seed, configure=plain)
        node = net.node(2)
        ticks = 0
        while node.role == Role.FOLLOWER:
            node.tick()
            ticks += 1
        first_campaign_ticks.add(ticks)
    assert len(first_campaign_ticks) >= 4, first_campaign_ticks


def test_node_grants_at_most_one_vote_per_term() -> None:
    """Raft §5.2: each server votes for at most one candidate in a given term."""
    net = Network([1, 2, 3], configure=plain)
    follower = net.node(3)
    follower.step(Message(MessageType.VOTE, 3, 1, term=1))
    follower.step(Message(MessageType.VOTE, 3, 2, term=1))
    responses = [m for m in follower.ready().messages if m.type == MessageType.VOTE_RESPONSE]
    assert [(m.to, m.reject) for m in responses] == [(1, False), (2, True)]


def test_vote_is_in_the_hard_state_of_the_ready_that_carries_the_response() -> None:
    """Raft Figure 2: votedFor is persisted before responding (Ready: persist, then send)."""
    net = Network([1, 2, 3], configure=plain)
    follower = net.node(2)
    follower.step(Message(MessageType.VOTE, 2, 1, term=1))
    ready = follower.ready()
    assert ready.hard_state == HardState(term=1, vote=1, commit=0)
    assert ready.must_sync
    assert [m.type for m in ready.messages] == [MessageType.VOTE_RESPONSE]
    assert not ready.messages[0].reject


def test_candidate_with_less_up_to_date_log_is_refused() -> None:
    """Raft §5.4.1: a voter denies its vote if its own log is more up-to-date."""
    conf = ConfState(voters=(1, 2, 3))
    net = Network(
        [1, 2, 3],
        configure=plain,
        storages={
            1: storage_with_log(conf, [1]),
            2: storage_with_log(conf, [1, 1]),
            3: storage_with_log(conf, [1, 1]),
        },
    )
    net.campaign(1)
    assert net.leader_ids() == []
    net.campaign(2)
    assert net.leader_ids() == [2]


def test_higher_last_term_beats_longer_log() -> None:
    """Raft §5.4.1: logs compare by last term first, then by length."""
    conf = ConfState(voters=(1, 2, 3))
    net = Network(
        [1, 2, 3],
        configure=plain,
        storages={
            1: storage_with_log(conf, [1, 1, 1]),
            2: storage_with_log(conf, [2]),
            3: storage_with_log(conf, [2]),
        },
    )
    net.campaign(1)
    assert net.leader_ids() == []
    net.campaign(2)
    assert net.leader_ids() == [2]
    # Node 1's longer but older-term suffix is overwritten (Raft §5.3).
    assert net.log_terms(1) == net.log_terms(2) == [2, 3]


def test_leader_election_overwrites_newer_term_uncommitted_entry() -> None:
    """Raft §5.4.1/§5.3 (etcd TestLeaderElectionOverwriteNewerLogs): node 3 holds an entry
    of term 2 that no one else has; a leader elected without it in term 3 overwrites it,
    although 2 is a newer term than the entry that replaces it."""
    conf = ConfState(voters=(1, 2, 3, 4, 5))
    net = Network(
        [1, 2, 3, 4, 5],
        configure=plain,
        storages={
            1: storage_with_log(conf, [1]),
            2: storage_with_log(conf, [1]),
            3: storage_with_log(conf, [2], HardState(term=2, vote=3)),
            4: storage_with_log(conf, [], HardState(term=2, vote=3)),
            5: storage_with_log(conf, [], HardState(term=2, vote=3)),
        },
    )
    net.campaign(1)  # term 2: nodes 3, 4, 5 already voted for 3 in term 2
    assert net.node(1).role == Role.FOLLOWER
    assert net.node(1).term == 2
    net.campaign(1)  # term 3: nodes 2, 4, 5 grant
    assert net.leader_ids() == [1]
    assert net.node(1).term == 3
    for node_id in (1, 2, 3, 4, 5):
        assert net.log_terms(node_id) == [1, 3], f"node {node_id}"
        assert net.node(node_id).status().commit == 2


def test_dueling_candidates_without_pre_vote_disrupt_the_leader() -> None:
    """Raft §5.2 (etcd TestDuelingCandidates): a candidate cut off during the election keeps
    its term; once it can talk, its higher term deposes the leader even though its log is
    too short to win."""
    net = Network([1, 2, 3], configure=plain)
    net.cut(1, 3)
    net.cut(3, 1)
    net.campaign(1)
    net.campaign(3)  # node 2 already voted for 1 in term 1
    assert net.node(1).role == Role.LEADER
    assert net.node(2).role == Role.FOLLOWER
    assert net.node(3).role == Role.CANDIDATE
    net.heal()
    net.campaign(3)  # term 2, but 3 lacks the leader's no-op entry
    assert [net.node(i).role for i in (1, 2, 3)] == [Role.FOLLOWER] * 3
    assert [net.node(i).term for i in (1, 2, 3)] == [2, 2, 2]
    assert net.log_terms(1) == net.log_terms(2) == [1]
    assert net.log_terms(3) == []


def test_dueling_pre_candidates_leave_the_leader_alone() -> None:
    """Thesis §9.6 (etcd TestDuelingPreCandidates): with pre-vote the cut-off node cannot
    win a pre-vote, so it never raises its term and the leader keeps leading."""
    net = Network([1, 2, 3], configure=pre_vote_only)
    net.cut(1, 3)
    net.cut(3, 1)
    net.campaign(1)
    net.campaign(3)
    assert net.node(3).role == Role.FOLLOWER  # pre-vote lost: back to follower
    assert net.node(3).term == 1
    net.heal()
    net.campaign(3)
    assert net.leader_ids() == [1]
    assert [net.node(i).term for i in (1, 2, 3)] == [1, 1, 1]


def test_disruptive_follower_is_stopped_by_pre_vote() -> None:
    """Thesis §9.6: a partitioned follower keeps timing out but, failing its pre-votes, never
    raises its term; when it reconnects the leader and term are unchanged."""
    net = Network([1, 2, 3])
    net.campaign(1)
    net.isolate(3)
    net.tick(ticks=5 * ELECTION_TICKS)
    assert net.node(3).term == 1, "pre-vote let the isolated node raise its term"
    assert net.node(3).role in (Role.FOLLOWER, Role.PRE_CANDIDATE)
    net.heal()
    net.tick(ticks=3)
    assert net.leader_ids() == [1]
    assert [net.node(i).term for i in (1, 2, 3)] == [1, 1, 1]
    assert net.node(3).leader_id == 1


def test_disruptive_follower_without_pre_vote_deposes_the_leader() -> None:
    """The failure pre-vote prevents (thesis §9.6): with check-quorum alone, the isolated
    node's inflated term reaches the leader in a response and forces it to step down."""
    net = Network([1, 2, 3], configure=check_quorum_only)
    net.campaign(1)
    net.isolate(3)
    net.tick(ticks=5 * ELECTION_TICKS)
    inflated = net.node(3).term
    assert inflated > 1
    net.heal()
    net.tick(ticks=1)
    assert net.node(1).term >= inflated, "the leader never saw the higher term"


def test_check_quorum_leader_steps_down_when_cut_off() -> None:
    """Thesis §6.2: a leader that hears from no quorum within an election timeout steps
    down, so clients stop waiting on it."""
    net = Network([1, 2, 3])
    net.campaign(1)
    net.tick(ticks=3 * ELECTION_TICKS)
    assert net.node(1).role == Role.LEADER  # a connected leader stays
    net.isolate(1)
    net.tick([1], ticks=2 * ELECTION_TICKS)
    assert net.node(1).role == Role.FOLLOWER
    assert net.node(1).leader_id == NONE
    assert net.node(1).term == 1


def test_leader_without_check_quorum_keeps_leading_when_cut_off() -> None:
    """Contrast for check-quorum (thesis §6.2): without it a cut-off leader never notices."""
    net = Network([1, 2, 3], configure=plain)
    net.campaign(1)
    net.isolate(1)
    net.tick([1], ticks=5 * ELECTION_TICKS)
    assert net.node(1).role == Role.LEADER


def test_follower_in_leader_lease_ignores_higher_term_vote_request() -> None:
    """Thesis §4.2.3: with check-quorum a follower that heard from its leader within the
    election timeout ignores vote requests, so a removed or partitioned server cannot
    depose a healthy leader."""
    net = Network([1, 2, 3])
    net.campaign(1)
    follower = net.node(2)
    follower.step(Message(MessageType.VOTE, 2, 3, term=9, log_term=9, index=99))
    assert follower.term == 1
    assert not [m for m in follower.ready().messages if m.type == MessageType.VOTE_RESPONSE]


def test_stale_leader_learns_new_term_from_response_to_its_append() -> None:
    """With check-quorum/pre-vote peers answer a stale leader's append with their term
    (etcd), otherwise a cut-off leader whose peers moved on could lead forever."""
    net = Network([1, 2, 3])
    net.campaign(1)
    net.isolate(1)
    net.tick([2, 3], ticks=3 * ELECTION_TICKS)
    new_leaders = net.leader_ids()
    assert 1 in new_leaders and len(new_leaders) == 2
    net.heal()
    net.node(1).propose(b"stale")
    net.settle()
    assert net.node(1).role == Role.FOLLOWER
    assert net.leader_ids() != [1]
    assert len(net.leader_ids()) == 1


def test_learner_never_campaigns() -> None:
    """Thesis §4.2.1: learners do not take part in elections."""
    net = Network([1, 2], learners=[3])
    net.tick([3], ticks=10 * ELECTION_TICKS)
    assert net.node(3).role == Role.FOLLOWER
    assert net.node(3).term == 0
    assert net.node(3).status().is_learner


def test_learner_vote_does_not_count_toward_quorum() -> None:
    """Learners never count toward any quorum: a candidate of voters {1, 2} cannot win with
    its own vote plus a learner's."""
    net = Network([1, 2], learners=[3], configure=plain)
    net.cut(1, 2)
    net.campaign(1)
    candidate = net.node(1)
    assert candidate.role == Role.CANDIDATE
    candidate.step(Message(MessageType.VOTE_RESPONSE, 1, 3, term=candidate.term))
    assert candidate.role == Role.CANDIDATE
    # Vote requests go to voters only.
    assert all(m.to == 2 for m in net.sent(MessageType.VOTE, sender=1))


def test_split_vote_resolves_by_randomized_retry() -> None:
    """Raft §5.2: after a split vote, randomized timeouts make one candidate win later."""
    for seed in range(1, 11):
        net = Network([1, 2, 3, 4], seed=seed)
        net.tick(ticks=6 * ELECTION_TICKS)
        leaders = net.leader_ids()
        assert len(leaders) == 1, f"leaders {leaders} (seed {seed})"
        terms = {net.node(i).term for i in (1, 2, 3, 4)}
        assert len(terms) == 1, f"terms {terms} (seed {seed})"
