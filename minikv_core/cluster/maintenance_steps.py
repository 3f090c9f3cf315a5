"""The replica moves of a maintenance job, one step at a time (see maintenance.py for the
order that makes each move safe, and the invariant it keeps).

A step is re-checked against the cluster when it runs, not when it was planned: each starts
from the group leader's current membership and is idempotent (adding a replica that already
votes, or removing one that already left, only brings the map in line), so a job that is
interrupted and run again converges instead of repeating work.

Meta-group steps run on this node, which leads the meta group (the job's driver checks that
before every step): they change the group's configuration only, since the map lists nodes,
not meta members.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Final

from minikv_core.cluster.config import META_VOTERS_MAX
from minikv_core.cluster.maintenance_local import JsonObject, LocalMaintenance
from minikv_core.cluster.maintenance_plan import Step, StepKind
from minikv_core.cluster.maintenance_view import ClusterView, ViewBuilder
from minikv_core.cluster.service import (
    DeadlineExceededError,
    InvalidRequestError,
    ServiceError,
    UnavailableError,
)
from minikv_core.cluster.shard_map import (
    META_GROUP_ID,
    ShardAssignment,
    ShardMap,
    group_of_shard,
)

CALL_TIMEOUT_S: Final = 10.0
CATCH_UP_TIMEOUT_S: Final = 120.0
CATCH_UP_POLL_S: Final = 0.05
"""A new replica of a small shard catches up in tens of milliseconds (its node creates it as
soon as it applies the map naming it): a coarser poll was most of a move's time."""
STEP_TIMEOUT_S: Final = 180.0
"""A step's bound (a catch-up by snapshot included)."""

Call = Callable[[int, str, JsonObject, float], Awaitable[JsonObject]]
"""(node id, method, args, deadline) -> answer: a `minikv.v1.Cluster/Call` (local or remote)."""


class StepRunner:
    """Runs steps from the meta leader, calling group leaders and replicas over `call`."""

    def __init__(self, local: LocalMaintenance, views: ViewBuilder, call: Call) -> None:
        self.local = local
        self._views = views
        self._call = call

    async def run(self, step: Step, deadline: float) -> str:
        """Do `step`; answers what was done, in a sentence."""
        if step.kind is StepKind.ADD_REPLICA:
            return await self._add_replica(step.shard, step.node, deadline)
        if step.kind is StepKind.REMOVE_REPLICA:
            return await self._remove_replica(step.shard, step.node, deadline)
        if step.kind is StepKind.TRANSFER_LEADER:
            return await self._transfer(step.shard, step.node, deadline)
        if step.kind is StepKind.REMOVE_META_MEMBER:
            return await self._remove_meta_member(step.node, deadline)
        if step.kind is StepKind.REWRITE_WAL:
            answer = await self._call(step.node, "wal_rewrite", {}, deadline)
            left = answer.get("damage") or []
            if left:
                raise UnavailableError(f"node {step.node}'s WAL is still damaged: {left[0]}")
            return (
                f"node {step.node} rewrote its WAL: {len(answer['before'])} segment(s) "
                f"replaced by {len(answer['after'])}"
            )
        vote = step.kind is StepKind.ADD_META_VOTER
        return await self._add_meta_member(step.node, deadline, vote=vote)

    async def _remove_meta_member(self, node: int, deadline: float) -> str:
        state = self.local.progress({"group": META_GROUP_ID})
        if node not in state["voters"] and node not in state["learners"]:
            return f"node {node} is no member of the meta group"
        role = "voter" if node in state["voters"] else "learner"
        state = await self._change(META_GROUP_ID, "remove", node, deadline)
        return f"node {node} ({role}) left the meta group; voters: {_ids(state['voters'])}"

    async def _add_meta_member(self, node: int, deadline: float, *, vote: bool) -> str:
        """Learner first (thesis §4.2.1), promoted once caught up if the group still has
        room for a voter (the automatic loop may have promoted another learner meanwhile)."""
        state = self.local.progress({"group": META_GROUP_ID})
        if node in state["voters"]:
            return f"node {node} already votes in the meta group"
        if node not in state["learners"]:
            await self._change(META_GROUP_ID, "add_learner", node, deadline)
        if not vote:
            return f"node {node} follows the meta group as a learner"
        started = time.monotonic()
        await self._wait_caught_up(META_GROUP_ID, node, min(deadline, started + CATCH_UP_TIMEOUT_S))
        caught_up_s = time.monotonic() - started
        state = self.local.progress({"group": META_GROUP_ID})
        if len(state["voters"]) >= META_VOTERS_MAX:
            return (
                f"node {node} caught up in {caught_up_s:.1f} s and stays a learner: the meta "
                f"group has {len(state['voters'])} voters"
            )
        state = await self._change(META_GROUP_ID, "promote", node, deadline)
        return (
            f"node {node} caught up in {caught_up_s:.1f} s and votes in the meta group; "
            f"voters: {_ids(state['voters'])}"
        )

    async def _add_replica(self, shard: int, node: int, deadline: float) -> str:
        group_id = group_of_shard(shard)
        state = await self.on_leader(group_id, "progress", {"group": group_id}, deadline)
        if node in state["voters"]:
            await self._sync_map(shard, state, deadline)
            return f"node {node} already votes in shard {shard}"
        if state.get("leader_corrupt"):
            # The new replica is copied from the leader: never from a corrupt one.
            await self.move_leadership_off(shard, int(state["leader"]), deadline)
        if node not in state["learners"]:
            # A replica of an earlier incarnation (an in-place rebuild just removed it) must
            # be gone first, or the node would keep it and rejoin with its old, bad state.
            await self._wait_replica_gone(shard, node, deadline)
            await self.local.update_map(lambda m: _with_learner(m, shard, node), deadline)
            await self._change(group_id, "add_learner", node, deadline)
        started = time.monotonic()
        await self._wait_caught_up(group_id, node, min(deadline, started + CATCH_UP_TIMEOUT_S))
        caught_up_s = time.monotonic() - started
        state = await self._change(group_id, "promote", node, deadline)
        await self._sync_map(shard, state, deadline)
        return f"node {node} caught up in {caught_up_s:.1f} s and votes in shard {shard}"

    async def _wait_replica_gone(self, shard: int, node: int, deadline: float) -> None:
        """Until `node` holds no replica of `shard` (it deletes one the map no longer lists
        within a maintenance tick or two)."""
        while True:
            status = await self._call(node, "status", {}, min(deadline, soon()))
            if not any(g.get("shard") == shard for g in status.get("groups", ())):
                return
            if time.monotonic() >= deadline:
                raise DeadlineExceededError(
                    f"node {node} still holds its old replica of shard {shard}"
                )
            await asyncio.sleep(0.2)

    async def move_leadership_off(self, shard: int, leader: int, deadline: float) -> int:
        """Hand `shard`'s leadership from `leader` to its healthiest other voter (not marked
        corrupt, live, most caught up); answers that voter."""
        group_id = group_of_shard(shard)
        shard_map = self.local.shard_map()
        view = await self._views.observe(shard_map.nodes, shard_map.shard_count)
        corrupt = view.shards[shard].corrupt
        progress = await self.on_leader(group_id, "progress", {"group": group_id}, deadline)
        match = {int(k): v for k, v in progress["match"].items()}
        live = {n.node_id for n in view.nodes if n.live}
        others = [v for v in progress["voters"] if v != leader and v not in corrupt and v in live]
        if not others:
            raise UnavailableError(
                f"shard {shard}: no healthy live voter to take over from node {leader}",
                retry_after_s=1,
            )
        target: int = max(others, key=lambda v: (match.get(v, 0), -v))
        await self.on_leader(
            group_id, "transfer_leader", {"group": group_id, "node": target}, deadline
        )
        return target

    async def _change(self, group_id: int, op: str, node: int, deadline: float) -> JsonObject:
        """One membership change on the group's leader (maintenance_local.change_replicas)."""
        args = {"group": group_id, "op": op, "node": node}
        if group_id == META_GROUP_ID:
            return await self.local.change_replicas(args, deadline)
        return await self.on_leader(group_id, "change_replicas", args, deadline)

    async def _progress(self, group_id: int, deadline: float) -> JsonObject:
        """The group leader's view of each member's log (this node leads the meta group)."""
        args = {"group": group_id}
        if group_id == META_GROUP_ID:
            return self.local.progress(args)
        return await self.on_leader(group_id, "progress", args, deadline)

    async def _remove_replica(self, shard: int, node: int, deadline: float) -> str:
        group_id = group_of_shard(shard)
        state = await self.on_leader(group_id, "progress", {"group": group_id}, deadline)
        moved = ""
        if state["leader"] == node:
            if not [v for v in state["voters"] if v != node]:
                raise InvalidRequestError(f"node {node} is the last voter of shard {shard}")
            target = await self.move_leadership_off(shard, node, deadline)
            moved = f"leadership moved to node {target}; "
        if node in state["voters"] or node in state["learners"]:
            state = await self._change(group_id, "remove", node, deadline)
        await self._sync_map(shard, state, deadline)
        return f"{moved}node {node} left shard {shard}"

    async def _transfer(self, shard: int, node: int, deadline: float) -> str:
        group_id = group_of_shard(shard)
        await self.on_leader(
            group_id, "transfer_leader", {"group": group_id, "node": node}, deadline
        )
        await self.local.update_map(lambda m: preferring(m, shard, node), deadline)
        return f"node {node} leads shard {shard}"

    async def sync_stale_map(self, view: ClusterView) -> None:
        """Make the map list each shard's group configuration where it lists more: a step
        changes the group, then the map, and a job that stopped in between (it lost the meta
        leadership, whose next leader resumes it from the groups) left the map behind.
        - A learner listed, never added: its node would keep an empty replica forever.
        - A member removed from the group still listed: its node keeps the replica, and a
          remove-node job then failed at the end, "node 2 still holds replicas of shards
          [0]", on a loaded machine (the group view gave the resumed job nothing to do)."""
        shard_map = self.local.shard_map()
        deadline = soon()
        for assignment in shard_map.shards:
            group_id = group_of_shard(assignment.shard)
            report = view.leader_report(group_id)
            if report is None or report.role != "leader":
                continue
            members = (*report.voters, *report.learners)
            if all(n in members for n in (*assignment.replicas, *assignment.learners)):
                continue
            state = await self.on_leader(group_id, "progress", {"group": group_id}, deadline)
            await self._sync_map(assignment.shard, state, deadline)

    async def _sync_map(self, shard: int, state: JsonObject, deadline: float) -> None:
        """The map's replicas and learners of `shard` become its group's configuration."""
        voters = tuple(int(v) for v in state["voters"])
        learners = tuple(int(v) for v in state["learners"])
        leader = int(state.get("leader", 0))

        def sync(shard_map: ShardMap) -> ShardMap:
            a = shard_map.shards[shard]
            preferred = a.preferred_leader
            if preferred not in voters:
                preferred = leader if leader in voters else voters[0]
            return shard_map.with_shard(ShardAssignment(shard, voters, preferred, learners))

        await self.local.update_map(sync, deadline)

    async def _wait_caught_up(self, group_id: int, node: int, deadline: float) -> None:
        """Until the learner holds everything its leader had committed when we started
        waiting (it may still trail new writes by a little: promotion is then harmless)."""
        target = 0
        while True:
            state = await self._progress(group_id, deadline)
            if not target:
                target = max(1, int(state["commit"]))
            if int(state["match"].get(str(node), 0)) >= target:
                return
            if time.monotonic() >= deadline:
                raise DeadlineExceededError(
                    f"node {node} did not catch up with group {group_id} (index {target}) in time"
                )
            await asyncio.sleep(CATCH_UP_POLL_S)

    async def on_leader(
        self, group_id: int, method: str, args: JsonObject, deadline: float
    ) -> JsonObject:
        """Call `method` on the group's leader, following leader hints and re-observing when
        there is none, until the deadline."""
        hint = 0
        last: ServiceError = UnavailableError(f"group {group_id} has no leader")
        while time.monotonic() < deadline:
            if not hint:
                hint = await self._find_leader(group_id)
            if not hint:
                await asyncio.sleep(0.3)
                continue
            try:
                return await self._call(hint, method, args, min(deadline, soon()))
            except UnavailableError as error:
                last = error
                hint = error.leader_hint if error.leader_hint not in (0, hint) else 0
                await asyncio.sleep(0.1)
            except DeadlineExceededError as error:
                last = error
                hint = 0
        raise last

    async def _find_leader(self, group_id: int) -> int:
        shard_map = self.local.shard_map()
        view = await self._views.observe(shard_map.nodes, shard_map.shard_count)
        report = view.leader_report(group_id)
        return report.node if report is not None and report.role == "leader" else 0


def preferring(shard_map: ShardMap, shard: int, node: int) -> ShardMap:
    """`shard_map` with `node` as `shard`'s preferred leader (if it is a replica): the hosts
    move leadership back to it after restarts, so a transfer sticks."""
    a = shard_map.shards[shard]
    if node not in a.replicas or a.preferred_leader == node:
        return shard_map
    return shard_map.with_shard(ShardAssignment(shard, a.replicas, node, a.learners))


def _ids(node_ids: Iterable[int]) -> str:
    return ", ".join(str(n) for n in sorted(node_ids)) or "none"


def soon() -> float:
    return time.monotonic() + CALL_TIMEOUT_S


def _with_learner(shard_map: ShardMap, shard: int, node: int) -> ShardMap:
    a = shard_map.shards[shard]
    if node in a.members:
        return shard_map
    return shard_map.with_shard(
        ShardAssignment(shard, a.replicas, a.preferred_leader, (*a.learners, node))
    )
