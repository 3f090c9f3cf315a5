"""A follower whose disk lost entries it had acknowledged recovers them from the leader.

Raft assumes an acknowledged entry stays on the follower's disk (Figure 2, "persistent
state"); a damaged last WAL record, cut on open as a torn tail, breaks that. The leader's
match index for the follower is then too high, and its heartbeat commit (capped at match, as
in etcd) can exceed the follower's log: etcd panics there ("tocommit is out of range ... Was
the raft log corrupted, truncated, or lost?"). Here the follower commits only an entry it
verifiably holds (the heartbeat carries its term: Raft §5.3, Figure 2's consistency check),
reports where its log ends, and the leader lowers match, probes and re-sends. Sound only while
each committed entry is still on a majority (a minority lost data, §5.4.3).
"""

from __future__ import annotations

from minikv_core.raft.node import Config
from minikv_core.raft.types import (
    ConfState,
    HardState,
    Message,
    MessageType,
    PeerStatus,
    ProgressState,
)
from tests.raft.harness import Network, storage_with_log

ELECTION_TICKS = Config(node_id=1).election_timeout_ticks


def peer_view(net: Network, leader: int, peer: int) -> PeerStatus:
    return next(p for p in net.node(leader).status().peers if p.node_id == peer)


def heartbeat_answers(net: Network, sender: int, since: int = 0) -> list[Message]:
    return [
        m
        for m in net.delivered[since:]
        if m.type == MessageType.HEARTBEAT_RESPONSE and m.sender == sender
    ]


def leader_commits(net: Network, leader: int) -> list[int]:
    return [r.hard_state.commit for r in net.peers[leader].readies if r.hard_state is not None]


def test_follower_restarted_without_acknowledged_entries_catches_up_from_the_leader() -> None:
    """The integration scenario, in the core: node 3 acknowledged entries 1..6, restarts with
    only 1..4; the leader's heartbeat commit (6) is beyond its log. It must not crash nor
    commit past its log; the leader must re-probe and re-send 5..6."""
    net = Network([1, 2, 3])
    net.campaign(1)
    commands = [f"cmd{i}".encode() for i in range(5)]
    for command in commands:
        net.node(1).propose(command)
    net.settle()
    assert peer_view(net, 1, 3).match == 6
    net.restart_with_lost_tail(3, 2)
    assert net.node(3).status().last_index == 4
    mark = len(net.delivered)

    net.tick([1])  # one heartbeat round (heartbeat interval: one tick)

    answers = heartbeat_answers(net, 3, mark)
    assert answers and answers[0].reject, "the follower did not report the unverifiable commit"
    assert (answers[0].reject_hint, answers[0].commit) == (4, 4)
    probes = [m for m in net.delivered[mark:] if m.type == MessageType.APPEND and m.to == 3]
    assert probes and probes[0].index == 4, "the leader did not resume right after the hole"
    follower = net.node(3).status()
    assert (follower.commit, follower.last_index) == (6, 6)
    assert net.applied_commands(3) == commands
    assert peer_view(net, 1, 3).match == 6
    commits = leader_commits(net, 1)
    assert commits == sorted(commits) and commits[-1] == 6, "leader commit went back"


def test_heartbeat_commit_is_not_applied_to_an_entry_the_follower_no_longer_holds() -> None:
    """Raft §5.3, Figure 2: commit only through the consistency check. Node 3 had entries
    4..5 of term 1 (never committed); the term-2 leader overwrote them and node 3
    acknowledged, then its disk lost the overwrite and the old entries came back. Its log is
    as long as the leader's match, so a commit capped at match would apply them (diverging
    state machines); with the term check it refuses, and the leader repairs its log."""
    conf = ConfState(voters=(1, 2, 3))
    before = HardState(term=1, commit=3)
    net = Network(
        [1, 2, 3],
        storages={
            1: storage_with_log(conf, [1, 1, 1], before),
            2: storage_with_log(conf, [1, 1, 1], before),
            3: storage_with_log(conf, [1, 1, 1, 1, 1], before),
        },
    )
    net.campaign(1)
    net.node(1).propose(b"x")
    net.settle()
    assert net.log_terms(3) == [1, 1, 1, 2, 2]
    assert peer_view(net, 1, 3).match == 5
    # The disk lost the records that overwrote 4..5: the term-1 versions are back.
    net.restart_from(3, storage_with_log(conf, [1, 1, 1, 1, 1], HardState(term=2, commit=3)))
    mark = len(net.delivered)

    net.tick([1])

    answers = heartbeat_answers(net, 3, mark)
    assert answers and answers[0].reject
    assert (answers[0].reject_hint, answers[0].log_term, answers[0].commit) == (5, 1, 3)
    stale = [e.index for e in net.peers[3].applied if e.index > 3 and e.term == 1]
    assert not stale, f"node 3 applied its stale entries {stale}"
    assert [e.term for e in net.peers[3].applied] == [1, 1, 1, 2, 2], "node 3 did not catch up"
    assert net.log_terms(3) == net.log_terms(1) == [1, 1, 1, 2, 2]
    assert net.applied_commands(3) == net.applied_commands(1)


def test_leader_finds_lost_entries_below_its_commit_index_from_the_answer() -> None:
    """The heartbeat commit can be below the hole: here the leader needs node 3 to commit
    anything (node 2 is down), node 3 acknowledged 5 and lost 4..5, and the leader's commit
    is 3. Node 3 holds entry 3, accepts the heartbeat, and nothing is refused; only the last
    index in its answer (3 < match 5) shows the loss. Without acting on it the leader would
    keep appending after 5, node 3 keep refusing, and the group never commit again."""
    conf = ConfState(voters=(1, 2, 3))
    before = HardState(term=1, commit=3)
    net = Network(
        [1, 2, 3],
        storages={
            1: storage_with_log(conf, [1, 1, 1, 1, 1], before),
            2: storage_with_log(conf, [1, 1, 1], before),
            3: storage_with_log(conf, [1, 1, 1, 1, 1], before),
        },
    )
    net.down.add(2)
    net.message_filter = lambda m: not (m.type == MessageType.APPEND and m.to == 3)
    net.campaign(1)
    assert net.leader_ids() == [1]
    term = net.node(1).term
    # Node 3's answer to a probe at 5 (it held 1..5 then); its appends were dropped.
    net.node(1).step(Message(MessageType.APPEND_RESPONSE, 1, 3, term, index=5))
    net.settle()
    assert peer_view(net, 1, 3).match == 5
    assert net.node(1).status().commit == 3
    net.restart_with_lost_tail(3, 2)
    net.message_filter = None
    mark = len(net.delivered)

    net.tick([1])

    answers = heartbeat_answers(net, 3, mark)
    assert answers and not answers[0].reject, "commit 3 is verifiable: no refusal expected"
    assert answers[0].reject_hint == 3
    assert net.node(1).status().commit == 6, "the group did not commit its no-op"
    assert net.log_terms(3) == net.log_terms(1) == [1, 1, 1, 1, 1, term]
    assert peer_view(net, 1, 3).match == 6


def test_only_an_answer_to_a_heartbeat_sent_after_the_ack_lowers_match() -> None:
    """An answer to a heartbeat sent before the leader heard the ack may be overtaken by it
    (reordering), so it says nothing about the follower's log now; one sent later does."""
    net = Network([1, 2, 3])
    net.campaign(1)
    net.node(1).propose(b"a")
    net.settle()
    assert peer_view(net, 1, 3).match == 2
    term = net.node(1).term
    net.message_filter = lambda m: not (m.type == MessageType.HEARTBEAT_RESPONSE and m.sender == 3)
    net.tick([1])  # heartbeat stamped tick 1; node 3's real answer is dropped
    stamps = [m.index for m in net.delivered if m.type == MessageType.HEARTBEAT and m.to == 3]
    assert stamps == [1]

    def answer(stamp: int) -> Message:
        return Message(
            MessageType.HEARTBEAT_RESPONSE,
            1,
            3,
            term,
            index=stamp,
            reject_hint=1,
            log_term=1,
            commit=1,
        )

    net.node(1).step(answer(0))  # sent in the tick of the ack: no evidence
    assert peer_view(net, 1, 3).match == 2
    net.node(1).step(answer(5))  # a stamp from the future is not one of ours
    assert peer_view(net, 1, 3).match == 2
    net.node(1).step(answer(1))
    view = peer_view(net, 1, 3)
    assert (view.match, view.next, view.state) == (1, 2, ProgressState.PROBE)
    assert net.node(1).status().commit == 2, "lowering a match must not lower the commit"
    net.message_filter = None
    net.settle()
    assert peer_view(net, 1, 3).match == 2, "the probe did not restore the match"


def test_restart_without_loss_and_ordinary_heartbeats_are_never_refused() -> None:
    """Normal operation is unchanged: answers carry the follower's log end and commit, no
    refusal, no lowered match, also for a follower restarted with its log intact."""
    net = Network([1, 2, 3])
    net.campaign(1)
    for round_number in range(3):
        net.node(1).propose(f"r{round_number}".encode())
        net.tick([1])
    answers = [m for m in net.delivered if m.type == MessageType.HEARTBEAT_RESPONSE]
    assert answers and not any(m.reject for m in answers)
    net.restart(3)
    mark = len(net.delivered)
    net.tick([1], ticks=ELECTION_TICKS // 2)
    answers = heartbeat_answers(net, 3, mark)
    assert len(answers) == ELECTION_TICKS // 2
    assert not any(m.reject for m in answers)
    assert {(m.reject_hint, m.commit) for m in answers} == {(4, 4)}
    view = peer_view(net, 1, 3)
    assert (view.match, view.state) == (4, ProgressState.REPLICATE), "a sound log was re-probed"
    assert not [m for m in net.delivered[mark:] if m.type == MessageType.APPEND and m.to == 3]
