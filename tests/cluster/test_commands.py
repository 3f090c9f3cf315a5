"""The shard command codec: round trips, the exact wire layout, and every malformed payload."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, seed, settings
from hypothesis import strategies as st

from minikv_core.cluster import limits
from minikv_core.cluster.commands import (
    FORMAT_VERSION,
    BatchCommand,
    Command,
    CommandDecodeError,
    CommandEncodeError,
    CommandKind,
    DeleteCommand,
    PutCommand,
    WriteCommand,
    decode_command,
    encode_command,
)

HYPOTHESIS_SEED = 20240917

keys = st.binary(min_size=1, max_size=64) | st.binary(
    min_size=limits.COMMAND_KEY_SIZE_BYTES_MAX - 2, max_size=limits.COMMAND_KEY_SIZE_BYTES_MAX
)
values = st.binary(max_size=300)
request_ids = st.integers(min_value=0, max_value=2**64 - 1)
puts = st.builds(PutCommand, keys, values, request_ids)
deletes = st.builds(DeleteCommand, keys, request_ids)
writes: st.SearchStrategy[WriteCommand] = puts | deletes
batches = st.lists(writes, min_size=1, max_size=20, unique_by=lambda c: c.key).map(
    lambda items: BatchCommand(tuple(items))
)
commands: st.SearchStrategy[Command] = puts | deletes | batches


@seed(HYPOTHESIS_SEED)
@settings(max_examples=300, deadline=None, database=None)
@given(commands)
def test_every_valid_command_round_trips(command: Command) -> None:
    data = encode_command(command)
    assert data[0] == FORMAT_VERSION
    assert decode_command(data) == command
    assert decode_command(memoryview(data)) == command


@seed(HYPOTHESIS_SEED)
@settings(max_examples=50, deadline=None, database=None)
@given(commands)
def test_every_strict_prefix_of_a_command_is_refused(command: Command) -> None:
    data = command.encode()
    for cut in range(len(data)):
        with pytest.raises(CommandDecodeError):
            decode_command(data[:cut])


@seed(HYPOTHESIS_SEED)
@settings(max_examples=500, deadline=None, database=None)
@given(st.binary(max_size=200))
def test_arbitrary_bytes_decode_or_raise_command_decode_error_only(data: bytes) -> None:
    try:
        command = decode_command(data)
    except CommandDecodeError as exc:
        assert 0 <= exc.offset <= len(data)
    else:
        assert command.encode() == data  # whatever decodes is canonical


def test_put_layout_is_the_documented_one() -> None:
    """The bytes are a stored format (Raft logs, snapshots): changing them must be deliberate."""
    data = PutCommand(b"key", b"value", request_id=7).encode()
    assert data == (
        bytes([FORMAT_VERSION, CommandKind.PUT]) + struct.pack("<QII", 7, 3, 5) + b"key" + b"value"
    )
    delete = DeleteCommand(b"k", request_id=2**64 - 1).encode()
    assert (
        delete
        == bytes([FORMAT_VERSION, CommandKind.DELETE]) + struct.pack("<QI", 2**64 - 1, 1) + b"k"
    )
    batch = BatchCommand((DeleteCommand(b"a", 1), PutCommand(b"b", b"", 2))).encode()
    assert batch == (
        bytes([FORMAT_VERSION, CommandKind.BATCH])
        + struct.pack("<I", 2)
        + bytes([CommandKind.DELETE])
        + struct.pack("<QI", 1, 1)
        + b"a"
        + bytes([CommandKind.PUT])
        + struct.pack("<QII", 2, 1, 0)
        + b"b"
    )


# ------------------------------------------------------------------------- encoding


@pytest.mark.parametrize(
    ("command", "message"),
    [
        (PutCommand(b"", b"v"), "key is 0 bytes"),
        (PutCommand(b"k" * (limits.COMMAND_KEY_SIZE_BYTES_MAX + 1), b"v"), "key is 4097 bytes"),
        (DeleteCommand(b""), "key is 0 bytes"),
        (PutCommand("text", b"v"), "key must be bytes"),  # type: ignore[arg-type]
        (PutCommand(b"k", "text"), "must be bytes"),  # type: ignore[arg-type]
        (PutCommand(b"k", b"v", -1), "request_id"),
        (PutCommand(b"k", b"v", 2**64), "request_id"),
        (DeleteCommand(b"k", True), "request_id"),
        (BatchCommand(()), "1..4096 commands, got 0"),
        (BatchCommand((PutCommand(b"k", b"1"), DeleteCommand(b"k"))), "writes key b'k' again"),
        (
            BatchCommand((BatchCommand((PutCommand(b"k", b"1"),)),)),  # type: ignore[arg-type]
            "must be a PutCommand or DeleteCommand",
        ),
        (BatchCommand([PutCommand(b"k", b"1")]), "must be a tuple"),  # type: ignore[arg-type]
    ],
)
def test_invalid_command_is_refused_at_encode(command: Command, message: str) -> None:
    with pytest.raises(CommandEncodeError, match=message):
        encode_command(command)


def test_value_over_the_limit_is_refused_at_encode() -> None:
    value = bytes(limits.COMMAND_VALUE_SIZE_BYTES_MAX + 1)
    with pytest.raises(CommandEncodeError, match="more than the limit"):
        PutCommand(b"k", value).encode()
    largest = PutCommand(b"k" * limits.COMMAND_KEY_SIZE_BYTES_MAX, value[:-1])
    assert decode_command(largest.encode()) == largest


def test_batch_over_the_byte_limit_is_refused_at_encode() -> None:
    value = bytes(limits.COMMAND_VALUE_SIZE_BYTES_MAX)
    batch = BatchCommand((PutCommand(b"a", value), PutCommand(b"b", value)))
    with pytest.raises(CommandEncodeError, match="split the batch"):
        batch.encode()


def test_batch_at_the_count_limit_round_trips_and_one_more_is_refused() -> None:
    items = tuple(DeleteCommand(b"%d" % n, n) for n in range(limits.COMMAND_BATCH_COMMANDS_MAX + 1))
    batch = BatchCommand(items[:-1])
    assert decode_command(batch.encode()) == batch
    with pytest.raises(CommandEncodeError, match="got 4097"):
        BatchCommand(items).encode()


def test_encode_command_refuses_what_is_not_a_command() -> None:
    with pytest.raises(CommandEncodeError, match="not a command: bytes"):
        encode_command(b"raw")  # type: ignore[arg-type]


# ------------------------------------------------------------------------- decoding


def put_bytes(key: bytes, value: bytes, request_id: int = 1) -> bytes:
    return (
        bytes([CommandKind.PUT])
        + struct.pack("<QII", request_id, len(key), len(value))
        + key
        + value
    )


def top(item: bytes) -> bytes:
    return bytes([FORMAT_VERSION]) + item


@pytest.mark.parametrize(
    ("data", "offset", "message"),
    [
        (b"", 0, "empty data is a no-op entry"),
        (bytes([2]) + put_bytes(b"k", b"v"), 0, "unknown command format 2"),
        (top(b""), 1, "ends where a command kind byte should be"),
        (top(bytes([9])), 1, "unknown command kind 9"),
        (top(put_bytes(b"k", b"v")[:10]), 1, "PUT header is cut short"),
        (top(put_bytes(b"k", b"value")[:-1]), 1, "overruns the data"),
        (top(put_bytes(b"", b"v")), 1, "key length 0"),
        (top(put_bytes(b"k", b"v") + b"x"), 20, "1 trailing bytes"),
        (top(bytes([CommandKind.DELETE]) + struct.pack("<QI", 1, 5) + b"abc"), 1, "overruns"),
        (top(bytes([CommandKind.DELETE]) + struct.pack("<Q", 1)), 1, "DELETE header is cut"),
        (top(bytes([CommandKind.BATCH]) + b"\x01"), 1, "BATCH header is cut short"),
        (top(bytes([CommandKind.BATCH]) + struct.pack("<I", 0)), 1, "BATCH of 0 commands"),
        (top(bytes([CommandKind.BATCH]) + struct.pack("<I", 5000)), 1, "BATCH of 5000"),
        (
            top(bytes([CommandKind.BATCH]) + struct.pack("<I", 1) + bytes([CommandKind.BATCH])),
            6,
            "batches do not nest",
        ),
        (
            top(
                bytes([CommandKind.BATCH])
                + struct.pack("<I", 2)
                + put_bytes(b"k", b"1")
                + put_bytes(b"k", b"2")
            ),
            25,
            "BATCH item 1 writes key b'k' again",
        ),
        (
            top(bytes([CommandKind.BATCH]) + struct.pack("<I", 2) + put_bytes(b"k", b"1")),
            25,
            "ends where a command kind byte should be",
        ),
    ],
)
def test_malformed_payload_is_refused_naming_the_offset(
    data: bytes, offset: int, message: str
) -> None:
    with pytest.raises(CommandDecodeError, match=message) as info:
        decode_command(data)
    assert info.value.offset == offset, str(info.value)
    assert f"byte offset {offset}" in str(info.value)


def test_decoded_key_over_the_limit_is_refused() -> None:
    key = b"k" * (limits.COMMAND_KEY_SIZE_BYTES_MAX + 1)
    with pytest.raises(CommandDecodeError, match="key length 4097"):
        decode_command(top(put_bytes(key, b"v")))


def test_decoded_value_over_the_limit_is_refused() -> None:
    value = bytes(limits.COMMAND_VALUE_SIZE_BYTES_MAX + 1)
    with pytest.raises(CommandDecodeError, match="PUT value of 8388601 bytes exceeds"):
        decode_command(top(put_bytes(b"k", value)))
