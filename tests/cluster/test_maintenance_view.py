"""The maintenance view (maintenance_view.py): when a node that stopped answering counts as
dead, measured on a scripted clock, and what the view reads from the nodes' status documents.

The poll is scripted (which nodes answer, and with what) and the clock is a number the test
moves, so the repair delay is checked at its exact edges without waiting for it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from minikv_core.cluster.config import REPAIR_AFTER_S_DEFAULT, NodeConfig
from minikv_core.cluster.maintenance_plan import MetaView, NodeView
from minikv_core.cluster.maintenance_view import ViewBuilder
from minikv_core.cluster.service import UnavailableError
from minikv_core.server import resolve

JsonObject = dict[str, Any]
NODES = (1, 2, 3, 4)


class Script:
    """The nodes' answers and the clock, as the test sets them."""

    def __init__(self) -> None:
        self.now_s = 1000.0
        self.down: set[int] = set()
        self.statuses: dict[int, JsonObject] = {}
        self.polls = 0

    def clock(self) -> float:
        return self.now_s

    async def poll(self, node_id: int, deadline: float) -> JsonObject:
        self.polls += 1
        if node_id in self.down:
            raise UnavailableError(f"node {node_id} does not answer")
        return self.statuses.get(node_id, {"groups": []})


def builder(script: Script, repair_after_s: float) -> ViewBuilder:
    return ViewBuilder(script.poll, repair_after_s, clock=script.clock)


async def node_view(views: ViewBuilder, node_id: int, **kwargs: Any) -> NodeView:
    view = await views.observe(NODES, 0, **kwargs)
    found = view.node(node_id)
    assert found is not None
    return found


async def test_a_node_is_dead_exactly_when_down_for_the_repair_delay() -> None:
    script = Script()
    views = builder(script, 60.0)
    assert await node_view(views, 4) == NodeView(4, live=True)
    script.down.add(4)
    assert await node_view(views, 4) == NodeView(4, live=False), "first failed poll: down"
    script.now_s += 59.9
    assert await node_view(views, 4) == NodeView(4, live=False), "59.9 s: still waited for"
    script.now_s += 0.1
    assert await node_view(views, 4) == NodeView(4, live=False, dead=True), "60 s: dead"
    assert await node_view(views, 3) == NodeView(3, live=True), "the others are untouched"
    assert script.polls == 5 * len(NODES), "every observation polls every node"


async def test_zero_repair_delay_never_declares_a_node_dead() -> None:
    script = Script()
    views = builder(script, 0.0)
    script.down.add(2)
    assert await node_view(views, 2) == NodeView(2, live=False)
    script.now_s += 86_400.0 * 365
    assert await node_view(views, 2) == NodeView(2, live=False)
    # The operator can still declare it dead.
    assert await node_view(views, 2, dead=[2]) == NodeView(2, live=False, dead=True)


async def test_a_node_that_answers_again_restarts_its_clock() -> None:
    script = Script()
    views = builder(script, 60.0)
    script.down.add(3)
    await views.observe(NODES, 0)  # down since t0
    script.now_s += 50.0
    script.down.clear()
    assert await node_view(views, 3) == NodeView(3, live=True)  # back at t0 + 50
    script.now_s += 5.0
    script.down.add(3)
    assert await node_view(views, 3) == NodeView(3, live=False)  # down again at t0 + 55
    script.now_s += 45.0
    # t0 + 100: down 100 s of the last 100, but only the last 45 s without a break.
    assert await node_view(views, 3) == NodeView(3, live=False)
    script.now_s += 15.0
    assert await node_view(views, 3) == NodeView(3, live=False, dead=True)


async def test_a_node_dropped_from_the_cluster_is_forgotten() -> None:
    script = Script()
    views = builder(script, 60.0)
    script.down.add(4)
    await views.observe(NODES, 0)
    assert 4 in views.down_since
    await views.observe((1, 2, 3), 0)
    assert 4 not in views.down_since


def test_the_default_repair_delay_is_sixty_seconds(tmp_path: Path) -> None:
    assert REPAIR_AFTER_S_DEFAULT == 60.0
    peers = {n: f"127.0.0.1:{9000 + n}" for n in (1, 2, 3)}
    flags = {
        "id": 1,
        "data_dir": str(tmp_path / "d"),
        "http": "127.0.0.1:0",
        "peers": ",".join(f"{n}={address}" for n, address in peers.items()),
    }
    assert resolve(flags, env={}).node.repair_after_s == 60.0, "`minikv serve` with no flag"
    assert NodeConfig(1, tmp_path, peers[1], "127.0.0.1:0", peers).repair_after_s == 60.0


def group(group_id: int, role: str, term: int, voters: tuple[int, ...], **extra: Any) -> JsonObject:
    return {"group": group_id, "role": role, "term": term, "voters": list(voters), **extra}


@pytest.mark.parametrize("stale_leader_first", [True, False])
async def test_meta_membership_comes_from_the_leader_of_the_highest_term(
    stale_leader_first: bool,
) -> None:
    """Raft §5.1: a deposed leader (lower term) may still report an old configuration."""
    script = Script()
    current = group(0, "leader", 7, (1, 2, 3), learners=[4], leader=2)
    stale = group(0, "leader", 6, (1, 2, 3, 5), leader=1)
    script.statuses = {
        1: {"groups": [stale]},
        2: {"groups": [current]},
        3: {"groups": [group(0, "follower", 7, (1, 2, 3), learners=[4], leader=2)]},
    }
    if not stale_leader_first:
        script.statuses[1], script.statuses[3] = script.statuses[3], script.statuses[1]
    view = await builder(script, 60.0).observe(NODES, 0)
    assert view.meta == MetaView((1, 2, 3), (4,), leader=2)


async def test_no_meta_report_leaves_the_meta_group_unknown() -> None:
    script = Script()
    script.down.update(NODES)
    view = await builder(script, 60.0).observe(NODES, 2)
    assert view.meta is None
    assert [s.voters for s in view.shards] == [(), ()]
