"""The data-plane HTTP protocol (http_kv_protocol.py): which requests it serves itself, and that
everything else reaches aiohttp on the same connection with the same answers.

Raw sockets, so the bytes on the wire are the test's to choose (pipelining, a head split
byte by byte, chunked bodies, half-closes); a real in-process node behind them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from aiohttp import web

from minikv_core.net import http_kv_protocol
from minikv_core.net.http_kv_protocol import (
    KvAnswer,
    KvHttpServer,
    KvRequest,
    encode_answer,
    parse_head,
)
from minikv_core.server import NodeServer
from tests.net.api_harness import configs, running

VALUE_LIMIT = 64 * 1024


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    def document(self) -> dict[str, str]:
        parsed = json.loads(self.body)
        assert isinstance(parsed, dict)
        return parsed


class Connection:
    """One client connection; answers are read by their Content-Length."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def answer(self) -> Answer:
        head = await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), 10)
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ")[1])
        headers = {}
        for line in lines[1:]:
            if line:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
        length = int(headers.get("content-length", "0"))
        body = await asyncio.wait_for(self.reader.readexactly(length), 10) if length else b""
        return Answer(status, headers, body)

    async def closed_by_server(self) -> bool:
        return await asyncio.wait_for(self.reader.read(1), 10) == b""

    async def close(self) -> None:
        self.writer.close()
        await self.writer.wait_closed()


def request(method: str, path: str, body: bytes = b"", *headers: str) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: minikv", *headers]
    if body or method == "PUT":
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[NodeServer]:
    server_configs = configs(tmp_path, 1, shards=2, replicas=1, value_size_max=VALUE_LIMIT)
    async with running(server_configs) as servers:
        yield servers[0]


@pytest.fixture
async def connection(server: NodeServer) -> AsyncIterator[Connection]:
    host, _, port = server.http_address.rpartition(":")
    connection = Connection(*await asyncio.open_connection(host, int(port)))
    try:
        yield connection
    finally:
        await connection.close()


def served_here(server: NodeServer) -> int:
    """Connections this protocol handed to aiohttp so far (0: it served everything)."""
    api = server._http
    assert api is not None
    return api.connections_handed_over


# --- parsing ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "head",
    [
        b"GET /kv/a HTTP/1.1\r\nHost: x",
        b"GET /kv/a%2Fb?consistency=stale HTTP/1.1\r\nHost: x",
        b"PUT /kv/a HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Type: text/plain",
        b"DELETE /kv/a HTTP/1.1\r\nHost: x",
        b"GET /kv/a HTTP/1.1\r\nHost: x\r\nConnection: keep-alive\r\nX-Other:\tspaced value ",
    ],
)
def test_plain_data_plane_heads_are_served_here(head: bytes) -> None:
    assert parse_head(head, VALUE_LIMIT) is not None


@pytest.mark.parametrize(
    ("head", "why"),
    [
        (b"GET /kv HTTP/1.1", "the scan route"),
        (b"GET /kv/ HTTP/1.1", "the empty key: aiohttp's 400"),
        (b"POST /kv/a HTTP/1.1", "another method"),
        (b"HEAD /kv/a HTTP/1.1", "HEAD"),
        (b"GET /kv/a HTTP/1.0", "HTTP/1.0 keep-alive rules"),
        (b"GET /kv/a HTTP/1.1 extra", "a malformed request line"),
        (b"GET /kv/a/../b HTTP/1.1", "dot segments"),
        (b"GET /kv/a#frag HTTP/1.1", "a fragment"),
        (b"GET /kv/\xc3\xa9 HTTP/1.1", "raw non-ASCII bytes"),
        (b"PUT /kv/a HTTP/1.1\r\nTransfer-Encoding: chunked", "a chunked body"),
        (b"PUT /kv/a HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 1", "Expect"),
        (b"PUT /kv/a HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 1", "two lengths"),
        (b"PUT /kv/a HTTP/1.1\r\nContent-Length: -1", "a negative length"),
        (b"PUT /kv/a HTTP/1.1\r\nContent-Length: 65537", "over the value limit: 413"),
        (b"GET /kv/a HTTP/1.1\r\nContent-Length: 2", "a body on GET"),
        (b"GET /kv/a HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: h2c", "an upgrade"),
        (b"GET /kv/a HTTP/1.1\r\nHost : x", "whitespace before the colon"),
        (b"GET /kv/a HTTP/1.1\r\nHost: x\r\n folded", "obs-fold"),
        (b"GET /kv/a HTTP/1.1\r\nHost: a\x00b", "a NUL byte"),
        (b"GET /kv/a HTTP/1.1\nHost: x", "a bare LF"),
        (b"GET /kv/a HTTP/1.1\r\nno colon here", "a line without a colon"),
    ],
)
def test_every_other_head_goes_to_aiohttp(head: bytes, why: str) -> None:
    if b"Host" not in head:
        head += b"\r\nHost: x"  # the one thing wrong is `why`, not a missing Host
    assert parse_head(head, VALUE_LIMIT) is None, why


@pytest.mark.parametrize(
    ("head", "why"),
    [
        (b"GET /kv/a HTTP/1.1", "no Host"),
        (b"GET /kv/a HTTP/1.1\r\nHost: x\r\nHost: y", "two Hosts"),
        (b"PUT /kv/a HTTP/1.1\r\nHost: x\r\nContent Length: 5", "a space in a name"),
        (b'GET /kv/a HTTP/1.1\r\nHost: x\r\nX"y: 1', "a quote in a name"),
        (b"GET /kv/a HTTP/1.1\r\nHost: x\r\nX\xe9: 1", "a non-ASCII name"),
        (b"GET /kv/a HTTP/1.1\r\nHost: x\r\nX: " + b"v" * 8190, "a header line too long"),
        (b"GET /kv/a HTTP/1.1\r\nHost: x" + b"\r\nX: 1" * 100, "too many headers"),
    ],
)
def test_heads_aiohttp_refuses_go_to_aiohttp(head: bytes, why: str) -> None:
    assert parse_head(head, VALUE_LIMIT) is None, why


def test_close_in_any_connection_header_closes() -> None:
    head = b"GET /kv/a HTTP/1.1\r\nHost: x\r\nConnection: close\r\nConnection: keep-alive"
    parsed = parse_head(head, VALUE_LIMIT)
    assert parsed is not None and parsed.close


def test_a_204_has_no_content_length_and_close_is_said() -> None:
    wire = encode_answer(KvAnswer(204, (("x-minikv-version", "7"),)), close=True)
    status, date, *rest = wire.split(b"\r\n")
    assert status == b"HTTP/1.1 204 No Content"
    assert date.startswith(b"Date: ") and date.endswith(b" GMT")
    assert rest == [b"x-minikv-version: 7", b"Connection: close", b"", b""]
    wire = encode_answer(KvAnswer(200, (), b"abc", "application/octet-stream"), close=False)
    assert wire.endswith(b"Content-Length: 3\r\n\r\nabc")


# --- over the wire ------------------------------------------------------------------------


async def test_pipelined_requests_are_answered_in_order(
    server: NodeServer, connection: Connection
) -> None:
    await connection.send(
        request("PUT", "/kv/p1", b"one")
        + request("PUT", "/kv/p1", b"two")
        + request("GET", "/kv/p1")
        + request("DELETE", "/kv/p1")
        + request("GET", "/kv/p1")
    )
    first, second, got, deleted, gone = [await connection.answer() for _ in range(5)]
    assert (first.status, second.status) == (204, 204)
    assert int(second.headers["x-minikv-version"]) > int(first.headers["x-minikv-version"])
    assert (got.status, got.body) == (200, b"two")
    assert got.headers["x-minikv-version"] == second.headers["x-minikv-version"]
    assert got.headers["content-type"] == "application/octet-stream"
    assert deleted.status == 204
    assert (gone.status, gone.document()["error"]) == (404, "not_found")
    assert served_here(server) == 0


async def test_a_request_split_byte_by_byte_is_served(
    server: NodeServer, connection: Connection
) -> None:
    for byte in request("PUT", "/kv/slow", b"value"):
        await connection.send(bytes([byte]))
    assert (await connection.answer()).status == 204
    await connection.send(request("GET", "/kv/slow"))
    assert (await connection.answer()).body == b"value"
    assert served_here(server) == 0


async def test_errors_are_the_json_answers_of_the_aiohttp_routes(connection: Connection) -> None:
    await connection.send(request("GET", "/kv/" + "k" * 5000))
    too_long = await connection.answer()
    assert (too_long.status, too_long.document()["error"]) == (413, "too_large")
    assert "4096" in too_long.document()["detail"]
    await connection.send(request("GET", "/kv/a?limt=3"))
    typo = await connection.answer()
    assert typo.status == 400 and "limt" in typo.document()["detail"]
    await connection.send(request("GET", "/kv/a?timeout_ms=nope"))
    assert (await connection.answer()).status == 400
    await connection.send(request("GET", "/kv/a?consistency=sometimes"))
    assert (await connection.answer()).status == 400


async def test_another_route_after_a_key_route_is_served_by_aiohttp(
    server: NodeServer, connection: Connection
) -> None:
    await connection.send(request("PUT", "/kv/mixed", b"v"))
    assert (await connection.answer()).status == 204
    await connection.send(request("GET", "/health/live") + request("GET", "/kv/mixed"))
    live = await connection.answer()
    assert live.status == 200
    got = await connection.answer()
    assert (got.status, got.body) == (200, b"v"), "aiohttp serves the rest of the connection"
    assert served_here(server) == 1
    await connection.send(request("GET", "/metrics"))
    metrics = (await connection.answer()).body.decode()
    assert 'route="/kv/{key}"' in metrics, "both protocols count under one route label"
    assert "minikv_http_connections_handed_over_total 1.0" in metrics


async def test_chunked_and_expect_bodies_go_to_aiohttp_unchanged(
    server: NodeServer, connection: Connection
) -> None:
    await connection.send(
        b"PUT /kv/chunked HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"
    )
    assert (await connection.answer()).status == 204
    await connection.send(
        b"PUT /kv/expect HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n"
    )
    assert (await connection.answer()).status == 100
    await connection.send(b"ok")
    assert (await connection.answer()).status == 204
    await connection.send(request("GET", "/kv/chunked"))
    assert (await connection.answer()).body == b"abcde"
    assert served_here(server) == 1


async def test_an_oversize_body_is_refused_before_it_is_read(connection: Connection) -> None:
    await connection.send(
        f"PUT /kv/big HTTP/1.1\r\nHost: x\r\nContent-Length: {VALUE_LIMIT + 1}\r\n\r\n".encode()
    )
    refused = await connection.answer()
    assert (refused.status, refused.document()["error"]) == (413, "too_large")


async def test_a_malformed_request_gets_aiohttps_400(connection: Connection) -> None:
    await connection.send(b"GET /kv/a HTTP/1.1\r\nHost : x\r\n\r\n")
    assert (await connection.answer()).status == 400


async def test_connection_close_is_honoured(server: NodeServer, connection: Connection) -> None:
    await connection.send(request("PUT", "/kv/bye", b"v", "Connection: close"))
    answer = await connection.answer()
    assert (answer.status, answer.headers["connection"]) == (204, "close")
    assert await connection.closed_by_server()
    assert served_here(server) == 0


async def test_a_half_closed_client_still_gets_its_answer(connection: Connection) -> None:
    await connection.send(request("PUT", "/kv/half", b"v"))
    connection.writer.write_eof()
    assert (await connection.answer()).status == 204
    assert await connection.closed_by_server()


# --- the protocol alone, behind routes the test controls -----------------------------------


class SlowRoutes:
    """KvRoutes whose answers wait until the test releases them."""

    value_size_bytes_max = 8 * 1024 * 1024

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.started = 0
        self.bodies: list[bytes] = []

    async def serve_kv(self, request: KvRequest, body: bytes) -> KvAnswer:
        self.started += 1
        self.bodies.append(body)
        await self.release.wait()
        if request.method == "GET":
            return KvAnswer(200, (), b"x" * 4 * 1024 * 1024, "application/octet-stream")
        return KvAnswer(204)


@contextlib.asynccontextmanager
async def protocol_alone(routes: SlowRoutes) -> AsyncIterator[tuple[KvHttpServer, Connection]]:
    app = web.Application()
    runner = web.AppRunner(app)
    await runner.setup()
    assert runner.server is not None
    server = KvHttpServer(routes, runner.server)
    listener = await asyncio.get_running_loop().create_server(server, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    connection = Connection(*await asyncio.open_connection("127.0.0.1", port))
    try:
        yield server, connection
    finally:
        routes.release.set()
        connection.writer.close()
        listener.close()
        await server.shutdown(1.0)
        await runner.cleanup()


async def test_a_body_that_keeps_arriving_is_not_cut_but_silence_is(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(http_kv_protocol, "IDLE_TIMEOUT_S", 0.5)
    routes = SlowRoutes()
    routes.release.set()
    async with protocol_alone(routes) as (_, connection):
        await connection.send(b"PUT /kv/a HTTP/1.1\r\nHost: x\r\nContent-Length: 6\r\n\r\n")
        for byte in b"abcdef":  # 1.2 s in all, more than twice the idle timeout
            await asyncio.sleep(0.2)
            await connection.send(bytes([byte]))
        assert (await connection.answer()).status == 204
        assert routes.bodies == [b"abcdef"]
        await connection.send(b"PUT /kv/a HTTP/1.1\r\nHost: x\r\nContent-Length: 6\r\n\r\nab")
        assert await connection.closed_by_server(), "a stalled body is cut after the timeout"


async def test_reading_resumes_for_a_big_body_queued_behind_an_answer() -> None:
    routes = SlowRoutes()
    async with protocol_alone(routes) as (_, connection):
        body = b"b" * (6 * 1024 * 1024)  # more than BUFFERED_BYTES_MAX: reading pauses
        head = f"PUT /kv/big HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n\r\n"
        connection.writer.write(request("GET", "/kv/a") + head.encode() + body)
        await eventually_true(lambda: routes.started == 1)
        routes.release.set()
        first = await connection.answer()
        assert (first.status, len(first.body)) == (200, 4 * 1024 * 1024)
        await connection.writer.drain()
        assert (await connection.answer()).status == 204
        assert routes.bodies[1] == body


async def test_shutdown_cancels_what_outlives_the_grace_period() -> None:
    routes = SlowRoutes()
    async with protocol_alone(routes) as (server, connection):
        await connection.send(request("PUT", "/kv/slow", b"v"))
        await eventually_true(lambda: routes.started == 1)
        (task,) = server.tasks
        await server.shutdown(0.2)
        assert task.cancelled() and not server.tasks and not server.connections
        assert await connection.closed_by_server()


async def eventually_true(predicate: Callable[[], bool]) -> None:
    async with asyncio.timeout(10):
        while not predicate():
            await asyncio.sleep(0.01)
