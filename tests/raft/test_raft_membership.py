"""Single-server membership changes with learners (Raft thesis §4.1, §4.2)."""

from __future__ import annotations

import random
from dataclasses import replace

import pytest

from minikv_core.raft.node import Config, RawNode
from minikv_core.raft.types import (
    ConfChange,
    ConfChangeType,
    ConfState,
    MessageType,
    ProposalDroppedError,
    Role,
)
from tests.raft.harness import Network

ELECTION_TICKS = Config(node_id=1).election_timeout_ticks
BOOTSTRAP = ConfState(voters=(1, 2, 3))


def add_learner(net: Network, node_id: int) -> None:
    """Start `node_id` with the group's bootstrap configuration and add it as a learner."""
    net.add_node(node_id, BOOTSTRAP)
    net.node(1).propose_conf_change(ConfChange(ConfChangeType.ADD_LEARNER, node_id))
    net.settle()


def test_learner_catches_up_but_does_not_count_toward_commit() -> None:
    """Thesis §4.2.1: a learner receives the log but is not part of any quorum."""
    net = Network([1, 2, 3])
    net.campaign(1)
    net.propose(1, b"before")
    add_learner(net, 4)
    for node_id in (1, 2, 3, 4):
        assert net.node(node_id).conf_state == ConfState(voters=(1, 2, 3), learners=(4,))
    assert net.applied_commands(4) == [b"before"]
    assert net.node(4).status().is_learner

    net.down.update({2, 3})
    net.node(1).propose(b"needs-a-voter")
    net.tick([1, 4], ticks=2)
    leader_status = net.node(1).status()
    learner_progress = next(p for p in leader_status.peers if p.node_id == 4)
    assert learner_progress.is_learner
    assert learner_progress.match == leader_status.last_index  # the learner has it...
    assert leader_status.commit < leader_status.last_index  # ...but that commits nothing


def test_promoted_learner_becomes_part_of_the_quorum() -> None:
    """Thesis §4.2.1: once caught up a learner is promoted with a normal single-server
    change; from then on it counts (here: 3 of 4 voters needed)."""
    net = Network([1, 2, 3])
    net.campaign(1)
    add_learner(net, 4)
    net.node(1).propose_conf_change(ConfChange(ConfChangeType.ADD_VOTER, 4))
    net.settle()
    assert net.node(2).conf_state == ConfState(voters=(1, 2, 3, 4))
    net.down.update({2, 3})
    net.node(1).propose(b"two-of-four")
    net.tick([1, 4], ticks=2)
    assert b"two-of-four" not in net.applied_commands(1)  # 2 of 4 is not a quorum
    net.down.discard(3)
    net.tick([1, 3, 4], ticks=2)
    assert b"two-of-four" in net.applied_commands(1)


def test_removed_voter_no_longer_counts_and_gets_no_traffic() -> None:
    """Thesis §4.1: removing a voter shrinks the quorum; the leader stops replicating to it."""
    net = Network([1, 2, 3])
    net.campaign(1)
    net.node(1).propose_conf_change(ConfChange(ConfChangeType.REMOVE_NODE, 3))
    net.settle()
    assert net.node(1).conf_state == ConfState(voters=(1, 2))
    net.delivered.clear()
    net.propose(1, b"after-removal")
    net.tick([1, 2], ticks=2)
    assert not [m for m in net.delivered if m.to == 3]
    net.down.add(2)
    net.node(1).propose(b"needs-both")
    net.tick([1], ticks=2)
    assert b"needs-both" not in net.applied_commands(1)  # quorum of {1, 2} is 2


def test_learner_can_be_removed() -> None:
    net = Network([1, 2, 3])
    net.campaign(1)
    add_learner(net, 4)
    net.node(1).propose_conf_change(ConfChange(ConfChangeType.REMOVE_NODE, 4))
    net.settle()
    assert net.node(1).conf_state == BOOTSTRAP
    assert all(p.node_id != 4 for p in net.node(1).status().peers)


def test_second_change_is_refused_while_one_is_pending() -> None:
    """Thesis §4.1: one change at a time; the next waits until the previous is applied."""
    net = Network([1, 2, 3])
    net.campaign(1)
    net.add_node(4, BOOTSTRAP)
    leader = net.node(1)
    leader.propose_conf_change(ConfChange(ConfChangeType.ADD_LEARNER, 4))
    with pytest.raises(ProposalDroppedError, match="not applied"):
        leader.propose_conf_change(ConfChange(ConfChangeType.ADD_VOTER, 4))
    net.settle()
    leader.propose_conf_change(ConfChange(ConfChangeType.ADD_VOTER, 4))  # now accepted


def test_new_leader_refuses_changes_until_its_election_time_log_is_applied() -> None:
    """Thesis §4.1 (2015 erratum): a new leader must commit an entry of its term before a
    configuration change, or two overlapping-term changes could elect two leaders."""
    net = Network([1, 2, 3])
    net.message_filter = lambda m: m.type != MessageType.APPEND
    net.campaign(1)
    net.add_node(4, BOOTSTRAP)
    with pytest.raises(ProposalDroppedError, match="not applied"):
        net.node(1).propose_conf_change(ConfChange(ConfChangeType.ADD_LEARNER, 4))
    net.message_filter = None
    net.tick([1], ticks=2)
    net.node(1).propose_conf_change(ConfChange(ConfChangeType.ADD_LEARNER, 4))


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (ConfChange(ConfChangeType.REMOVE_NODE, 9), "not a member"),
        (ConfChange(ConfChangeType.ADD_VOTER, 2), "already a voter"),
        (ConfChange(ConfChangeType.ADD_LEARNER, 3), "demotion"),
    ],
)
def test_invalid_change_is_refused_at_proposal(change: ConfChange, reason: str) -> None:
    net = Network([1, 2, 3])
    net.campaign(1)
    with pytest.raises(ProposalDroppedError, match=reason):
        net.node(1).propose_conf_change(change)


def test_last_voter_cannot_be_removed() -> None:
    net = Network([1])
    net.campaign(1)
    with pytest.raises(ProposalDroppedError, match="last voter"):
        net.node(1).propose_conf_change(ConfChange(ConfChangeType.REMOVE_NODE, 1))


def test_removed_leader_steps_down_after_committing_its_removal() -> None:
    """Thesis §4.2.2: the leader manages its own removal, then steps down; the remaining
    voters elect a leader, and the removed node never campaigns again."""
    net = Network([1, 2, 3])
    net.campaign(1)
    net.node(1).propose_conf_change(ConfChange(ConfChangeType.REMOVE_NODE, 1))
    net.settle()
    assert net.node(1).role == Role.FOLLOWER
    for node_id in (1, 2, 3):
        assert net.node(node_id).conf_state == ConfState(voters=(2, 3))
    net.tick(ticks=4 * ELECTION_TICKS)
    (leader,) = net.leader_ids()
    assert leader in (2, 3)
    assert net.node(1).role == Role.FOLLOWER
    net.propose(leader, b"without-1")
    assert b"without-1" in net.applied_commands(5 - leader)


def test_removed_follower_does_not_disrupt_the_group() -> None:
    """Thesis §4.2.3: a removed server that times out must not depose the leader; it is
    not a voter in its own configuration, so it never campaigns."""
    net = Network([1, 2, 3])
    net.campaign(1)
    net.node(1).propose_conf_change(ConfChange(ConfChangeType.REMOVE_NODE, 3))
    net.settle()
    net.tick(ticks=5 * ELECTION_TICKS)
    assert net.leader_ids() == [1]
    assert net.node(1).term == 1


def test_restart_replays_committed_conf_changes_before_applying() -> None:
    """Conf changes take effect on apply; a restarted node must not run under a
    configuration older than its committed log, even before it re-applies entries."""
    net = Network([1, 2, 3])
    net.campaign(1)
    add_learner(net, 4)
    peer = net.peers[2]
    restarted = RawNode(replace(peer.config, applied_index=0), peer.storage, random.Random(5))
    assert restarted.conf_state == ConfState(voters=(1, 2, 3), learners=(4,))


def test_group_can_grow_from_one_to_three_voters() -> None:
    """Thesis §4.1: any membership is reachable by single-server steps."""
    net = Network([1], members=[1])
    net.campaign(1)
    single = ConfState(voters=(1,))
    for node_id in (2, 3):
        net.add_node(node_id, single)
        net.node(1).propose_conf_change(ConfChange(ConfChangeType.ADD_LEARNER, node_id))
        net.settle()
        net.node(1).propose_conf_change(ConfChange(ConfChangeType.ADD_VOTER, node_id))
        net.settle()
    net.propose(1, b"grown")
    for node_id in (1, 2, 3):
        assert net.node(node_id).conf_state == ConfState(voters=(1, 2, 3))
        assert net.applied_commands(node_id) == [b"grown"]


def test_joiner_with_unknown_membership_never_campaigns_even_when_promoted() -> None:
    """A joiner started with an empty ConfState cannot rebuild the membership from the log
    alone (the bootstrap voters live at index 0); inventing one would make it, once promoted,
    the sole voter of its own group: split brain. Until it learns the membership it never
    campaigns."""
    net = Network([1, 2, 3])
    net.campaign(1)
    net.add_node(4, ConfState())
    net.node(1).propose_conf_change(ConfChange(ConfChangeType.ADD_LEARNER, 4))
    net.settle()
    net.node(1).propose_conf_change(ConfChange(ConfChangeType.ADD_VOTER, 4))
    net.settle()  # no tick yet: no heartbeat has reached node 4
    assert net.node(1).conf_state == ConfState(voters=(1, 2, 3, 4))
    assert net.node(4).conf_state == ConfState()
    net.isolate(4)
    net.node(4).campaign()
    net.tick([4], ticks=5 * ELECTION_TICKS)
    assert net.node(4).role == Role.FOLLOWER
    assert net.node(4).term == 1


def test_joiner_with_unknown_membership_learns_it_from_a_leader_heartbeat() -> None:
    """Heartbeats carry the leader's log base; the joiner replays its own committed conf
    changes onto the base membership and can then take part in elections."""
    net = Network([1, 2, 3])
    net.campaign(1)
    net.add_node(4, ConfState())
    net.node(1).propose_conf_change(ConfChange(ConfChangeType.ADD_LEARNER, 4))
    net.settle()
    net.node(1).propose_conf_change(ConfChange(ConfChangeType.ADD_VOTER, 4))
    net.settle()
    net.tick([1], ticks=1)
    assert net.node(4).conf_state == ConfState(voters=(1, 2, 3, 4))
    net.restart(4)  # not persisted: unknown again until the next heartbeat
    assert net.node(4).conf_state == ConfState()
    net.tick([1], ticks=1)
    assert net.node(4).conf_state == ConfState(voters=(1, 2, 3, 4))
    net.down.add(1)
    net.tick([2, 3, 4], ticks=4 * ELECTION_TICKS)
    assert len(net.leader_ids()) == 1


def test_a_joiner_offers_the_founding_membership_it_learned_to_be_made_durable() -> None:
    """Learned from a heartbeat whose base is index 0 (the leader never compacted), the
    membership is the group's founding one: `take_learned_founding` hands it to the host
    once, which records it at index 0, so a restart does not make the joiner unknown again
    (a group whose voters all joined later then never elected after a full restart)."""
    net = Network([1, 2, 3])
    net.campaign(1)
    net.add_node(4, ConfState())
    net.node(1).propose_conf_change(ConfChange(ConfChangeType.ADD_LEARNER, 4))
    net.settle()
    assert net.node(4).take_learned_founding() is None, "nothing learned before a heartbeat"
    net.tick([1], ticks=1)
    assert net.node(4).take_learned_founding() == ConfState(voters=(1, 2, 3))
    assert net.node(4).take_learned_founding() is None, "handed over once"
    for node_id in (1, 2, 3):
        assert net.node(node_id).take_learned_founding() is None, "founders know theirs"


def test_joiner_with_unknown_membership_learns_it_from_a_snapshot() -> None:
    """Raft §7: the snapshot carries the configuration at its index."""
    net = Network([1, 2, 3])
    net.campaign(1)
    net.add_node(4, ConfState())
    net.node(1).propose_conf_change(ConfChange(ConfChangeType.ADD_LEARNER, 4))
    net.settle()
    net.cut(1, 4)
    net.propose(1, b"while-cut")
    applied = net.node(1).status().applied
    net.node(1).compact(applied, b"image")
    net.heal()
    net.tick([1], ticks=3)
    assert net.peers[4].installed_snapshots[-1].data == b"image"
    assert net.node(4).conf_state == ConfState(voters=(1, 2, 3), learners=(4,))
