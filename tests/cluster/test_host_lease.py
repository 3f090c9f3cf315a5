"""Leader leases (Raft thesis §6.4.1) as the multi-raft host keeps them: on real nodes, real
transports and real clocks. A lease lets a leader serve linearizable reads without a
heartbeat round; each test here is a way a stale lease could return stale data."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterable
from pathlib import Path

import pytest

from minikv_core.cluster.group import Group
from minikv_core.cluster.node_service import Node
from minikv_core.cluster.service import (
    Consistency,
    DeadlineExceededError,
    FaultSpec,
    VersionedValue,
)
from minikv_core.cluster.shard_map import shard_for_key
from minikv_core.raft import Message, MessageType
from tests.cluster.node_harness import Cluster, retry_unavailable, started_cluster, wait_for

LEASE_TIMEOUT_S = 10.0


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[Cluster]:
    async with started_cluster(tmp_path, 3, shards=2) as nodes:
        yield nodes


def leader_of_shard(cluster: Cluster, shard: int) -> tuple[Node, Group]:
    for node in cluster.nodes.values():
        group = node.host.shard_groups[shard]
        if group.is_leader:
            return node, group
    raise AssertionError(f"shard {shard} has no leader")


def shard_and_leader(cluster: Cluster, key: bytes) -> tuple[int, Node]:
    """The shard of `key` and the node leading it."""
    shard = shard_for_key(key, cluster.shards)
    return shard, leader_of_shard(cluster, shard)[0]


async def leased_leader(cluster: Cluster, shard: int) -> tuple[Node, Group, int]:
    """The shard's leader once it holds a lease, and the read index the lease gives."""
    found: list[tuple[Node, Group, int]] = []

    def leased() -> bool:
        found.clear()
        try:
            node, group = leader_of_shard(cluster, shard)
        except AssertionError:
            return False
        index = node.host.lease_read_index(group)
        if index is not None:
            found.append((node, group, index))
        return bool(found)

    await wait_for(leased, LEASE_TIMEOUT_S, lambda: f"shard {shard}: no leader with a lease")
    return found[0]


async def test_a_leader_with_a_lease_reads_at_its_commit_index_and_followers_do_not(
    cluster: Cluster,
) -> None:
    key = b"lease-key"
    shard, node = shard_and_leader(cluster, key)
    version = await retry_unavailable(lambda deadline: node.put(key, b"v1", deadline))
    leader, _, index = await leased_leader(cluster, shard)
    assert index >= version, "the lease read index misses an acknowledged write"
    assert leader.host.counters.lease_reads > 0
    for other in cluster.nodes.values():
        if other is not leader:
            assert other.host.lease_read_index(other.host.shard_groups[shard]) is None


async def test_a_follower_read_is_answered_by_the_leaders_lease(cluster: Cluster) -> None:
    """A linearizable read on a follower asks the leader for a read index (READ_INDEX); a
    leader holding a lease answers at once instead of running a heartbeat round."""
    key = b"follower-read"
    shard = shard_for_key(key, cluster.shards)
    leader, _, _ = await leased_leader(cluster, shard)
    await retry_unavailable(lambda deadline: leader.put(key, b"fresh", deadline))
    follower = next(node for node in cluster.nodes.values() if node is not leader)
    before = leader.host.counters.lease_reads
    found = await retry_unavailable(
        lambda deadline: follower.get(key, Consistency.LINEARIZABLE, deadline)
    )
    assert found.value == b"fresh"
    assert leader.host.counters.lease_reads > before


async def test_a_lease_answer_carries_the_term_of_its_index_for_the_follower_to_commit(
    cluster: Cluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Leaders tell followers of commits lazily (Config.lazy_commit): a follower that reads
    right after a write commits up to the read index from the answer itself, which must then
    say which entry is there (the core's own answers do; the lease's must too)."""
    key = b"lease-term"
    shard = shard_for_key(key, cluster.shards)
    leader, group, _ = await leased_leader(cluster, shard)
    follower = next(node for node in cluster.nodes.values() if node is not leader)
    answers: list[Message] = []
    send = leader.host.transport.send

    def recording_send(to_node: int, messages: Iterable[tuple[int, Message]]) -> None:
        batch = list(messages)
        answers.extend(m for _, m in batch if m.type is MessageType.READ_INDEX_RESPONSE)
        send(to_node, batch)

    monkeypatch.setattr(leader.host.transport, "send", recording_send)
    version = await retry_unavailable(lambda deadline: leader.put(key, b"v", deadline))
    found = await retry_unavailable(
        lambda deadline: follower.get(key, Consistency.LINEARIZABLE, deadline)
    )
    assert found.value == b"v"
    assert answers, "the follower's read was not answered by the leader"
    for answer in answers:
        assert answer.index >= version
        assert answer.log_term == group.raw.term, answer


async def test_an_isolated_leader_stops_serving_lease_reads_within_the_lease(
    cluster: Cluster,
) -> None:
    """Cut off from its followers, the leader may keep serving lease reads only while the
    last heartbeat they acknowledged is younger than the lease: never later. Afterwards a
    new leader may already be accepting writes."""
    shard = 0
    leader, group, _ = await leased_leader(cluster, shard)
    others = frozenset(n for n in cluster.nodes if n != leader.node_id)
    leader.set_fault(FaultSpec(drop_to=others, drop_from=others))
    isolated_at = time.monotonic()
    lease_s = leader.host.lease_duration_s
    assert lease_s > 0
    last_valid = None
    while time.monotonic() < isolated_at + lease_s + 1.0:
        if leader.host.lease_read_index(group) is not None:
            last_valid = time.monotonic()
            assert last_valid < isolated_at + lease_s, (
                f"lease read {last_valid - isolated_at:.3f} s after isolation "
                f"(lease {lease_s:.3f} s)"
            )
        await asyncio.sleep(0.001)
    assert leader.host.lease_read_index(group) is None


async def test_a_paused_leader_finds_its_lease_expired_when_it_resumes(
    cluster: Cluster,
) -> None:
    """The lease is kept in wall-clock time, not in ticks: a leader whose process stood still
    (SIGSTOP, a long pause) ticked less than time passed, and its followers may have elected
    someone else meanwhile. Right after such a pause, before anything else runs, no lease."""
    leader, group, _ = await leased_leader(cluster, 1)
    time.sleep(leader.host.lease_duration_s * 1.2)  # blocks the whole loop, as a pause does
    assert leader.host.lease_read_index(group) is None
    await leased_leader(cluster, 1)  # and it comes back with fresh acknowledgements


async def test_a_leader_handing_over_serves_no_lease_reads_even_if_the_transfer_stalls(
    cluster: Cluster,
) -> None:
    """Once a TimeoutNow is out, its target may be elected past every follower's lease
    (thesis §3.10): the old leader's lease is over for the term, even if it stays leader
    because the TimeoutNow never arrived."""
    leader, group, _ = await leased_leader(cluster, 0)
    target = next(n for n in cluster.nodes if n != leader.node_id)
    leader.set_fault(FaultSpec(drop_to=frozenset({target})))
    group.raw.transfer_leader(target)
    leader.host.wake()
    deadline = time.monotonic() + 3 * leader.host.lease_duration_s
    while time.monotonic() < deadline:
        await asyncio.sleep(0.005)
        assert leader.host.lease_read_index(group) is None
    assert group.is_leader, "the transfer was meant to stall (its TimeoutNow was dropped)"


async def test_a_restarted_node_ignores_votes_for_an_election_timeout_then_votes(
    tmp_path: Path,
) -> None:
    """A node that acknowledged a leader's heartbeat, crashed and restarted at once has
    forgotten it (the core's election timer); the leader's lease may still count on it. So
    for one election timeout after a restart it ignores (pre-)vote requests, as if it still
    heard from that leader; then it votes again.

    Node 3 restarts and cannot hear node 1 (the leader); node 2 campaigns. Node 1 ignores it
    (it leads), so node 2 can only win with node 3's vote."""
    cluster = Cluster(tmp_path, 3, shards=1, tick_ms=100)
    try:
        await cluster.start()
        await cluster.wait_ready()
        await wait_for(
            lambda: cluster.nodes[1].host.shard_groups[0].is_leader,
            LEASE_TIMEOUT_S,
            lambda: "node 1 never led shard 0 (its preferred leader)",
        )
        await cluster.stop_node(3)
        cluster.nodes[1].set_fault(FaultSpec(drop_to=frozenset({3})))
        restarted = cluster.make_node(3)
        await restarted.start()
        cluster.nodes[3] = restarted
        started_at = time.monotonic()
        guard_s = restarted.config.election_timeout_s
        candidate = cluster.nodes[2].host.shard_groups[0]
        await wait_for(
            lambda: cluster.nodes[2].host.transport.is_connected(3),
            guard_s / 2,
            lambda: "node 2 did not reconnect to node 3 in time for the test",
        )
        candidate.raw.campaign()
        cluster.nodes[2].host.wake()
        await wait_for(
            lambda: restarted.host.counters.votes_ignored_after_restart > 0,
            guard_s,
            lambda: "node 3 never saw node 2's campaign",
        )
        assert time.monotonic() - started_at < guard_s
        assert not candidate.is_leader, "node 3 voted within an election timeout of restart"
        # Afterwards node 3 votes: node 2's next campaign wins it the group (node 2 still
        # hears node 1, so it only campaigns when told to).
        await asyncio.sleep(max(0.0, started_at + guard_s - time.monotonic()))
        give_up = time.monotonic() + LEASE_TIMEOUT_S
        while not candidate.is_leader:
            assert time.monotonic() < give_up, "node 2 never won with node 3's vote"
            candidate.raw.campaign()
            cluster.nodes[2].host.wake()
            await asyncio.sleep(0.2)
    finally:
        await cluster.stop()


async def test_a_fresh_node_ignores_no_votes(cluster: Cluster) -> None:
    """Only a restart calls for the guard: a new cluster's first elections are not slowed."""
    for node in cluster.nodes.values():
        assert node.host.counters.votes_ignored_after_restart == 0


async def test_follower_reads_see_every_write_acknowledged_before_them(cluster: Cluster) -> None:
    """Each linearizable read on a follower, started after a write was acknowledged by the
    leader, sees that write (the follower's ReadIndex goes to the leader)."""
    key = b"follower-fresh"
    shard, leader = shard_and_leader(cluster, key)
    followers = [node for node in cluster.nodes.values() if node is not leader]
    for round_number in range(40):
        value = b"v%d" % round_number
        reader = followers[round_number % 2]

        async def put(deadline: float, value: bytes = value) -> int:
            return await leader.put(key, value, deadline)

        async def get(deadline: float, reader: Node = reader) -> VersionedValue:
            return await reader.get(key, Consistency.LINEARIZABLE, deadline)

        await retry_unavailable(put)
        found = await retry_unavailable(get)
        assert found.value == value, f"round {round_number}: a stale read on a follower"
    for node in followers:
        group = node.host.shard_groups[shard]
        assert not group.reads and not group.read_batches.waiting, "a settled read stayed"


async def test_a_follower_whose_reads_go_unanswered_times_out_and_never_reads_stale(
    cluster: Cluster,
) -> None:
    key = b"follower-cut"
    shard, leader = shard_and_leader(cluster, key)
    await retry_unavailable(lambda deadline: leader.put(key, b"old", deadline))
    follower = next(node for node in cluster.nodes.values() if node is not leader)
    await retry_unavailable(lambda deadline: follower.get(key, Consistency.LINEARIZABLE, deadline))
    # The leader stops hearing the follower (one way): the follower keeps following it, so
    # its read requests go out and are lost, while a newer write commits without it.
    leader.set_fault(FaultSpec(drop_from=frozenset({follower.node_id})))
    try:
        await retry_unavailable(lambda deadline: leader.put(key, b"new", deadline))
        started = time.monotonic()
        with pytest.raises(DeadlineExceededError):
            await follower.get(key, Consistency.LINEARIZABLE, started + 1.0)
        assert time.monotonic() - started < 5.0
        group = follower.host.shard_groups[shard]
        assert not group.reads and not group.read_batches.waiting, "a timed-out read stayed"
    finally:
        leader.clear_fault()
    found = await retry_unavailable(
        lambda deadline: follower.get(key, Consistency.LINEARIZABLE, deadline)
    )
    assert found.value == b"new"
