"""Every limit of the cluster layer in one place, with the relations between them asserted.

Why one module: a limit that lives next to the code using it gets changed without anyone
noticing what else relied on it (TigerBeetle's `constants.zig`). The cluster layer sits on top
of the WAL, the LSM engine and the Raft core, so most of its limits are *derived* from theirs;
the asserts at the end of each section check those relations at import time, so a bad edit
fails the first test run rather than a production node.

Names carry their unit last, before any qualifier (`..._BYTES_MAX`).
"""

from __future__ import annotations

from minikv_core.raft import limits as raft_limits
from minikv_core.storage import limits as wal_limits
from minikv_core.storage import lsm_limits
from minikv_core.storage.wal_records import RAFT_ENTRY_HEADER_BYTES

KIB = 1024
MIB = 1024 * KIB

# =============================================================================================
# Shard state machine values (state_machine.py)
# =============================================================================================

# A stored value is `version u64 | client value`: the version prefix costs this many bytes of
# the engine's value budget.
STORED_VERSION_BYTES = 8

# =============================================================================================
# Commands (commands.py): what one Raft entry of a shard group carries
# =============================================================================================

# Keys: exactly the engine's bounds (a command key is stored as is).
COMMAND_KEY_SIZE_BYTES_MIN = lsm_limits.LSM_KEY_SIZE_BYTES_MIN
COMMAND_KEY_SIZE_BYTES_MAX = lsm_limits.LSM_KEY_SIZE_BYTES_MAX
# Client values: the engine's bound minus the version prefix the state machine adds.
COMMAND_VALUE_SIZE_BYTES_MAX = lsm_limits.LSM_VALUE_SIZE_BYTES_MAX - STORED_VERSION_BYTES

# Client writes to one shard batched into one entry. Each becomes one engine op of the same
# atomic `Engine.apply`, which bounds how long the engine's write lock is held.
COMMAND_BATCH_COMMANDS_MAX = 4096

# The encoded size of one entry's command (`encode()` refuses more). One entry is one WAL
# record (RAFT_ENTRY header + data), and the Raft leader refuses proposals past
# UNCOMMITTED_BYTES_MAX, so one command must fit both with room to spare.
COMMAND_BYTES_MAX = 12 * MIB

# Fixed bytes around one put in the encoding (format byte, kind, request id, lengths):
# generous upper bound, checked against the real struct sizes in commands.py.
COMMAND_PUT_OVERHEAD_BYTES_MAX = 64

assert STORED_VERSION_BYTES == 8, "the version is a u64"
assert COMMAND_VALUE_SIZE_BYTES_MAX > 0
assert COMMAND_KEY_SIZE_BYTES_MIN >= 1, "the empty key is refused by the engine"
assert 0 < COMMAND_BATCH_COMMANDS_MAX <= lsm_limits.LSM_BATCH_OPS_MAX, (
    "a batch is applied as one Engine.apply, which refuses more ops than LSM_BATCH_OPS_MAX"
)
# The largest single put (max key, max value, framing) must be proposable on its own.
assert (
    COMMAND_KEY_SIZE_BYTES_MAX + COMMAND_VALUE_SIZE_BYTES_MAX + COMMAND_PUT_OVERHEAD_BYTES_MAX
    <= COMMAND_BYTES_MAX
)
# An entry carrying the largest command fits one WAL record (entries never span records).
assert COMMAND_BYTES_MAX + RAFT_ENTRY_HEADER_BYTES <= wal_limits.WAL_RECORD_PAYLOAD_BYTES_MAX
# And the leader's uncommitted-bytes guard leaves room for at least a few such entries.
assert 4 * COMMAND_BYTES_MAX <= raft_limits.UNCOMMITTED_BYTES_MAX

# =============================================================================================
# The node's Raft log (raft_log.py)
# =============================================================================================

# Group ids are the RAFT_* records' u32 field.
RAFT_GROUP_ID_MAX = 2**32 - 1

# Latest hard states and snapshot marks re-appended by `truncate()` are written in batches of
# at most this many bytes (a node with thousands of groups must not build one batch larger
# than a small test segment).
RAFT_LOG_REAPPEND_BATCH_BYTES_MAX = 64 * KIB

assert RAFT_GROUP_ID_MAX == 2**32 - 1, "RaftEntry/RaftHardState/RaftSnapshotMark use a u32"
# A re-append batch fits a default segment with its framing (for smaller configured segments
# raft_log uses min(this, half a segment)).
assert (
    RAFT_LOG_REAPPEND_BATCH_BYTES_MAX + wal_limits.WAL_FRAMING_BYTES_MAX
    <= wal_limits.WAL_SEGMENT_SIZE_BYTES_DEFAULT
)
