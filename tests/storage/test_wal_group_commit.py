"""Group commit: concurrent async appends share writes and fsyncs, stay ordered and durable."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

import pytest

from minikv_core.storage.errors import WalClosedError
from minikv_core.storage.wal import Position, Wal
from minikv_core.storage.wal_records import RecordType
from tests.storage.wal_support import (
    SMALL_SEGMENT_BYTES,
    TEST_SEGMENT_BYTES,
    payload_for,
    record_id_of,
)


async def test_concurrent_appenders_share_fdatasyncs(tmp_path: Path) -> None:
    producers, per_producer = 50, 20
    async with Wal.open(tmp_path, segment_size_bytes=TEST_SEGMENT_BYTES) as wal:
        before = wal.stats

        async def producer(number: int) -> list[Position]:
            positions = []
            for k in range(per_producer):
                record = (RecordType.RAFT_ENTRY, payload_for(number * 1000 + k, 100))
                positions.append(await wal.append([record]))
            return positions

        results = await asyncio.gather(*(producer(n) for n in range(producers)))
        after = wal.stats
    appends = producers * per_producer
    syncs = after.syncs - before.syncs
    assert after.appends == appends
    assert syncs < appends / 10, f"{syncs} fdatasyncs for {appends} concurrent appends"
    assert after.writes == syncs, "each group commit is one write and one fdatasync"
    # Order per caller: each producer's positions strictly increase.
    for positions in results:
        assert positions == sorted(positions) and len(set(positions)) == len(positions)


async def test_appenders_queued_together_are_written_with_one_sync(tmp_path: Path) -> None:
    async with Wal.open(tmp_path, segment_size_bytes=TEST_SEGMENT_BYTES) as wal:
        before = wal.stats.syncs
        # All 200 appends are queued before the flusher task first runs.
        positions = await asyncio.gather(
            *(wal.append([(RecordType.KV_BATCH, payload_for(i, 50))]) for i in range(200))
        )
        assert wal.stats.syncs - before == 1
        assert wal.stats.writes == 1
        # Queue order is log order.
        assert list(positions) == sorted(positions)


async def test_every_acknowledged_async_append_reads_back_after_reopen(tmp_path: Path) -> None:
    seed = 11
    rng = random.Random(seed)
    acknowledged: dict[int, Position] = {}
    async with Wal.open(tmp_path, segment_size_bytes=SMALL_SEGMENT_BYTES) as wal:

        async def producer(number: int) -> None:
            for k in range(30):
                record_id = number * 100 + k
                size = rng.randint(0, 300)
                position = await wal.append([(RecordType.RAFT_ENTRY, payload_for(record_id, size))])
                acknowledged[record_id] = position

        await asyncio.gather(*(producer(n) for n in range(20)))
        assert wal.stats.rotations > 5, f"seed={seed}: the test must cross segment boundaries"
    with Wal.open(tmp_path, segment_size_bytes=SMALL_SEGMENT_BYTES) as wal:
        entries = list(wal.read())
    read = {record_id_of(e.payload): e.position for e in entries}
    assert read == acknowledged, f"seed={seed}"
    for entry in entries:
        record_id = record_id_of(entry.payload)
        assert entry.payload == payload_for(record_id, len(entry.payload) - 8), f"seed={seed}"
    # Per producer, log order is call order.
    for number in range(20):
        mine = [
            record_id_of(e.payload) for e in entries if record_id_of(e.payload) // 100 == number
        ]
        assert mine == sorted(mine), f"seed={seed}: producer {number} out of order"


async def test_event_loop_keeps_running_during_fsync(tmp_path: Path) -> None:
    """The write and fdatasync run on a thread: other tasks progress while they run.

    Each append writes 8 MiB, whose write + fdatasync takes milliseconds; a ticker task
    that only yields (`sleep(0)`) runs many times meanwhile. If the fsync blocked the loop,
    the ticker would run about once per append.
    """
    ticks = 0
    stop = asyncio.Event()

    async def ticker() -> None:
        nonlocal ticks
        while not stop.is_set():
            ticks += 1
            await asyncio.sleep(0)

    async with Wal.open(tmp_path, preallocate=False) as wal:
        task = asyncio.create_task(ticker())
        try:
            appends = 6
            ticks_during = 0
            for _ in range(appends):
                start = ticks
                await wal.append([(RecordType.RAFT_ENTRY, bytes(8 << 20))])
                ticks_during += ticks - start
        finally:
            stop.set()
            await task
    assert ticks_during > appends * 20, f"only {ticks_during} ticks during {appends} appends"


async def test_a_bad_batch_fails_only_its_own_caller(tmp_path: Path) -> None:
    async with Wal.open(tmp_path, segment_size_bytes=TEST_SEGMENT_BYTES) as wal:
        good = [wal.append([(RecordType.KV_BATCH, b"good %d" % i)]) for i in range(5)]
        bad = wal.append([(RecordType.KV_BATCH, "not bytes")])  # type: ignore[list-item]
        results = await asyncio.gather(*good, bad, return_exceptions=True)
        assert all(isinstance(r, Position) for r in results[:5])
        assert isinstance(results[5], TypeError)
        assert [e.payload for e in wal.read()] == [b"good %d" % i for i in range(5)]


async def test_append_after_close_fails_with_closed_error(tmp_path: Path) -> None:
    wal = Wal.open(tmp_path, segment_size_bytes=TEST_SEGMENT_BYTES)
    await wal.aclose()
    with pytest.raises(WalClosedError):
        await wal.append([(RecordType.KV_BATCH, b"x")])


async def test_aclose_waits_for_queued_appends(tmp_path: Path) -> None:
    wal = Wal.open(tmp_path, segment_size_bytes=TEST_SEGMENT_BYTES)
    tasks = [asyncio.create_task(wal.append([(RecordType.KV_BATCH, b"%d" % i)])) for i in range(50)]
    await asyncio.sleep(0)  # let every task queue its batch
    await wal.aclose()
    positions = await asyncio.gather(*tasks)
    assert len(set(positions)) == 50
    with Wal.open(tmp_path, segment_size_bytes=TEST_SEGMENT_BYTES) as reopened:
        assert [e.payload for e in reopened.read()] == [b"%d" % i for i in range(50)]


async def test_stats_are_readable_from_the_loop_while_a_group_commits(tmp_path: Path) -> None:
    async with Wal.open(tmp_path, segment_size_bytes=TEST_SEGMENT_BYTES) as wal:
        pending = asyncio.gather(
            *(wal.append([(RecordType.KV_BATCH, bytes(64 << 10))]) for _ in range(8))
        )
        await asyncio.sleep(0)
        observed = [wal.stats.syncs for _ in range(3)]
        await pending
        assert observed == sorted(observed)
        assert wal.stats.appends == 8


# ------------------------------------------------------------------------- inline appends


async def test_inline_append_is_durable_before_the_loop_runs_anything_else(
    tmp_path: Path,
) -> None:
    """`inline=True` with nothing queued writes and syncs in the caller's own step: the
    task is done after one pass of the loop, where a hand-off to the sync thread would still
    be waiting for the thread's answer."""
    async with Wal.open(tmp_path, segment_size_bytes=TEST_SEGMENT_BYTES) as wal:
        before = wal.stats
        inline = asyncio.ensure_future(wal.append([(RecordType.KV_BATCH, b"a")], inline=True))
        await asyncio.sleep(0)
        assert inline.done(), "an inline append waited for something"
        queued = asyncio.ensure_future(wal.append([(RecordType.KV_BATCH, b"b")]))
        await asyncio.sleep(0)
        assert not queued.done(), "the default append no longer uses the sync thread"
        first, second = inline.result(), await queued
        assert first < second
        assert wal.stats.syncs - before.syncs == 2
        assert wal.end_position > second
    with Wal.open(tmp_path, segment_size_bytes=TEST_SEGMENT_BYTES) as reopened:
        assert [e.payload for e in reopened.read()] == [b"a", b"b"]


async def test_inline_append_queues_behind_appends_already_waiting(tmp_path: Path) -> None:
    """Log order is call order: an inline append made while others wait for the flusher
    joins the queue instead of overtaking them."""
    async with Wal.open(tmp_path, segment_size_bytes=TEST_SEGMENT_BYTES) as wal:
        waiting = [wal.append([(RecordType.KV_BATCH, b"%d" % i)]) for i in range(5)]
        tasks = [asyncio.ensure_future(call) for call in waiting]
        await asyncio.sleep(0)  # the five are queued, the flusher is running
        last = await wal.append([(RecordType.KV_BATCH, b"inline")], inline=True)
        positions = await asyncio.gather(*tasks)
        assert max(positions) < last
        assert [e.payload for e in wal.read()] == [b"0", b"1", b"2", b"3", b"4", b"inline"]


async def test_inline_appends_across_a_segment_boundary_land_whole_and_in_order(
    tmp_path: Path,
) -> None:
    """A batch that does not fit the active segment is not written inline (the rotation may
    wait for the next segment's zero-fill); it still lands, whole, in the next segment."""
    payload = bytes(range(256)) * 4
    async with Wal.open(tmp_path, segment_size_bytes=SMALL_SEGMENT_BYTES) as wal:
        positions = [
            await wal.append([(RecordType.KV_BATCH, payload)], inline=True) for _ in range(6)
        ]
        assert wal.stats.rotations >= 1
        assert len({p.segment for p in positions}) > 1
    with Wal.open(tmp_path, segment_size_bytes=SMALL_SEGMENT_BYTES) as reopened:
        entries = list(reopened.read())
    assert [e.position for e in entries] == positions
    assert all(e.payload == payload for e in entries)
