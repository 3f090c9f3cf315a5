"""Cross-shard transactions against real node processes: a coordinator that dies at each
fault point of two-phase commit (MINIKV_TXN_FAULT makes it exit hard right there) leaves
nothing stuck: the next reads resolve its intents from its record, committed or aborted as
the record says, no lock survives, and the record it left behind is forgotten (by the home
shard's leader, txn_record_gc.py, after the short age these nodes are started with)."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import pytest

from minikv_core.cluster import limits
from minikv_core.cluster.shard_map import shard_for_key
from minikv_core.cluster.txn_coordinator import FAULT_ENV, FAULT_EXIT_CODE
from tests.integration.conftest import Cluster, eventually
from tests.integration.test_cluster import get_retrying

SHARDS = 4
RECORD_GC_S = 4
NODE_FLAGS = ("--txn-record-gc-s", str(RECORD_GC_S))
"""A short record age, so a left-behind record is seen forgotten within the test (it also
caps each transaction's deadline at RECORD_GC_S / 2, still far above what these need)."""


def launch_with_env(cluster: Cluster, node_id: int, env_extra: dict[str, str]) -> None:
    """`Cluster.launch` with extra environment variables (it strips MINIKV_* on purpose)."""
    node = cluster.nodes[node_id]
    cluster.spawn(node, cluster.command(node, *NODE_FLAGS), env_extra)


def keys_on_distinct_shards(count: int, tag: str) -> list[str]:
    found: dict[int, str] = {}
    number = 0
    while len(found) < count:
        key = f"{tag}-{number}"
        found.setdefault(shard_for_key(key.encode(), SHARDS), key)
        number += 1
    return list(found.values())


@pytest.fixture
async def started(cluster_factory: Callable[..., Cluster]) -> AsyncIterator[Cluster]:
    made = cluster_factory(size=3, shards=SHARDS)
    async with aiohttp.ClientSession() as session:
        made.session = session
        for node_id in made.nodes:
            made.launch(node_id, *NODE_FLAGS)
        for node_id in made.nodes:
            await made.wait_started(node_id)
        await made.wait_ready()
        yield made


async def txn(cluster: Cluster, node_id: int, document: Any) -> tuple[int, Any]:
    status, _, body = await cluster.request(node_id, "POST", "/txn", json_body=document)
    return status, json.loads(body)


async def get_value(cluster: Cluster, node_id: int, key: str) -> bytes:
    """GET through `node_id`, a 503 retried (get_retrying: after the coordinator restarts,
    the transfer back to it leaves a replica without a known leader for a moment)."""
    status, body = await get_retrying(cluster, node_id, key, timeout_ms=10000)
    assert status == 200, body
    return body


@pytest.mark.parametrize(
    ("point", "committed"),
    [("after-prepare", False), ("after-decision", True), ("mid-commit", True)],
)
async def test_a_coordinator_killed_at_each_fault_point_resolves_correctly(
    started: Cluster, point: str, committed: bool
) -> None:
    cluster = started
    keys = keys_on_distinct_shards(3, point)
    status, body = await txn(
        cluster, 2, {"success": [{"op": "put", "key": k, "value": "old"} for k in keys]}
    )
    assert status == 200 and body["succeeded"], body

    cluster.terminate(1)
    launch_with_env(cluster, 1, {FAULT_ENV: point})
    await cluster.wait_started(1)
    await cluster.wait_ready()
    with pytest.raises((aiohttp.ClientError, TimeoutError)):
        await txn(cluster, 1, {"success": [{"op": "put", "key": k, "value": "new"} for k in keys]})
    process = cluster.nodes[1].process
    assert process is not None
    assert process.wait(timeout=10) == FAULT_EXIT_CODE, "the coordinator stopped at the point"

    # Reads through the survivors meet the intents, wait out their expiry, resolve them.
    started_at = time.monotonic()
    expected = b"new" if committed else b"old"
    for key in keys:
        assert await get_value(cluster, 2, key) == expected, (point, key)
    elapsed_s = time.monotonic() - started_at
    assert elapsed_s < limits.TXN_INTENT_TTL_MS / 1000 + 5, "resolved within a bounded time"

    # Every lock is gone on the survivors (the reads resolved every participant).
    async def no_locks() -> bool:
        for node_id in (2, 3):
            shards = (await cluster.status(node_id))["txn"]["shards"]
            if any(s["prepared"] or s["write_locks"] or s["read_locks"] for s in shards.values()):
                return False
        return True

    await eventually(no_locks, "no transaction locks left", 10.0, cluster.describe)

    # The dead coordinator never forgot its record (nor does anyone forget a resolver's
    # ABORT): the home shard's leader does, once the record is older than the age.
    async def no_records() -> bool:
        for node_id in (2, 3):
            shards = (await cluster.status(node_id))["txn"]["shards"]
            if any(s["records"] for s in shards.values()):
                return False
        return True

    await eventually(
        no_records, "left-behind records forgotten", RECORD_GC_S + 10.0, cluster.describe
    )

    # The restarted coordinator (no fault armed) serves transactions on the same keys.
    cluster.launch(1, *NODE_FLAGS)
    await cluster.wait_started(1)
    await cluster.wait_ready()
    status, body = await txn(
        cluster,
        1,
        {
            "compare": [{"key": keys[0], "target": "value", "value": expected.decode()}],
            "success": [{"op": "put", "key": k, "value": "after"} for k in keys],
        },
    )
    assert status == 200 and body["succeeded"], body
    for key in keys:
        assert await get_value(cluster, 3, key) == b"after"
