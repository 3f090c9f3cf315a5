"""A follower's linearizable reads of one group, batched: one ReadIndex in flight at a time.

Why: a follower's linearizable read asks the leader for its commit index (ReadIndex, thesis
§6.4) and the leader answers; each request and each answer is a message on the peer stream,
and a round with one to send costs a gRPC frame (~100 us of CPU at each end). Under 64 HTTP
get clients the peer stream was a third of the nodes' CPU. Here every read that arrives while
a request is out waits for it to come back and then shares the next request, as etcd's
linearizable read loop does: bench/cluster_vs_etcd.py get:64 went from 5,246-5,465 to
6,651-6,941 gets/s (docs/benchmarks.md, session 12).

Why it stays linearizable: a read joins only a request sent after it began (a read that
arrives while one is out waits for the next), so the index the leader answers is at least its
commit index when the read began, and the caller then waits for its replica to apply it.

Loss: a request or answer lost on the way (fault injection, a peer stream cut) would stop the
group's reads for good, so a request unanswered for READ_BATCH_RESEND_TICKS ticks is sent again
with everything queued since; so is one in flight when the leader changes. Each send carries
a new context: an answer to an older send is ignored (its reads went into the newer one).
When the core refuses a send (no leader known during an election), the reads stay queued and
the send is tried again at each tick and at the next leader change: as before batching, a
read waits through a failover until its caller's deadline (the caller then `forget`s it).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
from collections.abc import Callable
from typing import Final

from minikv_core.cluster.service import UnavailableError

READ_BATCH_RESEND_TICKS: Final = 2
"""Ticks (100 ms each by default) a batch waits for its answer before it is sent again: far
above a healthy round trip (~1 ms, a heartbeat round when the leader has no lease), far below
a read's 5 s default deadline."""


class ReadBatches:
    def __init__(self, send: Callable[[bytes], None]) -> None:
        """`send(context)` asks the core for a ReadIndex; it raises UnavailableError when the
        core cannot take one (no leader known, too many pending)."""
        self._send = send
        self._futures: dict[bytes, asyncio.Future[int]] = {}
        """Every read waiting here, by the caller's context."""
        self._queued: list[bytes] = []
        """Reads not in a request yet: they go in the next one."""
        self._in_flight: bytes | None = None
        self._members: list[bytes] = []
        self._ticks_waited = 0
        self._prefix = b"batch" + os.urandom(8)  # never equal to a caller's context
        self._numbers = itertools.count(1)
        self.requests = 0
        """ReadIndex requests sent (resends included)."""
        self.resends = 0
        """Requests sent again: overdue (lost on the way?) or out when the leader changed."""
        self.reads_answered = 0

    @property
    def waiting(self) -> int:
        return len(self._futures)

    def add(self, context: bytes, future: asyncio.Future[int]) -> None:
        """Wait for the next request's answer; sends it now if none is out. Raises
        UnavailableError, with this read not registered, if the core refuses that send."""
        self._futures[context] = future
        self._queued.append(context)
        if self._in_flight is not None:
            return
        try:
            self._start()
        except UnavailableError:
            del self._futures[context]
            self._queued.remove(context)
            raise

    def answered(self, context: bytes, index: int) -> bool:
        """A ReadState arrived: True if it was ours (its reads get `index`)."""
        if context != self._in_flight:
            return context.startswith(self._prefix)  # a superseded send: nothing to do
        members, self._members, self._in_flight = self._members, [], None
        for member in members:
            future = self._futures.pop(member, None)
            if future is not None and not future.done():
                future.set_result(index)
                self.reads_answered += 1
        self._try_start()
        return True

    def tick(self) -> None:
        if self._in_flight is None:
            self._try_start()  # a refused send, tried again
            return
        self._ticks_waited += 1
        if self._ticks_waited >= READ_BATCH_RESEND_TICKS:
            self.resend()

    def resend(self) -> None:
        """Send what is out again, with everything queued (after a leader change, or when
        the answer is overdue)."""
        if self._in_flight is not None:
            self._queued = self._members + self._queued
            self._members, self._in_flight = [], None
            self.resends += 1
        self._try_start()

    def status(self) -> dict[str, int]:
        """For /admin/status: reads per request show the batching; resends show loss."""
        return {
            "waiting": len(self._futures),
            "requests": self.requests,
            "reads_answered": self.reads_answered,
            "resends": self.resends,
        }

    def forget(self, context: bytes) -> None:
        self._futures.pop(context, None)

    def fail_all(self, error: Exception) -> None:
        for future in self._futures.values():
            if not future.done():
                future.set_exception(error)
        self._futures.clear()
        self._queued.clear()
        self._members, self._in_flight = [], None

    def _start(self) -> None:
        context = self._prefix + next(self._numbers).to_bytes(8, "big")
        self._send(context)
        self.requests += 1
        self._members, self._queued = self._queued, []
        self._in_flight = context
        self._ticks_waited = 0

    def _try_start(self) -> None:
        """Send the queued reads' request, if any; if the core refuses, they stay queued."""
        # Forgotten reads (their callers gave up) are not carried into another request.
        self._queued = [member for member in self._queued if member in self._futures]
        if not self._queued:
            return
        with contextlib.suppress(UnavailableError):
            self._start()
