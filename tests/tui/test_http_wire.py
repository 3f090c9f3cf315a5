"""The load generator's HTTP/1.1 client against a scripted server on a real socket."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from minikv_tui.http_wire import HttpConnection, HttpWireError


class Scripted:
    """Answers each request read on a connection with the next canned reply (bytes); a None
    closes the connection (right after the reply before it); records the requests and the
    connections opened."""

    def __init__(self) -> None:
        self.replies: list[bytes | None] = []
        self.requests: list[bytes] = []
        self.connections = 0

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                self.requests.append(head + await reader.readexactly(length))
                reply = self.replies.pop(0) if self.replies else None
                if reply is None:
                    break
                writer.write(reply)
                await writer.drain()
                if self.replies and self.replies[0] is None:
                    self.replies.pop(0)  # None right after a reply: close after sending it
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


@pytest.fixture
async def server() -> AsyncIterator[tuple[Scripted, str]]:
    scripted = Scripted()
    listener = await asyncio.start_server(scripted.serve, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    try:
        yield scripted, f"http://127.0.0.1:{port}"
    finally:
        listener.close()
        await listener.wait_closed()


async def test_requests_reuse_one_connection_and_read_both_body_framings(
    server: tuple[Scripted, str],
) -> None:
    scripted, url = server
    scripted.replies = [
        b"HTTP/1.1 204 No Content\r\nDate: x\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n",
    ]
    connection = HttpConnection(url, timeout_s=5)
    try:
        assert await connection.request("PUT", "/kv/a%2Fb", b"v") == (204, b"")
        assert await connection.request("GET", "/kv/a") == (200, b"hello")
        assert await connection.request("POST", "/x", b"{}", content_type="a/b") == (
            200,
            b"abcde",
        )
    finally:
        await connection.close()
    assert scripted.connections == 1
    first = scripted.requests[0]
    assert first.startswith(b"PUT /kv/a%2Fb HTTP/1.1\r\nHost: 127.0.0.1:")
    assert first.endswith(b"Content-Length: 1\r\n\r\nv")
    assert b"Content-Type: a/b\r\n" in scripted.requests[2]


async def test_connection_close_and_failures_open_a_new_connection_next_time(
    server: tuple[Scripted, str],
) -> None:
    scripted, url = server
    scripted.replies = [
        b"HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\nContent-Length: 2\r\n\r\nno",
        b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort",
        None,  # the server closes mid-body
        b"SMTP ready\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
    ]
    connection = HttpConnection(url, timeout_s=5)
    try:
        assert await connection.request("GET", "/a") == (503, b"no")
        with pytest.raises(ConnectionResetError, match="5 bytes into a 10-byte answer body"):
            await connection.request("GET", "/b")
        with pytest.raises(HttpWireError, match=r"not an HTTP/1\.x status line"):
            await connection.request("GET", "/c")
        assert await connection.request("GET", "/d") == (200, b"ok")
    finally:
        await connection.close()
    assert scripted.connections == 4


async def test_a_silent_server_times_out_and_a_closed_port_is_refused(
    server: tuple[Scripted, str],
) -> None:
    scripted, url = server
    scripted.replies = []  # reads the request, then closes without a word
    connection = HttpConnection(url, timeout_s=5)
    with pytest.raises(ConnectionResetError, match="after 0 bytes"):
        await connection.request("GET", "/a")

    async def never(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(30)

    silent = await asyncio.start_server(never, "127.0.0.1", 0)
    port = silent.sockets[0].getsockname()[1]
    try:
        slow = HttpConnection(f"http://127.0.0.1:{port}", timeout_s=0.2)
        with pytest.raises(TimeoutError):
            await slow.request("GET", "/a")
        await slow.close()
    finally:
        silent.close()
    with pytest.raises(ValueError, match="http://host:port"):
        HttpConnection("https://example.org", timeout_s=1)
