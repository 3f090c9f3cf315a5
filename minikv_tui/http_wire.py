"""A minimal HTTP/1.1 keep-alive client: one connection, one request at a time.

Why not aiohttp here: the load generator (`loadgen.py`) runs on the same two cores as the
clusters it measures, and aiohttp's client spent ~120 µs of CPU per request there (its
request and response objects, connector, timeouts, cookie jar): 30 to 60% of a core at a few
thousand requests per second, taken from the servers under test. A closed-loop worker needs
none of that — one connection it owns, one request in flight — so this writes the request
head by hand and reads the answer with a few `StreamReader` calls. It speaks just enough
HTTP/1.1 for minikv's and etcd's HTTP APIs: `Content-Length` or chunked bodies, keep-alive
unless the server says `Connection: close`.

A request that fails in any way (refused, reset, timed out, a malformed answer) closes the
connection: its state is unknown, and the next request opens a new one. It is never sent
again here: a write's outcome is then unknown, and the caller counts an error.
"""

from __future__ import annotations

import asyncio
import contextlib
import urllib.parse
from typing import Final

RESPONSE_HEAD_BYTES_MAX: Final = 64 * 1024
RESPONSE_BODY_BYTES_MAX: Final = 64 * 1024 * 1024


class HttpWireError(Exception):
    """The server's answer is not HTTP/1.x this client can read (the message says why)."""


class HttpConnection:
    """Requests to one `http://host:port` base URL over one kept-alive connection."""

    def __init__(self, base_url: str, *, timeout_s: float) -> None:
        parsed = urllib.parse.urlsplit(base_url)
        if parsed.scheme != "http" or not parsed.hostname or parsed.port is None:
            raise ValueError(f"base URL must be http://host:port, got {base_url!r}")
        self._host = parsed.hostname
        self._port = parsed.port
        self._host_header = f"Host: {parsed.hostname}:{parsed.port}\r\n".encode("ascii")
        self._timeout_s = timeout_s
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def request(
        self, method: str, path: str, body: bytes = b"", *, content_type: str = ""
    ) -> tuple[int, bytes]:
        """Send one request and read its answer: (status, body). Raises OSError (connect,
        reset), TimeoutError (past the timeout) or HttpWireError; the connection is closed
        then."""
        head = b"".join(
            (
                f"{method} {path} HTTP/1.1\r\n".encode("ascii"),
                self._host_header,
                f"Content-Length: {len(body)}\r\n".encode("ascii"),
                f"Content-Type: {content_type}\r\n".encode("ascii") if content_type else b"",
                b"\r\n",
            )
        )
        try:
            async with asyncio.timeout(self._timeout_s):
                if self._writer is None:
                    self._reader, self._writer = await asyncio.open_connection(
                        self._host, self._port, limit=RESPONSE_HEAD_BYTES_MAX
                    )
                assert self._reader is not None
                self._writer.write(head + body if body else head)
                status, answer, keep_alive = await _read_response(self._reader, method)
        except BaseException:
            self._close()
            raise
        if not keep_alive:
            self._close()
        return status, answer

    def _close(self) -> None:
        if self._writer is not None:
            self._writer.close()
        self._reader = self._writer = None

    async def close(self) -> None:
        writer = self._writer
        self._close()
        if writer is not None:
            with contextlib.suppress(OSError):  # already reset by the peer: closed either way
                await writer.wait_closed()


async def _read_response(reader: asyncio.StreamReader, method: str) -> tuple[int, bytes, bool]:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as error:
        raise ConnectionResetError(
            f"the server closed the connection after {len(error.partial)} bytes of an answer"
        ) from None
    except asyncio.LimitOverrunError:
        raise HttpWireError(
            f"the answer's head is longer than {RESPONSE_HEAD_BYTES_MAX} bytes"
        ) from None
    lines = head[:-4].split(b"\r\n")
    parts = lines[0].split(b" ", 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
        raise HttpWireError(f"not an HTTP/1.x status line: {lines[0][:80]!r}")
    status = int(parts[1])
    keep_alive = parts[0] == b"HTTP/1.1"
    length: int | None = None
    chunked = False
    for line in lines[1:]:
        name, sep, value = line.partition(b":")
        if not sep:
            raise HttpWireError(f"malformed header line: {line[:80]!r}")
        name = name.strip().lower()
        value = value.strip()
        if name == b"content-length":
            if not value.isdigit():
                raise HttpWireError(f"bad Content-Length: {value[:40]!r}")
            length = int(value)
        elif name == b"transfer-encoding":
            chunked = value.lower() == b"chunked"
        elif name == b"connection":
            token = value.lower()
            if token == b"close":
                keep_alive = False
            elif token == b"keep-alive":
                keep_alive = True
    if method == "HEAD" or status in (204, 304) or 100 <= status < 200:
        return status, b"", keep_alive
    if chunked:
        return status, await _read_chunked(reader), keep_alive
    if length is not None:
        if length > RESPONSE_BODY_BYTES_MAX:
            raise HttpWireError(f"an answer body of {length} bytes is over the limit")
        return status, await _exactly(reader, length), keep_alive
    return status, await reader.read(RESPONSE_BODY_BYTES_MAX), False  # until the server closes


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    chunks: list[bytes] = []
    total = 0
    while True:
        size_line = await reader.readuntil(b"\r\n")
        size_text = size_line[:-2].split(b";", 1)[0].strip()
        try:
            size = int(size_text, 16)
        except ValueError:
            raise HttpWireError(f"bad chunk size line: {size_line[:40]!r}") from None
        if size == 0:
            # The last chunk; trailer fields may follow, up to an empty line. Read past them.
            line = await reader.readuntil(b"\r\n")
            while line != b"\r\n":
                line = await reader.readuntil(b"\r\n")
            return b"".join(chunks)
        total += size
        if total > RESPONSE_BODY_BYTES_MAX:
            raise HttpWireError(f"a chunked answer body over {RESPONSE_BODY_BYTES_MAX} bytes")
        chunk = await _exactly(reader, size + 2)
        if chunk[-2:] != b"\r\n":
            raise HttpWireError("a chunk does not end with CRLF")
        chunks.append(chunk[:-2])


async def _exactly(reader: asyncio.StreamReader, size: int) -> bytes:
    try:
        return await reader.readexactly(size)
    except asyncio.IncompleteReadError as error:
        raise ConnectionResetError(
            f"the server closed the connection {len(error.partial)} bytes into a "
            f"{size}-byte answer body"
        ) from None
