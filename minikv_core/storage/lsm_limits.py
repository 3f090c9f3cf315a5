"""Every limit of the LSM engine in one place, with the relations between them asserted.

Why one module: a limit that lives next to the code using it is changed without anyone
noticing what else relied on it (TigerBeetle's `constants.zig`). The asserts at the end of each
section check, at import time, the relations the engine relies on, so a bad edit fails the
first test run rather than a production node. The WAL's limits live in `limits.py`; the one
relation that crosses the two (a single put must fit one WAL record) is asserted here.

Names carry their unit last, before any qualifier (`..._BYTES_MAX`, `..._BYTES_DEFAULT`).
"""

from __future__ import annotations

from minikv_core.storage import limits as wal_limits

KIB = 1024
MIB = 1024 * KIB
GIB = 1024 * MIB

# =============================================================================================
# Keys and values (memtable.validate_key / validate_value)
# =============================================================================================

# Keys are 1..4 KiB. Empty keys are refused (they would be the only key no `start` bound can
# exclude, and no client has a use for them); 4 KiB covers composite keys with room to spare
# while keeping a block index entry small.
LSM_KEY_SIZE_BYTES_MIN = 1
LSM_KEY_SIZE_BYTES_MAX = 4 * KIB

# One value is at most 8 MiB: a put travels in one Raft entry, i.e. one WAL record, so the
# value plus its key and framing must fit `WAL_RECORD_PAYLOAD_BYTES_MAX` (asserted below).
LSM_VALUE_SIZE_BYTES_MAX = 8 * MIB

# One `Engine.apply` batch holds at most this many ops: a batch is validated and inserted under
# the engine's write lock, so its length bounds how long readers of the memtable can wait.
LSM_BATCH_OPS_MAX = 65_536

# Bytes charged to the memtable per entry on top of its key and value: the dict slot, the
# sorted-list slot and two object headers. Only used to decide when to flush.
LSM_MEMTABLE_ENTRY_OVERHEAD_BYTES = 64

assert LSM_KEY_SIZE_BYTES_MIN == 1, "the empty key is refused; see above"
assert LSM_KEY_SIZE_BYTES_MAX >= 1 * KIB, "the issue asks for keys of at least 1 KiB"
assert LSM_VALUE_SIZE_BYTES_MAX >= LSM_KEY_SIZE_BYTES_MAX
# A single put (key + value + Raft/WAL framing, bounded by 64 KiB) fits one WAL record.
assert (
    LSM_KEY_SIZE_BYTES_MAX + LSM_VALUE_SIZE_BYTES_MAX + 64 * KIB
    <= wal_limits.WAL_RECORD_PAYLOAD_BYTES_MAX
)
assert LSM_BATCH_OPS_MAX > 0

# =============================================================================================
# SSTable layout (sstable_format, sstable)
# =============================================================================================

# A data block is closed once its encoded entries reach this size. A point get that misses the
# block cache reads and decodes one whole block, and decoding costs per key, so smaller blocks
# make gets cheaper until the index grows. Measured (1M keys of 17 B, 100 B values, uniform
# random gets, this engine in CPython 3.11): 2 KiB blocks (~16 entries) gave +15% gets/s over
# 4 KiB, and 1 KiB no more. Reads come from the OS page cache, so the disk's 4 KiB sector
# does not matter here.
LSM_BLOCK_SIZE_BYTES_TARGET = 2 * KIB
# Tests use tiny blocks to get many blocks from few keys; below this the per-block header and
# CRC dominate.
LSM_BLOCK_SIZE_BYTES_MIN = 64

# Bloom filter: 12 bits per key, 5 probe bits inside one 64-bit word (a blocked filter), which
# measures ~1.0% false positives (tests/storage/test_bloom.py holds it to <= 1.5%).
LSM_BLOOM_BITS_PER_KEY = 12
LSM_BLOOM_PROBES = 5
LSM_BLOOM_WORD_BITS = 64

# In-block offsets are u32, so the largest entry of a block (a block holds at least one entry,
# however large) must fit below 4 GiB together with the block header.
LSM_BLOCK_PAYLOAD_BYTES_MAX = LSM_KEY_SIZE_BYTES_MAX + LSM_VALUE_SIZE_BYTES_MAX + 64 * KIB

assert LSM_BLOCK_SIZE_BYTES_MIN <= LSM_BLOCK_SIZE_BYTES_TARGET
assert LSM_BLOCK_PAYLOAD_BYTES_MAX < 2**32, "in-block offsets are u32"
assert LSM_BLOCK_SIZE_BYTES_TARGET < LSM_BLOCK_PAYLOAD_BYTES_MAX
# The 5 probe positions are 6-bit slices of one 32-bit hash: 5 * 6 = 30 <= 32 bits.
assert LSM_BLOOM_PROBES * (LSM_BLOOM_WORD_BITS.bit_length() - 1) <= 32
assert LSM_BLOOM_BITS_PER_KEY >= LSM_BLOOM_PROBES, "fewer bits than probes saturates the filter"

# =============================================================================================
# Memtable, flush and compaction (engine, compaction)
# =============================================================================================

# The memtable becomes immutable and is flushed once its charged size reaches this.
LSM_MEMTABLE_SIZE_BYTES_DEFAULT = 4 * MIB
# Tests flush after a handful of entries.
LSM_MEMTABLE_SIZE_BYTES_MIN = 1 * KIB
# The bounded queue of immutable memtables waiting for the flush thread. When it is full,
# `apply` waits for a flush (write stall) instead of growing memory without limit.
LSM_IMMUTABLE_MEMTABLES_MAX = 2

# Compaction writes tables of about this size (a run is split at key boundaries), so snapshot
# transfer, deletion and reopen work in steps of bounded size.
LSM_TABLE_SIZE_BYTES_TARGET_DEFAULT = 8 * MIB

# Size-tiered compaction: runs whose size falls in the same tier (a factor of
# LSM_TIER_FANOUT apart) merge once LSM_TIER_FANOUT adjacent runs of that tier exist.
LSM_TIER_FANOUT = 4
# Past this many sorted runs, a merge of the cheapest adjacent window is forced even if no tier
# is full; past LSM_RUNS_STALL the flush thread waits for compaction (write stall), bounding
# how many tables a point get may have to probe. Each run a get passes costs ~0.2 us (a range
# check and a filter word): 6 rather than 3 runs per tier keeps a 1M-key shard at 3-4 runs.
LSM_RUNS_FORCE_MERGE = 6
LSM_RUNS_STALL = 16
# Merges of at least this many input bytes run in a worker process (compaction.py); smaller
# ones cost less than starting an interpreter (~0.2 s) and run in the engine's thread.
LSM_COMPACTION_PROCESS_MIN_BYTES_DEFAULT = 4 * MIB
# Background merges that may run at once (on disjoint runs): one can merge fresh flushes while
# another runs a big merge. Each has its own thread and, when needed, its own worker process.
LSM_COMPACTION_THREADS = 2
# Worker processes a process (a node) runs at once, shared by all its engines: two, for a
# laptop's cores shared with the node's own threads and the other nodes of a demo cluster.
LSM_COMPACTION_WORKERS_MAX = 2
# A running compaction checks for `close()` every this many output entries.
LSM_COMPACTION_CANCEL_CHECK_ENTRIES = 4096

assert LSM_MEMTABLE_SIZE_BYTES_MIN >= LSM_BLOCK_SIZE_BYTES_MIN
assert LSM_MEMTABLE_SIZE_BYTES_MIN <= LSM_MEMTABLE_SIZE_BYTES_DEFAULT
assert LSM_IMMUTABLE_MEMTABLES_MAX >= 1
assert LSM_TABLE_SIZE_BYTES_TARGET_DEFAULT >= LSM_BLOCK_SIZE_BYTES_TARGET
assert LSM_TIER_FANOUT >= 2
assert LSM_TIER_FANOUT <= LSM_RUNS_FORCE_MERGE < LSM_RUNS_STALL
assert LSM_COMPACTION_CANCEL_CHECK_ENTRIES > 0
assert LSM_COMPACTION_THREADS >= 1
assert LSM_COMPACTION_WORKERS_MAX >= 1

# =============================================================================================
# Block cache and manifest (block_cache, manifest)
# =============================================================================================

# The default cache of one engine. A node with many shards should pass one shared `BlockCache`
# to all its engines (EngineOptions.block_cache) so the bound is per node. Small by default:
# the OS page cache already holds the table files, so the block cache only saves the decode of
# hot blocks; under uniform random gets over data much larger than it, any size measured
# slightly slower than none (block_cache.py), and 8 MiB keeps 8 shards of a node at 64 MiB.
LSM_BLOCK_CACHE_BYTES_DEFAULT = 8 * MIB
# The cache charges each decoded block its payload plus this much per entry (the list slot,
# the key object's header, the value offset int) and a fixed cost per block.
LSM_BLOCK_CACHE_ENTRY_OVERHEAD_BYTES = 80
LSM_BLOCK_CACHE_BLOCK_OVERHEAD_BYTES = 256
# The typical charge of a cached 2 KiB block (~16 keys of 17 B): sizes the doorkeeper.
LSM_BLOCK_CACHE_CHARGE_BYTES_ESTIMATE = 3 * KIB + 512
# The admission doorkeeper remembers first misses for a window of about as many misses as the
# cache holds blocks, and at least this many.
LSM_BLOCK_CACHE_DOORKEEPER_WINDOW_MIN = 256
# Adaptive admission: re-tuned every this many admission candidates; at its most selective
# the cache admits one candidate in LSM_BLOCK_CACHE_ADMIT_ONE_IN_MAX.
LSM_BLOCK_CACHE_ADMISSION_WINDOW = 1024
LSM_BLOCK_CACHE_ADMIT_ONE_IN_MAX = 64
# Below this hit ratio a full cache costs more than it saves and goes dormant, looking at one
# miss in LSM_BLOCK_CACHE_DORMANT_SAMPLE (block_cache.BlockCache._adapt_admission).
LSM_BLOCK_CACHE_DORMANT_HIT_RATIO = 0.1
LSM_BLOCK_CACHE_DORMANT_SAMPLE = 16

# A manifest lists every live table with its key range; its size is bounded by the number of
# tables times two keys. Reading refuses anything larger (a corrupt length field).
LSM_MANIFEST_SIZE_BYTES_MAX = 256 * MIB

assert LSM_BLOCK_CACHE_BYTES_DEFAULT >= 16 * LSM_BLOCK_SIZE_BYTES_TARGET
assert LSM_BLOCK_CACHE_DOORKEEPER_WINDOW_MIN > 0
assert LSM_BLOCK_CACHE_ADMISSION_WINDOW > 0 and LSM_BLOCK_CACHE_ADMIT_ONE_IN_MAX >= 1
assert LSM_BLOCK_CACHE_DORMANT_SAMPLE >= 1
assert 0 < LSM_BLOCK_CACHE_DORMANT_HIT_RATIO < 1
assert LSM_BLOCK_CACHE_CHARGE_BYTES_ESTIMATE >= LSM_BLOCK_SIZE_BYTES_TARGET
assert LSM_MANIFEST_SIZE_BYTES_MAX < 2**32
