"""The maintenance planner: named scenarios, then properties over random clusters.

Every plan is applied step by step by `apply_plan`, a simulator written here independently of
the planner's own: it refuses a step no executor could run (adding a replica on a node that
may not receive one, removing the last voter, transferring leadership to a non-voter) and
checks the safety rules after every step, so a plan that is only right at the end still fails.
Meta-group steps are replayed likewise by `apply_meta`.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import pytest
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st

from minikv_core.cluster.config import META_VOTERS_MAX
from minikv_core.cluster.maintenance_plan import (
    META_SHARD,
    Blocked,
    MetaView,
    NodeView,
    Plan,
    ShardView,
    Step,
    StepKind,
    UnderReplicated,
    plan_rebalance,
    plan_remove_node,
    plan_repair,
    replica_counts,
)
from minikv_core.cluster.placement import place_shards

ADD = StepKind.ADD_REPLICA
REMOVE = StepKind.REMOVE_REPLICA
TRANSFER = StepKind.TRANSFER_LEADER
META_REMOVE = StepKind.REMOVE_META_MEMBER
META_VOTER = StepKind.ADD_META_VOTER
META_LEARNER = StepKind.ADD_META_LEARNER

# ------------------------------------------------------------------------------ the simulator


def healthy_voters(shard: ShardView, nodes: Sequence[NodeView]) -> int:
    usable = {n.node_id for n in nodes if n.live and not n.dead and not n.leaving}
    return sum(1 for v in shard.voters if v in usable and v not in shard.corrupt)


def apply_step(shards: list[ShardView], nodes: Sequence[NodeView], step: Step) -> None:
    """What a successful executor step does to the group; refuses impossible steps."""
    by_id = {n.node_id: n for n in nodes}
    [position] = [i for i, s in enumerate(shards) if s.shard == step.shard]
    shard = shards[position]
    if step.kind is ADD:
        node = by_id[step.node]
        assert node.live and not node.dead and not node.leaving, f"{step}: node not usable"
        assert step.node not in shard.voters, f"{step}: already a voter"
        voters = (*shard.voters, step.node)
        learners = tuple(n for n in shard.learners if n != step.node)
        assert step.node not in shard.corrupt, f"{step}: adding a replica known corrupt"
        shards[position] = replace(shard, voters=voters, learners=learners)
    elif step.kind is REMOVE:
        assert step.node in shard.voters or step.node in shard.learners, f"{step}: not a member"
        if step.node in shard.voters:
            assert len(shard.voters) > 1, f"{step}: removes the last voter"
            # The plan hands leadership over itself (TRANSFER_LEADER) before removing a leader.
            assert shard.leader != step.node or not by_id[step.node].live, f"{step}: leader"
        shards[position] = replace(
            shard,
            voters=tuple(n for n in shard.voters if n != step.node),
            learners=tuple(n for n in shard.learners if n != step.node),
            leader=0 if shard.leader == step.node else shard.leader,
            corrupt=shard.corrupt - {step.node},
        )
    else:
        node = by_id[step.node]
        assert step.node in shard.voters, f"{step}: leader must be a voter"
        assert node.live and not node.dead and not node.leaving, f"{step}: node not usable"
        assert step.node not in shard.corrupt, f"{step}: leader would be corrupt"
        shards[position] = replace(shard, leader=step.node)


def apply_plan(
    shards: Sequence[ShardView],
    nodes: Sequence[NodeView],
    plan: Plan,
    replicas: int,
    *,
    view: Sequence[NodeView] | None = None,
    after_step: Callable[[Step, list[ShardView]], None] | None = None,
) -> list[ShardView]:
    """Apply every step, checking after each that no shard's healthy voters fell below
    min(what it had, replicas) and that a shard with a healthy majority keeps one. `view`: the
    nodes as health is judged (remove-node judges by the cluster before the node left)."""
    judge = nodes if view is None else view
    state = sorted(shards, key=lambda s: s.shard)
    floor = {s.shard: min(healthy_voters(s, judge), replicas) for s in state}
    had_quorum = {
        s.shard for s in state if healthy_voters(s, judge) >= len(s.voters) // 2 + 1 and s.voters
    }
    for step in plan.steps:
        if step.kind.is_meta:
            continue  # apply_meta
        apply_step(state, nodes, step)
        for shard in state:
            healthy = healthy_voters(shard, judge)
            assert healthy >= floor[shard.shard], f"after {step}: {shard} below {floor}"
            if shard.shard in had_quorum:
                assert healthy >= len(shard.voters) // 2 + 1, f"after {step}: {shard} no quorum"
        if after_step is not None:
            after_step(step, state)
    return state


def live_meta_voters(meta: MetaView, nodes: Sequence[NodeView]) -> int:
    """Voters that answer and are not about to be replaced."""
    live = {n.node_id for n in nodes if n.live and not n.dead}
    return sum(1 for v in meta.voters if v in live)


def apply_meta(meta: MetaView, nodes: Sequence[NodeView], plan: Plan) -> MetaView:
    """Replay the plan's meta-group steps, refusing what the meta leader could not (or must
    not) do, and checking after each that the live voters never shrink and stay a majority
    once they were one."""
    by_id = {n.node_id: n for n in nodes}
    live_before = live_meta_voters(meta, nodes)
    had_quorum = live_before >= len(meta.voters) // 2 + 1
    state = meta
    for step in plan.steps:
        if not step.kind.is_meta:
            continue
        assert step.shard == META_SHARD, step
        voters, learners = list(state.voters), list(state.learners)
        if step.kind is META_REMOVE:
            assert step.node in (*voters, *learners), f"{step}: not a member"
            node = by_id.get(step.node)
            assert node is None or node.dead, f"{step}: removes a member that is not dead"
            if step.node in voters:
                assert step.node != state.leader, f"{step}: removes the meta leader"
                assert len(voters) > 1, f"{step}: removes the last voter"
                committed_by = live_meta_voters(state, nodes)
                assert committed_by >= len(voters) // 2 + 1, f"{step}: cannot commit"
                voters.remove(step.node)
            else:
                learners.remove(step.node)
        else:
            node = by_id[step.node]
            assert node.usable, f"{step}: node not usable"
            assert step.node not in voters, f"{step}: already a voter"
            if step.kind is META_VOTER:
                assert len(voters) < META_VOTERS_MAX, f"{step}: too many voters"
                voters.append(step.node)
                learners = [n for n in learners if n != step.node]
            else:
                assert len(voters) == META_VOTERS_MAX, f"{step}: a voter is missing"
                assert step.node not in learners, f"{step}: already a learner"
                learners.append(step.node)
        state = MetaView(tuple(voters), tuple(learners), state.leader)
        live = live_meta_voters(state, nodes)
        assert live >= live_before, f"after {step}: {state} lost live voters"
        if had_quorum:
            assert live >= len(state.voters) // 2 + 1, f"after {step}: {state} no quorum"
    return state


def meta_steps(plan: Plan) -> list[tuple[StepKind, int]]:
    return [(s.kind, s.node) for s in plan.steps if s.kind.is_meta]


# ------------------------------------------------------------------------------ builders


def make_nodes(
    count: int, *, dead: Sequence[int] = (), down: Sequence[int] = (), extra: int = 0
) -> list[NodeView]:
    return [
        NodeView(n, live=n not in dead and n not in down, dead=n in dead)
        for n in range(1, count + extra + 1)
    ]


def placed(node_count: int, shard_count: int, replicas: int) -> list[ShardView]:
    """The founding placement, each shard led by its preferred leader."""
    return [
        ShardView(p.shard, p.replicas, leader=p.preferred_leader)
        for p in place_shards(range(1, node_count + 1), shard_count, replicas)
    ]


def steps_of(plan: Plan, shard: int) -> list[tuple[StepKind, int]]:
    return [(s.kind, s.node) for s in plan.steps if s.shard == shard]


def spread(counts: dict[int, int]) -> int:
    return max(counts.values()) - min(counts.values())


def leader_counts(shards: Sequence[ShardView], nodes: Sequence[NodeView]) -> dict[int, int]:
    usable = [n.node_id for n in nodes if n.live and not n.dead and not n.leaving]
    leads = Counter(s.leader for s in shards)
    return {n: leads.get(n, 0) for n in usable}


# ------------------------------------------------------------------------------ scenarios


def test_dead_node_replicas_move_to_the_one_free_node() -> None:
    nodes = make_nodes(4, dead=[3])
    shards = placed(4, 8, 3)
    plan = plan_repair(nodes, shards, 3)

    on_dead = [s for s in shards if 3 in s.voters]
    assert on_dead, "the scenario needs shards on node 3"
    for shard in shards:
        if 3 in shard.voters:
            [free] = {1, 2, 4} - set(shard.voters)
            assert steps_of(plan, shard.shard) == [(ADD, free), (REMOVE, 3)]
            reasons = [s.reason for s in plan.steps if s.shard == shard.shard]
            assert all("replace replica on dead node 3" in reason for reason in reasons)
        else:
            assert steps_of(plan, shard.shard) == []
    assert plan.blocked == ()
    assert plan.under_replicated == tuple(UnderReplicated(s.shard, 2, 3) for s in on_dead)

    final = apply_plan(shards, nodes, plan, 3)
    assert all(healthy_voters(s, nodes) == 3 and len(s.voters) == 3 for s in final)
    assert plan_repair(nodes, final, 3).steps == ()


def test_a_live_node_with_a_damaged_wal_rewrites_it_first_and_a_dead_one_does_not() -> None:
    nodes = [
        replace(n, wal_damage="WAL segment 1.wal, byte 32: bad CRC") if n.node_id in (2, 4) else n
        for n in make_nodes(4, dead=[4])
    ]
    plan = plan_repair(nodes, placed(4, 8, 3), 3)
    rewrite = Step(
        StepKind.REWRITE_WAL,
        META_SHARD,
        2,
        "its WAL is damaged (WAL segment 1.wal, byte 32: bad CRC): rewrite it from memory",
    )
    assert plan.steps[0] == rewrite, "before any replica moves"
    assert [s for s in plan.steps if s.kind is StepKind.REWRITE_WAL] == [rewrite]
    assert Step.from_json(rewrite.to_json()) == rewrite
    assert plan_rebalance(nodes, placed(4, 8, 3), 3).steps[0] == rewrite
    with pytest.raises(ValueError, match="must be -1"):
        Step.from_json({**rewrite.to_json(), "shard": 0})


def test_three_nodes_one_dead_is_blocked_without_steps() -> None:
    nodes = make_nodes(3, dead=[2])
    plan = plan_repair(nodes, placed(3, 8, 3), 3)
    assert plan.steps == ()
    assert [b.shard for b in plan.blocked] == list(range(8))
    assert all("no live node without a replica of shard" in b.reason for b in plan.blocked)
    assert all("add a node" in b.reason for b in plan.blocked)


def test_corrupt_follower_on_live_node_is_rebuilt_in_place() -> None:
    nodes = make_nodes(3)
    shards = placed(3, 4, 3)
    assert shards[1].leader != 3
    shards[1] = replace(shards[1], corrupt=frozenset({3}))
    plan = plan_repair(nodes, shards, 3)
    assert [(s.kind, s.shard, s.node) for s in plan.steps] == [(REMOVE, 1, 3), (ADD, 1, 3)]
    assert all("rebuild in place from the leader's snapshot" in s.reason for s in plan.steps)
    final = apply_plan(shards, nodes, plan, 3)
    assert final[1].corrupt == frozenset() and sorted(final[1].voters) == [1, 2, 3]


def test_corrupt_leader_hands_leadership_over_before_its_rebuild() -> None:
    nodes = make_nodes(3)
    shards = [ShardView(0, (1, 2, 3), leader=2, corrupt=frozenset({2}))]
    plan = plan_repair(nodes, shards, 3)
    assert steps_of(plan, 0) == [(TRANSFER, 1), (REMOVE, 2), (ADD, 2)]
    [final] = apply_plan(shards, nodes, plan, 3)
    assert final.leader == 1


def test_corrupt_replica_moves_when_a_free_node_exists() -> None:
    nodes = make_nodes(4)
    shards = [ShardView(0, (1, 2, 3), leader=1, corrupt=frozenset({3}))]
    plan = plan_repair(nodes, shards, 3)
    assert steps_of(plan, 0) == [(ADD, 4), (REMOVE, 3)]


def test_rebalance_fills_a_fifth_empty_node() -> None:
    nodes = make_nodes(4, extra=1)
    shards = placed(4, 8, 3)
    assert replica_counts(shards, nodes)[5] == 0
    plan = plan_rebalance(nodes, shards, 3)
    assert plan.blocked == () and plan.under_replicated == ()

    final = apply_plan(shards, nodes, plan, 3)
    counts = replica_counts(final, nodes)
    assert spread(counts) <= 1 and counts[5] >= 4, counts
    assert spread(leader_counts(final, nodes)) <= 1, leader_counts(final, nodes)
    assert plan_rebalance(nodes, final, 3).steps == ()
    # Moves prefer shards the source does not lead: few leaders change.
    assert sum(1 for s in plan.steps if s.kind is TRANSFER) <= 3, plan.steps


def test_remove_node_that_leads_shards_moves_all_its_replicas() -> None:
    nodes = make_nodes(5)
    shards = placed(5, 8, 3)
    led = {s.shard for s in shards if s.leader == 1}
    assert led, "the scenario needs shards led by node 1"
    plan = plan_remove_node(nodes, shards, 3, 1)
    assert plan.blocked == ()

    def leadership_leaves_first(step: Step, state: list[ShardView]) -> None:
        if step.kind is REMOVE and step.node == 1:
            assert state[step.shard].leader != 1

    final = apply_plan(shards, nodes, plan, 3, after_step=leadership_leaves_first)
    for shard in final:
        assert 1 not in shard.voters and len(shard.voters) == 3
        assert healthy_voters(shard, nodes) == 3
    for number in led:
        kinds = [kind for kind, node in steps_of(plan, number)]
        assert kinds == [ADD, TRANSFER, REMOVE], kinds
    assert plan_remove_node(nodes, final, 3, 1).steps == ()


def test_remove_node_with_one_replica_per_shard_copies_from_the_leaving_node() -> None:
    """One replica per shard: the leaving node's is the only copy, and the one to catch up
    from (a 2-node cluster's remove-node said every shard it held was "lost")."""
    nodes = make_nodes(2)
    shards = placed(2, 4, 1)
    held = {s.shard for s in shards if 2 in s.voters}
    assert held, "the scenario needs shards on node 2"
    plan = plan_remove_node(nodes, shards, 1, 2)
    assert plan.blocked == ()
    for number in held:
        assert [kind for kind, _ in steps_of(plan, number)] == [ADD, TRANSFER, REMOVE]
    final = apply_plan(shards, nodes, plan, 1)
    assert all(shard.voters == (1,) for shard in final), final


def test_remove_node_does_not_count_the_leaving_node_as_under_replication() -> None:
    # remove-node marks the node leaving in the meta group before it plans, so the planner
    # sees it leaving: its replicas are still full copies, and "under-replicated before"
    # must not say 2/3 for every shard it holds (a chaos run saw exactly that).
    nodes = [replace(n, leaving=n.node_id == 1) for n in make_nodes(4)]
    plan = plan_remove_node(nodes, placed(4, 8, 3), 3, 1)
    assert plan.under_replicated == () and plan.blocked == ()
    down = [replace(n, live=n.node_id != 2) for n in nodes]
    on_2 = [s.shard for s in placed(4, 8, 3) if 2 in s.voters]
    assert [u.shard for u in plan_remove_node(down, placed(4, 8, 3), 3, 1).under_replicated] == (
        on_2
    )


def test_remove_node_blocked_keeps_the_replica() -> None:
    nodes = make_nodes(3)
    plan = plan_remove_node(nodes, placed(3, 4, 3), 3, 3)
    assert plan.steps == ()
    assert [b.shard for b in plan.blocked] == [0, 1, 2, 3]
    assert all("leaving node 3" in b.reason for b in plan.blocked)


def test_remove_unknown_node_names_it() -> None:
    with pytest.raises(ValueError, match="node 9 is not a cluster node"):
        plan_remove_node(make_nodes(3), placed(3, 2, 3), 3, 9)


def test_learner_left_by_an_interrupted_repair_is_resumed() -> None:
    nodes = make_nodes(5, dead=[3])
    shards = [ShardView(0, (1, 2, 3), learners=(4,), leader=1)]
    plan = plan_repair(nodes, shards, 3)
    assert steps_of(plan, 0) == [(ADD, 4), (REMOVE, 3)]
    assert "resume" in plan.steps[0].reason


def test_unneeded_and_dead_learners_are_dropped() -> None:
    nodes = make_nodes(5, dead=[5])
    shards = [ShardView(0, (1, 2, 3), learners=(4, 5), leader=1)]
    assert steps_of(plan_repair(nodes, shards, 3), 0) == [(REMOVE, 4), (REMOVE, 5)]


def test_shard_without_healthy_replica_is_lost() -> None:
    nodes = make_nodes(4, dead=[1, 2])
    plan = plan_repair(nodes, [ShardView(0, (1, 2), leader=1)], 2)
    assert plan.steps == ()
    assert plan.blocked == (Blocked(0, plan.blocked[0].reason),)
    assert "lost: no healthy replica" in plan.blocked[0].reason


def test_shard_below_quorum_is_left_alone() -> None:
    nodes = make_nodes(5, dead=[2, 3])
    plan = plan_repair(nodes, [ShardView(0, (1, 2, 3), leader=1)], 3)
    assert plan.steps == ()
    assert "below quorum: 1 of 3" in plan.blocked[0].reason


def test_replica_on_down_node_waits_for_the_repair_delay() -> None:
    nodes = make_nodes(4, down=[3])
    plan = plan_repair(nodes, [ShardView(0, (1, 2, 3), leader=1)], 3)
    assert plan.steps == ()
    assert "waiting: node 3 is down" in plan.blocked[0].reason


def test_surplus_replica_on_down_node_is_dropped_first() -> None:
    nodes = make_nodes(4, down=[4])
    plan = plan_repair(nodes, [ShardView(0, (1, 2, 3, 4), leader=1)], 3)
    assert steps_of(plan, 0) == [(REMOVE, 4)] and plan.blocked == ()


def test_over_replicated_shard_loses_the_most_loaded_replica() -> None:
    nodes = make_nodes(4)
    shards = [
        ShardView(0, (1, 2, 3, 4), leader=1),
        ShardView(1, (2, 3, 4), leader=2),
        ShardView(2, (3, 4, 1), leader=3),
    ]
    # Loads: 1:2, 2:2, 3:3, 4:3 -> node 3 (lowest id among the most loaded).
    assert steps_of(plan_repair(nodes, shards, 3), 0) == [(REMOVE, 3)]


def test_shards_on_unknown_nodes_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown nodes 7"):
        plan_repair(make_nodes(3), [ShardView(0, (1, 2, 7))], 3)


def test_dead_meta_voter_is_removed_before_any_shard_step() -> None:
    """Four voters with one dead survive no further loss; the three left survive one."""
    nodes = make_nodes(4, dead=[4])
    shards = placed(4, 8, 3)
    meta = MetaView((1, 2, 3, 4), leader=1)
    plan = plan_repair(nodes, shards, 3, meta)
    assert meta_steps(plan) == [(META_REMOVE, 4)]
    assert plan.steps[0].kind is META_REMOVE and plan.steps[0].shard == META_SHARD
    assert "node 4 is dead; remove its vote (3 voters remain, 3 of them live)" in (
        plan.steps[0].reason
    )
    assert [s for s in plan.steps if not s.kind.is_meta] == list(
        plan_repair(nodes, shards, 3).steps
    ), "the shard steps do not depend on the meta group"
    final = apply_meta(meta, nodes, plan)
    assert final.voters == (1, 2, 3)
    assert meta_steps(plan_repair(nodes, apply_plan(shards, nodes, plan, 3), 3, final)) == []


def test_dead_meta_voter_is_replaced_by_the_learner_on_a_spare_node() -> None:
    nodes = make_nodes(6, dead=[5])
    meta = MetaView((1, 2, 3, 4, 5), (6,), leader=3)
    plan = plan_repair(nodes, placed(6, 2, 3), 3, meta)
    assert meta_steps(plan)[:2] == [(META_REMOVE, 5), (META_VOTER, 6)]
    assert "the learner on node 6 catches up and is promoted" in plan.steps[1].reason
    assert apply_meta(meta, nodes, plan) == MetaView((1, 2, 3, 4, 6), (), 3)


def test_live_node_outside_the_meta_group_joins_it() -> None:
    """A node removed as dead that came back: without the meta group its map goes stale."""
    full = MetaView((1, 2, 3, 4, 5), (), leader=1)
    plan = plan_repair(make_nodes(6), [], 3, full)
    assert meta_steps(plan) == [(META_LEARNER, 6)]
    assert "it follows as a learner (the group has its 5 voters)" in plan.steps[0].reason
    short = MetaView((1, 2, 3), (), leader=1)
    plan = plan_repair(make_nodes(4), [], 3, short)
    assert meta_steps(plan) == [(META_VOTER, 4)]
    assert "live node 4 joins as a learner, catches up and is promoted" in plan.steps[0].reason
    assert apply_meta(short, make_nodes(4), plan).voters == (1, 2, 3, 4)


def test_meta_voter_down_but_not_dead_is_kept() -> None:
    plan = plan_repair(make_nodes(4, down=[4]), [], 3, MetaView((1, 2, 3, 4), leader=1))
    assert plan.steps == () and plan.blocked == ()


def test_meta_member_that_left_the_cluster_is_removed() -> None:
    """A remove-node interrupted after the map dropped the node, before the meta group did."""
    meta = MetaView((1, 2, 3, 7), (8,), leader=2)
    plan = plan_repair(make_nodes(3), [], 3, meta)
    assert meta_steps(plan) == [(META_REMOVE, 7), (META_REMOVE, 8)]
    assert all("left the cluster" in s.reason for s in plan.steps)
    assert apply_meta(meta, make_nodes(3), plan) == MetaView((1, 2, 3), (), 2)


def test_meta_group_without_live_majority_is_left_alone() -> None:
    nodes = make_nodes(4, dead=[3], down=[4])
    plan = plan_repair(nodes, [], 3, MetaView((1, 3, 4), leader=0))
    assert plan.steps == ()
    assert plan.blocked == (Blocked(META_SHARD, plan.blocked[0].reason),)
    assert "only 1 of 3 voters are live" in plan.blocked[0].reason


def test_dead_declared_meta_leader_is_not_removed_by_its_own_plan() -> None:
    nodes = make_nodes(4, dead=[2])
    plan = plan_repair(nodes, [], 3, MetaView((1, 2, 3, 4), leader=2))
    assert plan.steps == ()
    assert "node 2 is dead but leads the meta group" in plan.blocked[0].reason


def test_rebalance_repairs_the_meta_group_and_remove_node_leaves_it() -> None:
    nodes = make_nodes(4, dead=[4])
    meta = MetaView((1, 2, 3, 4), leader=1)
    assert meta_steps(plan_rebalance(nodes, placed(4, 4, 3), 3, meta)) == [(META_REMOVE, 4)]
    # remove-node takes the node out of the meta group last (decommission), not in its plan.
    assert meta_steps(plan_remove_node(make_nodes(4), placed(4, 4, 3), 3, 4)) == []


def test_plan_json_shape() -> None:
    plan = plan_repair(make_nodes(4, dead=[3]), [ShardView(0, (1, 2, 3), leader=1)], 3)
    doc = plan.to_json()
    assert doc["under_replicated"] == [{"shard": 0, "healthy": 2, "wanted": 3}]
    assert doc["blocked"] == []
    assert doc["steps"] == [step.to_json() for step in plan.steps]
    assert doc["steps"][0] == {
        "kind": "add_replica",
        "shard": 0,
        "node": 4,
        "reason": plan.steps[0].reason,
    }


def test_step_json_round_trips() -> None:
    for kind in StepKind:
        step = Step(kind, META_SHARD if kind.is_shardless else 3, 2, "why")
        assert Step.from_json(step.to_json()) == step


@pytest.mark.parametrize(
    ("doc", "field"),
    [
        ({"shard": 0, "node": 1, "reason": ""}, "kind"),
        ({"kind": "explode", "shard": 0, "node": 1, "reason": ""}, "kind"),
        ({"kind": "add_replica", "shard": -1, "node": 1, "reason": ""}, "shard"),
        ({"kind": "add_replica", "shard": True, "node": 1, "reason": ""}, "shard"),
        ({"kind": "add_replica", "shard": 0, "node": 0, "reason": ""}, "node"),
        ({"kind": "add_replica", "shard": 0, "node": "1", "reason": ""}, "node"),
        ({"kind": "add_replica", "shard": 0, "node": 1}, "reason"),
        ({"kind": "add_replica", "shard": 0, "node": 1, "reason": 5}, "reason"),
        ({"kind": "add_meta_voter", "shard": 0, "node": 1, "reason": ""}, "shard"),
        ({"kind": "remove_meta_member", "shard": -2, "node": 1, "reason": ""}, "shard"),
    ],
)
def test_bad_step_json_names_the_field(doc: dict[str, object], field: str) -> None:
    with pytest.raises(ValueError, match=f"step field '{field}'"):
        Step.from_json(doc)


# ------------------------------------------------------------------------------ properties


@dataclass(frozen=True)
class Cluster:
    nodes: list[NodeView]
    shards: list[ShardView]
    replicas: int
    meta: MetaView | None = None


FAILURES = ["dead", "down", "leaving"]


@st.composite
def clusters(draw: st.DrawFn, *, failing: bool = True) -> Cluster:
    """2..7 nodes, up to two of them dead, down or leaving (if `failing`); 1..16 shards, most
    with `replicas` voters on random nodes (so the load is uneven), some with one more or one
    fewer, a few learners and corrupt replicas, any leader (or none known)."""
    count = draw(st.sampled_from([2, 3, 3, 3, 4, 5, 6, 7]))
    ids = list(range(1, count + 1))
    failures = min(count - 1, draw(st.sampled_from([0, 0, 1, 1, 2]))) if failing else 0
    failed = draw(st.permutations(ids))[:failures]
    states = {n: draw(st.sampled_from(FAILURES)) for n in failed}
    nodes = [
        NodeView(
            n,
            live=states.get(n, "up") in ("up", "leaving"),
            dead=states.get(n) == "dead",
            leaving=states.get(n) == "leaving",
        )
        for n in ids
    ]
    replicas = draw(st.integers(1, min(3, count)))
    shards = []
    for number in range(draw(st.integers(1, 16))):
        members = draw(st.permutations(ids))
        size = replicas + draw(st.sampled_from([0, 0, 0, 0, 0, 1, -1]))
        size = max(1, min(count, size))
        voters = tuple(members[:size])
        learners = tuple(members[size : size + draw(st.sampled_from([0, 0, 0, 0, 0, 1]))])
        corrupt = frozenset(v for v in voters if draw(st.integers(0, 7)) == 0)
        leader = draw(st.sampled_from([0, *voters, *voters]))
        shards.append(ShardView(number, voters, learners, leader, corrupt))
    return Cluster(nodes, shards, replicas, draw(metas(nodes)))


@st.composite
def metas(draw: st.DrawFn, nodes: list[NodeView]) -> MetaView | None:
    """None (unknown) or 1..META_VOTERS_MAX voters among the nodes and maybe a node that left
    the cluster (id 99), some learners, and a leader that answers (it runs the plan) or none."""
    if draw(st.integers(0, 4)) == 0:
        return None
    members = draw(st.permutations([n.node_id for n in nodes] + [99]))
    members = [m for m in members if m != 99 or draw(st.integers(0, 3)) == 0]
    voters = members[: draw(st.integers(1, min(META_VOTERS_MAX, len(members))))]
    learners = members[len(voters) : len(voters) + draw(st.integers(0, 2))]
    answering = [n.node_id for n in nodes if n.live and n.node_id in voters]
    leader = draw(st.sampled_from([0, *answering, *answering]))
    return MetaView(tuple(voters), tuple(learners), leader)


def check_meta_outcome(meta: MetaView, nodes: Sequence[NodeView], plan: Plan) -> None:
    """Unless the meta group is reported blocked: no dead or unknown member stays, and every
    usable node is a member, a voter while the group has room for one."""
    if any(b.shard == META_SHARD for b in plan.blocked):
        return
    by_id = {n.node_id: n for n in nodes}
    for member in (*meta.voters, *meta.learners):
        assert member in by_id and not by_id[member].dead, (member, meta, plan)
    for node in nodes:
        if node.usable:
            assert node.node_id in (*meta.voters, *meta.learners), (node, meta, plan)
            if node.node_id in meta.learners:
                assert len(meta.voters) == META_VOTERS_MAX, (node, meta, plan)


PROPERTY = settings(
    max_examples=200,
    derandomize=True,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


def check_outcome(
    final: Sequence[ShardView], nodes: Sequence[NodeView], plan: Plan, replicas: int
) -> None:
    """(c): every shard the plan does not report blocked is fully repaired."""
    blocked = {b.shard for b in plan.blocked}
    for shard in final:
        if shard.shard in blocked:
            continue
        assert healthy_voters(shard, nodes) == replicas, (shard, plan)
        assert len(shard.voters) == replicas and shard.learners == () and not shard.corrupt


@PROPERTY
@given(clusters())
def test_repair_is_safe_complete_and_idempotent(cluster: Cluster) -> None:
    nodes, shards, replicas, meta = cluster.nodes, cluster.shards, cluster.replicas, cluster.meta
    plan = plan_repair(nodes, shards, replicas, meta)
    note(f"plan: {plan}")
    final = apply_plan(shards, nodes, plan, replicas)  # (a) and (b) after every step
    check_outcome(final, nodes, plan, replicas)
    final_meta = None if meta is None else apply_meta(meta, nodes, plan)
    if final_meta is not None:
        check_meta_outcome(final_meta, nodes, plan)
    again = plan_repair(nodes, final, replicas, final_meta)
    assert again.steps == (), again  # (f)
    assert {b.shard for b in again.blocked} == {b.shard for b in plan.blocked}


@PROPERTY
@given(st.one_of(clusters(), clusters(failing=False)))
def test_rebalance_repairs_then_evens_out_voters_and_leaders(cluster: Cluster) -> None:
    nodes, shards, replicas, meta = cluster.nodes, cluster.shards, cluster.replicas, cluster.meta
    plan = plan_rebalance(nodes, shards, replicas, meta)
    note(f"plan: {plan}")
    repair_steps = plan_repair(nodes, shards, replicas, meta).steps
    assert plan.steps[: len(repair_steps)] == repair_steps
    final_meta = None if meta is None else apply_meta(meta, nodes, plan)
    if final_meta is not None:
        check_meta_outcome(final_meta, nodes, plan)
    final = apply_plan(shards, nodes, plan, replicas)
    check_outcome(final, nodes, plan, replicas)
    counts = replica_counts(final, nodes)
    if not plan.blocked and counts:
        assert spread(counts) <= 1, counts  # (e)
        if all(shard.leader != 0 for shard in final):
            assert spread(leader_counts(final, nodes)) <= 1, leader_counts(final, nodes)
    assert plan_rebalance(nodes, final, replicas, final_meta).steps == ()  # (f)


@PROPERTY
@given(clusters(), st.integers(0, 6))
def test_remove_node_moves_what_it_can_and_reports_the_rest(cluster: Cluster, pick: int) -> None:
    nodes, shards, replicas = cluster.nodes, cluster.shards, cluster.replicas
    node_id = nodes[pick % len(nodes)].node_id
    plan = plan_remove_node(nodes, shards, replicas, node_id)
    note(f"removing {node_id}, plan: {plan}")
    leaving = [replace(n, leaving=True) if n.node_id == node_id else n for n in nodes]
    # Judged by the cluster before the node left: its replica counts until it is replaced.
    final = apply_plan(shards, leaving, plan, replicas, view=nodes)
    check_outcome(final, leaving, plan, replicas)
    blocked = {b.shard for b in plan.blocked}
    for shard in final:
        if node_id in (*shard.voters, *shard.learners):
            assert shard.shard in blocked, shard
    assert plan_remove_node(nodes, final, replicas, node_id).steps == ()


@PROPERTY
@given(clusters(), st.randoms(use_true_random=False))
def test_plans_do_not_depend_on_input_order(cluster: Cluster, rng: random.Random) -> None:
    """(d): same cluster, nodes and shards listed in another order -> the same plan."""
    nodes, shards, replicas, meta = cluster.nodes, cluster.shards, cluster.replicas, cluster.meta
    shuffled_nodes = rng.sample(nodes, len(nodes))
    shuffled_shards = rng.sample(shards, len(shards))
    shuffled_meta = meta
    if meta is not None:
        shuffled_meta = MetaView(
            tuple(rng.sample(meta.voters, len(meta.voters))),
            tuple(rng.sample(meta.learners, len(meta.learners))),
            meta.leader,
        )
    assert plan_repair(nodes, shards, replicas, meta) == plan_repair(
        shuffled_nodes, shuffled_shards, replicas, shuffled_meta
    )
    assert plan_rebalance(nodes, shards, replicas, meta) == plan_rebalance(
        shuffled_nodes, shuffled_shards, replicas, shuffled_meta
    )
    victim = nodes[0].node_id
    assert plan_remove_node(nodes, shards, replicas, victim) == plan_remove_node(
        shuffled_nodes, shuffled_shards, replicas, victim
    )
