"""Config.lazy_commit: a leader tells a follower of a commit at once only when the follower
waits for it (it forwarded the entries); the others learn it from the next append, the next
heartbeat or the answer to their ReadIndex. What it must never change: which entries commit,
and that every node applies them in the end."""

from __future__ import annotations

from dataclasses import replace

from minikv_core.raft.node import Config
from minikv_core.raft.types import Message, MessageType
from tests.raft.harness import Network


def lazy(config: Config) -> Config:
    return replace(config, lazy_commit=True)


def commit_only_appends(net: Network, to: int) -> list[Message]:
    """Appends that carry no entry: what a commit broadcast is made of."""
    return [
        m
        for m in net.delivered
        if m.type == MessageType.APPEND and m.to == to and not m.entries and m.sender == 1
    ]


def lazy_network() -> Network:
    net = Network([1, 2, 3], configure=lazy)
    net.campaign(1)
    net.settle()
    net.delivered.clear()
    return net


def test_a_leaders_own_write_commits_without_a_broadcast_and_rides_on_the_next_append() -> None:
    net = lazy_network()
    net.propose(1, b"a")
    net.settle()
    assert net.node(1).status().commit == net.node(1).status().last_index
    for follower in (2, 3):
        assert commit_only_appends(net, follower) == []
        assert b"a" not in net.applied_commands(follower)  # known committed by the leader only
    net.propose(1, b"b")  # its append carries the commit of "a"
    net.settle()
    for follower in (2, 3):
        assert net.applied_commands(follower) == [b"a"]
        assert commit_only_appends(net, follower) == []


def test_a_heartbeat_brings_a_follower_every_commit_when_no_write_follows() -> None:
    net = lazy_network()
    net.propose(1, b"a")
    net.settle()
    net.tick([1], ticks=net.peers[1].config.heartbeat_interval_ticks)
    net.settle()
    for follower in (2, 3):
        assert net.applied_commands(follower) == [b"a"]


def test_the_follower_that_forwarded_a_write_hears_of_its_commit_at_once() -> None:
    net = lazy_network()
    assert net.node(2).forward_proposal([b"from 2"]) == 1
    net.settle()
    assert net.applied_commands(2) == [b"from 2"]  # no tick: the proposer was told
    assert len(commit_only_appends(net, 2)) == 1
    assert commit_only_appends(net, 3) == []
    assert net.applied_commands(3) == []


def test_eager_leaders_still_broadcast_every_commit() -> None:
    net = Network([1, 2, 3])
    net.campaign(1)
    net.settle()
    net.delivered.clear()
    net.propose(1, b"a")
    net.settle()
    for follower in (2, 3):
        assert net.applied_commands(follower) == [b"a"]
        assert len(commit_only_appends(net, follower)) == 1


def test_a_read_index_answer_commits_the_read_index_on_a_follower_holding_that_entry() -> None:
    net = lazy_network()
    net.propose(1, b"a")
    net.settle()
    assert b"a" not in net.applied_commands(2)
    net.node(2).read_index(b"r1")
    net.settle()
    (answer,) = [m for m in net.delivered if m.type == MessageType.READ_INDEX_RESPONSE]
    last = net.node(1).status().last_index
    assert (answer.index, answer.log_term) == (last, net.node(1).term)
    assert net.node(2).status().commit == last
    assert net.applied_commands(2) == [b"a"]  # applied before the read is answered
    assert [state.index for state in net.peers[2].read_states] == [last]


def test_a_read_index_answer_commits_nothing_on_a_follower_without_that_entry() -> None:
    net = lazy_network()
    net.cut(1, 2)
    net.propose(1, b"a")  # committed with node 3; node 2 never receives it
    net.settle()
    commit_before = net.node(2).status().commit
    net.heal()
    net.cut(1, 2)  # answers to 2 stay cut, so hand it one forged in the leader's term
    last = net.node(1).status().last_index
    forged = Message(
        MessageType.READ_INDEX_RESPONSE,
        2,
        1,
        net.node(1).term,
        log_term=net.node(1).term,
        index=last,
        context=b"r1",
    )
    net.node(2).step(forged)
    assert net.node(2).status().commit == commit_before
    assert [state.index for state in net.node(2).ready().read_states] == [last]
