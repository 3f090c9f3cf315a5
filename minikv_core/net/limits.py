"""Every bound of the network layer in one place, with its relations to the Raft core asserted.

The peer transport moves Raft messages that the core already bounds (minikv_core/raft/limits.py:
entry payload per AppendEntries, snapshot chunk size). This module turns those payload bounds
into wire bounds (bytes of one encoded group message, of one frame, of one gRPC message) and
asserts at import that every message the core can produce fits in a frame, and every frame in
a gRPC message, so a legal message is never refused by the transport for its size.

Names carry their unit last (`..._BYTES_MAX`, `..._MS`).
"""

from __future__ import annotations

from minikv_core.cluster import limits as cluster_limits
from minikv_core.raft import limits as raft_limits

KIB = 1024
MIB = 1024 * KIB

# --- Proposals ------------------------------------------------------------------------------

ENTRY_DATA_BYTES_MAX = 1 * MIB
"""The largest `Entry.data` a node may propose. The core always sends at least one entry per
AppendEntries even when it is larger than MESSAGE_BYTES_MAX, so a bigger entry would make a
message the transport refuses as oversize (and the entry would never replicate). The client
APIs must refuse commands above this (RESOURCE_EXHAUSTED / HTTP 413) before proposing."""

# --- Wire framing of one message -------------------------------------------------------------

ENTRY_FRAMING_BYTES_MAX = 36
"""Protobuf bytes of one Entry inside a Message, besides its data: the entries tag and length
(1 + 5), term and index (2 x (1 + 10)), type (1 + 1), data tag and length (1 + 5). A test
encodes the worst case and checks it."""

MESSAGE_FRAMING_BYTES_MAX = 64 * KIB
"""Protobuf bytes of a GroupMessage besides entry payloads, entry framing and chunk data: the
group id and scalar fields (about 130 bytes), plus the read-index `context` and the snapshot
metadata's voter and learner lists, which the host keeps small (request ids, cluster members)."""

APPEND_MESSAGE_BYTES_MAX = (
    raft_limits.MESSAGE_BYTES_MAX
    + raft_limits.ENTRIES_PER_MESSAGE_MAX * ENTRY_FRAMING_BYTES_MAX
    + MESSAGE_FRAMING_BYTES_MAX
)
"""The largest encoded AppendEntries group message (entries within the core's bounds)."""

SNAPSHOT_MESSAGE_BYTES_MAX = raft_limits.SNAPSHOT_CHUNK_BYTES_MAX + MESSAGE_FRAMING_BYTES_MAX
"""The largest encoded InstallSnapshot chunk group message."""

GROUP_MESSAGE_BYTES_MAX = max(APPEND_MESSAGE_BYTES_MAX, SNAPSHOT_MESSAGE_BYTES_MAX)
"""An encoded GroupMessage above this is dropped at `send()` and counted as oversize."""

# --- Frames and gRPC -------------------------------------------------------------------------

FRAME_HEADER_BYTES_MAX = 32
"""RaftFrame bytes besides its group messages' own bytes, for a frame holding one message:
from_node and to_node (2 x (1 + 10)), the messages tag and length (1 + 5)."""

FRAME_MESSAGE_FRAMING_BYTES_MAX = 6
"""Bytes a frame adds per group message: the repeated field's tag (1) and length (<= 5)."""

FRAME_BYTES_MAX = 4 * MIB
"""Encoded bytes of one RaftFrame. The sender cuts a frame before it would exceed this."""

FRAME_MESSAGES_MAX = 4096
"""Group messages in one frame: bounds the receiver's decode work per frame."""

GRPC_MESSAGE_BYTES_MAX = FRAME_BYTES_MAX
"""gRPC max send/receive message length of the peer channel and server: a frame is exactly
one gRPC message (the transport serializes it itself)."""

# --- Per-peer sending ------------------------------------------------------------------------

PEER_QUEUE_MESSAGES_MAX = 16384
"""Messages buffered for one peer (queued plus held back by a fault delay). Beyond it new
messages are dropped (tail drop, as etcd does: the queued prefix stays contiguous and useful)."""

PEER_QUEUE_BYTES_MAX = 32 * MIB
"""Encoded bytes buffered for one peer, same rule as PEER_QUEUE_MESSAGES_MAX."""

PEERS_MAX = 256
"""Nodes in the peer address map, and per-node stats entries kept for inbound streams."""

RECONNECT_BACKOFF_INITIAL_MS = 50
RECONNECT_BACKOFF_MAX_MS = 1000
"""Reconnect delays double from INITIAL up to MAX, each drawn in [half, full] from the
transport's RNG so that nodes restarted together do not reconnect in lockstep. MAX stays near
the election timeout (10 ticks of 100 ms) so a restarted peer rejoins within one election."""

CONNECT_TIMEOUT_MS = 2000
"""One connection attempt: TCP + HTTP/2 setup and the metadata handshake."""

KEEPALIVE_TIME_MS = 10_000
KEEPALIVE_TIMEOUT_MS = 5_000
"""HTTP/2 pings on an idle-looking connection detect a peer host that vanished without a FIN
(a SIGSTOPped process still has its kernel answer TCP, but not the HTTP/2 ping)."""

SERVER_MIN_PING_INTERVAL_MS = 5_000
"""The server refuses pings more frequent than this (gRPC's too_many_pings GOAWAY)."""

# --- Fault injection -------------------------------------------------------------------------

FAULT_DELAY_MS_MAX = 60_000
"""The largest injected one-way delay."""

assert ENTRY_DATA_BYTES_MAX <= raft_limits.MESSAGE_BYTES_MAX, (
    "a single entry must fit the core's AppendEntries payload bound, or APPEND_MESSAGE_BYTES_MAX "
    "no longer bounds the messages the core sends"
)
assert GROUP_MESSAGE_BYTES_MAX + FRAME_HEADER_BYTES_MAX <= FRAME_BYTES_MAX, (
    "every legal group message must fit alone in a frame"
)
assert GRPC_MESSAGE_BYTES_MAX >= FRAME_BYTES_MAX
assert GRPC_MESSAGE_BYTES_MAX < 2**31, "gRPC channel options are C ints"
assert 1 <= FRAME_MESSAGES_MAX <= PEER_QUEUE_MESSAGES_MAX
assert PEER_QUEUE_MESSAGES_MAX >= raft_limits.INFLIGHT_MESSAGES_MAX, (
    "one group's pipelined appends must fit the peer queue"
)
assert PEER_QUEUE_BYTES_MAX >= FRAME_BYTES_MAX
assert (
    PEER_QUEUE_BYTES_MAX >= raft_limits.SNAPSHOT_CHUNKS_IN_FLIGHT_MAX * SNAPSHOT_MESSAGE_BYTES_MAX
), "a snapshot's in-flight chunks must fit the peer queue"
assert 0 < RECONNECT_BACKOFF_INITIAL_MS <= RECONNECT_BACKOFF_MAX_MS
assert CONNECT_TIMEOUT_MS > 0
assert KEEPALIVE_TIME_MS >= SERVER_MIN_PING_INTERVAL_MS, (
    "clients pinging faster than the server allows get disconnected (too_many_pings)"
)
assert KEEPALIVE_TIMEOUT_MS > 0
assert FAULT_DELAY_MS_MAX > 0
assert PEERS_MAX >= 1

# --- Client APIs (http_api.py, grpc_api.py, forwarder.py, client.py) --------------------------
# Keys and values themselves are bounded by the cluster layer (cluster/limits.py: keys up to
# 4 KiB, values up to the node's configured limit); these bound the requests around them.

REQUEST_TIMEOUT_MS_DEFAULT = 5_000
"""A client request's deadline when it names none (`?timeout_ms=`, the gRPC deadline)."""

REQUEST_TIMEOUT_MS_MAX = 60_000
"""The longest deadline a request may ask for: bounds how long one request holds resources."""

DEADLINE_GRACE_MS = 100
"""The API layer cancels a service call this long after its deadline, as a backstop: the node
answers DeadlineExceeded itself by then, so this only fires on a bug, and even then no request
outlives its deadline by more than this."""

SCAN_LIMIT_DEFAULT = 1_000
SCAN_LIMIT_MAX = 10_000
"""Items per scan answer (`limit`); `more` tells the client to resume."""

SCAN_RESPONSE_BYTES_MAX = 4 * MIB
"""Keys and values in one scan answer. Past it the answer is cut (at least one item is always
returned) and `more` is set, so a scan of large values never builds an unbounded response."""

ADMIN_BODY_BYTES_MAX = 64 * KIB
"""JSON bodies of admin requests (fault rules, shard lists)."""

TXN_BODY_BYTES_MAX = 2 * MIB
"""The JSON body of `POST /txn`: a transaction at its byte limit (512 KiB of keys and values)
written as base64 (4/3) with JSON escapes and field names around 128 ops fits; more is 413."""

HTTP_REQUEST_LINE_BYTES_MAX = 3 * 4 * KIB + 4 * KIB
"""The HTTP request line: a 4 KiB key percent-encoded (3 bytes per byte) plus the query, so
an over-long key is answered 413 by the API rather than 400 by the HTTP parser."""

HTTP_LISTEN_BACKLOG = 1024
"""Pending connections of the HTTP listener (a benchmark opens 64+ at once)."""

API_SHUTDOWN_GRACE_S = 10.0
"""On SIGTERM, in-flight requests get this long to finish before the listeners close."""

CLIENT_CHANNELS_MAX = PEERS_MAX
"""gRPC channels cached by one client or forwarder (one per node address)."""

CLIENT_MESSAGE_BYTES_MAX = 16 * MIB
"""gRPC send/receive bound of the client: the largest value any node can be configured to
accept (the cluster layer's bound, 8 MiB) with its key, or a full scan answer."""

assert 0 < REQUEST_TIMEOUT_MS_DEFAULT <= REQUEST_TIMEOUT_MS_MAX
assert 0 < DEADLINE_GRACE_MS < REQUEST_TIMEOUT_MS_DEFAULT
assert 0 < SCAN_LIMIT_DEFAULT <= SCAN_LIMIT_MAX
assert SCAN_RESPONSE_BYTES_MAX <= GRPC_MESSAGE_BYTES_MAX, "a full scan answer fits one message"
assert CLIENT_MESSAGE_BYTES_MAX >= SCAN_RESPONSE_BYTES_MAX
assert CLIENT_MESSAGE_BYTES_MAX < 2**31, "gRPC channel options are C ints"
assert API_SHUTDOWN_GRACE_S * 1000 >= REQUEST_TIMEOUT_MS_DEFAULT, (
    "a request with the default deadline can finish during a graceful stop"
)
assert cluster_limits.TXN_COMMAND_BYTES_MAX + 64 <= ENTRY_DATA_BYTES_MAX, (
    "a shard's part of a transaction is one entry, with its command framing"
)
assert cluster_limits.TXN_BYTES_MAX * 2 <= TXN_BODY_BYTES_MAX, (
    "a transaction at its byte limit fits a JSON body even in base64"
)
assert TXN_BODY_BYTES_MAX <= CLIENT_MESSAGE_BYTES_MAX
