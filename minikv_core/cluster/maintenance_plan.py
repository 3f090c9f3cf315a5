"""The maintenance planner: which membership changes bring every shard back to its replica
count (repair), spread replicas and leaders evenly (rebalance) or empty a node (remove-node),
and which keep the meta group's voters on live nodes (repair, rebalance).

Why pure: one function serves the dry run (the operator reads the whole plan before anything
moves), the executor (runs the steps in order and re-plans after each, since the cluster may
have changed underneath) and the tests (which apply plans to a simulated cluster and check the
safety rules after every step). The caller polls the nodes and passes what it saw; nothing
here reads a clock, a socket or a random number, and ties go to the lowest node id / shard.

Why the plan is the full sequence: the planner applies each step to its own copy of the state
before choosing the next (targets are the least loaded nodes *after* the steps planned so
far), so a dry run shows the whole way to the goal. Because the executor re-plans after every
step, every step must also be safe on its own; the rules below are per step.

Safety rules (the reasons are the usual ones of multi-Raft stores: CockroachDB and TiKV add a
replacement before removing the replica it replaces, Raft §4 changes one server at a time):
- A shard's healthy voters (usable node, not corrupt) never drop below min(what it had, the
  replica count): a bad replica is removed only once its replacement is a voter, and a healthy
  one only while the shard has more healthy voters than it needs.
- No step removes the last voter, and a shard whose healthy voters are not a majority is left
  alone: it could not commit a membership change, and guessing is how data is lost.
- Leadership leaves a live node through an explicit TRANSFER_LEADER step before its replica is
  removed, so the plan says where every leader ends up (the executor still moves it away
  itself if the node leads again by then).
- A replica on a node that is down but not (yet) dead is kept: a restart is cheaper than a
  copy, and the repair delay is what decides that a node is dead.

The meta group (every node is a member: up to META_VOTERS_MAX voters, the rest learners) is
planned first, because every shard step changes the map it holds. A dead voter still counts in
its quorum, so it costs fault tolerance until it is removed (4 voters with one dead survive no
further loss; the 3 that remain survive one). So a dead member is removed, one change at a
time and only while the live voters are a majority (the change must commit); then a usable
node outside the group joins as a learner and, while the group has fewer than
META_VOTERS_MAX voters, catches up and is promoted. A node that leads the meta group is the
one running the plan, so it is never removed by it.
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Final

from minikv_core.cluster.config import META_VOTERS_MAX

META_SHARD: Final = -1
"""`Step.shard` and `Blocked.shard` of the meta group, which is no shard (the same -1 the
job document gives a step about a whole node)."""

# =============================================================================================
# The model: what the caller observed, and what the planner answers
# =============================================================================================


@dataclass(frozen=True, slots=True)
class NodeView:
    """One node as the last poll saw it."""

    node_id: int
    live: bool
    """Answered the last poll."""
    dead: bool = False
    """Declared dead, or down longer than the repair delay: its replicas are replaced."""
    leaving: bool = False
    """Being decommissioned (remove-node): its replicas move elsewhere."""
    wal_damage: str = ""
    """What `verify` found damaged in the node's own WAL ("" if nothing): repair has the node
    rewrite it (cluster/wal_health.py)."""

    @property
    def usable(self) -> bool:
        """May receive replicas (and counts when replicas and leaders are balanced)."""
        return self.live and not self.dead and not self.leaving


@dataclass(frozen=True, slots=True)
class ShardView:
    """One shard's Raft group as its leader (or the shard map) reported it."""

    shard: int
    voters: tuple[int, ...]
    learners: tuple[int, ...] = ()
    leader: int = 0
    """0: unknown."""
    corrupt: frozenset[int] = frozenset()
    """Replicas known corrupt (verify found them)."""


@dataclass(frozen=True, slots=True)
class MetaView:
    """The meta group's configuration as its leader reported it."""

    voters: tuple[int, ...]
    learners: tuple[int, ...] = ()
    leader: int = 0
    """0: unknown."""

    @property
    def members(self) -> frozenset[int]:
        return frozenset((*self.voters, *self.learners))


class StepKind(enum.StrEnum):
    ADD_REPLICA = "add_replica"
    """Executor: create the replica on the node, add it as a learner, let it catch up, promote
    it to voter (a learner already there is resumed: caught up and promoted)."""
    REMOVE_REPLICA = "remove_replica"
    """Executor: move leadership away if the node leads, then remove it from the group."""
    TRANSFER_LEADER = "transfer_leader"
    """Executor: ask the shard's leader to hand leadership to the node (a voter)."""
    REMOVE_META_MEMBER = "remove_meta_member"
    """Executor (the meta leader): remove the node, voter or learner, from the meta group."""
    ADD_META_VOTER = "add_meta_voter"
    """Executor: add the node to the meta group as a learner (unless it is one), let it catch
    up, promote it (unless the group has META_VOTERS_MAX voters by then)."""
    ADD_META_LEARNER = "add_meta_learner"
    """Executor: add the node to the meta group as a learner (the group has all its voters)."""
    REWRITE_WAL = "rewrite_wal"
    """Executor: the node rewrites what it needs of its WAL from memory and truncates every
    old segment, the damaged ones with them (cluster/wal_health.py)."""

    @property
    def is_meta(self) -> bool:
        """About the meta group; the step's shard is META_SHARD."""
        return self in _META_KINDS

    @property
    def is_shardless(self) -> bool:
        """About no shard (the meta group, a node's WAL): the step's shard is META_SHARD."""
        return self in _META_KINDS or self is StepKind.REWRITE_WAL


@dataclass(frozen=True, slots=True)
class Step:
    kind: StepKind
    shard: int
    node: int
    reason: str
    """A sentence for the operator: why this step, e.g. "replace replica on dead node 3"."""

    def to_json(self) -> dict[str, object]:
        return {
            "kind": self.kind.value,
            "shard": self.shard,
            "node": self.node,
            "reason": self.reason,
        }

    @classmethod
    def from_json(cls, doc: Mapping[str, object]) -> Step:
        """Raises ValueError naming the missing or bad field (steps travel between nodes and
        into the event journal, so a bad one must be refused, not half-executed)."""
        kinds = ", ".join(kind.value for kind in StepKind)
        raw_kind = _field(doc, "kind")
        if not isinstance(raw_kind, str) or raw_kind not in {kind.value for kind in StepKind}:
            raise ValueError(f"step field 'kind' must be one of {kinds}, got {raw_kind!r}")
        kind = StepKind(raw_kind)
        shard = _int_field(doc, "shard", minimum=META_SHARD if kind.is_shardless else 0)
        if kind.is_shardless and shard != META_SHARD:
            raise ValueError(f"step field 'shard' of a {kind.value} step must be {META_SHARD}")
        node = _int_field(doc, "node", minimum=1)
        reason = _field(doc, "reason")
        if not isinstance(reason, str):
            raise ValueError(f"step field 'reason' must be a string, got {reason!r}")
        return cls(kind, shard, node, reason)


_META_KINDS: Final = frozenset(
    {StepKind.REMOVE_META_MEMBER, StepKind.ADD_META_VOTER, StepKind.ADD_META_LEARNER}
)


@dataclass(frozen=True, slots=True)
class Blocked:
    """A shard the plan cannot (fully) fix, and what the operator can do about it."""

    shard: int
    """META_SHARD: the meta group."""
    reason: str

    def to_json(self) -> dict[str, object]:
        return {"shard": self.shard, "reason": self.reason}


@dataclass(frozen=True, slots=True)
class UnderReplicated:
    shard: int
    healthy: int
    """Voters that hold a good copy: on a live node not declared dead, and not corrupt. A
    leaving node's replica counts: it is a full copy until it is removed, so a shard is not
    under-replicated merely because remove-node has marked one of its nodes."""
    wanted: int

    def to_json(self) -> dict[str, object]:
        return {"shard": self.shard, "healthy": self.healthy, "wanted": self.wanted}


@dataclass(frozen=True, slots=True)
class Plan:
    steps: tuple[Step, ...]
    under_replicated: tuple[UnderReplicated, ...]
    """As observed before the plan."""
    blocked: tuple[Blocked, ...]

    def to_json(self) -> dict[str, object]:
        return {
            "steps": [step.to_json() for step in self.steps],
            "under_replicated": [item.to_json() for item in self.under_replicated],
            "blocked": [item.to_json() for item in self.blocked],
        }


# =============================================================================================
# The planners
# =============================================================================================


def plan_repair(
    nodes: Sequence[NodeView],
    shards: Sequence[ShardView],
    replicas: int,
    meta: MetaView | None = None,
) -> Plan:
    """Remove dead members from the meta group and fill it from usable nodes (if `meta` is
    known), then bring every shard to `replicas` healthy voters: resume or drop learners,
    replace replicas on dead, leaving and corrupt nodes, fill under-replicated shards, trim
    over-replicated ones."""
    cluster = _Cluster(nodes, shards, replicas)
    cluster.repair_wals()
    if meta is not None:
        cluster.repair_meta(meta)
    cluster.repair()
    return cluster.plan(_under_replicated(nodes, shards, replicas))


def plan_rebalance(
    nodes: Sequence[NodeView],
    shards: Sequence[ShardView],
    replicas: int,
    meta: MetaView | None = None,
) -> Plan:
    """Repair first (the same steps as `plan_repair`), then move replicas until the voter counts
    of usable nodes differ by at most one, then leaders likewise (a node added to a running
    cluster starts empty; this is what fills it)."""
    cluster = _Cluster(nodes, shards, replicas)
    cluster.repair_wals()
    if meta is not None:
        cluster.repair_meta(meta)
    cluster.repair()
    cluster.balance_voters()
    cluster.balance_leaders()
    return cluster.plan(_under_replicated(nodes, shards, replicas))


def plan_remove_node(
    nodes: Sequence[NodeView], shards: Sequence[ShardView], replicas: int, node_id: int
) -> Plan:
    """Move every replica off `node_id` (marked leaving) and repair the rest. Shards whose
    replica cannot move get a Blocked entry and keep it: the node is not removed from them.
    `under_replicated` describes the cluster before the node was marked leaving. The meta
    group is left alone: the node leaves it last, when it holds no replica any more."""
    known = sorted(node.node_id for node in nodes)
    if node_id not in known:
        raise ValueError(
            f"node {node_id} is not a cluster node (nodes: {', '.join(map(str, known))})"
        )
    leaving = [replace(node, leaving=True) if node.node_id == node_id else node for node in nodes]
    cluster = _Cluster(leaving, shards, replicas)
    cluster.repair()
    return cluster.plan(_under_replicated(nodes, shards, replicas))


def replica_counts(shards: Sequence[ShardView], nodes: Sequence[NodeView]) -> dict[int, int]:
    """Voters per usable node (0 for a usable node holding none), by node id: the figure
    rebalance evens out."""
    counts = {node.node_id: 0 for node in sorted(nodes, key=lambda n: n.node_id) if node.usable}
    for shard in shards:
        for voter in shard.voters:
            if voter in counts:
                counts[voter] += 1
    return counts


# =============================================================================================
# The simulation the planners share
# =============================================================================================


@dataclass(slots=True)
class _Group:
    """The planner's mutable copy of one shard's group."""

    shard: int
    voters: list[int]
    learners: list[int]
    leader: int
    corrupt: set[int] = field(default_factory=set)


class _Cluster:
    """The planner's private copy of the cluster. Every planned step is applied to it at once,
    so the next decision sees the state the previous steps leave behind."""

    def __init__(self, nodes: Sequence[NodeView], shards: Sequence[ShardView], replicas: int):
        if isinstance(replicas, bool) or not isinstance(replicas, int) or replicas < 1:
            raise ValueError(f"replicas must be an integer >= 1, got {replicas!r}")
        self.replicas = replicas
        self.nodes = _index_nodes(nodes)
        self.groups = _index_shards(shards, self.nodes)
        self.steps: list[Step] = []
        self.blocked: list[Blocked] = []
        self.blocked_shards: set[int] = set()

    def plan(self, under_replicated: tuple[UnderReplicated, ...]) -> Plan:
        return Plan(tuple(self.steps), under_replicated, tuple(self.blocked))

    # ------------------------------------------------------------------------- state queries

    def is_healthy(self, group: _Group, node_id: int) -> bool:
        return self.nodes[node_id].usable and node_id not in group.corrupt

    def is_bad(self, group: _Group, node_id: int) -> bool:
        """Its replica is replaced: dead, leaving, or corrupt in this shard."""
        node = self.nodes[node_id]
        return node.dead or node.leaving or node_id in group.corrupt

    def healthy_count(self, group: _Group) -> int:
        return sum(1 for voter in group.voters if self.is_healthy(group, voter))

    def voter_counts(self) -> dict[int, int]:
        counts = {node_id: 0 for node_id, node in self.nodes.items() if node.usable}
        for group in self.groups:
            for voter in group.voters:
                if voter in counts:
                    counts[voter] += 1
        return counts

    def leader_counts(self) -> dict[int, int]:
        counts = {node_id: 0 for node_id, node in self.nodes.items() if node.usable}
        for group in self.groups:
            if group.leader in counts:
                counts[group.leader] += 1
        return counts

    def pick_target(self, group: _Group, load: Mapping[int, int] | None = None) -> int | None:
        """The usable node outside the group holding the fewest voters (lowest id on ties).
        `load`: the current `voter_counts()`, if the caller has it."""
        load = self.voter_counts() if load is None else load
        outside = [n for n in load if n not in group.voters and n not in group.learners]
        return min(outside, key=lambda n: (load[n], n), default=None)

    def state_of(self, group: _Group, node_id: int) -> str:
        node = self.nodes[node_id]
        if node.dead:
            return "dead"
        if node.leaving:
            return "leaving"
        if node_id in group.corrupt:
            return "corrupt"
        return "down" if not node.live else "healthy"

    # ------------------------------------------------------------------------- steps

    def block(self, group: _Group, reason: str) -> None:
        self.blocked.append(Blocked(group.shard, f"shard {group.shard}: {reason}"))
        self.blocked_shards.add(group.shard)

    def add(self, group: _Group, node_id: int, reason: str) -> None:
        assert self.nodes[node_id].usable, (group, node_id)
        assert node_id not in group.voters and node_id not in group.corrupt, (group, node_id)
        if node_id in group.learners:
            group.learners.remove(node_id)
        group.voters.append(node_id)
        self.steps.append(Step(StepKind.ADD_REPLICA, group.shard, node_id, reason))

    def remove(self, group: _Group, node_id: int, reason: str) -> None:
        if node_id in group.learners:
            group.learners.remove(node_id)
        else:
            assert node_id in group.voters, (group, node_id)
            assert len(group.voters) > 1, f"never remove the last voter: {group}"
            if group.leader == node_id:
                self.transfer_leader_off(group, node_id)
            group.voters.remove(node_id)
        group.corrupt.discard(node_id)
        if group.leader == node_id:
            group.leader = 0
        self.steps.append(Step(StepKind.REMOVE_REPLICA, group.shard, node_id, reason))

    def transfer(self, group: _Group, node_id: int, reason: str) -> None:
        assert node_id in group.voters and self.is_healthy(group, node_id), (group, node_id)
        group.leader = node_id
        self.steps.append(Step(StepKind.TRANSFER_LEADER, group.shard, node_id, reason))

    def transfer_leader_off(self, group: _Group, node_id: int) -> None:
        """Before `node_id`'s replica goes: hand leadership to the healthy voter leading the
        fewest shards, so the plan (not a later election) decides where it lands."""
        leads = self.leader_counts()
        others = [v for v in group.voters if v != node_id and self.is_healthy(group, v)]
        assert others, f"no healthy voter to take over leadership: {group}"
        target = min(others, key=lambda n: (leads[n], n))
        self.transfer(
            group, target, f"move leadership off node {node_id} before its replica is removed"
        )

    # ---------------------------------------------------------------------------- node WALs

    def repair_wals(self) -> None:
        """First, before anything moves: a live node whose WAL verify found damaged rewrites
        it while it still holds the good state in memory (a restart would refuse the WAL)."""
        for node in sorted(self.nodes.values(), key=lambda n: n.node_id):
            if node.wal_damage and node.live and not node.dead:
                reason = f"its WAL is damaged ({node.wal_damage}): rewrite it from memory"
                self.steps.append(Step(StepKind.REWRITE_WAL, META_SHARD, node.node_id, reason))

    # ------------------------------------------------------------------------- meta group

    def repair_meta(self, meta: MetaView) -> None:
        """Members that are dead or no longer in the cluster out, then usable non-members in
        (as voters up to META_VOTERS_MAX, else learners); each step is applied to the copy of
        the configuration before the next is chosen."""
        voters = sorted(set(meta.voters))
        learners = sorted(set(meta.learners) - set(voters))
        live_voters = [v for v in voters if v in self.nodes and self.nodes[v].live]
        live_voters = [v for v in live_voters if not self.nodes[v].dead]
        if len(live_voters) < len(voters) // 2 + 1:
            # Removing a member that does not vote never lowers this count and lowers the
            # majority or keeps it, so checking once before the first change is enough.
            self.block_meta(
                f"only {len(live_voters)} of {len(voters)} voters are live (voters "
                f"{_ids(voters)}): it cannot commit a membership change until nodes come back"
            )
            return
        for node_id in [*voters, *learners]:
            node = self.nodes.get(node_id)
            if node is not None and not node.dead:
                continue
            why = "left the cluster" if node is None else "is dead"
            if node_id == meta.leader:
                self.block_meta(
                    f"node {node_id} {why} but leads the meta group (it runs this plan): stop "
                    "it so that another voter takes over, then repair again"
                )
            elif node_id in voters:
                voters.remove(node_id)
                self.meta_step(
                    StepKind.REMOVE_META_MEMBER,
                    node_id,
                    f"meta group: node {node_id} {why}; remove its vote ({len(voters)} voters "
                    f"remain, {len(live_voters)} of them live)",
                )
            else:
                learners.remove(node_id)
                self.meta_step(
                    StepKind.REMOVE_META_MEMBER,
                    node_id,
                    f"meta group: node {node_id} {why}; drop it as a learner",
                )
        usable = [n for n, node in self.nodes.items() if node.usable]
        joining = [n for n in learners if n in usable]
        joining += [n for n in usable if n not in voters and n not in learners]
        for node_id in joining:
            if len(voters) < META_VOTERS_MAX:
                how = (
                    f"the learner on node {node_id} catches up"
                    if node_id in learners
                    else f"live node {node_id} joins as a learner, catches up"
                )
                self.meta_step(
                    StepKind.ADD_META_VOTER,
                    node_id,
                    f"meta group has {len(voters)} of {META_VOTERS_MAX} voters: {how} and "
                    "is promoted",
                )
                voters.append(node_id)
                if node_id in learners:
                    learners.remove(node_id)
            elif node_id not in learners:
                learners.append(node_id)
                self.meta_step(
                    StepKind.ADD_META_LEARNER,
                    node_id,
                    f"meta group: live node {node_id} is no member; it follows as a learner "
                    f"(the group has its {META_VOTERS_MAX} voters)",
                )

    def meta_step(self, kind: StepKind, node_id: int, reason: str) -> None:
        assert kind.is_meta, kind
        self.steps.append(Step(kind, META_SHARD, node_id, reason))

    def block_meta(self, reason: str) -> None:
        self.blocked.append(Blocked(META_SHARD, f"meta group: {reason}"))

    # ------------------------------------------------------------------------- repair

    def repair(self) -> None:
        for group in self.groups:
            self.repair_shard(group)

    def repair_shard(self, group: _Group) -> None:
        # A live leaving node's replica is still a copy to catch up from and a vote, until
        # its replacement is in: with one replica per shard it is the only one.
        healthy = self.healthy_count(group) + sum(
            1
            for voter in group.voters
            if self.nodes[voter].leaving
            and self.nodes[voter].live
            and not self.nodes[voter].dead
            and voter not in group.corrupt
        )
        if healthy == 0:
            self.block(
                group,
                f"lost: no healthy replica (voters {_ids(group.voters)}); nothing to copy "
                "from: bring a node holding its data back",
            )
            return
        if healthy < len(group.voters) // 2 + 1:
            self.block(
                group,
                f"below quorum: {healthy} of {len(group.voters)} voters healthy; the group "
                "cannot change its membership until nodes come back",
            )
            return
        self.settle_learners(group)
        no_target = self.replace_bad_voters(group)
        down = [v for v in sorted(group.voters) if self.state_of(group, v) == "down"]
        kept_down = self.settle_down_voters(group, down)
        if not no_target:
            self.fill(group, kept_down)
        self.trim(group)

    def settle_learners(self, group: _Group) -> None:
        """Resume a learner an interrupted step left behind if the shard needs it, else drop it."""
        for node_id in sorted(group.learners):
            healthy = self.healthy_count(group)
            if self.is_healthy(group, node_id) and healthy < self.replicas:
                self.add(
                    group,
                    node_id,
                    f"resume: the learner on node {node_id} catches up and becomes a voter "
                    f"({healthy} of {self.replicas} healthy replicas)",
                )
                continue
            state = self.state_of(group, node_id)
            why = f"node {node_id} is {state}" if state != "healthy" else "not needed"
            self.remove(group, node_id, f"drop the learner on node {node_id}: {why}")

    def replace_bad_voters(self, group: _Group) -> bool:
        """Replace replicas on dead, leaving and corrupt nodes; True if one had no target.

        Corrupt replicas on usable nodes go last: they alone can be rebuilt in place, so the
        free nodes go to replicas that cannot."""
        bad = sorted(
            (v for v in group.voters if self.is_bad(group, v)),
            key=lambda v: (self.nodes[v].usable, v),
        )
        no_target = False
        stuck: list[tuple[int, str]] = []
        for node_id in bad:
            state = self.state_of(group, node_id)
            if self.drop_if_spare(group, node_id, state):
                continue
            healthy = self.healthy_count(group)
            target = self.pick_target(group)
            if target is not None:
                load = self.voter_counts()[target]
                self.add(
                    group,
                    target,
                    f"replace replica on {state} node {node_id}: new replica on node {target} "
                    f"(holds {load}, the fewest)",
                )
                self.remove(
                    group,
                    node_id,
                    f"replace replica on {state} node {node_id}: its replacement on node "
                    f"{target} is a voter",
                )
                continue
            if state == "corrupt" and self.nodes[node_id].usable:
                if healthy >= 1 and healthy >= (len(group.voters) - 1) // 2 + 1:
                    reason = (
                        f"node {node_id} is corrupt: rebuild in place from the leader's snapshot "
                        f"(no other usable node lacks shard {group.shard})"
                    )
                    self.remove(group, node_id, reason)
                    self.add(group, node_id, reason)
                else:
                    no_target = True
                    self.block(
                        group,
                        f"node {node_id} is corrupt and rebuilding it in place could lose "
                        f"quorum ({healthy} other healthy voters of {len(group.voters)}); "
                        "add a node",
                    )
                continue
            stuck.append((node_id, state))
        # Decided once the others are: a rebuild in place above may have made enough
        # replicas healthy to drop these without a replacement (else a second plan would).
        for node_id, state in stuck:
            if self.drop_if_spare(group, node_id, state):
                continue
            no_target = True
            if state == "corrupt":
                self.block(
                    group,
                    f"node {node_id} is corrupt and down, and no live node lacks a replica of "
                    f"shard {group.shard}; bring node {node_id} back or add a node",
                )
            else:
                self.block(
                    group,
                    f"no live node without a replica of shard {group.shard}; add a node, "
                    f"then run this again (the replica on {state} node {node_id} stays "
                    "until then)",
                )
        return no_target

    def drop_if_spare(self, group: _Group, node_id: int, state: str) -> bool:
        """Remove the bad replica on `node_id` when the healthy ones already suffice."""
        healthy = self.healthy_count(group)
        if healthy < self.replicas:
            return False
        self.remove(
            group,
            node_id,
            f"remove the replica on {state} node {node_id}: {healthy} healthy replicas remain",
        )
        return True

    def settle_down_voters(self, group: _Group, down: list[int]) -> int:
        """Drop replicas on down nodes the shard no longer needs; keep (and report) the others.
        Returns how many are kept."""
        kept = 0
        for node_id in down:
            healthy = self.healthy_count(group)
            if healthy >= self.replicas:
                self.remove(
                    group,
                    node_id,
                    f"over-replicated: node {node_id} is down and {healthy} healthy replicas "
                    "remain",
                )
                continue
            kept += 1
            self.block(
                group,
                f"waiting: node {node_id} is down but not declared dead; its replica is kept "
                "until the repair delay passes (or the node is declared dead)",
            )
        return kept

    def fill(self, group: _Group, kept_down: int) -> None:
        while self.healthy_count(group) + kept_down < self.replicas:
            healthy = self.healthy_count(group)
            target = self.pick_target(group)
            if target is None:
                self.block(
                    group,
                    f"under-replicated: {healthy} of {self.replicas} healthy replicas and no "
                    f"live node without a replica of shard {group.shard}; add a node",
                )
                return
            self.add(
                group,
                target,
                f"under-replicated: {healthy} of {self.replicas} healthy replicas; new replica "
                f"on node {target} (fewest replicas)",
            )

    def trim(self, group: _Group) -> None:
        """Remove surplus healthy voters from the most loaded nodes (a leader last)."""
        while self.healthy_count(group) > self.replicas:
            assert all(self.is_healthy(group, v) for v in group.voters), group
            load = self.voter_counts()
            victim = min(group.voters, key=lambda n: (-load[n], n == group.leader, n))
            self.remove(
                group,
                victim,
                f"over-replicated: {len(group.voters)} voters for {self.replicas} replicas; "
                f"node {victim} holds the most replicas ({load[victim]})",
            )

    # ------------------------------------------------------------------------- rebalance

    def movable(self, group: _Group) -> bool:
        """A shard rebalance may touch: repaired, nothing pending, nothing blocked."""
        return (
            group.shard not in self.blocked_shards
            and not group.learners
            and len(group.voters) == self.replicas
            and all(self.is_healthy(group, v) for v in group.voters)
        )

    def balance_voters(self) -> None:
        """Move one replica at a time from a most loaded node to a least loaded one. Every move
        narrows the gap between two nodes by at least two, so the sum of squared counts falls
        and the loop ends; it ends only when no movable shard can narrow any gap of two."""
        while (move := self.next_move()) is not None:
            group, source, target = move
            load = self.voter_counts()
            self.add(
                group,
                target,
                f"rebalance: move shard {group.shard} from node {source} (holds {load[source]}) "
                f"to node {target} (holds {load[target]})",
            )
            self.remove(
                group,
                source,
                f"rebalance: shard {group.shard} moved from node {source} to node {target}",
            )

    def next_move(self) -> tuple[_Group, int, int] | None:
        load = self.voter_counts()
        for source in sorted(load, key=lambda n: (-load[n], n)):
            # Shards the source does not lead first: moving them changes no leader.
            candidates = sorted(
                (g for g in self.groups if source in g.voters and self.movable(g)),
                key=lambda g: (g.leader == source, g.shard),
            )
            for group in candidates:
                target = self.pick_target(group, load)
                if target is not None and load[source] - load[target] >= 2:
                    return group, source, target
        return None

    def balance_leaders(self) -> None:
        """Transfer leaderships along the shortest chain that moves one from a node leading
        many to a node leading at least two fewer (a direct transfer when one exists). The
        chain changes no count but its ends, so the sum of squared counts falls each time and
        the loop ends; no such chain left means no transfer can narrow the spread further."""
        while (chain := self.leader_chain()) is not None:
            leads = self.leader_counts()
            first, last = chain[0][0].leader, chain[-1][1]
            for group, target in chain:
                self.transfer(
                    group,
                    target,
                    f"balance leaders: node {first} leads {leads[first]} shards, node {last} "
                    f"leads {leads[last]}",
                )

    def leader_chain(self) -> list[tuple[_Group, int]] | None:
        leads = self.leader_counts()
        led: dict[int, list[_Group]] = {node_id: [] for node_id in leads}
        for group in self.groups:
            if group.leader in led and group.shard not in self.blocked_shards:
                led[group.leader].append(group)
        for source in sorted(leads, key=lambda n: (-leads[n], n)):
            came_from: dict[int, tuple[int, _Group] | None] = {source: None}
            queue = deque([source])
            while queue:
                holder = queue.popleft()
                for group in led[holder]:
                    voters = [v for v in group.voters if v != holder and self.is_healthy(group, v)]
                    for voter in sorted(voters, key=lambda n: (leads[n], n)):
                        if voter in came_from:
                            continue
                        came_from[voter] = (holder, group)
                        if leads[voter] <= leads[source] - 2:
                            return _chain_to(voter, came_from)
                        queue.append(voter)
        return None


def _chain_to(
    end: int, came_from: Mapping[int, tuple[int, _Group] | None]
) -> list[tuple[_Group, int]]:
    chain: list[tuple[_Group, int]] = []
    node_id = end
    while (link := came_from[node_id]) is not None:
        holder, group = link
        chain.append((group, node_id))
        node_id = holder
    chain.reverse()
    return chain


# =============================================================================================
# Input checks and small helpers
# =============================================================================================


def _under_replicated(
    nodes: Sequence[NodeView], shards: Sequence[ShardView], replicas: int
) -> tuple[UnderReplicated, ...]:
    serving = {node.node_id for node in nodes if node.live and not node.dead}
    found = []
    for shard in sorted(shards, key=lambda s: s.shard):
        healthy = sum(1 for v in shard.voters if v in serving and v not in shard.corrupt)
        if healthy < replicas:
            found.append(UnderReplicated(shard.shard, healthy, replicas))
    return tuple(found)


def _index_nodes(nodes: Sequence[NodeView]) -> dict[int, NodeView]:
    index: dict[int, NodeView] = {}
    for node in sorted(nodes, key=lambda n: n.node_id):
        if isinstance(node.node_id, bool) or not isinstance(node.node_id, int):
            raise ValueError(f"node ids must be integers, got {node.node_id!r}")
        if node.node_id <= 0:
            raise ValueError(f"node ids must be positive, got {node.node_id}")
        if node.node_id in index:
            raise ValueError(f"node {node.node_id} is listed twice")
        index[node.node_id] = node
    return index


def _index_shards(shards: Sequence[ShardView], nodes: Mapping[int, NodeView]) -> list[_Group]:
    groups: list[_Group] = []
    seen: set[int] = set()
    for shard in sorted(shards, key=lambda s: s.shard):
        number = shard.shard
        if number < 0 or number in seen:
            raise ValueError(f"shard {number} is negative or listed twice")
        seen.add(number)
        members = (*shard.voters, *shard.learners)
        if len(set(members)) != len(members):
            raise ValueError(f"shard {number}: voters and learners must be distinct nodes")
        unknown = sorted(set(members) - set(nodes))
        if unknown:
            raise ValueError(f"shard {number}: replicas on unknown nodes {_ids(unknown)}")
        # A leader the planner cannot count on is unknown: a node that did not answer the poll
        # (an election is due) or that is not a voter (a stale hint).
        leader = shard.leader if shard.leader in shard.voters and nodes[shard.leader].live else 0
        groups.append(
            _Group(
                number,
                list(shard.voters),
                list(shard.learners),
                leader,
                set(shard.corrupt) & set(members),
            )
        )
    return groups


def _ids(node_ids: Iterable[int]) -> str:
    return ", ".join(str(n) for n in sorted(node_ids)) or "none"


def _field(doc: Mapping[str, object], name: str) -> object:
    if name not in doc:
        raise ValueError(f"step field {name!r} is missing")
    return doc[name]


def _int_field(doc: Mapping[str, object], name: str, *, minimum: int) -> int:
    value = _field(doc, name)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"step field {name!r} must be an integer >= {minimum}, got {value!r}")
    return value
