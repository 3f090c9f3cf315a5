"""The peer transport over real gRPC servers on 127.0.0.1 (port 0): batching, reconnects,
bounded queues, fault rules, malformed input, and a clean stop.

Waits are on conditions: an inbox event set by the receiving callback, or (for sender-side
counters, which have no callback) a bounded poll of `stats()`. No test sleeps to "let things
settle".
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
import socket
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import grpc
import grpc.aio
import pytest

from minikv_core.cluster.peer_incarnations import PeerIncarnations
from minikv_core.net import limits
from minikv_core.net.fault import FaultFilter, FaultRules
from minikv_core.net.peer_transport import (
    FEATURE_PROPOSE,
    METADATA_CLUSTER_ID,
    METADATA_FROM_NODE,
    METADATA_NODE_ID,
    METADATA_TO_NODE,
    REFUSAL_FENCED,
    REFUSAL_FOREIGN,
    REFUSAL_RETIRED,
    STREAM_METHOD,
    AdmitPeer,
    DropReason,
    FrameHandler,
    PeerStats,
    PeerTransport,
    RefusalHandler,
    TransportConfig,
    TransportError,
)
from minikv_core.net.proto import raft_pb2
from minikv_core.net.raft_codec import encode_frame, encode_group_message
from minikv_core.raft import limits as raft_limits
from minikv_core.raft.types import Entry, Message, MessageType, SnapshotMetadata

WAIT_S = 10.0
FAST = TransportConfig(
    reconnect_backoff_initial_ms=10, reconnect_backoff_max_ms=80, connect_timeout_ms=2000
)


def heartbeat(sender: int, to: int, commit: int = 0) -> Message:
    return Message(MessageType.HEARTBEAT, to=to, sender=sender, term=3, commit=commit)


class Inbox:
    """The `on_frame` handler of one test node: records frames and wakes waiters."""

    def __init__(self) -> None:
        self.frames: list[tuple[int, list[tuple[int, Message]], float]] = []
        self._arrived = asyncio.Event()

    def __call__(self, from_node: int, messages: list[tuple[int, Message]]) -> None:
        self.frames.append((from_node, list(messages), asyncio.get_running_loop().time()))
        self._arrived.set()

    def groups(self, from_node: int) -> list[int]:
        return [
            group for sender, batch, _ in self.frames if sender == from_node for group, _ in batch
        ]

    def arrival_s(self, from_node: int, group: int) -> float:
        for sender, batch, at in self.frames:
            if sender == from_node and any(g == group for g, _ in batch):
                return at
        raise AssertionError(f"group {group} from node {from_node} never arrived")

    async def wait_for(self, predicate: Callable[[], bool], what: str) -> None:
        try:
            async with asyncio.timeout(WAIT_S):
                while not predicate():
                    self._arrived.clear()
                    await self._arrived.wait()
        except TimeoutError:
            raise AssertionError(
                f"timed out after {WAIT_S}s waiting for {what}; frames: {self.frames!r}"
            ) from None

    async def wait_for_group(self, from_node: int, group: int) -> None:
        await self.wait_for(
            lambda: group in self.groups(from_node), f"group {group} from node {from_node}"
        )


async def eventually(
    predicate: Callable[[], bool], what: str, on_poll: Callable[[], None] | None = None
) -> None:
    """Poll a sender-side condition (stats have no callback) until it holds, bounded."""
    try:
        async with asyncio.timeout(WAIT_S):
            while not predicate():
                if on_poll is not None:
                    on_poll()
                await asyncio.sleep(0.01)
    except TimeoutError:
        raise AssertionError(f"timed out after {WAIT_S}s waiting for {what}") from None


def peer_stats(transport: PeerTransport, node_id: int) -> PeerStats:
    for peer in transport.stats().peers:
        if peer.node_id == node_id:
            return peer
    raise AssertionError(f"node {transport.node_id} has no stats for node {node_id}")


def drops(transport: PeerTransport, node_id: int, reason: DropReason) -> int:
    for peer in transport.stats().peers:
        if peer.node_id == node_id:
            return peer.drops.get(reason, 0)
    return 0


async def send_until_received(sender: PeerTransport, to: int, inbox: Inbox, group: int) -> None:
    """Resend like Raft's heartbeats do until one arrives (the first may race a connect)."""

    async def keep_sending() -> None:
        while True:
            sender.send(to, [(group, heartbeat(sender.node_id, to))])
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(0.05):
                    await inbox.wait_for_group(sender.node_id, group)
                    return

    try:
        async with asyncio.timeout(WAIT_S):
            await keep_sending()
    except TimeoutError:
        raise AssertionError(
            f"node {sender.node_id} never reached node {to}: {sender.stats()!r}"
        ) from None


@contextlib.contextmanager
def dead_address() -> Iterator[str]:
    """An address nobody listens on: a bound socket without listen() refuses connections."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        yield f"127.0.0.1:{sock.getsockname()[1]}"


class Net:
    """Starts transports for a test and stops every one of them, whatever happens."""

    def __init__(self) -> None:
        self.transports: list[PeerTransport] = []

    async def start(
        self,
        node_id: int,
        peers: dict[int, str] | None = None,
        *,
        on_frame: FrameHandler | None = None,
        port: int = 0,
        config: TransportConfig = FAST,
        fault_filter: FaultFilter | None = None,
        cluster_id: str = "",
        fence: tuple[str, AdmitPeer, RefusalHandler] | None = None,
    ) -> tuple[PeerTransport, Inbox]:
        inbox = Inbox()
        transport = PeerTransport(
            node_id,
            peers or {},
            on_frame if on_frame is not None else inbox,
            rng=random.Random(node_id),
            port=port,
            config=config,
            fault_filter=fault_filter,
            cluster_id=cluster_id,
        )
        self.transports.append(transport)
        if fence is not None:
            transport.fence(*fence)
        await transport.start()
        return transport, inbox

    async def mesh(self, count: int) -> list[tuple[PeerTransport, Inbox]]:
        nodes = [await self.start(node_id) for node_id in range(1, count + 1)]
        addresses = {t.node_id: t.address for t, _ in nodes}
        for transport, _ in nodes:
            transport.set_peers(addresses)
        return nodes

    async def stop_all(self) -> None:
        await asyncio.gather(*(t.stop() for t in self.transports))


@pytest.fixture
async def net() -> AsyncIterator[Net]:
    harness = Net()
    try:
        yield harness
    finally:
        await harness.stop_all()


# --- exchange and batching ---------------------------------------------------------------


async def test_two_transports_exchange_messages_both_ways(net: Net) -> None:
    (a, inbox_a), (b, inbox_b) = await net.mesh(2)
    await send_until_received(a, 2, inbox_b, group=1)
    await send_until_received(b, 1, inbox_a, group=2)
    _, batch, _ = inbox_b.frames[-1]
    assert batch[-1] == (1, heartbeat(1, 2))
    assert a.is_connected(2) and b.is_connected(1)


async def test_the_handshake_tells_the_caller_what_the_callee_understands(net: Net) -> None:
    """A follower sends writes in a PROPOSE only to a leader that advertised it: an older node
    would drop the whole frame (unknown message type), acknowledgements included."""
    new, inbox_new = await net.start(2)
    old, inbox_old = await net.start(3)
    old.features = frozenset()  # plays a node from before PROPOSE
    a, _ = await net.start(1, {2: new.address, 3: old.address})
    assert not a.peer_supports(2, FEATURE_PROPOSE)  # nothing known before a stream is up
    await send_until_received(a, 2, inbox_new, group=1)
    await send_until_received(a, 3, inbox_old, group=1)
    assert a.peer_supports(2, FEATURE_PROPOSE)
    assert not a.peer_supports(3, FEATURE_PROPOSE)
    assert not a.peer_supports(4, FEATURE_PROPOSE)  # not a peer at all
    await new.stop()
    await eventually(lambda: not a.is_connected(2), "the stream to node 2 to break")
    assert not a.peer_supports(2, FEATURE_PROPOSE)  # forgotten with the stream


async def test_messages_of_many_groups_to_one_peer_travel_in_one_frame(net: Net) -> None:
    (a, _), (_b, inbox_b) = await net.mesh(2)
    await send_until_received(a, 2, inbox_b, group=0)
    frames_before = len(inbox_b.frames)
    # Two send() calls in the same loop turn, as a multi-raft host makes for two Readys.
    a.send(2, [(group, heartbeat(1, 2, commit=group)) for group in range(1, 65)])
    a.send(2, [(group, heartbeat(1, 2, commit=group)) for group in range(65, 75)])
    await inbox_b.wait_for_group(1, 74)
    new_frames = inbox_b.frames[frames_before:]
    assert len(new_frames) == 1, [len(batch) for _, batch, _ in new_frames]
    _, batch, _ = new_frames[0]
    assert batch == [(group, heartbeat(1, 2, commit=group)) for group in range(1, 75)]


async def test_three_transports_exchange_frames_in_a_full_mesh(net: Net) -> None:
    nodes = await net.mesh(3)
    for sender, _ in nodes:
        for receiver, inbox in nodes:
            if receiver is not sender:
                await send_until_received(sender, receiver.node_id, inbox, group=sender.node_id)
    for receiver, inbox in nodes:
        senders = {from_node for from_node, _, _ in inbox.frames}
        assert senders == {1, 2, 3} - {receiver.node_id}
        assert peer_stats(receiver, 1 if receiver.node_id != 1 else 2).inbound_streams == 1


async def test_frames_are_cut_at_the_message_and_byte_bounds(net: Net) -> None:
    b, inbox_b = await net.start(2)
    a, _ = await net.start(1, {2: b.address}, config=TransportConfig(frame_messages_max=10))
    await send_until_received(a, 2, inbox_b, group=0)
    before = len(inbox_b.frames)
    a.send(2, [(group, heartbeat(1, 2)) for group in range(1, 26)])
    await inbox_b.wait_for_group(1, 25)
    assert [len(batch) for _, batch, _ in inbox_b.frames[before:]] == [10, 10, 5]

    c, _ = await net.start(3, {2: b.address}, config=TransportConfig(frame_bytes_max=1000))
    await send_until_received(c, 2, inbox_b, group=0)
    before = len(inbox_b.frames)
    chunk = Message(MessageType.SNAPSHOT, to=2, sender=3, term=1, chunk_data=b"c" * 300)
    c.send(2, [(group, chunk) for group in range(1, 6)])
    await inbox_b.wait_for_group(3, 5)
    assert [len(batch) for _, batch, _ in inbox_b.frames[before:]] == [3, 2]


async def test_full_size_snapshot_chunks_and_append_cross_the_wire(net: Net) -> None:
    (a, _), (_b, inbox_b) = await net.mesh(2)
    await send_until_received(a, 2, inbox_b, group=0)
    chunk_bytes = raft_limits.SNAPSHOT_CHUNK_BYTES_MAX
    chunks = [
        Message(
            MessageType.SNAPSHOT,
            to=2,
            sender=1,
            term=4,
            snapshot=SnapshotMetadata(index=10, term=4),
            chunk_offset=offset * chunk_bytes,
            chunk_data=bytes([offset]) * chunk_bytes,
            chunk_done=offset == 3,
        )
        for offset in range(raft_limits.SNAPSHOT_CHUNKS_IN_FLIGHT_MAX)
    ]
    entry_bytes = limits.ENTRY_DATA_BYTES_MAX
    append = Message(
        MessageType.APPEND, to=2, sender=1, term=4, entries=(Entry(4, 11, data=b"e" * entry_bytes),)
    )
    a.send(2, [(1, chunk) for chunk in chunks] + [(2, append)])
    await inbox_b.wait_for_group(1, 2)
    received = [message for _, batch, _ in inbox_b.frames for g, message in batch if g in (1, 2)]
    assert received == [*chunks, append]
    assert a.stats().drops == {}


# --- bounds and bad input on the sending side ----------------------------------------------


async def test_oversize_message_is_dropped_at_send_and_counted(net: Net) -> None:
    with dead_address() as address:
        a, _ = await net.start(1, {2: address})
        too_big = Message(
            MessageType.SNAPSHOT, to=2, sender=1, term=1, chunk_data=b"x" * (2 * limits.MIB)
        )
        a.send(2, [(1, too_big)])
        assert drops(a, 2, DropReason.OVERSIZE) == 1
        assert peer_stats(a, 2).queued_messages == 0


async def test_full_queue_drops_new_messages_and_counts_them(net: Net) -> None:
    with dead_address() as address:
        a, _ = await net.start(1, {2: address}, config=TransportConfig(queue_messages_max=4))
        a.send(2, [(group, heartbeat(1, 2)) for group in range(10)])
        assert drops(a, 2, DropReason.QUEUE_FULL) == 6
        assert peer_stats(a, 2).queued_messages == 4
        # The next failed connection attempt drops what was buffered, rather than deliver it
        # stale after a reconnect.
        await eventually(
            lambda: drops(a, 2, DropReason.UNREACHABLE) == 4, "buffer dropped as unreachable"
        )
        assert peer_stats(a, 2).queued_messages == 0
        assert peer_stats(a, 2).connect_failures >= 1
        assert "cannot connect to node 2" in peer_stats(a, 2).last_error


async def test_full_queue_by_bytes_drops_new_messages(net: Net) -> None:
    with dead_address() as address:
        a, _ = await net.start(1, {2: address}, config=TransportConfig(queue_bytes_max=1000))
        chunk = Message(MessageType.SNAPSHOT, to=2, sender=1, term=1, chunk_data=b"c" * 300)
        a.send(2, [(group, chunk) for group in range(10)])
        assert drops(a, 2, DropReason.QUEUE_FULL) == 7
        stats = peer_stats(a, 2)
        assert stats.queued_messages == 3
        assert stats.queued_bytes <= 1000


async def test_send_to_a_node_without_address_is_dropped_and_counted(net: Net) -> None:
    a, _ = await net.start(1)
    a.send(9, [(1, heartbeat(1, 9)), (2, heartbeat(1, 9))])
    assert drops(a, 9, DropReason.UNKNOWN_PEER) == 2
    assert a.stats().drops == {DropReason.UNKNOWN_PEER: 2}


async def test_a_node_that_dials_in_is_answered_at_the_address_it_advertised(net: Net) -> None:
    """A node restarted with a stale peer map (down while node 1 joined) must still answer
    node 1, which may lead its groups: else it never catches up on the map naming node 1."""
    b, inbox_b = await net.start(2)
    a, inbox_a = await net.start(1, {2: b.address})
    assert b.peers == {}
    await send_until_received(a, 2, inbox_b, group=1)
    assert b.peers == {1: a.address}
    await send_until_received(b, 1, inbox_a, group=2)
    b.set_peers({})  # the map, once known, wins over what was learned
    assert b.peers == {}


async def test_a_bad_advertised_address_is_not_learned(net: Net) -> None:
    b, inbox_b = await net.start(2)
    a, _ = await net.start(1, {1: "not-an-address", 2: b.address})
    assert a.advertised_address == "not-an-address"
    await send_until_received(a, 2, inbox_b, group=1)
    assert b.peers == {}
    b.send(1, [(1, heartbeat(2, 1))])
    assert drops(b, 1, DropReason.UNKNOWN_PEER) == 1


async def test_invalid_arguments_raise_clear_errors(net: Net) -> None:
    a, _ = await net.start(1)
    with pytest.raises(ValueError, match="node 1 cannot send to itself"):
        a.send(1, [(1, heartbeat(1, 1))])
    with pytest.raises(ValueError, match="HEARTBEAT message from 1 to 3 handed to node 1's"):
        a.send(2, [(7, heartbeat(1, 3))])
    with pytest.raises(ValueError, match="address of node 2 must be 'host:port', got 'nowhere'"):
        a.set_peers({2: "nowhere"})
    with pytest.raises(ValueError, match="address of node 2 must be 'host:port'"):
        a.set_peers({2: "127.0.0.1:99999"})
    with pytest.raises(ValueError, match="peer node ids must be positive integers, got 0"):
        a.set_peers({0: "127.0.0.1:1"})
    with pytest.raises(ValueError, match="node_id must be a positive integer, got 0"):
        PeerTransport(0, {}, Inbox(), rng=random.Random(0))
    with pytest.raises(ValueError, match=r"queue_messages_max must be in \[1, 16384\], got 0"):
        TransportConfig(queue_messages_max=0)
    with pytest.raises(
        ValueError, match=r"frame_bytes_max must be in .*\(the gRPC message bound\)"
    ):
        TransportConfig(frame_bytes_max=limits.FRAME_BYTES_MAX + 1)
    with pytest.raises(ValueError, match="reconnect backoff must satisfy 0 < initial <= max"):
        TransportConfig(reconnect_backoff_initial_ms=500, reconnect_backoff_max_ms=100)


async def test_binding_a_taken_port_raises_transport_error(net: Net) -> None:
    a, _ = await net.start(1)
    with pytest.raises(TransportError, match=f"node 2 cannot bind 127.0.0.1:{a.port}"):
        await net.start(2, port=a.port)


# --- connections ---------------------------------------------------------------------------


async def test_peer_down_then_started_receives_after_reconnect(net: Net) -> None:
    b, inbox_b = await net.start(2)
    a, _ = await net.start(1, {2: b.address})
    await send_until_received(a, 2, inbox_b, group=1)
    port = b.port
    await b.stop()
    await eventually(
        lambda: not a.is_connected(2) and peer_stats(a, 2).connect_failures >= 1,
        "node 1 to notice node 2 is down and fail to reconnect",
        on_poll=lambda: a.send(2, [(2, heartbeat(1, 2))]),
    )
    assert drops(a, 2, DropReason.UNREACHABLE) > 0
    # Node 2 restarts on the same port, as a restarted process does.
    _b2, inbox_b2 = await net.start(2, port=port)
    await send_until_received(a, 2, inbox_b2, group=3)
    stats = peer_stats(a, 2)
    assert stats.connected
    assert stats.reconnects == 1


async def test_address_change_reconnects_to_the_new_address(net: Net) -> None:
    b, inbox_b = await net.start(2)
    with dead_address() as address:
        a, _ = await net.start(1, {2: address})
        await eventually(
            lambda: peer_stats(a, 2).connect_failures >= 1, "a failed attempt at the old address"
        )
        a.set_peers({2: b.address})
        assert a.peers == {2: b.address}
        await send_until_received(a, 2, inbox_b, group=1)


async def test_removed_peer_is_disconnected_and_later_sends_are_dropped(net: Net) -> None:
    (a, inbox_a), (b, inbox_b) = await net.mesh(2)
    await send_until_received(a, 2, inbox_b, group=1)
    # Node 2's stream to node 1 must be open before node 1 drops it: one that opened later
    # would have node 1 learn node 2's address again (`_learn_peer`) and dial it back
    # (1 run in 12 did).
    await send_until_received(b, 1, inbox_a, group=2)
    a.set_peers({})
    assert a.peers == {}
    await eventually(
        lambda: peer_stats(b, 1).inbound_streams == 0, "node 2 to see node 1's stream close"
    )
    a.send(2, [(2, heartbeat(1, 2))])
    assert drops(a, 2, DropReason.UNKNOWN_PEER) == 1


async def test_stop_leaves_no_pending_tasks() -> None:
    current = asyncio.current_task()
    before = asyncio.all_tasks()
    harness = Net()
    try:
        nodes = await harness.mesh(3)
        for sender, _ in nodes:
            for receiver, inbox in nodes:
                if receiver is not sender:
                    await send_until_received(sender, receiver.node_id, inbox, group=1)
        with dead_address() as address:
            # A peer in reconnect backoff, and a message buffered at stop.
            nodes[0][0].set_peers({2: nodes[1][0].address, 3: nodes[2][0].address, 4: address})
            nodes[0][0].send(4, [(1, heartbeat(1, 4))])
    finally:
        await harness.stop_all()
    ours = [task.get_name() for task in asyncio.all_tasks() if task.get_name().startswith("minikv")]
    assert ours == []
    a = nodes[0][0]
    a.send(2, [(1, heartbeat(1, 2))])
    assert drops(a, 2, DropReason.STOPPED) == 1
    await a.stop()  # idempotent
    # gRPC's own per-call tasks finish within a few loop turns after the server stopped.
    await eventually(lambda: not (asyncio.all_tasks() - before - {current}), "gRPC tasks to finish")


# --- fault rules ---------------------------------------------------------------------------


async def test_drop_to_blocks_outbound_only(net: Net) -> None:
    (a, inbox_a), (b, inbox_b) = await net.mesh(2)
    await send_until_received(a, 2, inbox_b, group=0)
    a.fault_filter.set(FaultRules(drop_to=frozenset({2})))
    a.send(2, [(1, heartbeat(1, 2))])
    await eventually(lambda: drops(a, 2, DropReason.FAULT_DROP_TO) == 1, "the cut frame")
    await send_until_received(b, 1, inbox_a, group=2)  # the other direction is open
    a.fault_filter.clear()
    await send_until_received(a, 2, inbox_b, group=3)
    # One stream, FIFO: had group 1 been sent it would have arrived before group 3.
    assert 1 not in inbox_b.groups(1)


async def test_drop_from_blocks_inbound_only(net: Net) -> None:
    (a, inbox_a), (b, inbox_b) = await net.mesh(2)
    await send_until_received(a, 2, inbox_b, group=0)
    b.fault_filter.set(FaultRules(drop_from=frozenset({1})))
    a.send(2, [(1, heartbeat(1, 2))])
    await eventually(lambda: drops(b, 1, DropReason.FAULT_DROP_FROM) == 1, "the cut frame")
    await send_until_received(b, 1, inbox_a, group=2)  # node 2 still sends to node 1
    b.fault_filter.clear()
    await send_until_received(a, 2, inbox_b, group=3)
    assert 1 not in inbox_b.groups(1)
    assert drops(a, 2, DropReason.FAULT_DROP_TO) == 0


async def test_symmetric_partition_cuts_both_ways_spares_others_and_clear_heals(net: Net) -> None:
    (a, inbox_a), (b, inbox_b), (c, inbox_c) = await net.mesh(3)
    for sender, to, inbox in ((a, 2, inbox_b), (b, 1, inbox_a)):
        await send_until_received(sender, to, inbox, group=0)
    a.fault_filter.set(FaultRules.partition({2}))
    b.fault_filter.set(FaultRules.partition({1}))
    a.send(2, [(1, heartbeat(1, 2))])
    b.send(1, [(1, heartbeat(2, 1))])
    await eventually(
        lambda: (
            drops(a, 2, DropReason.FAULT_DROP_TO) == 1
            and drops(b, 1, DropReason.FAULT_DROP_TO) == 1
        ),
        "both directions cut",
    )
    # The third node talks to both sides.
    await send_until_received(a, 3, inbox_c, group=2)
    await send_until_received(b, 3, inbox_c, group=2)
    await send_until_received(c, 1, inbox_a, group=2)
    await send_until_received(c, 2, inbox_b, group=2)
    a.fault_filter.clear()
    b.fault_filter.clear()
    await send_until_received(a, 2, inbox_b, group=3)
    await send_until_received(b, 1, inbox_a, group=3)
    assert 1 not in inbox_b.groups(1)
    assert 1 not in inbox_a.groups(2)


async def test_loss_with_a_seeded_rng_drops_exactly_the_predicted_frames(net: Net) -> None:
    seed, loss, frames = 1234, 0.3, 400
    b, inbox_b = await net.start(2)
    a, _ = await net.start(
        1,
        {2: b.address},
        config=TransportConfig(frame_messages_max=1),
        fault_filter=FaultFilter(random.Random(seed)),
    )
    await send_until_received(a, 2, inbox_b, group=0)
    a.fault_filter.set(FaultRules(loss=loss))
    a.send(2, [(group, heartbeat(1, 2)) for group in range(1, frames + 1)])
    replica = random.Random(seed)  # one draw per frame, in frame order
    expected = [group for group in range(1, frames + 1) if not replica.random() < loss]
    await inbox_b.wait_for_group(1, expected[-1])
    assert [group for group in inbox_b.groups(1) if group > 0] == expected, f"seed={seed}"
    lost = frames - len(expected)
    assert drops(a, 2, DropReason.FAULT_LOSS) == lost
    sigma = math.sqrt(frames * loss * (1 - loss))
    assert abs(lost - frames * loss) <= 4 * sigma, f"seed={seed} lost={lost}"


async def test_delay_holds_frames_and_clear_heals(net: Net) -> None:
    delay_ms = 500
    (a, _), (_b, inbox_b) = await net.mesh(2)
    await send_until_received(a, 2, inbox_b, group=0)
    loop = asyncio.get_running_loop()
    a.fault_filter.set(FaultRules(delay_ms=delay_ms))
    sent_at = loop.time()
    a.send(2, [(1, heartbeat(1, 2))])
    a.send(2, [(2, heartbeat(1, 2))])
    await inbox_b.wait_for_group(1, 2)
    assert inbox_b.arrival_s(1, 1) - sent_at >= delay_ms / 1000
    assert inbox_b.groups(1)[-2:] == [1, 2], "a delay keeps the order"
    a.fault_filter.clear()
    healed_at = loop.time()
    a.send(2, [(3, heartbeat(1, 2))])
    await inbox_b.wait_for_group(1, 3)
    assert inbox_b.arrival_s(1, 3) - healed_at < delay_ms / 1000


# --- bad input on the receiving side -------------------------------------------------------


def _raw_frame(from_node: int, to_node: int, message: raft_pb2.Message, group: int = 1) -> bytes:
    return raft_pb2.RaftFrame(
        from_node=from_node,
        to_node=to_node,
        messages=[raft_pb2.GroupMessage(group_id=group, message=message)],
    ).SerializeToString()


async def test_malformed_frames_are_counted_and_dropped_and_the_stream_keeps_serving(
    net: Net, caplog: pytest.LogCaptureFixture
) -> None:
    b, inbox_b = await net.start(2)
    channel = grpc.aio.insecure_channel(b.address)
    try:
        call = channel.stream_unary(STREAM_METHOD)(
            metadata=((METADATA_FROM_NODE, "1"), (METADATA_TO_NODE, "2"), (METADATA_CLUSTER_ID, ""))
        )
        assert (await call.initial_metadata()).get(METADATA_NODE_ID) == "2"
        with caplog.at_level(logging.WARNING, logger="minikv_core.net.peer_transport"):
            await call.write(b"\xff\xff\xff")  # not protobuf
            await call.write(
                _raw_frame(1, 2, raft_pb2.Message(type=99, to=2, sender=1))  # type: ignore[arg-type]
            )
            await call.write(  # the message claims another sender than the stream
                encode_frame(1, 2, [encode_group_message(1, heartbeat(5, 2))])
            )
            await call.write(  # the frame claims another sender than the stream
                encode_frame(7, 2, [encode_group_message(1, heartbeat(7, 2))])
            )
            await call.write(encode_frame(1, 2, [encode_group_message(9, heartbeat(1, 2))]))
            await inbox_b.wait_for_group(1, 9)
        await call.done_writing()
        summary = raft_pb2.RaftStreamSummary.FromString(await call)
    finally:
        await channel.close()
    assert summary.frames_received == 5
    assert [batch for _, batch, _ in inbox_b.frames] == [[(9, heartbeat(1, 2))]]
    stats = peer_stats(b, 1)
    assert stats.drops == {DropReason.MALFORMED: 4}
    assert stats.frames_received == 5 and stats.messages_received == 1
    logged = caplog.text
    assert "does not parse" in logged
    assert "unknown message type 99" in logged
    assert "HEARTBEAT message from 5 to 2 in a frame from node 1" in logged
    assert "frame from node 7 to node 2 on the stream from node 1" in logged
    # And a regular peer is still served.
    a, _ = await net.start(1, {2: b.address})
    await send_until_received(a, 2, inbox_b, group=10)


async def test_stream_for_another_node_is_refused_at_the_handshake(net: Net) -> None:
    b, _ = await net.start(2)
    a, _ = await net.start(1, {3: b.address})  # stale map: node 2 now listens there
    await eventually(
        lambda: "reached node 2" in peer_stats(a, 3).last_error,
        "node 1 to be refused",
        on_poll=lambda: a.send(3, [(1, heartbeat(1, 3))]),
    )
    assert peer_stats(a, 3).last_error.endswith(
        "refused the stream to node 3: FAILED_PRECONDITION: stream for node 3 reached node 2"
    )
    assert not a.is_connected(3)
    assert drops(b, 1, DropReason.MISADDRESSED) >= 1
    assert peer_stats(b, 1).messages_received == 0


async def test_stream_from_another_cluster_is_refused_at_the_handshake(net: Net) -> None:
    b, inbox_b = await net.start(2, cluster_id="beta")
    a, _ = await net.start(1, {2: b.address}, cluster_id="alpha")
    await eventually(
        lambda: "FAILED_PRECONDITION" in peer_stats(a, 2).last_error,
        "node 1 to be refused",
        on_poll=lambda: a.send(2, [(1, heartbeat(1, 2))]),
    )
    assert "stream from cluster 'alpha' reached node 2 of cluster 'beta'" in (
        peer_stats(a, 2).last_error
    )
    assert inbox_b.frames == []


async def test_a_node_back_with_other_data_is_refused_and_told_so(net: Net, tmp_path: Path) -> None:
    """Node 2 talks to node 1 with incarnation bbbb, then comes back (same id and address
    book) with cccc, as a node whose data directory was made anew: node 1 refuses its stream
    before reading a frame, and node 2 hears why (its host then stops)."""
    book = PeerIncarnations.open(tmp_path / "peers-1.json", 1)
    a, inbox = await net.start(1, fence=("aaaa", book.admit, lambda kind, reason: None))
    told_first: list[tuple[str, str]] = []
    first, _ = await net.start(
        2, {1: a.address}, fence=("bbbb", _book(tmp_path, 2).admit, _collect(told_first))
    )
    await send_until_received(first, 1, inbox, group=7)
    assert book.known == {2: "bbbb"}
    await first.stop()

    told: list[tuple[str, str]] = []
    again, _ = await net.start(
        2, {1: a.address}, fence=("cccc", _book(tmp_path, 2).admit, _collect(told))
    )
    await eventually(
        lambda: bool(told), "node 2 to be told", lambda: again.send(1, [(9, heartbeat(2, 1))])
    )
    kind, reason = told[0]
    assert kind == REFUSAL_FENCED
    assert reason.startswith("node 1 knew node 2 with other data (incarnation bbbb, now cccc)")
    assert "FAILED_PRECONDITION" in peer_stats(again, 1).last_error
    assert 9 not in inbox.groups(2) and told_first == []
    assert PeerIncarnations.open(tmp_path / "peers-1.json", 1).known == {2: "bbbb"}


def _book(tmp_path: Path, node_id: int) -> PeerIncarnations:
    return PeerIncarnations.open(tmp_path / f"peers-{node_id}.json", node_id)


def _collect(told: list[tuple[str, str]]) -> RefusalHandler:
    return lambda kind, reason: told.append((kind, reason))


async def test_a_retired_node_is_cut_off_and_told_it_was_removed(net: Net) -> None:
    """Node 2 streams to node 1; node 1's map then retires node 2 (remove-node finished
    without node 2 hearing of it): the open stream is cut at node 2's next frame, a new one
    is refused at the handshake, and node 2 is told why (its host then stops)."""
    a, inbox = await net.start(1)
    told: list[tuple[str, str]] = []
    b, _ = await net.start(2, {1: a.address}, fence=("bbbb", _admit_all, _collect(told)))
    await send_until_received(b, 1, inbox, group=7)
    assert b.is_connected(1)

    a.retire([2, 5])
    await eventually(
        lambda: bool(told), "node 2 to be told", lambda: b.send(1, [(9, heartbeat(2, 1))])
    )
    assert told[0] == (
        REFUSAL_RETIRED,
        "node 2 was removed from the cluster (node 1's shard map retires its id): a removed "
        "node must not rejoin; add a new node instead",
    )
    assert 9 not in inbox.groups(2), "nothing from a retired node is delivered"
    # Reconnecting does not help: the handshake refuses it too, before any frame.
    told.clear()
    await eventually(
        lambda: bool(told), "node 2 to be refused again", lambda: b.send(1, [(10, heartbeat(2, 1))])
    )
    assert told[0][0] == REFUSAL_RETIRED
    assert 10 not in inbox.groups(2)
    assert drops(a, 2, DropReason.MISADDRESSED) >= 2


async def test_a_node_of_another_cluster_is_told_once_most_of_its_peers_refused_it(
    net: Net, caplog: pytest.LogCaptureFixture
) -> None:
    """Node 4 was started with other founding flags (another cluster id) than nodes 1-3, as
    a node that lost its data and was started with today's --peers is. Each refuses it; it
    is told as a whole only once a majority of its peers did. Node 1 meets the same refusal
    from node 4 alone, one peer of three: it must carry on."""
    told_1: list[tuple[str, str]] = []
    told_4: list[tuple[str, str]] = []
    one, _ = await net.start(1, cluster_id="alpha", fence=("aaaa", _admit_all, _collect(told_1)))
    two, inbox_2 = await net.start(2, cluster_id="alpha")
    three, _ = await net.start(3, cluster_id="alpha")
    odd, _ = await net.start(4, cluster_id="beta", fence=("dddd", _admit_all, _collect(told_4)))
    one.set_peers({2: two.address, 3: three.address, 4: odd.address})

    def knock() -> None:
        for peer in odd.peers:
            odd.send(peer, [(1, heartbeat(4, peer))])

    with dead_address() as nowhere:
        # Nodes 2 and 3 unreachable at first: node 1's refusal is one of four peers' words.
        odd.set_peers({1: one.address, 2: nowhere, 3: nowhere, 5: nowhere})
        with caplog.at_level(logging.WARNING, logger="minikv_core.net.peer_transport"):
            await eventually(
                lambda: "node 1 refused it as a node of another cluster" in caplog.text,
                "node 1's refusal to be noted",
                knock,
            )
        assert told_4 == []
        odd.set_peers({1: one.address, 2: two.address, 3: three.address, 5: nowhere})
        await eventually(lambda: bool(told_4), "node 4 to be told", knock)
    kind, reason = told_4[0]
    assert kind == REFUSAL_FOREIGN
    assert reason.startswith("3 of its 4 peers (nodes 1, 2, 3) refused it as a node of another")
    assert "'beta'" in reason and "'alpha'" in reason
    assert reason.endswith(
        "Start it with the flags it was created with, or add it as a new node (--join)"
    )
    # Node 1 was refused by node 4 meanwhile (one of its three peers) and serves on.
    await eventually(lambda: drops(odd, 1, DropReason.MISADDRESSED) >= 1, "node 4 to refuse node 1")
    assert told_1 == []
    await send_until_received(one, 2, inbox_2, group=3)


async def test_of_two_nodes_of_different_clusters_neither_stops(
    net: Net, caplog: pytest.LogCaptureFixture
) -> None:
    """Two nodes refusing each other: neither can tell which one has the wrong flags."""
    told: list[tuple[str, str]] = []
    a, _ = await net.start(1, cluster_id="alpha", fence=("aaaa", _admit_all, _collect(told)))
    b, _ = await net.start(2, cluster_id="beta", fence=("bbbb", _admit_all, _collect(told)))
    a.set_peers({2: b.address})
    b.set_peers({1: a.address})

    def knock() -> None:
        a.send(2, [(1, heartbeat(1, 2))])
        b.send(1, [(1, heartbeat(2, 1))])

    with caplog.at_level(logging.WARNING, logger="minikv_core.net.peer_transport"):
        await eventually(
            lambda: (
                "node 1 refused it as a node of another cluster" in caplog.text
                and "node 2 refused it as a node of another cluster" in caplog.text
            ),
            "both refusals to be noted",
            knock,
        )
        refused = peer_stats(a, 2).connect_failures
        await eventually(
            lambda: peer_stats(a, 2).connect_failures >= refused + 3, "more refusals", knock
        )
    assert told == []
    # Said once per peer, not at every reconnect.
    assert caplog.text.count("node 2 refused it as a node of another cluster") == 1


async def test_a_refusal_without_an_owner_is_logged(
    net: Net, caplog: pytest.LogCaptureFixture
) -> None:
    a, _ = await net.start(1)
    a.retire([2])
    b, _ = await net.start(2, {1: a.address})
    with caplog.at_level(logging.ERROR, logger="minikv_core.net.peer_transport"):
        await eventually(
            lambda: "node 1 refused this node: node 2 was removed" in caplog.text,
            "the refusal to be logged",
            lambda: b.send(1, [(1, heartbeat(2, 1))]),
        )


async def _admit_all(node_id: int, incarnation: str) -> str:
    return ""


async def test_handler_exception_is_counted_and_the_stream_keeps_serving(net: Net) -> None:
    inbox = Inbox()

    def fragile(from_node: int, messages: list[tuple[int, Message]]) -> None:
        inbox(from_node, messages)
        if any(group == 13 for group, _ in messages):
            raise RuntimeError("host bug")

    b, _ = await net.start(2, on_frame=fragile)
    a, _ = await net.start(1, {2: b.address})
    await send_until_received(a, 2, inbox, group=1)
    a.send(2, [(13, heartbeat(1, 2))])
    await inbox.wait_for_group(1, 13)
    await send_until_received(a, 2, inbox, group=14)
    assert drops(b, 1, DropReason.HANDLER_ERROR) == 1
    assert peer_stats(a, 2).reconnects == 0, "the stream survived the handler's exception"


async def test_byte_and_frame_counts_agree_on_both_sides(net: Net) -> None:
    (a, _), (b, inbox_b) = await net.mesh(2)
    await send_until_received(a, 2, inbox_b, group=1)
    a.send(2, [(group, heartbeat(1, 2)) for group in range(2, 40)])
    await inbox_b.wait_for_group(1, 39)
    # The receiver can see a frame before the sender's write() call has returned.
    await eventually(lambda: peer_stats(a, 2).queued_messages == 0, "the sender to settle")
    sent, received = peer_stats(a, 2), peer_stats(b, 1)
    assert sent.frames_sent == received.frames_received
    assert sent.messages_sent == received.messages_received
    assert sent.bytes_sent == received.bytes_received > 0


# --- a shared server (the node's one gRPC server) -------------------------------------------

_ECHO_METHOD = "/minikv.test.Echo/Echo"


def _echo_handler() -> grpc.GenericRpcHandler:
    async def echo(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        return request

    return grpc.method_handlers_generic_handler(
        "minikv.test.Echo", {"Echo": grpc.unary_unary_rpc_method_handler(echo)}
    )


async def _shared_node(
    node_id: int, peers: dict[int, str] | None = None
) -> tuple[grpc.aio.Server, PeerTransport, Inbox]:
    """A server with another service on it, bound first, then the transport on it."""
    server = grpc.aio.server(options=(("grpc.so_reuseport", 0),))
    server.add_generic_rpc_handlers((_echo_handler(),))
    port = server.add_insecure_port("127.0.0.1:0")
    inbox = Inbox()
    transport = PeerTransport(
        node_id,
        peers or {},
        inbox,
        rng=random.Random(node_id),
        port=port,
        config=FAST,
        server=server,
    )
    await server.start()
    return server, transport, inbox


async def test_transports_on_shared_servers_exchange_and_leave_the_server_to_its_owner() -> None:
    server_a, a, inbox_a = await _shared_node(1)
    server_b, b, inbox_b = await _shared_node(2)
    try:
        a.set_peers({2: b.address})
        b.set_peers({1: a.address})
        await a.start()
        await b.start()
        await send_until_received(a, 2, inbox_b, group=1)
        await send_until_received(b, 1, inbox_a, group=2)
        assert b.address == f"127.0.0.1:{b.port}"
        await b.stop()
        # The owner's server still serves its other service after the transport stopped ...
        async with grpc.aio.insecure_channel(b.address) as channel:
            echoed = await channel.unary_unary(_ECHO_METHOD)(b"ping", timeout=WAIT_S)
            assert echoed == b"ping"
            # ... and refuses new Raft streams instead of delivering to a stopped node.
            call = channel.stream_unary(STREAM_METHOD)(
                metadata=(
                    (METADATA_FROM_NODE, "1"),
                    (METADATA_TO_NODE, "2"),
                    (METADATA_CLUSTER_ID, ""),
                )
            )
            await call.done_writing()
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await call
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        await a.stop()
        await b.stop()
        await server_a.stop(None)
        await server_b.stop(None)


async def test_frames_reaching_a_shared_server_before_start_are_refused() -> None:
    server_b, b, inbox_b = await _shared_node(2)
    server_a, a, _ = await _shared_node(1, {2: b.address})
    try:
        await a.start()
        a.send(2, [(1, heartbeat(1, 2))])
        await eventually(
            lambda: peer_stats(a, 2).connect_failures > 0, "the refused stream to be counted"
        )
        assert inbox_b.frames == []
        await b.start()
        await send_until_received(a, 2, inbox_b, group=1)
    finally:
        await a.stop()
        await b.stop()
        await server_a.stop(None)
        await server_b.stop(None)


async def test_a_shared_server_must_be_bound_first() -> None:
    server = grpc.aio.server()
    with pytest.raises(ValueError, match="bound"):
        PeerTransport(1, {}, Inbox(), rng=random.Random(0), server=server)
    await server.stop(None)
