"""The blocking client against real node processes while a shard leader is SIGKILLed: it
routes, follows leader hints, retries through the election, and loses no acknowledged write.
The write in flight when its leader dies rides through too: it is sent again with its
session, so the new leader applies it once (or answers what it answered, if it had applied)."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from minikv_core.client import (
    Client,
    ClientError,
    OutcomeUnknownError,
    ShardRouting,
)
from minikv_core.cluster.shard_map import shard_for_key
from tests.integration.conftest import Cluster, eventually

pytestmark = pytest.mark.integration


async def test_sync_client_rides_through_a_leader_kill_without_losing_acks(
    cluster: Cluster,
) -> None:
    acknowledged: dict[bytes, bytes] = {}
    unknown: list[bytes] = []
    failures: list[BaseException] = []
    stop = threading.Event()
    with Client(cluster.grpc_endpoints, timeout_s=10) as kv:
        routing = ShardRouting.from_document(kv.shard_map())
        victim = routing.leaders[0]
        # Keys of the victim's shards, so every write needs the election to finish.
        keys = [
            b"fo/%d" % n
            for n in range(2000)
            if routing.leaders[shard_for_key(b"fo/%d" % n, routing.shard_count)] == victim
        ][:400]

        def writer() -> None:
            for key in keys:
                if stop.is_set():
                    return
                try:
                    kv.put(key, key[::-1])
                except OutcomeUnknownError:
                    unknown.append(key)
                    continue
                except ClientError as error:
                    failures.append(error)
                    return
                acknowledged[key] = key[::-1]

        thread = threading.Thread(target=writer)
        thread.start()
        try:
            await eventually(lambda: len(acknowledged) >= 30, "writes before the kill", 15)
            killed_at = time.monotonic()
            cluster.kill(victim)
            count = len(acknowledged)
            await eventually(
                lambda: len(acknowledged) >= count + 30 or failures,
                "writes after the kill",
                15,
                cluster.describe,
            )
            resumed_after_s = time.monotonic() - killed_at
        finally:
            stop.set()
            await asyncio.to_thread(thread.join, 30)
        assert not failures, failures
        assert resumed_after_s < 5.0, f"writes resumed {resumed_after_s:.2f}s after the kill"
        for key, value in acknowledged.items():
            assert kv.get(key) == value, key
        assert not unknown, f"no write is in doubt with sessions: {unknown}"
