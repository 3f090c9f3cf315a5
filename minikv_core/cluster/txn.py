"""Transactions: the compare / success / failure model, its JSON form, and its evaluation.

A transaction is etcd's shape: `compare` is a list of conditions on keys; if every one holds,
the `success` ops run, else the `failure` ops, all atomically:

    {"compare": [{"key": "a", "target": "value",   "op": "==", "value": "x"},
                 {"key": "b", "target": "version", "op": "<",  "version": 3},
                 {"key": "c", "target": "exists",  "value": false}],
     "success": [{"op": "put", "key": "a", "value": "y"}, {"op": "delete", "key": "b"},
                 {"op": "get", "key": "c"}],
     "failure": [...]}

Decided here (and why):
- **Reads see the state before the transaction.** Every compare and every get reads the keys
  as they were when the transaction took effect, before its own writes: one consistent state
  of all keys involved, whichever shards they live on. (etcd runs ops in order, so a get after
  a put of the same key sees the put; across shards that would need the put's version before
  its shard has decided it.)
- **A branch writes each key at most once** (put or delete), as etcd refuses duplicate keys:
  every write of a shard's part gets one version, and two writes of one key would share it.
- **Versions**: a missing key has version 0; `exists` compares accept `==` and `!=` only,
  value compares `==` and `!=` (a missing key's value equals nothing), version compares also
  `<` and `>`.
- **Binary data**: `value_b64` / `key_b64` (standard base64) instead of `value` / `key`.
- **Limits** (cluster/limits.py): TXN_OPS_MAX ops and compares, TXN_BYTES_MAX key and value
  bytes in all; more is TooLargeError (HTTP 413). Keys and values also obey the node's own
  key and value limits.

This module is pure (no I/O): parsing for the APIs, the result document for HTTP, and
`evaluate_compare` / `run_reads` used by the shard state machine at apply time.
"""

from __future__ import annotations

import base64
import binascii
import enum
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from minikv_core.cluster import limits
from minikv_core.cluster.service import InvalidRequestError, TooLargeError

SYSTEM_KEY_PREFIX = b"\xff\xffminikv/txn/"
"""Keys reserved for transaction state inside each shard's engine (intents, records). Client
keys starting with it are refused, and scans never return them."""


class CompareTarget(enum.Enum):
    VALUE = "value"
    VERSION = "version"
    EXISTS = "exists"


class CompareOp(enum.Enum):
    EQUAL = "=="
    NOT_EQUAL = "!="
    LESS = "<"
    GREATER = ">"


class OpKind(enum.Enum):
    PUT = "put"
    DELETE = "delete"
    GET = "get"


@dataclass(frozen=True, slots=True)
class Compare:
    """One condition. `value` is used by VALUE, `version` by VERSION, `exists` by EXISTS."""

    key: bytes
    target: CompareTarget
    op: CompareOp = CompareOp.EQUAL
    value: bytes = b""
    version: int = 0
    exists: bool = True


@dataclass(frozen=True, slots=True)
class TxnOp:
    kind: OpKind
    key: bytes
    value: bytes = b""
    """PUT only."""


@dataclass(frozen=True, slots=True)
class TxnRequest:
    compare: tuple[Compare, ...] = ()
    success: tuple[TxnOp, ...] = ()
    failure: tuple[TxnOp, ...] = ()

    @property
    def keys(self) -> list[bytes]:
        """Every key the transaction touches, in the order given (duplicates kept)."""
        return (
            [c.key for c in self.compare]
            + [o.key for o in self.success]
            + [o.key for o in self.failure]
        )


@dataclass(frozen=True, slots=True)
class OpResult:
    kind: OpKind
    version: int = 0
    """PUT: the key's new version. GET: the key's version (0 when missing)."""
    deleted: bool = False
    """DELETE: whether the key existed."""
    value: bytes | None = None
    """GET: the value, None when the key does not exist."""


@dataclass(frozen=True, slots=True)
class TxnResponse:
    succeeded: bool
    """Whether every compare held (the success branch ran)."""
    results: tuple[OpResult, ...]
    """One per op of the branch that ran, in order."""


# ------------------------------------------------------------------------------ validation


def _too_many(count: int) -> TooLargeError:
    return TooLargeError(
        f"the transaction has {count} compares and ops; the limit is {limits.TXN_OPS_MAX}"
    )


def validate(
    request: TxnRequest,
    *,
    key_size_bytes_max: int = limits.COMMAND_KEY_SIZE_BYTES_MAX,
    value_size_bytes_max: int = limits.COMMAND_VALUE_SIZE_BYTES_MAX,
) -> TxnRequest:
    """Check a transaction built in code (the parsers call it too); returns it.

    Raises InvalidRequestError (bad shape: empty key, reserved key, a key written twice in one
    branch, a negative version, a compare op the target does not allow) or TooLargeError (over
    a limit; the message names it)."""
    count = len(request.compare) + len(request.success) + len(request.failure)
    if count == 0:
        # Nothing to decide or do: the coordinator has no shard to run it on.
        raise InvalidRequestError("the transaction is empty: give compare, success or failure")
    if count > limits.TXN_OPS_MAX:
        raise _too_many(count)
    total = 0
    for number, compare in enumerate(request.compare):
        where = f"compare {number}"
        _check_key(compare.key, where, key_size_bytes_max)
        total += len(compare.key)
        if not isinstance(compare.target, CompareTarget) or not isinstance(compare.op, CompareOp):
            raise InvalidRequestError(f"{where}: target and op must be CompareTarget/CompareOp")
        if compare.target is CompareTarget.VALUE:
            _check_value(compare.value, where, value_size_bytes_max)
            total += len(compare.value)
        if compare.target is CompareTarget.VERSION and (
            isinstance(compare.version, bool)
            or not isinstance(compare.version, int)
            or not 0 <= compare.version < 2**64
        ):
            raise InvalidRequestError(f"{where}: version must be an integer in 0..2**64-1")
        if compare.target is not CompareTarget.VERSION and compare.op in (
            CompareOp.LESS,
            CompareOp.GREATER,
        ):
            raise InvalidRequestError(
                f"{where}: {compare.op.value!r} compares versions only; "
                f"use '==' or '!=' for {compare.target.value}"
            )
    for branch, ops in (("success", request.success), ("failure", request.failure)):
        written: set[bytes] = set()
        for number, op in enumerate(ops):
            where = f"{branch} op {number}"
            if not isinstance(op.kind, OpKind):
                raise InvalidRequestError(f"{where}: kind must be an OpKind")
            _check_key(op.key, where, key_size_bytes_max)
            total += len(op.key)
            if op.kind is OpKind.PUT:
                _check_value(op.value, where, value_size_bytes_max)
                total += len(op.value)
            if op.kind is not OpKind.GET:
                if op.key in written:
                    raise InvalidRequestError(
                        f"{where}: key {op.key[:32]!r} is written twice in the {branch} "
                        "branch; a branch writes each key at most once"
                    )
                written.add(op.key)
    if total > limits.TXN_BYTES_MAX:
        raise TooLargeError(
            f"the transaction's keys and values are {total} bytes; the limit is "
            f"{limits.TXN_BYTES_MAX} bytes"
        )
    return request


def _check_key(key: object, where: str, size_max: int) -> None:
    if not isinstance(key, bytes):
        raise InvalidRequestError(f"{where}: the key must be bytes")
    if not key:
        raise InvalidRequestError(f"{where}: the key is empty; keys are 1 or more bytes")
    if len(key) > size_max:
        raise TooLargeError(f"{where}: the key is {len(key)} bytes; the limit is {size_max} bytes")
    if key.startswith(SYSTEM_KEY_PREFIX):
        raise InvalidRequestError(
            f"{where}: keys starting with {SYSTEM_KEY_PREFIX!r} are reserved for transactions"
        )


def _check_value(value: object, where: str, size_max: int) -> None:
    if not isinstance(value, bytes):
        raise InvalidRequestError(f"{where}: the value must be bytes")
    if len(value) > size_max:
        raise TooLargeError(
            f"{where}: the value is {len(value)} bytes; the limit is {size_max} bytes"
        )


# ---------------------------------------------------------------------------------- JSON


_COMPARE_FIELDS = frozenset({"key", "key_b64", "target", "op", "value", "value_b64", "version"})
_OP_FIELDS = frozenset({"op", "key", "key_b64", "value", "value_b64"})


def parse_document(
    document: object,
    *,
    key_size_bytes_max: int = limits.COMMAND_KEY_SIZE_BYTES_MAX,
    value_size_bytes_max: int = limits.COMMAND_VALUE_SIZE_BYTES_MAX,
) -> TxnRequest:
    """The transaction of a JSON document (already decoded), validated.

    Unknown fields are refused (a typo must not silently drop a condition). Errors name the
    place: `compare 2: target must be one of value, version, exists`."""
    if not isinstance(document, Mapping):
        raise InvalidRequestError(f"a transaction is a JSON object, got {type(document).__name__}")
    unknown = sorted(set(document) - {"compare", "success", "failure"})
    if unknown:
        raise InvalidRequestError(
            f"unknown field(s) {', '.join(map(str, unknown))}; known: compare, success, failure"
        )
    lists: dict[str, list[Any]] = {}
    for name in ("compare", "success", "failure"):
        value = document.get(name, [])
        if value is None:
            value = []
        if not isinstance(value, list):
            raise InvalidRequestError(f"{name} must be a list, got {type(value).__name__}")
        lists[name] = value
    count = sum(len(items) for items in lists.values())
    if count > limits.TXN_OPS_MAX:
        raise _too_many(count)
    if not lists["success"] and not lists["failure"] and not lists["compare"]:
        raise InvalidRequestError("the transaction is empty: give compare, success or failure")
    request = TxnRequest(
        compare=tuple(_parse_compare(item, n) for n, item in enumerate(lists["compare"])),
        success=tuple(
            _parse_op(item, f"success op {n}") for n, item in enumerate(lists["success"])
        ),
        failure=tuple(
            _parse_op(item, f"failure op {n}") for n, item in enumerate(lists["failure"])
        ),
    )
    return validate(
        request, key_size_bytes_max=key_size_bytes_max, value_size_bytes_max=value_size_bytes_max
    )


def _object(item: object, where: str, fields: frozenset[str]) -> Mapping[str, Any]:
    if not isinstance(item, Mapping):
        raise InvalidRequestError(f"{where} must be a JSON object, got {type(item).__name__}")
    unknown = sorted(set(item) - fields)
    if unknown:
        raise InvalidRequestError(
            f"{where}: unknown field(s) {', '.join(map(str, unknown))}; "
            f"known: {', '.join(sorted(fields))}"
        )
    return item


def _bytes_field(item: Mapping[str, Any], name: str, where: str, *, required: bool) -> bytes | None:
    """`name` (text, UTF-8) or `name_b64` (base64), not both."""
    text = item.get(name)
    encoded = item.get(f"{name}_b64")
    if text is not None and encoded is not None:
        raise InvalidRequestError(f"{where}: give {name} or {name}_b64, not both")
    if text is not None:
        if not isinstance(text, str):
            raise InvalidRequestError(
                f"{where}: {name} must be a string (use {name}_b64 for binary data)"
            )
        return text.encode("utf-8")
    if encoded is not None:
        if not isinstance(encoded, str):
            raise InvalidRequestError(f"{where}: {name}_b64 must be a base64 string")
        try:
            return base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            raise InvalidRequestError(f"{where}: {name}_b64 is not valid base64") from None
    if required:
        raise InvalidRequestError(f"{where}: {name} (or {name}_b64) is missing")
    return None


def _choice(item: Mapping[str, Any], name: str, where: str, kind: type[enum.Enum]) -> Any:
    text = item.get(name)
    try:
        return kind(text)
    except ValueError:
        choices = ", ".join(str(member.value) for member in kind)
        raise InvalidRequestError(
            f"{where}: {name} must be one of {choices}, got {text!r}"
        ) from None


def _parse_compare(item: object, number: int) -> Compare:
    where = f"compare {number}"
    fields = _object(item, where, _COMPARE_FIELDS)
    key = _bytes_field(fields, "key", where, required=True)
    assert key is not None
    target: CompareTarget = _choice(fields, "target", where, CompareTarget)
    op: CompareOp = (
        CompareOp.EQUAL if fields.get("op") is None else _choice(fields, "op", where, CompareOp)
    )
    if target is CompareTarget.EXISTS:
        exists = fields.get("value")
        if not isinstance(exists, bool):
            raise InvalidRequestError(f"{where}: an exists compare needs value true or false")
        return Compare(key, target, op, exists=exists)
    if target is CompareTarget.VERSION:
        version = fields.get("version")
        if isinstance(version, bool) or not isinstance(version, int):
            raise InvalidRequestError(f"{where}: a version compare needs an integer version")
        return Compare(key, target, op, version=version)
    value = _bytes_field(fields, "value", where, required=True)
    assert value is not None
    return Compare(key, target, op, value=value)


def _parse_op(item: object, where: str) -> TxnOp:
    fields = _object(item, where, _OP_FIELDS)
    kind: OpKind = _choice(fields, "op", where, OpKind)
    key = _bytes_field(fields, "key", where, required=True)
    assert key is not None
    value = _bytes_field(fields, "value", where, required=kind is OpKind.PUT)
    if kind is not OpKind.PUT and value is not None:
        raise InvalidRequestError(f"{where}: a {kind.value} takes no value")
    return TxnOp(kind, key, value or b"")


def _text_or_b64(name: str, data: bytes, into: dict[str, Any]) -> None:
    try:
        into[name] = data.decode("utf-8")
    except UnicodeDecodeError:
        into[f"{name}_b64"] = base64.b64encode(data).decode("ascii")


def response_document(response: TxnResponse) -> dict[str, Any]:
    """The JSON answer: `{"succeeded": bool, "results": [...]}` (values as text or *_b64)."""
    results: list[dict[str, Any]] = []
    for result in response.results:
        item: dict[str, Any] = {"op": result.kind.value}
        if result.kind is OpKind.PUT:
            item["version"] = result.version
        elif result.kind is OpKind.DELETE:
            item["deleted"] = result.deleted
        elif result.value is None:
            item["value"] = None
            item["version"] = 0
        else:
            _text_or_b64("value", result.value, item)
            item["version"] = result.version
        results.append(item)
    return {"succeeded": response.succeeded, "results": results}


def request_document(request: TxnRequest) -> dict[str, Any]:
    """The JSON form of a transaction (the inverse of `parse_document`)."""
    compares: list[dict[str, Any]] = []
    for compare in request.compare:
        item: dict[str, Any] = {"target": compare.target.value, "op": compare.op.value}
        _text_or_b64("key", compare.key, item)
        if compare.target is CompareTarget.VALUE:
            _text_or_b64("value", compare.value, item)
        elif compare.target is CompareTarget.VERSION:
            item["version"] = compare.version
        else:
            item["value"] = compare.exists
        compares.append(item)

    def ops(branch: Sequence[TxnOp]) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for op in branch:
            item: dict[str, Any] = {"op": op.kind.value}
            _text_or_b64("key", op.key, item)
            if op.kind is OpKind.PUT:
                _text_or_b64("value", op.value, item)
            out.append(item)
        return out

    return {"compare": compares, "success": ops(request.success), "failure": ops(request.failure)}


# ------------------------------------------------------------------------------ evaluation

Reader = Callable[[bytes], "tuple[bytes, int] | None"]
"""A key's (value, version) in the state the transaction reads, or None when missing."""


def evaluate_compare(compare: Compare, current: tuple[bytes, int] | None) -> bool:
    """Whether `compare` holds for a key whose current (value, version) is `current`."""
    if compare.target is CompareTarget.EXISTS:
        holds = (current is not None) == compare.exists
        return holds if compare.op is CompareOp.EQUAL else not holds
    if compare.target is CompareTarget.VERSION:
        version = 0 if current is None else current[1]
        if compare.op is CompareOp.EQUAL:
            return version == compare.version
        if compare.op is CompareOp.NOT_EQUAL:
            return version != compare.version
        if compare.op is CompareOp.LESS:
            return version < compare.version
        return version > compare.version
    equal = current is not None and current[0] == compare.value
    return equal if compare.op is CompareOp.EQUAL else not equal
