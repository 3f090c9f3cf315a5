"""Client sessions on real node processes: a write sent again answers what it answered the
first time and writes nothing, whichever node it reaches; one the shard cannot match is
refused with FAILED_PRECONDITION, and the client reports its outcome as unknown."""

from __future__ import annotations

import os

import grpc
import grpc.aio
import pytest

from minikv_core.client import AsyncClient, OutcomeUnknownError
from minikv_core.net.proto import kv_pb2, kv_pb2_grpc
from tests.integration.conftest import Cluster, eventually

pytestmark = pytest.mark.integration


def session(client_id: bytes, seq: int, acked: int, *, retry: bool) -> kv_pb2.WriteSession:
    return kv_pb2.WriteSession(client_id=client_id, seq=seq, acked=acked, retry=retry)


async def test_a_repeat_through_any_node_answers_the_first_result_and_writes_nothing(
    cluster: Cluster,
) -> None:
    await cluster.wait_ready(1, 2, 3)
    me = os.urandom(16)
    stubs = {}
    channels = [grpc.aio.insecure_channel(cluster.nodes[n].grpc_address) for n in (1, 2, 3)]
    try:
        for node_id, channel in zip((1, 2, 3), channels, strict=True):
            stubs[node_id] = kv_pb2_grpc.KVStub(channel)
        first = await stubs[1].Put(
            kv_pb2.PutRequest(key=b"s/k", value=b"old", session=session(me, 1, 1, retry=False)),
            timeout=10,
        )
        later = await stubs[2].Put(kv_pb2.PutRequest(key=b"s/k", value=b"new"), timeout=10)
        assert later.version > first.version
        for node_id in (1, 2, 3):  # leader or not: forwarded replies carry the same answer
            repeat = await stubs[node_id].Put(
                kv_pb2.PutRequest(key=b"s/k", value=b"old", session=session(me, 1, 1, retry=True)),
                timeout=10,
            )
            assert repeat.version == first.version, node_id
            got = await stubs[node_id].Get(kv_pb2.GetRequest(key=b"s/k"), timeout=10)
            assert (got.value, got.version) == (b"new", later.version), node_id
        # Every replica answers the three repeats from memory (each applies every entry; a
        # follower may still be an entry behind, hence eventually).
        for node_id in (1, 2, 3):

            async def answered_all(node_id: int = node_id) -> bool:
                groups = (await cluster.status(node_id))["groups"]
                counts = [int(g["sessions"]["repeats_answered"]) for g in groups if "sessions" in g]
                assert sum(counts) <= 3, counts
                return sum(counts) == 3

            await eventually(answered_all, f"node {node_id} answering the 3 repeats", 10)

        delete = kv_pb2.DeleteRequest(key=b"s/k", session=session(me, 2, 2, retry=False))
        await stubs[3].Delete(delete, timeout=10)
        await stubs[1].Put(kv_pb2.PutRequest(key=b"s/k", value=b"back"), timeout=10)
        delete.session.retry = True
        answer = await stubs[2].Delete(delete, timeout=10)
        assert answer.deleted, "the repeat answers that the key existed, as the first did"
        got = await stubs[2].Get(kv_pb2.GetRequest(key=b"s/k"), timeout=10)
        assert got.value == b"back", "the repeat deleted nothing"

        # Write 5 says every write below 5 is answered: a repeat of write 3 is refused.
        await stubs[1].Put(
            kv_pb2.PutRequest(key=b"s/k", value=b"5", session=session(me, 5, 5, retry=False)),
            timeout=10,
        )
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stubs[2].Put(
                kv_pb2.PutRequest(key=b"s/k", value=b"3", session=session(me, 3, 3, retry=True)),
                timeout=10,
            )
        assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "cannot tell whether it applied" in (refused.value.details() or "")
        got = await stubs[3].Get(kv_pb2.GetRequest(key=b"s/k"), timeout=10)
        assert got.value == b"5"
    finally:
        for channel in channels:
            await channel.close()


async def test_bad_sessions_are_refused_naming_the_field(cluster: Cluster) -> None:
    await cluster.wait_ready(1, 2, 3)
    async with grpc.aio.insecure_channel(cluster.nodes[1].grpc_address) as channel:
        kv = kv_pb2_grpc.KVStub(channel)
        for bad, message in (
            (session(b"short", 1, 1, retry=False), "client_id must be 16 bytes"),
            (session(b"x" * 16, 0, 0, retry=False), "seq must be"),
            (session(b"x" * 16, 2, 3, retry=False), "acked must be"),
        ):
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await kv.Put(kv_pb2.PutRequest(key=b"k", value=b"v", session=bad), timeout=10)
            assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert message in (refused.value.details() or "")
        # The node keeps serving.
        await kv.Put(kv_pb2.PutRequest(key=b"k", value=b"v"), timeout=10)


async def test_the_client_reports_a_refused_repeat_as_an_unknown_outcome(cluster: Cluster) -> None:
    """What the client raises when the shard answers FAILED_PRECONDITION (its own sessions
    never get there on this small cluster, so the refusal is provoked with a raw call)."""
    await cluster.wait_ready(1, 2, 3)
    async with AsyncClient(cluster.grpc_endpoints, timeout_s=10) as client:
        await client.put(b"s/x", b"0")  # write 1
        await client.put(b"s/x", b"1")  # write 2: says write 1 is answered
        with pytest.raises(OutcomeUnknownError, match="not applied again"):
            await client._routed(
                b"s/x",
                lambda channel, timeout: kv_pb2_grpc.KVStub(channel).Put(
                    kv_pb2.PutRequest(
                        key=b"s/x",
                        value=b"0",
                        session=session(client._writes._client_id, 1, 1, retry=True),
                    ),
                    timeout=timeout,
                ),
                None,
            )
        assert await client.get(b"s/x") == b"1"
