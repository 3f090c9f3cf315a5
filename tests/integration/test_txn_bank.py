"""The bank: accounts on every shard, concurrent version-checked transfers as cross-shard
transactions while nodes (coordinators and participants alike) are SIGKILLed and restarted, then
one is cut off from the others by a symmetric partition and healed.
Every read-all transaction sees the same total, and the final total is exact.

Why the invariant holds even for transfers whose outcome is unknown (the client gave up, its
coordinator died): each transfer conserves the total, so whether it committed or not, every
consistent snapshot sums to the same amount. A lost or doubled half of a transfer, or a read
of a half-applied one, changes the sum.
"""

from __future__ import annotations

import asyncio
import random
import signal
import time
from collections.abc import Callable

import aiohttp

from minikv_core.client import (
    AsyncClient,
    ClientError,
    Compare,
    CompareTarget,
    OpKind,
    TxnOp,
)
from minikv_core.cluster.shard_map import shard_for_key
from tests.integration.conftest import Cluster, heal, partition

SHARDS = 4
ACCOUNTS_PER_SHARD = 3
BALANCE = 100
CHAOS_S = 16.0
SEED = 20_240_611


def account_keys() -> list[bytes]:
    by_shard: dict[int, list[bytes]] = {s: [] for s in range(SHARDS)}
    number = 0
    while any(len(keys) < ACCOUNTS_PER_SHARD for keys in by_shard.values()):
        key = f"acct-{number:03d}".encode()
        keys = by_shard[shard_for_key(key, SHARDS)]
        if len(keys) < ACCOUNTS_PER_SHARD:
            keys.append(key)
        number += 1
    return sorted(k for keys in by_shard.values() for k in keys)


async def test_bank_total_is_invariant_under_kills_and_isolation(
    cluster_factory: Callable[..., Cluster],
) -> None:
    cluster = cluster_factory(size=3, shards=SHARDS)
    rng = random.Random(SEED)
    accounts = account_keys()
    total = BALANCE * len(accounts)
    async with aiohttp.ClientSession() as session:
        cluster.session = session
        await cluster.start()
        await cluster.wait_ready()
        async with AsyncClient(
            cluster.grpc_endpoints, timeout_s=10, rng=random.Random(rng.getrandbits(32))
        ) as kv:
            await kv.txn(success=[TxnOp(OpKind.PUT, k, str(BALANCE).encode()) for k in accounts])
            stop_at = time.monotonic() + CHAOS_S
            totals: list[int] = []
            committed = [0]
            failures: list[str] = []

            async def read_all() -> list[int] | None:
                try:
                    answer = await kv.txn(success=[TxnOp(OpKind.GET, k) for k in accounts])
                except ClientError:
                    return None
                return [int(r.value or b"0") for r in answer.results]

            async def transfers(worker: int) -> None:
                local = random.Random(SEED + worker)
                while time.monotonic() < stop_at:
                    source, target = local.sample(accounts, 2)
                    try:
                        snapshot = await kv.txn(
                            success=[TxnOp(OpKind.GET, source), TxnOp(OpKind.GET, target)]
                        )
                        have, other = snapshot.results
                        amount = local.randint(1, 10)
                        assert have.value is not None and other.value is not None
                        answer = await kv.txn(
                            compare=[
                                Compare(source, CompareTarget.VERSION, version=have.version),
                                Compare(target, CompareTarget.VERSION, version=other.version),
                            ],
                            success=[
                                TxnOp(OpKind.PUT, source, str(int(have.value) - amount).encode()),
                                TxnOp(OpKind.PUT, target, str(int(other.value) + amount).encode()),
                            ],
                        )
                        committed[0] += int(answer.succeeded)
                    except ClientError:
                        await asyncio.sleep(0.05)  # a node is down or a conflict persisted

            async def auditor() -> None:
                while time.monotonic() < stop_at:
                    balances = await read_all()
                    if balances is not None:
                        totals.append(sum(balances))
                        if sum(balances) != total:
                            failures.append(f"read-all saw {sum(balances)}: {balances}")
                    await asyncio.sleep(0.05)

            async def chaos() -> None:
                await asyncio.sleep(2.0)
                for _ in range(2):
                    victim = rng.choice(sorted(cluster.nodes))
                    cluster.kill(victim, signal.SIGKILL)
                    await asyncio.sleep(1.5)
                    cluster.launch(victim)
                    await cluster.wait_started(victim)
                    await cluster.wait_ready()
                    await asyncio.sleep(2.0)
                # Isolation (the bank test): the cut-off node's coordinators and
                # replicas stall, the majority side goes on; healed, it must rejoin.
                isolated = rng.choice(sorted(cluster.nodes))
                await partition(cluster, isolated)
                await asyncio.sleep(2.0)
                await heal(cluster)

            await asyncio.gather(chaos(), auditor(), *(transfers(w) for w in range(4)))
            assert not failures, failures[:3]
            assert len(totals) >= 5, f"too few read-all transactions succeeded: {totals}"
            assert committed[0] >= 10, f"too few transfers committed: {committed[0]}"
            final = None
            deadline = time.monotonic() + 20
            while final is None and time.monotonic() < deadline:
                final = await read_all()
            assert final is not None, "no read-all transaction succeeded after the chaos"
            assert sum(final) == total, final
