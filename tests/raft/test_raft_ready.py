"""The Ready contract, configuration validation and status (the host-facing surface)."""

from __future__ import annotations

import random
from dataclasses import replace

import pytest

from minikv_core.raft.node import Config, RawNode
from minikv_core.raft.storage import MemoryStorage
from minikv_core.raft.types import (
    NONE,
    ConfChange,
    ConfChangeType,
    ConfigError,
    ConfState,
    EntryType,
    HardState,
    Message,
    MessageType,
    ProgressState,
    Role,
    SoftState,
)
from tests.raft.harness import Network


def single_node() -> tuple[RawNode, MemoryStorage]:
    storage = MemoryStorage(ConfState(voters=(1,)))
    return RawNode(Config(node_id=1), storage, random.Random(1)), storage


def test_single_node_commits_its_own_entry_only_after_it_is_persisted() -> None:
    """The leader counts its own copy toward the quorum at advance(), i.e. after the host
    made it durable: a Ready never asks to apply an entry it also asks to persist."""
    node, storage = single_node()
    node.campaign()
    ready = node.ready()
    assert ready.soft_state == SoftState(1, Role.LEADER)
    assert [entry.index for entry in ready.entries] == [1]
    assert ready.committed_entries == ()
    storage.persist(ready)
    node.advance(ready)
    ready = node.ready()
    assert [entry.index for entry in ready.committed_entries] == [1]
    assert ready.hard_state == HardState(term=1, vote=1, commit=1)
    assert not ready.must_sync  # only the commit index changed
    storage.persist(ready)
    node.advance(ready)
    assert not node.has_ready()


def test_a_ready_that_commits_a_conf_change_must_sync_its_commit_index() -> None:
    """A restarted node replays conf changes up to its stored commit index only: one it
    applied must still be in effect after a restart, or a full restart can bring a group
    back under a membership whose removed voters have deleted their replicas."""
    node, storage = single_node()
    node.campaign()
    ready = node.ready()
    storage.persist(ready)
    node.advance(ready)
    ready = node.ready()  # commits the leader's empty entry: volatile commit only
    assert not ready.must_sync
    storage.persist(ready)
    node.advance(ready)
    node.propose_conf_change(ConfChange(ConfChangeType.ADD_LEARNER, 2))
    ready = node.ready()
    storage.persist(ready)
    node.advance(ready)
    ready = node.ready()
    assert [entry.type for entry in ready.committed_entries] == [EntryType.CONF_CHANGE]
    assert ready.entries == () and ready.hard_state is not None
    assert ready.must_sync


def test_ready_carries_entries_and_hard_state_with_the_messages_that_depend_on_them() -> None:
    """Raft Figure 2: a follower acknowledges an append only once it is durable, which the
    host guarantees by persisting a Ready before sending its messages."""
    net = Network([1, 2, 3])
    net.campaign(1)
    net.node(1).propose(b"x")
    net.process_ready(1)
    net.deliver_one()  # the append to node 2
    ready = net.node(2).ready()
    acks = [m for m in ready.messages if m.type == MessageType.APPEND_RESPONSE]
    assert acks and acks[0].index == 2
    assert [entry.index for entry in ready.entries] == [2]
    assert ready.must_sync


def test_idle_group_has_nothing_ready() -> None:
    net = Network([1, 2, 3])
    net.campaign(1)
    for node_id in (1, 2, 3):
        assert not net.node(node_id).has_ready()


def test_committed_entries_per_ready_are_bounded() -> None:
    """limits.COMMITTED_BYTES_PER_READY_MAX: a host catching up applies in bounded batches."""
    net = Network([1, 2, 3], configure=lambda c: replace(c, committed_bytes_per_ready_max=1000))
    net.campaign(1)
    net.node(1).propose_batch([b"c" * 100] * 50)
    net.settle()
    sizes = [
        sum(len(entry.data) for entry in ready.committed_entries) for ready in net.peers[2].readies
    ]
    assert max(sizes) <= 1000
    assert len(net.applied_commands(2)) == 50


def test_outbox_bound_drops_messages_instead_of_growing() -> None:
    """Every queue is bounded: messages beyond outbox_messages_max are dropped (Raft
    tolerates loss) and counted."""
    net = Network([1, 2, 3], configure=lambda c: replace(c, outbox_messages_max=2))
    net.campaign(1)
    follower = net.node(2)
    for index in range(5):
        follower.read_index(f"r{index}".encode())
    assert follower.messages_dropped == 3
    assert len(follower.ready().messages) == 2


def test_status_shows_role_progress_and_learners() -> None:
    net = Network([1, 2], learners=[3])
    net.campaign(1)
    net.propose(1, b"x")
    status = net.node(1).status()
    assert (status.role, status.term, status.leader_id) == (Role.LEADER, 1, 1)
    assert (status.commit, status.applied, status.last_index) == (2, 2, 2)
    peers = {peer.node_id: peer for peer in status.peers}
    assert set(peers) == {1, 2, 3}
    assert peers[3].is_learner and not peers[2].is_learner
    assert peers[2].state == ProgressState.REPLICATE
    assert peers[2].match == 2 and peers[2].next == 3
    assert peers[2].recent_active
    follower_status = net.node(3).status()
    assert follower_status.is_learner
    assert follower_status.peers == ()
    assert follower_status.leader_id == 1


def test_messages_for_another_node_or_from_itself_are_ignored() -> None:
    node, _ = single_node()
    node.step(Message(MessageType.VOTE, 2, 3, term=5))
    node.step(Message(MessageType.VOTE, 1, 1, term=5))
    node.step(Message(MessageType.VOTE, 1, NONE, term=5))
    assert node.term == 0


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"node_id": 0}, "node_id"),
        ({"heartbeat_interval_ticks": 10, "election_timeout_ticks": 10}, "must exceed"),
        ({"inflight_messages_max": 0}, "inflight_messages_max"),
        ({"snapshot_chunk_bytes_max": 0}, "snapshot_chunk_bytes_max"),
        ({"applied_index": -1}, "applied_index"),
    ],
)
def test_inconsistent_config_is_refused_naming_the_setting(
    overrides: dict[str, int], message: str
) -> None:
    config = replace(Config(node_id=1), **overrides)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=message):
        RawNode(config, MemoryStorage(ConfState(voters=(1,))), random.Random(1))
