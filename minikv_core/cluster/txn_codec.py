"""Binary form of transaction commands (Raft entry bodies), their results, and intent records.

A shard takes part in a transaction through five commands, each ONE Raft entry of that shard:

    ONE_PHASE  the whole transaction lives on this shard: evaluate and apply in one entry
    PREPARE    lock this shard's keys, evaluate its compares and gets, stage both branches
    RESOLVE    apply (commit, naming the branch) or drop (abort) a prepared part; unlock
    DECIDE     (home shard) set the transaction record; the first decision wins
    FINISH     (home shard) the home shard's whole part and the record, in one entry: the
               commit point of a transaction whose other participants are prepared
    FORGET     (home shard) delete the record once every participant has resolved

Layout (little-endian; `struct`-packed; `bytes` = len u32 | data):

    body       = kind u8 | payload
    ONE_PHASE  = part
    PREPARE    = txn_id[16] | home_shard u32 | expiry_ms u64 | part
    RESOLVE    = txn_id[16] | decision u8
    DECIDE     = txn_id[16] | decision u8
    FINISH     = txn_id[16] | flags u8 (1: the others' compares hold, 2: the success
                 branch writes somewhere, 4: the failure branch does) | part
    FORGET     = txn_id[16]
    part       = n_compare u32 | n_success u32 | n_failure u32 | compares | ops | ops
    compare    = index u32 | target u8 | op u8 | exists u8 | version u64 | key bytes | value bytes
    op         = index u32 | kind u8 | key bytes | value bytes

`index` is the op's position in the client's transaction, so the coordinator can put the
results of every shard's part back in the client's order. Decoding checks every length against
the data and every enum, and applies `txn.validate` to the part, so a replica refuses exactly
what a proposer would (a malformed committed entry becomes a REJECTED result, never a crash).
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final

from minikv_core.cluster import limits
from minikv_core.cluster.service import InvalidRequestError, TooLargeError
from minikv_core.cluster.txn import (
    Compare,
    CompareOp,
    CompareTarget,
    OpKind,
    OpResult,
    TxnOp,
    TxnRequest,
    validate,
)


class TxnCodecError(ValueError):
    """Data that is not a valid transaction body, result or intent record."""


class BodyKind(enum.IntEnum):
    ONE_PHASE = 1
    PREPARE = 2
    RESOLVE = 3
    DECIDE = 4
    FORGET = 5
    FORGET_MANY = 6
    DECIDE_RESOLVE = 7
    RESOLVE_MANY = 8
    FINISH = 9


class Decision(enum.IntEnum):
    """A transaction record's state. ABORT drops staged writes; COMMIT_* applies one branch."""

    ABORT = 1
    COMMIT_SUCCESS = 2
    COMMIT_FAILURE = 3

    @property
    def committed(self) -> bool:
        return self is not Decision.ABORT


_OP_KINDS = {OpKind.PUT: 1, OpKind.DELETE: 2, OpKind.GET: 3}
_OP_KINDS_BY_CODE = {code: kind for kind, code in _OP_KINDS.items()}
_TARGETS = {CompareTarget.VALUE: 1, CompareTarget.VERSION: 2, CompareTarget.EXISTS: 3}
_TARGETS_BY_CODE = {code: target for target, code in _TARGETS.items()}
_COMPARE_OPS = {CompareOp.EQUAL: 1, CompareOp.NOT_EQUAL: 2, CompareOp.LESS: 3, CompareOp.GREATER: 4}
_COMPARE_OPS_BY_CODE = {code: op for op, code in _COMPARE_OPS.items()}

_U8 = struct.Struct("<B")
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
_U8U8 = struct.Struct("<BB")
_PART_HEADER = struct.Struct("<III")
_COMPARE_HEADER = struct.Struct("<IBBBQ")  # index, target, op, exists, version
_OP_HEADER = struct.Struct("<IB")  # index, kind
_PREPARE_HEADER = struct.Struct("<IQ")  # home shard, expiry ms
_RESULT_HEADER = struct.Struct("<IBBQ")  # index, kind, flags, version
_BLOCKER = struct.Struct("<IQ")  # home shard, expiry ms

# The fixed bytes per op and per command stay under the bounds limits.py reasons with.
assert _COMPARE_HEADER.size + 2 * _U32.size <= limits.TXN_OP_OVERHEAD_BYTES_MAX
assert _OP_HEADER.size + 2 * _U32.size <= limits.TXN_OP_OVERHEAD_BYTES_MAX
assert (
    _U8.size + limits.TXN_ID_BYTES + _PREPARE_HEADER.size + _PART_HEADER.size
    <= limits.TXN_COMMAND_HEADER_BYTES_MAX
)


class _Writer:
    __slots__ = ("parts",)

    def __init__(self) -> None:
        self.parts: list[bytes] = []

    def pack(self, layout: struct.Struct, *values: int) -> None:
        self.parts.append(layout.pack(*values))

    def raw(self, data: bytes) -> None:
        self.parts.append(data)

    def bytes_(self, data: bytes) -> None:
        self.parts.append(_U32.pack(len(data)))
        self.parts.append(data)

    def result(self) -> bytes:
        return b"".join(self.parts)


class _Reader:
    __slots__ = ("data", "offset")

    def __init__(self, data: bytes | memoryview) -> None:
        self.data = memoryview(data)
        self.offset = 0

    def unpack(self, layout: struct.Struct, what: str) -> tuple[int, ...]:
        if self.offset + layout.size > len(self.data):
            raise TxnCodecError(f"{what} is cut short at byte offset {self.offset}")
        values = layout.unpack_from(self.data, self.offset)
        self.offset += layout.size
        return tuple(values)

    def raw(self, size: int, what: str) -> bytes:
        if self.offset + size > len(self.data):
            raise TxnCodecError(f"{what} is cut short at byte offset {self.offset}")
        data = bytes(self.data[self.offset : self.offset + size])
        self.offset += size
        return data

    def bytes_(self, what: str) -> bytes:
        (size,) = self.unpack(_U32, what)
        return self.raw(size, what)

    def end(self) -> None:
        if self.offset != len(self.data):
            raise TxnCodecError(
                f"{len(self.data) - self.offset} trailing bytes at offset {self.offset}"
            )


def _enum(table: dict[int, enum.Enum], code: int, what: str) -> enum.Enum:
    member = table.get(code)
    if member is None:
        raise TxnCodecError(f"unknown {what} {code}")
    return member


# ---------------------------------------------------------------------------------- parts


@dataclass(frozen=True, slots=True)
class ShardPart:
    """The compares and ops of one transaction that touch one shard, with their positions in
    the client's transaction (`*_index`)."""

    compare: tuple[Compare, ...] = ()
    compare_index: tuple[int, ...] = ()
    success: tuple[TxnOp, ...] = ()
    success_index: tuple[int, ...] = ()
    failure: tuple[TxnOp, ...] = ()
    failure_index: tuple[int, ...] = ()

    @classmethod
    def whole(cls, request: TxnRequest) -> ShardPart:
        return cls(
            request.compare,
            tuple(range(len(request.compare))),
            request.success,
            tuple(range(len(request.success))),
            request.failure,
            tuple(range(len(request.failure))),
        )

    def request(self) -> TxnRequest:
        return TxnRequest(self.compare, self.success, self.failure)

    def read_keys(self) -> set[bytes]:
        return {c.key for c in self.compare} | {
            o.key for o in (*self.success, *self.failure) if o.kind is OpKind.GET
        }

    def write_keys(self) -> set[bytes]:
        return {o.key for o in (*self.success, *self.failure) if o.kind is not OpKind.GET}


def split_by_shard(request: TxnRequest, shard_of: Callable[[bytes], int]) -> dict[int, ShardPart]:
    """The transaction's parts by shard, each op keeping its position in the client's txn."""
    compares: dict[int, list[tuple[int, Compare]]] = {}
    success: dict[int, list[tuple[int, TxnOp]]] = {}
    failure: dict[int, list[tuple[int, TxnOp]]] = {}
    for index, compare in enumerate(request.compare):
        compares.setdefault(shard_of(compare.key), []).append((index, compare))
    for index, op in enumerate(request.success):
        success.setdefault(shard_of(op.key), []).append((index, op))
    for index, op in enumerate(request.failure):
        failure.setdefault(shard_of(op.key), []).append((index, op))
    parts: dict[int, ShardPart] = {}
    for shard in sorted(set(compares) | set(success) | set(failure)):
        c = compares.get(shard, [])
        s = success.get(shard, [])
        f = failure.get(shard, [])
        parts[shard] = ShardPart(
            tuple(x for _, x in c),
            tuple(i for i, _ in c),
            tuple(x for _, x in s),
            tuple(i for i, _ in s),
            tuple(x for _, x in f),
            tuple(i for i, _ in f),
        )
    return parts


def _write_part(writer: _Writer, part: ShardPart) -> None:
    assert len(part.compare) == len(part.compare_index)
    assert len(part.success) == len(part.success_index)
    assert len(part.failure) == len(part.failure_index)
    writer.pack(_PART_HEADER, len(part.compare), len(part.success), len(part.failure))
    for compare, index in zip(part.compare, part.compare_index, strict=True):
        writer.pack(
            _COMPARE_HEADER,
            index,
            _TARGETS[compare.target],
            _COMPARE_OPS[compare.op],
            int(compare.exists),
            compare.version,
        )
        writer.bytes_(compare.key)
        writer.bytes_(compare.value)
    for ops, indexes in ((part.success, part.success_index), (part.failure, part.failure_index)):
        for op, index in zip(ops, indexes, strict=True):
            writer.pack(_OP_HEADER, index, _OP_KINDS[op.kind])
            writer.bytes_(op.key)
            writer.bytes_(op.value)


def _read_part(reader: _Reader) -> ShardPart:
    n_compare, n_success, n_failure = reader.unpack(_PART_HEADER, "part header")
    if n_compare + n_success + n_failure > limits.TXN_OPS_MAX:
        raise TxnCodecError(
            f"part of {n_compare + n_success + n_failure} ops (at most {limits.TXN_OPS_MAX})"
        )
    compares: list[Compare] = []
    compare_index: list[int] = []
    for _ in range(n_compare):
        index, target, op, exists, version = reader.unpack(_COMPARE_HEADER, "compare")
        key = reader.bytes_("compare key")
        value = reader.bytes_("compare value")
        compares.append(
            Compare(
                key,
                _enum(_TARGETS_BY_CODE, target, "compare target"),  # type: ignore[arg-type]
                _enum(_COMPARE_OPS_BY_CODE, op, "compare op"),  # type: ignore[arg-type]
                value,
                version,
                bool(exists),
            )
        )
        compare_index.append(index)
    branches: list[tuple[tuple[TxnOp, ...], tuple[int, ...]]] = []
    for count in (n_success, n_failure):
        ops: list[TxnOp] = []
        indexes: list[int] = []
        for _ in range(count):
            index, kind = reader.unpack(_OP_HEADER, "op")
            key = reader.bytes_("op key")
            value = reader.bytes_("op value")
            ops.append(TxnOp(_enum(_OP_KINDS_BY_CODE, kind, "op kind"), key, value))  # type: ignore[arg-type]
            indexes.append(index)
        branches.append((tuple(ops), tuple(indexes)))
    part = ShardPart(tuple(compares), tuple(compare_index), *branches[0], *branches[1])
    try:
        validate(part.request())
    except (InvalidRequestError, TooLargeError) as error:
        raise TxnCodecError(f"invalid transaction part: {error}") from None
    return part


# ------------------------------------------------------------------------------- bodies


@dataclass(frozen=True, slots=True)
class OnePhase:
    part: ShardPart


@dataclass(frozen=True, slots=True)
class Prepare:
    txn_id: bytes
    home_shard: int
    expiry_ms: int
    """Wall-clock milliseconds after which others may resolve this transaction's intents."""
    part: ShardPart


@dataclass(frozen=True, slots=True)
class Resolve:
    txn_id: bytes
    decision: Decision


@dataclass(frozen=True, slots=True)
class ResolveMany:
    """RESOLVE of many transactions' intents on one shard, in order, as one entry: a
    coordinator batches the background resolves it sends a shard (one Raft entry and one
    forward per batch instead of per transaction)."""

    items: tuple[Resolve, ...]


@dataclass(frozen=True, slots=True)
class Decide:
    txn_id: bytes
    decision: Decision
    resolve: bool = False
    """Also resolve this shard's own intent of the transaction by the recorded decision (the
    home shard is a participant). A kind of its own on the wire (DECIDE_RESOLVE), so a log
    written before it existed replays with the meaning its entries had."""


@dataclass(frozen=True, slots=True)
class Finish:
    """The home shard's part, evaluated and applied at once together with the record: the
    commit point of a transaction whose other participants hold their prepared intents.

    Why one entry: the home shard needs no intent of its own (nothing can change its keys
    between the evaluation and the decision, both happen in this entry), which saves a
    two-shard transaction one of its three Raft entries. `others_hold`: every other
    participant's compares held at its prepare (under locks still held), so the branch is
    success exactly if they and this part's compares hold. `success_writes` /
    `failure_writes`: whether that branch writes on any shard; a transaction that may write
    always leaves a record (txn_locks.py says why)."""

    txn_id: bytes
    others_hold: bool
    success_writes: bool
    failure_writes: bool
    part: ShardPart


@dataclass(frozen=True, slots=True)
class Forget:
    """Delete these transactions' records: coordinators batch the records of many finished
    transactions into one entry (a record is only needed while an intent of it remains)."""

    txn_ids: tuple[bytes, ...]


TxnBody = OnePhase | Prepare | Resolve | ResolveMany | Decide | Finish | Forget


def _check_txn_id(txn_id: bytes) -> None:
    if not isinstance(txn_id, bytes) or len(txn_id) != limits.TXN_ID_BYTES:
        raise TxnCodecError(f"a transaction id is {limits.TXN_ID_BYTES} bytes")


_BATCH_MAX: Final = {
    BodyKind.RESOLVE_MANY: limits.TXN_RESOLVE_BATCH_MAX,
    BodyKind.FORGET_MANY: limits.TXN_FORGET_BATCH_MAX,
}


def _write_batch_header(writer: _Writer, kind: BodyKind, count: int) -> None:
    if not 1 <= count <= _BATCH_MAX[kind]:
        raise TxnCodecError(
            f"a {kind.name} names 1 to {_BATCH_MAX[kind]} transactions, not {count}"
        )
    writer.pack(_U8, kind)
    writer.pack(_U32, count)


def _read_batch_count(reader: _Reader, kind: BodyKind) -> int:
    (count,) = reader.unpack(_U32, "transaction count")
    if not 1 <= count <= _BATCH_MAX[kind]:
        raise TxnCodecError(f"a {kind.name} names {count} transactions (1 to {_BATCH_MAX[kind]})")
    return int(count)


def _read_decision(reader: _Reader) -> Decision:
    (code,) = reader.unpack(_U8, "decision")
    return _decision(code)


def _decision(code: int) -> Decision:
    try:
        return Decision(code)
    except ValueError:
        raise TxnCodecError(f"unknown decision {code}") from None


def encode_body(body: TxnBody) -> bytes:
    writer = _Writer()
    if isinstance(body, OnePhase):
        writer.pack(_U8, BodyKind.ONE_PHASE)
        _write_part(writer, body.part)
    elif isinstance(body, Prepare):
        _check_txn_id(body.txn_id)
        writer.pack(_U8, BodyKind.PREPARE)
        writer.raw(body.txn_id)
        writer.pack(_PREPARE_HEADER, body.home_shard, body.expiry_ms)
        _write_part(writer, body.part)
    elif isinstance(body, Resolve | Decide):
        _check_txn_id(body.txn_id)
        if isinstance(body, Resolve):
            kind = BodyKind.RESOLVE
        else:
            kind = BodyKind.DECIDE_RESOLVE if body.resolve else BodyKind.DECIDE
        writer.pack(_U8, kind)
        writer.raw(body.txn_id)
        writer.pack(_U8, Decision(body.decision))
    elif isinstance(body, Finish):
        _check_txn_id(body.txn_id)
        writer.pack(_U8, BodyKind.FINISH)
        writer.raw(body.txn_id)
        flags = int(body.others_hold) | int(body.success_writes) << 1
        writer.pack(_U8, flags | int(body.failure_writes) << 2)
        _write_part(writer, body.part)
    elif isinstance(body, ResolveMany):
        _write_batch_header(writer, BodyKind.RESOLVE_MANY, len(body.items))
        for item in body.items:
            _check_txn_id(item.txn_id)
            writer.raw(item.txn_id)
            writer.pack(_U8, Decision(item.decision))
    else:
        _write_batch_header(writer, BodyKind.FORGET_MANY, len(body.txn_ids))
        for txn_id in body.txn_ids:
            _check_txn_id(txn_id)
            writer.raw(txn_id)
    data = writer.result()
    if len(data) > limits.TXN_COMMAND_BYTES_MAX:
        raise TxnCodecError(
            f"transaction command of {len(data)} bytes (at most {limits.TXN_COMMAND_BYTES_MAX})"
        )
    return data


def decode_body(data: bytes | memoryview) -> TxnBody:
    """Raises TxnCodecError naming the problem."""
    reader = _Reader(data)
    (kind,) = reader.unpack(_U8, "body kind")
    body: TxnBody
    if kind == BodyKind.ONE_PHASE:
        body = OnePhase(_read_part(reader))
    elif kind == BodyKind.PREPARE:
        txn_id = reader.raw(limits.TXN_ID_BYTES, "transaction id")
        home, expiry = reader.unpack(_PREPARE_HEADER, "prepare header")
        body = Prepare(txn_id, home, expiry, _read_part(reader))
    elif kind in (BodyKind.RESOLVE, BodyKind.DECIDE, BodyKind.DECIDE_RESOLVE):
        txn_id = reader.raw(limits.TXN_ID_BYTES, "transaction id")
        decision = _read_decision(reader)
        body = (
            Resolve(txn_id, decision)
            if kind == BodyKind.RESOLVE
            else Decide(txn_id, decision, resolve=kind == BodyKind.DECIDE_RESOLVE)
        )
    elif kind == BodyKind.FINISH:
        txn_id = reader.raw(limits.TXN_ID_BYTES, "transaction id")
        (flags,) = reader.unpack(_U8, "finish flags")
        if flags & ~7:
            raise TxnCodecError(f"unknown finish flags {flags:#x}")
        body = Finish(txn_id, bool(flags & 1), bool(flags & 2), bool(flags & 4), _read_part(reader))
    elif kind == BodyKind.RESOLVE_MANY:
        count = _read_batch_count(reader, BodyKind.RESOLVE_MANY)
        body = ResolveMany(
            tuple(
                Resolve(reader.raw(limits.TXN_ID_BYTES, "transaction id"), _read_decision(reader))
                for _ in range(count)
            )
        )
    elif kind == BodyKind.FORGET:  # one id: the format before FORGET_MANY, still in old logs
        body = Forget((reader.raw(limits.TXN_ID_BYTES, "transaction id"),))
    elif kind == BodyKind.FORGET_MANY:
        count = _read_batch_count(reader, BodyKind.FORGET_MANY)
        body = Forget(
            tuple(reader.raw(limits.TXN_ID_BYTES, "transaction id") for _ in range(count))
        )
    else:
        raise TxnCodecError(f"unknown transaction command kind {kind}")
    reader.end()
    return body


# ------------------------------------------------------------------------------ results


@dataclass(frozen=True, slots=True)
class Blocker:
    """A prepared transaction holding a lock that another request met."""

    txn_id: bytes
    home_shard: int
    expiry_ms: int


@dataclass(frozen=True, slots=True)
class Conflict:
    """Nothing was applied: `blockers` hold locks on keys this request needs (empty when the
    shard holds too many prepared transactions)."""

    blockers: tuple[Blocker, ...]
    reason: str = ""


@dataclass(frozen=True, slots=True)
class PartDone:
    """ONE_PHASE applied: which branch ran and its results (positions in the client's txn)."""

    succeeded: bool
    results: tuple[tuple[int, OpResult], ...]


@dataclass(frozen=True, slots=True)
class Prepared:
    """PREPARE took its locks: this part's compares, and each branch's results."""

    compares_hold: bool
    success: tuple[tuple[int, OpResult], ...]
    failure: tuple[tuple[int, OpResult], ...]


@dataclass(frozen=True, slots=True)
class Resolved:
    had_intent: bool


@dataclass(frozen=True, slots=True)
class Decided:
    decision: Decision
    """The record's decision after this command: the first one proposed wins."""


@dataclass(frozen=True, slots=True)
class Forgotten:
    existed: bool
    """Whether any of the named records still existed."""


@dataclass(frozen=True, slots=True)
class Finished:
    """FINISH applied, or found the record already there (a repeated FINISH answers what the
    first one did; a resolver's ABORT that got there first answers ABORT, nothing applied).

    `decision` is None only for a transaction that writes nowhere (no record); `succeeded`
    says which branch ran; `results` are the home part's results of that branch."""

    decision: Decision | None
    succeeded: bool
    results: tuple[tuple[int, OpResult], ...]


TxnResult = Conflict | PartDone | Prepared | Resolved | Decided | Forgotten | Finished


class _ResultKind(enum.IntEnum):
    CONFLICT = 1
    PART_DONE = 2
    PREPARED = 3
    RESOLVED = 4
    DECIDED = 5
    FORGOTTEN = 6
    FINISHED = 7


def _write_results(writer: _Writer, results: Sequence[tuple[int, OpResult]]) -> None:
    writer.pack(_U32, len(results))
    for index, result in results:
        flags = int(result.deleted) | (int(result.value is not None) << 1)
        writer.pack(_RESULT_HEADER, index, _OP_KINDS[result.kind], flags, result.version)
        writer.bytes_(result.value or b"")


def _read_results(reader: _Reader) -> tuple[tuple[int, OpResult], ...]:
    (count,) = reader.unpack(_U32, "result count")
    if count > limits.TXN_OPS_MAX:
        raise TxnCodecError(f"{count} results (at most {limits.TXN_OPS_MAX})")
    out: list[tuple[int, OpResult]] = []
    for _ in range(count):
        index, kind, flags, version = reader.unpack(_RESULT_HEADER, "op result")
        value = reader.bytes_("op result value")
        out.append(
            (
                index,
                OpResult(
                    _enum(_OP_KINDS_BY_CODE, kind, "op kind"),  # type: ignore[arg-type]
                    version,
                    bool(flags & 1),
                    value if flags & 2 else None,
                ),
            )
        )
    return tuple(out)


def encode_result(result: TxnResult) -> bytes:
    writer = _Writer()
    if isinstance(result, Conflict):
        writer.pack(_U8, _ResultKind.CONFLICT)
        writer.pack(_U32, len(result.blockers))
        for blocker in result.blockers:
            writer.raw(blocker.txn_id)
            writer.pack(_BLOCKER, blocker.home_shard, blocker.expiry_ms)
        writer.bytes_(result.reason.encode("utf-8"))
    elif isinstance(result, PartDone):
        writer.pack(_U8, _ResultKind.PART_DONE)
        writer.pack(_U8, int(result.succeeded))
        _write_results(writer, result.results)
    elif isinstance(result, Prepared):
        writer.pack(_U8, _ResultKind.PREPARED)
        writer.pack(_U8, int(result.compares_hold))
        _write_results(writer, result.success)
        _write_results(writer, result.failure)
    elif isinstance(result, Resolved):
        writer.pack(_U8, _ResultKind.RESOLVED)
        writer.pack(_U8, int(result.had_intent))
    elif isinstance(result, Decided):
        writer.pack(_U8, _ResultKind.DECIDED)
        writer.pack(_U8, result.decision)
    elif isinstance(result, Finished):
        writer.pack(_U8, _ResultKind.FINISHED)
        _write_outcome(writer, result)
    else:
        writer.pack(_U8, _ResultKind.FORGOTTEN)
        writer.pack(_U8, int(result.existed))
    return writer.result()


def decode_result(data: bytes | memoryview) -> TxnResult:
    """Raises TxnCodecError."""
    reader = _Reader(data)
    (kind,) = reader.unpack(_U8, "result kind")
    result: TxnResult
    if kind == _ResultKind.CONFLICT:
        (count,) = reader.unpack(_U32, "blocker count")
        if count > limits.TXN_OPS_MAX:
            raise TxnCodecError(f"{count} blockers (at most {limits.TXN_OPS_MAX})")
        blockers = []
        for _ in range(count):
            txn_id = reader.raw(limits.TXN_ID_BYTES, "blocker id")
            home, expiry = reader.unpack(_BLOCKER, "blocker")
            blockers.append(Blocker(txn_id, home, expiry))
        reason = reader.bytes_("conflict reason").decode("utf-8", "replace")
        result = Conflict(tuple(blockers), reason)
    elif kind == _ResultKind.PART_DONE:
        (succeeded,) = reader.unpack(_U8, "succeeded")
        result = PartDone(bool(succeeded), _read_results(reader))
    elif kind == _ResultKind.PREPARED:
        (holds,) = reader.unpack(_U8, "compares hold")
        success = _read_results(reader)
        result = Prepared(bool(holds), success, _read_results(reader))
    elif kind == _ResultKind.RESOLVED:
        (had,) = reader.unpack(_U8, "had intent")
        result = Resolved(bool(had))
    elif kind == _ResultKind.DECIDED:
        result = Decided(_read_decision(reader))
    elif kind == _ResultKind.FORGOTTEN:
        (existed,) = reader.unpack(_U8, "existed")
        result = Forgotten(bool(existed))
    elif kind == _ResultKind.FINISHED:
        result = _read_outcome(reader)
    else:
        raise TxnCodecError(f"unknown transaction result kind {kind}")
    reader.end()
    return result


def _write_outcome(writer: _Writer, finished: Finished) -> None:
    writer.pack(_U8, 0 if finished.decision is None else finished.decision)
    writer.pack(_U8, int(finished.succeeded))
    _write_results(writer, finished.results)


def _read_outcome(reader: _Reader) -> Finished:
    (code, succeeded) = reader.unpack(_U8U8, "finish outcome")
    decision = None if code == 0 else _decision(code)
    return Finished(decision, bool(succeeded), _read_results(reader))


# ---------------------------------------------------------------------- transaction records


def encode_record(finished: Finished) -> bytes:
    """A transaction record as FINISH stores it: the decision byte first (what every reader
    of records looks at; DECIDE writes that byte alone), then the outcome, so a repeated
    FINISH can answer exactly what the first one did."""
    assert finished.decision is not None
    writer = _Writer()
    _write_outcome(writer, finished)
    return writer.result()


def decode_record(data: bytes | memoryview) -> Finished:
    """Either form: a DECIDE's single decision byte (no outcome), or FINISH's."""
    if len(data) == 1:
        return Finished(_decision(data[0]), False, ())
    reader = _Reader(data)
    finished = _read_outcome(reader)
    reader.end()
    if finished.decision is None:
        raise TxnCodecError("a transaction record without a decision")
    return finished


# ------------------------------------------------------------------------- intent records


@dataclass(frozen=True, slots=True)
class Intent:
    """A prepared part as the shard stores it until resolved: what it locks and what each
    branch would write. `version` is the prepare entry's index: the version its writes get."""

    txn_id: bytes
    home_shard: int
    expiry_ms: int
    version: int
    read_keys: tuple[bytes, ...]
    success_writes: tuple[tuple[bytes, bytes | None], ...]
    """(key, value) of each put, (key, None) of each delete, of the success branch."""
    failure_writes: tuple[tuple[bytes, bytes | None], ...]

    def write_keys(self) -> set[bytes]:
        return {k for k, _ in self.success_writes} | {k for k, _ in self.failure_writes}

    def blocker(self) -> Blocker:
        return Blocker(self.txn_id, self.home_shard, self.expiry_ms)


_INTENT_HEADER = struct.Struct("<IQQIII")  # home, expiry, version, n_reads, n_success, n_failure


def encode_intent(intent: Intent) -> bytes:
    writer = _Writer()
    writer.raw(intent.txn_id)
    writer.pack(
        _INTENT_HEADER,
        intent.home_shard,
        intent.expiry_ms,
        intent.version,
        len(intent.read_keys),
        len(intent.success_writes),
        len(intent.failure_writes),
    )
    for key in intent.read_keys:
        writer.bytes_(key)
    for writes in (intent.success_writes, intent.failure_writes):
        for key, value in writes:
            writer.bytes_(key)
            writer.pack(_U8, int(value is not None))
            writer.bytes_(value or b"")
    return writer.result()


def decode_intent(data: bytes | memoryview) -> Intent:
    reader = _Reader(data)
    txn_id = reader.raw(limits.TXN_ID_BYTES, "intent id")
    home, expiry, version, n_reads, n_success, n_failure = reader.unpack(
        _INTENT_HEADER, "intent header"
    )
    if n_reads + n_success + n_failure > 2 * limits.TXN_OPS_MAX:
        raise TxnCodecError("intent record holds more keys than a transaction can")
    reads = tuple(reader.bytes_("intent read key") for _ in range(n_reads))
    branches: list[tuple[tuple[bytes, bytes | None], ...]] = []
    for count in (n_success, n_failure):
        writes: list[tuple[bytes, bytes | None]] = []
        for _ in range(count):
            key = reader.bytes_("intent write key")
            (present,) = reader.unpack(_U8, "intent write flag")
            value = reader.bytes_("intent write value")
            writes.append((key, value if present else None))
        branches.append(tuple(writes))
    reader.end()
    return Intent(txn_id, home, expiry, version, reads, branches[0], branches[1])
