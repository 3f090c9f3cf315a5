"""maintenance_steps.py without a cluster: what the end of a job does to a map left behind."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

from minikv_core.cluster.maintenance_local import LocalMaintenance
from minikv_core.cluster.maintenance_steps import StepRunner
from minikv_core.cluster.maintenance_view import ClusterView, GroupReport, ViewBuilder
from minikv_core.cluster.shard_map import ShardAssignment, ShardMap, group_of_shard

NODES = {1: "h:1", 2: "h:2", 3: "h:3", 4: "h:4"}


class Local:
    """The meta leader's map, changed in place as `LocalMaintenance.update_map` would."""

    def __init__(self, shard_map: ShardMap) -> None:
        self.map = shard_map

    def shard_map(self) -> ShardMap:
        return self.map

    async def update_map(self, change: Callable[[ShardMap], ShardMap], deadline: float) -> ShardMap:
        self.map = change(self.map)
        return self.map


def leader_report(
    node: int, voters: tuple[int, ...], learners: tuple[int, ...] = ()
) -> GroupReport:
    return GroupReport(node, "leader", 2, node, 10, voters, learners, "", {})


async def sync(shard_map: ShardMap, group: GroupReport) -> ShardMap:
    """Run `sync_stale_map` with shard 0's group as `group` reports it."""
    local = Local(shard_map)

    async def call(node: int, method: str, args: dict[str, Any], deadline: float) -> dict[str, Any]:
        assert (node, method) == (group.node, "progress"), (node, method)
        return {"voters": list(group.voters), "learners": list(group.learners), "leader": node}

    runner = StepRunner(cast(LocalMaintenance, local), cast(ViewBuilder, None), call)

    async def find_leader(group_id: int) -> int:
        return group.node

    runner._find_leader = find_leader  # type: ignore[method-assign]
    view = ClusterView(nodes=(), shards=(), groups={group_of_shard(0): (group,)})
    await runner.sync_stale_map(view)
    return local.map


async def test_a_member_the_group_removed_leaves_the_map() -> None:
    """A remove step changed the group, then lost the meta leadership before its map update:
    node 2 kept its replica, and the remove-node job that resumed ended "node 2 still holds
    replicas of shards [0]"."""
    stale = ShardMap(3, NODES, (ShardAssignment(0, (1, 2, 3, 4), 1),))
    synced = await sync(stale, leader_report(1, (1, 3, 4)))
    assert synced.shards[0].replicas == (1, 3, 4)
    assert synced.hosted_by(2) == set()


async def test_a_learner_the_group_never_added_leaves_the_map() -> None:
    stale = ShardMap(3, NODES, (ShardAssignment(0, (1, 2, 3), 1, learners=(4,)),))
    synced = await sync(stale, leader_report(1, (1, 2, 3)))
    assert (synced.shards[0].replicas, synced.shards[0].learners) == ((1, 2, 3), ())


async def test_a_map_in_line_with_its_group_is_left_alone() -> None:
    current = ShardMap(3, NODES, (ShardAssignment(0, (1, 2, 3), 1),))
    assert await sync(current, leader_report(1, (1, 2, 3))) is current
