"""Every limit of the storage layer in one place, with the relations between them asserted.

Why one module: a limit that lives next to the code using it is changed without anyone
noticing what else relied on it (TigerBeetle's `constants.zig`). Each section belongs to one
component; the asserts at the end of a section check the relations that component relies on,
at import time, so a bad edit fails the first test run rather than a production node.

Names carry their unit last, before any qualifier (`..._BYTES_MAX`, `..._BYTES_DEFAULT`).
"""

from __future__ import annotations

KIB = 1024
MIB = 1024 * KIB
GIB = 1024 * MIB

# =============================================================================================
# WAL (minikv_core.storage.wal, wal_format)
# =============================================================================================

# A segment file is preallocated to this size and sealed when the next batch would not fit.
# 64 MiB, as etcd: large enough that rotation (seal fsync + directory fsync) is rare, small
# enough that `truncate_before` releases space in useful steps.
WAL_SEGMENT_SIZE_BYTES_DEFAULT = 64 * MIB
# Small segments exist for tests (rotation every few records); below this the fixed costs of a
# segment (header, two fsyncs at rotation) dominate.
WAL_SEGMENT_SIZE_BYTES_MIN = 4 * KIB
# Bigger segments only delay truncation; below this an offset inside a segment fits in a u32.
WAL_SEGMENT_SIZE_BYTES_MAX = 1 * GIB

# The largest payload of one record. A record never spans segments, so it must fit in one
# (asserted below for the default size; for a configured size the Wal checks on open).
WAL_RECORD_PAYLOAD_BYTES_MAX = 16 * MIB

# An upper bound on the segment header plus one frame header. wal_format asserts that its real
# header sizes stay below this, so the relation below covers the actual format.
WAL_FRAMING_BYTES_MAX = 64

# Group commit gathers waiting async appends into one write + one fdatasync until this many
# bytes. One caller's batch is never split (it is written alone if it is larger), so this
# bounds latency added to the first waiter, not the largest batch.
WAL_GROUP_COMMIT_BYTES_MAX = 4 * MIB

# The bounded queue of async appends waiting for their group commit. A producer past the bound
# waits for a slot (back-pressure) instead of growing memory without limit.
WAL_PENDING_APPENDS_MAX = 4096

# Reads (recovery scans, `read`, verify) fetch the file in chunks of this size.
WAL_READ_CHUNK_BYTES = 1 * MIB

# Zero-filling a preallocated segment writes zeros in chunks of this size.
WAL_ZERO_FILL_CHUNK_BYTES = 1 * MIB

assert WAL_SEGMENT_SIZE_BYTES_MIN <= WAL_SEGMENT_SIZE_BYTES_DEFAULT <= WAL_SEGMENT_SIZE_BYTES_MAX
assert WAL_SEGMENT_SIZE_BYTES_MAX < 2**32, "an offset inside a segment must fit in a u32"
assert WAL_RECORD_PAYLOAD_BYTES_MAX < 2**32, "the frame length field is a u32"
# The largest record fits in a default segment, with its framing: otherwise an append allowed
# by the record limit could never be written.
assert WAL_RECORD_PAYLOAD_BYTES_MAX + WAL_FRAMING_BYTES_MAX <= WAL_SEGMENT_SIZE_BYTES_DEFAULT
assert WAL_FRAMING_BYTES_MAX < WAL_SEGMENT_SIZE_BYTES_MIN
assert WAL_GROUP_COMMIT_BYTES_MAX <= WAL_SEGMENT_SIZE_BYTES_DEFAULT
assert WAL_PENDING_APPENDS_MAX > 0
assert WAL_READ_CHUNK_BYTES >= WAL_FRAMING_BYTES_MAX
assert WAL_ZERO_FILL_CHUNK_BYTES > 0
