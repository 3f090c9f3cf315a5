"""The node's gRPC API: `minikv.v1.KV` and `minikv.v1.Admin`, on the node's one gRPC server.

One server per node listens on its `--grpc` address and serves three services: `KV` for
clients, `Admin` for operators, and `Raft` (the peer transport's stream, registered by
`PeerTransport(server=...)`), so a node has one gRPC port that peers and clients both use.

Semantics are the HTTP API's (both call the same `NodeService`); errors are status codes from
`errors_map.ERROR_TABLE`, never response fields. An UNAVAILABLE answer carries trailing
metadata `x-minikv-leader` (the last known leader's node id, when known) and
`x-minikv-retry-after-ms`. The call's gRPC deadline is the request's deadline (default 5 s
when the caller sets none, at most 60 s).

Admin calls answer PERMISSION_DENIED to non-loopback peers unless `admin_allow_remote` is set.
The shard map, which every client needs to route, is on `KV.ShardMap` and answers everyone.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import time
from collections.abc import Awaitable, Callable, Sequence
from types import ModuleType
from typing import Any, Final, Protocol, TypeVar, runtime_checkable

import grpc
import grpc.aio
from google.protobuf.message import DecodeError

from minikv_core.cluster.service import (
    AdminDocument,
    Consistency,
    InvalidRequestError,
    NodeService,
    NotFoundError,
    ScanRequest,
    ScanResult,
    ServiceError,
    UnavailableError,
    VersionedValue,
)
from minikv_core.cluster.sessions import WriteSession
from minikv_core.net import api, limits
from minikv_core.net.api import ApiConfig
from minikv_core.net.errors_map import hint_metadata, mapping_for, unexpected_error_detail
from minikv_core.net.forwarder import forwarded_by
from minikv_core.net.maintenance_rpc import MaintenanceEndpoint, cluster_handler
from minikv_core.net.metrics import NodeMetrics
from minikv_core.net.proto import admin_pb2, admin_pb2_grpc, kv_pb2, kv_pb2_grpc

logger = logging.getLogger(__name__)

T = TypeVar("T")

_CONSISTENCY: Final = {
    kv_pb2.CONSISTENCY_LINEARIZABLE: Consistency.LINEARIZABLE,
    kv_pb2.CONSISTENCY_STALE: Consistency.STALE,
}


class GrpcBindError(Exception):
    """The node's gRPC address could not be bound (in use, or not a local address)."""


def server_options(config: ApiConfig) -> tuple[tuple[str, int], ...]:
    """Options of the node's one gRPC server: large enough for a Raft frame and for the
    largest put, keepalive rules the peer transport's channels respect, no SO_REUSEPORT."""
    message_bytes_max = config.grpc_message_bytes_max
    return (
        ("grpc.max_send_message_length", message_bytes_max),
        ("grpc.max_receive_message_length", message_bytes_max),
        # gRPC enables SO_REUSEPORT by default on Linux: two nodes given the same port would
        # both bind it and the kernel would split peers' connections between them.
        ("grpc.so_reuseport", 0),
        ("grpc.http2.min_recv_ping_interval_without_data_ms", limits.SERVER_MIN_PING_INTERVAL_MS),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_ping_strikes", 0),
    )


def peer_host(peer: str | None) -> str | None:
    """The host part of a gRPC peer string (`ipv4:127.0.0.1:5000`, `ipv6:[::1]:5000`,
    `unix:/path`); None when it cannot be parsed."""
    if not peer:
        return None
    scheme, _, rest = peer.partition(":")
    if scheme in {"unix", "unix-abstract"}:
        return "unix:"
    if scheme == "ipv4":
        return rest.rpartition(":")[0] or None
    if scheme == "ipv6":
        host = rest.rpartition(":")[0]
        return host.strip("[]") or None
    return None


def probe_bind(address: str) -> None:
    """Bind and release `address` with a plain socket first: a port in use then fails here
    with one clear error, instead of inside gRPC's C core (which also logs its own line)."""
    host, _, port_text = address.rpartition(":")
    host = host.strip("[]")
    if not port_text.isdigit() or int(port_text) == 0:
        return
    try:
        infos = socket.getaddrinfo(
            host, int(port_text), type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except OSError as error:
        raise GrpcBindError(f"cannot bind gRPC address {address}: {error}") from None
    for family, kind, protocol, _, socket_address in infos:
        with socket.socket(family, kind, protocol) as sock:
            # As gRPC binds: SO_REUSEADDR, so a port in TIME_WAIT after a restart is usable.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind(socket_address)
            except OSError as error:
                raise GrpcBindError(
                    f"cannot bind gRPC address {address}: {error.strerror or error}"
                ) from None


class _InFlight:
    """Calls being served, so a graceful stop can refuse new ones and wait for these: the
    server itself cannot, because the peers' Raft streams are calls that never finish."""

    def __init__(self) -> None:
        self.count = 0
        self.draining = False
        self._idle = asyncio.Event()
        self._idle.set()

    def enter(self) -> None:
        self.count += 1
        self._idle.clear()

    def leave(self) -> None:
        self.count -= 1
        if self.count == 0:
            self._idle.set()

    async def drain(self, grace_s: float) -> bool:
        """Refuse new calls; wait up to `grace_s` for those in flight. True when all ended."""
        self.draining = True
        try:
            async with asyncio.timeout(grace_s):
                await self._idle.wait()
        except TimeoutError:
            return False
        return True


class _Calls:
    """The error, deadline and metric handling every RPC of both services shares."""

    def __init__(
        self, config: ApiConfig, metrics: NodeMetrics, service_name: str, in_flight: _InFlight
    ) -> None:
        self._config = config
        self._metrics = metrics
        self._service_name = service_name
        self._in_flight = in_flight

    def deadline(self, context: grpc.aio.ServicerContext) -> float:
        return time.monotonic() + api.clamp_timeout_s(context.time_remaining(), self._config)

    async def serve(
        self,
        method: str,
        context: grpc.aio.ServicerContext,
        call: Callable[[float], Awaitable[T]],
        *,
        admin: bool = False,
    ) -> T:
        started_s = time.perf_counter()
        code = grpc.StatusCode.OK
        details = ""
        trailing: tuple[tuple[str, str], ...] = ()
        self._in_flight.enter()
        try:
            if self._in_flight.draining:
                code = grpc.StatusCode.UNAVAILABLE
                details = "the node is shutting down"
            elif admin and not self._config.admin_allow_remote:
                host = peer_host(context.peer())
                if host is None or not api.is_loopback(host):
                    code = grpc.StatusCode.PERMISSION_DENIED
                    details = (
                        f"{self._service_name}.{method} answers loopback clients only "
                        "(start the node with admin_allow_remote to change this)"
                    )
            if code is grpc.StatusCode.OK:
                deadline = self.deadline(context)
                return await api.call_with_deadline(call(deadline), deadline, method)
        except ServiceError as error:
            code = mapping_for(error).grpc_code
            details = str(error)
            trailing = hint_metadata(error)
        except Exception as error:
            logger.exception("gRPC %s.%s failed", self._service_name, method)
            code = grpc.StatusCode.INTERNAL
            details = unexpected_error_detail(error)
        finally:
            self._in_flight.leave()
            self._metrics.observe("grpc", f"{self._service_name}.{method}", code.name, started_s)
        await context.abort(code, details, trailing_metadata=trailing)
        raise AssertionError("context.abort() returned")  # it always raises


@runtime_checkable
class LocalService(Protocol):
    """What a node serves to a peer that forwarded a client's request to it: the request
    served from this node's own replica, never forwarded again (`cluster.node_service.Node`
    implements it). A request carrying `x-minikv-forwarded-by` goes here."""

    async def local_get(
        self, key: bytes, consistency: Consistency, deadline: float
    ) -> VersionedValue: ...

    async def local_put(
        self, key: bytes, value: bytes, deadline: float, session: WriteSession | None = None
    ) -> int: ...

    async def local_delete(
        self, key: bytes, deadline: float, session: WriteSession | None = None
    ) -> bool: ...

    async def local_scan_shard(
        self, shard: int, request: ScanRequest, deadline: float
    ) -> ScanResult: ...


@runtime_checkable
class LocalTxnService(Protocol):
    """The node side of `KV.TxnShard`: one transaction command forwarded by a peer, applied
    by this node's replica of the shard (`cluster.node_service.Node` implements it)."""

    async def local_txn_command(self, shard: int, data: bytes, deadline: float) -> bytes: ...


PeerFilter = Callable[[int], str | None]
"""`filter(peer_id)`: why traffic with that peer is cut by fault injection, or None. A call
forwarded by a cut-off peer is refused: the fault filter covers forwarding too."""


class KvServicer(kv_pb2_grpc.KVServicer):
    """`minikv.v1.KV` over a NodeService (and its LocalService side for forwarded calls)."""

    def __init__(
        self,
        service: NodeService,
        config: ApiConfig,
        metrics: NodeMetrics,
        in_flight: _InFlight | None = None,
        peer_filter: PeerFilter | None = None,
    ) -> None:
        self._service = service
        self._local = service if isinstance(service, LocalService) else None
        self._config = config
        self._calls = _Calls(config, metrics, "KV", in_flight or _InFlight())
        self._peer_filter = peer_filter

    def _local_for(self, context: grpc.aio.ServicerContext) -> LocalService | None:
        """The local side when the call was forwarded by a peer, else None. Raises
        UnavailableError when fault injection cuts this node off from that peer."""
        if self._local is None:
            return None
        peer = forwarded_by(context.invocation_metadata())
        if not peer:
            return None
        cut = self._peer_filter(peer) if self._peer_filter is not None else None
        if cut is not None:
            raise UnavailableError(
                f"a request forwarded by node {peer} was dropped: {cut}", unapplied=True
            )
        return self._local

    def _consistency(self, value: int) -> Consistency:
        consistency = _CONSISTENCY.get(value)  # type: ignore[call-overload]
        if consistency is None:
            raise InvalidRequestError(f"unknown consistency {value}")
        return consistency  # type: ignore[no-any-return]

    async def Get(  # noqa: N802 - gRPC method names are the schema's
        self, request: kv_pb2.GetRequest, context: grpc.aio.ServicerContext
    ) -> kv_pb2.GetResponse:
        async def call(deadline: float) -> kv_pb2.GetResponse:
            api.check_key(request.key, self._config)
            consistency = self._consistency(request.consistency)
            local = self._local_for(context)
            if local is not None:
                found = await local.local_get(request.key, consistency, deadline)
            else:
                found = await self._service.get(request.key, consistency, deadline)
            return kv_pb2.GetResponse(value=found.value, version=found.version)

        return await self._calls.serve("Get", context, call)

    async def Put(  # noqa: N802
        self, request: kv_pb2.PutRequest, context: grpc.aio.ServicerContext
    ) -> kv_pb2.PutResponse:
        async def call(deadline: float) -> kv_pb2.PutResponse:
            api.check_key(request.key, self._config)
            api.check_value_size(len(request.value), self._config)
            session = api.session_from_proto(request)
            local = self._local_for(context)
            if local is not None:
                version = await local.local_put(request.key, request.value, deadline, session)
            else:
                version = await self._service.put(request.key, request.value, deadline, session)
            return kv_pb2.PutResponse(version=version)

        return await self._calls.serve("Put", context, call)

    async def Delete(  # noqa: N802
        self, request: kv_pb2.DeleteRequest, context: grpc.aio.ServicerContext
    ) -> kv_pb2.DeleteResponse:
        async def call(deadline: float) -> kv_pb2.DeleteResponse:
            api.check_key(request.key, self._config)
            session = api.session_from_proto(request)
            local = self._local_for(context)
            if local is not None:
                existed = await local.local_delete(request.key, deadline, session)
            else:
                existed = await self._service.delete(request.key, deadline, session)
            if not existed:
                raise NotFoundError("the key does not exist")
            return kv_pb2.DeleteResponse(deleted=True)

        return await self._calls.serve("Delete", context, call)

    async def Scan(  # noqa: N802
        self, request: kv_pb2.ScanRequest, context: grpc.aio.ServicerContext
    ) -> kv_pb2.ScanResponse:
        async def call(deadline: float) -> kv_pb2.ScanResponse:
            limit = request.limit or limits.SCAN_LIMIT_DEFAULT
            api.check_scan_limit(limit)
            for name in ("prefix", "start", "end"):
                api.check_scan_bound(name, getattr(request, name), self._config)
            scan = ScanRequest(
                prefix=request.prefix,
                start=request.start,
                end=request.end,
                limit=limit,
                consistency=self._consistency(request.consistency),
            )
            if request.HasField("shard"):
                local = self._local_for(context) or self._local
                if local is None:
                    raise InvalidRequestError("this node does not serve single-shard scans")
                part = await local.local_scan_shard(request.shard, scan, deadline)
            else:
                part = await self._service.scan(scan, deadline)
            result = api.cut_scan(
                part,
                api.grpc_scan_bytes_max(self._config),
                item_overhead_bytes=api.SCAN_ITEM_FRAMING_BYTES_MAX,
            )
            return kv_pb2.ScanResponse(
                items=[
                    kv_pb2.KeyValue(key=item.key, value=item.value, version=item.version)
                    for item in result.items
                ],
                more=result.more,
            )

        return await self._calls.serve("Scan", context, call)

    async def Txn(  # noqa: N802
        self, request: kv_pb2.TxnRequest, context: grpc.aio.ServicerContext
    ) -> kv_pb2.TxnResponse:
        async def call(deadline: float) -> kv_pb2.TxnResponse:
            txn = api.txn_request_from_proto(request)
            response = await self._service.txn(txn, deadline)
            return api.txn_response_to_proto(response)

        return await self._calls.serve("Txn", context, call)

    async def TxnShard(  # noqa: N802
        self, request: kv_pb2.TxnShardRequest, context: grpc.aio.ServicerContext
    ) -> kv_pb2.TxnShardResponse:
        async def call(deadline: float) -> kv_pb2.TxnShardResponse:
            local = self._local_for(context)
            if local is None or not isinstance(local, LocalTxnService):
                raise InvalidRequestError(
                    "KV.TxnShard is for nodes forwarding a transaction's part to its shard "
                    "leader (x-minikv-forwarded-by); clients use KV.Txn"
                )
            result = await local.local_txn_command(request.shard, request.command, deadline)
            return kv_pb2.TxnShardResponse(result=result)

        return await self._calls.serve("TxnShard", context, call)

    async def ShardMap(  # noqa: N802
        self, request: kv_pb2.ShardMapRequest, context: grpc.aio.ServicerContext
    ) -> kv_pb2.ShardMapResponse:
        async def call(deadline: float) -> kv_pb2.ShardMapResponse:
            return kv_pb2.ShardMapResponse(json=_dumps(self._service.shard_map().body))

        return await self._calls.serve("ShardMap", context, call)


def _dumps(document: Any) -> str:
    return json.dumps(document, separators=(",", ":"))


def _shards(request: admin_pb2.ShardsRequest) -> Sequence[int] | None:
    return list(request.shards) or None


class AdminServicer(admin_pb2_grpc.AdminServicer):
    """`minikv.v1.Admin` over a NodeService; answers loopback peers only by default."""

    def __init__(
        self,
        service: NodeService,
        config: ApiConfig,
        metrics: NodeMetrics,
        in_flight: _InFlight | None = None,
    ) -> None:
        self._service = service
        self._calls = _Calls(config, metrics, "Admin", in_flight or _InFlight())

    async def _document(
        self,
        method: str,
        context: grpc.aio.ServicerContext,
        call: Callable[[float], Awaitable[Any]],
    ) -> admin_pb2.AdminDocument:
        async def wrapped(deadline: float) -> admin_pb2.AdminDocument:
            return admin_pb2.AdminDocument(json=_dumps(await call(deadline)))

        return await self._calls.serve(method, context, wrapped, admin=True)

    async def _current_document(
        self,
        method: str,
        context: grpc.aio.ServicerContext,
        source: Callable[[], AdminDocument],
    ) -> admin_pb2.AdminDocument:
        """An admin document read from the node's current state (no deadline to honour)."""

        async def call(deadline: float) -> Any:
            return source().body

        return await self._document(method, context, call)

    async def Status(  # noqa: N802
        self, request: admin_pb2.AdminRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.AdminDocument:
        return await self._current_document("Status", context, self._service.status)

    async def ShardMap(  # noqa: N802
        self, request: admin_pb2.AdminRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.AdminDocument:
        return await self._current_document("ShardMap", context, self._service.shard_map)

    async def Wal(  # noqa: N802
        self, request: admin_pb2.AdminRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.AdminDocument:
        return await self._current_document("Wal", context, self._service.wal)

    async def SSTables(  # noqa: N802
        self, request: admin_pb2.AdminRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.AdminDocument:
        return await self._current_document("SSTables", context, self._service.sstables)

    async def Readiness(  # noqa: N802
        self, request: admin_pb2.AdminRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.ReadinessResponse:
        async def call(deadline: float) -> admin_pb2.ReadinessResponse:
            report = self._service.readiness()
            return admin_pb2.ReadinessResponse(ready=report.ready, reason=report.reason)

        # Like HTTP /health/ready, readiness answers everyone (load balancers, launchers).
        return await self._calls.serve("Readiness", context, call)

    async def Fault(  # noqa: N802
        self, request: admin_pb2.FaultRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.AdminDocument:
        async def call(deadline: float) -> Any:
            fault = api.parse_fault(
                {
                    "drop_to": list(request.drop_to),
                    "drop_from": list(request.drop_from),
                    "delay_ms": request.delay_ms,
                    "loss": request.loss,
                }
            )
            self._service.set_fault(fault)
            return {"fault": api.fault_document(fault)}

        return await self._document("Fault", context, call)

    async def ClearFault(  # noqa: N802
        self, request: admin_pb2.AdminRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.AdminDocument:
        async def call(deadline: float) -> Any:
            self._service.clear_fault()
            return {"fault": None}

        return await self._document("ClearFault", context, call)

    async def TransferLeader(  # noqa: N802
        self, request: admin_pb2.TransferLeaderRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.AdminDocument:
        async def call(deadline: float) -> Any:
            if request.node == 0:
                raise InvalidRequestError("node must be a positive node id")
            await self._service.transfer_leader(request.shard, request.node, deadline)
            return {"shard": request.shard, "leader": request.node}

        return await self._document("TransferLeader", context, call)

    async def Snapshot(  # noqa: N802
        self, request: admin_pb2.ShardsRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.AdminDocument:
        async def call(deadline: float) -> Any:
            return (await self._service.snapshot(_shards(request), deadline)).body

        return await self._document("Snapshot", context, call)

    async def Compact(  # noqa: N802
        self, request: admin_pb2.ShardsRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.AdminDocument:
        async def call(deadline: float) -> Any:
            return (await self._service.compact(_shards(request), deadline)).body

        return await self._document("Compact", context, call)


def service_handler(
    module: ModuleType, service_name: str, servicer: object, metrics: NodeMetrics
) -> grpc.GenericRpcHandler:
    """The handlers of one service of `module`'s schema, calling `servicer`'s methods.

    What the generated `add_*Servicer_to_server` does, except that requests are decoded here:
    bytes that are not a valid request message are answered INVALID_ARGUMENT naming the
    message type (gRPC's own decoding would answer UNKNOWN with a Python exception name).
    """
    descriptor = module.DESCRIPTOR.services_by_name[service_name]
    handlers: dict[str, grpc.RpcMethodHandler] = {}
    for method in descriptor.methods:
        request_class = getattr(module, method.input_type.name)
        response_class = getattr(module, method.output_type.name)
        call = getattr(servicer, method.name)
        handlers[method.name] = grpc.unary_unary_rpc_method_handler(
            _decoding(request_class, call, f"{service_name}.{method.name}", metrics),
            request_deserializer=None,
            response_serializer=response_class.SerializeToString,
        )
    return grpc.method_handlers_generic_handler(descriptor.full_name, handlers)


def _decoding(
    request_class: Any, call: Callable[[Any, Any], Awaitable[Any]], route: str, metrics: NodeMetrics
) -> Callable[[bytes, grpc.aio.ServicerContext], Awaitable[Any]]:
    async def handle(raw: bytes, context: grpc.aio.ServicerContext) -> Any:
        started_s = time.perf_counter()
        try:
            request = request_class.FromString(raw)
        except DecodeError as error:
            metrics.observe("grpc", route, grpc.StatusCode.INVALID_ARGUMENT.name, started_s)
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"{route}: the request is not a valid {request_class.DESCRIPTOR.full_name} "
                f"message: {error}",
            )
        return await call(request, context)

    return handle


class GrpcServer:
    """The node's one gRPC server. Lifecycle: construct, `bind(address)` (returns the port),
    register services (`add_api(service)`, and `PeerTransport(server=self.server)`), `start()`;
    on the way out `drain()` (new KV/Admin calls refused with UNAVAILABLE, in-flight ones
    finish while Raft keeps running), stop the node, then `stop()`."""

    def __init__(self, config: ApiConfig, metrics: NodeMetrics) -> None:
        self._config = config
        self._metrics = metrics
        self.server: grpc.aio.Server = grpc.aio.server(options=server_options(config))
        self.port = 0
        self._in_flight = _InFlight()
        self._started = False
        self._stopped = False

    def bind(self, address: str) -> int:
        """Bind `host:port` (port 0 picks a free one). Raises GrpcBindError."""
        assert self.port == 0, "bind() called twice"
        probe_bind(address)
        try:
            port: int = self.server.add_insecure_port(address)
        except RuntimeError as error:
            raise GrpcBindError(f"cannot bind gRPC address {address}: {error}") from None
        if port == 0:
            raise GrpcBindError(f"cannot bind gRPC address {address} (in use or not local)")
        self.port = port
        return port

    def add_api(
        self,
        service: NodeService,
        peer_filter: PeerFilter | None = None,
        maintenance: MaintenanceEndpoint | None = None,
    ) -> None:
        """Register KV and Admin over `service`, and `minikv.v1.Cluster` over `maintenance`
        when given (before `start()`)."""
        assert not self._started, "services must be registered before the server starts"
        kv = KvServicer(service, self._config, self._metrics, self._in_flight, peer_filter)
        admin = AdminServicer(service, self._config, self._metrics, self._in_flight)
        handlers = [
            service_handler(kv_pb2, "KV", kv, self._metrics),
            service_handler(admin_pb2, "Admin", admin, self._metrics),
        ]
        if maintenance is not None:
            calls = _Calls(self._config, self._metrics, "Cluster", self._in_flight)

            async def serve(
                method: str,
                context: grpc.aio.ServicerContext,
                call: Callable[[float], Awaitable[bytes]],
                admin: bool,
            ) -> bytes:
                if not admin and not maintenance.accepts_peer(peer_host(context.peer())):
                    # Node-to-node calls change memberships: cluster members (and this
                    # machine) only, whatever admin_allow_remote says.
                    await context.abort(
                        grpc.StatusCode.PERMISSION_DENIED,
                        f"Cluster.{method} answers members of this cluster only",
                    )
                caller = forwarded_by(context.invocation_metadata())
                cut = peer_filter(caller) if caller and peer_filter is not None else None
                if cut is not None:
                    # The fault filter covers maintenance between nodes too: a repair or a
                    # status poll must not cross a partition the Raft traffic cannot.
                    async def refused(_deadline: float) -> bytes:
                        raise UnavailableError(
                            f"a call from node {caller} was dropped: {cut}", unapplied=True
                        )

                    return await calls.serve(method, context, refused, admin=admin)
                return await calls.serve(method, context, call, admin=admin)

            handlers.append(cluster_handler(maintenance, serve))
        self.server.add_generic_rpc_handlers(tuple(handlers))

    async def start(self) -> None:
        assert self.port != 0, "bind() before start()"
        await self.server.start()
        self._started = True

    @property
    def in_flight(self) -> int:
        """KV and Admin calls being served now."""
        return self._in_flight.count

    async def drain(self, grace_s: float = limits.API_SHUTDOWN_GRACE_S) -> bool:
        """Refuse new KV/Admin calls and wait up to `grace_s` for those in flight; True when
        they all finished. The server (and the peers' Raft streams on it) keeps running."""
        return await self._in_flight.drain(grace_s)

    async def stop(self, grace_s: float = 0.2) -> None:
        """Close the server: calls still open after `grace_s` are cancelled. By then KV and
        Admin calls were drained; what remains are the peers' Raft streams, which never end
        on their own."""
        if self._stopped:
            return
        self._stopped = True
        await self.server.stop(grace_s)
