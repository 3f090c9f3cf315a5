"""A node leaving a meta group of two voters (the last step of remove-node), in process.

The map drops the node first, so that it learns it left, and the meta group second; with
two voters the removal commits only with the leaving node's acknowledgement (Raft §4.1: the
old configuration decides). So between the two steps the remaining node must still reach it
(keep its address, not refuse it) and the leaving node must not stop yet. Under load the
remaining node once applied the map and dropped the address before the removal was sent:
the meta group could then commit nothing, for good.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from minikv_core.cluster.service import Consistency
from minikv_core.cluster.shard_map import META_GROUP_ID
from tests.cluster.node_harness import Cluster, retry_unavailable, wait_for

STEP_TIMEOUT_S = 10.0


async def test_a_node_leaving_a_two_voter_meta_group_is_reachable_until_it_left(
    tmp_path: Path,
) -> None:
    cluster = Cluster(tmp_path, 2, shards=1, replicas=1)
    try:
        await cluster.start()
        await cluster.wait_ready()
        first = cluster.nodes[1].host.shard_map
        (holder,) = first.shards[0].replicas
        leaving_id = 2 if holder == 1 else 1
        keeper, leaving = cluster.nodes[holder], cluster.nodes[leaving_id]
        keeper_meta, leaving_meta = keeper.host.meta, leaving.host.meta
        assert keeper_meta is not None and leaving_meta is not None
        assert set(keeper_meta.raw.conf_state.voters) == {1, 2}
        deadline = time.monotonic() + STEP_TIMEOUT_S
        # The keeper leads the meta group, as a remove-node job's driver would (the job also
        # stops the moves to a preferred meta leader; here the preference moves instead).
        keeper_meta.preferred_leader = leaving_meta.preferred_leader = holder
        if not keeper_meta.is_leader:
            await wait_for(lambda: leaving_meta.is_leader, STEP_TIMEOUT_S)
            await leaving.maintenance.local.transfer_leader(
                {"group": META_GROUP_ID, "node": holder}, deadline
            )
            await wait_for(lambda: keeper_meta.is_leader, STEP_TIMEOUT_S)

        unlisted = await keeper.maintenance.local.update_map(
            lambda m: m.without_node(leaving_id), deadline
        )
        await wait_for(
            lambda: leaving.host.shard_map.epoch == unlisted.epoch,
            STEP_TIMEOUT_S,
            lambda: "the leaving node never applied the map without it",
        )
        # What the maintenance loops do on a new map, done here at once on both sides.
        await keeper.host.reconcile_replicas()
        await leaving.host.reconcile_replicas()
        assert leaving_id in keeper.host.transport.peers, "the leaving node's address was dropped"
        assert not leaving.host.decommissioned.is_set(), "it stopped before leaving the meta group"

        async with asyncio.timeout(STEP_TIMEOUT_S):
            membership = await keeper.maintenance.local.change_replicas(
                {"group": META_GROUP_ID, "op": "remove", "node": leaving_id}, deadline
            )
        assert membership["voters"] == [holder]
        # It stops once it applied its removal, or once the keeper refuses it (retired).
        await wait_for(leaving.host.decommissioned.is_set, STEP_TIMEOUT_S)
        await wait_for(lambda: leaving_id not in keeper.host.transport.peers, STEP_TIMEOUT_S)

        # The one-voter meta group and the shard still commit.
        await retry_unavailable(lambda d: keeper.put(b"after", b"left", d))
        value = await retry_unavailable(lambda d: keeper.get(b"after", Consistency.LINEARIZABLE, d))
        assert value.value == b"left"
    finally:
        await cluster.stop()


async def test_a_meta_learner_stops_once_it_applied_the_map_without_it(tmp_path: Path) -> None:
    """Its acknowledgement is never needed and, never campaigning, it would send nothing a
    peer could refuse: it must not wait for its removal from the meta group."""
    cluster = Cluster(tmp_path, 6, shards=1, replicas=1)
    try:
        await cluster.start()
        await cluster.wait_ready()
        some_meta = cluster.nodes[1].host.meta
        assert some_meta is not None
        (learner,) = some_meta.raw.conf_state.learners
        assert learner not in cluster.nodes[1].host.shard_map.shards[0].replicas
        leaving = cluster.nodes[learner]
        leader = next(
            node
            for node in cluster.nodes.values()
            if node.host.meta is not None and node.host.meta.is_leader
        )
        unlisted = await leader.maintenance.local.update_map(
            lambda m: m.without_node(learner), time.monotonic() + STEP_TIMEOUT_S
        )
        await wait_for(lambda: leaving.host.shard_map.epoch >= unlisted.epoch, STEP_TIMEOUT_S)
        await leaving.host.reconcile_replicas()
        assert leaving.host.decommissioned.is_set()
    finally:
        await cluster.stop()
