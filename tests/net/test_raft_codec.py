"""The Raft codec maps every raft value type to protobuf and back exactly, and rejects bad input.

Also checks the wire bounds of minikv_core/net/limits.py against real encodings: a limit that
under-estimates protobuf framing would let a legal message be refused as oversize.
"""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from minikv_core.net import limits
from minikv_core.net.proto import raft_pb2
from minikv_core.net.raft_codec import (
    CodecError,
    decode_frame,
    encode_frame,
    encode_group_message,
    encode_varint,
    frame_header_size_bytes,
    frame_message_size_bytes,
    message_from_proto,
    message_to_proto,
)
from minikv_core.raft import limits as raft_limits
from minikv_core.raft.types import (
    ConfState,
    Entry,
    EntryType,
    Message,
    MessageType,
    SnapshotMetadata,
)

UINT64_MAX = (1 << 64) - 1

uint64 = st.integers(min_value=0, max_value=UINT64_MAX)
node_ids = st.integers(min_value=1, max_value=UINT64_MAX)
small_bytes = st.binary(max_size=64)

entries = st.builds(
    Entry,
    term=uint64,
    index=uint64,
    type=st.sampled_from(EntryType),
    data=small_bytes,
)
conf_states = st.builds(
    ConfState,
    voters=st.lists(node_ids, max_size=5).map(tuple),
    learners=st.lists(node_ids, max_size=3).map(tuple),
)
snapshot_metadata = st.builds(SnapshotMetadata, index=uint64, term=uint64, conf_state=conf_states)
messages = st.builds(
    Message,
    type=st.sampled_from(MessageType),
    to=node_ids,
    sender=node_ids,
    term=uint64,
    log_term=uint64,
    index=uint64,
    entries=st.lists(entries, max_size=4).map(tuple),
    commit=uint64,
    reject=st.booleans(),
    reject_hint=uint64,
    context=small_bytes,
    snapshot=st.none() | snapshot_metadata,
    chunk_offset=uint64,
    chunk_data=small_bytes,
    chunk_done=st.booleans(),
)


def _round_trip(message: Message, group_id: int = 7) -> Message:
    frame = encode_frame(message.sender, message.to, [encode_group_message(group_id, message)])
    decoded = decode_frame(frame)
    assert decoded.from_node == message.sender
    assert decoded.to_node == message.to
    assert len(decoded.messages) == 1
    decoded_group, decoded_message = decoded.messages[0]
    assert decoded_group == group_id
    return decoded_message


def _full_message(message_type: MessageType) -> Message:
    """Every field set to a non-default value, so a field the codec forgets shows up."""
    return Message(
        type=message_type,
        to=2,
        sender=1,
        term=9,
        log_term=8,
        index=1000,
        entries=(
            Entry(8, 1001, EntryType.NORMAL, b"put k v"),
            Entry(9, 1002, EntryType.CONF_CHANGE, b"\x01" + bytes(8)),
            Entry(9, 1003),
        ),
        commit=999,
        reject=True,
        reject_hint=500,
        context=b"read-42",
        snapshot=SnapshotMetadata(900, 7, ConfState(voters=(1, 2, 3), learners=(4,))),
        chunk_offset=1 << 20,
        chunk_data=b"\x00\xff" * 100,
        chunk_done=True,
    )


def test_proto_enums_have_the_raft_enums_numbers() -> None:
    for kind in MessageType:
        assert raft_pb2.MessageType.Value(f"MESSAGE_TYPE_{kind.name}") == kind.value
    for entry_kind in EntryType:
        assert raft_pb2.EntryType.Value(f"ENTRY_TYPE_{entry_kind.name}") == entry_kind.value
    # The proto enums hold nothing the raft enums lack, besides the proto3 zero placeholder.
    assert len(raft_pb2.MessageType.keys()) == len(MessageType) + 1
    assert len(raft_pb2.EntryType.keys()) == len(EntryType)


@pytest.mark.parametrize(
    ("value_type", "proto_type"),
    [
        (Message, raft_pb2.Message),
        (Entry, raft_pb2.Entry),
        (ConfState, raft_pb2.ConfState),
        (SnapshotMetadata, raft_pb2.SnapshotMetadata),
    ],
)
def test_proto_messages_have_exactly_the_dataclass_fields(
    value_type: type, proto_type: type[raft_pb2.Message]
) -> None:
    dataclass_fields = {f.name for f in dataclasses.fields(value_type)}
    proto_fields = {f.name for f in proto_type.DESCRIPTOR.fields}
    assert dataclass_fields == proto_fields


@pytest.mark.parametrize("message_type", list(MessageType), ids=lambda kind: kind.name)
def test_every_message_type_round_trips_with_entries_snapshot_and_chunk(
    message_type: MessageType,
) -> None:
    message = _full_message(message_type)
    assert _round_trip(message) == message


def test_absent_snapshot_and_empty_snapshot_metadata_stay_distinct() -> None:
    absent = Message(MessageType.APPEND, to=2, sender=1, term=1)
    empty = dataclasses.replace(absent, snapshot=SnapshotMetadata())
    assert _round_trip(absent).snapshot is None
    assert _round_trip(empty).snapshot == SnapshotMetadata()


@settings(derandomize=True, max_examples=400, deadline=None)
@given(message=messages, group_id=uint64)
def test_any_message_round_trips_exactly(message: Message, group_id: int) -> None:
    assert message_from_proto(message_to_proto(message)) == message
    assert _round_trip(message, group_id) == message


@settings(derandomize=True, max_examples=200, deadline=None)
@given(
    from_node=uint64,
    to_node=uint64,
    group_messages=st.lists(st.tuples(uint64, messages), max_size=6),
)
def test_frame_concatenation_equals_protobuf_serialization(
    from_node: int, to_node: int, group_messages: list[tuple[int, Message]]
) -> None:
    encoded = [encode_group_message(group_id, message) for group_id, message in group_messages]
    expected = raft_pb2.RaftFrame(
        from_node=from_node,
        to_node=to_node,
        messages=[
            raft_pb2.GroupMessage(group_id=group_id, message=message_to_proto(message))
            for group_id, message in group_messages
        ],
    ).SerializeToString()
    data = encode_frame(from_node, to_node, encoded)
    assert data == expected
    assert len(data) == frame_header_size_bytes(from_node, to_node) + sum(
        frame_message_size_bytes(one) for one in encoded
    )
    assert decode_frame(data).messages == group_messages


@pytest.mark.parametrize("value", [0, 1, 127, 128, 300, 1 << 35, UINT64_MAX])
def test_varint_matches_protobuf(value: int) -> None:
    # uint64 field 1 = tag byte 0x08 then the varint (zero is omitted by proto3).
    expected = raft_pb2.RaftFrame(from_node=value).SerializeToString()
    assert (b"\x08" + encode_varint(value) if value else b"") == expected


def test_unknown_message_type_number_is_rejected_naming_it() -> None:
    frame = raft_pb2.RaftFrame(
        from_node=1,
        to_node=2,
        messages=[
            raft_pb2.GroupMessage(
                group_id=3,
                message=raft_pb2.Message(type=99, to=2, sender=1),  # type: ignore[arg-type]
            )
        ],
    )
    with pytest.raises(CodecError, match=r"group message 0 \(group 3\): unknown message type 99"):
        decode_frame(frame.SerializeToString())


def test_unspecified_message_type_zero_is_rejected() -> None:
    frame = raft_pb2.RaftFrame(
        messages=[raft_pb2.GroupMessage(group_id=1, message=raft_pb2.Message(to=2, sender=1))]
    )
    with pytest.raises(CodecError, match="unknown message type 0"):
        decode_frame(frame.SerializeToString())


def test_unknown_entry_type_is_rejected_naming_the_entry() -> None:
    proto = message_to_proto(Message(MessageType.APPEND, to=2, sender=1, term=1))
    proto.entries.add(term=1, index=17, type=5)
    frame = raft_pb2.RaftFrame(messages=[raft_pb2.GroupMessage(group_id=1, message=proto)])
    with pytest.raises(CodecError, match="entry at index 17 has unknown entry type 5"):
        decode_frame(frame.SerializeToString())


def test_group_message_without_message_is_rejected() -> None:
    frame = raft_pb2.RaftFrame(messages=[raft_pb2.GroupMessage(group_id=4)])
    with pytest.raises(CodecError, match=r"group message 0 \(group 4\) has no message"):
        decode_frame(frame.SerializeToString())


@pytest.mark.parametrize("garbage", [b"\xff\xff\xff", b"\x1a\x05ab", b"\x08"])
def test_bytes_that_do_not_parse_are_rejected_with_their_size(garbage: bytes) -> None:
    with pytest.raises(CodecError, match=f"frame of {len(garbage)} bytes does not parse"):
        decode_frame(garbage)


def test_value_out_of_uint64_range_is_a_codec_error() -> None:
    with pytest.raises(CodecError, match="cannot encode APPEND message"):
        message_to_proto(Message(MessageType.APPEND, to=2, sender=1, term=1 << 64))
    with pytest.raises(CodecError, match="cannot encode group id -1"):
        encode_group_message(-1, Message(MessageType.APPEND, to=2, sender=1, term=1))
    with pytest.raises(CodecError, match="cannot encode HEARTBEAT message"):
        encode_group_message(7, Message(MessageType.HEARTBEAT, 2, 1, 1, commit=1 << 64))


def test_entry_framing_limit_covers_the_worst_case_entry() -> None:
    bare = Message(MessageType.APPEND, to=UINT64_MAX, sender=UINT64_MAX, term=UINT64_MAX)
    data = b"x" * limits.ENTRY_DATA_BYTES_MAX
    with_entry = dataclasses.replace(
        bare, entries=(Entry(UINT64_MAX, UINT64_MAX, EntryType.CONF_CHANGE, data),)
    )
    framing = (
        len(encode_group_message(UINT64_MAX, with_entry))
        - len(encode_group_message(UINT64_MAX, bare))
        - len(data)
    )
    assert framing <= limits.ENTRY_FRAMING_BYTES_MAX


def test_an_append_at_the_core_limits_fits_its_wire_bound() -> None:
    count = raft_limits.ENTRIES_PER_MESSAGE_MAX
    payload_each = raft_limits.MESSAGE_BYTES_MAX // count
    message = Message(
        MessageType.APPEND,
        to=UINT64_MAX,
        sender=UINT64_MAX,
        term=UINT64_MAX,
        log_term=UINT64_MAX,
        index=UINT64_MAX,
        entries=tuple(
            Entry(UINT64_MAX, UINT64_MAX, EntryType.CONF_CHANGE, b"e" * payload_each)
            for _ in range(count)
        ),
        commit=UINT64_MAX,
        context=b"c" * 64,
    )
    encoded = encode_group_message(UINT64_MAX, message)
    assert frame_message_size_bytes(encoded) <= limits.APPEND_MESSAGE_BYTES_MAX
    frame = encode_frame(UINT64_MAX, UINT64_MAX, [encoded])
    assert len(frame) - len(encoded) <= limits.FRAME_HEADER_BYTES_MAX
    assert len(frame) <= limits.FRAME_BYTES_MAX


def test_a_full_snapshot_chunk_fits_its_wire_bound() -> None:
    message = Message(
        MessageType.SNAPSHOT,
        to=UINT64_MAX,
        sender=UINT64_MAX,
        term=UINT64_MAX,
        snapshot=SnapshotMetadata(
            UINT64_MAX, UINT64_MAX, ConfState(voters=(UINT64_MAX,) * 7, learners=(UINT64_MAX,) * 3)
        ),
        chunk_offset=UINT64_MAX,
        chunk_data=b"s" * raft_limits.SNAPSHOT_CHUNK_BYTES_MAX,
        chunk_done=True,
    )
    encoded = encode_group_message(UINT64_MAX, message)
    assert frame_message_size_bytes(encoded) <= limits.SNAPSHOT_MESSAGE_BYTES_MAX
