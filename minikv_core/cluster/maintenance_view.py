"""The maintenance executor's picture of the cluster: one concurrent poll of every node's
status, turned into the planner's NodeView and ShardView (maintenance_plan.py).

Where each fact comes from, and why:
- liveness: the node answered within POLL_TIMEOUT_S. A paused or partitioned node looks the
  same as a dead one here; it is *dead* (its replicas get replaced) only when declared so by
  the operator or after being down for the repair delay (`--repair-after-s`, default 60 s),
  which the meta leader measures from the first failed poll; a poll it answers starts the
  measure afresh, so only an unbroken outage counts.
- a shard's (and the meta group's) membership: the Raft configuration reported by its leader
  in the highest term any replica has seen (§5.1: an old leader may not know it was deposed);
  without a leader, the most advanced replica's (highest term, then applied index).
- corrupt replicas: replicas that `verify` marked (`corrupt` in their group status).
- a damaged WAL: what the node's last WAL check found (`wal.damage` in its status).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Collection, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from minikv_core.cluster.maintenance_plan import MetaView, NodeView, ShardView
from minikv_core.cluster.service import ServiceError
from minikv_core.cluster.shard_map import META_GROUP_ID, group_of_shard

POLL_TIMEOUT_S: Final = 1.5

JsonObject = dict[str, Any]
StatusPoll = Callable[[int, float], Awaitable[JsonObject]]
"""(node id, deadline) -> that node's status document; raises ServiceError when unreachable."""
Clock = Callable[[], float]
"""Seconds, monotonic: what the repair delay is measured with."""


@dataclass(frozen=True, slots=True)
class GroupReport:
    """One replica's view of its group (a `groups[]` item of the node's status)."""

    node: int
    role: str
    term: int
    leader: int
    applied: int
    voters: tuple[int, ...]
    learners: tuple[int, ...]
    corrupt: str
    match: Mapping[int, int]
    """The leader's match index per member (empty unless this replica leads)."""


@dataclass(frozen=True, slots=True)
class ClusterView:
    nodes: tuple[NodeView, ...]
    shards: tuple[ShardView, ...]
    groups: Mapping[int, tuple[GroupReport, ...]]
    """Group id -> every live replica's report."""
    statuses: Mapping[int, JsonObject] = field(default_factory=dict)
    meta: MetaView | None = None
    """None: no live node reported a meta replica."""

    def node(self, node_id: int) -> NodeView | None:
        return next((n for n in self.nodes if n.node_id == node_id), None)

    def leader_report(self, group_id: int) -> GroupReport | None:
        return _authority(self.groups.get(group_id, ()))


def _report(node: int, document: Mapping[str, Any]) -> GroupReport:
    peers = document.get("peers") or []
    return GroupReport(
        node=node,
        role=str(document.get("role", "")),
        term=int(document.get("term", 0)),
        leader=int(document.get("leader", 0)),
        applied=int(document.get("applied", 0)),
        voters=tuple(int(v) for v in document.get("voters", ())),
        learners=tuple(int(v) for v in document.get("learners", ())),
        corrupt=str(document.get("corrupt") or ""),
        match={int(p["node_id"]): int(p["match"]) for p in peers},
    )


def _authority(reports: Collection[GroupReport]) -> GroupReport | None:
    """The report whose membership to trust: the leader in the highest term, else the most
    advanced replica."""
    if not reports:
        return None
    top_term = max(r.term for r in reports)
    leaders = [r for r in reports if r.role == "leader" and r.term == top_term]
    if leaders:
        return leaders[0]
    return max(reports, key=lambda r: (r.term, r.applied, -r.node))


class ViewBuilder:
    """Polls the nodes and remembers since when each one is down (for the repair delay).

    `clock` times the repair delay only (tests pass a scripted one); the poll's own deadline
    is on `time.monotonic`, the clock the RPC layer keeps its deadlines on."""

    def __init__(
        self, poll: StatusPoll, repair_after_s: float, clock: Clock = time.monotonic
    ) -> None:
        self._poll = poll
        self._clock = clock
        self.repair_after_s = repair_after_s
        self.down_since: dict[int, float] = {}

    async def observe(
        self,
        node_ids: Collection[int],
        shard_count: int,
        *,
        dead: Collection[int] = (),
        leaving: Collection[int] = (),
    ) -> ClusterView:
        deadline = time.monotonic() + POLL_TIMEOUT_S
        ids = sorted(node_ids)
        answers = await asyncio.gather(*(self._poll_one(n, deadline) for n in ids))
        now = self._clock()
        statuses = {n: doc for n, doc in zip(ids, answers, strict=True) if doc is not None}
        for node_id in ids:
            if node_id in statuses:
                self.down_since.pop(node_id, None)
            else:
                self.down_since.setdefault(node_id, now)
        for node_id in [n for n in self.down_since if n not in ids]:
            del self.down_since[node_id]
        nodes = tuple(
            NodeView(
                node_id,
                live=node_id in statuses,
                dead=node_id in dead or self._down_too_long(node_id, now),
                leaving=node_id in leaving,
                wal_damage="; ".join(statuses.get(node_id, {}).get("wal", {}).get("damage", ())),
            )
            for node_id in ids
        )
        groups: dict[int, list[GroupReport]] = {}
        for node_id, status in statuses.items():
            for document in status.get("groups", ()):
                groups.setdefault(int(document["group"]), []).append(_report(node_id, document))
        shards = []
        for shard in range(shard_count):
            reports = groups.get(group_of_shard(shard), [])
            authority = _authority(reports)
            voters = authority.voters if authority is not None else ()
            learners = authority.learners if authority is not None else ()
            leader = authority.node if authority is not None and authority.role == "leader" else 0
            corrupt = frozenset(r.node for r in reports if r.corrupt)
            shards.append(ShardView(shard, voters, learners, leader, corrupt))
        meta = _authority(groups.get(META_GROUP_ID, []))
        return ClusterView(
            nodes,
            tuple(shards),
            {g: tuple(r) for g, r in groups.items()},
            statuses,
            None
            if meta is None
            else MetaView(meta.voters, meta.learners, meta.node if meta.role == "leader" else 0),
        )

    def _down_too_long(self, node_id: int, now: float) -> bool:
        since = self.down_since.get(node_id)
        return since is not None and self.repair_after_s > 0 and now - since >= self.repair_after_s

    async def _poll_one(self, node_id: int, deadline: float) -> JsonObject | None:
        try:
            async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
                return await self._poll(node_id, deadline)
        except (ServiceError, TimeoutError):
            return None
