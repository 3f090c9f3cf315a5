"""What one replicated write costs the multi-raft host's driver loop, on real nodes: the
rounds must not do work that nothing needs (here: a second fsync per write)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from minikv_core.cluster.shard_map import shard_for_key
from tests.cluster.node_harness import Cluster, retry_unavailable, started_cluster, wait_for

WRITES = 30
SLACK_SYNCS = 5
"""Syncs a write did not cause that may still fall in the window (an election, a snapshot
mark): far below the WRITES more that a second fsync per write would add."""


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[Cluster]:
    async with started_cluster(tmp_path, 3, shards=2) as nodes:
        yield nodes


async def test_a_replicated_write_costs_each_node_one_fsync(cluster: Cluster) -> None:
    """The entry is synced once on each node. The commit index that follows it (the
    leader's round that learns it, each follower's round that hears it) needs no sync: a
    lost commit index is learned again from the leader (etcd's MustSync)."""
    keys = [b"k%d" % n for n in range(400)]
    shard = shard_for_key(keys[0], cluster.shards)
    keys = [key for key in keys if shard_for_key(key, cluster.shards) == shard][:WRITES]
    assert len(keys) == WRITES
    leader = next(n for n in cluster.nodes.values() if n.host.shard_groups[shard].is_leader)
    await retry_unavailable(lambda deadline: leader.put(b"warm-up" + keys[0], b"x", deadline))
    before = {n: node.host.log.stats.syncs for n, node in cluster.nodes.items()}
    last = 0
    for key in keys:

        async def put(deadline: float, key: bytes = key) -> int:
            return await leader.put(key, b"v", deadline)

        last = await retry_unavailable(put)
    await wait_for(
        lambda: all(
            n.host.shard_groups[shard].applied_index >= last for n in cluster.nodes.values()
        ),
        10.0,
        lambda: "followers did not apply the writes",
    )
    for node_id, node in cluster.nodes.items():
        syncs = node.host.log.stats.syncs - before[node_id]
        assert WRITES <= syncs <= WRITES + SLACK_SYNCS, (
            f"node {node_id}: {syncs} fsyncs for {WRITES} writes"
        )
