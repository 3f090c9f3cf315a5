"""A replica known corrupt does not stay a shard's leader (in process)."""

from __future__ import annotations

from pathlib import Path

from tests.cluster.node_harness import started_cluster, wait_for


async def test_a_corrupt_leader_hands_its_leadership_away_by_itself(tmp_path: Path) -> None:
    """The read that finds the damage starts a transfer, but the target may not win it (an
    election timeout on a busy machine) and no other read may come: the maintenance loop
    tries again until another voter leads. Here no read at all: only the loop can move it."""
    async with started_cluster(tmp_path, 3, shards=2) as cluster:
        node_id, shard = next(
            (n, s)
            for n, node in sorted(cluster.nodes.items())
            for s, group in sorted(node.host.shard_groups.items())
            if group.is_leader
        )
        group = cluster.nodes[node_id].host.shard_groups[shard]
        group.corrupt = "a read failed: (the test says so)"

        def led_elsewhere() -> bool:
            leaders = {
                n
                for n, node in cluster.nodes.items()
                if shard in node.host.shard_groups and node.host.shard_groups[shard].is_leader
            }
            return len(leaders) == 1 and node_id not in leaders

        await wait_for(led_elsewhere, 10.0, lambda: f"node {node_id} still leads shard {shard}")
