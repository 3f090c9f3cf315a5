"""The simulator's building blocks: event order, network faults, the crash-model disk, trace."""

from __future__ import annotations

import random
from typing import TypeVar

import pytest

from minikv_core.raft.sim import limits
from minikv_core.raft.sim.clock import EventQueue, EventQueueFullError
from minikv_core.raft.sim.disk import Disk, DiskInvariantError, StateMachineImage
from minikv_core.raft.sim.network import Deliver, Network
from minikv_core.raft.sim.state_machine import KvStateMachine, WriteCommand
from minikv_core.raft.sim.trace import Trace
from minikv_core.raft.types import (
    ConfState,
    Entry,
    EntryType,
    HardState,
    Snapshot,
    SnapshotMetadata,
)


def test_events_at_equal_times_pop_in_scheduling_order() -> None:
    queue: EventQueue[str] = EventQueue(10)
    queue.schedule(5, "b")
    queue.schedule(5, "c")
    queue.schedule(1, "a")
    assert [queue.pop(), queue.pop(), queue.pop(), queue.pop()] == ["a", "b", "c", None]
    assert queue.now_ms == 5


def test_event_queue_over_its_bound_raises() -> None:
    queue: EventQueue[int] = EventQueue(2)
    queue.schedule(0, 1)
    queue.schedule(0, 2)
    with pytest.raises(EventQueueFullError, match="events_pending_max=2"):
        queue.schedule(0, 3)


MessageT = TypeVar("MessageT")


def _drain(
    queue: EventQueue[object], network: Network[MessageT]
) -> list[tuple[int, int, MessageT]]:
    arrived: list[tuple[int, int, MessageT]] = []
    while (event := queue.pop()) is not None:
        assert isinstance(event, Deliver)
        if network.arrive(event):
            arrived.append((event.src, event.dst, event.message))
    return arrived


def test_one_way_cut_drops_only_that_direction() -> None:
    queue: EventQueue[object] = EventQueue(100)
    network: Network[str] = Network(random.Random(1), queue)
    network.make_reliable()
    network.cut_one_way(1, 2)
    assert network.send(1, 2, "x") == "cut"
    assert network.send(2, 1, "y") == "sent"
    assert _drain(queue, network) == [(2, 1, "y")]


def test_partition_made_while_in_flight_drops_the_message() -> None:
    queue: EventQueue[object] = EventQueue(100)
    network: Network[str] = Network(random.Random(1), queue)
    network.make_reliable()
    network.send(1, 2, "x")
    network.partition([1], [2, 3])
    assert _drain(queue, network) == []
    network.heal()
    network.send(1, 3, "z")
    assert _drain(queue, network) == [(1, 3, "z")]


def test_network_loses_duplicates_and_reorders_with_its_seed() -> None:
    queue: EventQueue[object] = EventQueue(10_000)
    network: Network[int] = Network(random.Random(7), queue)
    network.loss_probability = 0.2
    network.duplicate_probability = 0.2
    for number in range(1_000):
        network.send(1, 2, number)
    arrived = [message for _, _, message in _drain(queue, network)]
    assert network.stats.lost > 100, network.stats
    assert network.stats.duplicated > 100, network.stats
    assert len(arrived) != len(set(arrived)), "some message arrived twice"
    assert arrived != sorted(arrived), "delays reorder messages"


def _entries(first: int, last: int, term: int) -> tuple[Entry, ...]:
    return tuple(Entry(term, index) for index in range(first, last + 1))


def test_disk_append_overwrites_the_conflicting_suffix() -> None:
    disk = Disk(ConfState(voters=(1, 2, 3)))
    disk.append(_entries(1, 5, 1))
    disk.append(_entries(3, 4, 2))
    assert disk.last_index() == 4
    assert [disk.term_at(i) for i in range(0, 6)] == [0, 1, 1, 2, 2, 0]


def test_disk_refuses_a_gap_and_a_vote_change_within_a_term() -> None:
    disk = Disk(ConfState(voters=(1,)))
    with pytest.raises(DiskInvariantError, match="after last index"):
        disk.append(_entries(3, 3, 1))
    disk.set_hard_state(HardState(term=2, vote=1))
    with pytest.raises(DiskInvariantError, match="vote changed within term 2"):
        disk.set_hard_state(HardState(term=2, vote=3))


def test_disk_rebuilds_only_what_was_persisted_after_compaction() -> None:
    disk = Disk(ConfState(voters=(1, 2, 3)))
    disk.append(_entries(1, 6, 1))
    disk.set_hard_state(HardState(term=1, vote=1, commit=6))
    disk.compact(Snapshot(SnapshotMetadata(4, 1, ConfState(voters=(1, 2, 3))), b"image"))
    disk.flush_image(StateMachineImage(5, b"sm"))
    storage = disk.rebuild_storage()
    assert (storage.first_index(), storage.last_index()) == (5, 6)
    assert storage.initial_state()[0] == HardState(term=1, vote=1, commit=6)
    assert storage.snapshot().data == b"image"
    assert disk.term_at(3) is None, "compacted entries have no known term"


def test_disk_loses_newest_entries_but_not_below_its_snapshot_or_image() -> None:
    disk = Disk(ConfState(voters=(1, 2, 3)))
    disk.append(_entries(1, 6, 2))
    disk.set_hard_state(HardState(term=2, vote=1, commit=6))
    disk.compact(Snapshot(SnapshotMetadata(2, 2, ConfState(voters=(1, 2, 3))), b"image"))
    disk.flush_image(StateMachineImage(3, b"sm"))
    assert disk.losable_entries() == 3
    assert disk.lose_tail(2) == 4
    assert disk.hard_state == HardState(term=2, vote=1, commit=4), "term and vote survive"
    storage = disk.rebuild_storage()
    assert (storage.first_index(), storage.last_index()) == (3, 4)
    assert disk.losable_entries() == 1
    with pytest.raises(AssertionError, match="cannot lose 2 entries"):
        disk.lose_tail(2)


def test_state_machine_snapshot_round_trip_keeps_the_digest() -> None:
    machine = KvStateMachine()
    machine.apply(Entry(1, 1))
    machine.apply(Entry(1, 2, EntryType.NORMAL, WriteCommand(1, "k", "c1.1").encode()))
    copy = KvStateMachine.decode(machine.encode())
    assert (copy.values, copy.applied_index, copy.digest) == (
        {"k": "c1.1"},
        2,
        machine.digest,
    )


def test_trace_ring_is_bounded_but_digest_covers_every_event() -> None:
    short, long = Trace(events_max=3), Trace(events_max=100)
    for number in range(10):
        short.record(number, 1, "kind", f"event {number}")
        long.record(number, 1, "kind", f"event {number}")
    assert [event.detail for event in short.last(5)] == ["event 7", "event 8", "event 9"]
    assert short.digest() == long.digest()
    assert limits.trace_events_printed <= limits.trace_events_max
