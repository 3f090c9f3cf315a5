"""Log compaction and chunked InstallSnapshot (Raft §7)."""

from __future__ import annotations

import random
from dataclasses import replace

import pytest

from minikv_core.raft.node import CompactionError, Config, RawNode
from minikv_core.raft.storage import MemoryStorage
from minikv_core.raft.types import (
    ConfState,
    Message,
    MessageType,
    ProgressState,
    SnapshotMetadata,
)
from tests.raft.harness import Network

CHUNK_BYTES = 1000
CHUNKS_IN_FLIGHT = 2
IMAGE = bytes(range(256)) * 37 + b"end"  # 9,475 bytes: 10 chunks


def small_chunks(config: Config) -> Config:
    return replace(
        config,
        snapshot_chunk_bytes_max=CHUNK_BYTES,
        snapshot_chunks_in_flight_max=CHUNKS_IN_FLIGHT,
    )


def lagging_follower_network() -> tuple[Network, int]:
    """Leader 1 and node 2 compact past entries node 3 (cut off) never received.

    Returns the network and the snapshot index.
    """
    net = Network([1, 2, 3], configure=small_chunks)
    net.campaign(1)
    net.isolate(3)
    for index in range(20):
        net.node(1).propose(f"v{index}".encode())
    net.settle()
    snapshot_index = net.node(1).status().applied
    for node_id in (1, 2):
        net.node(node_id).compact(snapshot_index, IMAGE)
    assert net.node(1).status().first_index == snapshot_index + 1
    return net, snapshot_index


def test_slow_follower_is_restored_by_chunked_snapshot_then_appends_resume() -> None:
    """Raft §7: a follower that needs compacted entries receives the snapshot, in bounded
    chunks with bounded chunks in flight, installs it on the last chunk, then receives
    appends again."""
    net, snapshot_index = lagging_follower_network()
    net.heal()
    net.tick(ticks=3)
    follower = net.peers[3]
    assert len(follower.installed_snapshots) == 1
    installed = follower.installed_snapshots[0]
    assert installed.data == IMAGE
    assert installed.metadata.index == snapshot_index
    assert installed.metadata.conf_state == ConfState(voters=(1, 2, 3))

    chunks = [m for m in net.sent(MessageType.SNAPSHOT, sender=1) if m.to == 3]
    assert all(len(m.chunk_data) <= CHUNK_BYTES for m in chunks)
    assert sorted({m.chunk_offset for m in chunks}) == list(range(0, len(IMAGE), CHUNK_BYTES))
    assert [m.chunk_done for m in chunks].count(True) >= 1
    per_ready = [
        sum(1 for m in ready.messages if m.type == MessageType.SNAPSHOT)
        for ready in net.peers[1].readies
    ]
    assert max(per_ready) == CHUNKS_IN_FLIGHT

    net.propose(1, b"after")
    assert net.applied_commands(3) == [b"after"]
    status = net.node(3).status()
    assert status.first_index == snapshot_index + 1
    assert status.applied == status.commit == net.node(1).status().commit
    peer = next(p for p in net.node(1).status().peers if p.node_id == 3)
    assert peer.state == ProgressState.REPLICATE


def test_lost_snapshot_chunk_is_resent_and_the_install_completes() -> None:
    """A chunk lost in the network leaves a gap: the follower rejects the next chunk with
    the offset it holds, or the heartbeat path notices the stall; the leader resends."""
    net, snapshot_index = lagging_follower_network()
    dropped: list[Message] = []

    def drop_one_chunk(message: Message) -> bool:
        is_target = message.type == MessageType.SNAPSHOT and message.chunk_offset == 3 * CHUNK_BYTES
        if is_target and not dropped:
            dropped.append(message)
            return False
        return True

    net.message_filter = drop_one_chunk
    net.heal()
    net.tick(ticks=5)
    assert dropped, "the scenario never dropped a chunk"
    installed = net.peers[3].installed_snapshots
    assert [s.data for s in installed] == [IMAGE]
    assert installed[0].metadata.index == snapshot_index
    resent = [
        m for m in net.sent(MessageType.SNAPSHOT, sender=1) if m.chunk_offset == 3 * CHUNK_BYTES
    ]
    assert len(resent) >= 1


def test_lost_last_chunk_is_resent_by_the_heartbeat_path() -> None:
    """If the final chunk (and so the final acknowledgement) is lost nothing else would
    trigger a resend: the leader resends when a heartbeat round shows no progress."""
    net, _ = lagging_follower_network()
    dropped: list[Message] = []

    def drop_last_chunk_once(message: Message) -> bool:
        if message.type == MessageType.SNAPSHOT and message.chunk_done and not dropped:
            dropped.append(message)
            return False
        return True

    net.message_filter = drop_last_chunk_once
    net.heal()
    net.tick(ticks=6)
    assert dropped
    assert [s.data for s in net.peers[3].installed_snapshots] == [IMAGE]


def test_follower_assembles_chunks_only_in_offset_order() -> None:
    """Out-of-order chunks are refused with the contiguous byte count held, so the leader
    resends from there; duplicates are acknowledged without changing the buffer."""
    storage = MemoryStorage(ConfState(voters=(1, 2)))
    follower = RawNode(Config(node_id=2), storage, random.Random(1))
    metadata = SnapshotMetadata(index=40, term=3, conf_state=ConfState(voters=(1, 2)))
    data = b"abcdefghij"

    def chunk(offset: int, size: int) -> Message:
        piece = data[offset : offset + size]
        return Message(
            MessageType.SNAPSHOT,
            2,
            1,
            term=3,
            snapshot=metadata,
            chunk_offset=offset,
            chunk_data=piece,
            chunk_done=offset + len(piece) == len(data),
        )

    follower.step(chunk(0, 4))
    follower.step(chunk(8, 2))  # gap: bytes 4..8 missing
    follower.step(chunk(0, 4))  # duplicate
    first = follower.ready()
    responses = [(m.type, m.chunk_offset, m.reject) for m in first.messages]
    assert responses == [
        (MessageType.SNAPSHOT_RESPONSE, 4, False),
        (MessageType.SNAPSHOT_RESPONSE, 4, True),
        (MessageType.SNAPSHOT_RESPONSE, 4, False),
    ]
    assert first.snapshot.is_empty  # nothing to install yet
    storage.persist(first)
    follower.advance(first)
    follower.step(chunk(4, 4))
    follower.step(chunk(8, 2))
    ready = follower.ready()
    assert ready.snapshot.data == data
    assert ready.snapshot.metadata == metadata
    assert ready.hard_state is not None and ready.hard_state.commit == 40
    final = ready.messages[-1]
    assert (final.type, final.index, final.reject) == (MessageType.APPEND_RESPONSE, 40, False)
    assert not ready.committed_entries  # nothing is applied on top of an uninstalled image
    storage.persist(ready)
    follower.advance(ready)
    status = follower.status()
    assert (status.first_index, status.last_index, status.applied) == (41, 40, 40)


def test_follower_needing_a_newer_snapshot_after_installing_one_gets_it() -> None:
    """If the leader compacts again while a follower installs a snapshot, the follower's
    acknowledgement puts it back into probing, which finds the new gap and ships the newer
    snapshot instead of resending the old one forever."""
    net, first_index = lagging_follower_network()
    held: list[Message] = []

    def hold_install_ack(message: Message) -> bool:
        if (
            message.sender == 3
            and message.type == MessageType.APPEND_RESPONSE
            and message.index == first_index
            and not held
        ):
            held.append(message)
            return False
        return True

    net.message_filter = hold_install_ack
    net.heal()
    net.tick(ticks=3)
    assert held, "the install acknowledgement was never sent"
    net.cut(1, 3)
    net.cut(3, 1)
    for index in range(5):
        net.node(1).propose(f"w{index}".encode())
    net.settle()
    second_index = net.node(1).status().applied
    second_image = b"newer-image"
    for node_id in (1, 2):
        net.node(node_id).compact(second_index, second_image)
    net.heal()
    net.message_filter = None
    net.tick(ticks=6)
    images = [s.data for s in net.peers[3].installed_snapshots]
    assert images == [IMAGE, second_image]
    assert net.node(3).status().commit == net.node(1).status().commit


def test_restart_after_installing_a_snapshot_starts_from_it() -> None:
    """Raft §7: the snapshot replaces the log prefix durably; a restart resumes after it."""
    net, snapshot_index = lagging_follower_network()
    net.heal()
    net.tick(ticks=3)
    net.restart(3)
    status = net.node(3).status()
    assert status.first_index == snapshot_index + 1
    assert status.applied == snapshot_index
    assert status.conf_state == ConfState(voters=(1, 2, 3))
    net.propose(1, b"after-restart")
    assert net.applied_commands(3) == [b"after-restart"]


def test_compact_refuses_indexes_outside_the_applied_log() -> None:
    """A snapshot must describe applied state: compacting past applied (or to an already
    compacted index) is a host bug reported by CompactionError."""
    net = Network([1, 2, 3])
    net.campaign(1)
    net.propose(1, b"x")
    node = net.node(1)
    applied = node.status().applied
    with pytest.raises(CompactionError, match="applied"):
        node.compact(applied + 1, b"")
    node.compact(applied, b"image")
    with pytest.raises(CompactionError):
        node.compact(applied, b"image")
    assert net.peers[1].storage.snapshot().data == b"image"
