"""A request that finds its shard without a serving leader waits for one, briefly, instead of
answering 503 at once (`Node._await_leader`): elections and leadership transfers must not
reach a client that does not retry (curl, a demo) as errors."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from minikv_core.cluster.service import Consistency, FaultSpec, UnavailableError
from minikv_core.cluster.shard_map import shard_for_key
from minikv_core.raft import NONE
from tests.cluster.node_harness import (
    leaders_seen,
    retry_unavailable,
    shard_leader_and_another,
    started_cluster,
    wait_for,
)

LINEARIZABLE = Consistency.LINEARIZABLE


def key_in_shard(shard: int, shards: int, prefix: str) -> bytes:
    return next(
        key
        for n in range(10_000)
        if shard_for_key(key := f"{prefix}-{n}".encode(), shards) == shard
    )


async def test_a_write_sent_while_its_leader_hands_over_waits_for_the_new_leader(
    tmp_path: Path,
) -> None:
    async with started_cluster(tmp_path, 3, shards=4) as cluster:
        shard = 0
        key = key_in_shard(shard, cluster.shards, "moving")
        current, target = await shard_leader_and_another(cluster, shard)
        node = cluster.nodes[current]
        await retry_unavailable(lambda deadline: node.put(key, b"before", deadline))
        group = node.host.shard_groups[shard]
        group.raw.transfer_leader(target)  # the leader now refuses proposals (thesis §3.10)
        node.host.wake_group(group)
        assert group.raw.lead_transferee == target
        # One call, no retry: before the wait this was "refused the write" (a 503).
        version = await node.put(key, b"after", time.monotonic() + 5)
        assert version > 0
        assert leaders_seen(cluster)[shard] == {target}
        found = await node.get(key, LINEARIZABLE, time.monotonic() + 5)
        assert (found.value, found.version) == (b"after", version)


async def test_a_replica_without_a_leader_serves_once_it_learns_one(tmp_path: Path) -> None:
    """A replica cut off long enough to drop its leader answers the requests sent to it
    meanwhile once healed, within one election timeout; still cut off, it answers 503 after
    that timeout, never past the deadline."""
    # 100 ms ticks: a 1 s election timeout leaves the heal ample room on a busy machine.
    async with started_cluster(tmp_path, 3, shards=2, tick_ms=100) as cluster:
        shard = 0
        key = key_in_shard(shard, cluster.shards, "lonely")
        _, isolated_id = await shard_leader_and_another(cluster, shard)
        isolated = cluster.nodes[isolated_id]
        await retry_unavailable(lambda deadline: isolated.put(key, b"v1", deadline))
        others = frozenset(set(cluster.nodes) - {isolated_id})
        isolated.set_fault(FaultSpec(drop_to=others, drop_from=others))
        group = isolated.host.shard_groups[shard]
        await wait_for(lambda: group.leader_id == NONE, 10, lambda: f"leader {group.leader_id}")

        timeout_s = isolated.config.election_timeout_s
        started = time.monotonic()
        with pytest.raises(UnavailableError):
            await isolated.get(key, LINEARIZABLE, started + 5)
        waited_s = time.monotonic() - started
        assert timeout_s * 0.9 <= waited_s < timeout_s + 1.0, waited_s

        write = asyncio.create_task(isolated.put(key, b"v2", time.monotonic() + 5))
        read = asyncio.create_task(isolated.get(key, LINEARIZABLE, time.monotonic() + 5))
        await asyncio.sleep(timeout_s / 10)  # heartbeats come every tick: healed, it learns
        assert not write.done() and not read.done(), "they wait for a leader"  # soon after
        isolated.clear_fault()
        version = await write
        found = await read
        assert found.value in (b"v1", b"v2"), found  # concurrent with the write
        assert (await isolated.get(key, LINEARIZABLE, time.monotonic() + 5)).version == version
        assert group.leader_id != NONE  # (not always `leader`: it may move back to its preferred)
