"""Meeting a lock: wait for its transaction to finish, or resolve it from its record.

Whoever meets a prepared transaction's lock — a plain put, delete, get or scan, a one-phase
transaction, another coordinator's prepare — calls `wait_out(blockers, shard, ...)` and then
retries its request. While a blocker's intent is younger than its expiry, that is a short
jittered backoff (its coordinator is presumably finishing). Once it has expired, the caller
resolves it itself:

1. DECIDE(txn, ABORT) on the blocker's home shard. The record keeps the first decision, so
   this returns COMMIT_* if the coordinator got there first, else it makes ABORT the decision
   (a coordinator's later COMMIT then learns it lost).
2. RESOLVE(txn, decision) on the shard where the lock was met: its staged writes are applied
   or dropped and its locks released, in one entry. (A lock met on the home shard itself was
   already settled by step 1: DECIDE resolves the home shard's own intent by the record.)

Why this is safe whatever the timing: only the record decides, the record changes once, and
RESOLVE is idempotent (txn_locks.py). Clocks only decide *when* someone resolves, never what:
a skewed clock costs an unnecessary abort (the coordinator retries), never a lost or doubled
write. Why it is live: a coordinator killed at any point leaves intents that expire after
TXN_INTENT_TTL_MS, and the first request that meets one resolves it.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Sequence
from typing import Final, Protocol

from minikv_core.cluster.service import DeadlineExceededError
from minikv_core.cluster.txn_codec import (
    Blocker,
    Decide,
    Decided,
    Decision,
    Resolve,
    TxnBody,
    TxnResult,
)

BACKOFF_INITIAL_S: Final = 0.002
BACKOFF_MAX_S: Final = 0.1


class ShardRunner(Protocol):
    """Runs one transaction command on a shard's leader (locally or forwarded), returning
    its applied result. Raises ServiceErrors (UnavailableError, DeadlineExceededError, ...)."""

    async def run_txn_command(self, shard: int, body: TxnBody, deadline: float) -> TxnResult: ...


def wall_ms() -> int:
    """Wall-clock milliseconds: intent expiry must mean the same on every node (monotonic
    clocks of different processes are unrelated)."""
    return time.time_ns() // 1_000_000


def backoff_s(attempt: int, rng: random.Random) -> float:
    """Full-jitter exponential backoff: uniform in [0, min(MAX, INITIAL * 2**attempt)], so
    contenders that collided once spread apart (no-wait conflicts would otherwise repeat)."""
    full = min(BACKOFF_MAX_S, BACKOFF_INITIAL_S * (2 ** min(attempt, 16)))
    return float(full * rng.random())


async def resolve(blocker: Blocker, shard: int, runner: ShardRunner, deadline: float) -> Decision:
    """Settle an expired blocker: its record's decision (ABORT proposed if undecided), then
    apply it to its intent on `shard`. Returns the decision."""
    decided = await runner.run_txn_command(
        blocker.home_shard, Decide(blocker.txn_id, Decision.ABORT, resolve=True), deadline
    )
    assert isinstance(decided, Decided), decided
    if shard != blocker.home_shard:  # on its home shard, DECIDE resolved the intent as well
        await runner.run_txn_command(shard, Resolve(blocker.txn_id, decided.decision), deadline)
    return decided.decision


async def wait_out(
    blockers: Sequence[Blocker],
    shard: int,
    runner: ShardRunner,
    deadline: float,
    *,
    attempt: int,
    rng: random.Random,
) -> None:
    """Back off, or resolve the blockers that have expired; the caller then retries.

    Raises DeadlineExceededError when the deadline leaves no time to wait."""
    now_ms = wall_ms()
    expired = [b for b in blockers if b.expiry_ms <= now_ms]
    for blocker in expired:
        await resolve(blocker, shard, runner, deadline)
    if expired and len(expired) == len(blockers):
        return
    pause = backoff_s(attempt, rng)
    pending = [b.expiry_ms for b in blockers if b.expiry_ms > now_ms]
    if pending:
        # Never sleep past the moment the first blocker may be resolved.
        pause = min(pause, max(0.0, (min(pending) - now_ms) / 1000.0) + 0.001)
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise DeadlineExceededError("the deadline passed while waiting for a transaction's locks")
    await asyncio.sleep(min(pause, remaining))
