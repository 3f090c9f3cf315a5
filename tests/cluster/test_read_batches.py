"""read_batches.py: one ReadIndex in flight per group on a follower, the reads that arrive
meanwhile sharing the next one; overdue or orphaned requests are sent again."""

from __future__ import annotations

import asyncio

import pytest

from minikv_core.cluster.read_batches import READ_BATCH_RESEND_TICKS, ReadBatches
from minikv_core.cluster.service import UnavailableError


class Core:
    """Records the ReadIndex requests the batches send (what RawNode.read_index gets)."""

    def __init__(self) -> None:
        self.sent: list[bytes] = []
        self.refuse: str | None = None

    def read_index(self, context: bytes) -> None:
        if self.refuse is not None:
            raise UnavailableError(self.refuse)
        self.sent.append(context)


def reads(count: int) -> list[asyncio.Future[int]]:
    loop = asyncio.get_running_loop()
    return [loop.create_future() for _ in range(count)]


def batches_with_reads(count: int) -> tuple[Core, ReadBatches, list[asyncio.Future[int]]]:
    """`count` reads added one after the other: the first one's request is out."""
    core = Core()
    batches = ReadBatches(core.read_index)
    futures = reads(count)
    for number, future in enumerate(futures, start=1):
        batches.add(b"r%d" % number, future)
    return core, batches, futures


async def test_reads_that_arrive_while_one_is_out_share_the_next_request() -> None:
    core = Core()
    batches = ReadBatches(core.read_index)
    first, second, third = reads(3)
    batches.add(b"r1", first)
    assert len(core.sent) == 1
    batches.add(b"r2", second)
    batches.add(b"r3", third)
    assert len(core.sent) == 1, "nothing more is sent while a request is out"
    assert batches.answered(core.sent[0], 7)
    assert first.result() == 7
    assert not second.done() and not third.done(), "they began after the request left"
    assert len(core.sent) == 2
    assert batches.answered(core.sent[1], 9)
    assert (second.result(), third.result()) == (9, 9)
    assert batches.status() == {"waiting": 0, "requests": 2, "reads_answered": 3, "resends": 0}


async def test_an_answer_that_is_not_a_batchs_is_left_to_the_caller() -> None:
    batches = ReadBatches(Core().read_index)
    assert not batches.answered(b"a leader's own read", 3)


async def test_an_overdue_request_is_sent_again_with_the_reads_queued_since() -> None:
    core, batches, (first, second) = batches_with_reads(2)
    for _ in range(READ_BATCH_RESEND_TICKS - 1):
        batches.tick()
    assert len(core.sent) == 1
    batches.tick()
    assert len(core.sent) == 2, "resent after READ_BATCH_RESEND_TICKS"
    assert batches.answered(core.sent[0], 5), "the lost send's late answer is ours"
    assert not first.done(), "and ignored: its reads went into the newer send"
    batches.answered(core.sent[1], 6)
    assert (first.result(), second.result()) == (6, 6)
    assert len(core.sent) == 2
    assert batches.status()["resends"] == 1


async def test_a_leader_change_sends_the_outstanding_request_again() -> None:
    core, batches, (only,) = batches_with_reads(1)
    batches.resend()
    assert len(core.sent) == 2 and core.sent[0] != core.sent[1]
    batches.answered(core.sent[1], 4)
    assert only.result() == 4


async def test_a_refused_first_request_raises_and_registers_nothing() -> None:
    core = Core()
    core.refuse = "no leader"
    batches = ReadBatches(core.read_index)
    (only,) = reads(1)
    with pytest.raises(UnavailableError, match="no leader"):
        batches.add(b"r1", only)
    assert batches.waiting == 0
    core.refuse = None
    batches.add(b"r2", reads(1)[0])
    assert len(core.sent) == 1


async def test_reads_whose_send_is_refused_wait_and_go_at_a_later_tick() -> None:
    core, batches, (first, second) = batches_with_reads(2)
    core.refuse = "no leader"  # an election began
    batches.answered(core.sent[0], 3)
    assert first.result() == 3
    batches.tick()
    batches.resend()  # what a leader change does: refused too, still no leader
    assert not second.done(), "it waits through the election, as an unbatched read did"
    assert len(core.sent) == 1
    core.refuse = None
    batches.tick()
    assert len(core.sent) == 2
    batches.answered(core.sent[1], 8)
    assert second.result() == 8
    assert batches.waiting == 0


async def test_a_forgotten_read_is_not_carried_into_another_request() -> None:
    core = Core()
    batches = ReadBatches(core.read_index)
    first, gone, kept = reads(3)
    batches.add(b"r1", first)
    batches.add(b"gone", gone)
    batches.add(b"kept", kept)
    batches.forget(b"gone")
    batches.answered(core.sent[0], 1)
    batches.answered(core.sent[1], 2)
    assert kept.result() == 2 and not gone.done()
    assert batches.waiting == 0


async def test_fail_all_releases_every_read() -> None:
    core, batches, (first, second) = batches_with_reads(2)
    batches.fail_all(UnavailableError("stopping"))
    for future in (first, second):
        with pytest.raises(UnavailableError, match="stopping"):
            future.result()
    batches.add(b"r3", reads(1)[0])
    assert len(core.sent) == 2
