"""The transaction coordinator: the node that received a transaction drives it to its end.

One shard: the whole transaction is ONE_PHASE, a single Raft entry of that shard, evaluated
and applied atomically at apply time (no locks held across entries).

Several shards: two-phase commit whose decision is a Raft-replicated record.

1. **Prepare**, in parallel, a PREPARE entry on each participant other than the home shard
   (the smallest participant): locks, compares and gets under those locks, both branches
   staged (txn_locks.py). Any conflict or failure: the attempt is abandoned (RESOLVE ABORT to
   every participant, best effort) and retried with a new transaction id after a backoff,
   resolving expired blockers on the way (no-wait: a prepare never waits while holding locks,
   so there is no deadlock).
2. **Finish**: one FINISH entry on the home shard evaluates the home part (its compares and
   the others' give the branch), applies it at once and writes the record, COMMIT_SUCCESS or
   COMMIT_FAILURE. That entry is the commit point. The home part needs no intent: nothing
   can come between its evaluation and the decision, both happen in that entry, which saves
   every two-shard transaction one of three Raft entries. If its keys are locked, or a
   resolver's ABORT got there first, the attempt lost: abort and retry. A transaction that
   writes nowhere leaves no record: the other parts' reads were taken under locks still held
   at the home part's instant, so it just releases them.
3. **Commit**: RESOLVE with the decision on every other participant (applies the staged
   branch, releases the locks), then FORGET the record once all have resolved (a record is only
   forgotten when no intent of it remains anywhere, so no resolver can ever find it missing
   and abort a committed transaction). This runs *after* the answer, in the background: the
   decision is the commit point, and a reader or writer meeting an intent waits until it is
   resolved, so answering first shortens a transaction by one Raft round and hides nothing.

The answer comes from the prepare results (versions are the prepare entries' indexes) and the
FINISH result (the home part's writes carry that entry's index). A coordinator killed at any
point leaves nothing stuck: its intents expire and whoever meets them resolves them from the
record (txn_resolver.py). An outcome that is unknown at the deadline (FINISH was proposed but
not seen applied) is DeadlineExceededError, as for a put.

Fault points for tests: `MINIKV_TXN_FAULT=after-prepare|after-decision|mid-commit` makes the
process exit at once (no cleanup, like SIGKILL) at that point of its next cross-shard
transaction with writes.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

from minikv_core.cluster import limits
from minikv_core.cluster.service import (
    DeadlineExceededError,
    ServiceError,
    TxnConflictError,
    UnavailableError,
)
from minikv_core.cluster.txn import OpKind, OpResult, TxnRequest, TxnResponse
from minikv_core.cluster.txn_codec import (
    Blocker,
    Conflict,
    Decision,
    Finish,
    Finished,
    Forget,
    OnePhase,
    PartDone,
    Prepare,
    Prepared,
    Resolve,
    Resolved,
    ResolveMany,
    ShardPart,
    split_by_shard,
)
from minikv_core.cluster.txn_resolver import ShardRunner, backoff_s, resolve, wall_ms

logger = logging.getLogger(__name__)

FAULT_ENV: Final = "MINIKV_TXN_FAULT"
FAULT_EXIT_CODE: Final = 86
"""The exit status of a process stopped at a fault point (tests check it)."""
ATTEMPT_RESERVE_S: Final = 0.25
"""No new attempt starts with less than this left before the deadline: an attempt (prepare,
release) takes a few Raft rounds, and a conflict answered in time beats a deadline miss."""
CLEANUP_S: Final = 3.0
"""Releases and record deletions run in the background after the answer, each bounded by
this (what they do not finish, resolvers do once the intents expire)."""
FORGET_BATCH_S: Final = 0.05
"""How long a finished transaction's record waits for others of the same home shard to be
deleted with it in one FORGET entry (one Raft entry per batch instead of per transaction)."""


class FaultPoint(enum.Enum):
    AFTER_PREPARE = "after-prepare"
    AFTER_DECISION = "after-decision"
    MID_COMMIT = "mid-commit"


def fault_from_env(environ: dict[str, str] | None = None) -> FaultPoint | None:
    """The armed fault point, from MINIKV_TXN_FAULT; ValueError names the choices."""
    text = (environ if environ is not None else dict(os.environ)).get(FAULT_ENV, "")
    if not text:
        return None
    try:
        return FaultPoint(text)
    except ValueError:
        choices = ", ".join(p.value for p in FaultPoint)
        raise ValueError(f"{FAULT_ENV} must be one of {choices}, got {text!r}") from None


@dataclass(slots=True)
class CoordinatorStats:
    started: int = 0
    one_phase: int = 0
    committed: int = 0
    read_only: int = 0
    aborted_attempts: int = 0
    conflicts: int = 0
    in_flight: int = 0
    forgets_pending: int = 0
    forgotten: int = 0
    """Transaction records deleted (in batches, see FORGET_BATCH_S)."""

    def document(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in self.__slots__}


@dataclass(slots=True)
class _Retry:
    """The attempt applied nothing; try again after waiting out `blockers`."""

    reason: str
    blockers: dict[int, list[Blocker]] = field(default_factory=dict)
    """Shard where they were met -> blockers."""


class TxnCoordinator:
    def __init__(
        self,
        runner: ShardRunner,
        shard_of: Callable[[bytes], int],
        rng: random.Random,
        fault: FaultPoint | None = None,
    ) -> None:
        self._runner = runner
        self._shard_of = shard_of
        self._rng = rng
        self._fault = fault
        self.stats = CoordinatorStats()
        self._background: set[asyncio.Task[None]] = set()
        self._forgets: dict[int, list[bytes]] = {}
        self._resolves: dict[int, list[tuple[Resolve, asyncio.Future[bool]]]] = {}
        """Shard -> background resolves waiting for the batch in flight to that shard."""
        self._resolving: set[int] = set()
        """Home shard -> finished transactions whose records await the next FORGET batch."""

    async def execute(self, request: TxnRequest, deadline: float) -> TxnResponse:
        """Run `request` (validated by the caller) to completion, retrying conflicts until
        `deadline`; raises TxnConflictError when they persist past it."""
        parts = split_by_shard(request, self._shard_of)
        self.stats.started += 1
        self.stats.in_flight += 1
        try:
            attempt = 0
            while True:
                if len(parts) == 1:
                    ((shard, part),) = parts.items()
                    outcome = await self._one_phase(shard, part, deadline)
                else:
                    outcome = await self._two_phase(request, parts, deadline)
                if isinstance(outcome, TxnResponse):
                    return outcome
                self.stats.conflicts += 1
                logger.debug("transaction attempt %d retried: %s", attempt, outcome.reason)
                await self._wait_out(outcome, deadline, attempt)
                attempt += 1
        finally:
            self.stats.in_flight -= 1

    async def _wait_out(self, retry: _Retry, deadline: float, attempt: int) -> None:
        now_ms = wall_ms()
        for shard, blockers in retry.blockers.items():
            for blocker in blockers:
                if blocker.expiry_ms <= now_ms:
                    # A failure here is retried by the next attempt, until the deadline.
                    with contextlib.suppress(UnavailableError, DeadlineExceededError):
                        await resolve(blocker, shard, self._runner, deadline)
        pause = backoff_s(attempt + 2, self._rng)
        if time.monotonic() + pause + ATTEMPT_RESERVE_S >= deadline:
            raise TxnConflictError(
                f"the transaction did not complete before its deadline: {retry.reason}; "
                "nothing of it was applied, retry it",
                retry_after_s=0.05,
            )
        await asyncio.sleep(pause)

    # --------------------------------------------------------------------------- one phase

    async def _one_phase(
        self, shard: int, part: ShardPart, deadline: float
    ) -> TxnResponse | _Retry:
        try:
            result = await self._runner.run_txn_command(shard, OnePhase(part), deadline)
        except UnavailableError as error:
            # Retried only when it cannot have applied: a lost answer of a command that did
            # apply would apply it again, after writes that came later (a resurrected value).
            if time.monotonic() >= deadline or not error.unapplied:
                raise
            return _Retry(str(error))
        if isinstance(result, Conflict):
            return _Retry(f"shard {shard}: {result.reason}", {shard: list(result.blockers)})
        assert isinstance(result, PartDone), result
        self.stats.one_phase += 1
        ordered = sorted(result.results, key=lambda item: item[0])
        return TxnResponse(result.succeeded, tuple(r for _, r in ordered))

    # --------------------------------------------------------------------------- two phase

    async def _two_phase(
        self, request: TxnRequest, parts: dict[int, ShardPart], deadline: float
    ) -> TxnResponse | _Retry:
        txn_id = self._rng.randbytes(limits.TXN_ID_BYTES)
        home = min(parts)
        expiry_ms = wall_ms() + limits.TXN_INTENT_TTL_MS
        others = [shard for shard in sorted(parts) if shard != home]
        answers = await asyncio.gather(
            *(
                self._runner.run_txn_command(
                    shard, Prepare(txn_id, home, expiry_ms, parts[shard]), deadline
                )
                for shard in others
            ),
            return_exceptions=True,
        )
        prepared: dict[int, Prepared] = {}
        retry = _Retry("")
        failure: BaseException | None = None
        for shard, answer in zip(others, answers, strict=True):
            if isinstance(answer, Prepared):
                prepared[shard] = answer
            elif isinstance(answer, Conflict):
                retry.blockers[shard] = list(answer.blockers)
                retry.reason = f"shard {shard}: {answer.reason}"
            elif isinstance(answer, BaseException):
                # The most telling failure wins: a bug over a bad request over unavailability.
                if (
                    not isinstance(answer, ServiceError)
                    or failure is None
                    or isinstance(failure, UnavailableError)
                ):
                    failure = answer
                retry.reason = retry.reason or f"shard {shard}: {answer}"
            else:
                failure = AssertionError(f"shard {shard} answered a prepare with {answer!r}")
        if len(prepared) != len(others):
            # Abandon the attempt: nothing was decided, so aborting is always right. Every
            # participant is told (a prepare whose answer was lost may still apply; if it
            # applies after this, its intent expires and is resolved from the missing record).
            self.stats.aborted_attempts += 1
            await self._release(txn_id, others, Decision.ABORT, deadline)
            if failure is not None and not isinstance(failure, UnavailableError):
                raise failure
            if time.monotonic() >= deadline:
                raise DeadlineExceededError(f"the transaction's prepare timed out: {retry.reason}")
            return retry
        self._crash_at(FaultPoint.AFTER_PREPARE)
        finish = Finish(
            txn_id,
            all(answer.compares_hold for answer in prepared.values()),
            any(op.kind is not OpKind.GET for op in request.success),
            any(op.kind is not OpKind.GET for op in request.failure),
            parts[home],
        )
        finished = await self._finish(home, finish, deadline)
        may_write = finish.success_writes or finish.failure_writes
        if isinstance(finished, Conflict) or finished.decision is Decision.ABORT:
            # Keys of the home part were locked (FINISH then left an ABORT record), or a
            # resolver found our intents expired and aborted the record first.
            self.stats.aborted_attempts += 1
            await self._release(txn_id, others, Decision.ABORT, deadline)
            if may_write:
                self._queue_forget(txn_id, home)
            if isinstance(finished, Conflict):
                return _Retry(f"shard {home}: {finished.reason}", {home: list(finished.blockers)})
            return _Retry("the transaction's intents expired before it was decided")
        self._crash_at(FaultPoint.AFTER_DECISION)
        decision = finished.decision
        if decision is None:
            # Writes nowhere: the other parts' reads were taken under locks still held at the
            # home part's instant, a serializable point; no record, just release them.
            self.stats.read_only += 1
            await self._release(txn_id, others, Decision.ABORT, deadline)
            return _answer(finished.succeeded, prepared, finished.results)
        self.stats.committed += 1
        if self._fault is FaultPoint.MID_COMMIT:
            # The fault point tests a coordinator dying half-way through its commit, before
            # it answered: keep the commit on the answer's path when it is armed.
            await self._commit(txn_id, home, others, decision)
        else:
            # The decision is durable on the home shard: the transaction is committed. The
            # intents are resolved after the answer (Percolator, CockroachDB): anyone who
            # meets one first waits until it is resolved (reads and writes wait out locks),
            # so nothing reads around the outcome.
            self._background_task(self._commit(txn_id, home, others, decision))
        return _answer(finished.succeeded, prepared, finished.results)

    async def _finish(self, home: int, finish: Finish, deadline: float) -> Finished | Conflict:
        """Propose FINISH until its outcome is known, or raise DeadlineExceededError (outcome
        unknown). Proposing it again is safe: a FINISH that finds the record answers what the
        first one did (txn_locks.py), and Raft's log order means an earlier copy that was not
        applied before a later one never will be."""
        attempt = 0
        while True:
            try:
                result = await self._runner.run_txn_command(home, finish, deadline)
            except (UnavailableError, DeadlineExceededError) as error:
                if time.monotonic() + 0.01 >= deadline:
                    raise DeadlineExceededError(
                        f"the transaction's decision was not confirmed before the deadline "
                        f"({error}); its outcome is unknown (intents resolve from its record)"
                    ) from None
                await asyncio.sleep(backoff_s(attempt + 3, self._rng))
                attempt += 1
                continue
            assert isinstance(result, Finished | Conflict), result
            return result

    async def _commit(
        self, txn_id: bytes, home: int, others: list[int], decision: Decision
    ) -> None:
        # The FINISH entry applied the home part: part of the commit is done.
        self._crash_at(FaultPoint.MID_COMMIT)
        done = await asyncio.gather(
            *(self._resolve_later(Resolve(txn_id, decision), shard) for shard in others)
        )
        if all(done):
            self._queue_forget(txn_id, home)

    def _resolve_later(self, item: Resolve, shard: int) -> asyncio.Future[bool]:
        """Queue a background RESOLVE for `shard`: while one batch is in flight to a shard,
        the next gathers (group commit), so a busy coordinator sends one RESOLVE_MANY entry
        per round trip instead of one entry and one forward per transaction."""
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._resolves.setdefault(shard, []).append((item, future))
        if shard not in self._resolving:
            self._resolving.add(shard)
            self._background_task(self._resolve_batches(shard))
        return future

    async def _resolve_batches(self, shard: int) -> None:
        queued: list[tuple[Resolve, asyncio.Future[bool]]] = []
        try:
            while True:
                queued = self._resolves.pop(shard, [])
                if not queued:
                    return
                step = limits.TXN_RESOLVE_BATCH_MAX
                for start in range(0, len(queued), step):
                    chunk = queued[start : start + step]
                    items = tuple(item for item, _ in chunk)
                    body: Resolve | ResolveMany = (
                        items[0] if len(items) == 1 else ResolveMany(items)
                    )
                    done = await self._resolve_until(shard, body, time.monotonic() + CLEANUP_S)
                    for _, future in chunk:
                        if not future.done():
                            future.set_result(done)
        finally:
            self._resolving.discard(shard)
            # Cancelled (the node stops): what is not confirmed is left to resolvers.
            for _, future in queued + self._resolves.pop(shard, []):
                if not future.done():
                    future.set_result(False)

    async def _resolve_one(
        self, txn_id: bytes, shard: int, decision: Decision, deadline: float
    ) -> bool:
        return await self._resolve_until(shard, Resolve(txn_id, decision), deadline)

    async def _resolve_until(
        self, shard: int, body: Resolve | ResolveMany, deadline: float
    ) -> bool:
        """RESOLVE on one participant, retried until the deadline; False if not confirmed
        (its intent then expires and is resolved from the record by whoever meets it)."""
        attempt = 0
        while True:
            try:
                answer = await self._runner.run_txn_command(shard, body, deadline)
            except (UnavailableError, DeadlineExceededError):
                if time.monotonic() + 0.01 >= deadline:
                    return False
                await asyncio.sleep(backoff_s(attempt + 3, self._rng))
                attempt += 1
                continue
            return isinstance(answer, Resolved)

    def _queue_forget(self, txn_id: bytes, home: int) -> None:
        queue = self._forgets.setdefault(home, [])
        queue.append(txn_id)
        if len(queue) == 1:
            self._background_task(self._forget_batch(home))

    async def _forget_batch(self, home: int) -> None:
        await asyncio.sleep(FORGET_BATCH_S)
        txn_ids = self._forgets.pop(home, [])
        deadline = time.monotonic() + CLEANUP_S
        step = limits.TXN_FORGET_BATCH_MAX
        for start in range(0, len(txn_ids), step):
            chunk = tuple(txn_ids[start : start + step])
            try:
                await self._runner.run_txn_command(home, Forget(chunk), deadline)
                self.stats.forgotten += len(chunk)
            except ServiceError as error:
                logger.debug("forgetting %d transaction records failed: %s", len(chunk), error)

    async def _release(
        self, txn_id: bytes, shards: list[int], decision: Decision, deadline: float
    ) -> None:
        """Resolve every participant before going on: a retry (or the client's next
        transaction) must not meet this attempt's own locks. What is not confirmed within
        the bound is left to resolvers (the intents expire)."""
        bound = min(deadline, time.monotonic() + CLEANUP_S)
        await asyncio.gather(
            *(self._resolve_one(txn_id, shard, decision, bound) for shard in shards)
        )

    def _background_task(self, work: object) -> None:
        assert asyncio.iscoroutine(work)
        task = asyncio.get_running_loop().create_task(work)
        self._background.add(task)
        self.stats.forgets_pending = len(self._background)

        def done(finished: asyncio.Task[None]) -> None:
            self._background.discard(finished)
            self.stats.forgets_pending = len(self._background)
            if not finished.cancelled() and finished.exception() is not None:
                logger.debug("transaction cleanup failed: %s", finished.exception())

        task.add_done_callback(done)

    async def close(self) -> None:
        """Wait briefly for background releases; cancel what is left (intents expire)."""
        tasks = list(self._background)
        if not tasks:
            return
        _, pending = await asyncio.wait(tasks, timeout=1.0)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)

    def _crash_at(self, point: FaultPoint) -> None:
        if self._fault is point:
            logger.error("transaction fault point %s reached: exiting now", point.value)
            logging.shutdown()
            os._exit(FAULT_EXIT_CODE)


def _answer(
    holds: bool, prepared: dict[int, Prepared], home: tuple[tuple[int, OpResult], ...]
) -> TxnResponse:
    results: list[tuple[int, OpResult]] = list(home)
    for answer in prepared.values():
        results.extend(answer.success if holds else answer.failure)
    results.sort(key=lambda item: item[0])
    return TxnResponse(holds, tuple(r for _, r in results))
