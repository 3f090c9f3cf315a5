"""The command codec of the shard state machine: what the `data` of a NORMAL Raft entry means.

A shard leader proposes one entry per round of client writes to that shard: one `PutCommand`
or `DeleteCommand`, or a `BatchCommand` of several (each client write keeps its own request
id, so the node that proposed it can answer each waiting client from its apply result). An
entry with empty data is the leader's no-op (Raft §8) and is not a command.

Layout (little-endian, unsigned; `struct`-packed, no per-byte Python loops):

    command  = format u8 (= 1) | item
    item     = PUT    kind u8 (= 1) | request_id u64 | key_len u32 | value_len u32 | key | value
             | DELETE kind u8 (= 2) | request_id u64 | key_len u32 | key
             | BATCH  kind u8 (= 3) | count u32 | count x (PUT or DELETE item)
             | TXN    kind u8 (= 4) | request_id u64 | body_len u32 | body (txn_codec.py)
             | CHECKSUM kind u8 (= 5) | request_id u64
             | SPUT    kind u8 (= 6) | request_id u64 | session | key_len u32 | value_len u32
                       | key | value
             | SDELETE kind u8 (= 7) | request_id u64 | session | key_len u32 | key
    session = client_id 16 bytes | seq u64 | acked u64 | retry u8 (0 or 1)

SPUT and SDELETE are a put and a delete that carry the client's session (sessions.py): the
state machine applies each at most once however often the client sends it. They may be
batched like PUT and DELETE.

A CHECKSUM command (issue #10, `minikv cluster verify`) writes nothing: every replica
computes the checksum of its state when it applies it, so all replicas checksum the state at
one agreed log index without stopping writes (CockroachDB's ComputeChecksum does the same).
It is always alone in its entry.

Why a format byte: entries stay in Raft logs, WALs and snapshots across upgrades; a node must
recognise an entry written by a newer format and fail that entry clearly instead of
misreading it. Why request ids are u64 chosen by the proposer: the proposer alone knows which
client is waiting; the state machine only echoes the id back in its result.

Validity, checked identically by `encode()` and `decode_command()` (so a node never proposes
what a replica would refuse): keys 1..COMMAND_KEY_SIZE_BYTES_MAX bytes, values at most
COMMAND_VALUE_SIZE_BYTES_MAX, a batch of 1..COMMAND_BATCH_COMMANDS_MAX put/delete items with
pairwise distinct keys (no nested batches). Distinct keys: every write of an entry gets the
entry's index as its version (state_machine.py), so two writes of one key in one entry would
share a version while only the second one's value is ever visible; etcd refuses duplicate
keys in one transaction for the same reason. A committed entry that does not decode raises
`CommandDecodeError` naming the byte offset and the reason; the state machine turns that into
a failed apply result, never a crash (the entry is committed on every replica alike).

A TXN command (a shard's part of a transaction: one-phase, prepare, resolve, decide, forget)
is always alone in its entry: its body is checked by `txn_codec` on both sides. Puts and
deletes of keys under `txn.SYSTEM_KEY_PREFIX` (the shard's transaction state) are refused by
the node's APIs, and by the state machine at apply time (a REJECTED result for that write).
"""

from __future__ import annotations

import enum
import struct

from minikv_core.cluster import limits
from minikv_core.cluster.sessions import SessionError, WriteSession
from minikv_core.cluster.txn_codec import TxnBody, TxnCodecError, decode_body, encode_body
from minikv_core.frozen import frozen

FORMAT_VERSION = 1
"""The first byte of every encoded command."""


class CommandKind(enum.IntEnum):
    PUT = 1
    DELETE = 2
    BATCH = 3
    TXN = 4
    CHECKSUM = 5
    SESSION_PUT = 6
    SESSION_DELETE = 7


_U64_MAX = 2**64 - 1
_FORMAT = struct.Struct("<B")
_PUT_ITEM = struct.Struct("<BQII")  # kind, request_id, key_len, value_len
_DELETE_ITEM = struct.Struct("<BQI")  # kind, request_id, key_len
_BATCH_ITEM = struct.Struct("<BI")  # kind, count
_TXN_ITEM = struct.Struct("<BQI")  # kind, request_id, body_len
_CHECKSUM_ITEM = struct.Struct("<BQ")  # kind, request_id
# kind, request_id, client_id, seq, acked, retry, key_len, value_len
_SESSION_PUT_ITEM = struct.Struct(f"<BQ{limits.SESSION_CLIENT_ID_BYTES}sQQBII")
# kind, request_id, client_id, seq, acked, retry, key_len
_SESSION_DELETE_ITEM = struct.Struct(f"<BQ{limits.SESSION_CLIENT_ID_BYTES}sQQBI")
_SESSION = struct.Struct(f"<{limits.SESSION_CLIENT_ID_BYTES}sQQB")
assert _SESSION.size == limits.COMMAND_SESSION_BYTES

# The real fixed overhead of the largest single command stays under the bound limits.py
# reasons with.
assert _FORMAT.size + _SESSION_PUT_ITEM.size <= limits.COMMAND_PUT_OVERHEAD_BYTES_MAX

_FORMAT_BYTE = _FORMAT.pack(FORMAT_VERSION)
_PUT = CommandKind.PUT
_DELETE = CommandKind.DELETE
_BATCH = CommandKind.BATCH
_TXN = CommandKind.TXN
_CHECKSUM = CommandKind.CHECKSUM
_SESSION_PUT = CommandKind.SESSION_PUT
_SESSION_DELETE = CommandKind.SESSION_DELETE


class CommandError(ValueError):
    """Base of the codec's errors."""


class CommandEncodeError(CommandError):
    """A command cannot be encoded (bad key, value, request id or batch): nothing proposed."""


class CommandDecodeError(CommandError):
    """Entry data is not a valid command: `offset` is where decoding found the problem."""

    def __init__(self, offset: int, reason: str) -> None:
        self.offset = offset
        self.reason = reason
        super().__init__(f"malformed command at byte offset {offset}: {reason}")


def _check_key(key: object) -> bytes:
    if not isinstance(key, bytes):
        raise CommandEncodeError(f"key must be bytes, got {type(key).__name__}")
    if not limits.COMMAND_KEY_SIZE_BYTES_MIN <= len(key) <= limits.COMMAND_KEY_SIZE_BYTES_MAX:
        raise CommandEncodeError(
            f"key is {len(key)} bytes; keys are {limits.COMMAND_KEY_SIZE_BYTES_MIN}.."
            f"{limits.COMMAND_KEY_SIZE_BYTES_MAX} bytes"
        )
    return key


def _check_value(value: object, key: bytes) -> bytes:
    if not isinstance(value, bytes):
        raise CommandEncodeError(f"value of {key[:32]!r} must be bytes, got {type(value).__name__}")
    if len(value) > limits.COMMAND_VALUE_SIZE_BYTES_MAX:
        raise CommandEncodeError(
            f"value of {key[:32]!r} is {len(value)} bytes, more than the limit of "
            f"{limits.COMMAND_VALUE_SIZE_BYTES_MAX} bytes"
        )
    return value


def _check_request_id(request_id: object) -> int:
    if type(request_id) is not int or not 0 <= request_id <= _U64_MAX:
        raise CommandEncodeError(f"request_id must be an int in 0..2**64-1, got {request_id!r}")
    return request_id


def _check_session(session: object) -> WriteSession:
    if not isinstance(session, WriteSession):
        raise CommandEncodeError(f"session must be a WriteSession, got {type(session).__name__}")
    try:
        return session.check()
    except SessionError as error:
        raise CommandEncodeError(str(error)) from None


@frozen
class PutCommand:
    """Set `key` to `value`. `request_id` identifies the waiting client (0: nobody waits)."""

    key: bytes
    value: bytes
    request_id: int = 0
    session: WriteSession | None = None
    """The client's session, when it sent one: the write then applies at most once."""

    def _encode_item(self, parts: list[bytes]) -> int:
        key = _check_key(self.key)
        value = _check_value(self.value, key)
        request_id = _check_request_id(self.request_id)
        if self.session is None:
            parts.append(_PUT_ITEM.pack(_PUT, request_id, len(key), len(value)))
            header = _PUT_ITEM.size
        else:
            s = _check_session(self.session)
            parts.append(
                _SESSION_PUT_ITEM.pack(
                    _SESSION_PUT,
                    request_id,
                    s.client_id,
                    s.seq,
                    s.acked,
                    s.retry,
                    len(key),
                    len(value),
                )
            )
            header = _SESSION_PUT_ITEM.size
        parts.append(key)
        parts.append(value)
        return header + len(key) + len(value)

    def encode(self) -> bytes:
        return _encode_top(self)


@frozen
class DeleteCommand:
    """Remove `key` (a no-op apart from its result if it has no value)."""

    key: bytes
    request_id: int = 0
    session: WriteSession | None = None
    """The client's session, when it sent one: the write then applies at most once."""

    def _encode_item(self, parts: list[bytes]) -> int:
        key = _check_key(self.key)
        request_id = _check_request_id(self.request_id)
        if self.session is None:
            parts.append(_DELETE_ITEM.pack(_DELETE, request_id, len(key)))
            header = _DELETE_ITEM.size
        else:
            s = _check_session(self.session)
            parts.append(
                _SESSION_DELETE_ITEM.pack(
                    _SESSION_DELETE, request_id, s.client_id, s.seq, s.acked, s.retry, len(key)
                )
            )
            header = _SESSION_DELETE_ITEM.size
        parts.append(key)
        return header + len(key)

    def encode(self) -> bytes:
        return _encode_top(self)


WriteCommand = PutCommand | DeleteCommand


@frozen
class BatchCommand:
    """Several client writes to one shard, applied atomically in order as one entry."""

    commands: tuple[WriteCommand, ...]

    def _encode_item(self, parts: list[bytes]) -> int:
        commands = self.commands
        if not isinstance(commands, tuple):
            raise CommandEncodeError(f"commands must be a tuple, got {type(commands).__name__}")
        if not 1 <= len(commands) <= limits.COMMAND_BATCH_COMMANDS_MAX:
            raise CommandEncodeError(
                f"a batch holds 1..{limits.COMMAND_BATCH_COMMANDS_MAX} commands, "
                f"got {len(commands)}"
            )
        parts.append(_BATCH_ITEM.pack(_BATCH, len(commands)))
        size = _BATCH_ITEM.size
        keys: set[bytes] = set()
        for number, command in enumerate(commands):
            if not isinstance(command, PutCommand | DeleteCommand):
                raise CommandEncodeError(
                    f"batch item {number} must be a PutCommand or DeleteCommand, "
                    f"got {type(command).__name__}"
                )
            size += command._encode_item(parts)
            keys.add(command.key)
            if len(keys) != number + 1:
                raise CommandEncodeError(
                    f"batch item {number} writes key {command.key[:32]!r} again; "
                    "a batch writes each key at most once (split the batch)"
                )
        return size

    def encode(self) -> bytes:
        return _encode_top(self)


@frozen
class TxnCommand:
    """A shard's part of a transaction (txn_codec.py), alone in its entry."""

    body: TxnBody
    request_id: int = 0

    def _encode_item(self, parts: list[bytes]) -> int:
        request_id = _check_request_id(self.request_id)
        try:
            body = encode_body(self.body)
        except TxnCodecError as error:
            raise CommandEncodeError(f"transaction command: {error}") from None
        parts.append(_TXN_ITEM.pack(_TXN, request_id, len(body)))
        parts.append(body)
        return _TXN_ITEM.size + len(body)

    def encode(self) -> bytes:
        return _encode_top(self)


@frozen
class ChecksumCommand:
    """Checksum the shard's state at this entry's index on every replica."""

    request_id: int = 0

    def _encode_item(self, parts: list[bytes]) -> int:
        parts.append(_CHECKSUM_ITEM.pack(_CHECKSUM, _check_request_id(self.request_id)))
        return _CHECKSUM_ITEM.size

    def encode(self) -> bytes:
        return _encode_top(self)


Command = PutCommand | DeleteCommand | BatchCommand | TxnCommand | ChecksumCommand


def _encode_top(command: Command) -> bytes:
    parts = [_FORMAT_BYTE]
    size = _FORMAT.size + command._encode_item(parts)
    if size > limits.COMMAND_BYTES_MAX:
        raise CommandEncodeError(
            f"command encodes to {size} bytes, more than the limit of "
            f"{limits.COMMAND_BYTES_MAX} bytes (split the batch)"
        )
    data = b"".join(parts)
    assert len(data) == size, (len(data), size)
    return data


def encode_command(command: Command) -> bytes:
    """The entry data of `command`; raises CommandEncodeError if it is not valid."""
    if not isinstance(
        command, PutCommand | DeleteCommand | BatchCommand | TxnCommand | ChecksumCommand
    ):
        raise CommandEncodeError(f"not a command: {type(command).__name__}")
    return command.encode()


# ------------------------------------------------------------------------------- decoding


def _decode_write(view: memoryview, offset: int, size: int) -> tuple[WriteCommand, int]:
    """Decode the PUT, DELETE, SPUT or SDELETE item at `offset`; returns it and the offset
    after it."""
    if offset >= size:
        raise CommandDecodeError(offset, "the data ends where a command kind byte should be")
    kind = view[offset]
    if kind == _PUT:
        _header(offset, _PUT_ITEM, size, "PUT")
        _, request_id, key_len, value_len = _PUT_ITEM.unpack_from(view, offset)
        key, value, end = _key_value(
            view, offset, _PUT_ITEM.size, key_len, value_len, size=size, name="PUT"
        )
        return PutCommand(key, value, request_id), end
    if kind == _DELETE:
        _header(offset, _DELETE_ITEM, size, "DELETE")
        _, request_id, key_len = _DELETE_ITEM.unpack_from(view, offset)
        key, end = _key_only(view, offset, _DELETE_ITEM.size, key_len, size=size, name="DELETE")
        return DeleteCommand(key, request_id), end
    if kind == _SESSION_PUT:
        _header(offset, _SESSION_PUT_ITEM, size, "SPUT")
        _, request_id, client_id, seq, acked, retry, key_len, value_len = (
            _SESSION_PUT_ITEM.unpack_from(view, offset)
        )
        key, value, end = _key_value(
            view, offset, _SESSION_PUT_ITEM.size, key_len, value_len, size=size, name="SPUT"
        )
        session = _decoded_session(offset, client_id, seq, acked, retry)
        return PutCommand(key, value, request_id, session), end
    if kind == _SESSION_DELETE:
        _header(offset, _SESSION_DELETE_ITEM, size, "SDELETE")
        _, request_id, client_id, seq, acked, retry, key_len = _SESSION_DELETE_ITEM.unpack_from(
            view, offset
        )
        key, end = _key_only(
            view, offset, _SESSION_DELETE_ITEM.size, key_len, size=size, name="SDELETE"
        )
        session = _decoded_session(offset, client_id, seq, acked, retry)
        return DeleteCommand(key, request_id, session), end
    if kind == _BATCH:
        raise CommandDecodeError(offset, "a BATCH inside a BATCH (batches do not nest)")
    if kind == _TXN:
        raise CommandDecodeError(offset, "a TXN inside a BATCH (a TXN is alone in its entry)")
    raise CommandDecodeError(offset, f"unknown command kind {kind}")


def _header(offset: int, item: struct.Struct, size: int, name: str) -> None:
    if offset + item.size > size:
        raise CommandDecodeError(offset, f"{name} header is cut short")


def _key_value(
    view: memoryview,
    offset: int,
    header_size: int,
    key_len: int,
    value_len: int,
    *,
    size: int,
    name: str,
) -> tuple[bytes, bytes, int]:
    """The key and value after a put item's header at `offset`, and the offset after them."""
    start = offset + header_size
    end = start + key_len + value_len
    if end > size:
        raise CommandDecodeError(
            offset, f"{name} of a {key_len}-byte key and {value_len}-byte value overruns the data"
        )
    _check_decoded_key(offset, key_len)
    if value_len > limits.COMMAND_VALUE_SIZE_BYTES_MAX:
        raise CommandDecodeError(
            offset,
            f"{name} value of {value_len} bytes exceeds {limits.COMMAND_VALUE_SIZE_BYTES_MAX}",
        )
    return bytes(view[start : start + key_len]), bytes(view[start + key_len : end]), end


def _key_only(
    view: memoryview, offset: int, header_size: int, key_len: int, *, size: int, name: str
) -> tuple[bytes, int]:
    """The key after a delete item's header at `offset`, and the offset after it."""
    start = offset + header_size
    end = start + key_len
    if end > size:
        raise CommandDecodeError(offset, f"{name} of a {key_len}-byte key overruns the data")
    _check_decoded_key(offset, key_len)
    return bytes(view[start:end]), end


def _decoded_session(
    offset: int, client_id: bytes, seq: int, acked: int, retry: int
) -> WriteSession:
    # The struct already fixed the id's length and the integers' ranges; check the rest
    # inline (this runs for every session write on every replica).
    if retry > 1 or seq < 1 or acked > seq:
        try:
            WriteSession(client_id, seq, acked, bool(retry)).check()
        except SessionError as error:
            raise CommandDecodeError(offset, str(error)) from None
        raise CommandDecodeError(offset, f"session retry flag is {retry} (0 or 1)")
    return WriteSession(client_id, seq, acked, retry == 1)


def _check_decoded_key(offset: int, key_len: int) -> None:
    if not limits.COMMAND_KEY_SIZE_BYTES_MIN <= key_len <= limits.COMMAND_KEY_SIZE_BYTES_MAX:
        raise CommandDecodeError(
            offset,
            f"key length {key_len} is outside {limits.COMMAND_KEY_SIZE_BYTES_MIN}.."
            f"{limits.COMMAND_KEY_SIZE_BYTES_MAX}",
        )


def _decode_txn(view: memoryview, offset: int, size: int) -> tuple[TxnCommand, int]:
    if offset + _TXN_ITEM.size > size:
        raise CommandDecodeError(offset, "TXN header is cut short")
    _, request_id, body_len = _TXN_ITEM.unpack_from(view, offset)
    start = offset + _TXN_ITEM.size
    end = start + body_len
    if end > size:
        raise CommandDecodeError(offset, f"TXN body of {body_len} bytes overruns the data")
    try:
        body = decode_body(view[start:end])
    except TxnCodecError as error:
        raise CommandDecodeError(start, f"TXN body: {error}") from None
    return TxnCommand(body, request_id), end


def decode_command(data: bytes | memoryview) -> Command:
    """The command encoded in entry `data`; raises CommandDecodeError if it is malformed."""
    view = memoryview(data)
    size = len(view)
    if size == 0:
        raise CommandDecodeError(0, "empty data is a no-op entry, not a command")
    version = view[0]
    if version != FORMAT_VERSION:
        raise CommandDecodeError(
            0, f"unknown command format {version} (this node reads format {FORMAT_VERSION})"
        )
    offset = _FORMAT.size
    if offset < size and view[offset] == _BATCH:
        if offset + _BATCH_ITEM.size > size:
            raise CommandDecodeError(offset, "BATCH header is cut short")
        _, count = _BATCH_ITEM.unpack_from(view, offset)
        if not 1 <= count <= limits.COMMAND_BATCH_COMMANDS_MAX:
            raise CommandDecodeError(
                offset,
                f"BATCH of {count} commands (a batch holds 1..{limits.COMMAND_BATCH_COMMANDS_MAX})",
            )
        offset += _BATCH_ITEM.size
        commands: list[WriteCommand] = []
        keys: set[bytes] = set()
        for number in range(count):
            item_offset = offset
            command, offset = _decode_write(view, offset, size)
            keys.add(command.key)
            if len(keys) != number + 1:
                raise CommandDecodeError(
                    item_offset, f"BATCH item {number} writes key {command.key[:32]!r} again"
                )
            commands.append(command)
        result: Command = BatchCommand(tuple(commands))
    elif offset < size and view[offset] == _TXN:
        result, offset = _decode_txn(view, offset, size)
    elif offset < size and view[offset] == _CHECKSUM:
        if offset + _CHECKSUM_ITEM.size > size:
            raise CommandDecodeError(offset, "CHECKSUM command is cut short")
        _, request_id = _CHECKSUM_ITEM.unpack_from(view, offset)
        result = ChecksumCommand(request_id)
        offset += _CHECKSUM_ITEM.size
    else:
        result, offset = _decode_write(view, offset, size)
    if offset != size:
        raise CommandDecodeError(offset, f"{size - offset} trailing bytes after the command")
    return result
