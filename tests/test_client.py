"""The client: shard routing and leader cache (pure), then the async and sync clients against
a real three-node cluster in this process (real nodes, sockets, files)."""

from __future__ import annotations

import asyncio
import random
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import pytest

from minikv_core.client import (
    AsyncClient,
    Client,
    ClientError,
    Consistency,
    DeadlineExceededError,
    InvalidRequestError,
    NotFoundError,
    OutcomeUnknownError,
    ShardRouting,
    TooLargeError,
    UnavailableError,
    _Router,
)
from minikv_core.cluster import service
from minikv_core.cluster.shard_map import shard_for_key
from minikv_core.net.errors_map import hint_metadata, mapping_for
from minikv_core.net.proto import kv_pb2, kv_pb2_grpc
from minikv_core.server import NodeServer
from tests.integration.conftest import reserve_ports
from tests.net.api_harness import configs, node_of, running

# --- routing (pure) --------------------------------------------------------------------------

MAP: dict[str, Any] = {
    "epoch": 3,
    "shard_count": 4,
    "nodes": {"1": {"grpc": "h:1"}, "2": {"grpc": "h:2"}, "3": {"grpc": "h:3"}},
    "shards": [
        {"shard": 0, "replicas": [1, 2, 3], "leader": 1},
        {"shard": 1, "replicas": [1, 2, 3], "leader": 2},
        {"shard": 2, "replicas": [2, 3], "leader": 0},
        {"shard": 3, "replicas": [1, 3], "leader": 3},
    ],
}


def test_shard_map_document_is_parsed_into_routing() -> None:
    routing = ShardRouting.from_document(MAP)
    assert routing.epoch == 3 and routing.shard_count == 4
    assert routing.addresses == {1: "h:1", 2: "h:2", 3: "h:3"}
    assert routing.leaders == {0: 1, 1: 2, 3: 3}, "a leader of 0 means unknown"
    assert routing.replicas[2] == (2, 3)


@pytest.mark.parametrize(
    "broken",
    [
        {},
        {"shard_count": 0, "nodes": {}, "shards": []},
        {"shard_count": 2, "nodes": {"1": {}}, "shards": []},
        {"shard_count": 2, "nodes": {"1": {"grpc": "h:1"}}, "shards": [{"replicas": "x1"}]},
    ],
)
def test_malformed_shard_maps_are_refused(broken: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match=r"malformed shard map|no gRPC address"):
        ShardRouting.from_document(broken)


def test_router_sends_to_the_cached_leader_and_follows_hints() -> None:
    router = _Router(["seed:1"], random.Random(1))
    assert router.target(None, 0) == "seed:1", "before any map: the first seed"
    router.install(ShardRouting.from_document(MAP))
    assert router.target(1, 0) == "h:2"
    assert router.learn_leader(1, 3) is True, "a new leader is worth an instant retry"
    assert router.target(1, 0) == "h:3"
    assert router.learn_leader(1, 3) is False, "the same hint again is not"
    assert router.learn_leader(1, 9) is False, "a node without an address is ignored"
    router.forget_leader(2)
    assert router.target(2, 0) in ("h:2", "h:3"), "no leader: a replica (it forwards)"
    assert {router.target(2, attempt) for attempt in range(4)} == {"h:2", "h:3"}


def test_router_passes_over_a_leader_the_request_could_not_reach() -> None:
    """A map that keeps naming a dead leader (a node serving a stale hint) is put back after
    every failure: the request must go to the shard's other replicas, one of which leads or
    knows who does, instead of dialling the dead node until its deadline (a chaos run)."""
    router = _Router(["seed:1"], random.Random(1))
    routing = ShardRouting.from_document(MAP)
    router.install(routing)
    assert router.target(1, 0) == "h:2"
    tried = set()
    for attempt in range(4):
        router.forget_leader(1)
        router.install(routing)  # the refreshed map names node 2 again
        tried.add(router.target(1, attempt, {"h:2"}))
    assert tried == {"h:1", "h:3"}, "the other replicas, in turn"
    everyone = {"h:1", "h:2", "h:3"}
    assert router.target(1, 0, everyone) in everyone, "none left: try them anyway"


def test_router_keeps_the_newer_map_epoch() -> None:
    router = _Router(["seed:1"], random.Random(1))
    router.install(ShardRouting.from_document(MAP))
    older = dict(MAP, epoch=2, nodes={"1": {"grpc": "old:1"}})
    router.install(ShardRouting.from_document(older))
    assert router.routing is not None and router.routing.epoch == 3


def test_router_routes_keys_with_the_node_shard_function() -> None:
    router = _Router(["seed:1"], random.Random(1))
    router.install(ShardRouting.from_document(MAP))
    for key in (b"a", b"user/1", b"\x00\xff"):
        assert router.shard_of(key) == shard_for_key(key, 4)


def test_bad_endpoints_and_timeouts_are_refused_up_front() -> None:
    with pytest.raises(InvalidRequestError, match="at least one endpoint"):
        AsyncClient([])
    with pytest.raises(InvalidRequestError, match="host:port"):
        AsyncClient(["nohost"])
    with pytest.raises(InvalidRequestError, match="timeout_s"):
        AsyncClient(["h:1"], timeout_s=0)


# --- against a real cluster -----------------------------------------------------------------


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[list[NodeServer]]:
    async with running(configs(tmp_path, 3, shards=4, replicas=3)) as servers:
        yield servers


def endpoints(servers: list[NodeServer]) -> list[str]:
    return [server.grpc_address for server in servers]


async def test_async_client_round_trips_through_any_endpoint(
    cluster: list[NodeServer],
) -> None:
    async with AsyncClient(endpoints(cluster)[2:]) as kv:
        versions = {}
        for n in range(20):
            versions[n] = await kv.put(b"key%d" % n, b"value%d" % n)
        for n in range(20):
            found = await kv.get_versioned(b"key%d" % n)
            assert (found.value, found.version) == (b"value%d" % n, versions[n])
        assert await kv.get(b"key3", consistency=Consistency.STALE) in (b"value3",)
        assert await kv.delete(b"key3") is True
        assert await kv.delete(b"key3") is False
        with pytest.raises(NotFoundError):
            await kv.get(b"key3")
        page = await kv.scan(prefix=b"key", limit=5)
        assert [item.key for item in page.items] == sorted(
            b"key%d" % n for n in range(20) if n != 3
        )[:5]
        assert page.more
        document = await kv.shard_map()
        assert document["shard_count"] == 4
        status = await kv.status()
        assert status["node_id"] == 3


async def test_admin_calls_reach_the_named_node(cluster: list[NodeServer]) -> None:
    async with AsyncClient(endpoints(cluster)) as kv:
        await kv.put(b"admin-key", b"v")
        target = endpoints(cluster)[1]
        wal = await kv.wal(target)
        assert wal["segments"] and wal["segments"][0]["records"] > 0
        tables = await kv.sstables(target)
        assert [shard["shard"] for shard in tables["shards"]] == [0, 1, 2, 3]

        cut = await kv.set_fault(target, drop_to=[1], drop_from=[3])
        assert (cut["fault"]["drop_to"], cut["fault"]["drop_from"]) == ([1], [3])
        status = await kv.status(target)
        assert status["node_id"] == 2 and status["fault"]["drop_to"] == [1]
        assert (await kv.clear_fault(target))["fault"] is None
        assert (await kv.status(target))["fault"]["drop_to"] == []

        snapshot = await kv.snapshot(target, [0])
        assert [s["shard"] for s in snapshot["snapshots"]] == [0]
        compact = await kv.compact(target, [0])
        assert [s["shard"] for s in compact["compacted"]] == [0]
        shard_map = await kv.shard_map()
        shard = shard_map["shards"][0]
        new_leader = next(n for n in shard["replicas"] if n != shard["leader"])
        leader_address = endpoints(cluster)[shard["leader"] - 1]
        await kv.transfer_leader(leader_address, 0, new_leader)

        async def moved() -> bool:
            for _ in range(100):
                document = await kv.status(endpoints(cluster)[new_leader - 1])
                group = next(g for g in document["groups"] if g["shard"] == 0)
                if group["role"] == "leader":
                    return True
                await asyncio.sleep(0.05)
            return False

        assert await moved(), "leadership of shard 0 did not move"
        with pytest.raises(InvalidRequestError):
            await kv.transfer_leader(leader_address, 99, new_leader)


def grpc_puts(server: NodeServer) -> int:
    """KV.Put calls this node answered OK, from its own /metrics registry."""
    value = server.metrics.registry.get_sample_value(
        "minikv_requests_total", {"api": "grpc", "route": "KV.Put", "code": "OK"}
    )
    return int(value or 0)


async def test_client_sends_each_key_straight_to_its_shard_leader(
    cluster: list[NodeServer],
) -> None:
    async with AsyncClient(endpoints(cluster)[:1]) as kv:
        routing = ShardRouting.from_document(await kv.shard_map())
        before = {server.config.node_id: grpc_puts(server) for server in cluster}
        expected = dict.fromkeys(before, 0)
        for n in range(24):
            key = b"routed%d" % n
            await kv.put(key, b"v")
            expected[routing.leaders[shard_for_key(key, routing.shard_count)]] += 1
        after = {server.config.node_id: grpc_puts(server) for server in cluster}
    # No hop through a follower: each leader answered exactly the puts of its shards (a
    # forwarded put would be counted twice, once by the follower and once by the leader).
    assert {n: after[n] - before[n] for n in after} == expected


async def test_client_errors_are_typed(cluster: list[NodeServer]) -> None:
    async with AsyncClient(endpoints(cluster)) as kv:
        with pytest.raises(TooLargeError, match="4096"):
            await kv.put(b"k" * 4097, b"v")
        with pytest.raises(InvalidRequestError, match="empty"):
            await kv.put(b"", b"v")
        with pytest.raises(InvalidRequestError, match="bytes"):
            await kv.put("text", b"v")  # type: ignore[arg-type]
        with pytest.raises(InvalidRequestError, match="limit"):
            await kv.scan(limit=0)
        assert issubclass(NotFoundError, ClientError)


async def test_client_without_a_reachable_leader_raises_within_its_deadline(
    tmp_path: Path,
) -> None:
    lonely = configs(tmp_path, 1, shards=1, replicas=3, peers_count=3)
    async with (
        running(lonely, wait_ready=False) as [server],
        AsyncClient([server.grpc_address], timeout_s=0.5) as kv,
    ):
        started = asyncio.get_running_loop().time()
        with pytest.raises((UnavailableError, DeadlineExceededError)):
            await kv.put(b"k", b"v")
        assert asyncio.get_running_loop().time() - started < 1.5


async def test_client_follows_a_leader_change(cluster: list[NodeServer]) -> None:
    async with AsyncClient(endpoints(cluster)) as kv:
        key = b"moving"
        await kv.put(key, b"1")
        routing = ShardRouting.from_document(await kv.shard_map())
        shard = shard_for_key(key, routing.shard_count)
        old = routing.leaders[shard]
        new = next(n for n in routing.replicas[shard] if n != old)
        leader_server = cluster[old - 1]
        await node_of(leader_server).transfer_leader(
            shard, new, asyncio.get_running_loop().time() + 5
        )
        # The cached leader is stale now; the answer's hint (or forwarding) gets it there.
        assert await kv.put(key, b"2") > 0
        assert await kv.get(key) == b"2"


def test_sync_client_works_from_plain_threads(tmp_path: Path) -> None:
    results: list[bytes] = []
    errors: list[BaseException] = []
    ready = threading.Event()
    done = threading.Event()
    holder: dict[str, list[str]] = {}

    async def serve() -> None:
        async with running(configs(tmp_path, 1, shards=2, replicas=1)) as servers:
            holder["endpoints"] = endpoints(servers)
            ready.set()
            while not done.is_set():
                await asyncio.sleep(0.01)

    server_thread = threading.Thread(target=lambda: asyncio.run(serve()), daemon=True)
    server_thread.start()
    try:
        assert ready.wait(30), "nodes did not start"
        with Client(holder["endpoints"]) as kv:

            def worker(n: int) -> None:
                try:
                    kv.put(b"t%d" % n, b"v%d" % n)
                    results.append(kv.get(b"t%d" % n))
                except BaseException as error:
                    errors.append(error)

            threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(30)
            assert not errors, errors
            assert sorted(results) == [b"v0", b"v1", b"v2", b"v3"]
            assert kv.delete(b"t0") is True
            with pytest.raises(NotFoundError):
                kv.get(b"t0")
            assert kv.scan(prefix=b"t").items[0].key == b"t1"
    finally:
        done.set()
        server_thread.join(30)


# --- writes are sent again only when they cannot have applied ---------------------------------


class ScriptedKV(kv_pb2_grpc.KVServicer):
    """Answers each Put or Delete with the next scripted error, then succeeds: what a node
    says after a refusal or a crash, without the crash. Keeps the session each write sent."""

    def __init__(self, errors: list[service.ServiceError]) -> None:
        self.errors = errors
        self.writes = 0
        self.sessions: list[kv_pb2.WriteSession] = []

    async def _answer(
        self,
        request: kv_pb2.PutRequest | kv_pb2.DeleteRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> None:
        self.writes += 1
        self.sessions.append(request.session)
        if self.errors:
            error = self.errors.pop(0)
            await context.abort(
                mapping_for(error).grpc_code, str(error), trailing_metadata=hint_metadata(error)
            )

    async def Put(  # noqa: N802 (the gRPC method's name)
        self, request: kv_pb2.PutRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> kv_pb2.PutResponse:
        await self._answer(request, context)
        return kv_pb2.PutResponse(version=7)

    async def Delete(  # noqa: N802 (the gRPC method's name)
        self, request: kv_pb2.DeleteRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> kv_pb2.DeleteResponse:
        await self._answer(request, context)
        return kv_pb2.DeleteResponse()


@pytest.fixture
async def scripted() -> AsyncIterator[tuple[str, ScriptedKV]]:
    servicer = ScriptedKV([])  # type: ignore[abstract]  # only the writes are served
    server = grpc.aio.server()
    kv_pb2_grpc.add_KVServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield f"127.0.0.1:{port}", servicer
    finally:
        await server.stop(grace=None)


async def test_a_write_refused_before_it_was_proposed_is_sent_again(
    scripted: tuple[str, ScriptedKV],
) -> None:
    address, servicer = scripted
    servicer.errors = [service.UnavailableError("not the leader", unapplied=True)]
    async with AsyncClient(address, timeout_s=5, rng=random.Random(1)) as client:
        assert await client.put(b"k", b"v") == 7
    assert servicer.writes == 2


async def test_a_write_whose_outcome_is_unknown_is_sent_again_as_a_repeat_of_its_session(
    scripted: tuple[str, ScriptedKV],
) -> None:
    """The repeat carries the first send's client id and number, marked `retry`: the shard
    answers it with the first one's result if that one applied (sessions.py)."""
    address, servicer = scripted
    servicer.errors = [service.UnavailableError("the leader stopped mid-write")]
    async with AsyncClient(address, timeout_s=5, rng=random.Random(1)) as client:
        assert await client.put(b"k", b"v") == 7
        servicer.errors = [service.UnavailableError("the connection broke")]
        assert await client.delete(b"k") is True
    first, repeat, second, repeat2 = servicer.sessions
    assert len(first.client_id) == 16
    assert (first.client_id, first.seq, first.retry) == (repeat.client_id, 1, False)
    assert (repeat.seq, repeat.retry) == (1, True)
    assert (second.client_id, second.seq, second.acked, second.retry) == (
        first.client_id,
        2,
        2,
        False,
    )
    assert (repeat2.seq, repeat2.retry) == (2, True)


async def test_a_send_refused_before_it_was_proposed_does_not_make_the_next_a_repeat(
    scripted: tuple[str, ScriptedKV],
) -> None:
    """Only a send that may have applied makes the next one a `retry`: a shard that forgot
    sessions refuses a retry of a client it does not know, which would turn a plain
    election-time refusal into an unknown outcome."""
    address, servicer = scripted
    servicer.errors = [
        service.UnavailableError("not the leader", unapplied=True),
        service.UnavailableError("the leader stopped mid-write"),
        service.UnavailableError("not the leader", unapplied=True),
    ]
    async with AsyncClient(address, timeout_s=5, rng=random.Random(1)) as client:
        assert await client.put(b"k", b"v") == 7
    assert [s.retry for s in servicer.sessions] == [False, False, True, True]
    assert client.writes_repeated == 2
    assert {s.seq for s in servicer.sessions} == {1}


async def test_a_write_that_never_got_through_says_whether_it_may_have_applied(
    scripted: tuple[str, ScriptedKV],
) -> None:
    """Out of time: after only refusals the write did not apply (UnavailableError); after a
    send that broke mid-way it may have (OutcomeUnknownError), whatever came next."""
    address, servicer = scripted
    async with AsyncClient(address, timeout_s=0.5, rng=random.Random(1)) as client:
        servicer.errors = [service.UnavailableError("not the leader", unapplied=True)] * 100
        with pytest.raises(UnavailableError) as refused:
            await client.put(b"k", b"v")
        assert not isinstance(refused.value, OutcomeUnknownError), refused.value
        servicer.errors = [
            service.UnavailableError("the leader stopped mid-write"),
            *[service.UnavailableError("not the leader", unapplied=True)] * 100,
        ]
        with pytest.raises(OutcomeUnknownError, match="may have been applied"):
            await client.put(b"k", b"v")


async def test_a_repeat_the_shard_cannot_match_raises_outcome_unknown(
    scripted: tuple[str, ScriptedKV],
) -> None:
    """FAILED_PRECONDITION (the session is forgotten): the write may have applied and is not
    sent a third time."""
    address, servicer = scripted
    servicer.errors = [
        service.UnavailableError("the leader stopped mid-write"),
        service.SessionExpiredError("shard 0: this shard does not know the client's session"),
    ]
    async with AsyncClient(address, timeout_s=5, rng=random.Random(1)) as client:
        with pytest.raises(OutcomeUnknownError, match="not applied again"):
            await client.put(b"k", b"v")
    assert servicer.writes == 2


async def test_writes_in_flight_together_report_the_smallest_unanswered_number(
    scripted: tuple[str, ScriptedKV],
) -> None:
    address, servicer = scripted
    async with AsyncClient(address, timeout_s=5, rng=random.Random(1)) as client:
        await asyncio.gather(*(client.put(b"k%d" % i, b"v") for i in range(5)))
        await client.put(b"after", b"v")
    seqs = sorted(s.seq for s in servicer.sessions)
    assert seqs == [1, 2, 3, 4, 5, 6]
    assert all(s.acked <= s.seq for s in servicer.sessions)
    assert servicer.sessions[-1].acked == 6  # 1..5 were all answered


async def test_out_of_time_after_refusals_names_what_the_sends_met(
    scripted: tuple[str, ScriptedKV],
) -> None:
    """The last send of a write that met no leader reached a node past its deadline: the
    client said only "the deadline passed before the request started", though sends had
    run and each had been refused (a partition). It now says what they met."""
    address, servicer = scripted
    servicer.errors = [
        *[service.UnavailableError("no leader: a partition", unapplied=True)] * 3,
        service.DeadlineExceededError("the deadline passed before the request started"),
    ]
    async with AsyncClient(address, timeout_s=5, rng=random.Random(1)) as client:
        with pytest.raises(OutcomeUnknownError) as failed:
            await client.put(b"k", b"v")
    message = str(failed.value)
    assert "no leader answered before the deadline" in message, message
    assert "no leader: a partition" in message, message
    assert "may have been applied" in message, "the last send's outcome is not known"


async def test_reseed_starts_over_from_new_endpoints(scripted: tuple[str, ScriptedKV]) -> None:
    """A dashboard outlives its cluster: destroyed and made again on other ports, no old
    address answers, and the old map's epoch would outrank the new one's. `reseed` forgets
    both and goes to the new nodes."""
    address, _ = scripted
    (closed,) = reserve_ports(1)
    async with AsyncClient(f"127.0.0.1:{closed}", timeout_s=0.5, rng=random.Random(1)) as client:
        with pytest.raises(ClientError):
            await client.put(b"k", b"v")
        client._router.install(  # what the old cluster's map left behind
            ShardRouting.from_document(
                {"epoch": 99, "shard_count": 1, "shards": [], "nodes": {"1": f"127.0.0.1:{closed}"}}
            )
        )
        client.reseed([address])
        assert client.endpoints == (address,)
        assert client._router.routing is None
        assert await client.put(b"k", b"v") == 7
        with pytest.raises(InvalidRequestError):
            client.reseed([])
