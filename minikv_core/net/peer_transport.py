"""The node-to-node transport of Raft messages: one gRPC stream per peer, all groups per frame.

A node runs many Raft groups (the meta group and one per shard). After the multi-raft host has
made a Ready batch durable, it hands each group's messages to `send(to_node, messages)`, which
only encodes and enqueues them (it never awaits, so the host's loop is never blocked by a slow
or dead peer). One sender task per peer cuts everything queued for that peer into as few
frames as the frame bounds allow, so the heartbeats of every group led on this node reach a
peer in one frame (DESIGN.md, "A write, end to end", step 3), and writes them on a single
long-lived `minikv.v1.Raft/Stream` call.

Why this shape:

- Raft tolerates lost, duplicated and reordered messages (its heartbeat and probe paths
  resend), so the transport prefers dropping to waiting: each peer's buffer is bounded in
  messages and bytes, and a full buffer drops *new* messages (tail drop, as etcd does: the
  queued prefix stays contiguous, so what does arrive can still be appended by the follower).
  Every drop is counted by reason in `stats()`.
- It never delivers a message twice (nothing is resent, not even after a reconnect). One
  message relies on it: a PROPOSE delivered twice would append a follower's writes twice,
  and the copy could overwrite a later write to the same key.
- Backpressure is HTTP/2 flow control: a peer that reads slowly makes `call.write` wait, the
  buffer fills behind it, and the overflow is dropped. There is no per-frame acknowledgement:
  Raft's own responses are the acknowledgements.
- When a connection attempt fails or a stream breaks, everything buffered for that peer is
  dropped (counted as unreachable) rather than delivered late: after a reconnect the peer gets
  fresh heartbeats and appends, not a backlog of stale ones. Reconnects back off exponentially
  with jitter drawn from the injected RNG (bounded by limits.RECONNECT_BACKOFF_MAX_MS).
- The fault filter (fault.py) decides every outbound frame (drop_to, loss, delay) and every
  inbound frame (drop_from); it is the only path bytes take between nodes.
- A frame from a peer is untrusted input: one that does not decode, or whose addressing does
  not match its stream, is dropped and counted; the stream and the server keep serving.
- The handshake (metadata, see raft.proto) refuses streams meant for another node id or another
  cluster: with local clusters started and stopped all day, a reused port must not let one
  cluster's node talk to another's. With `fence()`, it also refuses a node whose incarnation
  is not the one first heard from its id (its data directory was lost: it must not vote).
  With `retire()`, it refuses (and cuts the open streams of) nodes removed from the cluster:
  a removed node may not have heard of its removal, and no Raft group tells it any more.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import random
from collections import Counter, deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field

import grpc
import grpc.aio

from minikv_core.frozen import frozen
from minikv_core.net import limits
from minikv_core.net.fault import FaultFilter, OutboundAction
from minikv_core.net.proto import raft_pb2
from minikv_core.net.raft_codec import (
    CodecError,
    decode_frame,
    encode_frame_pieces,
    encode_group_message,
    frame_header_size_bytes,
    frame_piece,
)
from minikv_core.raft.types import Message

logger = logging.getLogger(__name__)

AdmitPeer = Callable[[int, str], Awaitable[str]]
"""`admit(node_id, incarnation)`: "" when a stream from that node may be served, else why
not (cluster/peer_incarnations.py). Raises OSError when it cannot record what it heard."""

FrameHandler = Callable[[int, list[tuple[int, Message]]], None]
"""`on_frame(from_node, [(group_id, message), ...])`, called on the event loop for every frame
that passed validation and the fault filter, messages in the sender's order. It must not block;
an exception it raises is logged and counted (HANDLER_ERROR), and the stream keeps serving."""

_SERVICE = raft_pb2.DESCRIPTOR.services_by_name["Raft"]
STREAM_METHOD = f"/{_SERVICE.full_name}/{_SERVICE.methods_by_name['Stream'].name}"
"""The gRPC method path, taken from the schema so it cannot drift from raft.proto."""

METADATA_FROM_NODE = "x-minikv-from-node"
METADATA_TO_NODE = "x-minikv-to-node"
METADATA_CLUSTER_ID = "x-minikv-cluster-id"
METADATA_FROM_ADDRESS = "x-minikv-from-address"
METADATA_INCARNATION = "x-minikv-incarnation"
METADATA_REFUSAL = "x-minikv-refusal"
REFUSAL_FENCED = "fenced"
"""Trailing metadata of a stream refused because the caller's incarnation is not the one the
callee knows for its id: the caller lost its data and must stop (see `fence`)."""
REFUSAL_RETIRED = "retired"
"""Trailing metadata of a stream refused because the caller's id is retired: it was removed
from the cluster and must stop (see `retire`)."""
REFUSAL_FOREIGN = "foreign"
"""Trailing metadata of a stream refused because the caller's cluster id is not the callee's.
One such refusal proves little (the callee may be the one started with the wrong flags), so it
counts only once the refusing peers are a majority of the caller's cluster (see `refused_by`)."""
RefusalHandler = Callable[[str, str], None]
"""`on_refused(kind, reason)`: a peer refused this node for good (`REFUSAL_FENCED` or
`REFUSAL_RETIRED`), or a majority of its peers did (`REFUSAL_FOREIGN`); `reason` is the
peers' sentence."""
METADATA_NODE_ID = "x-minikv-node-id"
METADATA_FEATURES = "x-minikv-features"
"""Handshake keys: the caller sends FROM/TO/CLUSTER_ID, the callee answers NODE_ID and the
FEATURES it understands (comma-separated)."""

FEATURE_PROPOSE = "propose"
"""The callee decodes PROPOSE messages (raft MessageType 15). An older node would drop a whole
frame holding one (unknown message type), acknowledgements included, so a follower sends its
writes in a PROPOSE only to a leader that said it understands them."""
FEATURES: frozenset[str] = frozenset({FEATURE_PROPOSE})
"""What this version of the transport advertises (`PeerTransport.features` by default)."""

_CHANNEL_OPTIONS: tuple[tuple[str, int], ...] = (
    ("grpc.max_send_message_length", limits.GRPC_MESSAGE_BYTES_MAX),
    ("grpc.max_receive_message_length", limits.GRPC_MESSAGE_BYTES_MAX),
    ("grpc.keepalive_time_ms", limits.KEEPALIVE_TIME_MS),
    ("grpc.keepalive_timeout_ms", limits.KEEPALIVE_TIMEOUT_MS),
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.enable_retries", 0),
    # A private subchannel per channel: with the process-wide pool, a new channel to a peer
    # would inherit the old one's connection and gRPC's own reconnect backoff (up to 120 s),
    # overriding ours.
    ("grpc.use_local_subchannel_pool", 1),
)

_SERVER_OPTIONS: tuple[tuple[str, int], ...] = (
    ("grpc.max_send_message_length", limits.GRPC_MESSAGE_BYTES_MAX),
    ("grpc.max_receive_message_length", limits.GRPC_MESSAGE_BYTES_MAX),
    # gRPC enables SO_REUSEPORT by default on Linux: two nodes given the same port would both
    # bind it and the kernel would split peers' connections between them.
    ("grpc.so_reuseport", 0),
    ("grpc.http2.min_recv_ping_interval_without_data_ms", limits.SERVER_MIN_PING_INTERVAL_MS),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_ping_strikes", 0),
)


_COUNTERS_MAX = 2 * limits.PEERS_MAX
"""Stats entries: the peers, plus as many other node ids seen on the wire."""


class TransportError(Exception):
    """The transport could not start (for example its port is taken)."""


class DropReason(enum.StrEnum):
    """Why traffic was dropped. The unit is a Raft message unless stated otherwise."""

    QUEUE_FULL = "queue_full"
    """`send()` found the peer's buffer full (messages or bytes)."""
    OVERSIZE = "oversize"
    """The encoded message exceeds the frame bound (see limits.GROUP_MESSAGE_BYTES_MAX)."""
    UNKNOWN_PEER = "unknown_peer"
    """`send()` to a node that has no address in the peer map."""
    UNREACHABLE = "unreachable"
    """Buffered when a connection attempt failed or the stream broke."""
    FAULT_DROP_TO = "fault_drop_to"
    FAULT_LOSS = "fault_loss"
    FAULT_DROP_FROM = "fault_drop_from"
    MALFORMED = "malformed"
    """Unit: frames. Inbound frames that did not decode or were addressed inconsistently."""
    MISADDRESSED = "misaddressed"
    """Unit: streams. Inbound streams refused at the handshake (other node, other cluster)."""
    HANDLER_ERROR = "handler_error"
    """Inbound messages whose `on_frame` call raised."""
    STOPPED = "stopped"
    """Buffered when the peer was removed from the map or the transport stopped."""


@dataclass(frozen=True, slots=True)
class TransportConfig:
    """Tunables of one transport; the defaults are the limits. Tests shrink them."""

    queue_messages_max: int = limits.PEER_QUEUE_MESSAGES_MAX
    queue_bytes_max: int = limits.PEER_QUEUE_BYTES_MAX
    frame_messages_max: int = limits.FRAME_MESSAGES_MAX
    frame_bytes_max: int = limits.FRAME_BYTES_MAX
    reconnect_backoff_initial_ms: int = limits.RECONNECT_BACKOFF_INITIAL_MS
    reconnect_backoff_max_ms: int = limits.RECONNECT_BACKOFF_MAX_MS
    connect_timeout_ms: int = limits.CONNECT_TIMEOUT_MS

    def __post_init__(self) -> None:
        if not 1 <= self.queue_messages_max <= limits.PEER_QUEUE_MESSAGES_MAX:
            raise ValueError(
                f"queue_messages_max must be in [1, {limits.PEER_QUEUE_MESSAGES_MAX}], "
                f"got {self.queue_messages_max}"
            )
        if not 1 <= self.queue_bytes_max <= limits.PEER_QUEUE_BYTES_MAX:
            raise ValueError(
                f"queue_bytes_max must be in [1, {limits.PEER_QUEUE_BYTES_MAX}], "
                f"got {self.queue_bytes_max}"
            )
        if not 1 <= self.frame_messages_max <= limits.FRAME_MESSAGES_MAX:
            raise ValueError(
                f"frame_messages_max must be in [1, {limits.FRAME_MESSAGES_MAX}], "
                f"got {self.frame_messages_max}"
            )
        if not 2 * limits.FRAME_HEADER_BYTES_MAX <= self.frame_bytes_max <= limits.FRAME_BYTES_MAX:
            raise ValueError(
                f"frame_bytes_max must be in [{2 * limits.FRAME_HEADER_BYTES_MAX}, "
                f"{limits.FRAME_BYTES_MAX}] (the gRPC message bound), got {self.frame_bytes_max}"
            )
        if not 0 < self.reconnect_backoff_initial_ms <= self.reconnect_backoff_max_ms:
            raise ValueError(
                "reconnect backoff must satisfy 0 < initial <= max, got "
                f"initial={self.reconnect_backoff_initial_ms} max={self.reconnect_backoff_max_ms}"
            )
        if self.connect_timeout_ms <= 0:
            raise ValueError(f"connect_timeout_ms must be positive, got {self.connect_timeout_ms}")

    @property
    def message_bytes_max(self) -> int:
        """The largest encoded group message `send()` accepts: one that fits a frame alone."""
        return min(
            limits.GROUP_MESSAGE_BYTES_MAX, self.frame_bytes_max - limits.FRAME_HEADER_BYTES_MAX
        )


@dataclass(frozen=True, slots=True)
class PeerStats:
    """Traffic with one node. Outbound counts frames and messages written to the stream;
    inbound counts frames read from the wire, and messages delivered to `on_frame`."""

    node_id: int
    address: str
    """"" when the node is not in the peer map (it only connected to us)."""
    connected: bool
    """The outbound stream is open and its handshake succeeded."""
    inbound_streams: int
    frames_sent: int
    messages_sent: int
    bytes_sent: int
    frames_received: int
    messages_received: int
    bytes_received: int
    reconnects: int
    """Successful connections after the first one."""
    connect_failures: int
    queued_messages: int
    queued_bytes: int
    drops: dict[DropReason, int]
    last_error: str


@dataclass(frozen=True, slots=True)
class TransportStats:
    node_id: int
    address: str
    peers: tuple[PeerStats, ...]
    """Sorted by node id."""
    drops: dict[DropReason, int]
    """Totals over all peers."""


@dataclass(slots=True)
class _Counters:
    frames_sent: int = 0
    messages_sent: int = 0
    bytes_sent: int = 0
    frames_received: int = 0
    messages_received: int = 0
    bytes_received: int = 0
    connects: int = 0
    connect_failures: int = 0
    inbound_streams: int = 0
    drops: Counter[DropReason] = field(default_factory=Counter)
    last_error: str = ""


@frozen
class _HeldFrame:
    """A frame cut and passed by the fault filter, waiting for its due time (a fault delay)."""

    due_s: float
    data: bytes
    message_count: int
    buffered_bytes: int


class _StreamFailedError(Exception):
    """A connection attempt or an open stream to a peer failed; the message says how."""


def _parse_node_id(text: str | None) -> int:
    if text is None or not text.isdigit() or int(text) <= 0:
        return 0
    return int(text)


def _check_address(node_id: int, address: object) -> str:
    if not isinstance(address, str):
        raise ValueError(f"address of node {node_id} must be 'host:port', got {address!r}")
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"address of node {node_id} must be 'host:port', got {address!r}")
    return address


class _PeerSender:
    """Buffer, frame cutting, connection and stream of one outbound peer."""

    def __init__(self, transport: PeerTransport, node_id: int, address: str) -> None:
        self._transport = transport
        self._config = transport.config
        self.node_id = node_id
        self.address = address
        self.counters = transport._counters_for_peer(node_id)
        self.connected = False
        self.features: frozenset[str] = frozenset()
        """What the peer advertised at the handshake of the current stream (none when
        disconnected)."""
        self._pending: deque[bytes] = deque()
        self._pending_bytes = 0
        """Bytes of `_pending` (frames cut but not written are in `buffered_bytes` too)."""
        self._held: deque[_HeldFrame] = deque()
        self.buffered_messages = 0
        self.buffered_bytes = 0
        self._header_bytes = frame_header_size_bytes(transport.node_id, node_id)
        self._wakeup = asyncio.Event()
        self._retarget = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    # --- called by PeerTransport (synchronous) -------------------------------------------

    def enqueue(self, piece: bytes) -> None:
        """Queue one message as its `frame_piece` (its size in a frame is its length)."""
        size = len(piece)
        if (
            self.buffered_messages + 1 > self._config.queue_messages_max
            or self.buffered_bytes + size > self._config.queue_bytes_max
        ):
            self.counters.drops[DropReason.QUEUE_FULL] += 1
            return
        self._pending.append(piece)
        self._pending_bytes += size
        self.buffered_messages += 1
        self.buffered_bytes += size
        self._wakeup.set()

    def start(self) -> None:
        assert self._task is None
        self._task = asyncio.get_running_loop().create_task(
            self._run(), name=f"minikv-peer-sender-{self._transport.node_id}-to-{self.node_id}"
        )

    @property
    def running(self) -> bool:
        return self._task is not None

    def retarget(self, address: str) -> None:
        """Reconnect to `address` (the node moved); what is buffered is kept."""
        self.address = address
        self._retarget.set()
        self._wakeup.set()

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        self.drop_buffered(DropReason.STOPPED)

    def drop_buffered(self, reason: DropReason) -> None:
        if self.buffered_messages:
            self.counters.drops[reason] += self.buffered_messages
        self._pending.clear()
        self._pending_bytes = 0
        self._held.clear()
        self.buffered_messages = 0
        self.buffered_bytes = 0

    # --- the sender task ----------------------------------------------------------------

    async def _run(self) -> None:
        attempt = 0
        while True:
            self._retarget.clear()
            address = self.address
            # A fresh channel per attempt: our backoff (jittered from the injected RNG)
            # decides when to retry, not gRPC's internal one.
            channel = grpc.aio.insecure_channel(address, options=_CHANNEL_OPTIONS)
            try:
                call = await self._connect(channel, address)
                self._transport.accepted_by(self.node_id)
                attempt = 0
                self.connected = True
                self.counters.connects += 1
                await self._pump(call)
            except _StreamFailedError as error:
                self._failed(str(error))
                logger.debug("node %d: %s", self._transport.node_id, error)
            except Exception as error:
                # Not expected (gRPC usage errors, a bad address); the sender must outlive it,
                # and it is loud in the log.
                self._failed(f"stream to node {self.node_id} at {address} failed: {error!r}")
                logger.exception(
                    "node %d: sender to node %d", self._transport.node_id, self.node_id
                )
            finally:
                self.connected = False
                self.features = frozenset()
                await channel.close(grace=None)
            if self._retarget.is_set():
                continue
            self.drop_buffered(DropReason.UNREACHABLE)
            await self._sleep_backoff(attempt)
            attempt += 1

    def _failed(self, error: str) -> None:
        self.counters.last_error = error
        if not self.connected:
            self.counters.connect_failures += 1

    async def _sleep_backoff(self, attempt: int) -> None:
        config = self._config
        cap_ms = min(
            config.reconnect_backoff_max_ms,
            config.reconnect_backoff_initial_ms * (1 << min(attempt, 30)),
        )
        delay_s = cap_ms * (0.5 + 0.5 * self._transport.rng.random()) / 1000.0
        # An address change cuts the wait short: the new address deserves a try at once.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(delay_s):
                await self._retarget.wait()

    async def _connect(self, channel: grpc.aio.Channel, address: str) -> grpc.aio.StreamUnaryCall:
        transport = self._transport
        timeout_ms = self._config.connect_timeout_ms
        try:
            async with asyncio.timeout(timeout_ms / 1000.0):
                state = channel.get_state(try_to_connect=True)
                while state != grpc.ChannelConnectivity.READY:
                    if state in (
                        grpc.ChannelConnectivity.TRANSIENT_FAILURE,
                        grpc.ChannelConnectivity.SHUTDOWN,
                    ):
                        raise _StreamFailedError(
                            f"cannot connect to node {self.node_id} at {address}"
                        )
                    await channel.wait_for_state_change(state)
                    state = channel.get_state(try_to_connect=True)
                call = channel.stream_unary(STREAM_METHOD)(
                    metadata=(
                        (METADATA_FROM_NODE, str(transport.node_id)),
                        (METADATA_TO_NODE, str(self.node_id)),
                        (METADATA_CLUSTER_ID, transport.cluster_id),
                        (METADATA_FROM_ADDRESS, transport.advertised_address),
                        (METADATA_INCARNATION, transport.incarnation),
                    )
                )
                metadata = await call.initial_metadata()
                answered = metadata.get(METADATA_NODE_ID)
                if answered is None:
                    # Refused at the handshake: the status carries the callee's reason.
                    code = await call.code()
                    details = await call.details()
                    await self._note_refusal(call)
                    raise _StreamFailedError(
                        f"node at {address} refused the stream to node {self.node_id}: "
                        f"{code.name}: {details}"
                    )
        except TimeoutError:
            raise _StreamFailedError(
                f"connecting to node {self.node_id} at {address} timed out after {timeout_ms} ms"
            ) from None
        except grpc.RpcError as error:
            raise _StreamFailedError(
                f"stream to node {self.node_id} at {address} failed: {error}"
            ) from None
        if answered != str(self.node_id):
            call.cancel()
            raise _StreamFailedError(
                f"{address} is node {answered}, not node {self.node_id}: stale peer address"
            )
        advertised = str(metadata.get(METADATA_FEATURES) or "")  # absent from older nodes
        self.features = frozenset(part for part in advertised.split(",") if part)
        call.add_done_callback(lambda _call: self._wakeup.set())
        return call

    async def _pump(self, call: grpc.aio.StreamUnaryCall) -> None:
        """Cut and write frames until the stream fails (raises) or the address changes."""
        loop = asyncio.get_running_loop()
        while True:
            # Cleared before looking at the state: a send() during any await below sets it
            # again, so no wakeup is lost.
            self._wakeup.clear()
            if self._retarget.is_set():
                call.cancel()
                return
            if call.done():
                raise _StreamFailedError(await self._ended(call))
            now = loop.time()
            self._cut_frames(now)
            if self._held and self._held[0].due_s <= now:
                await self._write(call, self._held.popleft())
                continue
            if not self._held:
                await self._wakeup.wait()  # no timer needed: the usual case, once per frame
                continue
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._held[0].due_s - now):
                    await self._wakeup.wait()

    def _cut_frames(self, now: float) -> None:
        """Turn everything pending into frames, each decided by the fault filter."""
        config = self._config
        pending = self._pending
        while pending:
            messages: list[bytes] = []
            frame_bytes = self._header_bytes
            if (
                len(pending) <= config.frame_messages_max
                and frame_bytes + self._pending_bytes <= config.frame_bytes_max
            ):
                # Everything queued fits one frame (the usual case): take it whole.
                messages = list(pending)
                frame_bytes += self._pending_bytes
                pending.clear()
            while pending and len(messages) < config.frame_messages_max:
                size = len(pending[0])
                if messages and frame_bytes + size > config.frame_bytes_max:
                    break
                messages.append(pending.popleft())
                frame_bytes += size
            buffered = frame_bytes - self._header_bytes
            self._pending_bytes -= buffered
            verdict = self._transport.fault_filter.outbound(self.node_id)
            if verdict.action is not OutboundAction.DELIVER:
                reason = (
                    DropReason.FAULT_DROP_TO
                    if verdict.action is OutboundAction.DROP_TO
                    else DropReason.FAULT_LOSS
                )
                self.counters.drops[reason] += len(messages)
                self.buffered_messages -= len(messages)
                self.buffered_bytes -= buffered
                continue
            data = encode_frame_pieces(self._transport.node_id, self.node_id, messages)
            assert len(data) == frame_bytes <= config.frame_bytes_max, (len(data), frame_bytes)
            self._held.append(
                _HeldFrame(now + verdict.delay_ms / 1000.0, data, len(messages), buffered)
            )
        assert self._pending_bytes == 0, self._pending_bytes

    async def _write(self, call: grpc.aio.StreamUnaryCall, frame: _HeldFrame) -> None:
        try:
            await call.write(frame.data)
        except (grpc.RpcError, asyncio.InvalidStateError):
            # The frame is lost with the stream (the rest of the buffer follows it).
            self.counters.drops[DropReason.UNREACHABLE] += frame.message_count
            raise _StreamFailedError(await self._ended(call)) from None
        finally:
            self.buffered_messages -= frame.message_count
            self.buffered_bytes -= frame.buffered_bytes
        counters = self.counters
        counters.frames_sent += 1
        counters.messages_sent += frame.message_count
        counters.bytes_sent += len(frame.data)

    async def _note_refusal(self, call: grpc.aio.StreamUnaryCall) -> None:
        """Tell the transport when the peer refused this node for good (at the handshake,
        or by cutting an open stream: `retire`)."""
        trailing = dict(await call.trailing_metadata() or ())
        kind = trailing.get(METADATA_REFUSAL)
        if kind in (REFUSAL_FENCED, REFUSAL_RETIRED, REFUSAL_FOREIGN):
            self._transport.refused_by(self.node_id, str(kind), str(await call.details()))

    async def _ended(self, call: grpc.aio.StreamUnaryCall) -> str:
        code = await call.code()
        details = await call.details()
        await self._note_refusal(call)
        return f"stream to node {self.node_id} at {self.address} ended: {code.name}: {details}"


class PeerTransport:
    """Sends and receives the Raft messages of every group on this node to and from its peers.

    Lifecycle: construct, `await start()` (binds the server; `port` is then the bound port),
    `send()` any time, `await stop()` once. `peers` maps node id to "host:port"; the entry for
    this node itself, if present, is ignored. `rng` jitters reconnect backoff; the fault
    filter's own RNG decides loss (derived from `rng` when no filter is given).

    `server`: a node serves `Raft`, `KV` and `Admin` on ONE gRPC server (its `--grpc`
    address, which is also where peers reach it). Given a server that its owner has already
    bound (`host`/`port` then name that bound address), the transport registers its stream
    handler on it at construction, so construct the transport before the server starts; its
    `start()` and `stop()` then neither bind, start nor stop that server: its owner does.
    """

    def __init__(
        self,
        node_id: int,
        peers: Mapping[int, str],
        on_frame: FrameHandler,
        *,
        rng: random.Random,
        host: str = "127.0.0.1",
        port: int = 0,
        cluster_id: str = "",
        fault_filter: FaultFilter | None = None,
        config: TransportConfig | None = None,
        server: grpc.aio.Server | None = None,
    ) -> None:
        if isinstance(node_id, bool) or not isinstance(node_id, int) or node_id <= 0:
            raise ValueError(f"node_id must be a positive integer, got {node_id!r}")
        if not 0 <= port < 65536:
            raise ValueError(f"port must be in [0, 65535], got {port}")
        self.node_id = node_id
        self.cluster_id = cluster_id
        self.rng = rng
        self.config = config if config is not None else TransportConfig()
        self.fault_filter = (
            fault_filter if fault_filter is not None else FaultFilter(random.Random(rng.random()))
        )
        self._on_frame = on_frame
        self._host = host
        self._requested_port = port
        self._port = 0
        self._server: grpc.aio.Server | None = None
        self._shared_server = server is not None
        if server is not None:
            if port == 0:
                raise ValueError("a shared server must be bound first: pass its bound port")
            server.add_generic_rpc_handlers((self._rpc_handler(),))
            self._port = port
        self.features = FEATURES
        """Advertised to every peer that opens a stream here (tests shrink it to play an
        older node)."""
        self._started = False
        self._stopped = False
        self._counters: dict[int, _Counters] = {}
        self._senders: dict[int, _PeerSender] = {}
        self._closing: set[asyncio.Task[None]] = set()
        self._advertised = peers.get(node_id)
        self.incarnation = ""
        self._admit: AdmitPeer | None = None
        self._on_refused: RefusalHandler | None = None
        # Peers whose last answer refused this node as one of another cluster: their words.
        self._foreign_refusals: dict[int, str] = {}
        self._retired: frozenset[int] = frozenset()
        self.set_peers(peers)

    def fence(self, incarnation: str, admit: AdmitPeer, on_refused: RefusalHandler) -> None:
        """Before `start()`: send `incarnation` at every handshake, serve a stream only if
        `admit` says so, and call `on_refused(kind, reason)` when a peer refuses this node
        for good: its incarnation (it lost its data: see cluster/peer_incarnations.py) or
        its retired id (`retire`). Without it the transport neither sends nor checks
        incarnations (tests, embedders), and a refusal is only logged."""
        assert not self._started, "fence() after start()"
        self.incarnation = incarnation
        self._admit = admit
        self._on_refused = on_refused

    def retire(self, node_ids: Iterable[int]) -> None:
        """Refuse streams from these removed nodes from now on, open ones at their next frame,
        telling them why (`REFUSAL_RETIRED`). Why: a node learns it was removed by applying
        the map without it, but the leader may drop it from the meta group before it heard
        that map's commit (commits travel with the next append or heartbeat, and none come
        once it is out), and a node removed while down never hears it: either would run on,
        listed nowhere. Its Raft groups soon talk to us (a follower without a leader
        campaigns), so the refusal reaches it. Ids are never reused (ShardMap.retired)."""
        self._retired = frozenset(node_ids)

    def refused_by(self, node_id: int, kind: str, reason: str) -> None:
        """Node `node_id` refused this node for good: the owner decides (a node stops and
        says why), else it is said here.

        A refusal as a node of another cluster counts once the refusing peers are a majority
        of the whole cluster as this node knows it (its peer map and itself): then it can
        never be in a quorum with them. Why: a node that lost its data directory and was
        started again with today's --peers (not its founding ones) derives another cluster
        id, and every peer refuses it; it would run on alone, refused by all, and say
        nothing itself. Yet one node started with the wrong flags refuses its good peers
        too: they must not stop for it (in a cluster of two, neither can tell who is
        wrong, and neither stops)."""
        if kind == REFUSAL_FOREIGN:
            news = self._foreign_refusals.get(node_id) != reason
            self._foreign_refusals[node_id] = reason
            peers = sorted(self._senders)
            refusers = [n for n in peers if n in self._foreign_refusals]
            if len(refusers) < (len(peers) + 1) // 2 + 1:
                if news:  # not again at every reconnect
                    logger.warning(
                        "node %d: node %d refused it as a node of another cluster: %s",
                        self.node_id,
                        node_id,
                        reason,
                    )
                return
            reason = (
                f"{len(refusers)} of its {len(peers)} peers (nodes "
                f"{', '.join(map(str, refusers))}) refused it as a node of another cluster "
                f"({reason}): it was started with other --peers or --cluster-id than the "
                "cluster was created with (a node whose data directory was lost derives its "
                "cluster id afresh), or its peers' addresses now belong to another cluster. "
                "Start it with the flags it was created with, or add it as a new node (--join)"
            )
        if self._on_refused is not None:
            self._on_refused(kind, reason)
        else:
            logger.error("node %d: node %d refused this node: %s", self.node_id, node_id, reason)

    def accepted_by(self, node_id: int) -> None:
        """Node `node_id` took a stream: whatever it said before about our cluster is void."""
        self._foreign_refusals.pop(node_id, None)

    # --- lifecycle -------------------------------------------------------------------------

    @property
    def port(self) -> int:
        """The bound port (0 before `start()`)."""
        return self._port

    @property
    def address(self) -> str:
        return f"{self._host}:{self._port}"

    @property
    def advertised_address(self) -> str:
        """Where peers reach this node: its own entry in the peer map it was given, else the
        bound address. Sent at every handshake (see `_learn_peer`)."""
        return self._advertised or self.address

    async def start(self) -> None:
        """Bind and start the gRPC server, then the per-peer sender tasks.

        Raises TransportError when the address cannot be bound.
        """
        assert not self._started, "start() called twice"
        if self._shared_server:
            self._started = True
            for sender in self._senders.values():
                sender.start()
            return
        server = grpc.aio.server(options=_SERVER_OPTIONS)
        server.add_generic_rpc_handlers((self._rpc_handler(),))
        target = f"{self._host}:{self._requested_port}"
        try:
            port = server.add_insecure_port(target)
        except RuntimeError as error:
            await server.stop(None)
            raise TransportError(f"node {self.node_id} cannot bind {target}: {error}") from None
        if port == 0:
            await server.stop(None)
            raise TransportError(f"node {self.node_id} cannot bind {target}")
        await server.start()
        self._server = server
        self._port = port
        self._started = True
        for sender in self._senders.values():
            sender.start()

    def _rpc_handler(self) -> grpc.GenericRpcHandler:
        return grpc.method_handlers_generic_handler(
            _SERVICE.full_name,
            {"Stream": grpc.stream_unary_rpc_method_handler(self._serve_stream)},
        )

    async def stop(self) -> None:
        """Close every stream and the server (unless it is shared); buffered messages are
        dropped (STOPPED).

        When it returns, no task of this transport is left running.
        """
        if self._stopped:
            return
        self._stopped = True
        senders = list(self._senders.values())
        self._senders.clear()
        await asyncio.gather(*(sender.close() for sender in senders))
        if self._closing:
            await asyncio.gather(*self._closing)
        if self._server is not None:
            await self._server.stop(None)
            self._server = None

    # --- peers -----------------------------------------------------------------------------

    def set_peers(self, peers: Mapping[int, str]) -> None:
        """Replace the address map (membership change or a node that moved).

        New peers get a sender, removed ones have theirs closed (their buffer is dropped), a
        changed address makes the sender reconnect there.
        """
        checked: dict[int, str] = {}
        for node_id, address in peers.items():
            if isinstance(node_id, bool) or not isinstance(node_id, int) or node_id <= 0:
                raise ValueError(f"peer node ids must be positive integers, got {node_id!r}")
            if node_id != self.node_id:
                checked[node_id] = _check_address(node_id, address)
        if len(checked) > limits.PEERS_MAX:
            raise ValueError(f"{len(checked)} peers exceed PEERS_MAX={limits.PEERS_MAX}")
        if self._stopped:
            return
        for node_id in [n for n in self._senders if n not in checked]:
            sender = self._senders.pop(node_id)
            if not sender.running:
                sender.drop_buffered(DropReason.STOPPED)
                continue
            task = asyncio.get_running_loop().create_task(sender.close())
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)
        for node_id, address in checked.items():
            existing = self._senders.get(node_id)
            if existing is None:
                self._add_sender(node_id, address)
            elif existing.address != address:
                existing.retarget(address)

    def _add_sender(self, node_id: int, address: str) -> None:
        sender = _PeerSender(self, node_id, address)
        self._senders[node_id] = sender
        if self._started:
            sender.start()

    @property
    def peers(self) -> dict[int, str]:
        return {node_id: sender.address for node_id, sender in self._senders.items()}

    def is_connected(self, node_id: int) -> bool:
        sender = self._senders.get(node_id)
        return sender is not None and sender.connected

    def peer_supports(self, node_id: int, feature: str) -> bool:
        """Whether the stream to `node_id` is up and its node advertised `feature`."""
        sender = self._senders.get(node_id)
        return sender is not None and sender.connected and feature in sender.features

    # --- sending ---------------------------------------------------------------------------

    def send(self, to_node: int, messages: Iterable[tuple[int, Message]]) -> None:
        """Queue `(group_id, message)` pairs for `to_node`. Never blocks, never waits.

        Messages that cannot be queued are dropped and counted (QUEUE_FULL, OVERSIZE,
        UNKNOWN_PEER, STOPPED). Raises ValueError for a host bug: a message not addressed to
        `to_node` or not sent by this node.
        """
        if to_node == self.node_id:
            raise ValueError(f"node {self.node_id} cannot send to itself")
        sender = None if self._stopped else self._senders.get(to_node)
        message_bytes_max = self.config.message_bytes_max
        for group_id, message in messages:
            if message.to != to_node or message.sender != self.node_id:
                raise ValueError(
                    f"group {group_id} {message.type.name} message from {message.sender} to "
                    f"{message.to} handed to node {self.node_id}'s transport for node {to_node}"
                )
            if sender is None:
                reason = DropReason.STOPPED if self._stopped else DropReason.UNKNOWN_PEER
                self._counters_for_other(to_node).drops[reason] += 1
                continue
            piece = frame_piece(encode_group_message(group_id, message))
            if len(piece) > message_bytes_max:
                sender.counters.drops[DropReason.OVERSIZE] += 1
                logger.warning(
                    "node %d: dropped a %d-byte %s message of group %d to node %d: over the "
                    "%d-byte message bound",
                    self.node_id,
                    len(piece),
                    message.type.name,
                    group_id,
                    to_node,
                    message_bytes_max,
                )
                continue
            sender.enqueue(piece)

    # --- receiving -------------------------------------------------------------------------

    async def _serve_stream(
        self, request_iterator: AsyncIterator[bytes], context: grpc.aio.ServicerContext
    ) -> bytes:
        metadata = dict(context.invocation_metadata() or ())
        from_node = _parse_node_id(metadata.get(METADATA_FROM_NODE))
        to_node = _parse_node_id(metadata.get(METADATA_TO_NODE))
        cluster_id = metadata.get(METADATA_CLUSTER_ID, "")
        problem = ""
        refused_as: tuple[tuple[str, str], ...] = ()
        if from_node in (0, self.node_id):
            problem = f"bad {METADATA_FROM_NODE} {metadata.get(METADATA_FROM_NODE)!r}"
        elif to_node != self.node_id:
            problem = f"stream for node {to_node} reached node {self.node_id}"
        elif cluster_id != self.cluster_id:
            problem = (
                f"stream from cluster {cluster_id!r} reached node {self.node_id} of cluster "
                f"{self.cluster_id!r}"
            )
            refused_as = ((METADATA_REFUSAL, REFUSAL_FOREIGN),)
        if problem:
            self._record_refused_stream(from_node, problem)
            await context.abort(
                grpc.StatusCode.FAILED_PRECONDITION, problem, trailing_metadata=refused_as
            )
        if not self._started or self._stopped:
            # Only possible on a shared server, which outlives the transport on both ends.
            await context.abort(
                grpc.StatusCode.UNAVAILABLE, f"node {self.node_id}'s transport is not running"
            )
        if from_node in self._retired:
            await self._refuse_retired(from_node, context)
        if self._admit is not None:
            # Recorded before any frame is read: an incarnation admitted unrecorded would let
            # the next one pass after a restart of this node.
            try:
                refusal = await self._admit(from_node, str(metadata.get(METADATA_INCARNATION, "")))
            except OSError as error:
                problem = (
                    f"node {self.node_id} cannot record node {from_node}'s incarnation: {error}"
                )
                self._record_refused_stream(from_node, problem)
                await context.abort(grpc.StatusCode.UNAVAILABLE, problem)
            if refusal:
                self._record_refused_stream(from_node, refusal)
                await context.abort(
                    grpc.StatusCode.FAILED_PRECONDITION,
                    refusal,
                    trailing_metadata=((METADATA_REFUSAL, REFUSAL_FENCED),),
                )
        if from_node not in self._senders:
            self._learn_peer(from_node, metadata.get(METADATA_FROM_ADDRESS))
        await context.send_initial_metadata(
            (
                (METADATA_NODE_ID, str(self.node_id)),
                (METADATA_FEATURES, ",".join(sorted(self.features))),
            )
        )
        counters = self._counters_for_other(from_node)
        counters.inbound_streams += 1
        frames = 0
        try:
            async for raw in request_iterator:
                if from_node in self._retired:
                    await self._refuse_retired(from_node, context)
                frames += 1
                self._receive(from_node, counters, raw)
        finally:
            counters.inbound_streams -= 1
        return raft_pb2.RaftStreamSummary(frames_received=frames).SerializeToString()

    async def _refuse_retired(self, from_node: int, context: grpc.aio.ServicerContext) -> None:
        refusal = (
            f"node {from_node} was removed from the cluster (node {self.node_id}'s shard map "
            "retires its id): a removed node must not rejoin; add a new node instead"
        )
        self._record_refused_stream(from_node, refusal)
        await context.abort(
            grpc.StatusCode.FAILED_PRECONDITION,
            refusal,
            trailing_metadata=((METADATA_REFUSAL, REFUSAL_RETIRED),),
        )

    def _receive(self, from_node: int, counters: _Counters, raw: bytes) -> None:
        counters.frames_received += 1
        counters.bytes_received += len(raw)
        try:
            frame = decode_frame(raw)
            if frame.from_node != from_node or frame.to_node != self.node_id:
                raise CodecError(
                    f"frame from node {frame.from_node} to node {frame.to_node} on the stream "
                    f"from node {from_node} to node {self.node_id}"
                )
            for group_id, message in frame.messages:
                if message.sender != from_node or message.to != self.node_id:
                    raise CodecError(
                        f"group {group_id} {message.type.name} message from {message.sender} "
                        f"to {message.to} in a frame from node {from_node} to {self.node_id}"
                    )
        except CodecError as error:
            counters.drops[DropReason.MALFORMED] += 1
            counters.last_error = f"malformed frame from node {from_node}: {error}"
            logger.warning("node %d: %s", self.node_id, counters.last_error)
            return
        if not frame.messages:
            return
        if self._stopped:
            # A shared server can still deliver on a stream opened before stop().
            counters.drops[DropReason.STOPPED] += len(frame.messages)
            return
        if not self.fault_filter.inbound(from_node):
            counters.drops[DropReason.FAULT_DROP_FROM] += len(frame.messages)
            return
        counters.messages_received += len(frame.messages)
        try:
            self._on_frame(from_node, frame.messages)
        except Exception:
            # A host bug must not take the peer stream down with it; it is loud in the log.
            counters.drops[DropReason.HANDLER_ERROR] += len(frame.messages)
            logger.exception(
                "node %d: on_frame failed for a frame from node %d", self.node_id, from_node
            )

    def _learn_peer(self, node_id: int, address: str | bytes | None) -> None:
        """Add a sender to a node that opened a stream here but is not in the peer map, at
        the address it advertised. Why: a node that was down while another joined restarts
        with a peer map that lacks the newcomer (its --peers, or a shard map it has not
        caught up on), and the newcomer may lead the meta group. It dials us, but without
        its address our answers (append and heartbeat responses) are dropped as to an
        unknown peer, so we never catch up on the map that would name it: no progress
        ever. The next `set_peers` (the map, once applied) replaces what was learned."""
        if not isinstance(address, str) or len(self._senders) >= limits.PEERS_MAX:
            return
        try:
            _check_address(node_id, address)
        except ValueError:
            return
        self._add_sender(node_id, address)
        logger.info(
            "node %d: learned node %d's address %s from its stream (not in the peer map)",
            self.node_id,
            node_id,
            address,
        )

    def _record_refused_stream(self, from_node: int, problem: str) -> None:
        logger.warning("node %d refused a peer stream: %s", self.node_id, problem)
        counters = self._counters_for_other(from_node)
        counters.drops[DropReason.MISADDRESSED] += 1
        counters.last_error = f"refused stream: {problem}"

    # --- stats -----------------------------------------------------------------------------

    def _counters_for_peer(self, node_id: int) -> _Counters:
        """Counters of a node in the peer map (at most PEERS_MAX of them)."""
        counters = self._counters.get(node_id)
        if counters is None:
            counters = self._counters[node_id] = _Counters()
        return counters

    def _counters_for_other(self, node_id: int) -> _Counters:
        """Counters of any node id seen on the wire or passed to send(). Ids that are neither
        peers nor connected may be forgotten, and past the bound traffic is counted under node
        id 0, so that streams from ever-new ids cannot grow the stats without bound."""
        counters = self._counters.get(node_id)
        if counters is not None:
            return counters
        if len(self._counters) >= _COUNTERS_MAX:
            for known in list(self._counters):
                if (
                    known
                    and known not in self._senders
                    and not self._counters[known].inbound_streams
                ):
                    del self._counters[known]
        if len(self._counters) >= _COUNTERS_MAX:
            node_id = 0
        return self._counters_for_peer(node_id)

    def stats(self) -> TransportStats:
        """A consistent copy of the counters (the dashboard and /metrics read this)."""
        peers = []
        totals: Counter[DropReason] = Counter()
        for node_id in sorted(self._counters):
            counters = self._counters[node_id]
            sender = self._senders.get(node_id)
            totals.update(counters.drops)
            peers.append(
                PeerStats(
                    node_id=node_id,
                    address=sender.address if sender is not None else "",
                    connected=sender is not None and sender.connected,
                    inbound_streams=counters.inbound_streams,
                    frames_sent=counters.frames_sent,
                    messages_sent=counters.messages_sent,
                    bytes_sent=counters.bytes_sent,
                    frames_received=counters.frames_received,
                    messages_received=counters.messages_received,
                    bytes_received=counters.bytes_received,
                    reconnects=max(0, counters.connects - 1),
                    connect_failures=counters.connect_failures,
                    queued_messages=sender.buffered_messages if sender is not None else 0,
                    queued_bytes=sender.buffered_bytes if sender is not None else 0,
                    drops=dict(counters.drops),
                    last_error=counters.last_error,
                )
            )
        return TransportStats(
            node_id=self.node_id, address=self.address, peers=tuple(peers), drops=dict(totals)
        )
