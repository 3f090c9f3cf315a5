"""Cluster maintenance over gRPC (`minikv.v1.Cluster` on every node's `--grpc`), JSON bodies.

Two methods:
- `Call`: node to node (the meta leader driving a repair asks a shard leader to change its
  membership, a replica for its checksum, ...). Same trust as the Raft stream: any peer.
- `Operate`: an operator (CLI, dashboard, `POST /admin/...`) starts or inspects a maintenance
  job. Admin only: loopback clients unless the node runs with `admin_allow_remote`.

Why JSON and not protobuf messages: these are a handful of low-rate calls whose answers are
rich, nested documents (plans, per-replica checksums, job progress) that the HTTP admin API
serves verbatim; one JSON shape for both APIs keeps them identical, as the Admin service's
`AdminDocument` does. Requests are `{"method": str, "args": object}`; answers a JSON object.
Errors are gRPC status codes with the leader hint in the trailing metadata (`errors_map`),
turned back into the same `ServiceError` by `MaintenanceClient`, so a caller retries on the
leader a refusal names.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any, Final, Protocol

import grpc
import grpc.aio

from minikv_core.cluster.service import InvalidRequestError, UnavailableError
from minikv_core.net import limits
from minikv_core.net.errors_map import error_from_grpc
from minikv_core.net.forwarder import FORWARDED_BY_KEY

SERVICE: Final = "minikv.v1.Cluster"
CALL_METHOD: Final = "Call"
OPERATE_METHOD: Final = "Operate"
BODY_BYTES_MAX: Final = 1 << 20
"""Requests are small (a method and a few ids); answers may list every shard's replicas."""

JsonObject = dict[str, Any]


class MaintenanceEndpoint(Protocol):
    """What a node serves on `minikv.v1.Cluster` (cluster/maintenance.py implements it)."""

    async def handle_call(self, method: str, args: JsonObject, deadline: float) -> JsonObject:
        """A peer's request; raises ServiceError subclasses."""
        ...

    async def operate(self, operation: str, args: JsonObject, deadline: float) -> JsonObject:
        """An operator's request; raises ServiceError subclasses."""
        ...

    def accepts_peer(self, host: str | None) -> bool:
        """Whether a `Call` from `host` (a gRPC peer's address) comes from a cluster member."""
        ...


OPERATOR_FIELDS: Final[dict[str, frozenset[str]]] = {
    "repair": frozenset({"dry_run", "dead", "wait"}),
    "rebalance": frozenset({"dry_run", "wait"}),
    "remove_node": frozenset({"node", "dry_run", "wait"}),
    "verify": frozenset({"dry_run", "wait"}),
    "job": frozenset({"id"}),
}
"""The arguments an operator may give each operation (`Operate`, `POST /admin/...`)."""


def check_operator_args(operation: str, args: JsonObject) -> None:
    """Refuse (InvalidRequestError) an unknown argument of an operator's operation, or a
    `dry_run` / `wait` that is not a boolean. Why: the endpoint reads only the names it knows
    and tests flags for truth, so `{"dry_runn": true}` started a real rebalance and
    `{"dry_run": "false"}` a dry run. Operations not listed (join, internal ones) are the
    endpoint's to check. Called by the endpoint's `operate` (cluster/maintenance.py), the
    one place every door (HTTP, `Operate`) goes through."""
    known = OPERATOR_FIELDS.get(operation)
    if known is None:
        return
    unknown = sorted(set(args) - known)
    if unknown:
        raise InvalidRequestError(
            f"unknown field(s) {', '.join(map(repr, unknown))} for {operation}; "
            f"known: {', '.join(sorted(known))}"
        )
    for flag in ("dry_run", "wait"):
        if flag in args and not isinstance(args[flag], bool):
            raise InvalidRequestError(f'"{flag}" must be true or false, got {args[flag]!r}')


def encode_request(method: str, args: JsonObject) -> bytes:
    return json.dumps({"method": method, "args": args}, separators=(",", ":")).encode()


def decode_request(raw: bytes) -> tuple[str, JsonObject]:
    """Raises InvalidRequestError naming what is wrong."""
    if len(raw) > BODY_BYTES_MAX:
        raise InvalidRequestError(f"request of {len(raw)} bytes exceeds {BODY_BYTES_MAX}")
    try:
        document = json.loads(raw)
    except ValueError as error:
        # Also an integer of more than 4300 digits, which json refuses with a plain
        # ValueError (UnicodeDecodeError and JSONDecodeError are ValueErrors too).
        raise InvalidRequestError(f"request is not valid JSON: {error}") from None
    except RecursionError:
        # `[[[...` nested past the decoder's recursion limit: malformed input, not a 500.
        raise InvalidRequestError("request is not valid JSON: it nests too deeply") from None
    if not isinstance(document, dict):
        raise InvalidRequestError("request must be a JSON object")
    method = document.get("method")
    args = document.get("args", {})
    if not isinstance(method, str) or not method:
        raise InvalidRequestError('request needs "method": a non-empty string')
    if not isinstance(args, dict):
        raise InvalidRequestError('"args" must be a JSON object')
    return method, args


def decode_answer(raw: bytes, what: str) -> JsonObject:
    try:
        document = json.loads(raw)
    except (ValueError, RecursionError) as error:
        raise UnavailableError(f"{what}: the answer is not valid JSON: {error}") from None
    if not isinstance(document, dict):
        raise UnavailableError(f"{what}: the answer is not a JSON object")
    return document


Serve = Callable[[str, grpc.aio.ServicerContext, Callable[[float], Awaitable[bytes]], bool], Any]


def cluster_handler(endpoint: MaintenanceEndpoint, serve: Serve) -> grpc.GenericRpcHandler:
    """The generic handler of `minikv.v1.Cluster`. `serve(method, context, call, admin)`
    applies the API's shared error, deadline, metric and loopback handling (grpc_api.py)."""

    def method(name: str, admin: bool) -> grpc.RpcMethodHandler:
        async def handle(raw: bytes, context: grpc.aio.ServicerContext) -> bytes:
            async def call(deadline: float) -> bytes:
                operation, args = decode_request(raw)
                if admin:
                    answer = await endpoint.operate(operation, args, deadline)
                else:
                    answer = await endpoint.handle_call(operation, args, deadline)
                return json.dumps(answer, separators=(",", ":")).encode()

            result: bytes = await serve(name, context, call, admin)
            return result

        return grpc.unary_unary_rpc_method_handler(
            handle, request_deserializer=None, response_serializer=None
        )

    return grpc.method_handlers_generic_handler(
        SERVICE,
        {CALL_METHOD: method(CALL_METHOD, False), OPERATE_METHOD: method(OPERATE_METHOD, True)},
    )


class MaintenanceClient:
    """Calls `minikv.v1.Cluster` on other nodes; one cached channel per address."""

    def __init__(self) -> None:
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._closed = False

    async def call(
        self,
        address: str,
        method: str,
        args: JsonObject,
        deadline: float,
        *,
        operate: bool = False,
        from_node: int = 0,
    ) -> JsonObject:
        """Raises the ServiceError the peer answered (leader hint kept), or UnavailableError
        naming the address when it cannot be reached. `from_node`: the calling node's id, sent
        as `x-minikv-forwarded-by` so that the callee's fault filter can refuse a call from a
        node it is cut off from (forwarder.py; a joining node, not a member yet, sends 0)."""
        if self._closed:
            raise UnavailableError("the maintenance client is closed")
        channel = self._channels.get(address)
        if channel is None:
            if len(self._channels) >= limits.CLIENT_CHANNELS_MAX:
                oldest = self._channels.pop(next(iter(self._channels)))
                await oldest.close(grace=None)
            channel = grpc.aio.insecure_channel(address)
            self._channels[address] = channel
        rpc = channel.unary_unary(
            f"/{SERVICE}/{OPERATE_METHOD if operate else CALL_METHOD}",
            request_serializer=None,
            response_deserializer=None,
        )
        timeout = max(0.0, deadline - time.monotonic())
        metadata = ((FORWARDED_BY_KEY, str(from_node)),) if from_node else None
        try:
            raw = await rpc(encode_request(method, args), timeout=timeout, metadata=metadata)
        except grpc.aio.AioRpcError as error:
            raise error_from_grpc(
                error.code(), f"{address}: {error.details()}", error.trailing_metadata()
            ) from None
        except asyncio.CancelledError:
            raise
        assert isinstance(raw, bytes)
        return decode_answer(raw, f"{method} on {address}")

    async def close(self) -> None:
        self._closed = True
        channels, self._channels = self._channels, {}
        for channel in channels.values():
            await channel.close(grace=None)
