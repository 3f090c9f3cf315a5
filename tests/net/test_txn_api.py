"""`POST /txn` and `KV.Txn` against real in-process nodes (3 nodes, 4 shards, gRPC forwarding
between them): single- and cross-shard transactions, errors and limits, lock interplay with
plain writes, and conflicting transactions (exactly one of each pair wins a version)."""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from minikv_core.client import (
    AsyncClient,
    Compare,
    CompareTarget,
    InvalidRequestError,
    OpKind,
    TxnOp,
    UnavailableError,
)
from minikv_core.cluster import limits
from minikv_core.cluster.shard_map import shard_for_key
from minikv_core.cluster.txn import SYSTEM_KEY_PREFIX
from minikv_core.server import NodeServer
from tests.net.api_harness import configs, node_of, running

SHARDS = 4


class Nodes:
    def __init__(self, servers: list[NodeServer], session: aiohttp.ClientSession) -> None:
        self.servers = servers
        self.session = session
        self.endpoints = [node_of(s).config.grpc_address for s in servers]

    async def post_txn(self, document: Any, node: int = 0) -> tuple[int, Any]:
        url = f"http://{self.servers[node].http_address}/txn"
        async with self.session.post(
            url, data=json.dumps(document).encode(), timeout=aiohttp.ClientTimeout(total=20)
        ) as response:
            return response.status, json.loads(await response.read())


@pytest.fixture
async def nodes(tmp_path: Path) -> AsyncIterator[Nodes]:
    async with (
        running(configs(tmp_path, 3, shards=SHARDS)) as servers,
        aiohttp.ClientSession() as session,
    ):
        yield Nodes(servers, session)


def keys_on_distinct_shards(count: int) -> list[bytes]:
    found: dict[int, bytes] = {}
    number = 0
    while len(found) < count:
        key = f"key-{number}".encode()
        found.setdefault(shard_for_key(key, SHARDS), key)
        number += 1
    return list(found.values())


async def test_http_single_and_cross_shard_transactions(nodes: Nodes) -> None:
    a, b, c = keys_on_distinct_shards(3)
    status, body = await nodes.post_txn(
        {
            "success": [
                {"op": "put", "key": a.decode(), "value": "x"},
                {"op": "put", "key": b.decode(), "value_b64": "/w=="},
            ]
        }
    )
    assert status == 200, body
    assert body["succeeded"] is True
    version_a = body["results"][0]["version"]
    assert version_a > 0
    for node in range(3):  # every node coordinates (forwarding where it leads nothing)
        status, body = await nodes.post_txn(
            {
                "compare": [
                    {"key": a.decode(), "target": "value", "op": "==", "value": "x"},
                    {"key": c.decode(), "target": "exists", "value": False},
                ],
                "success": [
                    {"op": "get", "key": a.decode()},
                    {"op": "get", "key": b.decode()},
                    {"op": "get", "key": c.decode()},
                ],
            },
            node,
        )
        assert status == 200, body
        assert body == {
            "succeeded": True,
            "results": [
                {"op": "get", "value": "x", "version": version_a},
                {"op": "get", "value_b64": "/w==", "version": body["results"][1]["version"]},
                {"op": "get", "value": None, "version": 0},
            ],
        }
    # A failed compare runs the failure branch, across shards.
    status, body = await nodes.post_txn(
        {
            "compare": [{"key": a.decode(), "target": "version", "op": ">", "version": 10**9}],
            "success": [{"op": "delete", "key": a.decode()}],
            "failure": [
                {"op": "delete", "key": b.decode()},
                {"op": "put", "key": c.decode(), "value": "1"},
            ],
        },
        1,
    )
    assert (status, body["succeeded"]) == (200, False)
    assert body["results"][0] == {"op": "delete", "deleted": True}
    async with AsyncClient(nodes.endpoints) as kv:
        assert (await kv.get(a)) == b"x"
        assert (await kv.get(c)) == b"1"
        assert not await kv.delete(b), "the failure branch deleted it"


async def test_http_errors_name_the_problem(nodes: Nodes) -> None:
    status, body = await nodes.post_txn({"success": [{"op": "frobnicate", "key": "a"}]})
    assert (status, body["error"]) == (400, "invalid_request")
    assert "op must be one of" in body["detail"]
    status, body = await nodes.post_txn(
        {"success": [{"op": "get", "key": f"k{i}"} for i in range(limits.TXN_OPS_MAX + 1)]}
    )
    assert (status, body["error"]) == (413, "too_large")
    reserved = (SYSTEM_KEY_PREFIX + b"r/x").decode("latin-1")
    status, body = await nodes.post_txn({"success": [{"op": "get", "key_b64": _b64(reserved)}]})
    assert status == 400 and "reserved" in body["detail"]
    url = f"http://{nodes.servers[0].http_address}/txn"
    async with nodes.session.post(url, data=b"{not json") as response:
        assert response.status == 400


def _b64(text: str) -> str:
    import base64

    return base64.b64encode(text.encode("latin-1")).decode()


async def test_grpc_client_transactions_and_version_checks(nodes: Nodes) -> None:
    a, b = keys_on_distinct_shards(2)
    async with AsyncClient(nodes.endpoints) as kv:
        version = await kv.put(a, b"1")
        answer = await kv.txn(
            compare=[Compare(a, CompareTarget.VERSION, version=version)],
            success=[TxnOp(OpKind.PUT, a, b"2"), TxnOp(OpKind.PUT, b, b"2")],
        )
        assert answer.succeeded
        assert answer.results[0].version > version
        assert (await kv.get_versioned(a)).version == answer.results[0].version
        assert (await kv.get_versioned(b)).version == answer.results[1].version
        stale = await kv.txn(
            compare=[Compare(a, CompareTarget.VERSION, version=version)],
            success=[TxnOp(OpKind.PUT, a, b"3")],
            failure=[TxnOp(OpKind.GET, a)],
        )
        assert not stale.succeeded and stale.results[0].value == b"2"
        with pytest.raises(InvalidRequestError, match="written twice"):
            await kv.txn(success=[TxnOp(OpKind.PUT, a, b"1"), TxnOp(OpKind.DELETE, a)])
        with pytest.raises(InvalidRequestError, match="reserved"):
            await kv.put(SYSTEM_KEY_PREFIX + b"i/x", b"v")


async def test_conflicting_transactions_exactly_one_wins_each_version(nodes: Nodes) -> None:
    """Pairs of transactions race to move the same two keys from the same versions: each
    version is won by exactly one of them, and the counters end equal to the winners."""
    a, b = keys_on_distinct_shards(2)
    rng = random.Random(3)
    async with AsyncClient(nodes.endpoints, timeout_s=20, rng=rng) as kv:
        await kv.txn(success=[TxnOp(OpKind.PUT, a, b"0"), TxnOp(OpKind.PUT, b, b"0")])
        wins = 0
        for _ in range(6):
            snapshot = await kv.txn(success=[TxnOp(OpKind.GET, a), TxnOp(OpKind.GET, b)])
            va, vb = snapshot.results
            assert va.value is not None and vb.value is not None

            async def move(va: Any = va, vb: Any = vb) -> bool:
                try:
                    answer = await kv.txn(
                        compare=[
                            Compare(a, CompareTarget.VERSION, version=va.version),
                            Compare(b, CompareTarget.VERSION, version=vb.version),
                        ],
                        success=[
                            TxnOp(OpKind.PUT, a, str(int(va.value) + 1).encode()),
                            TxnOp(OpKind.PUT, b, str(int(vb.value) + 1).encode()),
                        ],
                        timeout_s=10,
                    )
                except UnavailableError:
                    return False  # nothing applied
                return answer.succeeded

            results = await asyncio.gather(move(), move(), move())
            assert sum(results) <= 1, f"two transactions won the same versions: {results}"
            wins += sum(results)
        final = await kv.txn(success=[TxnOp(OpKind.GET, a), TxnOp(OpKind.GET, b)])
        assert [int(r.value or b"-1") for r in final.results] == [wins, wins]
        assert wins >= 3, "conflicts are retried: most rounds should have a winner"


async def test_plain_writes_wait_for_a_prepared_transaction_and_see_its_commit(
    nodes: Nodes,
) -> None:
    """A plain put racing a cross-shard transaction on the same key is serialized with it:
    the final value is one of the two, and the versions order them."""
    a, b = keys_on_distinct_shards(2)
    async with AsyncClient(nodes.endpoints, timeout_s=20) as kv:
        for round_number in range(5):
            txn_value = f"txn-{round_number}".encode()
            put_value = f"put-{round_number}".encode()
            txn_task = asyncio.ensure_future(
                kv.txn(success=[TxnOp(OpKind.PUT, a, txn_value), TxnOp(OpKind.PUT, b, txn_value)])
            )
            put_version = await kv.put(a, put_value)
            answer = await txn_task
            txn_version = answer.results[0].version
            assert txn_version != put_version
            final = await kv.get_versioned(a)
            expected = put_value if put_version > txn_version else txn_value
            assert final.value == expected
            assert (await kv.get(b)) == txn_value
        status = node_of(nodes.servers[0]).status().body["txn"]
        assert set(status["shards"]) == {str(s) for s in range(SHARDS)}
