"""Forwarding client requests to the shard leader over gRPC (`minikv.v1.KV` on its --grpc).

A node that receives a request for a shard it does not lead sends it on to the leader as a
KV call to the leader's `--grpc` address — the same address and server the peer transport
uses, so forwarding needs no extra port. Why a KV call and not a message on the Raft stream:
the answer (value, version, error) must come back to this one request, with its deadline and
cancellation, which is exactly a unary RPC; the Raft stream is fire-and-forget by design.
The exception is a put or delete reaching a follower of its shard: its own replica will apply
the write and can answer it, so it travels inside the Raft stream as a PROPOSE
(cluster/group.py) and only comes here when the fault filter cuts that follower from its
leader, or for nodes holding no replica.

Rules:
- One cached channel per peer (bounded by CLIENT_CHANNELS_MAX), closed when the peer's
  address changes or the forwarder closes.
- The node's fault filter covers forwarding too (issue 5: "it covers every byte exchanged
  between nodes, forwarding included"): a peer in `drop_to` cannot be reached, so the request
  fails at once with UnavailableError instead of sneaking past the partition. Loss and delay
  apply as they do to Raft frames.
- The caller's deadline becomes the gRPC deadline; an error answered by the leader is mapped
  back to the same ServiceError by `errors_map` (the leader's hint kept); a transport failure
  (peer down, connection reset) is UnavailableError naming the peer.
- A forwarded request carries `x-minikv-forwarded-by: <node id>`; the receiving node serves
  it locally or answers UnavailableError with its leader hint, never forwards it again, so a
  request cannot bounce between two nodes with different views of the leader.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Final, TypeVar, cast

import grpc
import grpc.aio

from minikv_core.cluster.service import (
    Consistency,
    DeadlineExceededError,
    ScanItem,
    ScanRequest,
    ScanResult,
    UnavailableError,
    VersionedValue,
)
from minikv_core.cluster.sessions import WriteSession
from minikv_core.net import api, limits
from minikv_core.net.errors_map import error_from_grpc
from minikv_core.net.fault import FaultFilter, pass_outbound
from minikv_core.net.proto import kv_pb2, kv_pb2_grpc

logger = logging.getLogger(__name__)

T = TypeVar("T")

FORWARDED_BY_KEY: Final = "x-minikv-forwarded-by"
"""Metadata of a forwarded call: the forwarding node's id. Its receiver never forwards."""

_CONSISTENCY: Final = {
    Consistency.LINEARIZABLE: kv_pb2.CONSISTENCY_LINEARIZABLE,
    Consistency.STALE: kv_pb2.CONSISTENCY_STALE,
}


def forwarded_by(metadata: object) -> int:
    """The forwarding node's id from a call's invocation metadata, 0 when not forwarded."""
    if not metadata:
        return 0
    for key, value in metadata:  # type: ignore[attr-defined]
        if key == FORWARDED_BY_KEY:
            text = value.decode("ascii", "replace") if isinstance(value, bytes) else str(value)
            # At most 9 ASCII digits: int() of 4300+ digits raises (an INTERNAL to a client
            # that sends such a header), and no node id is that long.
            return int(text) if text.isascii() and text.isdigit() and len(text) <= 9 else 0
    return 0


class GrpcForwarder:
    """Sends KV requests to other nodes' gRPC servers on behalf of this node: the
    `cluster.node_service.Forwarder` of `minikv serve`.

    `addresses` maps node ids to their `--grpc` addresses (the peer map) or resolves one;
    `fault_filter` is the node's transport filter. `close()` once when the node stops.
    """

    def __init__(
        self,
        node_id: int,
        addresses: Callable[[int], str | None] | Mapping[int, str],
        fault_filter: FaultFilter,
        *,
        message_bytes_max: int = limits.GRPC_MESSAGE_BYTES_MAX,
    ) -> None:
        self.node_id = node_id
        self._addresses = addresses
        self._fault_filter = fault_filter
        self._channels: dict[int, tuple[str, grpc.aio.Channel, kv_pb2_grpc.KVAsyncStub]] = {}
        """Per peer: its address, the channel to it and the stub on that channel (a stub
        builds a callable per method, 5-6 us, paid once per channel, not per call)."""
        self._options = (
            ("grpc.max_send_message_length", message_bytes_max),
            ("grpc.max_receive_message_length", message_bytes_max),
            ("grpc.keepalive_time_ms", limits.KEEPALIVE_TIME_MS),
            ("grpc.keepalive_timeout_ms", limits.KEEPALIVE_TIMEOUT_MS),
            ("grpc.enable_retries", 0),
            ("grpc.initial_reconnect_backoff_ms", limits.RECONNECT_BACKOFF_INITIAL_MS),
            ("grpc.min_reconnect_backoff_ms", limits.RECONNECT_BACKOFF_INITIAL_MS),
            ("grpc.max_reconnect_backoff_ms", limits.RECONNECT_BACKOFF_MAX_MS),
            ("grpc.use_local_subchannel_pool", 1),
        )
        self._closing: set[asyncio.Task[None]] = set()
        self._closed = False

    # --- the calls ------------------------------------------------------------------------

    async def forward_get(
        self, node_id: int, key: bytes, consistency: Consistency, deadline: float
    ) -> VersionedValue:
        request = kv_pb2.GetRequest(key=key, consistency=_CONSISTENCY[consistency])

        async def call(stub: kv_pb2_grpc.KVAsyncStub, timeout: float) -> VersionedValue:
            answer = await stub.Get(request, timeout=timeout, metadata=self._metadata)
            return VersionedValue(answer.value, answer.version)

        return await self._forward(node_id, "get", call, deadline)

    async def forward_put(
        self,
        node_id: int,
        key: bytes,
        value: bytes,
        deadline: float,
        session: WriteSession | None = None,
    ) -> int:
        request = kv_pb2.PutRequest(key=key, value=value, session=api.session_to_proto(session))

        async def call(stub: kv_pb2_grpc.KVAsyncStub, timeout: float) -> int:
            answer = await stub.Put(request, timeout=timeout, metadata=self._metadata)
            return int(answer.version)

        return await self._forward(node_id, "put", call, deadline)

    async def forward_delete(
        self, node_id: int, key: bytes, deadline: float, session: WriteSession | None = None
    ) -> bool:
        request = kv_pb2.DeleteRequest(key=key, session=api.session_to_proto(session))

        async def call(stub: kv_pb2_grpc.KVAsyncStub, timeout: float) -> bool:
            try:
                await stub.Delete(request, timeout=timeout, metadata=self._metadata)
            except grpc.aio.AioRpcError as error:
                if error.code() == grpc.StatusCode.NOT_FOUND:
                    return False
                raise
            return True

        return await self._forward(node_id, "delete", call, deadline)

    async def forward_scan_shard(
        self, node_id: int, shard: int, request: ScanRequest, deadline: float
    ) -> ScanResult:
        """Shard `shard`'s part of a scan, from `node_id`'s replica (`ScanRequest.shard`)."""
        message = kv_pb2.ScanRequest(
            prefix=request.prefix,
            start=request.start,
            end=request.end,
            limit=request.limit,
            consistency=_CONSISTENCY[request.consistency],
            shard=shard,
        )

        async def call(stub: kv_pb2_grpc.KVAsyncStub, timeout: float) -> ScanResult:
            answer = await stub.Scan(message, timeout=timeout, metadata=self._metadata)
            return ScanResult(
                items=tuple(ScanItem(i.key, i.value, i.version) for i in answer.items),
                more=answer.more,
            )

        return await self._forward(node_id, f"scan of shard {shard}", call, deadline)

    async def forward_txn_command(
        self, node_id: int, shard: int, body: bytes, deadline: float
    ) -> bytes:
        """One transaction command for `shard`, applied by `node_id` (its leader): the
        encoded result (`KV.TxnShard`)."""
        message = kv_pb2.TxnShardRequest(shard=shard, command=body)

        async def call(stub: kv_pb2_grpc.KVAsyncStub, timeout: float) -> bytes:
            answer = await stub.TxnShard(message, timeout=timeout, metadata=self._metadata)
            return bytes(answer.result)

        return await self._forward(
            node_id, f"transaction command for shard {shard}", call, deadline
        )

    # --- machinery ------------------------------------------------------------------------

    @property
    def _metadata(self) -> tuple[tuple[str, str], ...]:
        return ((FORWARDED_BY_KEY, str(self.node_id)),)

    def _address(self, node_id: int) -> str | None:
        if callable(self._addresses):
            return self._addresses(node_id)
        return self._addresses.get(node_id)

    def _stub(self, node_id: int) -> kv_pb2_grpc.KVAsyncStub:
        address = self._address(node_id)
        if address is None:
            raise UnavailableError(
                f"node {node_id} has no known address", leader_hint=node_id, unapplied=True
            )
        cached = self._channels.get(node_id)
        if cached is not None and cached[0] != address:
            self._close_later(self._channels.pop(node_id)[1])
            cached = None
        if cached is None:
            if len(self._channels) >= limits.CLIENT_CHANNELS_MAX:
                oldest = next(iter(self._channels))
                self._close_later(self._channels.pop(oldest)[1])
            channel = grpc.aio.insecure_channel(address, options=self._options)
            stub = cast("kv_pb2_grpc.KVAsyncStub", kv_pb2_grpc.KVStub(channel))
            cached = (address, channel, stub)
            self._channels[node_id] = cached
        return cached[2]

    def _close_later(self, channel: grpc.aio.Channel) -> None:
        task = asyncio.get_running_loop().create_task(channel.close(grace=None))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def _forward(
        self,
        node_id: int,
        what: str,
        call: Callable[[kv_pb2_grpc.KVAsyncStub, float], Awaitable[T]],
        deadline: float,
    ) -> T:
        if self._closed:
            raise UnavailableError(
                f"node {self.node_id} is stopping", leader_hint=node_id, unapplied=True
            )
        if node_id == self.node_id:
            raise AssertionError(f"node {node_id} asked to forward {what} to itself")
        cut = await pass_outbound(self._fault_filter, node_id, deadline)
        if cut is not None:
            # The injected partition covers forwarding: the leader is unreachable from here.
            raise UnavailableError(
                f"node {node_id} (the leader) is unreachable from node {self.node_id} "
                f"(fault injection: {cut})",
                leader_hint=node_id,
                unapplied=True,  # dropped here, before it was sent
            )
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise DeadlineExceededError(f"{what}: the deadline passed before forwarding")
        stub = self._stub(node_id)
        try:
            return await call(stub, remaining)
        except grpc.aio.AioRpcError as error:
            code = error.code()
            if code == grpc.StatusCode.DEADLINE_EXCEEDED and time.monotonic() >= deadline:
                raise DeadlineExceededError(
                    f"{what} forwarded to node {node_id}: the deadline passed"
                ) from None
            mapped = error_from_grpc(code, error.details(), error.trailing_metadata())
            if isinstance(mapped, UnavailableError) and mapped.leader_hint == 0:
                mapped = UnavailableError(
                    f"forwarding {what} to node {node_id}: {mapped}",
                    leader_hint=0,
                    retry_after_s=mapped.retry_after_s,
                    unapplied=mapped.unapplied,
                )
            raise mapped from None

    async def close(self) -> None:
        self._closed = True
        channels = [channel for _, channel, _ in self._channels.values()]
        self._channels.clear()
        await asyncio.gather(
            *(channel.close(grace=None) for channel in channels), *list(self._closing)
        )
