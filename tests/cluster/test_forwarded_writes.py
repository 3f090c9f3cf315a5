"""Writes sent to a follower travel to the leader in a Raft PROPOSE and are answered when the
follower applies them (group.py). The case that needs care: the PROPOSE is lost and
leadership moves on. The follower must then say, before the client's deadline, that the
write did not commit (a retry is safe), because it can know: a write forwarded in term T can
only sit in an entry of term T, and once an entry of a later term is applied every term-T
entry that will ever commit has been applied."""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from pathlib import Path

import pytest

from minikv_core.cluster.node_service import Node
from minikv_core.cluster.service import (
    Consistency,
    DeadlineExceededError,
    FaultSpec,
    NotFoundError,
    ServiceError,
    UnavailableError,
    VersionedValue,
)
from minikv_core.net.peer_transport import FEATURE_PROPOSE
from tests.cluster.node_harness import (
    DirectForwarder,
    retry_unavailable,
    started_cluster,
    wait_for,
)

SHARD = 0


async def put_through_a_unary_call(follower: Node) -> None:
    """A put through `follower` succeeds (retried past injected losses) without a PROPOSE:
    the follower's forwarder carried it to the leader."""

    async def put(deadline: float) -> int:
        return await follower.put(b"k", b"v", deadline)

    assert await retry_unavailable(put) > 0
    assert follower.host.shard_groups[SHARD].forwarded_sent == 0
    assert isinstance(follower.forwarder, DirectForwarder) and follower.forwarder.calls > 0


async def test_a_lost_forward_fails_as_not_committed_when_leadership_moves(
    tmp_path: Path,
) -> None:
    async with started_cluster(tmp_path, 3, shards=1) as cluster:
        leader_id = cluster.nodes[1].host.shard_groups[SHARD].leader_id
        follower_id, other_id = [n for n in (1, 2, 3) if n != leader_id]
        leader, follower = cluster.nodes[leader_id], cluster.nodes[follower_id]
        group = follower.host.shard_groups[SHARD]
        # The leader ignores the follower (one way): the follower still hears the leader, so
        # it forwards to it, and the PROPOSE is lost.
        leader.set_fault(FaultSpec(drop_from=frozenset({follower_id})))
        deadline = time.monotonic() + 60
        write = asyncio.create_task(follower.put(b"lost", b"v", deadline))
        await wait_for(lambda: bool(group.forwarded), 10, lambda: "the write was not forwarded")
        await leader.transfer_leader(SHARD, other_id, time.monotonic() + 10)
        with pytest.raises(UnavailableError, match="did not commit") as lost:
            await write
        assert lost.value.unapplied, "a client may send it again: the answer must say so"
        assert time.monotonic() < deadline  # answered by the new term, not by the deadline
        assert not group.forwarded
        leader.clear_fault()

        async def put(deadline: float) -> int:
            return await follower.put(b"lost", b"v2", deadline)

        version = await retry_unavailable(put)
        for node in cluster.nodes.values():

            async def get(deadline: float, node: Node = node) -> VersionedValue:
                return await node.get(b"lost", Consistency.LINEARIZABLE, deadline)

            found = await retry_unavailable(get)
            assert (found.value, found.version) == (b"v2", version)
        forwarded = group.status()["forwarded"]
        assert isinstance(forwarded, dict)
        assert forwarded["sent"] >= 2 and forwarded["waiting"] == 0, forwarded


async def test_a_follower_cut_from_its_leader_refuses_at_once(tmp_path: Path) -> None:
    """drop_to the leader: the follower does not send a PROPOSE it knows is lost; the write
    is refused at once with the leader named, as a unary forward would be."""
    async with started_cluster(tmp_path, 3, shards=1) as cluster:
        leader_id = cluster.nodes[1].host.shard_groups[SHARD].leader_id
        follower_id = next(n for n in (1, 2, 3) if n != leader_id)
        follower = cluster.nodes[follower_id]
        follower.set_fault(FaultSpec(drop_to=frozenset({leader_id})))
        with pytest.raises(UnavailableError, match="unreachable") as refused:
            await follower.put(b"k", b"v", time.monotonic() + 60)
        assert refused.value.leader_hint == leader_id
        assert not follower.host.shard_groups[SHARD].forwarded
        # Loss: a lost PROPOSE would hold the write to its deadline (it is never resent), so
        # the write takes the unary call, which a loss fails at once and a retry repeats.
        follower.set_fault(FaultSpec(loss=0.05))
        await put_through_a_unary_call(follower)


async def test_a_leader_that_does_not_speak_propose_gets_the_unary_call(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An older leader (its handshake did not advertise PROPOSE) would drop the frame: the
    follower forwards the write in a unary call instead."""
    async with started_cluster(tmp_path, 3, shards=1) as cluster:
        leader_id = cluster.nodes[1].host.shard_groups[SHARD].leader_id
        follower = cluster.nodes[next(n for n in (1, 2, 3) if n != leader_id)]
        transport = follower.host.transport
        assert transport.peer_supports(leader_id, FEATURE_PROPOSE)
        monkeypatch.setattr(transport, "peer_supports", lambda node_id, feature: False)
        await put_through_a_unary_call(follower)


async def test_a_write_forwarded_by_a_peer_is_served_by_the_leader_only(tmp_path: Path) -> None:
    """`local_*` (a peer's unary forward) on a follower names the leader at once instead of
    sending the write on again: the peer follows the hint, nothing waits on a PROPOSE."""
    async with started_cluster(tmp_path, 3, shards=1) as cluster:
        leader_id = cluster.nodes[1].host.shard_groups[SHARD].leader_id
        follower = cluster.nodes[next(n for n in (1, 2, 3) if n != leader_id)]
        deadline = time.monotonic() + 60
        for call in (
            follower.local_put(b"k", b"v", deadline),
            follower.local_delete(b"k", deadline),
        ):
            with pytest.raises(UnavailableError, match="does not lead") as refused:
                await call
            assert refused.value.leader_hint == leader_id
        assert follower.host.shard_groups[SHARD].forwarded_sent == 0
        assert await cluster.nodes[leader_id].local_put(b"k", b"v", deadline) > 0


async def test_did_not_commit_is_true_under_transfers_and_one_way_cuts(tmp_path: Path) -> None:
    """Writes through followers while leadership moves and leaders go deaf to followers:
    every acknowledged write is there with its value, and every write answered "did not
    commit" is absent (each write has its own key, so absence is checkable)."""
    seed = 20261126
    rng = random.Random(seed)
    async with started_cluster(tmp_path, 3, shards=2) as cluster:
        acknowledged: dict[bytes, bytes] = {}
        not_committed: set[bytes] = set()
        stop = asyncio.Event()

        async def writer(worker: int) -> None:
            number = 0
            while not stop.is_set():
                key, value = f"w{worker}-{number}".encode(), f"{worker}:{number}".encode()
                node = cluster.nodes[1 + (worker + number) % 3]
                number += 1
                try:
                    await node.put(key, value, time.monotonic() + 1.0)
                    acknowledged[key] = value
                except UnavailableError as error:
                    if "did not commit" in str(error):
                        not_committed.add(key)
                    await asyncio.sleep(0.01)
                except DeadlineExceededError:
                    pass  # outcome unknown: not checked

        async def chaos() -> None:
            for _ in range(6):
                await asyncio.sleep(rng.uniform(0.1, 0.3))
                shard = rng.randrange(2)
                leader_id = cluster.nodes[1].host.shard_groups[shard].leader_id
                if leader_id not in cluster.nodes:
                    continue
                leader = cluster.nodes[leader_id]
                others = [n for n in (1, 2, 3) if n != leader_id]
                leader.set_fault(FaultSpec(drop_from=frozenset({rng.choice(others)})))
                await asyncio.sleep(rng.uniform(0.05, 0.2))
                with contextlib.suppress(ServiceError):
                    await leader.transfer_leader(shard, rng.choice(others), time.monotonic() + 3)
                leader.clear_fault()

        writers = [asyncio.create_task(writer(worker)) for worker in range(4)]
        try:
            await chaos()
        finally:
            stop.set()
            await asyncio.gather(*writers)
        for node in cluster.nodes.values():
            node.clear_fault()
        print(f"seed {seed}: {len(acknowledged)} acknowledged, {len(not_committed)} not committed")
        assert acknowledged, f"seed {seed}: no write was acknowledged"
        reader = cluster.nodes[1]
        for key, value in acknowledged.items():

            async def get(deadline: float, key: bytes = key) -> VersionedValue:
                return await reader.get(key, Consistency.LINEARIZABLE, deadline)

            assert (await retry_unavailable(get)).value == value, (seed, key)
        for key in not_committed:

            async def absent(deadline: float, key: bytes = key) -> bool:
                try:
                    await reader.get(key, Consistency.LINEARIZABLE, deadline)
                except NotFoundError:
                    return True
                return False

            assert await retry_unavailable(absent), (seed, key, "answered as not committed")


@pytest.mark.parametrize("unapplied", [True, False])
async def test_a_forward_goes_to_the_hinted_leader_only_if_it_cannot_have_applied(
    tmp_path: Path, unapplied: bool
) -> None:
    """A unary forward answered UNAVAILABLE with a new leader's hint is sent there only when
    the answer says it cannot have applied; otherwise the same write could land twice, the
    second time after later writes."""
    async with started_cluster(tmp_path, 3, shards=1) as cluster:
        leader_id = cluster.nodes[1].host.shard_groups[SHARD].leader_id
        follower_id, hinted = [n for n in (1, 2, 3) if n != leader_id]
        follower = cluster.nodes[follower_id]
        sent_to: list[int] = []

        async def call(_: object, node: int) -> int:
            sent_to.append(node)
            if len(sent_to) == 1:
                raise UnavailableError("leadership moved", leader_hint=hinted, unapplied=unapplied)
            return 7

        deadline = time.monotonic() + 10
        if unapplied:
            assert await follower._forward(SHARD, call, deadline) == 7
            assert sent_to == [leader_id, hinted]
        else:
            with pytest.raises(UnavailableError, match="leadership moved"):
                await follower._forward(SHARD, call, deadline)
            assert sent_to == [leader_id]
