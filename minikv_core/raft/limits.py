"""Every bound of the Raft core in one place, with the relations between them asserted.

Times are in ticks (the host decides how long a tick is; minikv uses 100 ms). Sizes are bytes
of entry payload (`Entry.data`), the part that grows with load; framing overhead is per entry
and bounded by the entry-count limits.
"""

from __future__ import annotations

HEARTBEAT_INTERVAL_TICKS = 1
ELECTION_TIMEOUT_TICKS = 10
"""Base election timeout; followers draw from [ELECTION, 2*ELECTION) (Raft §5.2)."""
LEASE_TICKS = 8
"""Leader lease for LEASE_BASED reads; strictly below the election timeout (thesis §6.4.1)
so a clock running up to 20% fast on the leader still expires its lease before any follower
can vote for a new leader."""

ENTRIES_PER_MESSAGE_MAX = 4096
"""Entries in one AppendEntries message (batching, bounds a message's decode cost)."""
MESSAGE_BYTES_MAX = 1 << 20
"""Payload bytes in one AppendEntries message (at least one entry is always sent)."""
INFLIGHT_MESSAGES_MAX = 256
"""AppendEntries messages in flight to one follower in REPLICATE state (pipelining)."""

SNAPSHOT_CHUNK_BYTES_MAX = 1 << 20
"""Bytes of snapshot data in one InstallSnapshot chunk."""
SNAPSHOT_CHUNKS_IN_FLIGHT_MAX = 4
"""Unacknowledged snapshot chunks to one follower."""

UNCOMMITTED_BYTES_MAX = 64 << 20
"""A leader refuses proposals while this much payload is appended but uncommitted, so a
partitioned leader cannot grow its log without bound (etcd MaxUncommittedEntriesSize)."""
COMMITTED_BYTES_PER_READY_MAX = 64 << 20
"""Payload bytes of committed entries handed out in one Ready (at least one entry)."""
PENDING_READ_INDEX_MAX = 4096
"""Read-index requests waiting for a heartbeat round, or for a new leader's first commit."""
OUTBOX_MESSAGES_MAX = 65536
"""Messages queued for the next Ready. Beyond it messages are dropped (Raft tolerates loss;
the heartbeat and probe paths resend), so a host that stops calling ready() cannot make the
core grow without bound."""

assert 0 < HEARTBEAT_INTERVAL_TICKS < ELECTION_TIMEOUT_TICKS
assert 0 < LEASE_TICKS < ELECTION_TIMEOUT_TICKS
assert ENTRIES_PER_MESSAGE_MAX >= 1
assert MESSAGE_BYTES_MAX >= 1
assert INFLIGHT_MESSAGES_MAX >= 1
assert SNAPSHOT_CHUNK_BYTES_MAX >= 1
assert SNAPSHOT_CHUNKS_IN_FLIGHT_MAX >= 1
assert UNCOMMITTED_BYTES_MAX >= MESSAGE_BYTES_MAX
assert COMMITTED_BYTES_PER_READY_MAX >= MESSAGE_BYTES_MAX
assert OUTBOX_MESSAGES_MAX >= INFLIGHT_MESSAGES_MAX * 4
assert PENDING_READ_INDEX_MAX >= 1
