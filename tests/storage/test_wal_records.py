"""Typed WAL payloads: every codec round-trips, and malformed payloads are clear errors."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from minikv_core.storage.errors import RecordDecodeError
from minikv_core.storage.wal_records import (
    KvBatch,
    KvOp,
    OpKind,
    RaftEntry,
    RaftHardState,
    RaftSnapshotMark,
    RecordType,
    decode_record,
    encode_record,
    raft_entry_group_and_index,
)

u32 = st.integers(0, 2**32 - 1)
u64 = st.integers(0, 2**64 - 1)

kv_ops = st.one_of(
    st.builds(KvOp, st.just(OpKind.PUT), st.binary(max_size=40), st.binary(max_size=80)),
    st.builds(KvOp, st.just(OpKind.DELETE), st.binary(max_size=40)),
)
records = st.one_of(
    st.builds(KvBatch, u64, st.lists(kv_ops, max_size=20).map(tuple)),
    st.builds(RaftEntry, u32, u64, u64, st.integers(0, 255), st.binary(max_size=200)),
    st.builds(RaftHardState, u32, u64, u64, u64),
    st.builds(RaftSnapshotMark, u32, u64, u64),
)


@settings(derandomize=True, max_examples=300, deadline=None)
@given(records)
def test_every_record_type_round_trips(record: object) -> None:
    record_type, payload = encode_record(record)  # type: ignore[arg-type]
    assert record_type == record.RECORD_TYPE  # type: ignore[attr-defined]
    assert decode_record(record_type, payload) == record


@settings(derandomize=True, max_examples=200, deadline=None)
@given(records, st.data())
def test_truncated_payloads_never_decode_silently(record: object, data: st.DataObject) -> None:
    record_type, payload = encode_record(record)  # type: ignore[arg-type]
    if record_type == RecordType.RAFT_ENTRY and len(payload) > 21:
        return  # an entry's data is "the rest": a shorter entry is still well-formed
    if not payload:
        return
    cut = data.draw(st.integers(0, len(payload) - 1))
    with pytest.raises(RecordDecodeError):
        decode_record(record_type, payload[:cut])


def test_raft_entry_layout_is_fixed_header_then_data() -> None:
    entry = RaftEntry(group_id=3, term=7, index=42, entry_type=1, data=b"cmd")
    payload = entry.encode()
    assert len(payload) == 21 + 3
    assert payload.endswith(b"cmd")
    assert raft_entry_group_and_index(payload) == (3, 42)


def test_kv_batch_with_trailing_bytes_is_rejected() -> None:
    payload = KvBatch(1, (KvOp(OpKind.PUT, b"k", b"v"),)).encode() + b"!"
    with pytest.raises(RecordDecodeError, match="trailing"):
        KvBatch.decode(payload)


def test_kv_batch_op_with_unknown_kind_is_rejected() -> None:
    payload = bytearray(KvBatch(1, (KvOp(OpKind.PUT, b"k", b"v"),)).encode())
    payload[12] = 9  # the op's kind byte
    with pytest.raises(RecordDecodeError, match="kind 9"):
        KvBatch.decode(bytes(payload))


def test_delete_with_a_value_does_not_encode() -> None:
    with pytest.raises(ValueError, match="carries a value"):
        KvBatch(1, (KvOp(OpKind.DELETE, b"k", b"v"),)).encode()


def test_out_of_range_fields_are_value_errors_naming_the_field() -> None:
    with pytest.raises(ValueError, match="group_id"):
        RaftEntry(2**32, 1, 1, 0, b"").encode()
    with pytest.raises(ValueError, match="term"):
        RaftHardState(1, -1, 0, 0).encode()
    with pytest.raises(ValueError, match="index"):
        RaftSnapshotMark(1, 2**64, 1).encode()


def test_non_bytes_fields_are_type_errors() -> None:
    with pytest.raises(TypeError, match="data must be bytes"):
        RaftEntry(1, 1, 1, 0, "text").encode()  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="key must be bytes"):
        KvBatch(1, (KvOp(OpKind.PUT, "k", b"v"),)).encode()  # type: ignore[arg-type]


def test_fixed_size_records_reject_wrong_sizes() -> None:
    with pytest.raises(RecordDecodeError, match="RAFT_HARD_STATE payload is 3 bytes"):
        RaftHardState.decode(b"abc")
    with pytest.raises(RecordDecodeError, match="RAFT_SNAPSHOT"):
        RaftSnapshotMark.decode(bytes(21))
    with pytest.raises(RecordDecodeError, match="unknown record type 77"):
        decode_record(77, b"")


@given(u64, st.lists(kv_ops, max_size=20))
@settings(derandomize=True, max_examples=200, deadline=None)
def test_encode_pairs_writes_the_bytes_of_the_op_encoding(sequence: int, ops: list[KvOp]) -> None:
    pairs = [(op.key, None if op.kind == OpKind.DELETE else op.value) for op in ops]
    handed: list[tuple[object, object]] = []

    def accept(key: object, value: object) -> None:
        handed.append((key, value))

    # Limits inside the generated sizes, so that both paths of the pass are taken.
    payload = KvBatch.encode_pairs(
        sequence, pairs, key_size_bytes_max=20, value_size_bytes_max=40, check_pair=accept
    )
    assert payload == KvBatch(sequence, tuple(ops)).encode()
    off_fast_path: list[tuple[object, object]] = []  # one hand-over per unusual field
    for key, value in pairs:
        if not 0 < len(key) <= 20:
            off_fast_path.append((key, value))
        if value is not None and len(value) > 40:
            off_fast_path.append((key, value))
    assert handed == off_fast_path


class _Key(bytes):
    """A bytes subclass: not on the fast path, but valid for a caller that accepts it."""


def test_encode_pairs_hands_unusual_pairs_to_check_pair_which_may_refuse() -> None:
    def refuse_text(key: object, value: object) -> None:
        if not isinstance(key, bytes) or not isinstance(value, bytes | None):
            raise ValueError(f"refused {key!r}: {value!r}")

    def encode(pairs: list[tuple[bytes, bytes | None]]) -> bytes:
        return KvBatch.encode_pairs(
            7, pairs, key_size_bytes_max=8, value_size_bytes_max=8, check_pair=refuse_text
        )

    accepted = encode([(_Key(b"k"), b"v"), (b"d", None)])
    assert KvBatch.decode(accepted) == KvBatch(
        7, (KvOp(OpKind.PUT, b"k", b"v"), KvOp(OpKind.DELETE, b"d"))
    )
    with pytest.raises(ValueError, match="refused 'text'"):
        encode([(b"a", b"1"), ("text", b"v")])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="refused b'a': 'text'"):
        encode([(b"a", "text")])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="sequence"):
        KvBatch.encode_pairs(
            -1, [], key_size_bytes_max=8, value_size_bytes_max=8, check_pair=refuse_text
        )
