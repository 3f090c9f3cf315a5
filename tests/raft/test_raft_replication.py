"""Log replication: consistency check, truncation, fast backoff, commit rule, flow control."""

from __future__ import annotations

from dataclasses import replace

import pytest

from minikv_core.raft.log import RaftLog
from minikv_core.raft.node import Config, RawNode
from minikv_core.raft.storage import MemoryStorage
from minikv_core.raft.types import (
    NONE,
    ConfState,
    Entry,
    HardState,
    Message,
    MessageType,
    NotLeaderError,
    ProgressState,
    ProposalDroppedError,
    Role,
)
from tests.raft.harness import Network, storage_with_log

ELECTION_TICKS = Config(node_id=1).election_timeout_ticks


def plain(config: Config) -> Config:
    return replace(config, pre_vote=False, check_quorum=False)


def test_committed_entries_are_applied_in_order_on_every_node() -> None:
    """Raft §5.3: once committed, an entry is applied by every state machine, in log order."""
    net = Network([1, 2, 3])
    net.campaign(1)
    commands = [f"cmd{i}".encode() for i in range(20)]
    for command in commands:
        net.node(1).propose(command)
    net.settle()
    for node_id in (1, 2, 3):
        assert net.applied_commands(node_id) == commands, f"node {node_id}"
        indexes = [entry.index for entry in net.peers[node_id].applied]
        assert indexes == list(range(1, 22))


def accepted_entry_below_term(net: Network, message: Message, term: int) -> bool:
    """Deliver unless the message carries an entry of `term` or later to a follower that
    holds the append's previous entry (and so would accept it)."""
    if not any(entry.term >= term for entry in message.entries):
        return True
    return net.peers[message.to].storage.last_index() < message.index


def test_leader_commits_only_current_term_entries_by_counting() -> None:
    """Raft §5.4.2 (Figure 8, etcd TestLeaderOnlyCommitsLogFromCurrentTerm): an entry from
    an earlier term stored on a majority is not committed until an entry of the leader's
    own term is."""
    conf = ConfState(voters=(1, 2, 3))
    net = Network(
        [1, 2, 3],
        configure=lambda c: replace(plain(c), entries_per_message_max=1),
        storages={
            1: storage_with_log(conf, [1, 2], HardState(term=2, commit=1)),
            2: storage_with_log(conf, [1], HardState(term=2, commit=1)),
            3: storage_with_log(conf, [1], HardState(term=2, commit=1)),
        },
    )
    # The term-3 no-op never reaches a follower that would accept it; appends that will be
    # rejected anyway still flow so the leader can find the followers' match index.
    net.message_filter = lambda m: accepted_entry_below_term(net, m, 3)
    net.campaign(1)
    assert net.leader_ids() == [1]
    assert net.log_terms(2) == net.log_terms(3) == [1, 2]  # index 2 is on all three
    assert net.node(1).status().commit == 1, "committed a term-2 entry by counting in term 3"
    assert all(entry.index < 2 for entry in net.peers[1].applied)
    net.message_filter = None
    net.tick([1])
    assert net.node(1).status().commit == 3  # index 2 commits through the term-3 entry
    assert [entry.index for entry in net.peers[2].applied] == [1, 2, 3]


def test_figure_8_scenario_old_term_entry_is_overwritten_safely() -> None:
    """Raft §5.4.2, Figure 8 end to end: S1 replicates its old-term entry to a majority in a
    later term without committing it; S5 is then elected and overwrites it everywhere.
    Had S1 committed by counting, a committed entry would have been lost."""
    net = Network(
        [1, 2, 3, 4, 5],
        configure=lambda c: replace(plain(c), entries_per_message_max=1),
    )
    net.campaign(1)  # term 1, no-op at index 1 everywhere
    for other in (3, 4, 5):
        net.cut(1, other)
    net.node(1).propose(b"X")  # index 2, term 1: reaches only S2
    net.settle()
    assert net.log_terms(2) == [1, 1]
    assert net.log_terms(3) == [1]

    # (b) S1 down; S5 wins with S3, S4 and appends at index 2 locally only.
    net.down.add(1)
    net.heal()
    net.message_filter = lambda m: not (m.sender == 5 and m.type == MessageType.APPEND)
    net.campaign(5)
    assert net.leader_ids() == [5]
    assert net.log_terms(5) == [1, 2]
    net.down.add(5)
    net.message_filter = None

    # (c) S1 back; elected (with S2..S4) in a later term; it replicates X to S3 but the
    # no-op of its term is held back: X is on S1, S2, S3 = a majority, yet uncommitted.
    net.down.discard(1)
    net.restart(1)
    net.message_filter = lambda m: accepted_entry_below_term(net, m, 3)
    while net.node(1).role != Role.LEADER:
        net.campaign(1)
    assert net.node(1).term == 3
    net.tick([1])
    assert net.log_terms(3) == net.log_terms(4) == [1, 1]
    assert net.log_terms(1) == [1, 1, 3]
    assert net.node(1).status().commit == 1, "X committed by counting (Figure 8 (c))"
    net.down.add(1)
    net.message_filter = None

    # (d) S5 back; its term-2 entry is more up to date than X: it wins and overwrites X.
    net.down.discard(5)
    net.restart(5)
    while net.node(5).role != Role.LEADER:
        net.campaign(5)
    net.tick([5])
    for node_id in (2, 3, 4, 5):
        assert net.log_terms(node_id)[1] == 2, f"node {node_id}"
        assert b"X" not in net.applied_commands(node_id)


def test_conflicting_uncommitted_entries_are_truncated_on_rejoin() -> None:
    """Raft §5.3: a follower's conflicting entries are deleted and replaced by the leader's;
    entries a deposed leader appended alone are never applied."""
    net = Network([1, 2, 3])
    net.campaign(1)
    net.propose(1, b"a")
    net.isolate(1)
    net.node(1).propose(b"lost-1")
    net.node(1).propose(b"lost-2")
    net.settle()
    net.tick([2, 3], ticks=3 * ELECTION_TICKS)
    (new_leader,) = [i for i in net.leader_ids() if i != 1]
    net.propose(new_leader, b"won")
    net.heal()
    net.tick(ticks=3)
    assert net.node(1).role == Role.FOLLOWER
    for node_id in (1, 2, 3):
        assert net.applied_commands(node_id) == [b"a", b"won"], f"node {node_id}"
    assert net.log_terms(1) == net.log_terms(2) == net.log_terms(3)


def test_fast_backoff_skips_a_whole_conflicting_term_in_one_round_trip() -> None:
    """Raft §5.3 optimization (etcd findConflictByTerm): the reject hint names the last
    index of a term the leader can match, so 50 conflicting entries cost one rejection
    instead of ~50 one-by-one probes."""
    net = Network([1, 2, 3])
    net.campaign(1)
    net.propose(1, b"a")
    net.isolate(1)
    net.node(1).propose_batch([b"stale"] * 50)  # indexes 3..52, term 1, never committed
    net.settle()
    net.tick([2, 3], ticks=3 * ELECTION_TICKS)
    (second,) = [i for i in net.leader_ids() if i != 1]
    net.node(second).propose_batch([b"fresh"] * 50)
    net.settle()
    # A leader elected now starts probing node 1 at its last index (~54), far above the
    # point where the logs agree (index 2).
    third = 5 - second
    net.node(second).transfer_leader(third)
    net.settle()
    assert net.node(third).role == Role.LEADER
    net.delivered.clear()
    net.heal()
    net.tick(ticks=3)
    rejections = [m for m in net.sent(MessageType.APPEND_RESPONSE, sender=1) if m.reject]
    assert len(rejections) == 1, [(m.index, m.reject_hint, m.log_term) for m in rejections]
    assert rejections[0].index > 50  # the probe started far above the agreement point
    assert net.log_terms(1) == net.log_terms(third)
    assert net.applied_commands(1) == [b"a", *[b"fresh"] * 50]


def test_find_conflict_by_term_returns_last_index_of_a_matchable_term() -> None:
    """Raft Figure 7 style log [1,1,1,4,4,5,5,6,6,6]: the largest index <= i with term <= t."""
    storage = storage_with_log(ConfState(voters=(1,)), [1, 1, 1, 4, 4, 5, 5, 6, 6, 6])
    log = RaftLog(storage, 0)
    assert log.find_conflict_by_term(10, 6) == (10, 6)
    assert log.find_conflict_by_term(10, 5) == (7, 5)
    assert log.find_conflict_by_term(10, 4) == (5, 4)
    assert log.find_conflict_by_term(10, 3) == (3, 1)
    assert log.find_conflict_by_term(10, 2) == (3, 1)
    assert log.find_conflict_by_term(4, 2) == (3, 1)
    assert log.find_conflict_by_term(10, 0) == (0, 0)
    assert log.find_conflict_by_term(99, 6) == (10, 6)  # clamped to the last index


def test_follower_rejects_append_whose_previous_entry_does_not_match() -> None:
    """Raft §5.3 consistency check: reject if the log has no entry at prevLogIndex whose
    term matches prevLogTerm, and report where to retry."""
    storage = storage_with_log(ConfState(voters=(1, 2)), [1, 1, 2], HardState(term=3))
    follower = RawNode(Config(node_id=2), storage, __import__("random").Random(1))
    follower.step(
        Message(
            MessageType.APPEND,
            2,
            1,
            term=3,
            log_term=3,
            index=3,
            entries=(Entry(3, 4, data=b"x"),),
        )
    )
    (response,) = follower.ready().messages
    assert response.reject
    assert response.index == 3
    assert (response.reject_hint, response.log_term) == (3, 2)


def test_append_is_idempotent_and_ignores_already_matching_entries() -> None:
    """Raft §5.3: an append of entries the follower already has changes nothing (duplicated
    or delayed messages must not truncate newer entries)."""
    net = Network([1, 2, 3])
    net.campaign(1)
    for index in range(5):
        net.node(1).propose(f"e{index}".encode())
    net.settle()
    appends = [m for m in net.sent(MessageType.APPEND, sender=1) if m.to == 2 and m.entries]
    before = net.log_terms(2)
    for message in appends:  # replay every append, oldest first
        net.node(2).step(message)
    net.settle()
    assert net.log_terms(2) == before
    assert len(net.applied_commands(2)) == 5


def test_appends_respect_entry_count_and_byte_bounds() -> None:
    """Batching is bounded (limits.py): no append carries more than entries_per_message_max
    entries or message_bytes_max payload bytes, except a single oversized entry."""
    net = Network(
        [1, 2, 3],
        configure=lambda c: replace(c, entries_per_message_max=8, message_bytes_max=350),
    )
    net.campaign(1)
    net.node(1).propose_batch([b"x" * 100] * 50)
    net.node(1).propose(b"y" * 2000)
    net.settle()
    appends = [m for m in net.sent(MessageType.APPEND, sender=1) if m.entries]
    assert appends
    for message in appends:
        size = sum(len(entry.data) for entry in message.entries)
        assert len(message.entries) <= 8
        assert size <= 350 or len(message.entries) == 1
    assert max(len(m.entries) for m in appends) == 3
    assert net.applied_commands(3)[-1] == b"y" * 2000


def test_replication_is_pipelined_up_to_the_inflight_bound() -> None:
    """Flow control (etcd inflights): a follower in REPLICATE gets at most
    inflight_messages_max unacknowledged appends; the rest wait for acknowledgements."""
    net = Network(
        [1, 2, 3],
        configure=lambda c: replace(c, inflight_messages_max=3, entries_per_message_max=2),
    )
    net.campaign(1)
    leader = net.node(1)
    leader.propose_batch([b"p"] * 20)
    assert net.process_ready(1)
    to_two = [m for m in net.queue if m.to == 2 and m.type == MessageType.APPEND]
    assert [len(m.entries) for m in to_two] == [2, 2, 2]
    peer = next(p for p in leader.status().peers if p.node_id == 2)
    assert peer.state == ProgressState.REPLICATE
    assert peer.inflight_messages == 3
    net.settle()
    assert len(net.applied_commands(2)) == 20


def test_probing_follower_gets_one_append_until_it_answers() -> None:
    """PROBE state (etcd progress.go): while the match index is unknown the leader sends one
    append per heartbeat/answer, not a stream of doomed appends."""
    net = Network([1, 2, 3])
    net.campaign(1)
    net.cut(1, 3)
    leader = net.node(1)
    leader.report_unreachable(3)
    for index in range(5):
        leader.propose(f"p{index}".encode())
        net.process_ready(1)
    to_three = [m for m in net.queue if m.to == 3 and m.type == MessageType.APPEND]
    assert len(to_three) == 1
    net.settle()
    net.heal()
    net.tick([1], ticks=2)
    assert len(net.applied_commands(3)) == 5


def test_proposal_on_follower_is_rejected_with_the_leader_hint() -> None:
    """The core never forwards proposals: the host gets the leader id to forward to."""
    net = Network([1, 2, 3])
    net.campaign(1)
    with pytest.raises(NotLeaderError) as error:
        net.node(2).propose(b"x")
    assert error.value.leader_id == 1
    assert error.value.term == 1
    assert "leader is 1" in str(error.value)


def test_proposal_during_election_has_no_leader_hint() -> None:
    net = Network([1, 2, 3], configure=plain)
    net.cut(1, 2)
    net.cut(1, 3)
    net.campaign(1)
    assert net.node(1).role == Role.CANDIDATE
    with pytest.raises(NotLeaderError) as error:
        net.node(1).propose(b"x")
    assert error.value.leader_id == NONE


def test_uncommitted_bytes_bound_refuses_proposals_on_a_cut_off_leader() -> None:
    """A leader that cannot commit refuses proposals past uncommitted_bytes_max instead of
    growing its log without bound (etcd MaxUncommittedEntriesSize)."""
    net = Network([1, 2, 3], configure=lambda c: replace(c, uncommitted_bytes_max=1000))
    net.campaign(1)
    net.isolate(1)
    for _ in range(10):
        net.node(1).propose(b"z" * 100)
    with pytest.raises(ProposalDroppedError, match="uncommitted"):
        net.node(1).propose(b"z" * 100)
    net.heal()
    net.tick([1], ticks=2)
    net.node(1).propose(b"z" * 100)  # committing freed the budget


def test_restarted_follower_keeps_its_log_and_catches_up() -> None:
    """Raft Figure 2: currentTerm, votedFor and log survive a crash; the node catches up."""
    net = Network([1, 2, 3])
    net.campaign(1)
    for index in range(5):
        net.node(1).propose(f"a{index}".encode())
    net.settle()
    net.restart(3)
    assert net.node(3).term == 1
    assert net.node(3).status().last_index == 6
    net.down.add(3)
    for index in range(5):
        net.node(1).propose(f"b{index}".encode())
    net.settle()
    net.down.discard(3)
    net.tick([1], ticks=2)
    assert net.applied_commands(3) == net.applied_commands(1)
    assert len(net.applied_commands(3)) == 10


def test_restarted_leader_group_elects_again_without_losing_commits() -> None:
    """Raft §5.4 Leader Completeness across a full-group restart."""
    net = Network([1, 2, 3])
    net.campaign(1)
    for index in range(5):
        net.node(1).propose(f"c{index}".encode())
    net.settle()
    for node_id in (1, 2, 3):
        net.restart(node_id)
    net.tick(ticks=3 * ELECTION_TICKS)
    (leader,) = net.leader_ids()
    net.propose(leader, b"after")
    for node_id in (1, 2, 3):
        commands = net.applied_commands(node_id)
        assert commands == [*(f"c{i}".encode() for i in range(5)), b"after"], node_id


def test_memory_storage_append_truncates_a_conflicting_suffix() -> None:
    storage = MemoryStorage(ConfState(voters=(1,)))
    storage.append([Entry(1, 1), Entry(1, 2), Entry(1, 3)])
    storage.append([Entry(2, 2)])
    assert storage.last_index() == 2
    assert storage.term(2) == 2
