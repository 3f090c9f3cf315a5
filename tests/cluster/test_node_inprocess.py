"""A real 3-node cluster in one event loop: real peer transports over loopback gRPC, real WALs
with fsync, real LSM engines in tmp_path. What the node promises its APIs, end to end."""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from minikv_core.cluster.config import IdentityMismatchError, NodeIdentity
from minikv_core.cluster.host import NodeStartError
from minikv_core.cluster.node_service import Node
from minikv_core.cluster.peer_incarnations import PeerIncarnations
from minikv_core.cluster.service import (
    Consistency,
    DeadlineExceededError,
    FaultSpec,
    InvalidRequestError,
    NotFoundError,
    ScanRequest,
    ScanResult,
    TooLargeError,
    UnavailableError,
    VersionedValue,
)
from minikv_core.cluster.shard_map import shard_for_key
from minikv_core.raft import Message, MessageType
from minikv_core.storage.wal_format import SEGMENT_HEADER_SIZE
from tests.cluster.node_harness import (
    Cluster,
    leaders_seen,
    retry_unavailable,
    shard_leader_and_another,
    started_cluster,
    wait_for,
)

LINEARIZABLE = Consistency.LINEARIZABLE
STALE = Consistency.STALE


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[Cluster]:
    async with started_cluster(tmp_path, 3, shards=4) as nodes:
        yield nodes


async def put(node: Node, key: bytes, value: bytes) -> int:
    return await retry_unavailable(lambda deadline: node.put(key, value, deadline))


async def get_versioned(
    node: Node, key: bytes, consistency: Consistency = LINEARIZABLE
) -> VersionedValue:
    return await retry_unavailable(lambda deadline: node.get(key, consistency, deadline))


async def get(node: Node, key: bytes, consistency: Consistency = LINEARIZABLE) -> bytes:
    return (await get_versioned(node, key, consistency)).value


async def scan(node: Node, request: ScanRequest) -> ScanResult:
    return await retry_unavailable(lambda deadline: node.scan(request, deadline))


def leaders_spread(cluster: Cluster) -> bool:
    seen = leaders_seen(cluster)
    if not all(len(ids) == 1 and 0 not in ids for ids in seen.values()):
        return False
    counts = Counter(next(iter(ids)) for ids in seen.values())
    return max(counts.values()) - min(counts.get(n, 0) for n in cluster.peers) <= 1


async def test_every_shard_elects_one_leader_and_leaders_are_spread(cluster: Cluster) -> None:
    await wait_for(lambda: leaders_spread(cluster), 10, lambda: str(leaders_seen(cluster)))
    assert sorted(leaders_seen(cluster)) == [0, 1, 2, 3]
    meta_leaders = {node.host.groups[0].leader_id for node in cluster.nodes.values()}
    assert len(meta_leaders) == 1 and 0 not in meta_leaders
    await wait_for(
        lambda: all(n.host.shard_map.epoch == 1 for n in cluster.nodes.values()),
        10,
        lambda: "the meta group did not record the bootstrap map as epoch 1",
    )


async def test_writes_through_every_node_are_readable_linearizably_everywhere(
    cluster: Cluster,
) -> None:
    keys = [f"key-{i:03d}".encode() for i in range(40)]
    versions = {}
    for number, key in enumerate(keys):
        node = cluster.nodes[number % 3 + 1]
        versions[key] = await put(node, key, b"value-" + key)
    # Writes that reached a follower went to the leader in a Raft PROPOSE, not a call.
    forwarded = sum(
        group.forwarded_sent
        for node in cluster.nodes.values()
        for group in node.host.shard_groups.values()
    )
    assert forwarded > 0, "some writes reached a node that does not lead their shard"
    assert not any(
        group.forwarded
        for node in cluster.nodes.values()
        for group in node.host.shard_groups.values()
    ), "every forwarded write was answered"
    for node in cluster.nodes.values():
        for key in keys:
            found = await get_versioned(node, key)
            assert found.value == b"value-" + key, (node.node_id, key)
            assert found.version == versions[key]
    # A second write to a key gets a larger version, seen at once by a linearizable read on
    # another node (it may be a follower: ReadIndex makes it wait for the write).
    newer = await put(cluster.nodes[1], keys[0], b"v2")
    assert newer > versions[keys[0]]
    for node in cluster.nodes.values():
        assert await get(node, keys[0]) == b"v2"


async def test_delete_reports_whether_the_key_existed(cluster: Cluster) -> None:
    node = cluster.nodes[2]
    await put(node, b"doomed", b"x")
    existed = await retry_unavailable(lambda d: cluster.nodes[3].delete(b"doomed", d))
    again = await retry_unavailable(lambda d: cluster.nodes[1].delete(b"doomed", d))
    assert (existed, again) == (True, False)
    with pytest.raises(NotFoundError):
        await cluster.nodes[1].get(b"doomed", LINEARIZABLE, time.monotonic() + 3)


async def test_scan_merges_all_shards_in_key_order_with_limit_and_more(cluster: Cluster) -> None:
    keys = sorted(f"scan/{i:02d}".encode() for i in range(25))
    assert len({shard_for_key(k, 4) for k in keys}) == 4, "the keys span every shard"
    for key in keys:
        await put(cluster.nodes[1], key, key.upper())
    await put(cluster.nodes[1], b"other", b"x")
    node = cluster.nodes[3]
    collected: list[bytes] = []
    start = b""
    pages = 0
    while True:
        request = ScanRequest(prefix=b"scan/", start=start, limit=7)
        result = await scan(node, request)
        pages += 1
        assert [i.key for i in result.items] == sorted(i.key for i in result.items)
        assert all(i.value == i.key.upper() for i in result.items)
        collected.extend(i.key for i in result.items)
        if not result.more:
            break
        assert len(result.items) == 7
        start = result.items[-1].key + b"\x00"
    assert collected == keys
    assert pages == 4
    bounded = await node.scan(
        ScanRequest(start=b"scan/10", end=b"scan/13", limit=100), time.monotonic() + 3
    )
    assert [i.key for i in bounded.items] == [b"scan/10", b"scan/11", b"scan/12"]
    assert not bounded.more
    stale = await node.scan(ScanRequest(prefix=b"scan/", consistency=STALE), time.monotonic() + 3)
    assert len(stale.items) <= 25


async def test_stopped_node_leaves_a_serving_cluster_and_catches_up_after_restart(
    cluster: Cluster,
) -> None:
    for i in range(10):
        await put(cluster.nodes[1], f"before-{i}".encode(), b"1")
    await cluster.stop_node(3)
    for i in range(20):
        writer = cluster.nodes[1 + i % 2]
        await put(writer, f"during-{i}".encode(), b"2")
    for node in cluster.nodes.values():
        assert await get(node, b"during-19") == b"2"
    restarted = await cluster.start_node(3)
    await cluster.wait_ready(nodes=[3])
    keys = [f"before-{i}".encode() for i in range(10)] + [f"during-{i}".encode() for i in range(20)]

    def caught_up() -> bool:
        return all(
            group.state_machine.get(key) is not None
            for key in keys
            for group in [restarted.host.shard_groups[shard_for_key(key, 4)]]
        )

    await wait_for(caught_up, 10, lambda: "node 3 did not catch up from its peers")
    for key in keys:
        assert await get(restarted, key, STALE) in (b"1", b"2")


async def test_a_cluster_written_before_incarnations_gets_them_at_its_next_start(
    cluster: Cluster,
) -> None:
    """Data directories of a version without incarnations (no `incarnation` in the identity,
    no peer record anywhere): each node gives itself one at start, its peers record it, and
    the cluster serves on (nothing is fenced, since no peer knew another)."""
    await put(cluster.nodes[1], b"before", b"1")
    await cluster.stop()
    for node_id in cluster.peers:
        config = cluster.config(node_id)
        document = json.loads(config.identity_path.read_text())
        assert len(document.pop("incarnation")) == 16
        config.identity_path.write_text(json.dumps(document))
        config.peer_incarnations_path.unlink()
    await cluster.start()
    await cluster.wait_ready()
    assert await get(cluster.nodes[2], b"before") == b"1"
    incarnations = {}
    for node_id in cluster.peers:
        identity = NodeIdentity.load(cluster.config(node_id).identity_path)
        assert identity is not None and len(identity.incarnation) == 16
        incarnations[node_id] = identity.incarnation
    for node_id in cluster.peers:
        await put(cluster.nodes[node_id], f"after-{node_id}".encode(), b"2")

    def recorded() -> bool:
        return all(
            PeerIncarnations.open(cluster.config(n).peer_incarnations_path, n).known
            == {peer: i for peer, i in incarnations.items() if peer != n}
            for n in cluster.peers
        )

    await wait_for(recorded, 10, lambda: "every node records its peers' incarnations")


async def test_all_nodes_restarted_keep_every_acknowledged_write(cluster: Cluster) -> None:
    acknowledged = {}
    for i in range(30):
        key = f"durable-{i}".encode()
        acknowledged[key] = await put(cluster.nodes[1 + i % 3], key, key * 3)
    await cluster.stop()
    await cluster.start()
    await cluster.wait_ready()
    for key, version in acknowledged.items():
        node = cluster.nodes[1 + version % 3]
        found = await get_versioned(node, key)
        assert (found.value, found.version) == (key * 3, version)


async def test_without_quorum_requests_end_by_their_deadline(cluster: Cluster) -> None:
    await put(cluster.nodes[1], b"k", b"v")
    await cluster.stop_node(2)
    await cluster.stop_node(3)
    node = cluster.nodes[1]
    for attempt in range(3):
        started = time.monotonic()
        deadline = started + 0.4
        with pytest.raises((DeadlineExceededError, UnavailableError)):
            await node.put(f"lost-{attempt}".encode(), b"v", deadline)
        assert time.monotonic() - started < 0.4 + 0.15, f"put attempt {attempt} overran"
        started = time.monotonic()
        with pytest.raises((DeadlineExceededError, UnavailableError)):
            await node.get(b"k", LINEARIZABLE, started + 0.4)
        assert time.monotonic() - started < 0.4 + 0.15, f"get attempt {attempt} overran"
    found = await node.get(b"k", STALE, time.monotonic() + 1)
    assert found.value == b"v", "stale reads still answer from the local replica"


async def test_partitioned_minority_never_serves_a_stale_linearizable_read(
    cluster: Cluster,
) -> None:
    key = b"contested"
    await put(cluster.nodes[1], key, b"old")
    for node in cluster.nodes.values():
        assert await get(node, key) == b"old"
    isolated = cluster.nodes[3]
    isolated.set_fault(FaultSpec(drop_to=frozenset({1, 2}), drop_from=frozenset({1, 2})))
    for node_id in (1, 2):
        cluster.nodes[node_id].set_fault(FaultSpec(drop_to=frozenset({3}), drop_from={3}))  # type: ignore[arg-type]
    await put(cluster.nodes[1], key, b"new")
    for _ in range(3):
        with pytest.raises((DeadlineExceededError, UnavailableError)):
            await isolated.get(key, LINEARIZABLE, time.monotonic() + 0.3)
        with pytest.raises((DeadlineExceededError, UnavailableError)):
            await isolated.put(b"minority", b"x", time.monotonic() + 0.3)
    assert (await isolated.get(key, STALE, time.monotonic() + 1)).value == b"old"
    for node in cluster.nodes.values():
        node.clear_fault()
    assert await get(isolated, key) == b"new"
    await wait_for(
        lambda: all(len(ids) == 1 and 0 not in ids for ids in leaders_seen(cluster).values()),
        10,
        lambda: str(leaders_seen(cluster)),
    )


async def test_admin_transfer_moves_a_leader_and_it_stays(cluster: Cluster) -> None:
    shard = 0
    _, target = await shard_leader_and_another(cluster, shard)
    await cluster.nodes[target].transfer_leader(shard, target, time.monotonic() + 5)
    await wait_for(lambda: leaders_seen(cluster)[shard] == {target}, 5)
    host = cluster.nodes[target].host
    runs = host.counters.maintenance_runs
    await wait_for(lambda: host.counters.maintenance_runs >= runs + 3, 5)
    assert leaders_seen(cluster)[shard] == {target}, "automatic rebalancing undid the transfer"
    with pytest.raises(InvalidRequestError, match="not a voter"):
        await cluster.nodes[1].transfer_leader(shard, 9, time.monotonic() + 1)
    with pytest.raises(InvalidRequestError, match="does not exist"):
        await cluster.nodes[1].transfer_leader(99, 1, time.monotonic() + 1)


async def test_a_transfer_abandoned_while_the_target_was_cut_off_is_asked_again(
    cluster: Cluster,
) -> None:
    """The leader gives a transfer up after one election timeout (thesis §3.10); the admin
    call must keep asking until its deadline, not wait out the deadline on a dead attempt."""
    shard = 0
    current, target = await shard_leader_and_another(cluster, shard)
    cluster.nodes[current].set_fault(FaultSpec(drop_to=frozenset({target})))
    transfer = asyncio.create_task(
        cluster.nodes[current].transfer_leader(shard, target, time.monotonic() + 8)
    )
    # The first attempt is abandoned meanwhile.
    await asyncio.sleep(cluster.nodes[current].config.election_timeout_s * 2.5)
    assert not transfer.done()
    cluster.nodes[current].clear_fault()
    await asyncio.wait_for(transfer, 8)
    await wait_for(lambda: leaders_seen(cluster)[shard] == {target}, 5)


async def test_message_for_an_unknown_group_is_counted_and_dropped(cluster: Cluster) -> None:
    sender = cluster.nodes[1].host.transport
    receiver = cluster.nodes[2].host
    term = cluster.nodes[1].host.groups[1].raw.term
    stray = Message(MessageType.HEARTBEAT, to=2, sender=1, term=term)
    sender.send(2, [(999, stray)])
    await wait_for(lambda: receiver.counters.messages_unknown_group >= 1, 5)
    assert receiver.running
    await put(cluster.nodes[2], b"after-stray", b"ok")
    assert await get(cluster.nodes[2], b"after-stray") == b"ok"


async def test_status_documents_describe_groups_wal_and_tables(cluster: Cluster) -> None:
    for i in range(5):
        await put(cluster.nodes[1], f"status-{i}".encode(), b"x" * 100)
    node = cluster.nodes[1]
    status = node.status().body
    assert status["node_id"] == 1
    assert status["ready"] is True
    groups = {g["group"]: g for g in status["groups"]}
    assert sorted(groups) == [0, 1, 2, 3, 4]
    for group in groups.values():
        assert {"role", "term", "leader", "commit", "applied", "last_index"} <= set(group)
        assert group["applied"] <= group["commit"] <= group["last_index"]
        if group["role"] == "leader":
            peers = {p["node_id"]: p for p in group["peers"]}
            assert set(peers) == {1, 2, 3}
            assert all(p["reachable"] for p in peers.values())
            assert all(p["match"] <= group["last_index"] for p in peers.values())
    assert status["wal"]["syncs"] > 0
    wal = node.wal().body
    assert wal["segments"][-1]["state"] == "active"
    assert any(s["groups"] for s in wal["segments"])
    shard_map = node.shard_map().body
    assert shard_map["shard_count"] == 4 and shard_map["epoch"] in (0, 1)
    assert all(s["leader"] in (1, 2, 3) for s in shard_map["shards"])
    await node.snapshot(None, time.monotonic() + 5)
    tables = node.sstables().body["shards"]
    assert sum(len(s["tables"]) for s in tables) >= 1, "the snapshot flushed the memtables"


async def test_a_lone_node_is_not_ready_and_says_why(tmp_path: Path) -> None:
    cluster = Cluster(tmp_path, 3, shards=2)
    try:
        node = await cluster.start_node(1)
        report = node.readiness()
        assert not report.ready
        assert "no known leader" in report.reason
        started = time.monotonic()
        with pytest.raises((DeadlineExceededError, UnavailableError)):
            await node.put(b"k", b"v", started + 0.3)
        assert time.monotonic() - started < 0.45
    finally:
        await cluster.stop()


async def test_restart_with_contradicting_flags_is_a_clear_error(tmp_path: Path) -> None:
    cluster = Cluster(tmp_path, 3, shards=2)
    try:
        await cluster.start_node(1)
        await cluster.stop_node(1)
        wrong_shards = cluster.make_node(1, shards=4)
        with pytest.raises(IdentityMismatchError, match="shards=2") as caught:
            await wrong_shards.start()
        assert caught.value.field_name == "shards"
        wrong_id = cluster.make_node(2, data_dir=tmp_path / "node1")
        with pytest.raises(IdentityMismatchError, match="node_id"):
            await wrong_id.start()
        (tmp_path / "node1" / "identity.json").write_text("{broken")
        with pytest.raises(NodeStartError, match="identity"):
            await cluster.make_node(1).start()
        (tmp_path / "node1" / "identity.json").unlink()
        with pytest.raises(NodeStartError, match="has a WAL but no identity"):
            await cluster.make_node(1).start()
    finally:
        await cluster.stop()


async def test_bad_inputs_are_refused_before_anything_is_proposed(tmp_path: Path) -> None:
    node = Cluster(tmp_path, 3, shards=2).make_node(1)  # never started: validation comes first
    deadline = time.monotonic() + 1
    with pytest.raises(InvalidRequestError, match="empty"):
        await node.put(b"", b"v", deadline)
    with pytest.raises(TooLargeError, match="limit is 4096 bytes"):
        await node.put(b"k" * 4097, b"v", deadline)
    with pytest.raises(TooLargeError, match="limit is 1048576 bytes"):
        await node.put(b"k", b"v" * (1024 * 1024 + 1), deadline)
    with pytest.raises(InvalidRequestError, match="limit must be in"):
        await node.scan(ScanRequest(limit=0), deadline)
    with pytest.raises(TooLargeError, match="scan prefix"):
        await node.scan(ScanRequest(prefix=b"p" * 5000), deadline)
    with pytest.raises(UnavailableError, match="not serving"):
        await node.get(b"k", LINEARIZABLE, deadline)


async def test_concurrent_writes_share_entries_and_fsyncs(cluster: Cluster) -> None:
    await wait_for(lambda: leaders_spread(cluster), 10, lambda: str(leaders_seen(cluster)))
    node = cluster.nodes[1]
    await put(node, b"warm", b"up")
    leader_shards = [s for s, g in node.host.shard_groups.items() if g.is_leader]
    assert leader_shards
    keys = [
        key
        for key in (f"batch-{i}".encode() for i in range(2000))
        if shard_for_key(key, 4) in leader_shards
    ][:200]
    syncs_before = node.host.log.stats.syncs
    deadline = time.monotonic() + 10
    versions = await asyncio.gather(*(node.put(key, b"v", deadline) for key in keys))
    syncs = node.host.log.stats.syncs - syncs_before
    entries = {(shard_for_key(key, 4), v) for key, v in zip(keys, versions, strict=True)}
    assert len(entries) < len(keys) / 2, f"{len(entries)} entries for {len(keys)} writes"
    assert syncs < len(keys) / 2, f"{syncs} fsyncs for {len(keys)} concurrent writes"
    for key, version in zip(keys, versions, strict=True):
        found = await node.get(key, STALE, time.monotonic() + 1)
        assert found.version == version, "a write's version is the index of its entry"


async def test_writes_to_one_key_in_one_batch_keep_their_order(cluster: Cluster) -> None:
    await wait_for(lambda: leaders_spread(cluster), 10, lambda: str(leaders_seen(cluster)))
    node = cluster.nodes[1]
    shard = next(s for s, g in node.host.shard_groups.items() if g.is_leader)
    key = next(k for k in (f"hot-{i}".encode() for i in range(100)) if shard_for_key(k, 4) == shard)
    deadline = time.monotonic() + 5
    versions = await asyncio.gather(*(node.put(key, b"%d" % i, deadline) for i in range(20)))
    assert versions == sorted(versions) and len(set(versions)) == 20, versions
    assert (await get(node, key)) == b"19", "the last write queued is the last applied"


async def test_stop_finishes_writes_in_flight_and_leaves_no_task(tmp_path: Path) -> None:
    cluster = Cluster(tmp_path, 3, shards=2)
    try:
        await cluster.start()
        await cluster.wait_ready()
        node = cluster.nodes[1]
        await put(node, b"warm", b"up")
        deadline = time.monotonic() + 5
        writes = [
            asyncio.ensure_future(node.put(f"inflight-{i}".encode(), b"v", deadline))
            for i in range(50)
        ]
        await asyncio.sleep(0)  # one loop pass: every write is accepted and waits on Raft
        assert node.status().body["host"]["requests_in_flight"] == 50
        await cluster.stop_node(1)
        versions = await asyncio.gather(*writes)
        assert all(version > 0 for version in versions), "every accepted write was answered"
        with pytest.raises(UnavailableError, match="not serving"):
            await node.put(b"late", b"v", time.monotonic() + 1)
        restarted = await cluster.start_node(1)
        await cluster.wait_ready()
        assert await get(restarted, b"inflight-49") == b"v"
    finally:
        await cluster.stop()
    others = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
    assert not others, f"tasks left running after stop: {others}"


async def test_nodes_without_a_replica_forward_reads_writes_and_scans(tmp_path: Path) -> None:
    cluster = Cluster(tmp_path, 4, shards=4, replicas=3)
    try:
        await cluster.start()
        await cluster.wait_ready()
        for node in cluster.nodes.values():
            held = sorted(node.host.shard_groups)
            assert len(held) == 3, f"node {node.node_id} holds {held}"
        keys = [f"four-{i:02d}".encode() for i in range(24)]
        for number, key in enumerate(keys):
            await put(cluster.nodes[1 + number % 4], key, key)
        for node in cluster.nodes.values():
            for key in keys:
                assert await get(node, key) == key
            result = await scan(node, ScanRequest(prefix=b"four-", limit=100))
            assert [item.key for item in result.items] == keys
            assert not result.more
        assert len(cluster.nodes[1].host.groups[0].raw.conf_state.voters) == 4
    finally:
        await cluster.stop()


async def test_interrupted_bootstrap_is_finished_on_the_next_start(tmp_path: Path) -> None:
    cluster = Cluster(tmp_path, 3, shards=2)
    try:
        await cluster.start_node(1)
        await cluster.stop_node(1)
        identity_path = tmp_path / "node1" / "identity.json"
        document = json.loads(identity_path.read_text())
        document["bootstrapped"] = False  # as if the node died between the two writes
        identity_path.write_text(json.dumps(document))
        node = await cluster.start_node(1)
        assert sorted(node.host.groups) == [0, 1, 2]
        assert json.loads(identity_path.read_text())["bootstrapped"] is True
    finally:
        await cluster.stop()


async def test_corrupt_wal_record_refuses_to_start_naming_the_segment(tmp_path: Path) -> None:
    cluster = Cluster(tmp_path, 3, shards=2)
    try:
        await cluster.start_node(1)
        await cluster.stop_node(1)
        segment = sorted((tmp_path / "node1" / "wal").glob("*.wal"))[0]
        data = bytearray(segment.read_bytes())
        data[SEGMENT_HEADER_SIZE + 12] ^= 0xFF
        segment.write_bytes(bytes(data))
        with pytest.raises(NodeStartError, match=segment.name) as caught:
            await cluster.make_node(1).start()
        assert caught.value.__cause__ is not None
    finally:
        await cluster.stop()


async def test_a_followers_read_whose_request_was_lost_is_sent_again(cluster: Cluster) -> None:
    """read_batches.py: the ReadIndex of a follower's read dropped on its way to the leader
    is sent again a couple of ticks later, so the read (and the group's reads queued behind
    it) completes long before its deadline instead of waiting it out."""
    key = b"asked-twice"
    await put(cluster.nodes[1], key, b"v")
    shard = shard_for_key(key, cluster.shards)
    leader_id = cluster.nodes[1].host.shard_groups[shard].leader_id
    follower_id = next(node_id for node_id in cluster.nodes if node_id != leader_id)
    follower = cluster.nodes[follower_id]
    assert await get(follower, key) == b"v"
    follower.set_fault(FaultSpec(drop_to=frozenset({leader_id})))
    started = time.monotonic()
    reads = [asyncio.create_task(follower.get(key, LINEARIZABLE, started + 5.0)) for _ in range(3)]
    await asyncio.sleep(0.05)  # the request left and was dropped
    assert not any(read.done() for read in reads)
    follower.clear_fault()
    found = await asyncio.gather(*reads)
    assert [item.value for item in found] == [b"v", b"v", b"v"]
    elapsed = time.monotonic() - started
    assert elapsed < 2.0, f"the reads took {elapsed:.2f} s: the lost request was not resent"


async def test_a_forward_to_a_dead_leader_finds_the_new_one_and_stops_naming_the_old(
    tmp_path: Path,
) -> None:
    """Node 1 holds no replica of a shard: it forwards that shard's requests to the leader it
    last reached and names it in the shard map it serves. Once that leader died and the
    shard elected another, node 1 still forwarded to the dead one and served it as the
    leader, so clients dialled a dead node for a minute (a chaos run, until a repair gave
    node 1 a replica). It now asks the other replicas and drops the stale hint."""
    async with started_cluster(tmp_path, 4, shards=4) as cluster:
        entry = cluster.nodes[1]
        shard = next(s for s in range(4) if s not in entry.host.shard_groups)
        key = next(
            k for k in (f"k{i}".encode() for i in range(1000)) if shard_for_key(k, 4) == shard
        )
        await put(entry, key, b"v")
        leader = next(iter(leaders_seen(cluster)[shard]))
        assert await get(entry, key) == b"v"  # forwarded: node 1 now names `leader`
        assert _served_leader(entry, shard) == leader
        await cluster.stop_node(leader)
        await wait_for(
            lambda: (
                leaders_seen(cluster)[shard] - {leader, 0} != set()
                and len(leaders_seen(cluster)[shard]) == 1
            ),
            15,
            lambda: f"shard {shard} to elect again: {leaders_seen(cluster)}",
        )
        (elected,) = leaders_seen(cluster)[shard]
        found = await entry.get(key, LINEARIZABLE, time.monotonic() + 5)  # no retry loop
        assert found.value == b"v"
        assert _served_leader(entry, shard) == elected


def _served_leader(node: Node, shard: int) -> int:
    return int(node.shard_map().body["shards"][shard]["leader"])
