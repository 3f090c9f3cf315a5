"""The block cache: byte bound, LRU order, second-miss admission."""

from __future__ import annotations

import random

from minikv_core.storage.block_cache import BlockCache, block_charge_bytes, new_table_base
from minikv_core.storage.lsm_limits import (
    LSM_BLOCK_CACHE_BLOCK_OVERHEAD_BYTES,
    LSM_BLOCK_CACHE_ENTRY_OVERHEAD_BYTES,
)
from minikv_core.storage.sstable_format import DecodedBlock

BLOCK: DecodedBlock = ((b"a", b"b"), None, b"x" * 1000)
SEED = 3
CHARGE = 1000 + 2 * LSM_BLOCK_CACHE_ENTRY_OVERHEAD_BYTES + LSM_BLOCK_CACHE_BLOCK_OVERHEAD_BYTES


def admitted(cache: BlockCache, key: int, block: DecodedBlock = BLOCK) -> None:
    """Offer a block twice: the second miss admits it."""
    cache.offer(key, block)
    cache.offer(key, block)


def test_first_miss_is_not_admitted_second_is() -> None:
    cache = BlockCache(10 * CHARGE)
    assert cache.lookup(1) is None
    cache.offer(1, BLOCK)
    assert cache.lookup(1) is None
    cache.offer(1, BLOCK)
    assert cache.lookup(1) == BLOCK
    stats = cache.stats()
    assert (stats.hits, stats.misses, stats.rejections, stats.blocks) == (1, 2, 1, 1)


def test_size_never_exceeds_capacity_and_least_recent_goes_first() -> None:
    cache = BlockCache(3 * CHARGE)
    for key in (1, 2, 3):
        admitted(cache, key)
    assert cache.lookup(1) == BLOCK  # 1 becomes the most recently used
    admitted(cache, 4)
    assert cache.lookup(2) is None  # the least recently used was evicted
    assert all(cache.lookup(key) == BLOCK for key in (1, 3, 4))
    stats = cache.stats()
    assert stats.size_bytes == 3 * CHARGE <= stats.capacity_bytes
    assert stats.evictions == 1


def test_zero_capacity_caches_nothing() -> None:
    cache = BlockCache(0)
    admitted(cache, 1)
    assert cache.lookup(1) is None
    assert cache.stats().size_bytes == 0


def test_block_larger_than_the_cache_is_not_kept() -> None:
    cache = BlockCache(CHARGE - 1)
    admitted(cache, 1)
    assert cache.lookup(1) is None


def test_one_off_scan_does_not_evict_the_hot_set() -> None:
    cache = BlockCache(4 * CHARGE)
    for key in (1, 2):
        admitted(cache, key)
    for key in range(100, 200):  # each block read once, as a scan does
        cache.offer(key, BLOCK)
    assert cache.lookup(1) == BLOCK and cache.lookup(2) == BLOCK


def test_table_bases_never_collide() -> None:
    first, second = new_table_base(), new_table_base()
    assert second - first >= 1 << 32
    assert block_charge_bytes(BLOCK) == CHARGE


def test_clear_empties_the_cache() -> None:
    cache = BlockCache(4 * CHARGE)
    admitted(cache, 1)
    cache.clear()
    assert cache.lookup(1) is None and cache.stats().size_bytes == 0


def replay(cache: BlockCache, keys: list[int]) -> None:
    """What a table reader does: look up; on a miss offer the block it read, unless the cache
    asked to skip this miss (dormant sampling)."""
    for key in keys:
        if cache.lookup(key) is None:
            if cache.offer_skip:
                cache.offer_skip -= 1
            else:
                cache.offer(key, BLOCK)


def test_uniform_access_over_much_more_data_than_fits_makes_the_cache_dormant() -> None:
    """Admitting every second miss would evict ~one block per admission and almost none of
    them would be hit; the cache throttles admission, then stops looking at most misses."""
    rng = random.Random(SEED)
    cache = BlockCache(100 * CHARGE)  # holds 100 of 2,000 blocks: a ~5% hit ratio at best
    replay(cache, [rng.randrange(2000) for _ in range(200_000)])
    stats = cache.stats()
    assert stats.hit_ratio < 0.08, f"seed {SEED}: {stats}"
    assert stats.evictions < 0.02 * stats.misses, f"seed {SEED}: {stats}"
    assert cache.offer_skip > 0, "dormant: the next misses are not offered"


def test_dormant_cache_wakes_up_for_a_hot_set() -> None:
    rng = random.Random(SEED)
    cache = BlockCache(100 * CHARGE)
    replay(cache, [rng.randrange(2000) for _ in range(200_000)])  # dormant, as above
    assert cache.offer_skip > 0
    replay(cache, [rng.randrange(50) for _ in range(200_000)])  # 50 hot blocks now
    hits_before = cache.stats().hits
    replay(cache, [rng.randrange(50) for _ in range(10_000)])
    assert cache.stats().hits - hits_before > 9_000, f"seed {SEED}: {cache.stats()}"


def test_skewed_access_keeps_the_hot_set_cached() -> None:
    rng = random.Random(SEED)
    cache = BlockCache(100 * CHARGE)
    keys = [
        rng.randrange(50) if rng.random() < 0.9 else rng.randrange(50, 100_000)
        for _ in range(50_000)
    ]
    replay(cache, keys)
    stats = cache.stats()
    assert stats.hit_ratio > 0.8, f"seed {SEED}: {stats}"
    assert all(cache.lookup(key) is not None for key in range(50))
