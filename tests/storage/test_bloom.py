"""The blocked Bloom filter: no false negatives, ~1% false positives, stable hashing."""

from __future__ import annotations

import random
import subprocess
import sys
import zlib

import crc32c
import pytest

from minikv_core.storage.bloom import BloomFilter, key_hashes, word_count_for
from minikv_core.storage.lsm_limits import LSM_BLOOM_BITS_PER_KEY

SEED = 20261125
KEYS = 50_000
PROBES = 100_000
# The design rate is ~1.0% (bloom.py); these bounds fail a filter that is broken (saturated,
# or degenerate hashing on structured keys) while tolerating sampling noise at 100k probes.
FALSE_POSITIVE_RATE_MAX = 0.015
FALSE_POSITIVE_RATE_MIN = 0.005


def sequential_key(i: int) -> bytes:
    return b"key:%06d:%06d" % divmod(i, 1000)


def false_positive_rate(present: list[bytes], absent: list[bytes]) -> float:
    bloom = BloomFilter.from_keys(present)
    return sum(bloom.may_contain(key) for key in absent) / len(absent)


def test_every_inserted_key_is_reported_present() -> None:
    rng = random.Random(SEED)
    keys = [rng.randbytes(rng.randrange(1, 40)) for _ in range(KEYS)]
    bloom = BloomFilter.from_keys(keys)
    missing = [key for key in keys if not bloom.may_contain(key)]
    assert missing == [], f"seed {SEED}: false negatives, e.g. {missing[:3]}"


@pytest.mark.parametrize("kind", ["sequential", "random"])
def test_false_positive_rate_is_about_one_percent(kind: str) -> None:
    rng = random.Random(SEED)
    if kind == "sequential":
        # Structured keys are the hard case for linear hashes such as CRCs.
        present = [sequential_key(i) for i in range(KEYS)]
        absent = [sequential_key(i) for i in range(KEYS, KEYS + PROBES)]
    else:
        present = [rng.randbytes(16) for _ in range(KEYS)]
        absent = [b"\x00" + rng.randbytes(16) for _ in range(PROBES)]  # 17 bytes: never present
    rate = false_positive_rate(present, absent)
    assert FALSE_POSITIVE_RATE_MIN <= rate <= FALSE_POSITIVE_RATE_MAX, (
        f"seed {SEED}, {kind} keys: false-positive rate {rate:.4f}"
    )


def test_filter_words_are_the_union_of_each_keys_mask_in_its_word() -> None:
    """The bulk build (hashes in arrays, masks made in one loop) against the definition."""
    rng = random.Random(SEED)
    keys = [rng.randbytes(rng.randrange(1, 40)) for _ in range(5000)]
    bloom = BloomFilter.from_keys(keys)
    expected = [0] * bloom.word_count
    for key in keys:
        word_hash, mask = key_hashes(key)
        expected[word_hash % bloom.word_count] |= mask
    assert list(bloom.words) == expected, f"seed {SEED}"


def test_filter_size_is_bits_per_key_rounded_up_to_words() -> None:
    assert word_count_for(0) == 1
    assert word_count_for(1) == 1
    assert word_count_for(1000) == (1000 * LSM_BLOOM_BITS_PER_KEY + 63) // 64
    bloom = BloomFilter.from_keys(sequential_key(i) for i in range(1000))
    assert bloom.size_bytes == 8 * word_count_for(1000)


def test_mask_tables_match_the_five_6_bit_slices() -> None:
    rng = random.Random(SEED)
    for _ in range(2000):
        key = rng.randbytes(rng.randrange(1, 30))
        bits = zlib.crc32(key)
        slices = [(bits >> shift) & 63 for shift in (0, 6, 12, 18, 24)]
        expected = 0
        for position in slices:
            expected |= 1 << position
        assert key_hashes(key) == (crc32c.crc32c(key), expected), key


def test_empty_filter_reports_everything_absent() -> None:
    bloom = BloomFilter.from_keys([])
    assert not any(bloom.may_contain(sequential_key(i)) for i in range(1000))


def test_hashes_do_not_depend_on_the_process_hash_seed() -> None:
    """The filter is stored on disk: its hashes must be the same in every process, unlike
    Python's `hash()` of bytes, which PYTHONHASHSEED randomizes."""
    keys = [sequential_key(i) for i in range(50)]
    code = (
        "from minikv_core.storage.bloom import key_hashes\n"
        f"print([key_hashes(k) for k in {keys!r}])\n"
    )
    outputs = set()
    for seed in ("1", "2"):
        result = subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
            env={"PYTHONHASHSEED": seed, "PATH": ""},
        )
        outputs.add(result.stdout.strip())
    assert outputs == {repr([key_hashes(k) for k in keys])}
