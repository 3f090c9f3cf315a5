"""Linearizable under faults: clients put and get a handful of keys on a real cluster (3
nodes, or 4 with 3 replicas each) while a seeded nemesis SIGKILLs and restarts nodes (one, or
all at once), cuts one off (both ways, or only what it sends, or only what it hears), pauses
one (SIGSTOP), makes every link lossy and slow, hands shard leaderships around, and snapshots
a node's logs before restarting another.
Every answer goes into a history with its real-time interval, and the history must be
linearizable (tests/linearizability.py): no stale read, no lost or resurrected write, no value
seen and then unseen — what "never lie, never lose an acknowledged write" means, checked on
every key, not only at the end.

Clients: HTTP clients pinned to one node each (forwarded reads and writes, follower
proposals, ReadIndex on followers) and gRPC clients routed by the shard map. A put answered
with anything but success has an unknown outcome (it may have been applied); a failed get saw
nothing and is left out. Once the nemesis stops, every node is healed and every key read
through every node, so a write lost at the end shows too. A second test does the same while a
node is removed and another joins (membership changes under traffic).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import shutil
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import aiohttp
import pytest

from minikv_core.client import AsyncClient, ClientError, NotFoundError
from tests.integration.conftest import Cluster, heal, partition
from tests.integration.test_maintenance import join_node, latest_job, operate, wait_job
from tests.linearizability import Op, check_history

pytestmark = pytest.mark.integration

SEED = int(os.environ.get("MINIKV_TEST_SEED", "20261127"))
CHAOS_S = 20.0
SOAK_CHAOS_S = 120.0
"""`make test-slow`: six times as long, so rarer interleavings get their chance."""
KEYS = [f"reg-{number}".encode() for number in range(6)]
HTTP_CLIENTS = 6
GRPC_CLIENTS = 2
REQUEST_TIMEOUT_S = 8.0
"""Past the node's own 5 s deadline: its answer (504, 503) normally comes first."""
FINAL_READ_TIMEOUT_S = 30.0


class History:
    def __init__(self) -> None:
        self.ops: list[Op] = []
        self.counts = {"put ok": 0, "put unknown": 0, "get ok": 0, "get failed": 0}

    async def put(self, client: int, key: bytes, value: bytes, call: Awaitable[bool]) -> None:
        """`call` answers True once the put is acknowledged, False (or raises) otherwise."""
        invoked = time.monotonic()
        try:
            acknowledged = await call
        except (aiohttp.ClientError, TimeoutError, ClientError):
            acknowledged = False
        completed = time.monotonic() if acknowledged else None
        self.counts["put ok" if acknowledged else "put unknown"] += 1
        self.ops.append(Op(client, "put", key, value, invoked, completed))

    async def get(
        self, client: int, key: bytes, call: Awaitable[tuple[bool, bytes | None]]
    ) -> bool:
        """`call` answers (True, value or None if absent), or (False, _) when it saw nothing."""
        invoked = time.monotonic()
        try:
            answered, value = await call
        except (aiohttp.ClientError, TimeoutError, ClientError):
            answered, value = False, None
        if answered:
            self.ops.append(Op(client, "get", key, value, invoked, time.monotonic()))
        self.counts["get ok" if answered else "get failed"] += 1
        return answered

    def dump(self, path: Path) -> None:
        rows = [
            {
                "client": op.client,
                "kind": op.kind,
                "key": op.key.decode(),
                "value": None if op.value is None else op.value.decode(),
                "invoked": op.invoked,
                "completed": op.completed,
            }
            for op in sorted(self.ops, key=lambda op: op.invoked)
        ]
        path.write_text(json.dumps(rows, indent=1))


async def http_put(cluster: Cluster, node_id: int, key: bytes, value: bytes) -> bool:
    status, _, body = await cluster.request(
        node_id, "PUT", f"/kv/{key.decode()}", value, timeout_s=REQUEST_TIMEOUT_S
    )
    assert status in (204, 503, 504), f"put answered {status}: {body!r}"
    return status == 204


async def http_get(cluster: Cluster, node_id: int, key: bytes) -> tuple[bool, bytes | None]:
    status, _, body = await cluster.request(
        node_id, "GET", f"/kv/{key.decode()}", timeout_s=REQUEST_TIMEOUT_S
    )
    if status == 200:
        return True, body
    assert status in (404, 503, 504), f"get answered {status}: {body!r}"
    return status == 404, None


async def grpc_put(client: AsyncClient, key: bytes, value: bytes) -> bool:
    await client.put(key, value, timeout_s=REQUEST_TIMEOUT_S)
    return True


async def grpc_get(client: AsyncClient, key: bytes) -> tuple[bool, bytes | None]:
    try:
        return True, await client.get(key, timeout_s=REQUEST_TIMEOUT_S)
    except NotFoundError:
        return True, None


class Nemesis:
    """One fault at a time, so a majority is always up and connected (the promise holds
    for any minority), chosen and timed by a seeded generator."""

    def __init__(self, cluster: Cluster, rng: random.Random) -> None:
        self.cluster = cluster
        self.rng = rng
        self.done: list[str] = []
        self.paused: int | None = None

    async def run(self, stop_at: float) -> None:
        """Every kind of fault once, then more at random until `stop_at`."""
        faults: dict[str, Callable[[int], Awaitable[None]]] = {
            "kill": self.kill,
            "isolate": self.isolate,
            "pause": self.pause,
            "mute": self.mute,
            "deafen": self.deafen,
            "crash-all": self.crash_all,
            "transfer": self.transfer,
            "snapshot": self.snapshot,
            "lossy": self.lossy,
        }
        order = list(faults)
        self.rng.shuffle(order)  # each kind once first, then at random
        await asyncio.sleep(self.rng.uniform(1.0, 2.0))
        while order or time.monotonic() < stop_at:
            kind = order.pop(0) if order else self.rng.choice(sorted(faults))
            victim = self.rng.choice(sorted(self.cluster.nodes))
            self.done.append(f"{kind} {victim} at {time.monotonic():.3f}")
            await faults[kind](victim)
            await asyncio.sleep(self.rng.uniform(0.5, 1.5))

    async def kill(self, node_id: int) -> None:
        self.cluster.kill(node_id, signal.SIGKILL)
        await asyncio.sleep(self.rng.uniform(0.5, 2.0))
        self.cluster.launch(node_id)
        await self.cluster.wait_started(node_id)

    async def isolate(self, node_id: int) -> None:
        await partition(self.cluster, node_id)
        await asyncio.sleep(self.rng.uniform(1.0, 3.0))
        await heal(self.cluster)

    async def crash_all(self, node_id: int) -> None:
        """Every node SIGKILLed at once (`node_id` restarts last): beyond the minority promise,
        but nothing acknowledged may be lost (issue 5: "SIGKILL at any moment loses nothing
        that was acknowledged"): every ack was fsynced on a majority."""
        for victim in sorted(self.cluster.nodes):
            self.cluster.kill(victim, signal.SIGKILL)
        await asyncio.sleep(self.rng.uniform(0.2, 1.0))
        order = [n for n in sorted(self.cluster.nodes) if n != node_id] + [node_id]
        for victim in order:
            self.cluster.launch(victim)
        for victim in order:
            await self.cluster.wait_started(victim)

    async def transfer(self, node_id: int) -> None:
        """Leadership handed from shard to node at random, through `node_id`: the old
        leader's lease and pending reads must not outlive the hand-over (thesis §3.10)."""
        for _ in range(3):
            shard = self.rng.randrange(self.cluster.shards)
            target = self.rng.choice(sorted(self.cluster.nodes))
            await self._admin(node_id, "/admin/transfer-leader", {"shard": shard, "node": target})
            await asyncio.sleep(self.rng.uniform(0.2, 0.8))

    async def snapshot(self, node_id: int) -> None:
        """Flush, snapshot and compact `node_id`'s logs mid-traffic, then restart another
        node: it may have to catch up from a snapshot."""
        await self._admin(node_id, "/admin/snapshot", {})  # every shard it holds
        other = self.rng.choice(self._others(node_id))
        await self.kill(other)

    async def _admin(self, node_id: int, path: str, body: dict[str, object]) -> None:
        """An admin call the cluster may refuse (no leader, not a voter) but must answer
        cleanly: anything but a 500."""
        try:
            status, _, answer = await self.cluster.request(
                node_id, "POST", path, json_body=body, timeout_s=REQUEST_TIMEOUT_S
            )
        except (aiohttp.ClientError, TimeoutError):
            return
        assert status != 500, f"{path} {body} on node {node_id}: {answer!r}"
        self.done.append(f"  {path} {body} on node {node_id}: {status}")

    async def lossy(self, node_id: int) -> None:
        """Every node loses a share of what it sends and delays the rest: retransmission,
        reordering across groups, and a follower's writes taking the unary path (a PROPOSE
        is never resent, so it is not used under loss)."""
        rules = {"loss": self.rng.uniform(0.1, 0.4), "delay_ms": self.rng.randrange(5, 60)}
        for node in sorted(self.cluster.nodes):
            status, _, body = await self.cluster.request(
                node, "POST", "/admin/fault", json_body=rules
            )
            assert status == 200, body
        self.done.append(f"  {rules} on every node (around node {node_id})")
        await asyncio.sleep(self.rng.uniform(1.5, 3.0))
        await heal(self.cluster)

    async def mute(self, node_id: int) -> None:
        """Nothing the node sends arrives; it still hears everyone (a one-way cut)."""
        await self._one_way(senders=[node_id], receivers=self._others(node_id))

    async def deafen(self, node_id: int) -> None:
        """The node hears no one; what it sends still arrives (a leader keeps sending
        heartbeats that hold the followers back, and must step down on its own)."""
        await self._one_way(senders=self._others(node_id), receivers=[node_id])

    def _others(self, node_id: int) -> list[int]:
        return [n for n in sorted(self.cluster.nodes) if n != node_id]

    async def _one_way(self, senders: list[int], receivers: list[int]) -> None:
        rules: dict[int, dict[str, list[int]]] = {}
        for sender in senders:
            rules.setdefault(sender, {"drop_to": [], "drop_from": []})["drop_to"] += receivers
        for receiver in receivers:
            rules.setdefault(receiver, {"drop_to": [], "drop_from": []})["drop_from"] += senders
        for node_id, rule in rules.items():
            status, _, body = await self.cluster.request(
                node_id, "POST", "/admin/fault", json_body=rule
            )
            assert status == 200, body
        await asyncio.sleep(self.rng.uniform(1.0, 3.0))
        await heal(self.cluster)

    async def pause(self, node_id: int) -> None:
        process = self.cluster.nodes[node_id].process
        assert process is not None
        self.paused = node_id
        process.send_signal(signal.SIGSTOP)
        try:
            await asyncio.sleep(self.rng.uniform(1.0, 2.5))
        finally:
            process.send_signal(signal.SIGCONT)
            self.paused = None

    async def settle(self) -> None:
        """Whatever was under way when the test stopped it: undone."""
        if self.paused is not None:
            process = self.cluster.nodes[self.paused].process
            assert process is not None
            process.send_signal(signal.SIGCONT)
        for node_id, node in self.cluster.nodes.items():
            if not node.running:
                self.cluster.launch(node_id)
                await self.cluster.wait_started(node_id)
        await heal(self.cluster)
        await self.cluster.wait_ready()


class Workload:
    """The clients and what they saw: HTTP clients pinned to the nodes alive at the start
    (one each, round the ring), gRPC clients routed by the shard map."""

    def __init__(self, cluster: Cluster, routed: AsyncClient) -> None:
        self.cluster = cluster
        self.routed = routed
        self.history = History()
        self.nodes = sorted(n for n, p in cluster.nodes.items() if p.running)

    async def run(self, calm: asyncio.Event) -> None:
        await asyncio.gather(*(self._client(n, calm) for n in range(HTTP_CLIENTS + GRPC_CLIENTS)))

    async def _client(self, number: int, calm: asyncio.Event) -> None:
        local = random.Random(SEED * 1000 + number)
        node_id = self.nodes[number % len(self.nodes)]
        over_grpc = number >= HTTP_CLIENTS
        writes = 0
        while not calm.is_set():
            key = local.choice(KEYS)
            if local.random() < 0.5:
                writes += 1
                value = f"c{number}-{writes}".encode()
                call = (
                    grpc_put(self.routed, key, value)
                    if over_grpc
                    else http_put(self.cluster, node_id, key, value)
                )
                await self.history.put(number, key, value, call)
                answered = True
            else:
                read = (
                    grpc_get(self.routed, key)
                    if over_grpc
                    else http_get(self.cluster, node_id, key)
                )
                answered = await self.history.get(number, key, read)
            if not answered:
                await asyncio.sleep(0.05)  # its node is down, cut off or gone

    async def final_reads(self) -> None:
        """Every key through every running node, until each read answers: a write lost at
        the end shows too."""
        for key in KEYS:
            for node_id, process in sorted(self.cluster.nodes.items()):
                if not process.running:
                    continue
                deadline = time.monotonic() + FINAL_READ_TIMEOUT_S
                read = 100 + node_id
                while not await self.history.get(read, key, http_get(self.cluster, node_id, key)):
                    assert time.monotonic() < deadline, f"node {node_id} never read {key!r}"
                    await asyncio.sleep(0.1)

    async def session_counts(self) -> dict[str, int]:
        """Writes the routed client sent again, and those the shards answered from memory or
        refused (sessions.py): per shard the most any live replica counted since it started
        (a crash-all resets them all)."""
        per_shard: dict[int, dict[str, int]] = {}
        for node_id, process in sorted(self.cluster.nodes.items()):
            if not process.running:
                continue
            for group in (await self.cluster.status(node_id))["groups"]:
                if group.get("shard") is None or "sessions" not in group:
                    continue
                best = per_shard.setdefault(group["shard"], {})
                for name in ("repeats_answered", "repeats_refused"):
                    best[name] = max(best.get(name, 0), int(group["sessions"][name]))
        counts = {
            name: sum(counts.get(name, 0) for counts in per_shard.values())
            for name in ("repeats_answered", "repeats_refused")
        }
        return {"repeats_sent": self.routed.writes_repeated, **counts}

    def check(self, tmp_path: Path, what: str) -> None:
        history_file = tmp_path / "history.json"
        self.history.dump(history_file)
        violations = check_history(self.history.ops)
        assert not violations, (
            f"seed {SEED} (MINIKV_TEST_SEED={SEED} reruns it); {what}; "
            f"history in {history_file}:\n" + "\n".join(str(v) for v in violations)
        )
        counts = self.history.counts
        assert counts["put ok"] >= 100 and counts["get ok"] >= 100, (
            f"too little got through to mean anything: {counts}"
        )


@contextlib.asynccontextmanager
async def started_workload(cluster: Cluster) -> AsyncIterator[Workload]:
    """`cluster` started and ready, and the clients' workload on it (not yet running)."""
    async with aiohttp.ClientSession() as session:
        cluster.session = session
        await cluster.start()
        await cluster.wait_ready()
        async with AsyncClient(
            cluster.grpc_endpoints, timeout_s=REQUEST_TIMEOUT_S, rng=random.Random(SEED)
        ) as routed:
            yield Workload(cluster, routed)


@pytest.mark.parametrize(
    ("nodes", "chaos_s"),
    [
        pytest.param(3, CHAOS_S, marks=pytest.mark.timeout(180), id="3-nodes"),
        # Four nodes, three replicas: a quarter of the requests reach a node with no replica
        # of the key's shard and are forwarded in a unary call (the hinted resend included).
        pytest.param(4, CHAOS_S, marks=pytest.mark.timeout(180), id="4-nodes"),
        pytest.param(
            4, SOAK_CHAOS_S, marks=[pytest.mark.slow, pytest.mark.timeout(400)], id="4-nodes-soak"
        ),
    ],
)
async def test_histories_stay_linearizable_under_kills_partitions_and_pauses(
    cluster_factory: Callable[..., Cluster], tmp_path: Path, nodes: int, chaos_s: float
) -> None:
    cluster = cluster_factory(size=nodes, shards=4, replicas=3)
    rng = random.Random(SEED)
    async with started_workload(cluster) as workload:
        calm = asyncio.Event()
        nemesis = Nemesis(cluster, random.Random(rng.getrandbits(32)))

        async def chaos() -> None:
            try:
                await nemesis.run(time.monotonic() + chaos_s)
            finally:
                calm.set()

        try:
            await asyncio.gather(chaos(), workload.run(calm))
        finally:
            await nemesis.settle()
        await workload.final_reads()
        repeats = await workload.session_counts()

    workload.check(tmp_path, f"faults: {nemesis.done}")
    kinds = {fault.split()[0] for fault in nemesis.done if not fault.startswith(" ")}
    assert kinds == {
        "kill",
        "isolate",
        "pause",
        "mute",
        "deafen",
        "crash-all",
        "transfer",
        "snapshot",
        "lossy",
    }, nemesis.done
    print(f"seed {SEED}: {workload.history.counts}; {repeats}; faults: {nemesis.done}")


async def started_again_until_it_stops(cluster: Cluster, node_id: int) -> tuple[int, str]:
    """Launch `node_id` once more and wait for it to stop on its own (a node its peers
    refuse does): its exit status and what it logged meanwhile."""
    node = cluster.nodes[node_id]
    offset = node.log_size()
    process = cluster.launch(node_id).process
    assert process is not None
    code = await asyncio.to_thread(process.wait, 60)
    return code, node.log_since(offset)


@pytest.mark.timeout(300)
async def test_histories_stay_linearizable_while_a_node_leaves_and_another_joins(
    cluster_factory: Callable[..., Cluster], tmp_path: Path
) -> None:
    """Membership changes under traffic: node 1 (it leads shards) is removed — its replicas
    move to the others (learner, catch up, promote, remove: one change at a time) and it
    stops; started again on its data, it is refused and stops again — then node 5 joins and
    the rebalance that follows moves replicas and leaders onto it; last, node 2 comes back
    without its data and is refused. Every answer of the clients meanwhile must fit one
    order."""
    cluster = cluster_factory(size=4, shards=4, replicas=3)
    steps: list[str] = []
    async with started_workload(cluster) as workload:
        calm = asyncio.Event()

        async def maintenance() -> None:
            try:
                await asyncio.sleep(2.0)
                job = await operate(cluster, 2, "remove-node", {"node": 1})
                done = await wait_job(cluster, 2, job["id"])
                steps.append(f"remove-node 1: {done['state']}, {len(done['steps'])} steps")
                assert done["state"] == "done", done
                # Node 1 started again on its old data, an HTTP client still pinned to it:
                # its peers refuse it as retired and it stops by itself; until it does,
                # nothing it answers from its stale state may break the history.
                removed = cluster.nodes[1]
                assert removed.process is not None
                assert await asyncio.to_thread(removed.process.wait, 60) == 0
                code, log = await started_again_until_it_stops(cluster, 1)
                steps.append(f"removed node 1 started again: exit {code}")
                assert code == 0 and "node 1 was removed from the cluster" in log, log
                join_node(cluster, 5, via=3)
                await cluster.wait_started(5)
                job = await latest_job(cluster, 5, "rebalance")
                done = await wait_job(cluster, 5, job["id"])
                steps.append(f"rebalance after join: {done['state']}, {len(done['steps'])}")
                assert done["state"] == "done", done
                # Node 2's data directory lost, the node started again with today's --peers
                # (node 5 listed): it bootstraps afresh under another cluster id, its votes
                # and log forgotten (Raft §5.2). Its peers refuse it as a node of another
                # cluster, and once most of them did it stops with status 1, saying why.
                assert await asyncio.to_thread(cluster.terminate, 2) == 0
                shutil.rmtree(cluster.nodes[2].data_dir)
                code, log = await started_again_until_it_stops(cluster, 2)
                steps.append(f"node 2 started again without its data: exit {code}")
                assert code == 1 and "refused it as a node of another cluster" in log, log
                await asyncio.sleep(2.0)
            finally:
                calm.set()

        await asyncio.gather(maintenance(), workload.run(calm))
        await workload.final_reads()
        repeats = await workload.session_counts()

    workload.check(tmp_path, f"maintenance: {steps}")
    print(f"seed {SEED}: {workload.history.counts}; {repeats}; maintenance: {steps}")
