"""The node's HTTP API: keys and values, admin and fault injection, health, metrics.

Every connection starts on the data-plane protocol of `http_kv_protocol.py`, which answers
plain `GET`/`PUT`/`DELETE /kv/{key}` requests itself (through `serve_kv`, the same code as the
aiohttp handlers) and hands the connection to aiohttp at the first request of any other kind.

Routes (every error is JSON `{"error": "<name>", "detail": "<what was wrong>"}`, with the
status of `errors_map.ERROR_TABLE`):

    PUT    /kv/{key}        raw body is the value -> 204 once committed on a quorum and
                            applied; `x-minikv-version` carries the new version
    GET    /kv/{key}        -> 200 raw value (`x-minikv-version`), 404 when absent;
                            `?consistency=stale` reads this replica's applied state
    DELETE /kv/{key}        -> 204 when the key existed, 404 when it did not
    GET    /kv?prefix=&start=&end=&limit=&consistency=
                            -> 200 {"items": [{"key", "value", "version"}], "more": bool}
    POST   /txn {"compare": [...], "success": [...], "failure": [...]}
                            -> 200 {"succeeded": bool, "results": [...]} (cluster/txn.py has
                            the document; 413 over the limits; 503 + Retry-After when
                            conflicts persist to the deadline: nothing applied, retry)
    GET    /admin/status | /admin/shards | /admin/wal | /admin/sstables   -> JSON documents
    POST   /admin/fault {"drop_to": [ids], "drop_from": [ids], "delay_ms": n, "loss": p}
    DELETE /admin/fault     heal
    POST   /admin/transfer-leader {"shard": s, "node": n}
    POST   /admin/snapshot {"shards": [..]} | /admin/compact {"shards": [..]} (body optional)
    POST   /admin/repair {"dry_run", "dead": [ids], "wait"} | /admin/rebalance {"dry_run", "wait"}
           | /admin/remove-node {"node": n, "dry_run", "wait"} | /admin/verify {"wait"}
    GET    /admin/maintenance[?id=]   the latest (or named) maintenance job and its steps
    GET    /metrics         Prometheus text
    GET    /health/live     200 while the process serves
    GET    /health/ready    200, or 503 {"error": "not_ready", "detail": reason}

Keys in paths and query parameters are percent-encoded bytes: `/kv/a%2Fb` is the key `a/b`
and `%FF` the byte 0xFF, so any binary key is addressable (the raw path is decoded, never a
UTF-8 reading of it). Every data request takes `?timeout_ms=` (default 5000, at most 60000);
a request never hangs past its deadline: the answer is then 504.

Scan encoding: `key` and `value` are JSON strings when the bytes are valid UTF-8; otherwise
the item carries `key_b64` / `value_b64` (standard base64) instead, so a binary value is never
mangled and a text value stays readable. `more: true` means `limit` (or the 4 MiB answer
bound) cut the answer: resume with `start` = the last key followed by the byte 0x00.

Limits: keys 1..4096 bytes (413 above), values up to the node's `value_size_bytes_max`
(default 1 MiB; 413 above). The body is read with that cap and never buffered past it; a
`Content-Length` over the cap is refused before reading. 503 answers carry `Retry-After`
(seconds) and, when a leader is known, `x-minikv-leader` (its node id).

`/admin/*` routes (status, fault injection, leadership, snapshots) answer 403 to non-loopback
clients unless the node runs with `admin_allow_remote`; `/metrics` and `/health/*` answer
everyone (scrapers and load balancers live elsewhere).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import re
import socket
import time
import urllib.parse
from collections.abc import Awaitable, Callable, Mapping
from http import HTTPStatus
from typing import Any, Final

from aiohttp import web
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest

from minikv_core.cluster.service import (
    Consistency,
    InvalidRequestError,
    NodeService,
    NotFoundError,
    ScanRequest,
    ScanResult,
    ServiceError,
    TooLargeError,
    UnavailableError,
    VersionedValue,
)
from minikv_core.cluster.txn import parse_document, response_document
from minikv_core.net import api, limits
from minikv_core.net.api import ApiConfig
from minikv_core.net.errors_map import (
    LEADER_HINT_KEY,
    UNAPPLIED_KEY,
    VERSION_HEADER,
    internal_error_document,
    mapping_for,
    retry_after_header_s,
)
from minikv_core.net.http_kv_protocol import (
    KvAnswer,
    KvHttpServer,
    KvRequest,
    internal_error_answer,
)
from minikv_core.net.maintenance_rpc import MaintenanceEndpoint
from minikv_core.net.metrics import CONTENT_TYPE, UNMATCHED_ROUTE, NodeMetrics

logger = logging.getLogger(__name__)

KV_PREFIX: Final = "/kv/"
KEY_ROUTE: Final = r"/kv/{key:[\s\S]+}"
"""Any key, newlines and slashes included (`.` would not match a decoded newline byte)."""
KEY_ROUTE_LABEL: Final = "/kv/{key}"
"""KEY_ROUTE's metric label (aiohttp's canonical form of it), for requests either protocol
serves."""
_JSON: Final = "application/json"
_OCTETS: Final = "application/octet-stream"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket on `host:port` (port 0: any free port). Raises OSError."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    family, kind, protocol, _, address = infos[0]
    sock = socket.socket(family, kind, protocol)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(limits.HTTP_LISTEN_BACKLOG)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def encode_bytes_field(name: str, data: bytes, into: dict[str, Any]) -> None:
    """`into[name] = text` when `data` is valid UTF-8, else `into[name + "_b64"] = base64`."""
    try:
        into[name] = data.decode("utf-8")
    except UnicodeDecodeError:
        into[f"{name}_b64"] = base64.b64encode(data).decode("ascii")


def decode_bytes_field(item: Mapping[str, Any], name: str) -> bytes:
    """The inverse of `encode_bytes_field` (for clients of the HTTP API and the tests)."""
    if name in item:
        return str(item[name]).encode("utf-8")
    try:
        return base64.b64decode(str(item[f"{name}_b64"]), validate=True)
    except (KeyError, binascii.Error) as error:
        raise ValueError(f"item has neither {name!r} nor a valid {name}_b64: {item!r}") from error


def scan_document(result: ScanResult) -> dict[str, Any]:
    items: list[dict[str, Any]] = []
    for scanned in result.items:
        item: dict[str, Any] = {}
        encode_bytes_field("key", scanned.key, item)
        encode_bytes_field("value", scanned.value, item)
        item["version"] = scanned.version
        items.append(item)
    return {"items": items, "more": result.more}


def _json_response(
    status: int, body: Mapping[str, Any], headers: Mapping[str, str] | None = None
) -> web.Response:
    return web.Response(
        status=status,
        body=_json_bytes(body),
        content_type=_JSON,
        headers=headers,
    )


def _json_bytes(body: Mapping[str, Any]) -> bytes:
    return json.dumps(body, separators=(",", ":")).encode("utf-8")


def _error_parts(error: ServiceError) -> tuple[int, dict[str, str], dict[str, str]]:
    """Status, headers and JSON document of `error`'s answer, whichever protocol sends it."""
    mapping = mapping_for(error)
    headers: dict[str, str] = {}
    if isinstance(error, UnavailableError):
        headers["Retry-After"] = retry_after_header_s(error)
        if error.leader_hint > 0:
            headers[LEADER_HINT_KEY] = str(error.leader_hint)
        if error.unapplied:
            headers[UNAPPLIED_KEY] = "1"
    return mapping.http_status, headers, {"error": mapping.name, "detail": str(error)}


def _told_as_write(error: ServiceError) -> ServiceError:
    """A 503 of a write that may have applied says so in its detail: a curl user who reads
    "no leader" and sends the write again could land it after later writes."""
    if not isinstance(error, UnavailableError) or error.unapplied:
        return error
    return UnavailableError(
        f"{error}; the write may have been applied (its outcome is unknown): read the key "
        "to see whether it did before sending it again",
        leader_hint=error.leader_hint,
        retry_after_s=error.retry_after_s,
    )


def error_response(error: ServiceError) -> web.Response:
    status, headers, document = _error_parts(error)
    return _json_response(status, document, headers)


def _error_answer(error: ServiceError) -> KvAnswer:
    status, headers, document = _error_parts(error)
    return KvAnswer(status, tuple(headers.items()), _json_bytes(document), _JSON)


async def _given(body: bytes) -> bytes:
    return body


def _query(request: web.Request, allowed: tuple[str, ...]) -> dict[str, bytes]:
    return parse_query(request.rel_url.raw_query_string, allowed)


_BAD_PERCENT: Final = re.compile(r"%(?![0-9A-Fa-f]{2})")


def percent_decoded(raw: str, what: str) -> bytes:
    """The bytes `raw` percent-encodes; InvalidRequestError when a `%` is not followed by two
    hex digits. Why refuse: `unquote_to_bytes` keeps such a `%` as is, so `/kv/a%zz` wrote
    the key `a%zz`, which `/kv/a%25zz` also names: a client's encoding bug became a key
    that only looks right, instead of the 400 malformed input gets."""
    bad = _BAD_PERCENT.search(raw)
    if bad is not None:
        at = bad.start()
        raise InvalidRequestError(
            f"{what} is not valid percent-encoding: {raw[at : at + 3]!r} at character {at} "
            "is not '%' and two hex digits (a '%' itself is '%25')"
        )
    return urllib.parse.unquote_to_bytes(raw)


def parse_query(raw: str, allowed: tuple[str, ...]) -> dict[str, bytes]:
    """Query parameters as raw bytes (percent-decoded, `+` is a space); unknown or repeated
    names are refused, so a typo (`limt=`) is an error instead of a silent default."""
    params: dict[str, bytes] = {}
    if not raw:
        return params
    for part in raw.split("&"):
        if not part:
            continue
        name_raw, _, value_raw = part.partition("=")
        name = urllib.parse.unquote_plus(name_raw)
        if name not in allowed:
            known = ", ".join(allowed) if allowed else "none"
            raise InvalidRequestError(f"unknown query parameter {name!r}; known: {known}")
        if name in params:
            raise InvalidRequestError(f"query parameter {name!r} given more than once")
        params[name] = percent_decoded(value_raw.replace("+", " "), f"query parameter {name!r}")
    return params


class _JsonErrorsRequestHandler(RequestHandler):
    """aiohttp's connection protocol, but a request its parser refuses (a bad request line,
    header or Content-Length, too long a line) gets the API's JSON error and a debug log line.
    Why: aiohttp answered those in text/plain and logged each at ERROR with a traceback, so
    any client could fill a node's log with tracebacks of its own malformed bytes. Server
    errors (5xx) keep aiohttp's handling."""

    __slots__ = ()

    def handle_error(
        self,
        request: BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if status >= 500:
            return super().handle_error(request, status, exc, message)
        detail = " ".join((message or str(exc) or HTTPStatus(status).phrase).split())
        logger.debug("malformed HTTP request from %s: %s", request.remote, detail)
        if request.writer.output_size > 0:
            raise ConnectionError("an answer is being sent already; the connection closes")
        name = "invalid_request" if status == 400 else "http_error"
        response = _json_response(status, {"error": name, "detail": detail[:1000]})
        response.force_close()
        return response


async def _body_chunk(request: web.Request) -> bytes:
    """The next bytes of the request's body (b"" at its end); InvalidRequestError (400, no
    log) when the client breaks it: a malformed chunk, or the connection lost mid-body. Why:
    those escaped the handlers as RequestPayloadError or ConnectionResetError, each logged
    at ERROR with a traceback (and answered 500): any client could write tracebacks into the
    node's log by hanging up halfway through a chunked PUT."""
    try:
        return await request.content.readany()
    except (web.RequestPayloadError, ConnectionResetError) as error:
        raise InvalidRequestError(f"the request body could not be read: {error}") from None


def _check_txn_declared(declared: int | None) -> None:
    """TooLargeError when a transaction's `Content-Length` is over its limit: one check for
    the answer to `Expect: 100-continue` and for the handler."""
    if declared is not None and declared > limits.TXN_BODY_BYTES_MAX:
        raise TooLargeError(
            f"the transaction body is {declared} bytes; the limit is "
            f"{limits.TXN_BODY_BYTES_MAX} bytes"
        )


class ExpectationFailedError(Exception):
    """An `Expect` header other than HTTP/1.1's `100-continue` (answered 417)."""


def _json_body(data: bytes | bytearray) -> Any:
    """A request body's JSON; InvalidRequestError when it is not JSON, or nests deeper than
    the decoder's recursion allows (`[[[...` fits in any body limit and would otherwise be a
    RecursionError, a 500)."""
    try:
        return json.loads(data)
    except (UnicodeDecodeError, ValueError) as error:
        raise InvalidRequestError(f"the body is not valid JSON: {error}") from None
    except RecursionError:
        raise InvalidRequestError("the body is not valid JSON: it nests too deeply") from None


def _text(params: Mapping[str, bytes], name: str) -> str | None:
    value = params.get(name)
    if value is None:
        return None
    try:
        return value.decode("ascii")
    except UnicodeDecodeError:
        raise InvalidRequestError(f"{name} must be ASCII, got {value!r}") from None


def _consistency(params: Mapping[str, bytes]) -> Consistency:
    text = _text(params, "consistency")
    if text is None:
        return Consistency.LINEARIZABLE
    try:
        return Consistency(text)
    except ValueError:
        choices = ", ".join(c.value for c in Consistency)
        raise InvalidRequestError(f"consistency must be one of {choices}, got {text!r}") from None


class HttpApi:
    """The aiohttp application of one node, and its listener.

    Lifecycle: `await start(host, port)` (returns the bound port; port 0 picks a free one),
    then `await stop()` once: it stops accepting, lets in-flight requests finish (up to
    API_SHUTDOWN_GRACE_S), then closes.
    """

    def __init__(
        self,
        service: NodeService,
        config: ApiConfig,
        metrics: NodeMetrics,
        maintenance: MaintenanceEndpoint | None = None,
    ) -> None:
        self._service = service
        self._maintenance = maintenance
        self._config = config
        self._metrics = metrics
        self._runner: web.AppRunner | None = None
        self._listener: asyncio.Server | None = None
        self._kv_server: KvHttpServer | None = None
        self.app = self._build()

    # --- lifecycle --------------------------------------------------------------------------

    async def start(self, host: str, port: int) -> int:
        """Bind `host:port` and serve; returns the bound port. Raises OSError (in use)."""
        return await self.start_on(bind_socket(host, port))

    async def start_on(self, sock: socket.socket) -> int:
        """Serve on an already bound socket (the server binds before it opens the node, so a
        port in use fails before any data is touched); returns its port."""
        assert self._runner is None, "start() called twice"
        runner = web.AppRunner(
            self.app,
            access_log=None,
            # A body is the value's bytes as sent, whichever protocol reads it: aiohttp would
            # gunzip a `Content-Encoding: gzip` body (and answer 500 to a bad one), so the same
            # PUT stored different values over HTTP/1.0 or chunked than over the data plane.
            auto_decompress=False,
            max_line_size=limits.HTTP_REQUEST_LINE_BYTES_MAX,
            shutdown_timeout=limits.API_SHUTDOWN_GRACE_S,
        )
        await runner.setup()
        aiohttp_server = runner.server
        assert aiohttp_server is not None

        # Every connection starts on the data-plane protocol, which gives it to aiohttp's at
        # the first request it does not serve itself (http_kv_protocol.py).
        def aiohttp_protocol() -> asyncio.Protocol:
            protocol = aiohttp_server()
            protocol.__class__ = _JsonErrorsRequestHandler  # same slots: only methods change
            return protocol

        kv_server = KvHttpServer(self, aiohttp_protocol, self._metrics.http_handovers.inc)
        try:
            self._listener = await asyncio.get_running_loop().create_server(
                kv_server, sock=sock, backlog=limits.HTTP_LISTEN_BACKLOG
            )
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        self._kv_server = kv_server
        return int(sock.getsockname()[1])

    async def stop(self) -> None:
        """Stop accepting, then let both protocols' in-flight requests finish (up to
        API_SHUTDOWN_GRACE_S, together) and close every connection."""
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.close()
        runner, self._runner = self._runner, None
        kv_server, self._kv_server = self._kv_server, None
        waits: list[Awaitable[None]] = []
        if kv_server is not None:
            waits.append(kv_server.shutdown(limits.API_SHUTDOWN_GRACE_S))
        if runner is not None:
            waits.append(runner.cleanup())
        await asyncio.gather(*waits)
        if listener is not None:
            await listener.wait_closed()

    @property
    def value_size_bytes_max(self) -> int:
        return self._config.value_size_bytes_max

    @property
    def connections_handed_over(self) -> int:
        """Connections the data-plane protocol gave to aiohttp since start."""
        return 0 if self._kv_server is None else self._kv_server.handed_over

    # --- routing ----------------------------------------------------------------------------

    def _build(self) -> web.Application:
        # Bodies are read by hand with their own caps (values, admin JSON); this bounds any
        # path that would call request.read() anyway.
        app = web.Application(
            middlewares=[self._middleware], client_max_size=limits.ADMIN_BODY_BYTES_MAX
        )
        router = app.router
        router.add_get("/kv", self._scan, allow_head=False)
        router.add_route("*", "/kv/", self._empty_key)
        router.add_get(KEY_ROUTE, self._get)
        router.add_put(KEY_ROUTE, self._put, expect_handler=self._expect_continue)
        router.add_delete(KEY_ROUTE, self._delete)
        router.add_post("/txn", self._txn, expect_handler=self._expect_continue)
        admin = self._admin_only
        router.add_get("/admin/status", admin(self._status), allow_head=False)
        router.add_get("/admin/shards", admin(self._shards), allow_head=False)
        router.add_get("/admin/wal", admin(self._wal), allow_head=False)
        router.add_get("/admin/sstables", admin(self._sstables), allow_head=False)
        router.add_post("/admin/fault", admin(self._set_fault))
        router.add_delete("/admin/fault", admin(self._clear_fault))
        router.add_post("/admin/transfer-leader", admin(self._transfer_leader))
        router.add_post("/admin/snapshot", admin(self._snapshot))
        router.add_post("/admin/compact", admin(self._compact))
        if self._maintenance is not None:
            for operation in ("repair", "rebalance", "remove-node", "verify"):
                router.add_post(f"/admin/{operation}", admin(self._maintain(operation)))
            router.add_get("/admin/maintenance", admin(self._maintenance_job), allow_head=False)
        router.add_get("/metrics", self._render_metrics, allow_head=False)
        router.add_get("/health/live", self._live, allow_head=False)
        router.add_get("/health/ready", self._ready, allow_head=False)
        return app

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        started_s = time.perf_counter()
        resource = request.match_info.route.resource
        route = resource.canonical if resource is not None else UNMATCHED_ROUTE
        response: web.StreamResponse
        try:
            response = await handler(request)
        except ServiceError as error:
            writes = (request.method != "GET" and request.path.startswith(KV_PREFIX)) or (
                request.method == "POST" and request.path == "/txn"
            )
            response = error_response(_told_as_write(error) if writes else error)
        except web.HTTPMethodNotAllowed as error:
            allow = ", ".join(sorted(error.allowed_methods))
            response = _json_response(
                405,
                {
                    "error": "method_not_allowed",
                    "detail": f"{request.method} is not allowed on {request.path}; "
                    f"allowed: {allow}",
                },
                {"Allow": allow},
            )
        except web.HTTPNotFound:
            response = _json_response(
                404, {"error": "no_route", "detail": f"no route {request.method} {request.path}"}
            )
        except web.HTTPException as error:
            response = _json_response(
                error.status, {"error": "http_error", "detail": error.reason or str(error)}
            )
        except Exception as error:
            logger.exception("HTTP %s %s failed", request.method, request.path)
            response = _json_response(500, internal_error_document(error))
        self._metrics.observe("http", route, str(response.status), started_s)
        return response

    async def _expect_continue(self, request: web.Request) -> web.StreamResponse | None:
        """`Expect: 100-continue` on PUT /kv/{key} and POST /txn: the final answer at once when
        the declared body is over its limit, else `100 Continue`. Why: aiohttp's default
        handler sent 100 Continue for any body, so a client (curl sends the header for large
        uploads) sent megabytes the node then refused with the 413 it could have given first
        (RFC 9110 §10.1.1). Runs before the middleware, so it answers and counts by itself."""
        started_s = time.perf_counter()
        declared = request.content_length
        expect = request.headers.get("Expect", "")
        try:
            if expect.lower() != "100-continue" or request.version != (1, 1):
                raise ExpectationFailedError(
                    f"Expect: {expect[:64]!r} is not supported; send 'Expect: 100-continue' "
                    "with HTTP/1.1, or no Expect"
                )
            if request.path == "/txn":
                _check_txn_declared(declared)
            elif declared is not None:
                api.check_value_size(declared, self._config)
        except ExpectationFailedError as error:
            response = _json_response(417, {"error": "expectation_failed", "detail": str(error)})
        except ServiceError as error:
            response = error_response(error)
        else:
            await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            request.writer.output_size = 0  # as aiohttp's own handler: not the answer's bytes
            return None
        resource = request.match_info.route.resource
        route = resource.canonical if resource is not None else UNMATCHED_ROUTE
        self._metrics.observe("http", route, str(response.status), started_s)
        return response

    def _admin_only(self, handler: Handler) -> Handler:
        async def guarded(request: web.Request) -> web.StreamResponse:
            if not self._config.admin_allow_remote and not api.is_loopback(request.remote):
                return _json_response(
                    403,
                    {
                        "error": "forbidden",
                        "detail": f"{request.path} answers loopback clients only "
                        "(start the node with admin_allow_remote to change this)",
                    },
                )
            return await handler(request)

        return guarded

    # --- helpers ----------------------------------------------------------------------------

    def _key(self, raw_key: str) -> bytes:
        key = percent_decoded(raw_key, "the key")
        api.check_key(key, self._config)
        return key

    @staticmethod
    def _raw_key(request: web.Request) -> str:
        raw_path = request.rel_url.raw_path
        assert raw_path.startswith(KV_PREFIX), raw_path
        return raw_path[len(KV_PREFIX) :]

    def _deadline(self, params: Mapping[str, bytes]) -> float:
        text = _text(params, "timeout_ms")
        timeout_ms = (
            self._config.request_timeout_ms_default if text is None else api.parse_timeout_ms(text)
        )
        return api.deadline_after_ms(timeout_ms)

    async def _read_body(self, request: web.Request) -> bytes:
        """The value, refused (413) as soon as it is known to exceed the value limit: from
        `Content-Length` before reading, or while reading a chunked body."""
        limit_bytes = self._config.value_size_bytes_max
        declared = request.content_length
        if declared is not None:
            api.check_value_size(declared, self._config)
        chunks: list[bytes] = []
        size = 0
        while True:
            chunk = await _body_chunk(request)
            if not chunk:
                break
            size += len(chunk)
            if size > limit_bytes:
                api.check_value_size(size, self._config)
            chunks.append(chunk)
        return b"".join(chunks)

    async def _read_json(self, request: web.Request, deadline: float) -> dict[str, Any]:
        """The admin body's JSON object, read by `deadline` (504 after it: a client that stops
        sending its body must not hold the handler, and a graceful stop, past it)."""
        return await api.call_with_deadline(
            self._read_json_body(request), deadline, f"{request.path}: reading the body"
        )

    async def _read_json_body(self, request: web.Request) -> dict[str, Any]:
        declared = request.content_length
        if declared is not None and declared > limits.ADMIN_BODY_BYTES_MAX:
            raise InvalidRequestError(
                f"the body is {declared} bytes; admin bodies are at most "
                f"{limits.ADMIN_BODY_BYTES_MAX} bytes"
            )
        data = bytearray()
        while True:
            chunk = await _body_chunk(request)
            if not chunk:
                break
            data += chunk
            if len(data) > limits.ADMIN_BODY_BYTES_MAX:
                raise InvalidRequestError(
                    f"admin bodies are at most {limits.ADMIN_BODY_BYTES_MAX} bytes"
                )
        if not data.strip():
            return {}
        parsed = _json_body(data)
        if not isinstance(parsed, dict):
            raise InvalidRequestError(
                f"the body must be a JSON object, got {type(parsed).__name__}"
            )
        return parsed

    # --- data -------------------------------------------------------------------------------

    async def _empty_key(self, request: web.Request) -> web.StreamResponse:
        raise InvalidRequestError("the key is empty: use /kv/{key} with a percent-encoded key")

    # The three key routes, for both protocols: aiohttp's handlers below and `serve_kv`.

    async def _kv_get(self, raw_key: str, raw_query: str) -> VersionedValue:
        key = self._key(raw_key)
        params = parse_query(raw_query, ("consistency", "timeout_ms"))
        deadline = self._deadline(params)
        consistency = _consistency(params)
        return await api.call_with_deadline(
            self._service.get(key, consistency, deadline), deadline, "get"
        )

    async def _kv_put(
        self, raw_key: str, raw_query: str, read_body: Callable[[float], Awaitable[bytes]]
    ) -> int:
        """`read_body(deadline)` reads the value (by the request's deadline)."""
        key = self._key(raw_key)
        params = parse_query(raw_query, ("timeout_ms",))
        deadline = self._deadline(params)
        value = await read_body(deadline)
        return await api.call_with_deadline(
            self._service.put(key, value, deadline), deadline, "put"
        )

    async def _kv_delete(self, raw_key: str, raw_query: str) -> None:
        key = self._key(raw_key)
        params = parse_query(raw_query, ("timeout_ms",))
        deadline = self._deadline(params)
        existed = await api.call_with_deadline(
            self._service.delete(key, deadline), deadline, "delete"
        )
        if not existed:
            raise NotFoundError("the key does not exist")

    async def serve_kv(self, request: KvRequest, body: bytes) -> KvAnswer:
        """A key route's answer for the data-plane protocol (http_kv_protocol.py): what the
        aiohttp handlers and `_middleware` answer for the same request, errors included."""
        started_s = time.perf_counter()
        answer: KvAnswer
        try:
            if request.method == "GET":
                found = await self._kv_get(request.raw_key, request.raw_query)
                headers = ((VERSION_HEADER, str(found.version)),)
                answer = KvAnswer(200, headers, found.value, _OCTETS)
            elif request.method == "PUT":
                raw_key, raw_query = request.raw_key, request.raw_query
                version = await self._kv_put(raw_key, raw_query, lambda _: _given(body))
                answer = KvAnswer(204, ((VERSION_HEADER, str(version)),))
            else:
                await self._kv_delete(request.raw_key, request.raw_query)
                answer = KvAnswer(204)
        except ServiceError as error:
            answer = _error_answer(_told_as_write(error) if request.method != "GET" else error)
        except Exception as error:
            logger.exception("HTTP %s /kv/%s failed", request.method, request.raw_key)
            answer = internal_error_answer(error)
        self._metrics.observe("http", KEY_ROUTE_LABEL, str(answer.status), started_s)
        return answer

    async def _get(self, request: web.Request) -> web.StreamResponse:
        found = await self._kv_get(self._raw_key(request), request.rel_url.raw_query_string)
        return web.Response(
            status=200,
            body=found.value,
            content_type=_OCTETS,
            headers={VERSION_HEADER: str(found.version)},
        )

    async def _put(self, request: web.Request) -> web.StreamResponse:
        version = await self._kv_put(
            self._raw_key(request),
            request.rel_url.raw_query_string,
            # By the deadline: a client that stops sending its body (chunked, or HTTP/1.0)
            # must not hold the handler, and a graceful stop, past it: it gets its 504.
            lambda deadline: api.call_with_deadline(
                self._read_body(request), deadline, "put: reading the value"
            ),
        )
        return web.Response(status=204, headers={VERSION_HEADER: str(version)})

    async def _delete(self, request: web.Request) -> web.StreamResponse:
        await self._kv_delete(self._raw_key(request), request.rel_url.raw_query_string)
        return web.Response(status=204)

    async def _scan(self, request: web.Request) -> web.StreamResponse:
        params = _query(request, ("prefix", "start", "end", "limit", "consistency", "timeout_ms"))
        deadline = self._deadline(params)
        limit = api.parse_scan_limit(_text(params, "limit"))
        bounds = {name: params.get(name, b"") for name in ("prefix", "start", "end")}
        for name, value in bounds.items():
            api.check_scan_bound(name, value, self._config)
        scan = ScanRequest(
            prefix=bounds["prefix"],
            start=bounds["start"],
            end=bounds["end"],
            limit=limit,
            consistency=_consistency(params),
        )
        result = await api.call_with_deadline(self._service.scan(scan, deadline), deadline, "scan")
        return _json_response(200, scan_document(api.cut_scan(result)))

    @staticmethod
    async def _read_txn_body(request: web.Request) -> bytearray:
        data = bytearray()
        while chunk := await _body_chunk(request):
            data += chunk
            if len(data) > limits.TXN_BODY_BYTES_MAX:
                raise TooLargeError(
                    f"the transaction body is over the limit of {limits.TXN_BODY_BYTES_MAX} bytes"
                )
        return data

    async def _txn(self, request: web.Request) -> web.StreamResponse:
        params = _query(request, ("timeout_ms",))
        deadline = self._deadline(params)
        _check_txn_declared(request.content_length)
        data = await api.call_with_deadline(
            self._read_txn_body(request), deadline, "txn: reading the body"
        )
        document = _json_body(data)
        try:
            txn = parse_document(
                document,
                key_size_bytes_max=self._config.key_size_bytes_max,
                value_size_bytes_max=self._config.value_size_bytes_max,
            )
        except UnicodeEncodeError as error:
            # JSON may escape a lone surrogate ("\ud800"), which no UTF-8 key or value has.
            raise InvalidRequestError(
                f"the transaction holds a string that is not valid Unicode "
                f"({error.object[error.start : error.end]!r}: {error.reason}); "
                "use key_b64 / value_b64 for bytes that are not UTF-8"
            ) from None
        response = await api.call_with_deadline(self._service.txn(txn, deadline), deadline, "txn")
        return _json_response(200, response_document(response))

    # --- admin ------------------------------------------------------------------------------

    async def _status(self, request: web.Request) -> web.StreamResponse:
        _query(request, ())
        return _json_response(200, self._service.status().body)

    async def _shards(self, request: web.Request) -> web.StreamResponse:
        _query(request, ())
        return _json_response(200, self._service.shard_map().body)

    async def _wal(self, request: web.Request) -> web.StreamResponse:
        _query(request, ())
        return _json_response(200, self._service.wal().body)

    async def _sstables(self, request: web.Request) -> web.StreamResponse:
        _query(request, ())
        return _json_response(200, self._service.sstables().body)

    async def _set_fault(self, request: web.Request) -> web.StreamResponse:
        _query(request, ())
        fault = api.parse_fault(await self._read_json(request, self._deadline({})))
        self._service.set_fault(fault)
        return _json_response(200, {"fault": api.fault_document(fault)})

    async def _clear_fault(self, request: web.Request) -> web.StreamResponse:
        _query(request, ())
        self._service.clear_fault()
        return _json_response(200, {"fault": None})

    async def _transfer_leader(self, request: web.Request) -> web.StreamResponse:
        params = _query(request, ("timeout_ms",))
        deadline = self._deadline(params)
        body = await self._read_json(request, deadline)
        unknown = sorted(set(body) - {"shard", "node"})
        if unknown:
            raise InvalidRequestError(f"unknown field(s) {', '.join(unknown)}; known: shard, node")
        shard = _non_negative_int(body, "shard")
        node = _non_negative_int(body, "node")
        if node == 0:
            raise InvalidRequestError("node must be a positive node id")
        await api.call_with_deadline(
            self._service.transfer_leader(shard, node, deadline), deadline, "transfer-leader"
        )
        return _json_response(200, {"shard": shard, "leader": node})

    def _maintain(self, route: str) -> Handler:
        """POST /admin/<operation>: start a maintenance job on the meta leader (forwarded
        there) and answer its document; `"wait": true` in the body waits for the job up to
        the request's deadline (`?timeout_ms=`, at most 60 s), following it to the next meta
        leader if the leadership moves meanwhile; `"dry_run": true` answers the plan without
        doing anything."""
        operation = route.replace("-", "_")

        async def handler(request: web.Request) -> web.StreamResponse:
            assert self._maintenance is not None
            params = _query(request, ("timeout_ms",))
            deadline = self._deadline(params)
            body = await self._read_json(request, deadline)
            document = await api.call_with_deadline(
                self._maintenance.operate(operation, body, deadline), deadline, route
            )
            return _json_response(200, document)

        return handler

    async def _maintenance_job(self, request: web.Request) -> web.StreamResponse:
        """GET /admin/maintenance[?id=]: the latest (or the named) maintenance job."""
        assert self._maintenance is not None
        params = _query(request, ("timeout_ms", "id"))
        deadline = self._deadline(params)
        args = {"id": params["id"].decode(errors="replace")} if "id" in params else {}
        document = await api.call_with_deadline(
            self._maintenance.operate("job", args, deadline), deadline, "maintenance"
        )
        return _json_response(200, document)

    async def _snapshot(self, request: web.Request) -> web.StreamResponse:
        params = _query(request, ("timeout_ms",))
        deadline = self._deadline(params)
        shards = _shard_list(await self._read_json(request, deadline))
        document = await api.call_with_deadline(
            self._service.snapshot(shards, deadline), deadline, "snapshot"
        )
        return _json_response(200, document.body)

    async def _compact(self, request: web.Request) -> web.StreamResponse:
        params = _query(request, ("timeout_ms",))
        deadline = self._deadline(params)
        shards = _shard_list(await self._read_json(request, deadline))
        document = await api.call_with_deadline(
            self._service.compact(shards, deadline), deadline, "compact"
        )
        return _json_response(200, document.body)

    async def _render_metrics(self, request: web.Request) -> web.StreamResponse:
        _query(request, ())
        body = self._metrics.render()
        response = web.Response(status=200, body=body)
        response.headers["Content-Type"] = CONTENT_TYPE
        return response

    # --- health -----------------------------------------------------------------------------

    async def _live(self, request: web.Request) -> web.StreamResponse:
        return _json_response(200, {"status": "live"})

    async def _ready(self, request: web.Request) -> web.StreamResponse:
        report = self._service.readiness()
        if report.ready:
            return _json_response(200, {"status": "ready"})
        return _json_response(503, {"error": "not_ready", "detail": report.reason})


def _non_negative_int(body: Mapping[str, Any], name: str) -> int:
    value = body.get(name)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InvalidRequestError(f"{name} must be a non-negative integer, got {value!r}")
    return value


def _shard_list(body: Mapping[str, Any]) -> list[int] | None:
    unknown = sorted(set(body) - {"shards"})
    if unknown:
        raise InvalidRequestError(f"unknown field(s) {', '.join(unknown)}; known: shards")
    shards = body.get("shards")
    if shards is None:
        return None
    if not isinstance(shards, list) or not all(
        isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in shards
    ):
        raise InvalidRequestError(f"shards must be a list of shard numbers, got {shards!r}")
    return shards or None
