"""`cluster_status`: a real cluster polled into snapshots, and the change detection between them."""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import replace

import pytest

from minikv_core.client import AsyncClient
from minikv_tui.cluster_status import (
    ClusterSnapshot,
    NodeStatus,
    NodeTarget,
    Poller,
    ReplicaStatus,
    ShardStatus,
    observe_changes,
)
from minikv_tui.dashboard.source import LiveSource
from tests.integration.conftest import Cluster, cluster_factory, eventually

__all__ = ["cluster_factory"]  # the fixture, imported for pytest

pytestmark = pytest.mark.integration


@pytest.fixture
async def small(cluster_factory: Callable[..., Cluster]) -> AsyncIterator[Cluster]:
    import aiohttp

    made = cluster_factory(size=3, shards=2)
    async with aiohttp.ClientSession() as session:
        made.session = session
        await made.start()
        await made.wait_ready()
        yield made


def targets(cluster: Cluster) -> list[NodeTarget]:
    return [
        NodeTarget(
            node.node_id,
            node.grpc_address,
            pid=node.process.pid if node.process is not None else None,
            process="up",
        )
        for node in cluster.nodes.values()
    ]


async def test_poll_of_a_real_cluster_shows_roles_rates_and_a_paused_node(small: Cluster) -> None:
    async with AsyncClient(small.grpc_endpoints) as client:
        poller = Poller(client, name="t", timeout_s=0.5)
        first = await poller.poll(targets(small))
        assert first.read_rate is None, "no rate without a previous poll"
        assert [n.state for n in first.nodes] == ["up", "up", "up"]
        assert first.meta_leader in small.nodes
        assert len(first.shards) == 2
        for shard in first.shards:
            assert shard.leader in shard.replicas
            assert shard.replica_status[shard.leader].role == "leader"
            followers = [r for r in shard.replica_status.values() if r.node_id != shard.leader]
            assert {r.role for r in followers} == {"follower"}

        for index in range(30):
            await client.put(f"key{index}".encode(), b"value")
        await client.get(b"key1")
        second = await poller.poll(targets(small))
        assert second.write_rate is not None and second.write_rate > 0
        assert second.read_rate is not None and second.read_rate > 0
        assert sum(shard.keys or 0 for shard in second.shards) == 30
        assert all(node.wal_segments for node in second.nodes)
        assert all(node.rss_bytes and node.rss_bytes > 0 for node in second.nodes)
        assert all(node.cpu_percent is not None for node in second.nodes)

        leader = second.meta_leader
        assert leader is not None
        pid = small.nodes[leader].process.pid  # type: ignore[union-attr]
        os.kill(pid, signal.SIGSTOP)
        try:
            started = time.monotonic()
            paused = await poller.poll(targets(small))
            assert time.monotonic() - started < 2.0, "a paused node must not hold up the poll"
            node = paused.node(leader)
            assert node is not None and not node.reachable and node.state == "unreachable"
            assert node.error is not None and "no answer" in node.error

            async def moved() -> ClusterSnapshot | None:
                snapshot = await poller.poll(targets(small))
                return snapshot if snapshot.meta_leader not in (None, leader) else None

            after = await eventually(moved, "a new meta leader", 15.0)
            kinds = {event.kind for event in observe_changes(second, after)}
            assert {"node-down", "meta-leader-change"} <= kinds
        finally:
            os.kill(pid, signal.SIGCONT)


async def test_a_node_the_launcher_reports_paused_is_shown_paused_without_being_asked(
    small: Cluster,
) -> None:
    """Asking a SIGSTOPped node (over the channel already open to it, as a dashboard has)
    only waits out the timeout: the node would show a poll late, and every refresh would slow
    down while it stays paused. The timeout here is long, so asking it at all fails the bound.
    """
    timeout_s = 10.0
    victim = 2
    pid = small.nodes[victim].process.pid  # type: ignore[union-attr]
    async with AsyncClient(small.grpc_endpoints) as client:
        poller = Poller(client, name="t", timeout_s=timeout_s)
        assert (await poller.poll(targets(small))).node(victim).reachable  # type: ignore[union-attr]
        polled = [
            replace(target, process="paused") if target.node_id == victim else target
            for target in targets(small)
        ]
        os.kill(pid, signal.SIGSTOP)
        try:
            for _ in range(2):
                started = time.monotonic()
                snapshot = await poller.poll(polled)
                elapsed = time.monotonic() - started
                assert elapsed < timeout_s / 2, f"the poll waited {elapsed:.1f} s on a paused node"
                node = snapshot.node(victim)
                assert node is not None and node.state == "paused" and not node.reachable
                assert node.error == f"node {victim} is paused"
                assert [n.state for n in snapshot.nodes if n.node_id != victim] == ["up", "up"]
        finally:
            os.kill(pid, signal.SIGCONT)


async def test_the_first_live_frame_is_status_only_and_detail_follows_on_the_next(
    small: Cluster,
) -> None:
    """The first frame is due fast: WAL and SSTable documents wait for the second poll, then
    come every `detail_every`-th."""

    async def provide() -> list[NodeTarget]:
        return targets(small)

    async with AsyncClient(small.grpc_endpoints) as client:
        source = LiveSource(Poller(client, name="t"), provide, detail_every=2)
        frames = [await source.fetch() for _ in range(4)]
    assert [frame.detailed for frame in frames] == [False, True, False, True]
    assert not any(node.wal_segments for node in frames[0].snapshot.nodes)
    assert all(node.wal_segments for node in frames[1].snapshot.nodes)
    assert all(node.reachable for node in frames[0].snapshot.nodes)


async def test_snapshot_round_trips_through_json(small: Cluster) -> None:
    async with AsyncClient(small.grpc_endpoints) as client:
        await client.put(b"a", b"1")
        poller = Poller(client)
        await poller.poll(targets(small))
        snapshot = await poller.poll(targets(small))
    assert ClusterSnapshot.from_json(json.loads(json.dumps(snapshot.to_json()))) == snapshot


def _snapshot(leader: int | None, term: int, reachable: bool = True) -> ClusterSnapshot:
    replicas = {
        n: ReplicaStatus(n, "leader" if n == leader else "follower", term, 5, 5, 5)
        for n in (1, 2, 3)
    }
    return ClusterSnapshot(
        taken_at=0.0,
        name="t",
        nodes=(
            NodeStatus(1, "127.0.0.1:1", None, None, "up", reachable=reachable),
            NodeStatus(2, "127.0.0.1:2", None, None, "up", reachable=True),
        ),
        shards=(ShardStatus(0, 1, (1, 2, 3), leader, term, replicas),),
        meta_leader=2,
        meta_term=1,
        epoch=1,
    )


def test_observed_changes_name_what_changed() -> None:
    assert observe_changes(None, _snapshot(1, 1)) == []
    assert observe_changes(_snapshot(1, 1), _snapshot(1, 1)) == []
    [change] = observe_changes(_snapshot(1, 1), _snapshot(2, 2))
    assert (change.kind, change.node) == ("leader-change", 2)
    assert change.detail == "shard 0: leader 1 -> 2 (term 2)"
    [re_elected] = observe_changes(_snapshot(1, 1), _snapshot(1, 3))
    assert re_elected.kind == "term-change"
    [down] = observe_changes(_snapshot(1, 1), _snapshot(1, 1, reachable=False))
    assert (down.kind, down.node) == ("node-down", 1)
    [up] = observe_changes(_snapshot(1, 1, reachable=False), _snapshot(1, 1))
    assert up.kind == "node-up"


def test_node_state_prefers_what_the_launcher_knows() -> None:
    base = NodeStatus(1, "127.0.0.1:1", None, None, "up", reachable=True)
    assert base.state == "up"
    assert NodeStatus(1, "x:1", None, None, "paused", reachable=False).state == "paused"
    assert NodeStatus(1, "x:1", None, None, "down", reachable=False).state == "down"
    assert NodeStatus(1, "x:1", None, None, "up", reachable=False).state == "unreachable"
    assert NodeStatus(1, "x:1", None, None, "up", True, cut_off_from=(2,)).state == "partitioned"
