"""What the HTTP and gRPC APIs share: their configuration, request validation, deadlines, the
byte budget of scan answers and the loopback rule of admin endpoints.

Both APIs promise the same semantics (DESIGN: Interfaces), so every rule that is not about
the wire format lives here once, and `errors_map.py` holds the one table of outcomes.
"""

from __future__ import annotations

import asyncio
import ipaddress
import math
import time
from collections.abc import Awaitable, Mapping
from dataclasses import dataclass
from typing import Final, TypeVar

from minikv_core.cluster import limits as cluster_limits
from minikv_core.cluster.service import (
    DeadlineExceededError,
    FaultSpec,
    InvalidRequestError,
    ScanResult,
    TooLargeError,
)
from minikv_core.cluster.sessions import SessionError, WriteSession
from minikv_core.cluster.txn import (
    SYSTEM_KEY_PREFIX,
    Compare,
    CompareOp,
    CompareTarget,
    OpKind,
    OpResult,
    TxnOp,
    TxnRequest,
    TxnResponse,
)
from minikv_core.net import limits
from minikv_core.net.fault import FaultRules, FaultRulesError
from minikv_core.net.proto import kv_pb2

T = TypeVar("T")

VALUE_SIZE_BYTES_DEFAULT = 1024 * 1024
"""The default value limit (configurable per node, up to the cluster layer's bound)."""


# The client's message bound must carry the largest value a node may be configured with.
assert (
    cluster_limits.COMMAND_KEY_SIZE_BYTES_MAX
    + cluster_limits.COMMAND_VALUE_SIZE_BYTES_MAX
    + 64 * limits.KIB
    <= limits.CLIENT_MESSAGE_BYTES_MAX
)


@dataclass(frozen=True, slots=True)
class ApiConfig:
    """The client-facing knobs of one node's APIs."""

    key_size_bytes_max: int = cluster_limits.COMMAND_KEY_SIZE_BYTES_MAX
    value_size_bytes_max: int = VALUE_SIZE_BYTES_DEFAULT
    request_timeout_ms_default: int = limits.REQUEST_TIMEOUT_MS_DEFAULT
    admin_allow_remote: bool = False
    """Serve admin and fault endpoints to non-loopback clients too (off by default: a fault
    endpoint reachable from the network is a remote off switch)."""

    def __post_init__(self) -> None:
        if not 1 <= self.key_size_bytes_max <= cluster_limits.COMMAND_KEY_SIZE_BYTES_MAX:
            raise ValueError(
                f"key_size_bytes_max must be in [1, {cluster_limits.COMMAND_KEY_SIZE_BYTES_MAX}]"
                f", got {self.key_size_bytes_max}"
            )
        if not 0 <= self.value_size_bytes_max <= cluster_limits.COMMAND_VALUE_SIZE_BYTES_MAX:
            raise ValueError(
                "value_size_bytes_max must be in "
                f"[0, {cluster_limits.COMMAND_VALUE_SIZE_BYTES_MAX}], "
                f"got {self.value_size_bytes_max}"
            )
        if not 0 < self.request_timeout_ms_default <= limits.REQUEST_TIMEOUT_MS_MAX:
            raise ValueError(
                f"request_timeout_ms_default must be in (0, {limits.REQUEST_TIMEOUT_MS_MAX}], "
                f"got {self.request_timeout_ms_default}"
            )

    @property
    def grpc_message_bytes_max(self) -> int:
        """gRPC send/receive bound of the node's server: a Raft frame, or the largest put or
        single-item scan answer (key, value, protobuf framing)."""
        return max(
            limits.GRPC_MESSAGE_BYTES_MAX,
            self.key_size_bytes_max + self.value_size_bytes_max + 64 * limits.KIB,
        )


def deadline_after_ms(timeout_ms: float) -> float:
    """The absolute `time.monotonic()` deadline `timeout_ms` from now."""
    return time.monotonic() + timeout_ms / 1000.0


DECIMAL_DIGITS_MAX: Final = 18
"""Digits of a query parameter's number (after leading zeros) that `parse_decimal` converts;
a longer one is over every limit. Why: `int()` refuses strings of more than 4300 digits with a
ValueError (CPython's guard against quadratic conversion), which would be a 500."""


def parse_decimal(text: str) -> int | None:
    """`text` as a non-negative integer when it is ASCII digits only, else None; a number of
    more than DECIMAL_DIGITS_MAX significant digits is 10**DECIMAL_DIGITS_MAX (over any limit a
    caller checks) instead of being converted."""
    if not text.isascii() or not text.isdigit():
        return None
    significant = text.lstrip("0")
    if len(significant) > DECIMAL_DIGITS_MAX:
        return 10**DECIMAL_DIGITS_MAX
    return int(significant or "0")


def _shown(text: str) -> str:
    """A client's text quoted in an error, cut so a huge parameter does not make a huge
    answer."""
    return repr(text) if len(text) <= 40 else f"{text[:40]!r}... ({len(text)} characters)"


def parse_timeout_ms(text: str) -> int:
    """`?timeout_ms=` (HTTP) validated: a positive integer up to REQUEST_TIMEOUT_MS_MAX."""
    value = parse_decimal(text)
    if value is None or value <= 0:
        raise InvalidRequestError(f"timeout_ms must be a positive integer, got {_shown(text)}")
    if value > limits.REQUEST_TIMEOUT_MS_MAX:
        raise InvalidRequestError(
            f"timeout_ms must be at most {limits.REQUEST_TIMEOUT_MS_MAX}, got {_shown(text)}"
        )
    return value


def parse_scan_limit(text: str | None) -> int:
    """`?limit=` (HTTP) validated: 1..SCAN_LIMIT_MAX, SCAN_LIMIT_DEFAULT when absent."""
    if text is None:
        return limits.SCAN_LIMIT_DEFAULT
    value = parse_decimal(text)
    if value is None:
        raise InvalidRequestError(f"limit must be a positive integer, got {_shown(text)}")
    if not 1 <= value <= limits.SCAN_LIMIT_MAX:
        raise InvalidRequestError(
            f"limit must be in [1, {limits.SCAN_LIMIT_MAX}], got {_shown(text)}"
        )
    return value


def clamp_timeout_s(timeout_s: float | None, config: ApiConfig) -> float:
    """A gRPC caller's remaining time, or the default, capped at REQUEST_TIMEOUT_MS_MAX."""
    if timeout_s is None or math.isnan(timeout_s):
        return config.request_timeout_ms_default / 1000.0
    return max(0.0, min(timeout_s, limits.REQUEST_TIMEOUT_MS_MAX / 1000.0))


def check_key(key: bytes, config: ApiConfig) -> None:
    if not key:
        raise InvalidRequestError("the key is empty; keys are 1 or more bytes")
    if len(key) > config.key_size_bytes_max:
        raise TooLargeError(
            f"the key is {len(key)} bytes; the limit is {config.key_size_bytes_max} bytes"
        )
    if key.startswith(SYSTEM_KEY_PREFIX):
        raise InvalidRequestError(
            f"keys starting with {SYSTEM_KEY_PREFIX!r} are reserved for transactions"
        )


def check_value_size(size_bytes: int, config: ApiConfig) -> None:
    if size_bytes > config.value_size_bytes_max:
        raise TooLargeError(
            f"the value is {size_bytes} bytes or more; the limit is "
            f"{config.value_size_bytes_max} bytes"
        )


def check_scan_bound(name: str, value: bytes, config: ApiConfig) -> None:
    if len(value) > config.key_size_bytes_max:
        raise TooLargeError(
            f"{name} is {len(value)} bytes; keys (and bounds) are at most "
            f"{config.key_size_bytes_max} bytes"
        )


def check_scan_limit(limit: int) -> None:
    if not 1 <= limit <= limits.SCAN_LIMIT_MAX:
        raise InvalidRequestError(f"limit must be in [1, {limits.SCAN_LIMIT_MAX}], got {limit}")


async def call_with_deadline(awaitable: Awaitable[T], deadline: float, what: str) -> T:
    """Await a service call, cancelling it DEADLINE_GRACE_MS past `deadline` as a backstop.

    The node answers DeadlineExceededError itself at the deadline; this only guarantees that a
    request never hangs far past it, whatever happens below.
    """
    remaining_s = deadline - time.monotonic() + limits.DEADLINE_GRACE_MS / 1000.0
    try:
        async with asyncio.timeout(max(0.0, remaining_s)):
            return await awaitable
    except TimeoutError:
        raise DeadlineExceededError(f"{what}: the deadline passed") from None


SCAN_ITEM_FRAMING_BYTES_MAX: Final = 32
"""Protobuf bytes a `KeyValue` item adds to a `ScanResponse` beyond its key and value: the
item's tag and length (<= 6), the key's and value's (<= 3 and <= 5), the version's (<= 11)."""
SCAN_RESPONSE_FRAMING_BYTES_MAX: Final = 64
"""The rest of a `ScanResponse` (`more`), with room to spare."""


def grpc_scan_bytes_max(config: ApiConfig) -> int:
    """The budget `cut_scan` gets for a gRPC answer (with SCAN_ITEM_FRAMING_BYTES_MAX per
    item): the encoded answer then fits the server's send bound. Why: cut at 4 MiB of keys
    and values alone, four values of just under 1 MiB made a 4,194,352-byte message, which
    gRPC refused to send (RESOURCE_EXHAUSTED) on every attempt, so the scan never progressed."""
    return min(
        limits.SCAN_RESPONSE_BYTES_MAX,
        config.grpc_message_bytes_max - SCAN_RESPONSE_FRAMING_BYTES_MAX,
    )


def cut_scan(
    result: ScanResult,
    bytes_max: int = limits.SCAN_RESPONSE_BYTES_MAX,
    *,
    item_overhead_bytes: int = 0,
) -> ScanResult:
    """Bound a scan answer's key and value bytes (plus `item_overhead_bytes` per item: its
    framing on the wire); always keeps the first item so a scan can make progress. Cutting
    sets `more`: the client resumes after the last item returned."""
    total = 0
    for index, item in enumerate(result.items):
        total += len(item.key) + len(item.value) + item_overhead_bytes
        if total > bytes_max and index > 0:
            return ScanResult(items=result.items[:index], more=True)
    return result


def is_loopback(host: str | None) -> bool:
    """True for a loopback IP (127.0.0.0/8, ::1, IPv4-mapped loopback) or a local socket."""
    if host is None or host == "" or host.startswith("unix:"):
        return True
    host = host.strip("[]")
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host == "localhost"
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped.is_loopback
    return address.is_loopback


def parse_fault(data: Mapping[str, object]) -> FaultSpec:
    """Validate admin fault rules (unknown fields refused: a typo must not inject nothing)."""
    try:
        rules = FaultRules.from_dict(data)
    except FaultRulesError as error:
        raise InvalidRequestError(str(error)) from None
    return FaultSpec(
        drop_to=rules.drop_to, drop_from=rules.drop_from, delay_ms=rules.delay_ms, loss=rules.loss
    )


def fault_document(fault: FaultSpec) -> dict[str, object]:
    return {
        "drop_to": sorted(fault.drop_to),
        "drop_from": sorted(fault.drop_from),
        "delay_ms": fault.delay_ms,
        "loss": fault.loss,
    }


# ------------------------------------------------------------------- transactions on gRPC

_TARGET_TO_WIRE: Final = {
    CompareTarget.VALUE: kv_pb2.COMPARE_TARGET_VALUE,
    CompareTarget.VERSION: kv_pb2.COMPARE_TARGET_VERSION,
    CompareTarget.EXISTS: kv_pb2.COMPARE_TARGET_EXISTS,
}
_OP_TO_WIRE: Final = {
    CompareOp.EQUAL: kv_pb2.COMPARE_OP_EQUAL,
    CompareOp.NOT_EQUAL: kv_pb2.COMPARE_OP_NOT_EQUAL,
    CompareOp.LESS: kv_pb2.COMPARE_OP_LESS,
    CompareOp.GREATER: kv_pb2.COMPARE_OP_GREATER,
}
_KIND_TO_WIRE: Final = {
    OpKind.PUT: kv_pb2.TXN_OP_PUT,
    OpKind.DELETE: kv_pb2.TXN_OP_DELETE,
    OpKind.GET: kv_pb2.TXN_OP_GET,
}
_TARGET_FROM_WIRE: Final[Mapping[int, CompareTarget]] = {
    int(wire): target for target, wire in _TARGET_TO_WIRE.items()
}
_OP_FROM_WIRE: Final[Mapping[int, CompareOp]] = {int(wire): op for op, wire in _OP_TO_WIRE.items()}
_KIND_FROM_WIRE: Final[Mapping[int, OpKind]] = {
    int(wire): kind for kind, wire in _KIND_TO_WIRE.items()
}


def _from_wire(table: Mapping[int, T], value: int, what: str) -> T:
    found = table.get(int(value))
    if found is None:
        raise InvalidRequestError(f"unknown {what} {value}")
    return found


def txn_request_to_proto(request: TxnRequest) -> kv_pb2.TxnRequest:
    return kv_pb2.TxnRequest(
        compare=[
            kv_pb2.TxnCompare(
                key=c.key,
                target=_TARGET_TO_WIRE[c.target],
                op=_OP_TO_WIRE[c.op],
                value=c.value,
                version=c.version,
                exists=c.exists,
            )
            for c in request.compare
        ],
        success=[_op_to_proto(op) for op in request.success],
        failure=[_op_to_proto(op) for op in request.failure],
    )


def _op_to_proto(op: TxnOp) -> kv_pb2.TxnOp:
    return kv_pb2.TxnOp(kind=_KIND_TO_WIRE[op.kind], key=op.key, value=op.value)


def txn_request_from_proto(message: kv_pb2.TxnRequest) -> TxnRequest:
    """The request's model (not yet validated: the node validates against its limits)."""
    count = len(message.compare) + len(message.success) + len(message.failure)
    if count > cluster_limits.TXN_OPS_MAX:
        raise TooLargeError(
            f"the transaction has {count} compares and ops; the limit is "
            f"{cluster_limits.TXN_OPS_MAX}"
        )
    compares = []
    for c in message.compare:
        target = _from_wire(_TARGET_FROM_WIRE, c.target, "compare target")
        op = _from_wire(_OP_FROM_WIRE, c.op, "compare op")
        compares.append(Compare(c.key, target, op, c.value, c.version, c.exists))
    return TxnRequest(
        tuple(compares),
        tuple(_op_from_proto(op) for op in message.success),
        tuple(_op_from_proto(op) for op in message.failure),
    )


def _op_from_proto(op: kv_pb2.TxnOp) -> TxnOp:
    kind = _from_wire(_KIND_FROM_WIRE, op.kind, "op kind")
    if kind is not OpKind.PUT and op.value:
        raise InvalidRequestError(f"a {kind.value} takes no value")
    return TxnOp(kind, op.key, op.value)


def txn_response_to_proto(response: TxnResponse) -> kv_pb2.TxnResponse:
    return kv_pb2.TxnResponse(
        succeeded=response.succeeded,
        results=[
            kv_pb2.TxnOpResult(
                kind=_KIND_TO_WIRE[r.kind],
                version=r.version,
                deleted=r.deleted,
                found=r.value is not None,
                value=r.value or b"",
            )
            for r in response.results
        ],
    )


def txn_response_from_proto(message: kv_pb2.TxnResponse) -> TxnResponse:
    results = []
    for r in message.results:
        kind = _from_wire(_KIND_FROM_WIRE, r.kind, "op kind")
        value = r.value if (kind is OpKind.GET and r.found) else None
        results.append(OpResult(kind, r.version, r.deleted, value))
    return TxnResponse(message.succeeded, tuple(results))


# ------------------------------------------------------------------------------- sessions


def session_from_proto(request: kv_pb2.PutRequest | kv_pb2.DeleteRequest) -> WriteSession | None:
    """The write's session, if it carries one; InvalidRequestError names a bad field."""
    if not request.HasField("session"):
        return None
    message = request.session
    try:
        return WriteSession(message.client_id, message.seq, message.acked, message.retry).check()
    except SessionError as error:
        raise InvalidRequestError(str(error)) from None


def session_to_proto(session: WriteSession | None) -> kv_pb2.WriteSession | None:
    if session is None:
        return None
    return kv_pb2.WriteSession(
        client_id=session.client_id, seq=session.seq, acked=session.acked, retry=session.retry
    )
