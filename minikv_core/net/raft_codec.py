"""Raft value types <-> protobuf (minikv_core/net/proto/raft.proto), field for field.

Encoding is total over values the core produces; decoding treats its input as untrusted (it
comes from another process) and raises `CodecError`, naming what was wrong, for anything that
does not map back to a valid raft type: an unknown message or entry type number, a frame that
does not parse. Round trips are exact, including `Message.snapshot is None` versus an empty
SnapshotMetadata (proto3 tracks the presence of message fields).

Frames are assembled from already-encoded group messages (`encode_frame`) instead of building
a RaftFrame object: the sender encodes each message once when it is queued (it needs the size
for its byte bound anyway), and a frame's bytes are then a concatenation. Protobuf defines a
message's encoding as the concatenation of its fields' encodings, and the tests check the
result is byte-identical to `RaftFrame.SerializeToString()`. The transport goes one step
further: `frame_piece` gives the bytes one message adds to a frame (field tag, length, the
message), computed once at `send()`, so its byte accounting and `encode_frame_pieces` need no
further varint.

Speed matters here: every heartbeat and acknowledgement of every group passes through both
directions, many times a second per node even when idle. So `encode_group_message` sets only
the fields that differ from their default on one GroupMessage (what SerializeToString would
emit anyway) rather than building a Message with every field and copying it into place.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from google.protobuf.message import DecodeError

from minikv_core.net.proto import raft_pb2
from minikv_core.raft.types import (
    ConfState,
    Entry,
    EntryType,
    Message,
    MessageType,
    SnapshotMetadata,
)


class CodecError(ValueError):
    """Bytes or a protobuf value that do not map to a valid Raft value."""


# Lookup tables instead of Enum calls: decoding is on the hot path (thousands of entries per
# AppendEntries), and a missing key is exactly the "unknown type number" case to reject.
_MESSAGE_TYPES: dict[int, MessageType] = {int(kind): kind for kind in MessageType}
_ENTRY_TYPES: dict[int, EntryType] = {int(kind): kind for kind in EntryType}

_WIRE_TYPE_VARINT = 0
_WIRE_TYPE_LEN = 2
_FRAME_FROM_NODE_TAG = bytes([1 << 3 | _WIRE_TYPE_VARINT])
_FRAME_TO_NODE_TAG = bytes([2 << 3 | _WIRE_TYPE_VARINT])
_FRAME_MESSAGES_TAG = bytes([3 << 3 | _WIRE_TYPE_LEN])
_UINT64_MAX = (1 << 64) - 1


_ONE_BYTE_VARINTS = tuple(bytes([value]) for value in range(0x80))


def encode_varint(value: int) -> bytes:
    """Protobuf base-128 varint of an unsigned 64-bit value."""
    assert 0 <= value <= _UINT64_MAX, value
    if value < 0x80:
        return _ONE_BYTE_VARINTS[value]
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


# --- raft -> protobuf ------------------------------------------------------------------------


def conf_state_to_proto(conf_state: ConfState) -> raft_pb2.ConfState:
    return raft_pb2.ConfState(voters=conf_state.voters, learners=conf_state.learners)


def snapshot_metadata_to_proto(metadata: SnapshotMetadata) -> raft_pb2.SnapshotMetadata:
    return raft_pb2.SnapshotMetadata(
        index=metadata.index,
        term=metadata.term,
        conf_state=conf_state_to_proto(metadata.conf_state),
    )


def entry_to_proto(entry: Entry) -> raft_pb2.Entry:
    return raft_pb2.Entry(
        term=entry.term,
        index=entry.index,
        type=int(entry.type),  # type: ignore[arg-type]  # equal numbers, checked by tests
        data=entry.data,
    )


def message_to_proto(message: Message) -> raft_pb2.Message:
    """Raises CodecError if a number does not fit its uint64 field (a host bug)."""
    try:
        proto = raft_pb2.Message(
            type=int(message.type),  # type: ignore[arg-type]  # equal numbers, checked by tests
            to=message.to,
            sender=message.sender,
            term=message.term,
            log_term=message.log_term,
            index=message.index,
            entries=[entry_to_proto(entry) for entry in message.entries],
            commit=message.commit,
            reject=message.reject,
            reject_hint=message.reject_hint,
            context=message.context,
            chunk_offset=message.chunk_offset,
            chunk_data=message.chunk_data,
            chunk_done=message.chunk_done,
        )
        if message.snapshot is not None:
            proto.snapshot.CopyFrom(snapshot_metadata_to_proto(message.snapshot))
    except (ValueError, TypeError) as error:
        raise CodecError(f"cannot encode {message.type.name} message: {error}") from None
    return proto


def encode_group_message(group_id: int, message: Message) -> bytes:
    """The wire bytes of one GroupMessage (what a frame's `messages` field repeats).

    Raises CodecError if a number does not fit its uint64 field (a host bug)."""
    proto = _GroupMessage()
    try:
        proto.group_id = group_id
    except (ValueError, TypeError) as error:
        raise CodecError(f"cannot encode group id {group_id!r}: {error}") from None
    try:
        out = proto.message
        out.type = message.type  # type: ignore[assignment]  # equal numbers, checked by tests
        out.to = message.to
        out.sender = message.sender
        if message.term:
            out.term = message.term
        if message.log_term:
            out.log_term = message.log_term
        if message.index:
            out.index = message.index
        if message.entries:
            add = out.entries.add
            for entry in message.entries:
                add(term=entry.term, index=entry.index, type=entry.type, data=entry.data)
        if message.commit:
            out.commit = message.commit
        if message.reject:
            out.reject = True
        if message.reject_hint:
            out.reject_hint = message.reject_hint
        if message.context:
            out.context = message.context
        snapshot = message.snapshot
        if snapshot is not None:
            target = out.snapshot
            target.SetInParent()  # present even when every field is zero
            target.index = snapshot.index
            target.term = snapshot.term
            conf_state = snapshot.conf_state
            members = target.conf_state
            members.SetInParent()  # as snapshot_metadata_to_proto: always present
            if conf_state.voters:
                members.voters.extend(conf_state.voters)
            if conf_state.learners:
                members.learners.extend(conf_state.learners)
        if message.chunk_offset:
            out.chunk_offset = message.chunk_offset
        if message.chunk_data:
            out.chunk_data = message.chunk_data
        if message.chunk_done:
            out.chunk_done = True
    except (ValueError, TypeError) as error:
        raise CodecError(f"cannot encode {message.type.name} message: {error}") from None
    return proto.SerializeToString()


_GroupMessage = raft_pb2.GroupMessage


def frame_piece(encoded_group_message: bytes) -> bytes:
    """The bytes one encoded group message adds to a frame: its tag, its length, itself."""
    return _FRAME_MESSAGES_TAG + encode_varint(len(encoded_group_message)) + encoded_group_message


def frame_message_size_bytes(encoded_group_message: bytes) -> int:
    """Bytes one encoded group message adds to a frame: its tag, its length, itself."""
    size = len(encoded_group_message)
    return len(_FRAME_MESSAGES_TAG) + len(encode_varint(size)) + size


def frame_header_size_bytes(from_node: int, to_node: int) -> int:
    """Bytes of a frame besides its group messages."""
    return len(_frame_header(from_node, to_node))


def _frame_header(from_node: int, to_node: int) -> bytes:
    # proto3 omits scalar fields equal to zero; node ids are positive, but keep the rule so
    # the concatenation stays identical to SerializeToString() for any input.
    header = b""
    if from_node:
        header += _FRAME_FROM_NODE_TAG + encode_varint(from_node)
    if to_node:
        header += _FRAME_TO_NODE_TAG + encode_varint(to_node)
    return header


def encode_frame_pieces(from_node: int, to_node: int, pieces: Sequence[bytes]) -> bytes:
    """The bytes of `RaftFrame(from_node, to_node, messages)` from `frame_piece`s."""
    return _frame_header(from_node, to_node) + b"".join(pieces)


def encode_frame(from_node: int, to_node: int, encoded_group_messages: Sequence[bytes]) -> bytes:
    """The bytes of `RaftFrame(from_node, to_node, messages)` from pre-encoded messages."""
    parts = [_frame_header(from_node, to_node)]
    for encoded in encoded_group_messages:
        parts.append(_FRAME_MESSAGES_TAG)
        parts.append(encode_varint(len(encoded)))
        parts.append(encoded)
    return b"".join(parts)


# --- protobuf -> raft ------------------------------------------------------------------------


def conf_state_from_proto(proto: raft_pb2.ConfState) -> ConfState:
    return ConfState(voters=tuple(proto.voters), learners=tuple(proto.learners))


def snapshot_metadata_from_proto(proto: raft_pb2.SnapshotMetadata) -> SnapshotMetadata:
    return SnapshotMetadata(
        index=proto.index,
        term=proto.term,
        conf_state=conf_state_from_proto(proto.conf_state),
    )


def entry_from_proto(proto: raft_pb2.Entry) -> Entry:
    entry_type = _ENTRY_TYPES.get(proto.type)
    if entry_type is None:
        raise CodecError(f"entry at index {proto.index} has unknown entry type {proto.type}")
    return Entry(term=proto.term, index=proto.index, type=entry_type, data=proto.data)


_SNAPSHOT_METADATA_SHARED_MAX = 256
_snapshot_metadata_shared: dict[bytes, SnapshotMetadata] = {}


def _shared_snapshot_metadata(proto: raft_pb2.SnapshotMetadata) -> SnapshotMetadata:
    """`snapshot_metadata_from_proto`, shared between equal values: every heartbeat carries
    its leader's log base, the same one until the leader compacts, and decoding it anew
    (two dataclasses, two tuples) would be most of a heartbeat's decoding cost. The values
    are immutable, so sharing them is invisible to the caller."""
    key = proto.SerializeToString()
    metadata = _snapshot_metadata_shared.get(key)
    if metadata is None:
        metadata = snapshot_metadata_from_proto(proto)
        if len(_snapshot_metadata_shared) >= _SNAPSHOT_METADATA_SHARED_MAX:
            _snapshot_metadata_shared.clear()
        _snapshot_metadata_shared[key] = metadata
    return metadata


def message_from_proto(proto: raft_pb2.Message) -> Message:
    message_type = _MESSAGE_TYPES.get(proto.type)
    if message_type is None:
        raise CodecError(f"unknown message type {proto.type}")
    return Message(
        type=message_type,
        to=proto.to,
        sender=proto.sender,
        term=proto.term,
        log_term=proto.log_term,
        index=proto.index,
        entries=tuple(map(entry_from_proto, proto.entries)) if proto.entries else (),
        commit=proto.commit,
        reject=proto.reject,
        reject_hint=proto.reject_hint,
        context=proto.context,
        snapshot=_shared_snapshot_metadata(proto.snapshot) if proto.HasField("snapshot") else None,
        chunk_offset=proto.chunk_offset,
        chunk_data=proto.chunk_data,
        chunk_done=proto.chunk_done,
    )


@dataclass(frozen=True, slots=True)
class DecodedFrame:
    from_node: int
    to_node: int
    messages: list[tuple[int, Message]]
    """(group_id, message) in the order the sender queued them."""


def decode_frame(data: bytes) -> DecodedFrame:
    """Parse and validate one frame from a peer; raises CodecError naming the first problem."""
    try:
        frame = raft_pb2.RaftFrame.FromString(data)
    except DecodeError as error:
        raise CodecError(f"frame of {len(data)} bytes does not parse: {error}") from None
    messages: list[tuple[int, Message]] = []
    for position, group_message in enumerate(frame.messages):
        if not group_message.HasField("message"):
            raise CodecError(
                f"group message {position} (group {group_message.group_id}) has no message"
            )
        try:
            message = message_from_proto(group_message.message)
        except CodecError as error:
            raise CodecError(
                f"group message {position} (group {group_message.group_id}): {error}"
            ) from None
        messages.append((group_message.group_id, message))
    return DecodedFrame(from_node=frame.from_node, to_node=frame.to_node, messages=messages)
