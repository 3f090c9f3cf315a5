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

# =============================================================================================
# Transactions (txn*.py): one transaction's size, its locks' lifetime, a shard's lock table
# =============================================================================================

# Operations of one transaction: compares + success ops + failure ops together. Every op of a
# shard's part is evaluated inside one apply (the engine's write lock is held meanwhile), and
# every key locked is one entry of the shard's in-memory lock table.
TXN_OPS_MAX = 128

# Key and value bytes of one transaction, all ops and compares together. A shard's part of a
# transaction is ONE Raft entry (one-phase, or a prepare staging both branches), so the whole
# of it must fit one entry with its framing, and well under the 1 MiB a node proposes
# (net/limits.py ENTRY_DATA_BYTES_MAX asserts the relation, since cluster cannot import net).
TXN_BYTES_MAX = 512 * KIB

# Fixed bytes around one op or compare in a transaction command (kind, lengths, version,
# op index): generous upper bound, checked against the real struct sizes in txn_codec.py.
TXN_OP_OVERHEAD_BYTES_MAX = 32

# Fixed bytes of a transaction command besides its ops (format, kind, request id, txn id,
# home shard, expiry, counts): generous upper bound, checked in txn_codec.py.
TXN_COMMAND_HEADER_BYTES_MAX = 128

# The largest encoded transaction command (every op of the transaction on one shard).
TXN_COMMAND_BYTES_MAX = (
    TXN_COMMAND_HEADER_BYTES_MAX + TXN_OPS_MAX * TXN_OP_OVERHEAD_BYTES_MAX + TXN_BYTES_MAX
)

# How long a prepared transaction's intents may block others before anyone who meets them may
# resolve them from the transaction record (proposing an abort when it is undecided). A live
# coordinator normally decides within a few Raft rounds; one that is slower past this is
# aborted by the first resolver, which is safe (the first decision wins) but costs a retry.
TXN_INTENT_TTL_MS = 2_000

# Prepared transactions one shard holds at once. Past it, a prepare is refused like a conflict
# (retryable): bounds the lock table's memory and the intent records scanned at start.
TXN_INTENTS_PER_SHARD_MAX = 10_000

# A transaction id: 16 random bytes chosen by the coordinator (collision odds negligible).
TXN_ID_BYTES = 16
TXN_FORGET_BATCH_MAX = 1024
"""Transaction records one FORGET entry deletes at most (16 KiB of ids)."""
TXN_RESOLVE_BATCH_MAX = 1024
"""Intents one RESOLVE_MANY entry resolves at most (17 bytes each: id and decision)."""

NODE_ID_MAX = (1 << 20) - 1
"""Node ids are 1..NODE_ID_MAX: a command's request id carries its proposer's node id in its
top 20 bits (node_service.py), which makes ids unique across nodes."""
REQUEST_ID_NODE_SHIFT = 44

assert NODE_ID_MAX < 1 << (64 - REQUEST_ID_NODE_SHIFT), "request ids are u64"
assert TXN_OPS_MAX >= 2, "a transaction moves at least two keys"
assert TXN_BYTES_MAX >= COMMAND_KEY_SIZE_BYTES_MAX, "at least one maximal key fits"
assert TXN_COMMAND_BYTES_MAX <= COMMAND_BYTES_MAX
assert 1 + 4 + TXN_FORGET_BATCH_MAX * TXN_ID_BYTES <= TXN_COMMAND_BYTES_MAX
assert 1 + 4 + TXN_RESOLVE_BATCH_MAX * (TXN_ID_BYTES + 1) <= TXN_COMMAND_BYTES_MAX
# A prepare's intent record (both branches staged) is one engine value.
assert TXN_COMMAND_BYTES_MAX + STORED_VERSION_BYTES <= lsm_limits.LSM_VALUE_SIZE_BYTES_MAX
assert TXN_OPS_MAX <= COMMAND_BATCH_COMMANDS_MAX, "a part's writes are one engine batch"
assert TXN_INTENT_TTL_MS > 0
assert TXN_INTENTS_PER_SHARD_MAX > 0

# =============================================================================================
# Client sessions (sessions.py): what a shard remembers so that a retried write applies once
# =============================================================================================

# A client id: 16 random bytes chosen by the client (collision odds negligible).
SESSION_CLIENT_ID_BYTES = 16

# Client sessions one shard remembers. Past it, the session touched longest ago (by log index,
# then client id: the same choice on every replica) is forgotten; a retry of that client's
# write is then refused as of unknown outcome, never applied a second time.
SESSIONS_PER_SHARD_MAX = 1024

# Applied writes one session remembers, i.e. writes of one client that may still be retried
# (the client's writes in flight to that shard). Past it, the oldest are forgotten and the
# session's acknowledged mark moves above them (their retries are refused, not re-applied).
# With SESSIONS_PER_SHARD_MAX it bounds a shard's table: 256 Ki results (~25 MiB of Python
# objects) at worst, when every session holds a write that never finishes; a client with a
# few dozen writes in flight keeps a few dozen.
SESSION_RESULTS_MAX = 256

# Fixed bytes a session adds to a put or delete in a command (client id, seq, acked, flags).
COMMAND_SESSION_BYTES = SESSION_CLIENT_ID_BYTES + 8 + 8 + 1

assert SESSION_CLIENT_ID_BYTES == 16
assert SESSIONS_PER_SHARD_MAX > 0 and SESSION_RESULTS_MAX > 0
# One entry's engine batch: its writes, one session record per client and as many evictions.
assert 3 * COMMAND_BATCH_COMMANDS_MAX <= lsm_limits.LSM_BATCH_OPS_MAX
# A session record (acked, last index, count, then a seq and a result code per result) is one
# engine value.
assert 8 + 8 + 4 + SESSION_RESULTS_MAX * 16 <= lsm_limits.LSM_VALUE_SIZE_BYTES_MAX
