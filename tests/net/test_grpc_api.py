"""The gRPC API (KV and Admin) over real in-process nodes: results, status codes, leader
hints in trailing metadata, deadlines, the loopback rule, draining on stop."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import grpc.aio
import pytest

from minikv_core.cluster.service import (
    Consistency,
    DeadlineExceededError,
    FaultSpec,
    InvalidRequestError,
    NotFoundError,
    ServiceError,
    TooLargeError,
    TxnConflictError,
    UnavailableError,
)
from minikv_core.cluster.shard_map import shard_for_key
from minikv_core.net.api import is_loopback
from minikv_core.net.errors_map import (
    ERROR_TABLE,
    LEADER_HINT_KEY,
    RETRY_AFTER_MS_KEY,
    UNAPPLIED_KEY,
    error_from_grpc,
    hint_metadata,
    mapping_for,
)
from minikv_core.net.forwarder import FORWARDED_BY_KEY
from minikv_core.net.grpc_api import peer_host
from minikv_core.net.proto import admin_pb2, admin_pb2_grpc, kv_pb2, kv_pb2_grpc
from minikv_core.server import NodeServer
from tests.net.api_harness import configs, eventually, node_of, non_loopback_ip, running


@pytest.fixture
async def node(tmp_path: Path) -> AsyncIterator[NodeServer]:
    server_configs = configs(tmp_path, 1, shards=2, replicas=1, value_size_max=64 * 1024)
    async with running(server_configs) as servers:
        yield servers[0]


@pytest.fixture
async def channel(node: NodeServer) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(node.grpc_address) as opened:
        yield opened


# --- the error table, both directions ----------------------------------------------------------


def test_every_service_error_maps_to_one_status_and_back() -> None:
    for error_type, mapping in ERROR_TABLE.items():
        error = error_type("what went wrong")
        assert mapping_for(error) is mapping
        back = error_from_grpc(mapping.grpc_code, "what went wrong", hint_metadata(error))
        assert type(back) is error_type
        assert str(back) == "what went wrong"


def test_unavailable_round_trips_its_leader_hint_and_retry_delay() -> None:
    error = UnavailableError("no leader", leader_hint=3, retry_after_s=0.25)
    metadata = hint_metadata(error)
    assert (LEADER_HINT_KEY, "3") in metadata and (RETRY_AFTER_MS_KEY, "250") in metadata
    back = error_from_grpc(grpc.StatusCode.UNAVAILABLE, "no leader", metadata)
    assert isinstance(back, UnavailableError)
    assert (back.leader_hint, back.retry_after_s) == (3, 0.25)


@pytest.mark.parametrize("unapplied", [True, False])
def test_unavailable_says_whether_the_request_cannot_have_applied(unapplied: bool) -> None:
    """A client retries a write only on `unapplied`; without the key its outcome is unknown."""
    error = UnavailableError("refused", leader_hint=2, unapplied=unapplied)
    metadata = hint_metadata(error)
    assert ((UNAPPLIED_KEY, "1") in metadata) is unapplied
    back = error_from_grpc(grpc.StatusCode.UNAVAILABLE, "refused", metadata)
    assert isinstance(back, UnavailableError) and back.unapplied is unapplied


def test_a_transaction_conflict_applied_nothing_and_may_be_sent_again() -> None:
    error = TxnConflictError("keys stayed locked until the deadline")
    back = error_from_grpc(grpc.StatusCode.UNAVAILABLE, str(error), hint_metadata(error))
    assert isinstance(back, UnavailableError) and back.unapplied


def test_a_call_that_never_connected_cannot_have_applied_but_a_broken_one_may() -> None:
    refused = error_from_grpc(
        grpc.StatusCode.UNAVAILABLE,
        "failed to connect to all addresses; last error: UNKNOWN: ipv4:127.0.0.1:9: "
        "Failed to connect to remote host: Connection refused",
        (),
    )
    broken = error_from_grpc(grpc.StatusCode.UNAVAILABLE, "Stream removed (Socket closed)", ())
    assert isinstance(refused, UnavailableError) and refused.unapplied
    assert isinstance(broken, UnavailableError) and not broken.unapplied


def test_unknown_codes_are_unavailable_to_the_caller() -> None:
    back = error_from_grpc(grpc.StatusCode.INTERNAL, "boom", None)
    assert isinstance(back, UnavailableError)
    assert "INTERNAL: boom" in str(back)
    assert mapping_for(ServiceError("bare")).http_status == 500


@pytest.mark.parametrize(
    ("peer", "host", "loopback"),
    [
        ("ipv4:127.0.0.1:5000", "127.0.0.1", True),
        ("ipv6:[::1]:5000", "::1", True),
        ("ipv4:10.1.2.3:5000", "10.1.2.3", False),
        ("ipv6:[::ffff:127.0.0.1]:5000", "::ffff:127.0.0.1", True),
        ("unix:/tmp/socket", "unix:", True),
    ],
)
def test_peer_strings_are_parsed_for_the_loopback_rule(
    peer: str, host: str, loopback: bool
) -> None:
    assert peer_host(peer) == host
    assert is_loopback(host) is loopback
    assert peer_host("weird") is None


# --- KV ------------------------------------------------------------------------------------


async def test_put_get_delete_scan_round_trip(channel: grpc.aio.Channel) -> None:
    kv = kv_pb2_grpc.KVStub(channel)
    first = await kv.Put(kv_pb2.PutRequest(key=b"a", value=b"1"), timeout=10)
    second = await kv.Put(kv_pb2.PutRequest(key=b"a", value=b"2"), timeout=10)
    assert second.version > first.version > 0
    got = await kv.Get(kv_pb2.GetRequest(key=b"a"), timeout=10)
    assert (got.value, got.version) == (b"2", second.version)
    stale = await kv.Get(
        kv_pb2.GetRequest(key=b"a", consistency=kv_pb2.CONSISTENCY_STALE), timeout=10
    )
    assert stale.value == b"2"
    for key in (b"b", b"c", b"\x00bin"):
        await kv.Put(kv_pb2.PutRequest(key=key, value=key * 2), timeout=10)
    page = await kv.Scan(kv_pb2.ScanRequest(limit=2), timeout=10)
    assert [item.key for item in page.items] == [b"\x00bin", b"a"]
    assert page.more
    page = await kv.Scan(kv_pb2.ScanRequest(start=b"a\x00"), timeout=10)
    assert [(item.key, item.value) for item in page.items] == [(b"b", b"bb"), (b"c", b"cc")]
    assert not page.more
    deleted = await kv.Delete(kv_pb2.DeleteRequest(key=b"a"), timeout=10)
    assert deleted.deleted
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await kv.Get(kv_pb2.GetRequest(key=b"a"), timeout=10)
    assert raised.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await kv.Delete(kv_pb2.DeleteRequest(key=b"a"), timeout=10)
    assert raised.value.code() == grpc.StatusCode.NOT_FOUND


async def test_shard_map_is_served_on_kv_to_everyone(channel: grpc.aio.Channel) -> None:
    answer = await kv_pb2_grpc.KVStub(channel).ShardMap(kv_pb2.ShardMapRequest(), timeout=10)
    document = json.loads(answer.json)
    assert document["shard_count"] == 2
    assert len(document["shards"]) == 2


async def test_limits_are_resource_exhausted_and_bad_input_invalid_argument(
    channel: grpc.aio.Channel,
) -> None:
    kv = kv_pb2_grpc.KVStub(channel)
    cases = [
        (
            kv.Put(kv_pb2.PutRequest(key=b"k", value=b"v" * (64 * 1024 + 1)), timeout=10),
            grpc.StatusCode.RESOURCE_EXHAUSTED,
        ),
        (
            kv.Put(kv_pb2.PutRequest(key=b"k" * 4097), timeout=10),
            grpc.StatusCode.RESOURCE_EXHAUSTED,
        ),
        (kv.Put(kv_pb2.PutRequest(key=b""), timeout=10), grpc.StatusCode.INVALID_ARGUMENT),
        (kv.Scan(kv_pb2.ScanRequest(limit=20_000), timeout=10), grpc.StatusCode.INVALID_ARGUMENT),
    ]
    for call, code in cases:
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await call
        assert raised.value.code() == code, raised.value.details()


async def test_without_quorum_calls_fail_unavailable_or_deadline_within_the_deadline(
    tmp_path: Path,
) -> None:
    lonely = configs(tmp_path, 1, shards=1, replicas=3, peers_count=3)
    async with (
        running(lonely, wait_ready=False) as [server],
        grpc.aio.insecure_channel(server.grpc_address) as opened,
    ):
        kv = kv_pb2_grpc.KVStub(opened)
        started = time.monotonic()
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await kv.Put(kv_pb2.PutRequest(key=b"k", value=b"v"), timeout=0.3)
        elapsed = time.monotonic() - started
        assert raised.value.code() in (
            grpc.StatusCode.UNAVAILABLE,
            grpc.StatusCode.DEADLINE_EXCEEDED,
        )
        assert elapsed < 1.3, f"answered after {elapsed:.2f}s for a 300 ms deadline"
        if raised.value.code() == grpc.StatusCode.UNAVAILABLE:
            trailing = dict(raised.value.trailing_metadata() or ())
            assert RETRY_AFTER_MS_KEY in trailing
        ready = await admin_pb2_grpc.AdminStub(opened).Readiness(
            admin_pb2.AdminRequest(), timeout=10
        )
        assert not ready.ready and ready.reason


# --- Admin ---------------------------------------------------------------------------------


async def test_admin_documents_and_fault_rules(channel: grpc.aio.Channel) -> None:
    admin = admin_pb2_grpc.AdminStub(channel)
    for method in (admin.Status, admin.ShardMap, admin.Wal, admin.SSTables):
        document = json.loads((await method(admin_pb2.AdminRequest(), timeout=10)).json)
        assert isinstance(document, dict) and document
    # A one-node cluster: node 1 is its only member (rules name members only).
    answer = await admin.Fault(
        admin_pb2.FaultRequest(drop_to=[1], drop_from=[1], delay_ms=4, loss=0.5), timeout=10
    )
    assert json.loads(answer.json)["fault"] == {
        "drop_to": [1],
        "drop_from": [1],
        "delay_ms": 4,
        "loss": 0.5,
    }
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await admin.Fault(admin_pb2.FaultRequest(drop_to=[2]), timeout=10)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "node 2: not a member of this cluster" in str(refused.value.details())
    assert json.loads((await admin.ClearFault(admin_pb2.AdminRequest(), timeout=10)).json) == {
        "fault": None
    }
    ready = await admin.Readiness(admin_pb2.AdminRequest(), timeout=10)
    assert ready.ready and ready.reason == ""
    snap = await admin.Snapshot(admin_pb2.ShardsRequest(shards=[0]), timeout=10)
    assert isinstance(json.loads(snap.json), dict)
    compacted = await admin.Compact(admin_pb2.ShardsRequest(), timeout=10)
    assert isinstance(json.loads(compacted.json), dict)


async def test_metrics_count_grpc_calls_by_method_and_code(
    node: NodeServer, channel: grpc.aio.Channel
) -> None:
    kv = kv_pb2_grpc.KVStub(channel)
    await kv.Put(kv_pb2.PutRequest(key=b"m", value=b"v"), timeout=10)
    with pytest.raises(grpc.aio.AioRpcError):
        await kv.Get(kv_pb2.GetRequest(key=b"absent"), timeout=10)
    text = node.metrics.render().decode()
    assert 'minikv_requests_total{api="grpc",code="OK",route="KV.Put"} 1.0' in text
    assert 'minikv_requests_total{api="grpc",code="NOT_FOUND",route="KV.Get"} 1.0' in text


async def test_draining_refuses_new_calls_and_lets_in_flight_ones_finish(
    tmp_path: Path,
) -> None:
    [config] = configs(tmp_path, 1, shards=1, replicas=1)
    server = NodeServer(config)
    await server.start()
    try:
        await eventually(lambda: bool(node_of(server).readiness().ready), "node ready")
        async with grpc.aio.insecure_channel(server.grpc_address) as opened:
            kv = kv_pb2_grpc.KVStub(opened)
            stop_began = asyncio.Event()
            ok_after_stop = 0
            refusals: list[grpc.aio.AioRpcError] = []

            async def writer(worker: int) -> None:
                nonlocal ok_after_stop
                for n in range(100_000):
                    try:
                        await kv.Put(kv_pb2.PutRequest(key=b"w%d/%d" % (worker, n)), timeout=10)
                    except grpc.aio.AioRpcError as error:
                        refusals.append(error)
                        return
                    if stop_began.is_set():
                        ok_after_stop += 1

            writers = [asyncio.create_task(writer(w)) for w in range(8)]
            await eventually(lambda: server.grpc_calls_in_flight >= 4, "calls in flight")
            in_flight_at_stop = server.grpc_calls_in_flight
            stop_began.set()
            await server.stop()
            await asyncio.gather(*writers)
        # Every call in flight when the stop began was answered OK (the node kept running
        # until they finished); later calls were refused, none was cut off mid-way.
        assert ok_after_stop >= in_flight_at_stop, (ok_after_stop, in_flight_at_stop)
        assert len(refusals) == 8
        assert all(r.code() == grpc.StatusCode.UNAVAILABLE for r in refusals), refusals
    finally:
        await server.stop()


def test_service_error_subclasses_keep_their_mapping() -> None:
    class NoSuchShardError(InvalidRequestError):
        pass

    assert mapping_for(NoSuchShardError("x")).http_status == 400
    for error in (NotFoundError("x"), TooLargeError("x"), DeadlineExceededError("x")):
        assert mapping_for(error) is ERROR_TABLE[type(error)]


# --- forwarding between nodes --------------------------------------------------------------


@pytest.fixture
async def trio(tmp_path: Path) -> AsyncIterator[list[NodeServer]]:
    async with running(configs(tmp_path, 3, shards=3, replicas=3)) as servers:
        yield servers


def leader_of(servers: list[NodeServer], key: bytes) -> tuple[NodeServer, NodeServer]:
    """(the leader of `key`'s shard, a follower of it), as node 1 sees the shard map."""
    document = node_of(servers[0]).shard_map().body
    shard = shard_for_key(key, document["shard_count"])
    leader_id = document["shards"][shard]["leader"]
    leader = next(s for s in servers if s.config.node_id == leader_id)
    follower = next(s for s in servers if s.config.node_id != leader_id)
    return leader, follower


async def test_a_follower_forwards_to_the_leader_and_the_leader_never_reforwards(
    trio: list[NodeServer],
) -> None:
    leader, follower = leader_of(trio, b"fwd")
    async with grpc.aio.insecure_channel(follower.grpc_address) as opened:
        kv = kv_pb2_grpc.KVStub(opened)
        put = await kv.Put(kv_pb2.PutRequest(key=b"fwd", value=b"v"), timeout=10)
        assert put.version > 0
        # A call marked as forwarded is served from the follower's own replica: a write is
        # refused with the leader's id as hint instead of travelling on.
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await kv.Put(
                kv_pb2.PutRequest(key=b"fwd", value=b"w"),
                timeout=10,
                metadata=((FORWARDED_BY_KEY, str(leader.config.node_id)),),
            )
        assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
        trailing = dict(raised.value.trailing_metadata() or ())
        assert trailing[LEADER_HINT_KEY] == str(leader.config.node_id)
    got = await node_of(leader).get(b"fwd", Consistency.LINEARIZABLE, time.monotonic() + 5)
    assert got.value == b"v", "the refused forwarded write did not apply"


async def test_fault_injection_covers_forwarding_both_ways(trio: list[NodeServer]) -> None:
    leader, follower = leader_of(trio, b"cut")
    leader_id, follower_id = leader.config.node_id, follower.config.node_id
    deadline = time.monotonic() + 5
    # drop_to on the forwarding side: it cannot reach the leader at all.
    node_of(follower).set_fault(FaultSpec(drop_to=frozenset({leader_id})))
    with pytest.raises(UnavailableError, match="fault injection") as raised:
        await node_of(follower).put(b"cut", b"v", deadline)
    assert raised.value.leader_hint == leader_id
    node_of(follower).clear_fault()
    # drop_from on the leader's side: it refuses what the follower forwards in a call...
    node_of(leader).set_fault(FaultSpec(drop_from=frozenset({follower_id})))
    async with grpc.aio.insecure_channel(leader.grpc_address) as opened:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await kv_pb2_grpc.KVStub(opened).Put(
                kv_pb2.PutRequest(key=b"cut", value=b"v"),
                timeout=10,
                metadata=((FORWARDED_BY_KEY, str(follower_id)),),
            )
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "dropped" in (refused.value.details() or "")
    # ...and the Raft PROPOSE a follower sends a write in: the write never commits, and the
    # follower, still hearing its leader in the same term, answers at the deadline (as etcd).
    with pytest.raises(DeadlineExceededError):
        await node_of(follower).put(b"cut", b"v", time.monotonic() + 1.5)
    with pytest.raises(NotFoundError):
        await node_of(leader).get(b"cut", Consistency.LINEARIZABLE, time.monotonic() + 5)
    node_of(leader).clear_fault()
    assert await node_of(follower).put(b"cut", b"v", time.monotonic() + 5) > 0


async def test_admin_calls_from_non_loopback_peers_are_permission_denied(tmp_path: Path) -> None:
    address = non_loopback_ip()
    if address is None:
        pytest.skip("this machine has no non-loopback IPv4 address")
    configured = configs(tmp_path, 1, shards=1, replicas=1, grpc_host="0.0.0.0")
    async with (
        running(configured) as [server],
        grpc.aio.insecure_channel(f"{address}:{server.grpc_port}") as remote,
    ):
        admin = admin_pb2_grpc.AdminStub(remote)
        for call in (
            admin.Status(admin_pb2.AdminRequest(), timeout=10),
            admin.Fault(admin_pb2.FaultRequest(loss=1.0), timeout=10),
        ):
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                await call
            assert raised.value.code() == grpc.StatusCode.PERMISSION_DENIED
            assert "loopback" in (raised.value.details() or "")
        ready = await admin.Readiness(admin_pb2.AdminRequest(), timeout=10)
        assert ready.ready, "readiness answers everyone"
        shard_map = await kv_pb2_grpc.KVStub(remote).ShardMap(kv_pb2.ShardMapRequest(), timeout=10)
        assert json.loads(shard_map.json)["shard_count"] == 1, "clients route from anywhere"


def test_an_unimplemented_rpc_is_not_retried_as_unavailable() -> None:
    # A node started by an older minikv: the call can never succeed there, so say so at once.
    error = error_from_grpc(grpc.StatusCode.UNIMPLEMENTED, "Method not found!", None)
    assert isinstance(error, InvalidRequestError)
    assert "older minikv" in str(error)
