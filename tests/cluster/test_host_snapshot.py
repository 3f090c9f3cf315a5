"""Log compaction, WAL truncation and InstallSnapshot between real nodes (Raft §7)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from minikv_core.cluster.node_service import Node
from minikv_core.cluster.service import Consistency
from minikv_core.cluster.shard_map import shard_for_key
from minikv_core.storage.engine import EngineOptions
from tests.cluster.node_harness import Cluster, retry_unavailable, wait_for

SHARDS = 2
VALUE = b"v" * 300


async def write_many(node: Node, keys: list[bytes], value: bytes = VALUE) -> None:
    for start in range(0, len(keys), 50):
        batch = keys[start : start + 50]
        await asyncio.gather(
            *(retry_unavailable(lambda d, k=key: node.put(k, value, d)) for key in batch)  # type: ignore[misc]
        )


def holds_all(node: Node, keys: list[bytes], value: bytes = VALUE) -> bool:
    for key in keys:
        group = node.host.shard_groups[shard_for_key(key, SHARDS)]
        found = group.state_machine.get(key)
        if found is None or found.value != value:
            return False
    return True


async def test_lagging_replica_catches_up_by_install_snapshot_after_wal_truncation(
    tmp_path: Path,
) -> None:
    cluster = Cluster(tmp_path, 3, shards=SHARDS, snapshot_entries_threshold=16)
    try:
        await cluster.start()
        await cluster.wait_ready()
        await cluster.stop_node(3)
        keys = [f"snap-{i:04d}".encode() for i in range(400)]
        await write_many(cluster.nodes[1], keys)
        leader_host = cluster.nodes[1].host
        await wait_for(
            lambda: leader_host.counters.segments_deleted > 0,
            15,
            lambda: f"no WAL segment deleted: {leader_host.counters}",
        )
        for node in cluster.nodes.values():
            assert all(g.snapshot_index > 0 for g in node.host.shard_groups.values()), (
                "every shard's log was compacted"
            )
        restarted = await cluster.start_node(3)
        await wait_for(
            lambda: holds_all(restarted, keys),
            20,
            lambda: (
                "node 3 did not catch up: "
                + str({s: g.applied_index for s, g in restarted.host.shard_groups.items()})
            ),
        )
        assert restarted.host.counters.snapshots_received >= 1, (
            "node 3 caught up through InstallSnapshot, not log replay"
        )
        packed = sum(
            g.snapshots_packed for n in (1, 2) for g in cluster.nodes[n].host.shard_groups.values()
        )
        assert packed >= 1
        assert not list((tmp_path / "node3" / "shards").glob("*.snapshot")), (
            "received snapshots are deleted once installed"
        )
        # Later writes replicate normally on top of the installed snapshot.
        more = [f"after-{i}".encode() for i in range(20)]
        await write_many(cluster.nodes[2], more, b"later")
        await wait_for(lambda: holds_all(restarted, more, b"later"), 10)
        # A restart of the node that installed snapshots recovers from its own directory.
        await cluster.stop_node(3)
        again = await cluster.start_node(3)
        await wait_for(lambda: holds_all(again, keys) and holds_all(again, more, b"later"), 10)
        found = await retry_unavailable(lambda d: again.get(keys[0], Consistency.LINEARIZABLE, d))
        assert found.value == VALUE
    finally:
        await cluster.stop()


async def test_admin_snapshot_compacts_logs_and_truncates_the_wal(tmp_path: Path) -> None:
    cluster = Cluster(tmp_path, 3, shards=SHARDS)
    try:
        await cluster.start()
        await cluster.wait_ready()
        keys = [f"admin-{i:04d}".encode() for i in range(300)]
        await write_many(cluster.nodes[1], keys)
        node = cluster.nodes[2]
        await wait_for(lambda: holds_all(node, keys), 10)
        applied = {s: g.applied_index for s, g in node.host.shard_groups.items()}
        active = node.host.log.wal.end_position.segment
        assert active > 1, "the test must write more than one 64 KiB segment"
        result = await node.snapshot(None, time.monotonic() + 10)
        snapshots = {item["shard"]: item["index"] for item in result.body["snapshots"]}
        assert set(snapshots) == set(range(SHARDS))
        assert all(snapshots[s] >= applied[s] for s in snapshots), (snapshots, applied)
        oldest = node.host.log.wal.segments()[0].sequence
        assert oldest >= active, f"segments before {active} remain (oldest {oldest})"
        compacted = await node.compact([0], time.monotonic() + 10)
        assert compacted.body["compacted"][0]["tables_after"] <= 1
        # Everything is still there, durable, after a restart of every node.
        await cluster.stop()
        await cluster.start()
        await cluster.wait_ready()
        await wait_for(lambda: holds_all(cluster.nodes[2], keys), 10)
    finally:
        await cluster.stop()


async def test_restart_replays_committed_entries_above_the_engine_index(tmp_path: Path) -> None:
    """The Raft log is the engine's WAL: entries applied to the memtable but not flushed are
    re-applied from the log at restart."""
    cluster = Cluster(tmp_path, 3, shards=SHARDS)
    # Node 3's engines do not flush on close: after its stop only the WAL holds the newest
    # entries, as after a crash.
    cluster.engine_options[3] = EngineOptions(flush_on_close=False)
    try:
        await cluster.start()
        await cluster.wait_ready()
        keys = [f"replay-{i}".encode() for i in range(30)]
        await write_many(cluster.nodes[1], keys)
        await wait_for(lambda: holds_all(cluster.nodes[3], keys), 10)
        node = cluster.nodes[3]
        durable = {
            s: g.state_machine.durable_applied_index for s, g in node.host.shard_groups.items()
        }
        applied = {s: g.applied_index for s, g in node.host.shard_groups.items()}
        assert any(durable[s] < applied[s] for s in applied), (durable, applied)
        await cluster.stop_node(3)
        restarted = await cluster.start_node(3)
        reopened = {
            s: g.state_machine.durable_applied_index for s, g in restarted.host.shard_groups.items()
        }
        assert reopened == durable, "the engines reopened at their durable index"
        await wait_for(lambda: holds_all(restarted, keys), 10)
    finally:
        await cluster.stop()
