"""Bad input on every HTTP route and gRPC method of a real node process: each gets a clear
answer (status, JSON error naming the problem) and the node keeps serving afterwards."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable

import aiohttp
import grpc
import grpc.aio
import pytest

from minikv_core.net.proto import admin_pb2, admin_pb2_grpc, kv_pb2, kv_pb2_grpc
from tests.integration.conftest import Cluster

pytestmark = pytest.mark.integration

BIG_KEY = "k" * 4097


@pytest.fixture
async def single(cluster_factory: Callable[..., Cluster]) -> AsyncIterator[Cluster]:
    """One node holding every shard: bad input needs no replication to be answered."""
    made = cluster_factory(size=1, shards=2, replicas=1)
    async with aiohttp.ClientSession() as session:
        made.session = session
        await made.start()
        await made.wait_ready()
        yield made


HTTP_CASES: list[tuple[str, str, bytes | None, int, str]] = [
    # method, path, body, status, substring of the JSON detail (or error name)
    ("GET", "/kv/", None, 400, "the key is empty"),
    ("PUT", "/kv/", b"v", 400, "the key is empty"),
    ("PUT", f"/kv/{BIG_KEY}", b"v", 413, "the limit is 4096 bytes"),
    ("GET", f"/kv/{BIG_KEY}", None, 413, "the limit is 4096 bytes"),
    ("PUT", "/kv/big", b"x" * (1024 * 1024 + 1), 413, "the limit is 1048576 bytes"),
    ("GET", "/kv/a?consistency=eventual", None, 400, "consistency must be one of"),
    ("GET", "/kv/a?timeout_ms=0", None, 400, "timeout_ms must be a positive integer"),
    ("GET", "/kv/a?timeout_ms=999999", None, 400, "timeout_ms must be at most 60000"),
    ("GET", "/kv/a?bogus=1", None, 400, "unknown query parameter 'bogus'"),
    ("GET", "/kv/a?timeout_ms=5&timeout_ms=6", None, 400, "more than once"),
    ("GET", "/kv?limit=0", None, 400, "limit must be in [1, 10000]"),
    ("GET", "/kv?limit=ten", None, 400, "limit must be a positive integer"),
    ("GET", f"/kv?start={BIG_KEY}", None, 413, "start is 4097 bytes"),
    ("POST", "/kv/a", b"", 405, "POST is not allowed"),
    ("PATCH", "/kv", b"", 405, "PATCH is not allowed"),
    ("GET", "/nowhere", None, 404, "no route GET /nowhere"),
    ("POST", "/admin/fault", b"{not json", 400, "not valid JSON"),
    ("POST", "/admin/fault", b"[1, 2]", 400, "must be a JSON object"),
    ("POST", "/admin/fault", b'{"drop_to": "2"}', 400, "drop_to must be a set of node ids"),
    ("POST", "/admin/fault", b'{"loss": 1.5}', 400, "loss must be in [0, 1]"),
    ("POST", "/admin/fault", b'{"delay_ms": -1}', 400, "delay_ms must be in"),
    ("POST", "/admin/fault", b'{"drop_too": [2]}', 400, "unknown fault rule field(s) drop_too"),
    ("POST", "/admin/fault", b"{" + b" " * 70_000 + b"}", 400, "at most 65536 bytes"),
    ("POST", "/admin/transfer-leader", b'{"shard": -1, "node": 1}', 400, "shard must be"),
    ("POST", "/admin/transfer-leader", b'{"shard": 0}', 400, "node must be"),
    ("POST", "/admin/transfer-leader", b'{"shard": 0, "node": 1, "x": 1}', 400, "unknown field"),
    ("POST", "/admin/snapshot", b'{"shards": "all"}', 400, "shards must be a list"),
    ("POST", "/admin/compact", b'{"shards": [true]}', 400, "shards must be a list"),
    ("GET", "/admin/status?verbose=1", None, 400, "unknown query parameter 'verbose'"),
]


async def test_bad_http_requests_get_clear_json_errors_and_the_node_keeps_serving(
    single: Cluster,
) -> None:
    for method, path, body, expected, detail in HTTP_CASES:
        status, headers, payload = await single.request(1, method, path, body)
        assert status == expected, (method, path, status, payload)
        assert headers["Content-Type"].startswith("application/json"), (method, path)
        error = json.loads(payload)
        assert set(error) == {"error", "detail"}, error
        assert detail in error["detail"], (method, path, error)
    # A malformed HTTP request line is answered by the server and does not take it down.
    host, port = single.nodes[1].http_address.rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(b"\x16\x03\x01 garbage that is not HTTP\r\n\r\n")
    await writer.drain()
    answer = await asyncio.wait_for(reader.read(), 10)  # the node closes after it
    writer.close()
    assert answer.split(b" ", 2)[1] == b"400", answer
    head, _, payload = answer.partition(b"\r\n\r\n")
    assert b"Content-Type: application/json" in head, answer
    assert "Received HTTPS traffic on an HTTP port" in json.loads(payload)["detail"], answer
    # ... and it still serves.
    status, _, _ = await single.request(1, "PUT", "/kv/still", b"alive")
    assert status == 204
    status, _, payload = await single.request(1, "GET", "/kv/still")
    assert (status, payload) == (200, b"alive")


async def test_bad_grpc_requests_get_proper_status_codes_and_the_node_keeps_serving(
    single: Cluster,
) -> None:
    async with grpc.aio.insecure_channel(single.nodes[1].grpc_address) as channel:
        kv = kv_pb2_grpc.KVStub(channel)
        admin = admin_pb2_grpc.AdminStub(channel)
        cases = [
            (
                kv.Get(kv_pb2.GetRequest(key=b""), timeout=5),
                grpc.StatusCode.INVALID_ARGUMENT,
                "the key is empty",
            ),
            (
                kv.Put(kv_pb2.PutRequest(key=b"k" * 4097, value=b""), timeout=5),
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                "the limit is 4096 bytes",
            ),
            (
                kv.Put(kv_pb2.PutRequest(key=b"k", value=b"v" * (1024 * 1024 + 1)), timeout=5),
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                "the limit is 1048576 bytes",
            ),
            (
                kv.Get(kv_pb2.GetRequest(key=b"k", consistency=7), timeout=5),  # type: ignore[arg-type]
                grpc.StatusCode.INVALID_ARGUMENT,
                "unknown consistency 7",
            ),
            (
                kv.Get(kv_pb2.GetRequest(key=b"absent"), timeout=5),
                grpc.StatusCode.NOT_FOUND,
                "does not exist",
            ),
            (
                kv.Delete(kv_pb2.DeleteRequest(key=b"absent"), timeout=5),
                grpc.StatusCode.NOT_FOUND,
                "does not exist",
            ),
            (
                kv.Scan(kv_pb2.ScanRequest(limit=10_001), timeout=5),
                grpc.StatusCode.INVALID_ARGUMENT,
                "limit must be in [1, 10000]",
            ),
            (
                kv.Scan(kv_pb2.ScanRequest(end=b"e" * 5000), timeout=5),
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                "end is 5000 bytes",
            ),
            (
                admin.Fault(admin_pb2.FaultRequest(loss=2.0), timeout=5),
                grpc.StatusCode.INVALID_ARGUMENT,
                "loss must be in [0, 1]",
            ),
            (
                admin.Fault(admin_pb2.FaultRequest(drop_to=[0]), timeout=5),
                grpc.StatusCode.INVALID_ARGUMENT,
                "node ids must be positive",
            ),
            (
                admin.TransferLeader(admin_pb2.TransferLeaderRequest(shard=0, node=0), timeout=5),
                grpc.StatusCode.INVALID_ARGUMENT,
                "node must be a positive node id",
            ),
        ]
        for call, code, detail in cases:
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                await call
            assert raised.value.code() == code, (raised.value.code(), raised.value.details())
            assert detail in (raised.value.details() or ""), raised.value.details()
        # Bytes that are not a protobuf message at all.
        raw = channel.unary_unary("/minikv.v1.KV/Get")
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await raw(b"\xff\xff\xff\xff", timeout=5)
        assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "not a valid minikv.v1.GetRequest message" in (raised.value.details() or "")
        # An unknown method.
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await channel.unary_unary("/minikv.v1.KV/Nope")(b"", timeout=5)
        assert raised.value.code() == grpc.StatusCode.UNIMPLEMENTED
        # Still serving.
        put = await kv.Put(kv_pb2.PutRequest(key=b"k", value=b"v"), timeout=5)
        got = await kv.Get(kv_pb2.GetRequest(key=b"k"), timeout=5)
        assert (got.value, got.version) == (b"v", put.version)
        status = json.loads((await admin.Status(admin_pb2.AdminRequest(), timeout=5)).json)
        assert status["node_id"] == 1
