"""The key routes' own HTTP/1.1 protocol: GET, PUT and DELETE /kv/{key} served without aiohttp.

Why: under 64 clients a node spent about a third of its time in aiohttp's request machinery
(its protocol, router, middleware, Request and Response objects) around gets and puts whose
own work was smaller (docs/benchmarks.md, "The HTTP data plane"). Those three routes are the
data plane and their requests are simple, so this protocol answers them itself and keeps
aiohttp for everything else:

- It takes only the plain case: a request line `GET|PUT|DELETE /kv/<key>[?query] HTTP/1.1`
  in visible ASCII, exactly one Host, header names that are tokens, lines without folding
  or control bytes and within aiohttp's size and count limits, no Transfer-Encoding, Expect
  or Upgrade, at most one Content-Length, and a body on PUT only, within the value limit.
  Stricter than aiohttp, never looser: two parsers must never frame one byte stream
  differently (request smuggling).
- Anything else (another route, HTTP/1.0, a chunked or oversize body, `Expect:
  100-continue`, HEAD, a malformed head) hands the connection to aiohttp at that request's
  first byte: aiohttp's protocol takes over the transport and is given every byte not yet
  served, so it answers that request and every later one on the connection exactly as it
  did before this module existed. A handover is one way and happens only between requests,
  when no answer is owed here, so answers never reorder.

The routes' semantics live in `HttpApi` and are shared with its aiohttp handlers (the same
key decoding, query parsing, deadlines, JSON errors and metric labels); this module is only
the wire: framing, keep-alive, back-pressure and the idle timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import json
import logging
import re
import socket
import time
from collections.abc import Awaitable, Callable
from http import HTTPStatus
from typing import Final, Protocol, cast

from minikv_core.frozen import frozen
from minikv_core.net.errors_map import internal_error_document

logger = logging.getLogger(__name__)

HEAD_BYTES_MAX: Final = 32 * 1024
"""A head (request line and headers) longer than this goes to aiohttp, which refuses it with
its own limits; a head this protocol parses is never larger."""

HEADER_LINE_BYTES_MAX: Final = 8190
HEADERS_MAX: Final = 100
"""Within aiohttp's own limits (`max_field_size`, `max_headers`): a head past either goes to
aiohttp, which answers it as it always did."""

BUFFERED_BYTES_MAX: Final = 4 * 1024 * 1024 + HEAD_BYTES_MAX
"""Reading pauses while more than this waits behind an answer (a client pipelining faster
than the node answers): memory per connection stays bounded. It resumes as soon as the
connection waits for bytes again."""

IDLE_TIMEOUT_S: Final = 75.0
"""A connection that owes no answer and has received nothing for this long is closed: an idle
keep-alive connection, or a request that stopped arriving (a head or body sent slower than
that stalls; one that keeps arriving, however slowly, is never cut)."""

_PREFIXES: Final = (b"GET /kv/", b"PUT /kv/", b"DELETE /kv/")
_PREFIX_BYTES_MAX: Final = max(len(prefix) for prefix in _PREFIXES)
_METHODS: Final = {b"GET": "GET", b"PUT": "PUT", b"DELETE": "DELETE"}
_HEAD_END: Final = b"\r\n\r\n"
# Control bytes other than tab, and a CR or LF that is not part of a CRLF: aiohttp refuses
# such heads (400), so they are left to it.
_BAD_HEAD_BYTES: Final = re.compile(rb"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]|\r(?!\n)|(?<!\r)\n")
_BAD_TARGET_BYTES: Final = re.compile(rb"[^\x21-\x7e]|#|/\.")
_TOKEN: Final = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
"""A header name (RFC 9110 token): anything else is aiohttp's 400."""
_REASONS: Final = {status.value: status.phrase.encode("ascii") for status in HTTPStatus}


@frozen
class KvRequest:
    """One parsed data-plane request; `raw_key` and `raw_query` are still percent-encoded."""

    method: str
    raw_key: str
    raw_query: str
    content_length: int
    close: bool


@frozen
class KvAnswer:
    status: int
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes = b""
    content_type: str | None = None


class KvRoutes(Protocol):
    """What the protocol needs from the API: the limit it enforces while framing, and the
    routes themselves (which never raise: errors are answers)."""

    @property
    def value_size_bytes_max(self) -> int: ...

    def serve_kv(self, request: KvRequest, body: bytes) -> Awaitable[KvAnswer]: ...


def parse_head(head: bytes, value_size_bytes_max: int) -> KvRequest | None:
    """The request if `head` (without its final CRLFCRLF) is one this protocol serves, else
    None (aiohttp serves it)."""
    if _BAD_HEAD_BYTES.search(head) is not None:
        return None
    lines = head.split(b"\r\n")
    parts = lines[0].split(b" ")
    if len(parts) != 3 or parts[2] != b"HTTP/1.1":
        return None
    method = _METHODS.get(parts[0])
    target = parts[1]
    if method is None or not target.startswith(b"/kv/") or len(target) == 4:
        return None
    if _BAD_TARGET_BYTES.search(target) is not None:
        return None
    path, _, query = target.partition(b"?")
    if len(lines) - 1 > HEADERS_MAX:
        return None
    content_length: int | None = None
    hosts = 0
    connection: set[bytes] = set()
    for line in lines[1:]:
        name, colon, value = line.partition(b":")
        if not colon or len(line) > HEADER_LINE_BYTES_MAX or _TOKEN.fullmatch(name) is None:
            return None  # no colon, a bad name (spaces, obs-fold) or a long line: aiohttp's 400
        name = name.lower()
        if name == b"content-length":
            value = value.strip(b" \t")
            if content_length is not None or not value.isdigit() or len(value) > 18:
                return None
            content_length = int(value)
        elif name == b"host":
            hosts += 1
        elif name == b"connection":
            # Every Connection header counts: `close` in any of them closes.
            connection.update(token.strip(b" \t").lower() for token in value.split(b","))
        elif name in (b"transfer-encoding", b"expect", b"upgrade"):
            return None
    if hosts != 1 or b"upgrade" in connection:
        return None  # HTTP/1.1 requires exactly one Host (RFC 9112 §3.2)
    close = b"close" in connection
    length = content_length or 0
    if length and (method != "PUT" or length > value_size_bytes_max):
        return None  # a body on GET/DELETE, or aiohttp's 413 before reading an oversize one
    return KvRequest(method, path[4:].decode("ascii"), query.decode("ascii"), length, close)


_date_cache: list[tuple[int, bytes]] = [(0, b"")]


def _date_line() -> bytes:
    """`Date: <IMF-fixdate>` (RFC 9110 §6.6.1: an origin server with a clock sends it),
    formatted once per second."""
    now = int(time.time())
    second, line = _date_cache[0]
    if second != now:
        line = b"Date: " + email.utils.formatdate(now, usegmt=True).encode("ascii")
        _date_cache[0] = (now, line)
    return line


def internal_error_answer(error: BaseException) -> KvAnswer:
    """The 500 for an exception no layer expected (the caller logs it)."""
    body = json.dumps(internal_error_document(error), separators=(",", ":")).encode("utf-8")
    return KvAnswer(500, (), body, "application/json")


def encode_answer(answer: KvAnswer, close: bool) -> bytes:
    """The status line, headers and body of `answer` (no Content-Length on a 204)."""
    status = answer.status
    lines = [b"HTTP/1.1 %d %s" % (status, _REASONS.get(status, b"Unknown")), _date_line()]
    if answer.content_type is not None:
        lines.append(b"Content-Type: " + answer.content_type.encode("ascii"))
    if status != 204:
        lines.append(b"Content-Length: %d" % len(answer.body))
    for name, value in answer.headers:
        lines.append(name.encode("ascii") + b": " + value.encode("latin-1"))
    if close:
        lines.append(b"Connection: close")
    lines.append(b"\r\n")
    return b"\r\n".join(lines) + answer.body


class KvHttpServer:
    """The protocol factory of one listener, and the set of its connections (for shutdown)."""

    def __init__(
        self,
        routes: KvRoutes,
        hand_over: Callable[[], asyncio.Protocol],
        on_hand_over: Callable[[], None] = lambda: None,
    ) -> None:
        self.routes = routes
        self.hand_over = hand_over
        """Makes aiohttp's protocol for a connection this one gives up."""
        self.on_hand_over = on_hand_over
        """Counts it (the node's `minikv_http_connections_handed_over` metric)."""
        self.connections: set[KvHttpProtocol] = set()
        self.tasks: set[asyncio.Task[None]] = set()
        """Requests being answered (a reference keeps each task alive; shutdown cancels
        those still running after the grace period)."""
        self.handed_over = 0
        self.closing = False

    def __call__(self) -> KvHttpProtocol:
        return KvHttpProtocol(self)

    async def shutdown(self, grace_s: float) -> None:
        """Close idle connections now, busy ones once their answer is written, the rest
        after `grace_s`. New requests are not started once this is called."""
        self.closing = True
        for connection in list(self.connections):
            connection.close_when_idle()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(grace_s):
                while self.connections:
                    await asyncio.sleep(0.01)
        for connection in list(self.connections):
            connection.abort()
        tasks = list(self.tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


class KvHttpProtocol(asyncio.Protocol):
    """One client connection while it carries data-plane requests (see the module doc)."""

    def __init__(self, server: KvHttpServer) -> None:
        self._server = server
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._busy = False
        self._close_after = False
        self._eof = False
        self._reading_paused = False
        self._writing_paused = False
        self._idle: asyncio.TimerHandle | None = None

    # --- asyncio.Protocol -----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's TCP transport is not an asyncio.Transport subclass, only shaped like one.
        self._transport = cast(asyncio.Transport, transport)
        sock = self._transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._server.connections.add(self)
        if self._server.closing:
            self._transport.close()  # accepted while the listener was closing
            return
        self._arm_idle()

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        if self._busy or self._writing_paused:
            if len(self._buffer) > BUFFERED_BYTES_MAX and not self._reading_paused:
                self._reading_paused = True
                self._transport_or_fail().pause_reading()
            return
        self._next()
        if not self._busy and self._transport is not None:
            self._arm_idle()  # bytes arrived: the silence starts again

    def eof_received(self) -> bool:
        # A client that half-closes after its request still gets the answer, then the close.
        self._eof = True
        return self._busy

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_idle()
        self._server.connections.discard(self)
        self._transport = None

    def pause_writing(self) -> None:
        self._writing_paused = True

    def resume_writing(self) -> None:
        self._writing_paused = False
        if not self._busy and self._transport is not None:
            self._next()

    # --- for the server -------------------------------------------------------------------

    def close_when_idle(self) -> None:
        if self._busy:
            self._close_after = True
        elif self._transport is not None:
            self._transport.close()

    def abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()

    # --- requests -------------------------------------------------------------------------

    def _transport_or_fail(self) -> asyncio.Transport:
        assert self._transport is not None
        return self._transport

    def _next(self) -> None:
        """Start the next complete request in the buffer, wait for more bytes, or give the
        connection to aiohttp. Called only when no answer is owed."""
        buffer = self._buffer
        transport = self._transport
        if not buffer or self._server.closing or transport is None or transport.is_closing():
            return
        end = buffer.find(_HEAD_END)
        if end < 0:
            if len(buffer) > HEAD_BYTES_MAX or not self._may_be_ours(buffer):
                self._hand_over()
            else:
                self._wait_for_bytes()
            return
        if end > HEAD_BYTES_MAX:
            self._hand_over()
            return
        request = parse_head(bytes(buffer[:end]), self._server.routes.value_size_bytes_max)
        if request is None:
            self._hand_over()
            return
        start = end + len(_HEAD_END)
        if len(buffer) < start + request.content_length:
            self._wait_for_bytes()  # the rest of the body is on its way
            return
        body = bytes(buffer[start : start + request.content_length])
        del buffer[: start + request.content_length]
        self._cancel_idle()
        self._busy = True
        task = self._loop.create_task(self._serve(request, body))
        tasks = self._server.tasks
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    def _wait_for_bytes(self) -> None:
        """The buffer holds part of a request: read on, even if a long pipeline had paused
        reading (the pause is for bytes queued behind an answer, not for a request's own)."""
        if self._reading_paused and self._transport is not None:
            self._reading_paused = False
            self._transport.resume_reading()

    @staticmethod
    def _may_be_ours(buffer: bytearray) -> bool:
        """False as soon as the first bytes rule out a data-plane request line: such a
        request goes to aiohttp without waiting for its whole head."""
        start = bytes(buffer[:_PREFIX_BYTES_MAX])
        return any(prefix.startswith(start[: len(prefix)]) for prefix in _PREFIXES)

    async def _serve(self, request: KvRequest, body: bytes) -> None:
        try:
            answer = await self._server.routes.serve_kv(request, body)
        except Exception as error:  # serve_kv answers errors itself; this is a bug
            logger.exception("HTTP %s /kv/%s failed", request.method, request.raw_key)
            answer = internal_error_answer(error)
        self._answered(request, answer)

    def _answered(self, request: KvRequest, answer: KvAnswer) -> None:
        self._busy = False
        transport = self._transport
        if transport is None or transport.is_closing():
            return  # the client left; the write (if any) already took effect
        close = request.close or self._close_after or self._eof or self._server.closing
        transport.write(encode_answer(answer, close))
        if close:
            transport.close()
            return
        if self._reading_paused:
            self._reading_paused = False
            transport.resume_reading()
        if not self._writing_paused:
            self._next()
        if not self._busy and self._transport is not None:  # None: handed over to aiohttp
            self._arm_idle()

    def _hand_over(self) -> None:
        """aiohttp serves this connection from the first byte not yet served, for good."""
        transport = self._transport_or_fail()
        self._cancel_idle()
        self._server.connections.discard(self)
        self._server.handed_over += 1
        self._server.on_hand_over()
        protocol = self._server.hand_over()
        data = bytes(self._buffer)
        self._buffer.clear()
        self._transport = None
        transport.set_protocol(protocol)
        protocol.connection_made(transport)
        if self._reading_paused:
            transport.resume_reading()
        if data:
            protocol.data_received(data)

    # --- idle timeout ---------------------------------------------------------------------

    def _arm_idle(self) -> None:
        self._cancel_idle()
        self._idle = self._loop.call_later(IDLE_TIMEOUT_S, self._idle_expired)

    def _cancel_idle(self) -> None:
        if self._idle is not None:
            self._idle.cancel()
            self._idle = None

    def _idle_expired(self) -> None:
        self._idle = None
        if not self._busy and self._transport is not None:
            self._transport.close()
