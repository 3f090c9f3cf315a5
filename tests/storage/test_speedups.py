"""The C loops of the storage hot path (`_speedups.c`) against their Python twins.

The Python twins define the meaning; every C result is compared with theirs on the same
inputs, and every input off the C fast path must come back declined (None) with nothing
changed, so that the Python twin runs and raises its precise error. The C module must be
built on any machine `make` installed the project on (it has a C compiler): a missing one is
a failure here, not a skip, unless MINIKV_PURE_PYTHON=1 asks for the Python loops.
"""

from __future__ import annotations

import os
from array import array
from collections.abc import Sequence
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from minikv_core.storage import speedups
from minikv_core.storage.bloom import (
    BloomFilter,
    build_words,
    build_words_python,
    extend_hashes,
    word_count_for,
    words_from_bytes,
    words_to_bytes,
)
from minikv_core.storage.lsm_limits import (
    LSM_BLOCK_PAYLOAD_BYTES_MAX,
    LSM_MEMTABLE_ENTRY_OVERHEAD_BYTES,
)
from minikv_core.storage.memtable import Memtable
from minikv_core.storage.sstable_format import encode_data_block, encode_data_block_python
from minikv_core.storage.wal_records import KvBatch, KvOp, OpKind

Pairs = Sequence[tuple[bytes, bytes | None]]
KEY_MAX = 16
VALUE_MAX = 64

pytestmark = pytest.mark.skipif(
    os.environ.get("MINIKV_PURE_PYTHON", "") not in ("", "0"),
    reason="MINIKV_PURE_PYTHON asks for the Python loops",
)


def c_encode() -> speedups.EncodeKvBatch:
    assert speedups.encode_kv_batch is not None, (
        "the C loops were not built: reinstall (`rm .venv/.stamp-*; make .venv/.stamp-dev`) "
        "and read the compiler's warning"
    )
    return speedups.encode_kv_batch


def c_set_many() -> speedups.MemtableSetMany:
    assert speedups.memtable_set_many is not None, "the C loops were not built"
    return speedups.memtable_set_many


def refuse(key: object, value: object) -> None:
    raise AssertionError(f"the Python twin was handed an off-path pair: {key!r}, {value!r}")


def python_encoding(sequence: int, pairs: Pairs) -> bytes:
    return KvBatch.encode_pairs_python(
        sequence,
        pairs,
        key_size_bytes_max=KEY_MAX,
        value_size_bytes_max=VALUE_MAX,
        check_pair=refuse,
    )


keys = st.binary(min_size=1, max_size=KEY_MAX)
values = st.none() | st.binary(max_size=VALUE_MAX)
batches = st.lists(st.tuples(keys, values), max_size=40)


@settings(max_examples=300, deadline=None)
@given(sequence=st.integers(0, 2**64 - 1), pairs=batches)
def test_the_c_encoding_is_the_python_one_and_decodes_to_the_pairs(
    sequence: int, pairs: list[tuple[bytes, bytes | None]]
) -> None:
    encoded = c_encode()(sequence, pairs, KEY_MAX, VALUE_MAX)
    assert encoded == python_encoding(sequence, pairs)
    assert encoded == c_encode()(sequence, tuple(pairs), KEY_MAX, VALUE_MAX)
    decoded = KvBatch.decode(encoded)
    expected = [KvOp(OpKind.DELETE, k) if v is None else KvOp(OpKind.PUT, k, v) for k, v in pairs]
    assert (decoded.sequence, list(decoded.ops)) == (sequence, expected)


class Key(bytes):
    """A bytes subclass: its hash and comparisons could run Python code."""


@pytest.mark.parametrize(
    "pair",
    [
        (b"", b"v"),  # empty key
        (b"k" * (KEY_MAX + 1), b"v"),  # key over the limit
        (b"k", b"v" * (VALUE_MAX + 1)),  # value over the limit
        ("k", b"v"),  # str key
        (bytearray(b"k"), b"v"),  # mutable key
        (Key(b"k"), b"v"),  # bytes subclass
        (b"k", bytearray(b"v")),  # mutable value
        (b"k", 5),  # not a value at all
    ],
)
def test_an_off_path_pair_is_declined_by_both_loops(pair: tuple[object, object]) -> None:
    pairs = [(b"a", b"1"), pair, (b"b", None)]
    assert c_encode()(1, pairs, KEY_MAX, VALUE_MAX) is None  # type: ignore[arg-type]
    entries: dict[bytes, bytes | None] = {b"x": b"old"}
    new_keys: list[bytes] = []
    declined = c_set_many()(entries, new_keys, pairs, 10, 7, 0)  # type: ignore[arg-type]
    if type(pair[0]) is bytes and type(pair[1]) in (bytes, type(None)):
        # Sizes are the encoder's business: the memtable takes any exact bytes.
        assert declined is not None
    else:
        assert declined is None
        assert (entries, new_keys) == ({b"x": b"old"}, []), "declined, yet changed"


def test_a_pair_that_is_no_two_tuple_is_declined() -> None:
    for odd in ([b"k", b"v"], (b"k",), (b"k", b"v", b"w")):
        assert c_encode()(1, [odd], KEY_MAX, VALUE_MAX) is None  # type: ignore[list-item]
        assert c_set_many()({}, [], [odd], 10, 0, 0) is None  # type: ignore[list-item]


def test_encode_pairs_falls_back_to_python_for_a_pair_check_pair_accepts() -> None:
    """The Store's path: a bytes subclass is declined by C, accepted by check_pair."""
    pairs = [(Key(b"k"), b"v")]
    payload = KvBatch.encode_pairs(
        3, pairs, key_size_bytes_max=KEY_MAX, value_size_bytes_max=VALUE_MAX, check_pair=print
    )
    assert payload == python_encoding(3, [(b"k", b"v")])


@settings(max_examples=200, deadline=None)
@given(
    rounds=st.lists(
        st.lists(
            st.tuples(st.sampled_from([b"a", b"b", b"c", b"dd", b"eee"]) | keys, values),
            max_size=12,
        ),
        max_size=8,
    )
)
def test_the_c_memtable_loop_keeps_the_same_entries_order_and_counts(
    rounds: list[list[tuple[bytes, bytes | None]]],
) -> None:
    """Overwrites of values, of tombstones by values and back, repeated keys in a batch."""
    in_c, in_python = Memtable(0), Memtable(0)
    for pairs in rounds:
        in_c.set_many(pairs)
        in_python.set_many_python(pairs)
        assert in_c.entries == in_python.entries
        assert list(in_c.entries) == list(in_python.entries)
        assert in_c.size_bytes == in_python.size_bytes
        assert in_c.tombstone_count == in_python.tombstone_count
        assert in_c._unordered == in_python._unordered  # the new keys, in first-set order


def test_the_c_memtable_loop_counts_bytes_and_tombstones() -> None:
    overhead = LSM_MEMTABLE_ENTRY_OVERHEAD_BYTES
    entries: dict[bytes, bytes | None] = {}
    new_keys: list[bytes] = []
    counts = c_set_many()(
        entries, new_keys, [(b"k", b"vv"), (b"t", None), (b"k", None)], overhead, 0, 0
    )
    assert counts == (2 * (1 + overhead), 2)
    assert entries == {b"k": None, b"t": None}
    assert new_keys == [b"k", b"t"]


# --- the bloom filter's loop -----------------------------------------------------------------


def c_build_words() -> speedups.BloomBuildWords:
    assert speedups.bloom_build_words is not None, "the C loops were not built"
    return speedups.bloom_build_words


@settings(max_examples=200, deadline=None)
@given(
    hashes=st.lists(st.tuples(st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1)), max_size=300),
    word_count=st.integers(1, 70),
)
def test_bloom_words_in_c_are_the_python_twins(
    hashes: list[tuple[int, int]], word_count: int
) -> None:
    word_hashes = array("I", [w for w, _ in hashes])
    bit_hashes = array("I", [b for _, b in hashes])
    built = c_build_words()(word_hashes, bit_hashes, word_count)
    assert built is not None
    words = array("Q")
    words.frombytes(built)
    assert words == build_words_python(word_hashes, bit_hashes, word_count)
    assert build_words(word_hashes, bit_hashes, word_count) == words


def test_a_filter_built_in_c_finds_every_key_it_was_built_from() -> None:
    keys = [b"key-%d" % n for n in range(5_000)]
    word_hashes, bit_hashes = array("I"), array("I")
    extend_hashes(word_hashes, bit_hashes, keys)
    words = build_words(word_hashes, bit_hashes, word_count_for(len(keys)))
    assert words == build_words_python(word_hashes, bit_hashes, word_count_for(len(keys)))
    probe = BloomFilter(words_from_bytes(words_to_bytes(words)))
    assert all(probe.may_contain(key) for key in keys)


@pytest.mark.parametrize(
    ("word_hashes", "bit_hashes", "word_count"),
    [
        (array("I", [1, 2]), array("I", [3]), 4),  # unequal lengths
        (array("Q", [1]), array("Q", [3]), 4),  # not u32s
        (array("i", [1]), array("i", [3]), 4),  # signed
        (array("I", [1]), array("I", [3]), 0),  # no words
    ],
)
def test_bloom_inputs_off_the_fast_path_are_declined(
    word_hashes: array[int], bit_hashes: array[int], word_count: int
) -> None:
    assert c_build_words()(word_hashes, bit_hashes, word_count) is None


def test_a_declined_bloom_input_gets_the_python_error() -> None:
    with pytest.raises(ValueError, match="zip"):
        build_words(array("I", [1, 2]), array("I", [3]), 4)


# --- an SSTable data block --------------------------------------------------------------------


def c_encode_block() -> speedups.EncodeDataBlock:
    assert speedups.encode_data_block is not None, "the C loops were not built"
    return speedups.encode_data_block


BLOCK_MAX = LSM_BLOCK_PAYLOAD_BYTES_MAX


@st.composite
def blocks(draw: st.DrawFn) -> tuple[list[bytes], list[bytes | None]]:
    """Entries shaped as a table writer cuts them: keys all of one length or not, values all
    of one length or not, with tombstones or without (each layout variant of the format)."""
    count = draw(st.integers(1, 40))
    key_length = draw(st.one_of(st.none(), st.integers(1, 12)))
    value_length = draw(st.one_of(st.none(), st.integers(0, 30)))
    keys = draw(
        st.lists(
            st.binary(min_size=key_length or 1, max_size=key_length or 12),
            min_size=count,
            max_size=count,
        )
    )
    values = draw(
        st.lists(
            st.binary(
                min_size=0 if value_length is None else value_length,
                max_size=30 if value_length is None else value_length,
            ),
            min_size=count,
            max_size=count,
        )
    )
    tombstones = draw(st.lists(st.booleans(), min_size=count, max_size=count))
    with_tombstones = draw(st.booleans())
    return keys, [
        None if with_tombstones and dead else value
        for value, dead in zip(values, tombstones, strict=True)
    ]


@settings(max_examples=300, deadline=None)
@given(block=blocks())
def test_a_data_block_in_c_is_the_python_twins(
    block: tuple[list[bytes], list[bytes | None]],
) -> None:
    keys, values = block
    payload = c_encode_block()(keys, values, BLOCK_MAX)
    assert payload is not None
    assert payload == encode_data_block_python(keys, values)
    assert encode_data_block(keys, values) == payload


@pytest.mark.parametrize(
    ("keys", "values", "payload_max"),
    [
        ([], [], BLOCK_MAX),  # no entry
        ([b"a", b"b"], [b"1"], BLOCK_MAX),  # unequal lengths
        ((b"a",), [b"1"], BLOCK_MAX),  # not a list
        ([bytearray(b"a")], [b"1"], BLOCK_MAX),  # a key not exactly bytes
        ([b"a"], [memoryview(b"1")], BLOCK_MAX),  # a value neither bytes nor None
        ([b"a", b"b"], [b"1", b"2"], 30),  # over the payload bound
    ],
)
def test_block_inputs_off_the_fast_path_are_declined(
    keys: Any, values: Any, payload_max: int
) -> None:
    assert c_encode_block()(keys, values, payload_max) is None
