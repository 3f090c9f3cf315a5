"""An LRU cache of decoded data blocks, bounded in bytes, shareable by every engine of a node.

Why decoded blocks (not raw bytes): a cached block is (keys, kinds, data) (sstable_format.
DecodedBlock), so a hit is one C-speed `bisect` over the keys and one slice; a raw block would
be re-parsed on every hit. An entry is charged its bytes plus an estimate of the Python object
overhead of its keys, so the bound is on real memory, roughly.

Admission: a block enters the cache on its *second* miss within a recent window, as TinyLFU's
"doorkeeper". Why: a decoded block is ~20 objects, and evicting one frees objects allocated
long ago whose memory is cold. Under uniformly random gets over data much larger than the cache
(the engine benchmark: 1M keys, ~125 MB), admitting every miss made gets ~20% slower than no
cache at all, because almost every admission is evicted before its first hit. Blocks read twice
(what a skewed workload's hot set looks like) are admitted at once, and a one-off scan passes
through without flushing the hot set (scan resistance). The doorkeeper is a byte per slot
indexed by the block key, cleared after a window of first misses (aging), so it costs one
array read on a miss and needs no lock: a racy slot only admits a block a miss early or late.
On top, `_adapt_admission` throttles admissions that do not earn hits and puts a cache whose
hit ratio is too low to pay for its lookups to sleep (it samples 1 miss in 16) until a hot set
appears. Measured on 1M keys (17 B keys, 100 B values), 8 MiB cache: uniform random gets run
at the speed of no cache (within 5%); gets of a hot set of 1,000 keys run ~1.5x faster.

Concurrency: a hit takes no lock. `OrderedDict.get` and `move_to_end` are each atomic under the
GIL; a hit racing an eviction of the same key at worst skips the LRU touch. Admissions and
evictions, which must keep `size_bytes` consistent with the entries, hold a lock. The counters
are statistics and may lose an increment under contention.

Keys are ints from `new_table_base()`: a unique base per opened table plus the block number,
so two tables (or a table reopened after a snapshot install) never share an entry.
"""

from __future__ import annotations

import itertools
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from minikv_core.storage.lsm_limits import (
    LSM_BLOCK_CACHE_ADMISSION_WINDOW,
    LSM_BLOCK_CACHE_ADMIT_ONE_IN_MAX,
    LSM_BLOCK_CACHE_BLOCK_OVERHEAD_BYTES,
    LSM_BLOCK_CACHE_CHARGE_BYTES_ESTIMATE,
    LSM_BLOCK_CACHE_DOORKEEPER_WINDOW_MIN,
    LSM_BLOCK_CACHE_DORMANT_HIT_RATIO,
    LSM_BLOCK_CACHE_DORMANT_SAMPLE,
    LSM_BLOCK_CACHE_ENTRY_OVERHEAD_BYTES,
)
from minikv_core.storage.sstable_format import DecodedBlock

# A table's blocks are numbered below 2**32 (the index holds a u32 count).
_TABLE_KEY_SHIFT = 32
_table_ids = itertools.count(1)


def new_table_base() -> int:
    """A cache key base unique in this process; block i of the table is `base + i`."""
    return next(_table_ids) << _TABLE_KEY_SHIFT


def block_charge_bytes(block: DecodedBlock) -> int:
    """The memory an entry is charged: its bytes, per-key object overhead, a fixed cost."""
    return (
        len(block[2])
        + len(block[0]) * LSM_BLOCK_CACHE_ENTRY_OVERHEAD_BYTES
        + LSM_BLOCK_CACHE_BLOCK_OVERHEAD_BYTES
    )


@dataclass(frozen=True, slots=True)
class BlockCacheStats:
    capacity_bytes: int
    size_bytes: int
    blocks: int
    hits: int
    misses: int
    evictions: int
    rejections: int  # misses not admitted (first miss of a block within the window)

    @property
    def hit_ratio(self) -> float:
        lookups = self.hits + self.misses
        return self.hits / lookups if lookups else 0.0


class BlockCache:
    """LRU over decoded blocks with second-miss admission; `capacity_bytes == 0` disables it."""

    def __init__(self, capacity_bytes: int) -> None:
        if capacity_bytes < 0:
            raise ValueError(f"block cache capacity must be >= 0 bytes, got {capacity_bytes}")
        self.capacity_bytes = capacity_bytes
        self._entries: OrderedDict[int, tuple[DecodedBlock, int]] = OrderedDict()
        self._lock = threading.Lock()
        self._size_bytes = 0
        # The window is about as many first misses as the cache holds blocks: a block missed
        # twice within it would likely have been hit had it been cached (its reuse distance is
        # shorter than an LRU residence). Four slots per marked block keep collisions rare; an
        # odd count makes `key % slots` mix the table id (the high bits) into the slot.
        blocks_held = capacity_bytes // LSM_BLOCK_CACHE_CHARGE_BYTES_ESTIMATE
        self._doorkeeper_window = max(LSM_BLOCK_CACHE_DOORKEEPER_WINDOW_MIN, blocks_held)
        self._doorkeeper_slots = 4 * self._doorkeeper_window | 1
        self._doorkeeper = bytearray(self._doorkeeper_slots)
        self._doorkeeper_marks = 0
        self._hits = 0
        self._misses = 0
        self._evictions = 0
        self._rejections = 0
        self._admissions = 0
        # Adaptive admission (_adapt_admission): of the candidates that pass the doorkeeper,
        # one in `_admit_one_in` is admitted; re-tuned every LSM_BLOCK_CACHE_ADMISSION_WINDOW
        # offers.
        self._admit_one_in = 1
        self._window_offers = 0
        self._window_candidates = 0
        # Misses the reader should not offer (sampling while dormant); racy by design.
        self.offer_skip = 0
        self._window_hits_start = 0
        self._window_misses_start = 0
        self._dormant = False
        self._window_admissions_start = 0
        self._window_evictions_start = 0
        # `peek(key)` is the entry (block, charge) or None, with no bookkeeping: the bound
        # `dict.get` itself, so the table reader's miss path costs one C call. After a hit
        # the reader calls `hit(key)`; after a miss, `offer(key, block)`.
        self.peek: Callable[[int], tuple[DecodedBlock, int] | None] = self._entries.get

    def lookup(self, key: int) -> DecodedBlock | None:
        entry = self.peek(key)
        if entry is None:
            return None
        self.hit(key)
        return entry[0]

    def hit(self, key: int) -> None:
        """Record a hit on `key` (found with `peek`): count it and make it most recent."""
        # Not contextlib.suppress: a try block costs nothing. A KeyError means another
        # thread evicted the key meanwhile: skip the LRU touch.
        try:  # noqa: SIM105
            self._entries.move_to_end(key)
        except KeyError:
            pass
        self._hits += 1

    def offer(self, key: int, block: DecodedBlock) -> None:
        """Called after `peek(key)` missed and the block was read: admit it on its second
        miss within the doorkeeper's window (subject to adaptive admission)."""
        self._misses += 1
        if not self.capacity_bytes:
            return
        if self._dormant:
            # Look at one miss in LSM_BLOCK_CACHE_DORMANT_SAMPLE only (the reader skips
            # `offer_skip` calls): still enough for a hot set to show and wake the cache up.
            self.offer_skip = LSM_BLOCK_CACHE_DORMANT_SAMPLE - 1
            self._misses += LSM_BLOCK_CACHE_DORMANT_SAMPLE - 1  # the misses it will not see
        self._window_offers += 1
        if self._window_offers >= LSM_BLOCK_CACHE_ADMISSION_WINDOW:
            self._adapt_admission()
        slot = key % self._doorkeeper_slots
        doorkeeper = self._doorkeeper
        if not doorkeeper[slot]:
            doorkeeper[slot] = 1
            self._rejections += 1
            self._doorkeeper_marks += 1
            if self._doorkeeper_marks >= self._doorkeeper_window:
                self._doorkeeper = bytearray(self._doorkeeper_slots)  # age out old marks
                self._doorkeeper_marks = 0
            return
        doorkeeper[slot] = 0
        self._window_candidates += 1
        if self._window_candidates % self._admit_one_in:
            self._rejections += 1
            return
        self._insert(key, block)

    def _adapt_admission(self) -> None:
        """Every window of offers, re-tune how much the cache admits, and whether it is worth
        its cost at all.

        Admission rate: once the cache is full every admission evicts a block, and an evicted
        block that was never hit cost more (insertion, cold deallocation) than it saved. If
        admitted blocks earned less than one hit each on average, halve the admission rate
        (down to 1 in LSM_BLOCK_CACHE_ADMIT_ONE_IN_MAX); otherwise double it.

        Dormancy: every get that misses pays a lookup and an offer (~0.3 us) while a hit saves
        the read and decode of a block (~2 us), so below a ~10% hit ratio (uniform gets over
        data much larger than the cache: 1M keys and 8 MiB measured 4%) the cache costs more
        than it saves. Then it goes dormant: the reader offers it one miss in
        LSM_BLOCK_CACHE_DORMANT_SAMPLE. It wakes when the hit ratio recovers, or when a quarter
        of the sampled misses pass the doorkeeper (blocks missed twice in a short window: a
        hot set that the cache should hold).
        """
        hits = self._hits - self._window_hits_start
        misses = self._misses - self._window_misses_start
        admissions = self._admissions - self._window_admissions_start
        evictions = self._evictions - self._window_evictions_start
        paying = hits >= LSM_BLOCK_CACHE_DORMANT_HIT_RATIO * (hits + misses)
        if self._dormant:
            if paying or 4 * self._window_candidates >= self._window_offers:
                self._dormant = False
                self._admit_one_in = 1
                self.offer_skip = 0
        elif evictions and not paying:
            self._dormant = True
        if evictions and hits < admissions:
            self._admit_one_in = min(LSM_BLOCK_CACHE_ADMIT_ONE_IN_MAX, 2 * self._admit_one_in)
        else:
            self._admit_one_in = max(1, self._admit_one_in // 2)
        self._window_offers = 0
        self._window_candidates = 0
        self._window_hits_start = self._hits
        self._window_misses_start = self._misses
        self._window_admissions_start = self._admissions
        self._window_evictions_start = self._evictions

    def _insert(self, key: int, block: DecodedBlock) -> None:
        charge = block_charge_bytes(block)
        if charge > self.capacity_bytes:
            return  # would evict everything and still not fit
        with self._lock:
            previous = self._entries.pop(key, None)
            if previous is not None:
                self._size_bytes -= previous[1]
            self._entries[key] = (block, charge)
            self._size_bytes += charge
            self._admissions += 1
            while self._size_bytes > self.capacity_bytes:
                _, (_, evicted_charge) = self._entries.popitem(last=False)
                self._size_bytes -= evicted_charge
                self._evictions += 1
            assert 0 <= self._size_bytes <= self.capacity_bytes

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._size_bytes = 0
            self._doorkeeper = bytearray(self._doorkeeper_slots)
            self._doorkeeper_marks = 0

    def stats(self) -> BlockCacheStats:
        with self._lock:
            return BlockCacheStats(
                capacity_bytes=self.capacity_bytes,
                size_bytes=self._size_bytes,
                blocks=len(self._entries),
                hits=self._hits,
                misses=self._misses,
                evictions=self._evictions,
                rejections=self._rejections,
            )
