"""Three real node processes: replication, leader failure, partitions, restarts, WAL damage.

Every scenario of issue 5's test list, over the HTTP API (the same NodeService answers gRPC;
tests/integration/test_bad_inputs.py and test_client.py cover that side). Each test starts its
own cluster (three `minikv serve` processes, four shards of three replicas) so no scenario
depends on another's leftovers.
"""

from __future__ import annotations

import asyncio
import json
import random
import shutil
import struct
import time
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from minikv_core.cluster.config import IDENTITY_FILE, PEER_INCARNATIONS_FILE
from minikv_core.storage.wal import verify
from minikv_core.storage.wal_format import FRAME_HEADER_SIZE
from minikv_core.storage.wal_records import RecordType
from tests.integration.conftest import Cluster, eventually, heal, partition

pytestmark = pytest.mark.integration

LEADER_ELECTION_S_MAX = 2.0
"""Issue 5: after the leader of a shard is SIGKILLed, a new leader within 2 s."""
CONVERGE_TIMEOUT_S = 20.0


def kv_path(key: str) -> str:
    return "/kv/" + urllib.parse.quote(key, safe="")


async def put(
    cluster: Cluster, node_id: int, key: str, value: bytes, timeout_ms: int = 5000
) -> int:
    """PUT and return the status (204 on success)."""
    status, _, body = await cluster.request(
        node_id,
        "PUT",
        f"{kv_path(key)}?timeout_ms={timeout_ms}",
        value,
        timeout_s=timeout_ms / 1000 + 5,
    )
    assert status in (204, 503, 504), (status, body)
    return status


async def put_retrying(
    cluster: Cluster, node_ids: list[int], key: str, value: bytes, timeout_s: float = 15.0
) -> None:
    """A client's retry loop over the given nodes until the write is acknowledged: a 503 or
    504 is what a node answers while leadership moves (an election, or a transfer to a
    preferred leader just after the cluster starts), and a client retries it. The same value
    again, so retrying a write that did land changes nothing."""
    deadline = time.monotonic() + timeout_s
    attempt = 0
    while True:
        node_id = node_ids[attempt % len(node_ids)]
        if await put(cluster, node_id, key, value, timeout_ms=2000) == 204:
            return
        attempt += 1
        assert time.monotonic() < deadline, f"{key} never acknowledged{cluster.describe()}"
        await asyncio.sleep(0.05)


async def get(
    cluster: Cluster, node_id: int, key: str, *, stale: bool = False, timeout_ms: int = 5000
) -> tuple[int, bytes]:
    query = f"?timeout_ms={timeout_ms}" + ("&consistency=stale" if stale else "")
    status, _, body = await cluster.request(
        node_id, "GET", kv_path(key) + query, timeout_s=timeout_ms / 1000 + 5
    )
    return status, body


async def get_retrying(
    cluster: Cluster, node_id: int, key: str, timeout_ms: int = 5000, retry_s: float = 10.0
) -> tuple[int, bytes]:
    """`get`, with a 503 (no leader known: an election, or the transfer back to a preferred
    leader right after a restart) retried as a client does, for up to `retry_s`; any other
    answer is returned at once."""
    give_up = time.monotonic() + retry_s
    status, body = await get(cluster, node_id, key, timeout_ms=timeout_ms)
    while status == 503 and time.monotonic() < give_up:
        await asyncio.sleep(0.05)
        status, body = await get(cluster, node_id, key, timeout_ms=timeout_ms)
    return status, body


def shard_leaders(document: dict[str, Any]) -> dict[int, int]:
    """Shard -> leader node id from a `/admin/shards` document (0 = none known)."""
    return {int(s["shard"]): int(s.get("leader") or 0) for s in document["shards"]}


async def leaders_seen_by(cluster: Cluster, node_id: int) -> dict[int, int]:
    status, _, body = await cluster.request(node_id, "GET", "/admin/shards")
    assert status == 200, body
    return shard_leaders(json.loads(body))


def shard_groups(status: dict[str, Any]) -> dict[int, dict[str, Any]]:
    """Shard -> this node's view of that shard's Raft group, from `/admin/status`."""
    groups: dict[int, dict[str, Any]] = {}
    for group in status["groups"]:
        if group.get("shard") is not None:
            groups[int(group["shard"])] = group
    return groups


async def test_writes_through_every_node_are_read_linearizably_everywhere(
    cluster: Cluster,
) -> None:
    written: dict[str, bytes] = {}
    for node_id in cluster.nodes:
        for n in range(12):
            key = f"user/{node_id}/{n}"
            written[key] = f"value {node_id}.{n}".encode()
            await put_retrying(cluster, [node_id], key, written[key])
    for node_id in cluster.nodes:
        for key, value in written.items():
            assert await get(cluster, node_id, key) == (200, value), (node_id, key)
    # One scan through any node sees every shard's keys, in key order.
    status, _, body = await cluster.request(2, "GET", "/kv?prefix=user/&limit=1000")
    assert status == 200
    scanned = json.loads(body)
    assert [item["key"] for item in scanned["items"]] == sorted(written)
    assert scanned["more"] is False
    # A delete through one node is seen by a linearizable read through another.
    status, _, _ = await cluster.request(3, "DELETE", kv_path("user/1/0"))
    assert status == 204
    assert (await get(cluster, 1, "user/1/0"))[0] == 404
    status, _, _ = await cluster.request(2, "DELETE", kv_path("user/1/0"))
    assert status == 404


async def test_sigkill_of_a_shard_leader_elects_a_new_one_fast_and_loses_no_ack(
    cluster: Cluster,
) -> None:
    rng = random.Random(5)
    leaders = await leaders_seen_by(cluster, 1)
    victim = leaders[0]
    assert victim in cluster.nodes, leaders
    survivors = [n for n in cluster.nodes if n != victim]
    led_by_victim = sorted(s for s, leader in leaders.items() if leader == victim)

    acknowledged: dict[str, bytes] = {}
    stop = asyncio.Event()

    async def writer(worker: int) -> None:
        n = 0
        while not stop.is_set():
            key = f"w{worker}/{n:05d}"
            value = f"{worker}:{n}:{rng.random()}".encode()
            node_id = survivors[n % len(survivors)]
            if await put(cluster, node_id, key, value, timeout_ms=3000) == 204:
                acknowledged[key] = value
            n += 1

    writers = [asyncio.create_task(writer(w)) for w in range(4)]
    try:
        await eventually(lambda: len(acknowledged) >= 40, "writes before the kill", 15)
        killed_at = time.monotonic()
        cluster.kill(victim)

        async def new_leaders() -> bool:
            seen = await leaders_seen_by(cluster, survivors[0])
            return all(seen[s] not in (0, victim) for s in led_by_victim)

        await eventually(
            new_leaders, "new leaders of the killed node's shards", 10, cluster.describe
        )
        elected_after_s = time.monotonic() - killed_at
        count_at_election = len(acknowledged)
        await eventually(
            lambda: len(acknowledged) >= count_at_election + 40, "writes after the election", 15
        )
    finally:
        stop.set()
        await asyncio.gather(*writers)
    print(f"new leaders of shards {led_by_victim} after {elected_after_s:.2f}s")
    assert elected_after_s <= LEADER_ELECTION_S_MAX, (
        f"new leader after {elected_after_s:.2f}s (shards {led_by_victim})"
    )
    for key, value in acknowledged.items():
        assert await get(cluster, survivors[0], key) == (200, value), key

    # The killed node restarts from its data directory and catches up: its own local state
    # (a stale read answers from it) ends up holding every acknowledged write.
    cluster.launch(victim)
    await cluster.wait_started(victim)

    async def caught_up() -> bool:
        for key, value in acknowledged.items():
            if await get(cluster, victim, key, stale=True) != (200, value):
                return False
        return True

    await eventually(caught_up, f"node {victim} to catch up", CONVERGE_TIMEOUT_S, cluster.describe)


async def test_partitioned_leader_never_serves_stale_reads_and_majority_serves(
    cluster: Cluster,
) -> None:
    leaders = await leaders_seen_by(cluster, 1)
    isolated = leaders[0]
    majority = [n for n in cluster.nodes if n != isolated]
    keys = [f"p/{n}" for n in range(16)]
    for key in keys:
        await put_retrying(cluster, [isolated], key, b"before")

    await partition(cluster, isolated)
    # The majority elects leaders for whatever the isolated node led, and takes new writes.
    for key in keys:
        await put_retrying(cluster, majority, key, b"after")

    # The minority side: never the old value on a linearizable read, only 503 or 504; writes
    # are refused the same way. (A stale read may answer "before": that is what it promises.)
    # All at once: each may wait out its deadline (the isolated node's leases and leader
    # hints lapse first), and one after another that was half a minute.
    gotten = await asyncio.gather(*(get(cluster, isolated, k, timeout_ms=1000) for k in keys))
    for key, (status, body) in zip(keys, gotten, strict=True):
        assert status in (503, 504), (key, status, body)
    refused = await asyncio.gather(
        *(put(cluster, isolated, k, b"minority", timeout_ms=1000) for k in keys)
    )
    assert all(status in (503, 504) for status in refused), refused
    status, headers, body = await cluster.request(isolated, "GET", kv_path(keys[0]))
    if status == 503:
        assert int(headers["Retry-After"]) >= 1
        assert json.loads(body)["error"] == "unavailable"
    for node_id in majority:
        for key in keys:
            assert await get(cluster, node_id, key) == (200, b"after")

    await heal(cluster)

    async def converged() -> bool:
        for key in keys:
            if await get(cluster, isolated, key, stale=True) != (200, b"after"):
                return False
        views = [shard_groups(await cluster.status(n)) for n in cluster.nodes]
        for shard in views[0]:
            groups = [view[shard] for view in views if shard in view]
            terms = {g["term"] for g in groups}
            leaders_claimed = [g for g in groups if str(g["role"]).lower() == "leader"]
            commits = {g["commit"] for g in groups}
            if len(terms) != 1 or len(leaders_claimed) != 1 or len(commits) != 1:
                return False
        return True

    await eventually(
        converged,
        "one leader per shard and equal logs after healing",
        CONVERGE_TIMEOUT_S,
        cluster.describe,
    )
    for key in keys:
        assert await get(cluster, isolated, key) == (200, b"after")


async def test_a_timed_out_wait_shows_where_each_running_node_is(cluster: Cluster) -> None:
    """`describe()` (what a timed-out wait prints) has every running node write its threads'
    stacks (SIGUSR1) and its asyncio tasks' awaits (SIGUSR2) to its log, shows them, and the
    nodes keep serving."""
    text = cluster.describe()
    for node_id in cluster.nodes:
        section = text.split(f"--- node {node_id} threads and tasks:\n", 1)
        assert len(section) == 2, text
        dump = section[1].split("\n--- node ", 1)[0]
        assert "(most recent call first)" in dump and "minikv_core" in dump, text
        assert "asyncio tasks (SIGUSR2)" in dump and "in serve\n" in dump, text
    await put_retrying(cluster, [1], "after-the-dump", b"v")
    assert await get(cluster, 2, "after-the-dump") == (200, b"v")


async def test_stop_all_then_restart_all_keeps_every_acknowledged_key(cluster: Cluster) -> None:
    written = {f"durable/{n}": f"v{n}".encode() for n in range(30)}
    for n, (key, value) in enumerate(written.items()):
        await put_retrying(cluster, [1 + n % 3], key, value)
    # Graceful stop: SIGTERM exits 0 after flushing.
    for node_id in cluster.nodes:
        assert cluster.terminate(node_id) == 0, cluster.describe()
        log = cluster.nodes[node_id].log_text()
        assert "SIGTERM received: stopping" in log and f"node {node_id} stopped" in log, log
        assert "loop=uvloop" in log, "the node runs on uvloop when it is installed"
    await cluster.start()
    await cluster.wait_ready()
    for key, value in written.items():
        assert await get(cluster, 2, key) == (200, value), key
    # Crash stop: SIGKILL loses nothing that was acknowledged either.
    more = {f"crash/{n}": f"c{n}".encode() for n in range(30)}
    for n, (key, value) in enumerate(more.items()):
        await put_retrying(cluster, [1 + n % 3], key, value)
    for node_id in cluster.nodes:
        cluster.kill(node_id)
    await cluster.start()
    await cluster.wait_ready()
    for key, value in (written | more).items():
        assert await get(cluster, 3, key) == (200, value), key


@dataclass(frozen=True)
class WalTail:
    segment: Path
    last_entry_offset: int
    """Frame offset of the last Raft entry record (in `segment`)."""
    last_entry_payload_bytes: int
    end_offset: int
    """Where the next record would start (the end of the last valid one)."""


def wal_tail(data_dir: Path) -> WalTail:
    """Where a node's WAL ends and its last entry is, read with the WAL's own verifier."""
    segment_dirs = {p.parent for p in data_dir.rglob("*.wal")}
    assert len(segment_dirs) == 1, f"expected one WAL directory under {data_dir}: {segment_dirs}"
    last_entry: list[tuple[int, int, int]] = []

    def on_record(position: Any, record_type: int, payload: memoryview) -> None:
        if record_type == RecordType.RAFT_ENTRY:
            last_entry[:] = [(position.segment, position.offset, len(payload))]

    report = verify(segment_dirs.pop(), on_record)
    assert report.ok and last_entry, report
    sequence, offset, payload_bytes = last_entry[0]
    active = report.segments[-1]
    assert active.sequence == sequence, "the last entry is in the last segment"
    return WalTail(active.path, offset, payload_bytes, active.used_bytes)


async def all_acknowledged_by(cluster: Cluster, node_id: int) -> bool:
    """Every group leader's progress shows `node_id` matching the leader's whole log."""
    for leader in cluster.nodes:
        for group in (await cluster.status(leader))["groups"]:
            if group["role"] != "leader" or node_id not in group["voters"]:
                continue
            match = {p["node_id"]: p["match"] for p in group["peers"]}
            if match.get(node_id) != group["last_index"]:
                return False
    return True


async def restart_and_catch_up(cluster: Cluster, victim: int, written: dict[str, bytes]) -> None:
    cluster.launch(victim)
    await cluster.wait_started(victim)
    log = cluster.nodes[victim].log_text()
    assert "torn tail" in log, f"the cut tail is not reported in the log:\n{log[-4000:]}"
    # Leadership may be moving (the victim led shards when it was killed): clients retry 503.
    more = {f"tail/after/{n}": b"x" for n in range(5)}
    for key, value in more.items():
        await put_retrying(cluster, [n for n in cluster.nodes if n != victim], key, value)

    async def caught_up() -> bool:
        for key, value in (written | more).items():
            if await get(cluster, victim, key, stale=True) != (200, value):
                return False
        return True

    await eventually(caught_up, f"node {victim} to catch up", CONVERGE_TIMEOUT_S, cluster.describe)


async def test_a_node_whose_data_directory_was_lost_is_refused_by_its_peers_and_stops(
    cluster: Cluster,
) -> None:
    """A node whose data directory was deleted, restarted by hand with its founding flags,
    bootstraps afresh: it forgot its votes and its log, yet its id still counts in quorums
    (Raft §5.2, §5.4). Its peers know the incarnation of the data it ran on and refuse the
    new one, so it never votes nor acknowledges; it stops with status 1 saying why."""
    written = {f"fenced/{n}": f"f{n}".encode() for n in range(20)}
    for n, (key, value) in enumerate(written.items()):
        await put_retrying(cluster, [1 + n % 3], key, value)
    victim = cluster.nodes[3]
    known = json.loads((victim.data_dir / IDENTITY_FILE).read_text())["incarnation"]
    assert cluster.terminate(3) == 0
    shutil.rmtree(victim.data_dir)
    offset = victim.log_size()
    process = cluster.launch(3).process
    assert process is not None
    assert process.wait(timeout=60) == 1, victim.log_since(offset)
    log = victim.log_since(offset)
    assert f"node 1 knew node 3 with other data (incarnation {known}, now " in log or (
        f"node 2 knew node 3 with other data (incarnation {known}, now " in log
    ), log
    assert "Traceback" not in log
    for node_id in (1, 2):
        record = json.loads((cluster.nodes[node_id].data_dir / PEER_INCARNATIONS_FILE).read_text())
        assert record["peers"]["3"] == known, "first heard wins"
    for key, value in written.items():
        assert await get(cluster, 1, key) == (200, value), key


async def test_torn_write_at_the_wal_tail_is_cut_on_restart_and_the_node_catches_up(
    cluster: Cluster,
) -> None:
    written = {f"tail/{n}": f"t{n}".encode() for n in range(20)}
    for key, value in written.items():
        await put_retrying(cluster, [1], key, value)
    victim = 3
    cluster.kill(victim)
    tail = wal_tail(cluster.nodes[victim].data_dir)
    # A write the crash cut short: a frame header announcing 4 KiB, then only part of it.
    torn = struct.pack("<IIB", 4096, 0xDEADBEEF, 2) + random.Random(3).randbytes(700)
    with tail.segment.open("r+b") as segment:
        segment.seek(tail.end_offset)
        segment.write(torn)
    await restart_and_catch_up(cluster, victim, written)


async def test_damaged_last_acknowledged_wal_record_is_recovered_from_the_peers(
    cluster: Cluster,
) -> None:
    written = {f"tail/{n}": f"t{n}".encode() for n in range(20)}
    for key, value in written.items():
        await put_retrying(cluster, [1], key, value)
    victim = 3
    await eventually(
        lambda: all_acknowledged_by(cluster, victim),
        f"every leader to see node {victim} acknowledge its whole log",
        CONVERGE_TIMEOUT_S,
        cluster.describe,
    )
    cluster.kill(victim)
    tail = wal_tail(cluster.nodes[victim].data_dir)
    # The disk lost the last write: the last entry record (fsynced, acknowledged, and on a
    # quorum of the other nodes) is damaged and everything after it is gone. Open cuts it as
    # a torn tail (it cannot tell the two apart); the node must get it back from its peers.
    start = tail.last_entry_offset + FRAME_HEADER_SIZE + tail.last_entry_payload_bytes // 2
    with tail.segment.open("r+b") as segment:
        segment.seek(start)
        byte = segment.read(1)
        segment.seek(start)
        segment.write(bytes([byte[0] ^ 0xFF]) + bytes(tail.end_offset - start - 1))
    await restart_and_catch_up(cluster, victim, written)
