"""NodeRaftLog: groups created and removed at run time (issue #10: repair and rebalance move
replicas), across restarts and WAL truncation."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from minikv_core.cluster.raft_log import NodeRaftLog, RaftLogInputError
from minikv_core.raft.types import (
    ConfState,
    Entry,
    EntryType,
    HardState,
    Ready,
    Snapshot,
    SnapshotMetadata,
)

SEGMENT_BYTES = 64 * 1024


def _ready(entries: tuple[Entry, ...], hard_state: HardState) -> Ready:
    return Ready(
        soft_state=None,
        hard_state=hard_state,
        entries=entries,
        snapshot=Snapshot(SnapshotMetadata(), b""),
        committed_entries=(),
        messages=(),
        read_states=(),
        must_sync=True,
    )


def _entries(term: int, first: int, last: int, size: int = 16) -> tuple[Entry, ...]:
    return tuple(Entry(term, i, EntryType.NORMAL, b"v" * size) for i in range(first, last + 1))


def _open(directory: Path) -> NodeRaftLog:
    return NodeRaftLog.open(directory, segment_size_bytes=SEGMENT_BYTES)


def test_a_created_group_survives_a_restart_with_no_membership(tmp_path: Path) -> None:
    async def scenario() -> None:
        log = _open(tmp_path)
        storage = await log.create_group_async(7)
        assert storage.initial_state()[1] == ConfState()
        with pytest.raises(RaftLogInputError, match="already exists"):
            await log.create_group_async(7)
        await log.aclose()

    asyncio.run(scenario())
    with _open(tmp_path) as log:
        assert log.groups() == [7]
        hard_state, conf_state = log.storage(7).initial_state()
        assert hard_state == HardState() and conf_state == ConfState()


def test_a_removed_group_is_forgotten_and_a_recreated_one_starts_fresh(tmp_path: Path) -> None:
    async def scenario() -> None:
        log = _open(tmp_path)
        await log.bootstrap_group_async(1, ConfState((1, 2, 3), ()))
        await log.bootstrap_group_async(2, ConfState((1, 2, 3), ()))
        await log.persist_async([(1, _ready(_entries(1, 1, 5), HardState(1, 1, 5)))])
        await log.persist_async([(2, _ready(_entries(1, 1, 3), HardState(1, 2, 3)))])
        await log.remove_group_async(1)
        assert log.groups() == [2]
        with pytest.raises(RaftLogInputError, match="does not exist"):
            await log.remove_group_async(1)
        await log.aclose()

    asyncio.run(scenario())
    with _open(tmp_path) as log:
        assert log.groups() == [2]
        assert log.storage(2).last_index() == 3

    async def recreate() -> None:
        log = _open(tmp_path)
        await log.create_group_async(1)
        await log.persist_async([(1, _ready(_entries(4, 1, 2), HardState(4, 3, 2)))])
        await log.aclose()

    asyncio.run(recreate())
    with _open(tmp_path) as log:
        assert log.groups() == [1, 2]
        storage = log.storage(1)
        assert storage.last_index() == 2 and storage.term(1) == 4
        assert storage.initial_state() == (HardState(4, 3, 2), ConfState())


def test_truncation_after_removal_keeps_the_other_groups_exact(tmp_path: Path) -> None:
    """Fill several segments with a group, remove it, compact the survivor: the removed
    group's segments are deleted and nothing of it comes back."""

    async def scenario() -> None:
        log = _open(tmp_path)
        await log.bootstrap_group_async(1, ConfState((1,), ()))
        await log.bootstrap_group_async(2, ConfState((1,), ()))
        for first in range(1, 400, 20):
            await log.persist_async(
                [
                    (1, _ready(_entries(1, first, first + 19, 400), HardState(1, 1, first + 19))),
                    (2, _ready(_entries(1, first, first + 19, 16), HardState(1, 1, first + 19))),
                ]
            )
        segments_before = len(log.wal.segments())
        await log.remove_group_async(1)
        await log.record_compactions_async([(2, SnapshotMetadata(400, 1, ConfState((1,), ())))])
        await log.truncate_async()
        assert len(log.wal.segments()) < segments_before
        await log.aclose()

    asyncio.run(scenario())
    with _open(tmp_path) as log:
        assert log.groups() == [2]
        assert log.storage(2).snapshot_metadata().index == 400


def test_a_joined_replicas_learned_founding_membership_survives_a_restart(tmp_path: Path) -> None:
    """A replica created empty that caught up from the log (its leader never compacted)
    learns the founding membership from heartbeats; recorded, it is its membership at index
    0 after a restart, its entries untouched, as for a founding member. (Unrecorded, a group
    whose voters all joined later never elected again after a full restart.)"""
    founding = ConfState((1, 2, 3), ())

    async def scenario() -> None:
        log = _open(tmp_path)
        await log.create_group_async(7)
        await log.persist_async([(7, _ready(_entries(1, 1, 5), HardState(1, 2, 5)))])
        await log.record_founding_async(7, founding)
        assert log.storage(7).initial_state()[1] == founding
        await log.record_founding_async(7, ConfState((4,), ()))  # known now: a no-op
        assert log.storage(7).initial_state()[1] == founding
        with pytest.raises(RaftLogInputError, match="needs voters"):
            await log.record_founding_async(7, ConfState())
        await log.aclose()

    asyncio.run(scenario())
    with _open(tmp_path) as log:
        storage = log.storage(7)
        assert storage.initial_state() == (HardState(1, 2, 5), founding)
        assert (storage.first_index(), storage.last_index()) == (1, 5)
