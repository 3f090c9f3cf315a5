"""Hostile and malformed input to a real in-process node's HTTP and gRPC APIs: each is a 4xx
(INVALID_ARGUMENT) naming what was wrong, never a 500 (INTERNAL) or a side effect, and the
node serves on afterwards. Each case here was a 500 or started a job before its fix."""

from __future__ import annotations

import asyncio
import gzip
import json
import logging
import re
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import grpc.aio
import pytest

from minikv_core.net import maintenance_rpc
from minikv_core.net.proto import kv_pb2, kv_pb2_grpc
from minikv_core.server import NodeServer
from tests.net.api_harness import configs, running

HUGE_NUMBER = "9" * 5000
"""More digits than int() converts (CPython's 4300-digit guard raises ValueError)."""
DEEP_LIST = b"[" * 30_000 + b"]" * 30_000
"""Within the 64 KiB admin body limit, but nested past json's recursion limit."""


class Node:
    def __init__(
        self, server: NodeServer, session: aiohttp.ClientSession, channel: grpc.aio.Channel
    ) -> None:
        self.server = server
        self.session = session
        self.channel = channel
        self.base = f"http://{server.http_address}"

    async def http(self, method: str, path: str, body: bytes | None = None) -> tuple[int, Any]:
        async with self.session.request(
            method, self.base + path, data=body, timeout=aiohttp.ClientTimeout(total=20)
        ) as response:
            payload = await response.read()
            return response.status, json.loads(payload) if payload else None

    async def operate(self, raw: bytes) -> grpc.aio.AioRpcError | bytes:
        rpc = self.channel.unary_unary(
            f"/{maintenance_rpc.SERVICE}/{maintenance_rpc.OPERATE_METHOD}",
            request_serializer=None,
            response_deserializer=None,
        )
        try:
            answer: bytes = await rpc(raw, timeout=10)
        except grpc.aio.AioRpcError as error:
            return error
        return answer

    async def still_serves(self) -> None:
        assert (await self.http("PUT", "/kv/alive", b"yes"))[0] == 204
        async with self.session.get(self.base + "/kv/alive") as response:
            assert (response.status, await response.read()) == (200, b"yes")


@pytest.fixture
async def node(tmp_path: Path) -> AsyncIterator[Node]:
    """One node leading every shard and the meta group (replicas=1)."""
    server_configs = configs(tmp_path, 1, shards=2, replicas=1)
    async with (
        running(server_configs) as servers,
        aiohttp.ClientSession() as session,
        grpc.aio.insecure_channel(servers[0].grpc_address) as channel,
    ):
        yield Node(servers[0], session, channel)


@pytest.mark.parametrize(
    ("method", "path", "detail"),
    [
        # Served by the data-plane protocol (http_kv_protocol.py)...
        ("GET", f"/kv/a?timeout_ms={HUGE_NUMBER}", "timeout_ms must be at most 60000"),
        ("PUT", f"/kv/a?timeout_ms={HUGE_NUMBER}", "timeout_ms must be at most 60000"),
        ("DELETE", f"/kv/a?timeout_ms={HUGE_NUMBER}", "timeout_ms must be at most 60000"),
        # ... and by aiohttp.
        ("GET", f"/kv?limit={HUGE_NUMBER}", "limit must be in [1, 10000]"),
        ("GET", f"/kv?timeout_ms={HUGE_NUMBER}", "timeout_ms must be at most 60000"),
        ("POST", f"/admin/snapshot?timeout_ms={HUGE_NUMBER}", "timeout_ms must be at most"),
    ],
    ids=["get", "put", "delete", "scan-limit", "scan-timeout", "snapshot-timeout"],
)
async def test_a_number_too_long_for_int_is_a_400_not_a_500(
    node: Node, method: str, path: str, detail: str
) -> None:
    status, document = await node.http(method, path, b"v" if method == "PUT" else None)
    assert status == 400, document
    assert document["error"] == "invalid_request"
    assert detail in document["detail"]
    assert len(document["detail"]) < 200, "the detail quotes a cut of the number"
    await node.still_serves()


async def test_leading_zeros_do_not_count_against_a_number(node: Node) -> None:
    """`parse_decimal` bounds significant digits: 5000 zeros then 7 is still 7."""
    status, document = await node.http("GET", f"/kv?limit={'0' * 5000}7")
    assert status == 200, document


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/admin/fault", DEEP_LIST),
        ("/admin/fault", b'{"drop_to": ' + DEEP_LIST[:40_000] + b"}"),
        ("/admin/repair", b'{"dead": ' + DEEP_LIST[:40_000] + b"}"),
        ("/txn", DEEP_LIST),
    ],
    ids=["fault", "fault-field", "repair-field", "txn"],
)
async def test_json_nested_too_deeply_is_a_400_not_a_500(
    node: Node, path: str, body: bytes
) -> None:
    status, document = await node.http("POST", path, body)
    assert status == 400, document
    assert document["detail"] == "the body is not valid JSON: it nests too deeply"
    await node.still_serves()


@pytest.mark.parametrize(
    "raw",
    [
        b'{"method": "repair", "args": ' + DEEP_LIST + b"}",
        b'{"method": "repair", "args": {"dead": [' + HUGE_NUMBER.encode() + b"]}}",
    ],
    ids=["nested-too-deeply", "int-over-4300-digits"],
)
async def test_operate_json_json_cannot_decode_is_invalid_argument(node: Node, raw: bytes) -> None:
    """`minikv.v1.Cluster/Operate` decodes its own JSON: RecursionError and the plain
    ValueError of a huge integer were INTERNAL."""
    answer = await node.operate(raw)
    assert isinstance(answer, grpc.aio.AioRpcError), answer
    assert answer.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "request is not valid JSON" in str(answer.details())
    await node.still_serves()


@pytest.mark.parametrize(
    ("path", "body", "detail"),
    [
        ("/admin/rebalance", {"dry_runn": True}, "unknown field(s) 'dry_runn' for rebalance"),
        ("/admin/repair", {"dead": [], "force": True}, "unknown field(s) 'force' for repair"),
        ("/admin/verify", {"wait": "yes"}, '"wait" must be true or false'),
        ("/admin/rebalance", {"dry_run": "true"}, '"dry_run" must be true or false'),
        ("/admin/remove-node", {"node": 1, "dry_run": 1}, '"dry_run" must be true or false'),
    ],
)
async def test_maintenance_arguments_are_checked_before_any_job_starts(
    node: Node, path: str, body: dict[str, Any], detail: str
) -> None:
    """A typo (`dry_runn`) or a truthy string was read as "no dry run" / "wait": the node
    started a real rebalance for `{"dry_runn": true}`."""
    status, document = await node.http("POST", path, json.dumps(body).encode())
    assert status == 400, document
    assert detail in document["detail"]
    status, job = await node.http("GET", "/admin/maintenance")
    assert (status, job["state"]) == (200, "none"), "no job was started"


async def test_operate_checks_maintenance_arguments_too(node: Node) -> None:
    answer = await node.operate(maintenance_rpc.encode_request("rebalance", {"dry_runn": True}))
    assert isinstance(answer, grpc.aio.AioRpcError), answer
    assert answer.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "unknown field(s) 'dry_runn' for rebalance" in str(answer.details())
    status, job = await node.http("GET", "/admin/maintenance")
    assert job["state"] == "none", "no job was started"
    # The arguments an operator may give still work.
    status, plan = await node.http("POST", "/admin/rebalance", b'{"dry_run": true, "wait": false}')
    assert (status, plan["dry_run"]) == (200, True)


async def test_an_empty_grpc_transaction_is_invalid_argument(node: Node) -> None:
    """`POST /txn {}` was a 400, but `KV.Txn` with nothing in it reached the coordinator and
    failed there (`min()` of no shards): INTERNAL."""
    stub = kv_pb2_grpc.KVStub(node.channel)
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await stub.Txn(kv_pb2.TxnRequest(), timeout=10)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "the transaction is empty" in str(raised.value.details())
    await node.still_serves()


async def raw_exchange(node: Node, request: bytes) -> tuple[int, dict[str, Any]]:
    """One request written byte for byte (a client library would re-encode a bad `%`); the
    answer's status and JSON document (the node closes: HTTP/1.0, or `Connection: close`)."""
    host, port = node.server.http_address.rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(request)
        answer = await asyncio.wait_for(reader.read(), timeout=10)
    finally:
        writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split(b" ")[1]), json.loads(body)


@pytest.mark.parametrize("version", ["HTTP/1.1", "HTTP/1.0"], ids=["kv-protocol", "aiohttp"])
@pytest.mark.parametrize(
    ("target", "detail"),
    [
        ("/kv/a%zz", "the key is not valid percent-encoding: '%zz' at character 1"),
        ("/kv/a%2", "the key is not valid percent-encoding: '%2' at character 1"),
        ("/kv/a%", "the key is not valid percent-encoding: '%' at character 1"),
        ("/kv/a?consistency=%zz", "query parameter 'consistency' is not valid percent-encoding"),
        ("/kv?prefix=a%g1", "query parameter 'prefix' is not valid percent-encoding"),
    ],
)
async def test_a_percent_not_followed_by_two_hex_digits_is_a_400(
    node: Node, version: str, target: str, detail: str
) -> None:
    """`unquote_to_bytes` keeps a bad `%` as is: `PUT /kv/a%zz` wrote the key `a%zz`, which
    `/kv/a%25zz` names too, so a client's encoding bug became a key that looks right."""
    for method in ("GET", "PUT") if "?" not in target else ("GET",):
        body = b"v" if method == "PUT" else b""
        request = (
            f"{method} {target} {version}\r\nHost: x\r\nConnection: close\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode() + body
        status, document = await raw_exchange(node, request)
        assert (status, document["error"]) == (400, "invalid_request"), document
        assert detail in document["detail"]
    status, _ = await node.http("GET", "/kv/a%25zz")
    assert status == 404, "nothing was written under the key a%zz"
    status, _ = await node.http("PUT", "/kv/a%25%2Fb", b"v")
    assert status == 204, "'%25' and other valid escapes still decode"
    await node.still_serves()


async def first_answer(node: Node, head: bytes) -> bytes:
    """What the node sends first after a request head whose body is not sent (yet)."""
    host, port = node.server.http_address.rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(head)
        return await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=10)
    finally:
        writer.close()


@pytest.mark.parametrize(
    ("target", "length"),
    [("/kv/big", 1024 * 1024 + 1), ("/txn", 2 * 1024 * 1024 + 1)],
    ids=["put", "txn"],
)
async def test_expect_100_continue_over_the_limit_is_refused_before_the_body(
    node: Node, target: str, length: int
) -> None:
    """aiohttp's default answered `100 Continue` to any body, so a client that asked first
    (curl does for large uploads) sent megabytes only to be refused with a 413."""
    method = "PUT" if target.startswith("/kv/") else "POST"
    head = (
        f"{method} {target} HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
        f"Content-Length: {length}\r\n\r\n"
    ).encode()
    first = await first_answer(node, head)
    assert first.startswith(b"HTTP/1.1 413 "), first
    assert b"application/json" in first


async def test_expect_100_continue_within_the_limit_continues(node: Node) -> None:
    head = b"PUT /kv/e HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n"
    assert await first_answer(node, head) == b"HTTP/1.1 100 Continue\r\n\r\n"
    status, document = await raw_exchange(
        node,
        b"PUT /kv/e HTTP/1.1\r\nHost: x\r\nExpect: something\r\nContent-Length: 2\r\n"
        b"Connection: close\r\n\r\nok",
    )
    assert (status, document["error"]) == (417, "expectation_failed"), document
    await node.still_serves()


async def test_a_forwarded_by_header_int_cannot_read_is_not_internal(node: Node) -> None:
    """`x-minikv-forwarded-by` is read from any caller's metadata: 5000 digits made `int()`
    raise, an INTERNAL. Such a header names no peer: the call is served as a client's."""
    stub = kv_pb2_grpc.KVStub(node.channel)
    metadata = (("x-minikv-forwarded-by", HUGE_NUMBER),)
    await stub.Put(kv_pb2.PutRequest(key=b"f", value=b"v"), metadata=metadata, timeout=10)
    answer = await stub.Get(kv_pb2.GetRequest(key=b"f"), metadata=metadata, timeout=10)
    assert answer.value == b"v"


@pytest.mark.parametrize(
    ("request_bytes", "detail"),
    [
        (b"GET /kv/a\xff HTTP/1.1\r\nHost: x\r\n\r\n", "Invalid char in url path"),
        (b"PUT /kv/a HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n", "Content-Length"),
        (b"GET /kv/a HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 9000 + b"\r\n\r\n", "8190 bytes"),
        (b"GARBAGE\r\n\r\n", "Invalid method"),
        (b"GET /health/live HTTP/1.1\r\nHost: x\r\n\r\nGET /\x01 HTTP/1.1\r\n\r\n", "Invalid"),
    ],
    ids=["path-byte", "negative-length", "long-header", "no-request-line", "second-of-two"],
)
async def test_a_request_aiohttp_cannot_parse_gets_json_and_no_error_log(
    node: Node, request_bytes: bytes, detail: str, caplog: pytest.LogCaptureFixture
) -> None:
    """aiohttp answered these in text/plain and logged each at ERROR with a traceback: any
    client could fill the node's log with tracebacks of its own bad bytes."""
    with caplog.at_level(logging.DEBUG):
        host, port = node.server.http_address.rsplit(":", 1)
        reader, writer = await asyncio.open_connection(host, int(port))
        try:
            writer.write(request_bytes)
            answer = await asyncio.wait_for(reader.read(), timeout=10)
        finally:
            writer.close()
    while True:  # the last of the answers (each has a Content-Length)
        head, _, rest = answer.partition(b"\r\n\r\n")
        length = int(re.search(rb"Content-Length: (\d+)", head)[1])  # type: ignore[index]
        body, answer = rest[:length], rest[length:]
        if not answer:
            break
    assert head.split(b" ")[1] == b"400", answer
    assert b"Content-Type: application/json" in head
    document = json.loads(body)
    assert document["error"] == "invalid_request"
    assert detail in document["detail"]
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text
    await node.still_serves()


@pytest.mark.parametrize(
    "head",
    [
        b"PUT /kv/slow?timeout_ms=300 HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"10\r\nabc",
        b"PUT /kv/slow?timeout_ms=300 HTTP/1.0\r\nContent-Length: 10\r\n\r\nabc",
        b"POST /txn?timeout_ms=300 HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{",
        b"POST /admin/snapshot?timeout_ms=300 HTTP/1.1\r\nHost: x\r\nContent-Length: 9\r\n\r\n{",
    ],
    ids=["put-chunked", "put-http10", "txn", "admin"],
)
async def test_a_body_that_stops_arriving_is_a_504_at_the_deadline(node: Node, head: bytes) -> None:
    """The aiohttp handlers read bodies outside the deadline: a client that stopped mid-body
    held its handler forever (and a graceful stop for its whole grace period)."""
    started = time.monotonic()
    answer = await first_answer(node, head)
    assert answer.split(b" ")[1] == b"504", answer
    assert time.monotonic() - started < 3.0, "answered at the 300 ms deadline, not later"
    await node.still_serves()


async def test_a_grpc_scan_of_large_values_fits_one_message_and_progresses(node: Node) -> None:
    """Cut at 4 MiB of keys and values alone, four values of just under 1 MiB made an answer
    48 bytes over gRPC's 4 MiB send bound: RESOURCE_EXHAUSTED on every attempt, so such a
    range could never be scanned over gRPC. The cut now counts each item's framing."""
    stub = kv_pb2_grpc.KVStub(node.channel)
    value = b"x" * (1024 * 1024 - 3)
    keys = [b"sc%d" % n for n in range(4)]
    for key in keys:
        await stub.Put(kv_pb2.PutRequest(key=key, value=value), timeout=10)
    scanned: list[bytes] = []
    start = b""
    for _ in range(len(keys)):
        answer = await stub.Scan(kv_pb2.ScanRequest(prefix=b"sc", start=start), timeout=10)
        assert answer.ByteSize() <= 4 * 1024 * 1024
        scanned += [item.key for item in answer.items]
        if not answer.more:
            break
        start = answer.items[-1].key + b"\x00"
    assert scanned == keys


async def test_a_gzip_body_is_stored_as_sent_by_both_protocols(node: Node) -> None:
    """aiohttp gunzipped a `Content-Encoding: gzip` body and the data-plane protocol did not:
    the same PUT stored different values by protocol, and a body that was not gzip was a
    500. The value is the body's bytes as sent, always."""
    compressed = gzip.compress(b"hello")
    for version, key in (("HTTP/1.1", "gz11"), ("HTTP/1.0", "gz10")):
        head = (
            f"PUT /kv/{key} {version}\r\nHost: x\r\nContent-Encoding: gzip\r\n"
            f"Content-Length: {len(compressed)}\r\nConnection: close\r\n\r\n"
        ).encode()
        assert (await first_answer(node, head + compressed)).split(b" ")[1] == b"204"
        async with node.session.get(f"{node.base}/kv/{key}") as response:
            assert await response.read() == compressed, version
    head = b"PUT /kv/gzbad HTTP/1.0\r\nContent-Encoding: gzip\r\nContent-Length: 5\r\n\r\n"
    assert (await first_answer(node, head + b"notgz")).split(b" ")[1] == b"204"


@pytest.mark.parametrize(
    ("head", "rest"),
    [
        (b"PUT /kv/c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n", b"zz\r\nab\r\n"),
        (b"POST /txn HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n", b"3\r\nabcdef"),
        (b"PUT /kv/c HTTP/1.0\r\nContent-Length: 10\r\n\r\n", None),
    ],
    ids=["bad-chunk-size", "chunk-overrun", "hang-up-mid-body"],
)
async def test_a_body_the_client_breaks_mid_way_is_no_error_in_the_log(
    node: Node, head: bytes, rest: bytes | None, caplog: pytest.LogCaptureFixture
) -> None:
    """A body broken after its handler started reading (a malformed chunk, a client that
    hangs up) raised RequestPayloadError or ConnectionResetError out of the handler: an
    ERROR with a traceback in the node's log for each, and a 500."""
    host, port = node.server.http_address.rsplit(":", 1)
    with caplog.at_level(logging.DEBUG):
        _, writer = await asyncio.open_connection(host, int(port))
        try:
            writer.write(head + b"ab")
            await asyncio.sleep(0.3)  # the handler is reading the body now
            if rest is not None:
                writer.write(rest)
                await asyncio.sleep(0.1)
        finally:
            writer.close()  # the client hangs up
        await asyncio.sleep(0.3)  # the handler sees the body end broken
        await node.still_serves()
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text


@pytest.mark.parametrize("field", ["key", "value"])
async def test_a_transaction_string_with_a_lone_surrogate_is_a_400(node: Node, field: str) -> None:
    """JSON may escape a lone surrogate (`"\\ud800"`), which has no UTF-8 encoding: encoding
    the key or value raised UnicodeEncodeError out of the handler, a 500."""
    op = {"op": "put", "key": "k", "value": "v", field: "\ud800"}
    status, document = await node.http("POST", "/txn", json.dumps({"success": [op]}).encode())
    assert status == 400, document
    assert "not valid Unicode" in document["detail"]
    assert "key_b64 / value_b64" in document["detail"]
    await node.still_serves()
