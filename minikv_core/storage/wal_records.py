"""Typed payloads of the WAL record types the system writes, with their binary codecs.

The WAL itself stores opaque `(record_type, payload)` pairs (wal_format frames them and
checksums them); this module says what the payload of each type means. One dataclass per
type, each with `encode() -> bytes` and `decode(payload) -> Self`, all little-endian, fixed
headers packed by precompiled `struct.Struct` objects (no per-byte Python loops: the Raft
host encodes thousands of entries per group commit).

Layouts (all integers little-endian, unsigned):

    KV_BATCH          sequence u64 | op_count u32 | op_count x (kind u8 | key_len u32 |
                      value_len u32 | key | value)             value_len is 0 for a delete
    RAFT_ENTRY        group_id u32 | term u64 | index u64 | entry_type u8 | data (the rest)
    RAFT_HARD_STATE   group_id u32 | term u64 | vote u64 | commit u64       vote 0 = none
    RAFT_SNAPSHOT     group_id u32 | index u64 | term u64

Decoding checks that the payload has exactly the bytes its layout says; anything else is a
`RecordDecodeError` (the CRC already passed, so this is a writer bug, never a torn write).
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Callable, Sequence
from typing import ClassVar, Self

from minikv_core.frozen import frozen
from minikv_core.storage.errors import RecordDecodeError
from minikv_core.storage.speedups import encode_kv_batch as _c_encode_kv_batch


class RecordType(enum.IntEnum):
    """The type byte of a WAL frame. 0 is reserved: a zeroed frame header is never a record."""

    KV_BATCH = 1
    RAFT_ENTRY = 2
    RAFT_HARD_STATE = 3
    RAFT_SNAPSHOT = 4


class OpKind(enum.IntEnum):
    PUT = 1
    DELETE = 2


_U32_MAX = 2**32 - 1
_U64_MAX = 2**64 - 1

_KV_BATCH_HEADER = struct.Struct("<QI")
_KV_OP_HEADER = struct.Struct("<BII")
_RAFT_ENTRY_HEADER = struct.Struct("<IQQB")
_RAFT_HARD_STATE = struct.Struct("<IQQQ")
_RAFT_SNAPSHOT = struct.Struct("<IQQ")

RAFT_ENTRY_HEADER_BYTES = _RAFT_ENTRY_HEADER.size


def _check_uint(name: str, value: int, maximum: int) -> None:
    if not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if not 0 <= value <= maximum:
        raise ValueError(f"{name} must be in 0..{maximum}, got {value}")


def _check_bytes(name: str, value: object) -> bytes:
    if type(value) is bytes:
        return value
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    raise TypeError(f"{name} must be bytes, got {type(value).__name__}")


@frozen
class KvOp:
    """One operation of a standalone-store batch; `value` is b"" for a delete."""

    kind: OpKind
    key: bytes
    value: bytes = b""


@frozen
class KvBatch:
    """A batch of the standalone `Store`: applied atomically, in order, under `sequence`."""

    RECORD_TYPE: ClassVar[RecordType] = RecordType.KV_BATCH

    sequence: int
    ops: tuple[KvOp, ...]

    def encode(self) -> bytes:
        _check_uint("sequence", self.sequence, _U64_MAX)
        parts: list[bytes] = [_KV_BATCH_HEADER.pack(self.sequence, len(self.ops))]
        append = parts.append
        pack_op = _KV_OP_HEADER.pack
        for op in self.ops:
            key = _check_bytes("key", op.key)
            value = _check_bytes("value", op.value)
            if op.kind == OpKind.DELETE:
                if value:
                    raise ValueError(f"the delete of {key!r} carries a value; deletes have none")
            elif op.kind != OpKind.PUT:
                raise ValueError(f"unknown op kind {op.kind!r}")
            append(pack_op(op.kind, len(key), len(value)))
            append(key)
            if value:
                append(value)
        return b"".join(parts)

    @staticmethod
    def encode_pairs(
        sequence: int,
        pairs: Sequence[tuple[bytes, bytes | None]],
        *,
        key_size_bytes_max: int,
        value_size_bytes_max: int,
        check_pair: Callable[[object, object], object],
    ) -> bytes:
        """The same bytes as `KvBatch(sequence, ops).encode()`, from (key, value-or-None) pairs,
        checking each pair in the pass that encodes it: the Store's hot path (one loop over the
        batch instead of a validation loop and an encoding loop, no op object per key).

        A pair off the fast path (key not `bytes` of 1..key_size_bytes_max bytes, value neither
        None nor `bytes` of at most value_size_bytes_max bytes) is handed to
        `check_pair(key, value)`, which raises the caller's precise error, or returns for a
        pair it accepts (e.g. a `bytes` subclass) and the pair is encoded as it is.
        """
        _check_uint("sequence", sequence, _U64_MAX)
        if _c_encode_kv_batch is not None:
            encoded = _c_encode_kv_batch(sequence, pairs, key_size_bytes_max, value_size_bytes_max)
            if encoded is not None:
                return encoded
        return KvBatch.encode_pairs_python(
            sequence,
            pairs,
            key_size_bytes_max=key_size_bytes_max,
            value_size_bytes_max=value_size_bytes_max,
            check_pair=check_pair,
        )

    @staticmethod
    def encode_pairs_python(
        sequence: int,
        pairs: Sequence[tuple[bytes, bytes | None]],
        *,
        key_size_bytes_max: int,
        value_size_bytes_max: int,
        check_pair: Callable[[object, object], object],
    ) -> bytes:
        """`encode_pairs` in Python: its meaning, and what runs for a batch the C loop
        declines (a pair off the fast path) or when the C loops are not built."""
        parts: list[bytes] = [_KV_BATCH_HEADER.pack(sequence, len(pairs))]
        append = parts.append
        pack_op = _KV_OP_HEADER.pack
        put, delete = OpKind.PUT, OpKind.DELETE
        for key, value in pairs:
            if type(key) is not bytes or not 0 < len(key) <= key_size_bytes_max:
                check_pair(key, value)
            if value is None:
                append(pack_op(delete, len(key), 0))
                append(key)
            else:
                if type(value) is not bytes or len(value) > value_size_bytes_max:
                    check_pair(key, value)
                append(pack_op(put, len(key), len(value)))
                append(key)
                append(value)
        return b"".join(parts)

    @classmethod
    def decode(cls, payload: bytes | memoryview) -> Self:
        view = memoryview(payload)
        size = len(view)
        if size < _KV_BATCH_HEADER.size:
            raise RecordDecodeError(f"KV_BATCH payload of {size} bytes is shorter than its header")
        sequence, count = _KV_BATCH_HEADER.unpack_from(view, 0)
        offset = _KV_BATCH_HEADER.size
        op_header = _KV_OP_HEADER
        op_header_size = op_header.size
        unpack_op = op_header.unpack_from
        ops: list[KvOp] = []
        put, delete = OpKind.PUT, OpKind.DELETE
        for number in range(count):
            if offset + op_header_size > size:
                raise RecordDecodeError(f"KV_BATCH op {number} of {count} is cut short")
            kind, key_len, value_len = unpack_op(view, offset)
            offset += op_header_size
            end = offset + key_len + value_len
            if end > size:
                raise RecordDecodeError(f"KV_BATCH op {number} of {count} overruns the payload")
            key = bytes(view[offset : offset + key_len])
            if kind == put:
                ops.append(KvOp(put, key, bytes(view[offset + key_len : end])))
            elif kind == delete and value_len == 0:
                ops.append(KvOp(delete, key))
            else:
                raise RecordDecodeError(
                    f"KV_BATCH op {number} has kind {kind} with a {value_len}-byte value"
                )
            offset = end
        if offset != size:
            raise RecordDecodeError(f"KV_BATCH has {size - offset} trailing bytes after its ops")
        return cls(sequence, tuple(ops))


@frozen
class RaftEntry:
    """One Raft log entry of one group (Raft §5.3): many groups' entries share one batch."""

    RECORD_TYPE: ClassVar[RecordType] = RecordType.RAFT_ENTRY

    group_id: int
    term: int
    index: int
    entry_type: int
    data: bytes

    def encode(self) -> bytes:
        try:
            header = _RAFT_ENTRY_HEADER.pack(self.group_id, self.term, self.index, self.entry_type)
        except struct.error as exc:
            _check_uint("group_id", self.group_id, _U32_MAX)
            _check_uint("term", self.term, _U64_MAX)
            _check_uint("index", self.index, _U64_MAX)
            _check_uint("entry_type", self.entry_type, 255)
            raise ValueError(f"RaftEntry does not encode: {exc}") from exc
        return header + _check_bytes("data", self.data)

    @classmethod
    def decode(cls, payload: bytes | memoryview) -> Self:
        if len(payload) < _RAFT_ENTRY_HEADER.size:
            raise RecordDecodeError(
                f"RAFT_ENTRY payload of {len(payload)} bytes is shorter than its "
                f"{_RAFT_ENTRY_HEADER.size}-byte header"
            )
        group_id, term, index, entry_type = _RAFT_ENTRY_HEADER.unpack_from(payload, 0)
        return cls(group_id, term, index, entry_type, bytes(payload[_RAFT_ENTRY_HEADER.size :]))


def raft_entry_group_and_index(payload: bytes | memoryview) -> tuple[int, int]:
    """(group_id, index) of a RAFT_ENTRY payload without copying its data (for inspection)."""
    if len(payload) < _RAFT_ENTRY_HEADER.size:
        raise RecordDecodeError(f"RAFT_ENTRY payload of {len(payload)} bytes is too short")
    group_id, _term, index, _entry_type = _RAFT_ENTRY_HEADER.unpack_from(payload, 0)
    return group_id, index


@frozen
class RaftHardState:
    """The state Raft must persist before answering any message (Raft §5.1, Figure 2)."""

    RECORD_TYPE: ClassVar[RecordType] = RecordType.RAFT_HARD_STATE

    group_id: int
    term: int
    vote: int  # the node id voted for in `term`; 0 = no vote
    commit: int

    def encode(self) -> bytes:
        try:
            return _RAFT_HARD_STATE.pack(self.group_id, self.term, self.vote, self.commit)
        except struct.error as exc:
            _check_uint("group_id", self.group_id, _U32_MAX)
            _check_uint("term", self.term, _U64_MAX)
            _check_uint("vote", self.vote, _U64_MAX)
            _check_uint("commit", self.commit, _U64_MAX)
            raise ValueError(f"RaftHardState does not encode: {exc}") from exc

    @classmethod
    def decode(cls, payload: bytes | memoryview) -> Self:
        if len(payload) != _RAFT_HARD_STATE.size:
            raise RecordDecodeError(
                f"RAFT_HARD_STATE payload is {len(payload)} bytes, not {_RAFT_HARD_STATE.size}"
            )
        return cls(*_RAFT_HARD_STATE.unpack_from(payload, 0))


@frozen
class RaftSnapshotMark:
    """The group's log is compacted up to `index` (a snapshot at `index`/`term` exists, §7)."""

    RECORD_TYPE: ClassVar[RecordType] = RecordType.RAFT_SNAPSHOT

    group_id: int
    index: int
    term: int

    def encode(self) -> bytes:
        try:
            return _RAFT_SNAPSHOT.pack(self.group_id, self.index, self.term)
        except struct.error as exc:
            _check_uint("group_id", self.group_id, _U32_MAX)
            _check_uint("index", self.index, _U64_MAX)
            _check_uint("term", self.term, _U64_MAX)
            raise ValueError(f"RaftSnapshotMark does not encode: {exc}") from exc

    @classmethod
    def decode(cls, payload: bytes | memoryview) -> Self:
        if len(payload) != _RAFT_SNAPSHOT.size:
            raise RecordDecodeError(
                f"RAFT_SNAPSHOT payload is {len(payload)} bytes, not {_RAFT_SNAPSHOT.size}"
            )
        return cls(*_RAFT_SNAPSHOT.unpack_from(payload, 0))


WalRecord = KvBatch | RaftEntry | RaftHardState | RaftSnapshotMark

_DECODERS: dict[int, type[KvBatch] | type[RaftEntry] | type[RaftHardState] | type[RaftSnapshotMark]]
_DECODERS = {
    RecordType.KV_BATCH: KvBatch,
    RecordType.RAFT_ENTRY: RaftEntry,
    RecordType.RAFT_HARD_STATE: RaftHardState,
    RecordType.RAFT_SNAPSHOT: RaftSnapshotMark,
}
assert set(_DECODERS) == set(RecordType), "every record type has a codec"


def encode_record(record: WalRecord) -> tuple[RecordType, bytes]:
    """The `(record_type, payload)` pair `Wal.append` takes."""
    return record.RECORD_TYPE, record.encode()


def decode_record(record_type: int, payload: bytes | memoryview) -> WalRecord:
    """The typed record of a `(record_type, payload)` pair read back from the WAL."""
    codec = _DECODERS.get(record_type)
    if codec is None:
        raise RecordDecodeError(f"unknown record type {record_type}")
    return codec.decode(payload)
