"""Point gets that search a data block's bytes instead of decoding it, and mapped reads.

`TableReader.find` answers a block-cache miss with `sstable_format.search_data_block` (one
`bytes.find` over a fixed-length key region) and, for an engine's tables, copies blocks out of
a memory map instead of `pread`. Both must answer exactly as the decoding path did.
"""

from __future__ import annotations

import itertools
import random
from pathlib import Path

import pytest

from minikv_core.storage.block_cache import BlockCache
from minikv_core.storage.engine import Engine, EngineOptions
from minikv_core.storage.errors import CorruptionError
from minikv_core.storage.sstable import ABSENT, TableReader
from minikv_core.storage.sstable_format import (
    NEEDS_DECODE,
    decode_data_block,
    encode_data_block,
    search_data_block,
)
from tests.storage.test_sstable import (
    damaged_copies,
    lookup,
    lookups_detect_damage,
    write_table,
)

SEED = 11
BLOCK_BYTES = 128


def table_file(path: Path, entries: list[tuple[bytes, bytes | None]]) -> Path:
    return write_table(path, entries, BLOCK_BYTES).path


def two_letter_words(length: int) -> list[bytes]:
    """Every word of `length` letters over {a, b}: keys that straddle each other abound."""
    return [bytes(word) for word in itertools.product(b"ab", repeat=length)]


@pytest.mark.parametrize("mapped", [False, True], ids=["pread", "mapped"])
def test_keys_found_across_entry_boundaries_are_not_matches(tmp_path: Path, mapped: bool) -> None:
    """Over a two-letter alphabet nearly every absent word occurs in the key region astride two
    keys; only matches at an entry boundary count, for tombstones too."""
    rng = random.Random(SEED)
    words = two_letter_words(6)
    present = sorted(rng.sample(words, 40))
    entries: list[tuple[bytes, bytes | None]] = [
        (key, None if rng.random() < 0.2 else b"v-" + key) for key in present
    ]
    expected = dict(entries)
    table = TableReader.open(table_file(tmp_path / "000001.sst", entries), mapped=mapped)
    try:
        for word in words:
            found = lookup(table, word)
            want = expected.get(word, ABSENT)
            assert found == want, f"seed {SEED}: {word!r} read as {found!r}, expected {want!r}"
    finally:
        table.close()


def test_block_of_variable_length_keys_needs_decoding() -> None:
    payload = encode_data_block([b"a", b"bb", b"ccc"], [b"1", b"2", b"3"])
    assert search_data_block(payload, len(payload), b"bb", b"ccc", None) is NEEDS_DECODE


def test_key_of_another_length_needs_decoding() -> None:
    payload = encode_data_block([b"aa", b"bb"], [b"1", b"2"])
    assert search_data_block(payload, len(payload), b"b", b"bb", None) is NEEDS_DECODE


def test_search_agrees_with_decoding_for_every_key_and_gap() -> None:
    rng = random.Random(SEED)
    keys = sorted({b"k%05d" % rng.randrange(100_000) for _ in range(30)})
    values: list[bytes | None] = [
        None if rng.random() < 0.25 else rng.randbytes(rng.randrange(0, 20)) for _ in keys
    ]
    payload = encode_data_block(keys, values)
    decoded_keys = decode_data_block(payload, len(payload))[0]
    assert list(decoded_keys) == keys
    stored = dict(zip(keys, values, strict=True))
    probes = keys + [b"k%05d" % n for n in range(0, 100_000, 997)]
    for key in probes:
        found = search_data_block(payload, len(payload), key, keys[-1], None)
        assert found == stored.get(key, ABSENT), f"seed {SEED}: {key!r}"


def test_absent_key_in_a_misplaced_block_is_reported(tmp_path: Path) -> None:
    """Blocks 0 and 1 swapped, CRCs intact: a get of a key of block 0 reads block 1's bytes,
    does not find the key there, and must say the block disagrees with the index rather than
    answer "absent" (which would let an older run's value through)."""
    entries: list[tuple[bytes, bytes | None]] = [
        (b"key:%08d" % i, b"value-%08d" % i) for i in range(200)
    ]
    path = table_file(tmp_path / "000001.sst", entries)
    table = TableReader.open(path)
    first, second = list(table.check_blocks())[:2]
    assert first.first_key is not None
    table.close()
    data = bytearray(path.read_bytes())
    span = first.size_bytes + 4
    assert first.size_bytes == second.size_bytes
    block0 = bytes(data[first.offset : first.offset + span])
    data[first.offset : first.offset + span] = data[second.offset : second.offset + span]
    data[second.offset : second.offset + span] = block0
    path.write_bytes(bytes(data))
    for mapped in (False, True):
        table = TableReader.open(path, mapped=mapped)
        try:
            with pytest.raises(CorruptionError, match="disagree with the block index"):
                lookup(table, first.first_key)
        finally:
            table.close()


@pytest.mark.parametrize("damage", ["flip", "truncate"])
def test_damage_under_a_mapping_never_reads_as_wrong_data(tmp_path: Path, damage: str) -> None:
    """A mapped reader, like a pread one: every damaged copy fails with CorruptionError (at
    open or at the get) or returns exactly what was written, for every key."""
    entries: list[tuple[bytes, bytes | None]] = [
        (b"key:%08d" % i, None if i % 7 == 0 else b"value-%08d" % i) for i in range(400)
    ]
    original = table_file(tmp_path / "000001.sst", entries).read_bytes()
    detected = 0
    for path, context in damaged_copies(original, tmp_path, damage, 40, SEED):
        try:
            table = TableReader.open(path, mapped=True)
        except CorruptionError:
            detected += 1
            continue
        try:
            failed = lookups_detect_damage(table, entries, context)
        finally:
            table.close()
        detected += failed
    assert detected == 40, f"seed {SEED}: only {detected} of 40 damaged copies were detected"


@pytest.mark.parametrize("mmap_reads", [False, True], ids=["pread", "mapped"])
def test_engine_reads_the_same_with_and_without_a_mapping(tmp_path: Path, mmap_reads: bool) -> None:
    """Gets (cache dormant or not) and scans over several runs give the same answers whichever
    way blocks are read."""
    rng = random.Random(SEED)
    options = EngineOptions(
        memtable_size_bytes=16 * 1024,
        block_size_bytes=BLOCK_BYTES,
        background_flush=False,
        background_compaction=False,
        block_cache=BlockCache(4 * 1024),
        mmap_reads=mmap_reads,
    )
    expected: dict[bytes, bytes | None] = {}
    engine = Engine.open(tmp_path / "db", options)
    try:
        for index in range(1, 41):
            ops = []
            for _ in range(50):
                key = b"k%05d" % rng.randrange(3_000)
                value = None if rng.random() < 0.1 else rng.randbytes(rng.randrange(1, 40))
                ops.append((key, value))
                expected[key] = value
            engine.apply_checked(ops, index)
        engine.flush()
        assert len(engine.tables()) > 4
        for _ in range(3):  # repeated: the cache admits blocks on their second miss
            for number in range(3_000):
                key = b"k%05d" % number
                assert engine.get(key) == expected.get(key), f"seed {SEED}: {key!r}"
        live = sorted((k, v) for k, v in expected.items() if v is not None)
        assert engine.scan() == live
        assert engine.scan(prefix=b"k01", reverse=True) == [
            (k, v) for k, v in reversed(live) if k.startswith(b"k01")
        ]
    finally:
        engine.close()
