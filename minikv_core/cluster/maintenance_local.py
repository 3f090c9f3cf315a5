"""What one node does when the maintenance executor asks it (issue #10): change a group's
membership as its leader, report a learner's progress, checksum its replica at an agreed
index, remember a replica as corrupt, propose a new shard map as meta leader.

These are the node-local halves; `maintenance.py` drives them across the cluster. Each is
idempotent where a retry can repeat it (adding a learner that is already one answers the
current membership), because the executor retries after a lost answer or a leader change.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from minikv_core.cluster.commands import ChecksumCommand
from minikv_core.cluster.group import Group, ShardGroup
from minikv_core.cluster.leadership import hand_over
from minikv_core.cluster.meta import encode_set_shard_map
from minikv_core.cluster.service import (
    DeadlineExceededError,
    InvalidRequestError,
    UnavailableError,
)
from minikv_core.cluster.shard_map import META_GROUP_ID, ShardMap, group_of_shard
from minikv_core.cluster.wal_health import check_wal, rewrite_wal
from minikv_core.raft import NotLeaderError, ProposalDroppedError
from minikv_core.raft.types import ConfChange, ConfChangeType
from minikv_core.storage import verify

if TYPE_CHECKING:
    from minikv_core.cluster.node_service import Node

JsonObject = dict[str, Any]

CONF_OPS = {
    "add_learner": ConfChangeType.ADD_LEARNER,
    "promote": ConfChangeType.ADD_VOTER,
    "remove": ConfChangeType.REMOVE_NODE,
}
MAP_UPDATE_ATTEMPTS = 5


def int_arg(args: JsonObject, name: str, *, low: int = 0) -> int:
    value = args.get(name)
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise InvalidRequestError(f'"{name}" must be an integer >= {low}, got {value!r}')
    return value


async def wait_until(future: asyncio.Future[Any] | None, deadline: float, what: str) -> None:
    if future is None:
        return
    try:
        async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
            await asyncio.shield(future)
    except TimeoutError:
        raise DeadlineExceededError(f"{what}: the deadline passed") from None


class LocalMaintenance:
    """The node-local actions, on the node's event loop."""

    def __init__(self, node: Node) -> None:
        self._node = node

    @property
    def _host(self):  # type: ignore[no-untyped-def]  # MultiRaftHost; avoids an import cycle
        return self._node.host

    def group(self, group_id: int) -> Group:
        group: Group | None = self._host.groups.get(group_id)
        if group is None:
            raise UnavailableError(
                f"node {self._node.node_id} holds no replica of group {group_id}", leader_hint=0
            )
        return group

    def leading(self, group_id: int) -> Group:
        group = self.group(group_id)
        if not group.is_leader:
            raise UnavailableError(
                f"node {self._node.node_id} does not lead group {group_id}",
                leader_hint=group.leader_id,
                retry_after_s=0.1,
            )
        return group

    # ------------------------------------------------------------------ membership

    async def change_replicas(self, args: JsonObject, deadline: float) -> JsonObject:
        """Propose one single-server change (thesis §4.1) on the group this node leads and
        wait until it is applied here; answers the membership then."""
        group_id = int_arg(args, "group")
        node = int_arg(args, "node", low=1)
        op = args.get("op")
        if op not in CONF_OPS:
            raise InvalidRequestError(f'"op" must be one of {sorted(CONF_OPS)}, got {op!r}')
        group = self.leading(group_id)
        conf = group.raw.conf_state
        if op == "add_learner" and (node in conf.voters or node in conf.learners):
            return membership(group)
        if op == "promote" and node in conf.voters:
            return membership(group)
        if op == "promote" and node not in conf.learners:
            raise InvalidRequestError(f"node {node} is not a learner of group {group_id}")
        if op == "remove" and node not in conf.voters and node not in conf.learners:
            return membership(group)
        if op == "remove" and node == self._node.node_id:
            raise InvalidRequestError(
                f"node {node} leads group {group_id}: move its leadership before removing it"
            )
        try:
            term, index = group.raw.propose_conf_change(ConfChange(CONF_OPS[op], node))
        except NotLeaderError as error:
            raise UnavailableError(
                f"node {self._node.node_id} no longer leads group {group_id}",
                leader_hint=error.leader_id,
            ) from None
        except ProposalDroppedError as error:
            raise UnavailableError(
                f"group {group_id}: {error}", leader_hint=group.leader_id, retry_after_s=0.2
            ) from None
        self._host.wake_group(group)
        await wait_until(group.wait_applied(index), deadline, f"group {group_id} {op} {node}")
        if group.raw.term != term and not group.is_leader:
            raise UnavailableError(
                f"group {group_id}: leadership changed while changing its membership",
                leader_hint=group.leader_id,
                retry_after_s=0.1,
            )
        return membership(group)

    def progress(self, args: JsonObject) -> JsonObject:
        """The leader's view of each member's log (the executor promotes a caught-up one)."""
        group = self.leading(int_arg(args, "group"))
        status = group.raw.status()
        return {
            **membership(group),
            "commit": status.commit,
            "last_index": status.last_index,
            "match": {str(p.node_id): p.match for p in status.peers},
            "leader_corrupt": getattr(group, "corrupt", ""),
        }

    async def transfer_leader(self, args: JsonObject, deadline: float) -> JsonObject:
        group_id = int_arg(args, "group")
        node = int_arg(args, "node", low=1)
        group = self.leading(group_id)
        if node not in group.raw.conf_state.voters:
            raise InvalidRequestError(f"node {node} is not a voter of group {group_id}")
        config = self._node.config
        try:
            await hand_over(
                group,
                node,
                wake=self._host.wake,
                tick_s=config.tick_ms / 1000.0,
                retry_s=config.election_timeout_s,
                deadline=deadline,
                what=f"group {group_id}",
            )
        except (NotLeaderError, ProposalDroppedError) as error:
            raise UnavailableError(
                f"group {group_id}: {error}", leader_hint=group.leader_id, retry_after_s=0.1
            ) from None
        return membership(group)

    # -------------------------------------------------------------------- verify

    async def propose_checksum(self, args: JsonObject, deadline: float) -> JsonObject:
        shard = int_arg(args, "shard")
        group = self.leading(group_of_shard(shard))
        assert isinstance(group, ShardGroup)
        future = group.enqueue(ChecksumCommand(self._node.next_request_id()))
        self._host.note_queued(group)
        await wait_until(future, deadline, f"checksum of shard {shard}")
        return {"index": future.result().index}

    async def checksum(self, args: JsonObject, deadline: float) -> JsonObject:
        """This replica's checksum at `index` and a disk check of its tables.

        The digest was started when this replica applied `index` and is computed in a worker
        thread (state_machine.py): awaiting it leaves the event loop free. Waited for with
        `asyncio.wait`, which neither cancels it at the deadline (another call may still want
        it) nor raises if it was cancelled (dropped for newer checksums before it ran)."""
        shard = int_arg(args, "shard")
        index = int_arg(args, "index", low=1)
        group = self.group(group_of_shard(shard))
        assert isinstance(group, ShardGroup)
        await wait_until(group.wait_applied(index), deadline, f"shard {shard} applying {index}")
        pending = group.state_machine.checksums.get(index)
        engine = group.state_machine.engine
        problems = await asyncio.to_thread(verify.verify_tables, engine)
        answer: JsonObject = {
            "node": self._node.node_id,
            "shard": shard,
            "tables": [problem.describe() for problem in problems],
        }
        if pending is None:
            answer["skipped"] = (
                f"index {index} was not applied entry by entry here (a snapshot covered it, "
                "or the node restarted since): no checksum to compare"
            )
            return answer
        digest = asyncio.wrap_future(pending)
        done, _ = await asyncio.wait({digest}, timeout=max(0.0, deadline - time.monotonic()))
        if not done:
            raise DeadlineExceededError(
                f"checksum of shard {shard} at index {index}: the deadline passed"
            )
        if digest.cancelled():
            answer["skipped"] = (
                f"the checksum at index {index} was dropped before it ran: newer checksums "
                "of this shard replaced it; run verify again"
            )
        else:
            answer.update(digest.result().to_json())
        return answer

    async def wal_check(self) -> JsonObject:
        """Read every record of this node's WAL (verify asks each node): what is damaged is
        remembered and reported in the status, where repair's planner finds it."""
        damage = await asyncio.to_thread(check_wal, self._node.config.wal_dir)
        self._node.wal_damage = [found.describe() for found in damage]
        return {"node": self._node.node_id, "damage": list(self._node.wal_damage)}

    async def wal_rewrite(self, deadline: float) -> JsonObject:
        """Leave every WAL segment this node has now behind (wal_health.py), then check the
        WAL again: the answer's `damage` is what is still found (normally nothing)."""
        rewrite = await rewrite_wal(self._host, deadline)
        answer = await self.wal_check()
        answer.update(rewrite.to_json())
        return answer

    def mark_corrupt(self, args: JsonObject) -> JsonObject:
        shard = int_arg(args, "shard")
        reason = args.get("reason")
        if not isinstance(reason, str) or not reason:
            raise InvalidRequestError('"reason" must be a non-empty string')
        group = self.group(group_of_shard(shard))
        assert isinstance(group, ShardGroup)
        group.corrupt = reason[:500]
        return {"shard": shard, "corrupt": group.corrupt}

    # ----------------------------------------------------------------------- meta

    def shard_map(self) -> ShardMap:
        meta = self._host.meta
        assert meta is not None
        shard_map: ShardMap = meta.state_machine.shard_map
        return shard_map

    async def update_map(self, change: Callable[[ShardMap], ShardMap], deadline: float) -> ShardMap:
        """Propose `change(current map)` as the next epoch through the meta group this node
        leads and wait until it is applied; the meta state machine applies a map only when
        its epoch is exactly the next one, so a concurrent change makes this retry on the
        newer map instead of overwriting it."""
        meta = self.leading(META_GROUP_ID)
        for _ in range(MAP_UPDATE_ATTEMPTS):
            current = self.shard_map()
            wanted = change(current)
            if wanted.with_epoch(current.epoch) == current:
                return current  # nothing to change (the map's every field compared)
            proposed = wanted.with_epoch(current.epoch + 1)
            try:
                _, index = meta.raw.propose(encode_set_shard_map(proposed))
            except NotLeaderError as error:
                raise UnavailableError(
                    "this node no longer leads the meta group", leader_hint=error.leader_id
                ) from None
            except ProposalDroppedError as error:
                raise UnavailableError(f"meta group: {error}", retry_after_s=0.2) from None
            self._host.wake_group(meta)
            await wait_until(meta.wait_applied(index), deadline, "shard map change")
            if self.shard_map() == proposed:
                return proposed
        raise UnavailableError("the shard map kept changing under this update; try again")


def membership(group: Group) -> JsonObject:
    conf = group.raw.conf_state
    return {
        "group": group.group_id,
        "leader": group.leader_id,
        "term": group.raw.term,
        "voters": list(conf.voters),
        "learners": list(conf.learners),
    }
