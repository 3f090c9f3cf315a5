"""Forgetting transaction records that no coordinator will forget.

A coordinator forgets its transaction's record once every participant has resolved its intent
(txn_coordinator.py). Some records outlive that path: the coordinator was killed after its
FINISH, or its resolves did not all confirm in time, or the record is an ABORT a resolver
wrote for an expired intent (txn_resolver.py), which nobody forgets. Each is a few bytes, but
a cluster that runs for months would keep them all. The collector, on every shard this node
leads, forgets records once they have been there for `age_s`:

1. RESOLVE (with the record's decision) on every shard of the cluster. A record does not name
   its participants, so every shard is asked; a shard without an intent of the transaction
   applies nothing (RESOLVE is idempotent, txn_locks.py). Afterwards no intent of it remains
   anywhere.
2. FORGET on the home shard, only once step 1 confirmed on every shard.

Invariant protected: *a record is deleted only when no intent of its transaction remains and
no coordinator can still decide it.* The first half is step 1: an intent that found its
record missing would be aborted by a resolver, which is wrong for a committed transaction.
The second half is the age: a coordinator proposes its FINISH only before its deadline, and
the node caps a transaction's deadline at half the age (NodeService.txn), so an ABORT record
deleted after the age can no longer be overtaken by a late COMMIT of its coordinator. The age
is measured from when *this* node first saw the record as the shard's leader, which is never
earlier than the record's creation: a new leader starts the clock again (conservative).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Final

from minikv_core.cluster import limits
from minikv_core.cluster.service import ServiceError
from minikv_core.cluster.txn_codec import Forget, Resolve, ResolveMany
from minikv_core.cluster.txn_locks import TxnLockTable
from minikv_core.cluster.txn_resolver import ShardRunner

logger = logging.getLogger(__name__)

SWEEP_PERIOD_MAX_S: Final = 30.0
SWEEP_DEADLINE_S: Final = 10.0
"""One sweep's commands share this deadline; what does not confirm waits for the next sweep."""
assert limits.TXN_RESOLVE_BATCH_MAX <= limits.TXN_FORGET_BATCH_MAX, "a batch is one FORGET"


class RecordCollector:
    """Forgets, on the shards this node leads, transaction records older than `age_s` (see
    the module docstring for why that is safe)."""

    def __init__(
        self,
        runner: ShardRunner,
        led_tables: Callable[[], Mapping[int, TxnLockTable]],
        all_shards: Callable[[], Sequence[int]],
        age_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        assert age_s > 0, age_s
        self._runner = runner
        self._led_tables = led_tables
        self._all_shards = all_shards
        self.age_s = age_s
        self._clock = clock
        self._first_seen: dict[tuple[int, bytes], float] = {}
        """(home shard, transaction id) -> when this node first saw the record as leader."""
        self.forgotten = 0
        self.sweeps = 0

    @property
    def period_s(self) -> float:
        """A record is forgotten between `age_s` and `age_s + period_s` after it was seen."""
        return min(SWEEP_PERIOD_MAX_S, max(0.5, self.age_s / 4))

    def document(self) -> dict[str, int]:
        return {"tracked": len(self._first_seen), "forgotten": self.forgotten}

    async def run(self) -> None:
        """Sweep every `period_s` until cancelled."""
        while True:
            await asyncio.sleep(self.period_s)
            try:
                await self.sweep()
            except Exception:
                logger.exception("transaction record collection failed")

    async def sweep(self) -> int:
        """One pass over the led shards; returns how many records were forgotten."""
        self.sweeps += 1
        now = self._clock()
        seen: dict[tuple[int, bytes], float] = {}
        due: dict[int, list[Resolve]] = {}
        for shard, table in sorted(self._led_tables().items()):
            for txn_id, decision in list(table.records.items()):
                first = self._first_seen.get((shard, txn_id), now)
                seen[(shard, txn_id)] = first
                batch = due.setdefault(shard, [])
                if now - first >= self.age_s and len(batch) < limits.TXN_RESOLVE_BATCH_MAX:
                    batch.append(Resolve(txn_id, decision))
        # Records gone (forgotten by their coordinator) and shards no longer led drop out:
        # if this node leads again later, their clock restarts.
        self._first_seen = seen
        deadline = time.monotonic() + SWEEP_DEADLINE_S
        forgotten = 0
        for home, items in due.items():
            if not items:
                continue
            try:
                forgotten += await self._collect(home, items, deadline)
            except ServiceError as error:
                logger.info(
                    "forgetting %d transaction record(s) of shard %d waits for the next sweep: %s",
                    len(items),
                    home,
                    error,
                )
        return forgotten

    async def _collect(self, home: int, items: list[Resolve], deadline: float) -> int:
        body: Resolve | ResolveMany = items[0] if len(items) == 1 else ResolveMany(tuple(items))
        for shard in self._all_shards():
            await self._runner.run_txn_command(shard, body, deadline)
        txn_ids = tuple(item.txn_id for item in items)
        assert len(txn_ids) <= limits.TXN_FORGET_BATCH_MAX
        await self._runner.run_txn_command(home, Forget(txn_ids), deadline)
        for txn_id in txn_ids:
            self._first_seen.pop((home, txn_id), None)
        self.forgotten += len(txn_ids)
        logger.info("forgot %d transaction record(s) of shard %d", len(txn_ids), home)
        return len(txn_ids)
