"""The load generator (`minikv_tui.loadgen`) against a real three-node cluster over gRPC and
HTTP, and against a real etcd member when one is installed; its histogram against exact
percentiles.

One cluster serves the whole module (starting three nodes costs seconds on a loaded machine);
each test writes under its own key prefix so none depends on another's data.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import random
import shutil
import signal
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from pathlib import Path

import aiohttp
import pytest

from minikv_core.client import AsyncClient, ShardRouting
from minikv_core.cluster.shard_map import shard_for_key
from minikv_tui.loadgen import (
    EtcdHttpTarget,
    GrpcTarget,
    LatencyHistogram,
    LoadGenerator,
    MinikvHttpTarget,
    ShardedKeys,
    key_bytes,
    value_bytes,
)
from tests.integration.conftest import Cluster, reserve_ports

pytestmark = pytest.mark.integration

DEADLINE_S = 30.0
POLL_S = 0.02


async def _start(cluster: Cluster) -> None:
    async with aiohttp.ClientSession() as session:
        cluster.session = session
        try:
            await cluster.start()
            await cluster.wait_ready()
        finally:
            cluster.session = None


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    made = Cluster(tmp_path_factory.mktemp("loadgen"), size=3, shards=2, replicas=3)
    made.root.mkdir(parents=True, exist_ok=True)
    try:
        asyncio.run(_start(made))
        yield made
    finally:
        made.kill_all()


@pytest.fixture
async def client(cluster: Cluster) -> AsyncIterator[AsyncClient]:
    async with AsyncClient(cluster.grpc_endpoints, rng=random.Random(1)) as made:
        yield made


async def wait_for(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {DEADLINE_S}s waiting for {what}")
        await asyncio.sleep(POLL_S)


def loadgen_tasks() -> list[asyncio.Task[object]]:
    return [t for t in asyncio.all_tasks() if t.get_name().startswith("loadgen-") and not t.done()]


async def test_put_load_is_counted_and_windows_add_up_to_the_totals(client: AsyncClient) -> None:
    generator = LoadGenerator(
        client, workload="put", clients=4, keys=20, value_size=64, seed=3, prefix=b"t-put/"
    )
    windows = []
    generator.start()
    try:
        assert generator.running
        await wait_for(lambda: generator.totals().ops >= 20, "20 puts")
        windows.append(generator.take_window())
        await wait_for(lambda: generator.totals().ops >= 40, "40 puts")
    finally:
        await generator.stop()
    windows.append(generator.take_window())
    totals = generator.totals()

    assert not generator.running
    assert totals.errors == 0, totals.last_error
    assert totals.writes == totals.ops and totals.reads == 0
    assert sum(w.ops for w in windows) == totals.ops
    first = windows[0]
    assert first.ops >= 20 and first.errors == 0 and first.last_error is None
    assert first.seconds > 0 and first.ops_per_s == pytest.approx(first.ops / first.seconds)
    assert first.p50_ms is not None and first.p99_ms is not None
    assert 0 < first.p50_ms <= first.p99_ms
    # The puts really happened: the key space holds the generator's value.
    assert await client.get(key_bytes(b"t-put/", 0)) == value_bytes(64, 3)


async def test_get_load_after_preload_finds_every_key(client: AsyncClient) -> None:
    generator = LoadGenerator(
        client, workload="get", clients=4, keys=30, value_size=10, prefix=b"t-get/"
    )
    await generator.preload(concurrency=8)
    generator.start()
    try:
        await wait_for(lambda: generator.totals().ops >= 60, "60 gets")
    finally:
        await generator.stop()
    totals = generator.totals()
    assert totals.errors == 0, totals.last_error
    assert totals.reads == totals.ops and totals.writes == 0
    assert totals.misses == 0


async def test_get_load_without_preload_counts_misses(client: AsyncClient) -> None:
    generator = LoadGenerator(client, workload="get", clients=2, keys=5, prefix=b"t-absent/")
    generator.start()
    try:
        await wait_for(lambda: generator.totals().ops >= 10, "10 gets")
    finally:
        await generator.stop()
    totals = generator.totals()
    assert totals.misses == totals.reads == totals.ops
    assert totals.errors == 0


async def test_mixed_load_reads_and_writes_over_http(cluster: Cluster) -> None:
    async with (
        aiohttp.ClientSession() as session,
        MinikvHttpTarget([n.url for n in cluster.nodes.values()]) as target,
    ):
        # Keys are percent-encoded bytes in the path: a slash and a 0xFF survive the trip.
        await target.put(1, b"t-mixed/\xff/k", b"v1")
        assert await target.get(2, b"t-mixed/\xff/k") is True
        assert await target.get(0, b"t-mixed/absent") is False
        async with session.get(target.urls[0] + "/kv/t-mixed%2F%FF%2Fk") as response:
            assert response.status == 200 and await response.read() == b"v1"
        generator = LoadGenerator(
            target, workload="mixed", clients=3, keys=10, prefix=b"t-mixed/", seed=5
        )
        generator.start()
        try:
            await wait_for(
                lambda: generator.totals().reads >= 5 and generator.totals().writes >= 5,
                "5 reads and 5 writes",
            )
        finally:
            await generator.stop()
        totals = generator.totals()
        assert totals.errors == 0, totals.last_error
        assert totals.reads + totals.writes == totals.ops


async def test_stop_leaves_no_tasks_and_start_again_resumes(client: AsyncClient) -> None:
    generator = LoadGenerator(client, workload="put", clients=5, keys=10, prefix=b"t-restart/")
    for round_number in range(2):
        generator.start()
        assert len(loadgen_tasks()) == 5
        await wait_for(lambda: generator.totals().ops >= 5, f"5 puts in round {round_number}")
        await generator.stop()
        assert not generator.running
        assert loadgen_tasks() == []
    await generator.stop()  # stopping a stopped generator is harmless


async def test_failures_are_counted_with_the_last_error() -> None:
    (closed_port,) = reserve_ports(1)  # nothing listens: every connection is refused
    async with MinikvHttpTarget([f"http://127.0.0.1:{closed_port}"]) as target:
        generator = LoadGenerator(target, workload="mixed", clients=2, keys=5)
        generator.start()
        try:
            await wait_for(lambda: generator.totals().errors >= 4, "4 failed requests")
        finally:
            await generator.stop()
    window = generator.take_window()
    assert window.ops == 0 and window.errors >= 4
    assert window.p50_ms is None and window.p99_ms is None
    assert window.last_error is not None and "Connect" in window.last_error
    assert generator.totals().ops == 0


class RecordingTarget:
    """Records each worker's request stream; answers at once. Used only to check that the
    generator's choices are a function of the seed (no store is the subject here)."""

    def __init__(self) -> None:
        self.streams: dict[int, list[tuple[str, bytes]]] = {}

    async def put(self, worker: int, key: bytes, value: bytes) -> None:
        self.streams.setdefault(worker, []).append(("put", key))
        await asyncio.sleep(0)

    async def get(self, worker: int, key: bytes) -> bool:
        self.streams.setdefault(worker, []).append(("get", key))
        await asyncio.sleep(0)
        return True

    async def txn(self, worker: int, keys: Sequence[bytes], value: bytes) -> None:
        self.streams.setdefault(worker, []).append(("txn", b"+".join(keys)))
        await asyncio.sleep(0)


def test_arguments_out_of_range_are_refused() -> None:
    target = RecordingTarget()
    with pytest.raises(ValueError, match="clients"):
        LoadGenerator(target, clients=0)
    with pytest.raises(ValueError, match="workload"):
        LoadGenerator(target, workload="scan")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="read_fraction"):
        LoadGenerator(target, read_fraction=1.5)


async def _streams(seed: int) -> dict[int, list[tuple[str, bytes]]]:
    target = RecordingTarget()
    generator = LoadGenerator(target, workload="mixed", clients=3, keys=1000, seed=seed)
    generator.start()
    try:
        await wait_for(lambda: all(len(target.streams.get(w, [])) >= 50 for w in range(3)), "ops")
    finally:
        await generator.stop()
    return {worker: stream[:50] for worker, stream in target.streams.items()}


async def test_the_seed_fixes_each_workers_request_stream() -> None:
    first, again, other = await _streams(11), await _streams(11), await _streams(12)
    assert first == again
    assert first != other
    kinds = [kind for stream in first.values() for kind, _ in stream]
    assert 0.3 < kinds.count("get") / len(kinds) < 0.7  # mixed is about half reads


# ---------------------------------------------------------------------------- transactions


@pytest.mark.parametrize("shard_count", [2, 3, 8])
def test_txn_pairs_are_two_keys_on_two_shards_and_txn1_pairs_share_one(shard_count: int) -> None:
    rng = random.Random(7)
    spread = ShardedKeys(b"k/", 200, shard_count, spread=True)
    single = ShardedKeys(b"k/", 200, shard_count, spread=False)
    firsts: set[bytes] = set()
    for _ in range(2000):
        first, second = spread.pair(rng)
        assert shard_for_key(first, shard_count) != shard_for_key(second, shard_count)
        firsts.add(first)
        first, second = single.pair(rng)
        assert first != second
        assert shard_for_key(first, shard_count) == shard_for_key(second, shard_count)
    assert len(firsts) > 150  # drawn from the whole key space, not a corner of it
    assert all(key.startswith(b"k/") for key in firsts)


def test_transaction_workloads_refuse_key_spaces_they_cannot_place() -> None:
    with pytest.raises(ValueError, match="needs keys on 2 or more shards"):
        ShardedKeys(b"k/", 5, 1, spread=True)
    with pytest.raises(ValueError, match="needs keys on 2 or more shards"):
        ShardedKeys(b"k/", 1, 8, spread=True)
    with pytest.raises(ValueError, match="needs 2 or more keys on one shard"):
        ShardedKeys(b"k/", 1, 8, spread=False)
    with pytest.raises(ValueError, match="needs the cluster's shard count"):
        LoadGenerator(RecordingTarget(), workload="txn")
    assert len(ShardedKeys(b"k/", 2, 1, spread=False).pair(random.Random(1))) == 2


async def test_the_seed_fixes_each_workers_transactions() -> None:
    async def streams(seed: int) -> dict[int, list[tuple[str, bytes]]]:
        target = RecordingTarget()
        generator = LoadGenerator(
            target, workload="txn", clients=2, keys=100, seed=seed, shard_count=4
        )
        generator.start()
        try:
            await wait_for(lambda: all(len(target.streams.get(w, [])) >= 20 for w in (0, 1)), "")
        finally:
            await generator.stop()
        return {worker: stream[:20] for worker, stream in target.streams.items()}

    first, again = await streams(3), await streams(3)
    assert first == again
    assert {kind for stream in first.values() for kind, _ in stream} == {"txn"}
    assert first != await streams(4)


async def shard_count_of(client: AsyncClient) -> int:
    return ShardRouting.from_document(await client.shard_map()).shard_count


async def coordinated(client: AsyncClient, cluster: Cluster) -> dict[str, int]:
    """Transaction coordinator counters summed over the nodes."""
    total: dict[str, int] = {}
    for address in cluster.grpc_endpoints:
        counters = (await client.status(address))["txn"]["coordinator"]
        for name, value in counters.items():
            total[name] = total.get(name, 0) + int(value)
    return total


@pytest.mark.parametrize(("workload", "counter"), [("txn", "committed"), ("txn1", "one_phase")])
async def test_txn_load_commits_transactions_of_the_kind_asked(
    client: AsyncClient, cluster: Cluster, workload: str, counter: str
) -> None:
    """txn runs two-phase commits and txn1 one-phase ones, each counted as one write; the
    cluster's coordinators count the same transactions."""
    prefix = f"t-{workload}/".encode()
    shard_count = await shard_count_of(client)
    before = await coordinated(client, cluster)
    generator = LoadGenerator(
        client,
        workload=workload,  # type: ignore[arg-type]
        clients=3,
        keys=20,
        value_size=16,
        seed=9,
        prefix=prefix,
        shard_count=shard_count,
    )
    generator.start()
    try:
        await wait_for(lambda: generator.totals().ops >= 12, f"12 {workload} transactions")
    finally:
        await generator.stop()
    totals = generator.totals()
    after = await coordinated(client, cluster)
    assert totals.errors == 0, totals.last_error
    assert totals.writes == totals.ops and totals.reads == 0
    assert totals.p50_ms is not None and totals.p50_ms > 0
    # Every answered transaction was counted by a coordinator as the kind asked (abandoned
    # in-flight ones at stop() may add a few).
    other = "one_phase" if counter == "committed" else "committed"
    assert totals.ops <= after[counter] - before[counter] <= totals.ops + 3
    assert after[other] == before[other]
    # The transactions wrote: the keys drawn hold the generator's value, and only that.
    written = (await client.scan(prefix=prefix, limit=100)).items
    assert len(written) >= 2
    assert {item.value for item in written} == {value_bytes(16, 9)}


async def test_txn_over_http_and_grpc_write_both_keys(
    client: AsyncClient, cluster: Cluster
) -> None:
    shard_count = await shard_count_of(client)
    pair = ShardedKeys(b"t-txn-http/", 10, shard_count, spread=True).pair(random.Random(2))
    await GrpcTarget(client).txn(0, pair, b"grpc")
    assert [await client.get(key) for key in pair] == [b"grpc", b"grpc"]
    async with MinikvHttpTarget([n.url for n in cluster.nodes.values()]) as target:
        await target.txn(1, pair, b"\xffhttp")  # binary values go as value_b64
        assert [await client.get(key) for key in pair] == [b"\xffhttp", b"\xffhttp"]
        generator = LoadGenerator(
            target, workload="txn", clients=2, keys=10, prefix=b"t-txn-http/", shard_count=2
        )
        generator.start()
        try:
            await wait_for(lambda: generator.totals().ops >= 6, "6 transactions over HTTP")
        finally:
            await generator.stop()
        assert generator.totals().errors == 0, generator.totals().last_error


async def test_a_refused_transaction_is_counted_as_an_error(cluster: Cluster) -> None:
    """A key the store refuses (the reserved transaction prefix) makes every transaction
    fail: each is an error with the store's answer, none an op."""
    async with MinikvHttpTarget([cluster.nodes[1].url]) as target:
        generator = LoadGenerator(
            target, workload="txn1", clients=1, keys=4, prefix=b"\xff\xffminikv/txn/", shard_count=1
        )
        generator.start()
        try:
            await wait_for(lambda: generator.totals().errors >= 2, "2 refused transactions")
        finally:
            await generator.stop()
    totals = generator.totals()
    assert totals.ops == 0
    assert totals.last_error is not None and "HTTP 400" in totals.last_error


def test_histogram_percentiles_are_within_its_precision() -> None:
    rng = random.Random(42)
    samples_s = [rng.lognormvariate(-6.0, 1.5) for _ in range(20_000)]  # ~2.5 ms median
    histogram = LatencyHistogram()
    for sample in samples_s:
        histogram.record(sample)
    exact_us = sorted(round(s * 1e6) for s in samples_s)
    for fraction in (0.5, 0.9, 0.99, 0.999):
        exact_ms = exact_us[math.ceil(fraction * len(exact_us)) - 1] / 1e3
        measured = histogram.percentile_ms(fraction)
        assert measured is not None
        assert exact_ms <= measured <= exact_ms * 1.008 + 0.001, (fraction, exact_ms, measured)
    assert histogram.max_ms == exact_us[-1] / 1e3
    assert histogram.percentile_ms(1.0) == histogram.max_ms
    assert histogram.count == len(samples_s)


def test_histogram_small_values_are_exact_and_merge_adds() -> None:
    first, second = LatencyHistogram(), LatencyHistogram()
    assert first.percentile_ms(0.5) is None and first.max_ms is None
    for microseconds in (1, 2, 3, 255):
        first.record(microseconds / 1e6)
    second.record(0.5)
    first.merge(second)
    assert first.count == 5
    assert first.percentile_ms(0.2) == 0.001
    assert first.percentile_ms(0.8) == 0.255
    assert first.max_ms == 500.0


@pytest.fixture
def etcd_member(tmp_path: Path) -> Iterator[str]:
    """One real etcd member (Debian's etcd-server), when installed; stopped in teardown."""
    etcd = shutil.which("etcd")
    if etcd is None:
        pytest.skip("etcd is not installed (apt-get install etcd-server)")
    client_port, peer_port = reserve_ports(2)
    url = f"http://127.0.0.1:{client_port}"
    peer = f"http://127.0.0.1:{peer_port}"
    log = (tmp_path / "etcd.log").open("wb")
    process = subprocess.Popen(
        [
            etcd,
            "--name=m1",
            f"--data-dir={tmp_path / 'etcd'}",
            f"--listen-client-urls={url}",
            f"--advertise-client-urls={url}",
            f"--listen-peer-urls={peer}",
            f"--initial-advertise-peer-urls={peer}",
            f"--initial-cluster=m1={peer}",
            "--logger=zap",
            "--log-outputs=stderr",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={k: v for k, v in os.environ.items() if not k.startswith("ETCD")},
        start_new_session=True,
    )
    try:
        yield url
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=20)
        log.close()


async def test_etcd_target_speaks_the_v3_json_gateway(etcd_member: str) -> None:
    async with contextlib.AsyncExitStack() as stack, aiohttp.ClientSession() as session:

        async def healthy() -> bool:
            try:
                async with session.get(etcd_member + "/health") as response:
                    return response.status == 200
            except aiohttp.ClientError:
                return False

        deadline = time.monotonic() + DEADLINE_S
        while not await healthy():
            assert time.monotonic() < deadline, "etcd did not become healthy"
            await asyncio.sleep(0.05)
        target = EtcdHttpTarget([etcd_member])
        stack.push_async_callback(target.close)
        assert await target.get(0, b"e/absent") is False
        await target.put(0, b"e/\x00k", b"\xffvalue")
        assert await target.get(0, b"e/\x00k") is True
        generator = LoadGenerator(target, workload="get", clients=2, keys=10, prefix=b"e/")
        await generator.preload()
        generator.start()
        try:
            await wait_for(lambda: generator.totals().ops >= 20, "20 etcd gets")
        finally:
            await generator.stop()
        totals = generator.totals()
        assert totals.errors == 0, totals.last_error
        assert totals.misses == 0
        await target.txn(1, [b"e/t1", b"e/t2"], b"\x00both")
        assert await target.get(0, b"e/t1") is True and await target.get(0, b"e/t2") is True
